"""The cutover against the faults of a real network: a management link to the target that breaks
inside the window for longer than the freeze holds, and neighbours whose caches still point at the
source after the addresses moved. Every flow must come through whole, whatever the outcome."""

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.nfstate.migration.lab import flows as lab_flows
from ansible_collections.nfstate.migration.lab.flows import FlowSet, new_connection_ok
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab
from helpers import ANSIBLE_PLAYBOOK, assert_flows_whole, source_frozen

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

LATE_PORT = 5011


class LateStream:
    """A TCP stream of the lab's kind (flows.py's workers), started when the test says: a
    connection that exists on the source only, unless the cutover carries it."""

    def __init__(self, lab, name="late4"):
        self.lab, self.name = lab, name
        self.dir = os.path.join(lab.workdir, "late")
        os.makedirs(self.dir, exist_ok=True)
        self.procs = []

    def _launch(self, role, worker, address):
        argv = [sys.executable, "-S", lab_flows.__file__, "_worker", worker, "--flow", self.name, "--dir", self.dir,
                "--addr", address, "--port", str(LATE_PORT), "--duration", "120", "--rate", "16384",
                "--interval", "0.01"]
        self.procs.append(self.lab.popen(role, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL))

    def start(self):
        server = self.lab.addresses["server"][4]
        self._launch("server", "stream-recv", server)
        self._wait(".recv.ready")
        self._launch("client", "stream-send", server)
        self._wait(".send.ready")
        return self

    def _wait(self, suffix, timeout=15):
        limit = time.monotonic() + timeout
        while not os.path.exists(os.path.join(self.dir, self.name + suffix)):
            assert time.monotonic() < limit, "the late stream did not start (%s)" % suffix
            time.sleep(0.05)

    def stop(self):
        for side in ("send", "recv"):
            open(os.path.join(self.dir, "%s.%s.stop" % (self.name, side)), "w").close()
            proc = self.procs[0 if side == "recv" else 1]
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        parts = {}
        for side in ("send", "recv"):
            with open(os.path.join(self.dir, "%s.%s.json" % (self.name, side))) as handle:
                parts[side] = json.load(handle)
        return {self.name: lab_flows.merge(self.name, "tcp", 4, parts["send"], parts["recv"])}

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def nft_in(lab, host, script):
    lab.run(host, ["nft", script])


def wait_until(predicate, timeout, what):
    limit = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < limit, what
        time.sleep(0.05)


CUT = ("add table inet ccut; add chain inet ccut in { type filter hook input priority -300 ; };"
       " add chain inet ccut out { type filter hook output priority -300 ; };"
       " add rule inet ccut in iifname mgmt0 drop; add rule inet ccut out oifname mgmt0 drop")


def open_sessions_after_the_precopy(lab, count=20):
    """One UDP datagram from each of `count` new client ports to the server: as many new
    translated sessions on the source (unanswered, each lives 30 s)."""
    script = ("import socket, sys\n"
              "for n in range(%d):\n"
              "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "    s.sendto(b'x', (sys.argv[1], 5099))\n"
              "    s.close()\n") % count
    lab.run("client", [sys.executable, "-S", "-c", script, lab.addresses["server"][4]])


def test_link_to_target_cut_past_the_freeze_deadline_never_redirects_a_lapsed_freeze(tmp_path, lab_name):
    """The target's management link breaks right after the source froze and stays down past the
    freeze's deadline (5 s); a new connection starts through the source meanwhile. When the link
    comes back the delta taken before the lapse may no longer be claimed on: the cutover takes it
    again (or rolls back). The new connection must come through whole either way."""
    deadline = 5
    with Lab(lab_name("cl"), source_impl="iptables-legacy", target_impl="nftables") as lab:
        # A narrow link to the target holds the window open long enough to cut it after the freeze.
        throttle = ["tc", "qdisc", "replace", "dev", lab.root_veth("nat-b"), "root", "tbf", "rate", "4kbit",
                    "burst", "1600", "latency", "30s"]
        late = LateStream(lab)
        argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=nat-a",
                "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % tmp_path,
                "-e", "nfstate_freeze_deadline=%d" % deadline,
                # No catch-up over the throttled link: the freeze comes first, and its delta is what crawls.
                "-e", "nfstate_catch_up_deltas=0"]
        with FlowSet(lab, duration=180) as flows:
            run = subprocess.Popen(argv, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            output = []
            try:
                for line in run.stdout:
                    output.append(line)
                    if "TASK [Verify the target holds exactly" in line:
                        # Sessions the pre-copy did not see: the window's delta carries them, and it
                        # is their crawl over the narrow link that holds the window open.
                        open_sessions_after_the_precopy(lab)
                    if "TASK [Cut over" in line:
                        break
                subprocess.run(throttle, check=True)
                wait_until(lambda: source_frozen(lab), 20, "the source never froze")
                nft_in(lab, "nat-b", CUT)
                cut_at = time.monotonic()
                try:
                    # The kernel lifts the freeze at its deadline; a new connection starts through the source.
                    # (iptables keeps its chain after the deadline: a probe through the source tells.)
                    wait_until(lambda: new_connection_ok(lab, timeout=0.5), deadline + 5, "the freeze did not lapse")
                    late.start()
                    time.sleep(1.0)
                finally:
                    subprocess.run(["tc", "qdisc", "del", "dev", lab.root_veth("nat-b"), "root"], check=False)
                    nft_in(lab, "nat-b", "delete table inet ccut")
                lapse = time.monotonic() - cut_at
                output.extend(run.stdout)
                run.wait(timeout=300)
                holder = lab.service_holder()
                time.sleep(2.0)   # the late stream keeps going through whoever serves now
                results = late.stop()
                results.update(flows.stop())
            finally:
                late.kill()
                if run.poll() is None:
                    run.kill()
                    run.wait()
        text = "".join(output)
        print("link down %.1f s; playbook rc %d; service on %s" % (lapse, run.returncode, holder))
        print("".join(line for line in output if "What failed" in line)[-2000:])
        assert lapse > deadline
        if run.returncode == 0:
            assert holder == "nat-b", text[-4000:]
        else:
            assert "rolled back" in text and holder == "nat-a", text[-4000:]
        assert_flows_whole(results)
        assert new_connection_ok(lab)


def mac_of(lab, host, device):
    return lab.run(host, ["cat", "/sys/class/net/%s/address" % device]).stdout.strip()


def test_stale_neighbours_keep_reaching_the_source_after_the_redirect(tmp_path, lab_name):
    """The client and the server keep a static neighbour entry for the service addresses pointing at
    the source's MAC for a few seconds after the redirect (no announcement moves such an entry), so
    their packets keep reaching the source. The source drains (keeps its sessions while it forwards)
    before its cleanup: every flow stays whole, with its translated address and port."""
    hold = 5.0
    with Lab(lab_name("cs"), source_impl="iptables-legacy", target_impl="nftables") as lab:
        inside, outside = lab.devices["nat-a"]
        stale = [("client", lab.addresses["gateway"][4], inside), ("client", lab.addresses["gateway"][6], inside),
                 ("server", lab.addresses["external"][4], outside), ("server", lab.addresses["external"][6], outside)]
        macs = {inside: mac_of(lab, "nat-a", inside), outside: mac_of(lab, "nat-a", outside)}
        argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=nat-a",
                "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % tmp_path]
        with FlowSet(lab, duration=180) as flows:
            for role, address, device in stale:
                lab.run(role, ["ip", "neigh", "replace", address, "lladdr", macs[device], "dev", "eth0", "nud", "permanent"])
            run = subprocess.Popen(argv, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            output, marks = [], {}
            try:
                for line in run.stdout:
                    output.append(line)
                    if "TASK [" in line:
                        marks.setdefault(line.split("TASK [", 1)[1].split("]")[0], time.monotonic())
                    if "TASK [Keep the source's sessions" in line:
                        break
                assert lab.service_holder() == "nat-b", "".join(output)[-3000:]
                # The addresses moved; the stale entries still send the traffic to the source.
                time.sleep(hold)
                for role, address, device in stale:
                    lab.run(role, ["ip", "neigh", "del", address, "dev", "eth0"])
                released_at = time.monotonic()
                for line in run.stdout:
                    output.append(line)
                    if "TASK [" in line:
                        marks.setdefault(line.split("TASK [", 1)[1].split("]")[0], time.monotonic())
                run.wait(timeout=120)
                time.sleep(1.0)
                results = flows.stop()
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
                for role, address, device in stale:
                    lab.run(role, ["ip", "neigh", "del", address, "dev", "eth0"], check=False)
        text = "".join(output)
        assert run.returncode == 0, text[-4000:]
        cleaned = [t for name, t in marks.items() if name.startswith("Clean the source")]
        assert cleaned and cleaned[0] > released_at, "the source was cleaned while neighbours still sent to it"
        assert_flows_whole(results)
        assert new_connection_ok(lab)
