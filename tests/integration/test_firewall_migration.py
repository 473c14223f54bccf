"""A NAT that is also a stateful firewall moves with ansible-playbook, state and live flows included.

The lab (lab/nfstate_lab.py) has its NAT on nat-a (iptables-legacy). Flows start through it, IPv4
and IPv6, translated (client -> server) and untranslated (the server to the client's own address),
then a firewall is loaded there by hand: forward policy drop, established and related accepted, a
telnet trap that puts an address in a one-hour blocklist (an IPv4 and an IPv6 one), a two-port
knock that opens ssh, a quota on the inside network's port 5353, a few ports open for new
connections. Real packets teach it. Then

  1. nfstate.migration.migrate_nat with nfstate_functions [nat, firewall] moves everything to nat-b
     (nftables): every flow keeps going, the blocklisted addresses are still refused with about the
     lifetime they had left, the quota is used as much, the knock started on nat-a completes on
     nat-b, and a list of new-connection probes gets the answers it got on nat-a. The run is held
     twice (NFSTATE_CUTOVER_HOLD): before its catch-up (`prepared`), when another address trips the
     trap and the quota is used further, which the catch-up must carry; and after it, just before
     the freeze (`freeze_sent`), when two more addresses (IPv4, IPv6) trip the trap, which only the
     window's delta can carry, and datagrams to a multicast group and a broadcast address make
     entries that are nat-a's own and must stay;
  2. the way back, the control: the same run without the firewall's sessions (selectors
     forwarded: false). The translated flows still move (their sessions are the NAT's); the
     untranslated ones die at the firewall's drop policy, so the first run's survival is no accident.
     The learned state is back on iptables (ipsets) all the same, with what the packet path wrote
     on nat-b while this run was held at the same two steps.
The snapshots of the first run hold none of nat-a's own connections (its sshd management session).
"""

import gzip
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
CLIENT, SERVER, CLIENT6 = "192.0.2.10", "203.0.113.20", "2001:db8:1::10"
SCANNER, KNOCKER, SCANNER6 = "203.0.113.66", "203.0.113.77", "2001:db8:2::66"
# Blocklisted after the pre-copy, while a run is held: before its catch-up (EARLY, BACK) or after it,
# just before the freeze (LATE, LATE6, BACK6).
EARLY, LATE, LATE6 = "203.0.113.55", "203.0.113.88", "2001:db8:2::88"
BACK, BACK6 = "203.0.113.99", "2001:db8:2::99"
QUOTA_MORE = 25              # datagrams through the quota while a run is held before its catch-up
# Datagrams the host takes for itself (never forwarded): their entries are nat-a's own.
HOST_ONLY = ("224.0.0.1", "192.0.2.255")
QUOTA_LIMIT, QUOTA_DATAGRAMS = 200000, 100
LIFETIME_SLACK = 10.0        # seconds: two reads of a lifetime on two hosts, taken apart on a busy machine
# IPv6: one translated and one untranslated TCP stream (a flow costs the shared machine a core's share).
TRANSLATED = ("tcp4", "udp4", "ping4", "tcp6")
UNTRANSLATED = ("tcpu4", "udpu4", "pingu4", "tcpu6")

# The knock's stages last longer than a migration takes on a busy machine (minutes, when several
# labs share two cores): the knock must still be under way on the target.
IPSETS = """create nfs-blocklist hash:ip family inet timeout 3600 counters
create nfs-knock1 hash:ip family inet timeout 900
create nfs-knock2 hash:ip family inet timeout 900
create nfs-block6 hash:ip family inet6 timeout 3600 counters
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
-A NFSTATE-FORWARD -m set --match-set nfs-block6 src -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 23 -j SET --add-set nfs-block6 src
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 23 -j DROP
-A NFSTATE-FORWARD -j DROP -m comment --comment nfstate-policy
COMMIT
"""

# The listeners and probes, run in the lab's namespaces with the host's Python.
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "firewall_probes.py")

# New connections, each answered the same by the firewall wherever it runs (no state changes).
PROBES_INSIDE = [[["tcp", CLIENT, SERVER, 5003], ["tcp", CLIENT, SERVER, 5005], ["ping", CLIENT, SERVER, 0]]]
PROBES_OUTSIDE = [[["tcp", SERVER, CLIENT, 80], ["tcp", SERVER, CLIENT, 25], ["tcp", SCANNER, CLIENT, 80],
                   ["ping", SERVER, CLIENT, 0]]]
EXPECTED = ([[True, False, True]], [[True, False, False, False]])


class Probes:
    """The helper's listeners (client: 22, 25, 80; server: 5003, 5005) and its probe runs."""

    def __init__(self, lab):
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
        """The inside and the outside probes, both sides at the same time (a refused probe waits
        for its timeout)."""
        runs = [self.lab.popen(role, [HOST_PYTHON, self.path, "probe", json.dumps(steps)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, text=True)
                for role, steps in (("client", PROBES_INSIDE), ("server", PROBES_OUTSIDE))]
        return tuple(json.loads(run.communicate(timeout=60)[0]) for run in runs)

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def lab(lab_name):
    with Lab(lab_name("fm"), source_impl="iptables-legacy", target_impl="nftables") as built:
        # The server reaches the client's own addresses through whichever host holds the service.
        built.run("server", ["ip", "route", "replace", "192.0.2.0/24", "via", built.addresses["external"][4]])
        built.run("server", ["ip", "-6", "route", "replace", "2001:db8:1::/64", "via", built.addresses["external"][6]])
        for address in (SCANNER, KNOCKER, EARLY, LATE, BACK):
            built.run("server", ["ip", "addr", "replace", address + "/24", "dev", "eth0"])
        for address in (SCANNER6, LATE6, BACK6):
            built.run("server", ["ip", "addr", "replace", address + "/64", "dev", "eth0", "nodad"])
        yield built


def migrate(lab, source, target, snapshots, *extra, holds=None):
    """One run of the playbook. `holds`: {cutover step: call}, each call made while the cutover
    waits at its step (NFSTATE_CUTOVER_HOLD). (the run, its seconds, {step: what its call returned})"""
    argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=%s" % source,
            "-e", "nfstate_target=%s" % target, "-e", "nfstate_snapshot_dir=%s" % snapshots,
            "-e", json.dumps({"nfstate_functions": ["nat", "firewall"]}),
            # The lab's flows speak every 10 ms: half a second without a packet says the neighbours switched.
            "-e", "nfstate_release_quiet=0.5"] + list(extra)
    holds = holds or {}
    paths = dict((step, "%s.%s.hold" % (snapshots, step)) for step in holds)
    env = dict(lab.env, NFSTATE_CUTOVER_HOLD=",".join("%s:%s" % item for item in sorted(paths.items())))
    started = time.monotonic()
    seen = {}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            while len(seen) < len(holds) and proc.poll() is None and time.monotonic() - started < 400:
                for step, path in paths.items():
                    if step not in seen and os.path.exists(path):
                        try:
                            seen[step] = holds[step]()
                        finally:
                            os.unlink(path)
                time.sleep(0.05)
            proc.wait(timeout=max(1, 400 - (time.monotonic() - started)))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        run = subprocess.CompletedProcess(argv, proc.returncode, out.read(), "")
    assert sorted(seen) == sorted(holds), "the run did not reach every hold (%s):\n%s" % (sorted(holds), run.stdout[-6000:])
    return run, time.monotonic() - started, seen


def received(results, name):
    result = results[name]
    return result["bytes_received"] if result["kind"] == "tcp" else result["packets_received"]


def progress(flows, seconds=2.5):
    """Which flows carried traffic over the next seconds (live results are written every second)."""
    first = flows.results()
    time.sleep(seconds)
    second = flows.results()
    return dict((name, received(second, name) > received(first, name)) for name in second)


def blocklist_ipset(lab, host, name="blocklist"):
    """{address: seconds left} of a blocklist ipset on an iptables host."""
    text = lab.run(host, ["ipset", "save", "nfs-" + name]).stdout
    return dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^add nfs-%s (\S+) timeout (\d+)" % name, text, re.M))


def nft_objects(lab, host, kind):
    listing = json.loads(lab.run(host, ["nft", "-j", "list", "table", "inet", "nfstate_filter"]).stdout)
    return [item[kind] for item in listing["nftables"] if kind in item]


def blocklist_nft(lab, host, name="blocklist"):
    """{address: seconds left} of a blocklist set on an nftables host."""
    (blocklist,) = [s for s in nft_objects(lab, host, "set") if s["name"] == name]
    return dict((e["elem"]["val"], e["elem"]["expires"]) for e in blocklist.get("elem", []) if isinstance(e, dict))


def quota_rule_bytes(lab, host):
    save = lab.run(host, ["iptables-legacy-save", "-c", "-t", "filter"]).stdout
    (found,) = re.findall(r"^\[\d+:(\d+)\] -A NFSTATE-FORWARD .*-m quota", save, re.M)
    return int(found)


def lifetimes(read):
    """{address: (seconds left, monotonic time read)} of a blocklist read just now."""
    now = time.monotonic()
    return dict((address, (left, now)) for address, left in read.items())


def assert_lifetimes(before, after):
    """`after` ({address: seconds left}, read just now) holds exactly the addresses of `before`,
    each with what it had left less the time since."""
    now = time.monotonic()
    assert sorted(after) == sorted(before), (after, before)
    off = dict((address, round(after[address] - (left - (now - read_at)), 1)) for address, (left, read_at) in before.items())
    assert all(abs(seconds) <= LIFETIME_SLACK for seconds in off.values()), off


SEND_HOST_ONLY = """import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.bind((%r, 0))
for address in %r:
    sock.sendto(b"x", (address, 5353))
""" % (CLIENT, HOST_ONLY)


def host_addresses(lab, host):
    listing = json.loads(lab.run(host, ["ip", "-j", "addr"]).stdout)
    return set(a["local"] for link in listing for a in link.get("addr_info", []))


def snapshot_entries(run_dir):
    """Every mapping entry of a run's pre-copy and delta snapshots."""
    (pair,) = [os.path.join(root, "") for root, dirs, files in os.walk(str(run_dir)) if "precopy.json.gz" in files]
    entries = {}
    for name in ("precopy", "delta"):
        with gzip.open(pair + name + ".json.gz") as handle:
            (instance,) = json.load(handle)["ietf-nat:nat"]["instances"]["instance"]
        entries[name] = instance.get("mapping-table", {}).get("mapping-entry", [])
    return entries


def ends(entry):
    return set(entry[key].split("/")[0] for key in ("internal-src-address", "internal-dst-address",
                                                    "external-src-address", "external-dst-address") if key in entry)


def test_nat_and_firewall_move_together_and_back_without_the_firewalls_sessions(lab, tmp_path):
    probes = Probes(lab)
    inside, outside = lab.devices["nat-a"]
    own = host_addresses(lab, "nat-a")
    try:
        probes.serve("client", ["%s:%d" % (CLIENT, port) for port in (22, 25, 80)])
        probes.serve("server", ["%s:%d" % (SERVER, port) for port in (5003, 5005)])
        with FlowSet(lab, kinds=("tcp", "udp", "ping", "tcpu", "udpu", "pingu"), families=(4, 6), duration=900,
                     only=TRANSLATED + UNTRANSLATED) as flows:
            # The firewall comes after the flows: they are established when its drop policy arrives.
            lab.run("nat-a", ["ipset", "restore"], input_text=IPSETS)
            lab.run("nat-a", ["iptables-legacy-restore", "--noflush"],
                    input_text=FILTER4 % dict(inside=inside, outside=outside, quota=QUOTA_LIMIT))
            lab.run("nat-a", ["ip6tables-legacy-restore", "--noflush"], input_text=FILTER6 % dict(outside=outside))
            # The packet path learns: scanners trip the traps, a knock is half done, the quota half used.
            probes.steps("server", [[["knock", SCANNER, CLIENT, 23], ["knock", SCANNER6, CLIENT6, 23],
                                     ["knock", KNOCKER, CLIENT, 7001]]])
            probes.steps("client", [[["udp", CLIENT, SERVER, QUOTA_DATAGRAMS, 5353]]])
            assert all(progress(flows).values()), format_results(flows.results())
            on_source = probes.answers()
            assert on_source == EXPECTED
            used = quota_rule_bytes(lab, "nat-a")
            assert QUOTA_DATAGRAMS * 1028 <= used < QUOTA_LIMIT
            left = lifetimes(blocklist_ipset(lab, "nat-a"))
            left6 = lifetimes(blocklist_ipset(lab, "nat-a", "block6"))
            assert list(left) == [SCANNER] and 3500 < left[SCANNER][0] <= 3600
            assert list(left6) == [SCANNER6] and 3500 < left6[SCANNER6][0] <= 3600

            def before_the_catch_up():
                # After the pre-copy, while the source serves: the catch-up carries these, whole.
                probes.steps("server", [[["knock", EARLY, CLIENT, 23]]])
                probes.steps("client", [[["udp", CLIENT, SERVER, QUOTA_MORE, 5353]]])
                return quota_rule_bytes(lab, "nat-a")

            def after_the_catch_up():
                # Once the catch-up is done, just before the freeze: only the window can carry these.
                probes.steps("server", [[["knock", LATE, CLIENT, 23], ["knock", LATE6, CLIENT6, 23]]])
                lab.run("client", [HOST_PYTHON, "-c", SEND_HOST_ONLY])
                held = lab.run("nat-a", ["conntrack", "-L", "-p", "udp", "--dport", "5353"]).stdout
                return (lifetimes(blocklist_ipset(lab, "nat-a")), lifetimes(blocklist_ipset(lab, "nat-a", "block6")),
                        [address for address in HOST_ONLY if "dst=%s " % address in held])

            there, there_s, seen = migrate(lab, "nat-a", "nat-b", tmp_path / "there",
                                           holds={"prepared": before_the_catch_up, "freeze_sent": after_the_catch_up})
            assert there.returncode == 0, there.stdout[-6000:]
            assert lab.service_holder() == "nat-b"
            moved = progress(flows)
            assert all(moved.values()), (moved, format_results(flows.results()))
            assert all(flows.results()[name]["in_order"] for name in ("tcp4", "tcpu4", "tcp6", "tcpu6"))

            # The learned state, read from nftables on the target: what the pre-copy carried and what
            # the packet path wrote after it, before and after the catch-up, each with about the
            # lifetime it had left.
            late, late6, host_only = seen["freeze_sent"]
            assert set(late) == {SCANNER, EARLY, LATE} and set(late6) == {SCANNER6, LATE6}
            assert_lifetimes(late, blocklist_nft(lab, "nat-b"))
            assert_lifetimes(late6, blocklist_nft(lab, "nat-b", "block6"))
            used = seen["prepared"]
            assert (QUOTA_DATAGRAMS + QUOTA_MORE) * 1028 <= used < QUOTA_LIMIT
            (quota,) = nft_objects(lab, "nat-b", "quota")
            assert (quota["bytes"], quota["used"]) == (QUOTA_LIMIT, used)
            assert probes.answers() == on_source
            # The knock started on nat-a completes on nat-b; an address that did not start it is refused.
            knocks = [[["knock", KNOCKER, CLIENT, 7002], ["knock", SERVER, CLIENT, 7002]],
                      [["tcp", KNOCKER, CLIENT, 22], ["tcp", SERVER, CLIENT, 22]]]
            assert probes.steps("server", knocks) == [[None, None], [True, False]]
            # The firewall's sessions are flows through nat-a (IPv4 and IPv6), never nat-a's own
            # connections: not its sshd session, nor what it took for itself (multicast, broadcast).
            assert host_only == list(HOST_ONLY)
            entries = snapshot_entries(tmp_path / "there")
            forwarded = [e for e in entries["precopy"] + entries["delta"] if e.get("nfstate-firewall:forwarded")]
            assert {4, 6} <= set(6 if ":" in e["internal-dst-address"] else 4 for e in forwarded
                                 if e.get("internal-dst-port", {}).get("start-port-number") == 5011)
            assert [e for e in forwarded if ends(e) & (own | set(HOST_ONLY))] == []
            assert [e for e in entries["precopy"] + entries["delta"] if lab.mgmt_address("nat-a") in ends(e)] == []

            # The control: back to iptables without the firewall's (untranslated) sessions; the
            # packet path writes on nat-b after the pre-copy, before and after the catch-up.

            def before_the_way_back():
                probes.steps("server", [[["knock", BACK, CLIENT, 23]]])
                probes.steps("client", [[["udp", CLIENT, SERVER, QUOTA_MORE, 5353]]])
                (now_used,) = [q["used"] for q in nft_objects(lab, "nat-b", "quota")]
                return now_used

            def just_before_the_way_back():
                probes.steps("server", [[["knock", BACK6, CLIENT6, 23]]])
                return lifetimes(blocklist_nft(lab, "nat-b")), lifetimes(blocklist_nft(lab, "nat-b", "block6"))

            back, back_s, seen = migrate(
                lab, "nat-b", "nat-a", tmp_path / "back", "-e", json.dumps({"nfstate_selectors": {"forwarded": False}}),
                holds={"prepared": before_the_way_back, "freeze_sent": just_before_the_way_back})
            assert back.returncode == 0, back.stdout[-6000:]
            assert lab.service_holder() == "nat-a"
            time.sleep(1.0)
            after = progress(flows)
            assert [name for name in TRANSLATED if after[name]] == list(TRANSLATED), format_results(flows.results())
            assert [name for name in UNTRANSLATED if after[name]] == [], format_results(flows.results())
            back_left, back_left6 = seen["freeze_sent"]
            assert set(back_left) == {SCANNER, EARLY, LATE, BACK} and set(back_left6) == {SCANNER6, LATE6, BACK6}
            assert_lifetimes(back_left, blocklist_ipset(lab, "nat-a"))
            assert_lifetimes(back_left6, blocklist_ipset(lab, "nat-a", "block6"))
            used = seen["prepared"]
            assert (QUOTA_DATAGRAMS + 2 * QUOTA_MORE) * 1028 <= used < QUOTA_LIMIT
            assert quota_rule_bytes(lab, "nat-a") == used
            assert probes.answers() == on_source
            results = flows.stop()
        # Over both runs the translated flows lost nothing; the untranslated ones broke at the control.
        assert all(results[name]["ok"] for name in TRANSLATED), format_results(results)
        assert not any(results[name]["ok"] for name in UNTRANSLATED), format_results(results)
        print("migrations: there %.1f s, back %.1f s; windows %s ms" % (there_s, back_s, windows(tmp_path)))
    finally:
        probes.stop()


def windows(tmp_path):
    """The freeze windows of the runs' reports (ms)."""
    found = []
    for root, dirs, files in sorted(os.walk(str(tmp_path))):
        if "report.json" in files:
            with open(os.path.join(root, "report.json")) as handle:
                found.append(json.load(handle).get("cutover", {}).get("window_ms"))
    return found
