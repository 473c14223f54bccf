"""nfstate.migration.nat_freeze against a real kernel NAT, for nftables and both iptables backends.

Lab (namespaces created and removed here, by conftest.py's netns_lab and labs.routed_site):
    client 192.0.2.2 --(in0) NAT 192.0.2.1 / 198.51.100.1 (out0)-- server 198.51.100.2
The NAT source-translates the client to 198.51.100.1; the server has no route back to 192.0.2.0/24,
so every answer it gives proves the translation. sshd listens on the NAT's inside address and stands
for the controller's session, which arrives on a frozen interface yet must never be held.
"""

import calendar
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from labs import collection_env, routed_site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
CLIENT_ADDR, NAT_INSIDE, NAT_OUTSIDE, SERVER_ADDR = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2"
HELLO_PORT, STREAM_PORT = 8080, 9000

IMPLEMENTATIONS = {
    "nftables": {"implementation": "nftables"},
    "iptables-legacy": {"implementation": "iptables", "iptables_backend": "legacy"},
    "iptables-nft": {"implementation": "iptables", "iptables_backend": "nft"},
}

HELPER = r'''
import socket, sys, threading, time, os
mode = sys.argv[1]
if mode == "serve":
    def hello(listener):
        while True:
            conn, peer = listener.accept()
            conn.sendall((peer[0] + "\n").encode())
            conn.close()
    def stream(listener):
        while True:
            conn, _ = listener.accept()
            def pump(conn=conn):
                try:
                    while True:
                        conn.sendall(b"x" * 1024)
                        time.sleep(0.01)
                except OSError:
                    conn.close()
            threading.Thread(target=pump, daemon=True).start()
    for port, handler in ((%(hello)d, hello), (%(stream)d, stream)):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((sys.argv[2], port))
        listener.listen(64)
        threading.Thread(target=handler, args=(listener,), daemon=True).start()
    while True:
        time.sleep(3600)
elif mode == "probe":  # probe HOST TIMEOUT: one new connection; prints what the server saw
    try:
        conn = socket.create_connection((sys.argv[2], %(hello)d), timeout=float(sys.argv[3]))
        print(conn.makefile().readline().strip())
    except OSError as error:
        print(error)
        sys.exit(1)
elif mode == "stream":  # stream HOST FILE: keeps the byte count received so far in FILE
    conn = socket.create_connection((sys.argv[2], %(stream)d), timeout=5)
    total = 0
    while True:
        data = conn.recv(65536)
        if not data:
            break
        total += len(data)
        with open(sys.argv[3] + ".tmp", "w") as out:
            out.write(str(total))
        os.replace(sys.argv[3] + ".tmp", sys.argv[3])
''' % {"hello": HELLO_PORT, "stream": STREAM_PORT}


def sh(*args, check=True, **kwargs):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kwargs)


class Lab:
    def __init__(self, spaces, tmp, kind):
        self.spaces, self.tmp, self.kind = spaces, tmp, kind
        self.helper = os.path.join(tmp, "helper.py")
        with open(self.helper, "w") as out:
            out.write(HELPER)
        self.env = collection_env(tmp)

    # -- topology
    def build(self):
        self.cli, self.nat, self.srv = routed_site(self.spaces, "", {
            "client": {4: CLIENT_ADDR}, "inside": {4: NAT_INSIDE}, "outside": {4: NAT_OUTSIDE}, "server": {4: SERVER_ADDR}})
        if self.kind["implementation"] == "nftables":
            self.in_ns(self.nat, "nft", "-f", "-", input=(
                "table ip nfsh5_nat { chain post { type nat hook postrouting priority srcnat; "
                'oifname "out0" snat to %s; }; }' % NAT_OUTSIDE))
        else:
            self.in_ns(self.nat, "iptables-%s" % self.kind["iptables_backend"], "-t", "nat", "-A", "POSTROUTING",
                       "-o", "out0", "-j", "SNAT", "--to-source", NAT_OUTSIDE)
        self.spawn(self.srv, "/usr/bin/python3", self.helper, "serve", SERVER_ADDR)
        wait_for(lambda: bool(self.in_ns(self.srv, "ss", "-Htln", "sport", "=", ":%d" % STREAM_PORT).stdout.strip()),
                 "the lab's server to listen")

    def in_ns(self, ns, *args, **kwargs):
        return sh("ip", "netns", "exec", ns, *args, **kwargs)

    def spawn(self, ns, *args, **kwargs):
        return self.spaces.spawn(ns, *args, **kwargs)

    # -- traffic
    def probe(self, timeout=0.7):
        """A new TCP connection through the NAT: the address the server saw, or None."""
        result = self.in_ns(self.cli, "/usr/bin/python3", self.helper, "probe", SERVER_ADDR, str(timeout), check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def start_stream(self):
        counter = os.path.join(self.tmp, "stream.count")
        self.spawn(self.cli, "/usr/bin/python3", self.helper, "stream", SERVER_ADDR, counter)
        wait_for(lambda: count(counter), "the stream to flow")
        return counter

    # -- the module
    def freeze(self, check=False, **args):
        """Run nfstate.migration.nat_freeze on the NAT host; returns (changed, result)."""
        args = dict(self.kind, **args)
        cmd = ["ip", "netns", "exec", self.nat, ANSIBLE, "localhost", "-m", "nfstate.migration.nat_freeze",
               "-a", json.dumps(args), "-e", "ansible_python_interpreter=/usr/bin/python3"]
        result = sh(*(cmd + (["--check"] if check else [])), check=False, env=self.env, cwd=self.tmp)
        match = re.search(r"^localhost \| (CHANGED|SUCCESS|FAILED!) => (\{.*)", result.stdout, re.M | re.S)
        assert match and match.group(1) != "FAILED!", result.stdout + result.stderr
        data = json.loads(match.group(2))
        return data["changed"], data

    def ruleset(self):
        """Every packet filter object in the NAT namespace, without counters or timers."""
        text = self.in_ns(self.nat, "nft", "list", "ruleset").stdout
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
            text += self.in_ns(self.nat, tool).stdout
        text = re.sub(r"^#.*$", "", text, flags=re.M)
        text = re.sub(r"\[\d+:\d+\]|counter packets \d+ bytes \d+|expires \S+", "", text)
        return text

    def has_freeze_objects(self):
        return "nfstate_freeze" in self.ruleset() or "NFSTATE-FREEZE" in self.ruleset()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def lab(request, netns_lab, tmp_path):
    lab = Lab(netns_lab, str(tmp_path), IMPLEMENTATIONS[request.param])
    lab.build()
    return lab


class Sshd:
    """sshd on the NAT's inside address, with its own keys and files in the lab's directory."""

    def __init__(self, lab):
        self.lab = lab
        tmp = lab.tmp
        self.key = os.path.join(tmp, "id_ed25519")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(tmp, "host_key"))
        shutil.copy(self.key + ".pub", os.path.join(tmp, "authorized_keys"))
        config = os.path.join(tmp, "sshd_config")
        with open(config, "w") as out:
            out.write("\n".join([
                "ListenAddress %s:22" % NAT_INSIDE, "HostKey %s/host_key" % tmp, "PidFile %s/sshd.pid" % tmp,
                "AuthorizedKeysFile %s/authorized_keys" % tmp, "StrictModes no", "UsePAM no",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", ""]))
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = lab.spawn(lab.nat, "/usr/sbin/sshd", "-D", "-f", config)
        wait_for(lambda: bool(lab.in_ns(lab.nat, "ss", "-Htln", "sport", "=", ":22").stdout.strip()), "sshd to listen")

    def ssh(self, command, **kwargs):
        return ["ip", "netns", "exec", self.lab.cli, "ssh", "-F", "/dev/null", "-i", self.key,
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=3",
                "root@" + NAT_INSIDE, command]

    def login(self):
        """A brand-new SSH login to the NAT host; returns the host's answer or None."""
        result = subprocess.run(self.ssh("echo still-here"), capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def session(self, path):
        """A long-lived SSH session that prints a line every 0.1 s into `path`."""
        out = open(path, "w")
        proc = subprocess.Popen(self.ssh("while sleep 0.1; do echo tick; done"), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.DEVNULL)
        out.close()
        self.lab.spaces.track(proc)
        return proc


def wait_for(condition, what, seconds=10):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def count(path):
    try:
        with open(path) as data:
            text = data.read()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else text.count("\n")


def grows(path, seconds=0.5):
    before = count(path)
    time.sleep(seconds)
    return count(path) > before


def test_freeze_holds_new_sessions_keeps_established_ones_and_unfreezes(lab):
    interfaces = {"inside": "in0", "outside": "out0"}
    assert lab.probe() == NAT_OUTSIDE, "the lab's NAT does not translate"
    stream = lab.start_stream()
    sshd = Sshd(lab)
    ticks = os.path.join(lab.tmp, "ssh.ticks")
    session = sshd.session(ticks)
    wait_for(lambda: count(ticks), "the SSH session to start")
    assert grows(stream) and grows(ticks, 0.5)

    # check mode touches nothing
    before = lab.ruleset()
    changed, result = lab.freeze(check=True, state="present", deadline=60, interfaces=interfaces)
    assert changed and result["frozen"] and result["interfaces"] == ["in0", "out0"]
    assert lab.ruleset() == before and not lab.has_freeze_objects()
    assert lab.probe() == NAT_OUTSIDE

    changed, result = lab.freeze(state="present", deadline=60, interfaces=interfaces)
    assert changed and result["frozen"] and result["interfaces"] == ["in0", "out0"]
    assert 55 <= result["remaining"] <= 61
    first_expiry = result["expires_at"]

    # frozen: a new connection through the NAT waits, the established stream keeps flowing,
    # the host's own traffic (SSH, arriving on the frozen inside interface) is never held
    assert lab.probe() is None
    assert grows(stream) and grows(ticks, 0.5) and session.poll() is None
    assert sshd.login() == "still-here"

    # check mode on a frozen host: nothing moves either
    before = lab.ruleset()
    changed = lab.freeze(check=True, state="present", deadline=5, interfaces={"inside": "in0"})[0]
    assert changed and lab.ruleset() == before

    # present again refreshes the deadline
    changed, result = lab.freeze(state="present", deadline=60, interfaces=interfaces)
    assert changed and result["frozen"] and result["expires_at"] > first_expiry

    # a client that keeps trying (TCP retransmits its SYN after 1, 3, 7, 15 s)
    waiting = lab.spawn(lab.cli, "/usr/bin/python3", lab.helper, "probe", SERVER_ADDR, "25",
                        stdout=subprocess.PIPE, text=True)
    assert lab.probe() is None and waiting.poll() is None, "a held connection got through while frozen"

    # unfreeze: service at once, and the connection that waited gets through on its SYN retry
    changed, result = lab.freeze(state="absent")
    assert changed and not result["frozen"] and result["expires_at"] is None
    assert lab.probe() == NAT_OUTSIDE
    out = waiting.communicate(timeout=30)[0]
    assert waiting.returncode == 0 and out.strip() == NAT_OUTSIDE, out
    assert not lab.has_freeze_objects()
    assert grows(stream) and session.poll() is None

    changed, result = lab.freeze(state="absent")
    assert not changed and not result["frozen"]


def test_freeze_lifts_itself_at_its_deadline_with_nothing_running(lab):
    interfaces = {"inside": "in0", "outside": "out0"}
    stream = lab.start_stream()
    changed, result = lab.freeze(state="present", deadline=3, interfaces=interfaces)
    assert changed and result["frozen"]
    expires_at = calendar.timegm(time.strptime(result["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert lab.probe(0.5) is None

    # no controller, no helper: nothing at all runs in the NAT's namespace now
    assert sh("ip", "netns", "pids", lab.nat).stdout.split() == []
    assert grows(stream, 0.5)
    time.sleep(max(0.0, expires_at - time.time()) + 0.3)
    assert lab.probe() == NAT_OUTSIDE, "the freeze did not lift itself at its deadline"

    # what the expired freeze left is inert; absent removes it
    changed, result = lab.freeze(state="absent")
    assert changed and not result["frozen"]
    assert not lab.has_freeze_objects()
