"""A NAT that is also a stateful firewall moves with ansible-playbook, state and live flows included.

The lab (lab/nfstate_lab.py, named fwmig) has its NAT on nat-a (iptables-legacy). Flows start
through it, translated (client -> server) and untranslated (the server to the client's own address),
then a firewall is loaded there by hand: forward policy drop, established and related accepted, a
telnet trap that puts an address in a one-hour blocklist, a two-port knock that opens ssh, a quota on
the inside network's port 5353, a few ports open for new connections. Real packets teach it. Then

  1. nfstate.migration.migrate_nat with nfstate_functions [nat, firewall] moves everything to nat-b
     (nftables): every flow keeps going, the blocklisted address is still refused with about the
     lifetime it had left, the quota is used as much, the knock started on nat-a completes on nat-b,
     and a list of new-connection probes gets the answers it got on nat-a;
  2. the way back, the control: the same run without the firewall's sessions (selectors
     forwarded: false). The translated flows still move (their sessions are the NAT's); the
     untranslated ones die at the firewall's drop policy, so the first run's survival is no accident.
     The learned state is back on iptables (an ipset) all the same.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from ansible_collections.nfstate.migration.lab.flows import FlowSet, format_results
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
HOST_PYTHON = "/usr/bin/python3"
LAB_NAME = "fwmig"
CLIENT, SERVER = "192.0.2.10", "203.0.113.20"
SCANNER, KNOCKER = "203.0.113.66", "203.0.113.77"
QUOTA_LIMIT, QUOTA_DATAGRAMS = 200000, 100
LIFETIME_SLACK = 10.0        # seconds: two reads of a lifetime on two hosts, taken apart on a busy machine
TRANSLATED = ("tcp4", "udp4", "ping4")
UNTRANSLATED = ("tcpu4", "udpu4", "pingu4")

# The knock's stages last longer than a migration takes on a busy machine (minutes, when several
# labs share two cores): the knock must still be under way on the target.
IPSETS = """create nfs-blocklist hash:ip family inet timeout 3600 counters
create nfs-knock1 hash:ip family inet timeout 900
create nfs-knock2 hash:ip family inet timeout 900
"""
# No rule accepts new connections to the flows' ports: on a target, a packet of a flow whose
# session did not move is picked up as new and meets the drop policy.
FILTER4 = """*filter
:NFSTATE-FORWARD - [0:0]
-A FORWARD -j NFSTATE-FORWARD
-A NFSTATE-FORWARD -s 192.0.2.0/24 -i %(inside)s -o %(outside)s -p udp --dport 5353 -m quota --quota %(quota)d -j ACCEPT
-A NFSTATE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A NFSTATE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A NFSTATE-FORWARD -m set --match-set nfs-blocklist src -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 23 -j SET --add-set nfs-blocklist src
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 23 -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 7001 -j SET --add-set nfs-knock1 src
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 7001 -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 7002 -m set --match-set nfs-knock1 src -j SET --add-set nfs-knock2 src
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 7002 -m set --match-set nfs-knock1 src -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 22 -m set --match-set nfs-knock2 src -m conntrack --ctstate NEW -j ACCEPT
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT
-A NFSTATE-FORWARD -i %(inside)s -o %(outside)s -p tcp --dport 5003 -m conntrack --ctstate NEW -j ACCEPT
-A NFSTATE-FORWARD -i %(inside)s -p icmp --icmp-type 8 -j ACCEPT
-A NFSTATE-FORWARD -j DROP -m comment --comment nfstate-policy
COMMIT
"""
FILTER6 = """*filter
:NFSTATE-FORWARD - [0:0]
-A FORWARD -j NFSTATE-FORWARD
-A NFSTATE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A NFSTATE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A NFSTATE-FORWARD -j DROP -m comment --comment nfstate-policy
COMMIT
"""

# Listeners and probes, run inside the lab's namespaces with the host's Python.
# The listeners and probes, run in the lab's namespaces.
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "firewall_probes.py")

# New connections, each answered the same by the firewall wherever it runs (no state changes).
PROBES_INSIDE = [[["tcp", CLIENT, SERVER, 5003], ["tcp", CLIENT, SERVER, 5005], ["ping", CLIENT, SERVER, 0]]]
PROBES_OUTSIDE = [[["tcp", SERVER, CLIENT, 80], ["tcp", SERVER, CLIENT, 25], ["tcp", SCANNER, CLIENT, 80],
                   ["ping", SERVER, CLIENT, 0]]]
EXPECTED = ([[True, False, True]], [[True, False, False, False]])


class Probes:
    """The helper's listeners (client: 22, 25, 80; server: 5003, 5005) and its probe runs."""

    def __init__(self, lab, tmp):
        self.lab = lab
        self.path = HELPER
        self.procs = []

    def serve(self, role, specs):
        proc = self.lab.popen(role, [HOST_PYTHON, self.path, "serve"] + specs, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def steps(self, role, steps):
        return json.loads(self.lab.run(role, [HOST_PYTHON, self.path, "probe", json.dumps(steps)], timeout=60).stdout)

    def answers(self):
        return self.steps("client", PROBES_INSIDE), self.steps("server", PROBES_OUTSIDE)

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def lab():
    with Lab(LAB_NAME, source_impl="iptables-legacy", target_impl="nftables") as built:
        # The server reaches the client's own address through whichever host holds the service.
        built.run("server", ["ip", "route", "replace", "192.0.2.0/24", "via", built.addresses["external"][4]])
        for address in (SCANNER, KNOCKER):
            built.run("server", ["ip", "addr", "replace", address + "/24", "dev", "eth0"])
        yield built


def migrate(lab, source, target, snapshots, *extra):
    argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=%s" % source,
            "-e", "nfstate_target=%s" % target, "-e", "nfstate_snapshot_dir=%s" % snapshots,
            "-e", json.dumps({"nfstate_functions": ["nat", "firewall"]})] + list(extra)
    started = time.monotonic()
    run = subprocess.run(argv, env=lab.env, capture_output=True, text=True, check=False, timeout=400)
    return run, time.monotonic() - started


def received(results, name):
    result = results[name]
    return result["bytes_received"] if result["kind"] == "tcp" else result["packets_received"]


def progress(flows, seconds=2.5):
    """Which flows carried traffic over the next seconds (live results are written every second)."""
    first = flows.results()
    time.sleep(seconds)
    second = flows.results()
    return dict((name, received(second, name) > received(first, name)) for name in second)


def blocklist_ipset(lab, host):
    """{address: seconds left} of the blocklist ipset on an iptables host."""
    text = lab.run(host, ["ipset", "save", "nfs-blocklist"]).stdout
    return dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^add nfs-blocklist (\S+) timeout (\d+)", text, re.M))


def nft_objects(lab, host, kind):
    listing = json.loads(lab.run(host, ["nft", "-j", "list", "table", "inet", "nfstate_filter"]).stdout)
    return [item[kind] for item in listing["nftables"] if kind in item]


def blocklist_nft(lab, host):
    (blocklist,) = [s for s in nft_objects(lab, host, "set") if s["name"] == "blocklist"]
    return dict((e["elem"]["val"], e["elem"]["expires"]) for e in blocklist.get("elem", []) if isinstance(e, dict))


def quota_rule_bytes(lab, host):
    save = lab.run(host, ["iptables-legacy-save", "-c", "-t", "filter"]).stdout
    (found,) = re.findall(r"^\[\d+:(\d+)\] -A NFSTATE-FORWARD .*-m quota", save, re.M)
    return int(found)


def test_nat_and_firewall_move_together_and_back_without_the_firewalls_sessions(lab, tmp_path):
    tmp = tempfile.mkdtemp(prefix="fw-probes-", dir=str(tmp_path))
    probes = Probes(lab, tmp)
    inside, outside = lab.devices["nat-a"]
    try:
        probes.serve("client", ["%s:%d" % (CLIENT, port) for port in (22, 25, 80)])
        probes.serve("server", ["%s:%d" % (SERVER, port) for port in (5003, 5005)])
        with FlowSet(lab, kinds=("tcp", "udp", "ping", "tcpu", "udpu", "pingu"), families=(4,), duration=900) as flows:
            # The firewall comes after the flows: they are established when its drop policy arrives.
            lab.run("nat-a", ["ipset", "restore"], input_text=IPSETS)
            lab.run("nat-a", ["iptables-legacy-restore", "--noflush"],
                    input_text=FILTER4 % dict(inside=inside, outside=outside, quota=QUOTA_LIMIT))
            lab.run("nat-a", ["ip6tables-legacy-restore", "--noflush"], input_text=FILTER6)
            # The packet path learns: a scanner trips the trap, a knock is half done, the quota half used.
            probes.steps("server", [[["knock", SCANNER, CLIENT, 23], ["knock", KNOCKER, CLIENT, 7001]]])
            probes.steps("client", [[["udp", CLIENT, SERVER, QUOTA_DATAGRAMS, 5353]]])
            assert all(progress(flows).values()), format_results(flows.results())
            on_source = probes.answers()
            assert on_source == EXPECTED
            used = quota_rule_bytes(lab, "nat-a")
            assert QUOTA_DATAGRAMS * 1028 <= used < QUOTA_LIMIT
            left = blocklist_ipset(lab, "nat-a")
            read_at = time.monotonic()
            assert list(left) == [SCANNER] and 3500 < left[SCANNER] <= 3600

            there, there_s = migrate(lab, "nat-a", "nat-b", tmp_path / "there")
            assert there.returncode == 0, there.stdout[-6000:]
            assert lab.service_holder() == "nat-b"
            moved = progress(flows)
            assert all(moved.values()), (moved, format_results(flows.results()))
            assert all(flows.results()[name]["in_order"] for name in ("tcp4", "tcpu4"))

            # The learned state, read from nftables on the target.
            expires = blocklist_nft(lab, "nat-b")
            assert list(expires) == [SCANNER]
            assert abs(expires[SCANNER] - (left[SCANNER] - (time.monotonic() - read_at))) <= LIFETIME_SLACK
            (quota,) = nft_objects(lab, "nat-b", "quota")
            assert (quota["bytes"], quota["used"]) == (QUOTA_LIMIT, used)
            assert probes.answers() == on_source
            # The knock started on nat-a completes on nat-b; an address that did not start it is refused.
            knocks = [[["knock", KNOCKER, CLIENT, 7002], ["knock", SERVER, CLIENT, 7002]],
                      [["tcp", KNOCKER, CLIENT, 22], ["tcp", SERVER, CLIENT, 22]]]
            assert probes.steps("server", knocks) == [[None, None], [True, False]]

            # The control: back to iptables without the firewall's (untranslated) sessions.
            left = blocklist_nft(lab, "nat-b")
            read_at = time.monotonic()
            back, back_s = migrate(lab, "nat-b", "nat-a", tmp_path / "back",
                                   "-e", json.dumps({"nfstate_selectors": {"forwarded": False}}))
            assert back.returncode == 0, back.stdout[-6000:]
            assert lab.service_holder() == "nat-a"
            time.sleep(1.0)
            after = progress(flows)
            assert [name for name in TRANSLATED if after[name]] == list(TRANSLATED), format_results(flows.results())
            assert [name for name in UNTRANSLATED if after[name]] == [], format_results(flows.results())
            returned = blocklist_ipset(lab, "nat-a")
            assert list(returned) == [SCANNER]
            assert abs(returned[SCANNER] - (left[SCANNER] - (time.monotonic() - read_at))) <= LIFETIME_SLACK
            assert quota_rule_bytes(lab, "nat-a") == used
            assert probes.answers() == on_source
            results = flows.stop()
        # Over both runs the translated flows lost nothing; the untranslated ones broke at the control.
        assert all(results[name]["ok"] for name in TRANSLATED), format_results(results)
        assert not any(results[name]["ok"] for name in UNTRANSLATED), format_results(results)
        print("migrations: there %.1f s, back %.1f s" % (there_s, back_s))
    finally:
        probes.stop()
