"""A stateful edge firewall and its learned state move between nftables and iptables+ipset, both ways.

Two labs of namespaces (created and removed here, named after NFSTATE_TEST_PREFIX and the pytest
worker), each

    client 198.51.100.2 (+ .66 scanner, .77 knocker)  --(outside) FW (inside)--  server 192.0.2.2
           2001:db8:2::2                                 .1 / ::1   .1 / ::1           2001:db8:1::2

Lab a's firewall names its devices out0/in0, lab b's wan0/lan0: documents name interfaces by role.
A realistic firewall is written by hand on the source (forward policy drop, established/related
accepted, a telnet trap that puts the scanner in a one-hour blocklist, a two-port knock that opens
ssh, a quota on the inside network's new traffic, a DNS counter, a rate-limited ping); real packets
fill its state; the real tools gather it; the document is validated as on the controller and
rendered for the other implementation; the real tools load it there and gather it again. Then the
same list of probes is tried against both firewalls and must be accepted or refused alike.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    from_document, recent_as_sets, to_document, without_state,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_nftables as nft

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

HOST_PYTHON = "/usr/bin/python3"
CLIENT, SCANNER, KNOCKER, LATE_KNOCKER = "198.51.100.2", "198.51.100.66", "198.51.100.77", "198.51.100.78"
CLIENT6, SCANNER6 = "2001:db8:2::2", "2001:db8:2::66"
SERVER, SERVER6 = "192.0.2.2", "2001:db8:1::2"
QUOTA_LIMIT = 200000
LIFETIME_SLACK = 5.0        # seconds between gathering on the source and on the target, generously

DEVICES = {"a": {"inside": "in0", "outside": "out0"}, "b": {"inside": "lan0", "outside": "wan0"}}

NFT_SOURCE = """
table inet nfstate_filter {
  quota guest { until %(quota)d bytes }
  counter dns { }
  set blocklist { type ipv4_addr; flags dynamic,timeout; timeout 1h; counter; }
  set blocklist6 { type ipv6_addr; flags dynamic,timeout; timeout 1h; counter; }
  set knock1 { type ipv4_addr; flags dynamic,timeout; timeout 2m; }
  set knock2 { type ipv4_addr; flags dynamic,timeout; timeout 2m; }
  chain forward {
    type filter hook forward priority 0; policy drop;
    iifname "%(inside)s" oifname "%(outside)s" ip saddr 192.0.2.0/24 quota name "guest" accept
    ct state established,related accept
    ct state invalid drop
    ip saddr @blocklist drop
    ip6 saddr @blocklist6 drop
    iifname "%(outside)s" tcp dport 23 add @blocklist { ip saddr } drop
    iifname "%(outside)s" tcp dport 23 add @blocklist6 { ip6 saddr } drop
    iifname "%(outside)s" tcp dport 7001 add @knock1 { ip saddr } drop
    iifname "%(outside)s" ip saddr @knock1 tcp dport 7002 add @knock2 { ip saddr } drop
    iifname "%(outside)s" ip saddr @knock2 tcp dport 22 ct state new accept
    iifname "%(outside)s" tcp dport 80 ct state new accept
    iifname "%(inside)s" oifname "%(outside)s" udp dport 53 counter name "dns" accept
    icmp type echo-request limit rate 10/second accept
    icmpv6 type echo-request accept
  }
}
"""

# The same firewall as an operator writes it for iptables, in our chains and sets: a quota by hand
# has no comment (its limit is what it was loaded with), the DNS counter is a rule's own counters.
IPSET_SOURCE = """create nfs-blocklist hash:ip family inet timeout 3600 counters
create nfs-blocklist6 hash:ip family inet6 timeout 3600 counters
create nfs-knock1 hash:ip family inet timeout 120
create nfs-knock2 hash:ip family inet timeout 120
"""
IPT_SOURCE = """*filter
:NFSTATE-FORWARD - [0:0]
-A FORWARD -j NFSTATE-FORWARD
-A NFSTATE-FORWARD -s 192.0.2.0/24 -i %(inside)s -o %(outside)s -m quota --quota %(quota)d -j ACCEPT
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
-A NFSTATE-FORWARD -i %(inside)s -o %(outside)s -p udp --dport 53 -m comment --comment "nfstate-counter dns" -j ACCEPT
-A NFSTATE-FORWARD -p icmp --icmp-type 8 -m limit --limit 10/sec -j ACCEPT
-A NFSTATE-FORWARD -j DROP -m comment --comment nfstate-policy
COMMIT
"""
IP6T_SOURCE = """*filter
:NFSTATE-FORWARD - [0:0]
-A FORWARD -j NFSTATE-FORWARD
-A NFSTATE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A NFSTATE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A NFSTATE-FORWARD -m set --match-set nfs-blocklist6 src -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 23 -j SET --add-set nfs-blocklist6 src
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 23 -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT
-A NFSTATE-FORWARD -i %(inside)s -o %(outside)s -p udp --dport 53 -m comment --comment "nfstate-counter dns" -j ACCEPT
-A NFSTATE-FORWARD -p ipv6-icmp --icmpv6-type 128 -j ACCEPT
-A NFSTATE-FORWARD -j DROP -m comment --comment nfstate-policy
COMMIT
"""

# A knock with a recent list (iptables only): two knocks on 7101 within a minute open 2222.
IPT_RECENT = """*filter
:NFSTATE-FORWARD - [0:0]
-A FORWARD -j NFSTATE-FORWARD
-A NFSTATE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 7101 -m recent --set --name knock -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 2222 -m recent --rcheck --seconds 60 --hitcount 2 --name knock -j ACCEPT
-A NFSTATE-FORWARD -j DROP -m comment --comment nfstate-policy
COMMIT
"""

# A one-knock opener with a recent list, for a target without recent lists.
IPT_OPENER = """*filter
:NFSTATE-FORWARD - [0:0]
-A FORWARD -j NFSTATE-FORWARD
-A NFSTATE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 7201 -m recent --set --name opener -j DROP
-A NFSTATE-FORWARD -i %(outside)s -p tcp --dport 2222 -m recent --rcheck --seconds 60 --name opener -j ACCEPT
-A NFSTATE-FORWARD -j DROP -m comment --comment nfstate-policy
COMMIT
"""

# The listeners and probes, run in the lab's namespaces.
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "firewall_probes.py")


def sh(*args, **kwargs):
    check = kwargs.pop("check", True)
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError("%s: %s" % (" ".join(args), out.stderr.strip()))
    return out


# Everything this file creates carries the run's prefix (conftest.py's convention) and the worker.
NAME_PREFIX = "%sfs%s-" % (os.environ.get("NFSTATE_TEST_PREFIX", "t"), re.sub(r"\D", "", os.environ.get("PYTEST_XDIST_WORKER", "")))


class Lab:
    """client -- firewall -- server, one lab per letter."""

    def __init__(self, tmp, letter):
        self.letter = letter
        self.cli, self.fw, self.srv = ("%s%s-%s" % (NAME_PREFIX, letter, role) for role in ("cli", "fw", "srv"))
        self.devices = DEVICES[letter]
        self.helper = HELPER
        self.procs = []

    def build(self):
        for ns in (self.cli, self.fw, self.srv):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.run(self.fw, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        out_dev, in_dev = self.devices["outside"], self.devices["inside"]
        sh("ip", "-n", self.fw, "link", "add", out_dev, "type", "veth", "peer", "name", "c0", "netns", self.cli)
        sh("ip", "-n", self.fw, "link", "add", in_dev, "type", "veth", "peer", "name", "s0", "netns", self.srv)
        addresses = (
            (self.cli, "c0", [CLIENT + "/24", SCANNER + "/24", KNOCKER + "/24", LATE_KNOCKER + "/24", CLIENT6 + "/64",
                              SCANNER6 + "/64"]),
            (self.fw, out_dev, ["198.51.100.1/24", "2001:db8:2::1/64"]),
            (self.fw, in_dev, ["192.0.2.1/24", "2001:db8:1::1/64"]),
            (self.srv, "s0", [SERVER + "/24", SERVER6 + "/64"]),
        )
        for ns, dev, addrs in addresses:
            for addr in addrs:
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", self.cli, "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
        sh("ip", "-n", self.cli, "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:2::1")
        sh("ip", "-n", self.srv, "route", "add", "default", "via", "192.0.2.1")
        sh("ip", "-n", self.srv, "-6", "route", "add", "default", "via", "2001:db8:1::1")
        self.serve(self.srv, ["%s:%d" % (SERVER, p) for p in (22, 25, 80, 2222)] + ["%s:%d" % (SERVER6, p) for p in (25, 80)])
        self.serve(self.cli, ["%s:8080" % CLIENT])

    def serve(self, ns, specs):
        proc = subprocess.Popen(["ip", "netns", "exec", ns, HOST_PYTHON, self.helper, "serve"] + specs,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def run(self, ns, *args, **kwargs):
        return sh("ip", "netns", "exec", ns, *args, **kwargs)

    def steps(self, ns, steps):
        """Run probe steps from a namespace: [[result per probe] per step]."""
        return json.loads(self.run(ns, HOST_PYTHON, self.helper, "probe", json.dumps(steps)).stdout)

    def clear(self):
        """Remove every firewall of ours (both implementations) and the connections it saw."""
        self.run(self.fw, "nft", "delete", "table", "inet", nft.TABLE_NAME, check=False)
        for tool in ("iptables-legacy", "ip6tables-legacy", "iptables-nft", "ip6tables-nft"):
            self.run(self.fw, tool, "-F", check=False)
            self.run(self.fw, tool, "-X", check=False)
        self.run(self.fw, "ipset", "destroy", check=False)
        self.run(self.fw, "conntrack", "-F", check=False)

    def teardown(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for ns in (self.cli, self.fw, self.srv):
            sh("ip", "netns", "del", ns, check=False)

    # -- the providers' work, done with the real tools
    def gather_nft(self):
        listing = json.loads(self.run(self.fw, "nft", "-j", "list", "table", "inet", nft.TABLE_NAME).stdout)
        text = self.run(self.fw, "nft", *nft.list_text_args()).stdout
        return nft.parse_ruleset(listing, self.devices, text)

    def apply_nft(self, firewall):
        self.run(self.fw, "nft", "-j", "-f", "-", input=json.dumps(nft.render_commands(firewall, self.devices)))
        script = nft.render_elements(firewall)
        if script:
            self.run(self.fw, "nft", "-f", "-", input=script)

    def clock(self):
        first = (ipt.parse_jiffies(self.run(self.fw, "cat", "/proc/timer_list").stdout), time.monotonic())
        time.sleep(0.2)
        second = (ipt.parse_jiffies(self.run(self.fw, "cat", "/proc/timer_list").stdout), time.monotonic())
        return second[0], ipt.hz_from_samples(first, second)

    def gather_ipt(self, backend):
        saves = dict((family, self.run(self.fw, ipt.PROGRAMS[(backend, family)][0], "-c", "-t", "filter").stdout)
                     for family in ("ipv4", "ipv6"))
        names = self.run(self.fw, "ls", "/proc/net/xt_recent", check=False).stdout.split()
        recent = dict((name, self.run(self.fw, "cat", "/proc/net/xt_recent/" + name).stdout) for name in names)
        return ipt.parse_save(saves, self.run(self.fw, "ipset", "save").stdout, recent, self.devices, self.clock())

    def apply_ipt(self, firewall, backend):
        self.run(self.fw, "ipset", "restore", input=ipt.render_ipset(firewall))
        for family in ("ipv4", "ipv6"):
            self.run(self.fw, ipt.PROGRAMS[(backend, family)][1], "--noflush", "--counters",
                     input=ipt.restore_payload(firewall, family, self.devices))
        for name, lines in ipt.render_recent(firewall).items():
            for line in lines:      # one write() per line, as xt_recent wants
                self.run(self.fw, HOST_PYTHON, "-c", "import sys; f = open(sys.argv[1], 'w'); f.write(sys.argv[2]); f.close()",
                         "/proc/net/xt_recent/" + name, line)


@pytest.fixture(scope="module")
def labs():
    tmp = tempfile.mkdtemp(prefix=NAME_PREFIX + "firewall-")
    built = [Lab(tmp, "a"), Lab(tmp, "b")]
    try:
        for lab in built:
            lab.teardown()      # leftovers of an interrupted run
            lab.build()
        yield built
    finally:
        for lab in built:
            lab.teardown()
        shutil.rmtree(tmp, ignore_errors=True)


def through_the_controller(firewall):
    """The document as the controller sees it: JSON text, validated against the YANG model."""
    doc = json.loads(json.dumps(to_document(firewall)))
    yang_model = pytest.importorskip("ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    assert yang_model.validate(doc) == []
    return from_document(doc)


def fill_state(lab):
    """Packets that teach the source: a scanner trips the trap, a knock is half done, the inside
    network uses part of its quota, DNS is counted."""
    lab.steps(lab.cli, [[["knock", SCANNER, SERVER, 23], ["knock", SCANNER6, SERVER6, 23]],
                        [["tcp", SCANNER, SERVER, 80], ["tcp", SCANNER6, SERVER6, 80]],
                        [["knock", KNOCKER, SERVER, 7001]]])
    lab.steps(lab.srv, [[["udp", SERVER, CLIENT, 90], ["udp", SERVER6, CLIENT6, 5]]])


PROBES_OUTSIDE = [
    [["tcp", CLIENT, SERVER, 80], ["tcp", CLIENT, SERVER, 25], ["tcp", CLIENT, SERVER, 22],
     ["tcp", SCANNER, SERVER, 80], ["tcp", CLIENT6, SERVER6, 80], ["tcp", CLIENT6, SERVER6, 25],
     ["tcp", SCANNER6, SERVER6, 80], ["ping", CLIENT, SERVER, 0], ["ping", CLIENT6, SERVER6, 0]],
    [["knock", KNOCKER, SERVER, 7002]],
    [["tcp", KNOCKER, SERVER, 22]],
]
EXPECTED_OUTSIDE = [[True, False, False, False, True, False, False, True, True], [None], [True]]
PROBES_INSIDE = [[["tcp", SERVER, CLIENT, 8080]]]


def compare(source, target):
    """Same rules, same set members with about the same lifetimes and counters, same quota use."""
    assert without_state(target) == without_state(source)
    for before, after in zip(source.sets, target.sets):
        assert [e.address for e in after.elements] == [e.address for e in before.elements], before.name
        for old, new in zip(before.elements, after.elements):
            assert abs(new.remaining - old.remaining) <= LIFETIME_SLACK, (old, new)
            assert (new.packets, new.bytes) == (old.packets, old.bytes), (old, new)
    assert target.quotas == source.quotas
    assert target.counters == source.counters


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_nftables_to_iptables(labs, backend):
    source_lab, target_lab = labs
    for lab in labs:
        lab.clear()
    source_lab.run(source_lab.fw, "nft", "-f", "-", input=NFT_SOURCE % dict(source_lab.devices, quota=QUOTA_LIMIT))
    fill_state(source_lab)
    gathered = source_lab.gather_nft()
    assert gathered.unsupported == []
    source = gathered.firewall
    blocklist = dict((s.name, s) for s in source.sets)["blocklist"]
    assert [e.address for e in blocklist.elements] == [SCANNER]
    assert 3600 - 60 < blocklist.elements[0].remaining <= 3600
    assert blocklist.elements[0].packets >= 1          # the refused web attempt after the trap
    assert [e.address for e in dict((s.name, s) for s in source.sets)["blocklist6"].elements] == [SCANNER6]
    assert [e.address for e in dict((s.name, s) for s in source.sets)["knock1"].elements] == [KNOCKER]
    used = source.quotas[0].used
    assert 90 * 1028 <= used < QUOTA_LIMIT
    assert [n.reason for n in source.not_carried] == [nft.NOT_CARRIED_LIMIT]

    # Control: the same rules without the learned state let the scanner in and forget the knock,
    # so the probes below can tell a firewall that moved its state from one that did not.
    target_lab.apply_ipt(without_state(source), backend)
    assert target_lab.steps(target_lab.cli, PROBES_OUTSIDE)[1:] == [[None], [False]]
    assert target_lab.steps(target_lab.cli, [[["tcp", SCANNER, SERVER, 80]]]) == [[True]]
    target_lab.clear()

    target_lab.apply_ipt(through_the_controller(source), backend)
    again = target_lab.gather_ipt(backend)
    assert again.unsupported == []
    compare(source, again.firewall)

    for lab in labs:
        assert lab.steps(lab.cli, PROBES_OUTSIDE) == EXPECTED_OUTSIDE, lab.letter
        assert lab.steps(lab.srv, PROBES_INSIDE) == [[True]], lab.letter


def test_iptables_to_nftables(labs):
    target_lab, source_lab = labs
    for lab in labs:
        lab.clear()
    values = dict(source_lab.devices, quota=QUOTA_LIMIT)
    source_lab.run(source_lab.fw, "ipset", "restore", input=IPSET_SOURCE)
    source_lab.run(source_lab.fw, "iptables-legacy-restore", "--noflush", input=IPT_SOURCE % values)
    source_lab.run(source_lab.fw, "ip6tables-legacy-restore", "--noflush", input=IP6T_SOURCE % values)
    fill_state(source_lab)
    gathered = source_lab.gather_ipt("legacy")
    assert gathered.unsupported == []
    source = gathered.firewall
    sets = dict((s.name, s) for s in source.sets)
    assert [e.address for e in sets["blocklist"].elements] == [SCANNER]
    assert [e.address for e in sets["blocklist6"].elements] == [SCANNER6]
    assert [e.address for e in sets["knock1"].elements] == [KNOCKER]
    assert 90 * 1028 <= source.quotas[0].used < QUOTA_LIMIT

    target_lab.apply_nft(through_the_controller(source))
    again = target_lab.gather_nft()
    assert again.unsupported == []
    compare(source, again.firewall)

    for lab in labs:
        assert lab.steps(lab.cli, PROBES_OUTSIDE) == EXPECTED_OUTSIDE, lab.letter
        assert lab.steps(lab.srv, PROBES_INSIDE) == [[True]], lab.letter


def test_recent_lists_move_between_iptables_backends(labs):
    source_lab, target_lab = labs
    for lab in labs:
        lab.clear()
    source_lab.run(source_lab.fw, "iptables-legacy-restore", "--noflush", input=IPT_RECENT % source_lab.devices)
    source_lab.steps(source_lab.cli, [[["knock", LATE_KNOCKER, SERVER, 7101]]])
    gathered = source_lab.gather_ipt("legacy")
    assert gathered.unsupported == []
    source = gathered.firewall
    (knock,) = source.recent_lists
    assert [(e.address, len(e.ages)) for e in knock.entries] == [(LATE_KNOCKER, 1)]
    assert knock.entries[0].ages[0] < 30
    # nftables has no recent lists: rendering for it names them instead of losing them.
    with pytest.raises(nft.RenderError, match="recent lists knock"):
        nft.render_commands(source, target_lab.devices)

    target_lab.apply_ipt(through_the_controller(source), "nft")
    again = target_lab.gather_ipt("nft").firewall
    assert without_state(again) == without_state(source)
    assert [(e.address, len(e.ages)) for e in again.recent_lists[0].entries] == [(LATE_KNOCKER, 1)]
    # The knock started on the source completes on the target with one more knock; an address
    # that knocked once on the target only is still refused.
    steps = [[["tcp", LATE_KNOCKER, SERVER, 2222]], [["knock", LATE_KNOCKER, SERVER, 7101], ["knock", CLIENT, SERVER, 7101]],
             [["tcp", LATE_KNOCKER, SERVER, 2222], ["tcp", CLIENT, SERVER, 2222]]]
    assert target_lab.steps(target_lab.cli, steps) == [[False], [None, None], [True, False]]


def test_a_recent_list_becomes_an_nftables_set(labs):
    source_lab, target_lab = labs
    for lab in labs:
        lab.clear()
    source_lab.run(source_lab.fw, "iptables-legacy-restore", "--noflush", input=IPT_OPENER % source_lab.devices)
    source_lab.steps(source_lab.cli, [[["knock", LATE_KNOCKER, SERVER, 7201]]])
    source = source_lab.gather_ipt("legacy").firewall
    turned = recent_as_sets(source)
    (opener,) = turned.sets
    assert [e.address for e in opener.elements] == [LATE_KNOCKER] and 30 < opener.elements[0].remaining <= 60

    target_lab.apply_nft(through_the_controller(turned))
    again = target_lab.gather_nft().firewall
    assert without_state(again) == without_state(turned)
    (moved,) = again.sets
    assert [e.address for e in moved.elements] == [LATE_KNOCKER]
    assert abs(moved.elements[0].remaining - opener.elements[0].remaining) <= LIFETIME_SLACK
    # The address that knocked on the source is let in by the target; another one is not.
    probes = [[["tcp", LATE_KNOCKER, SERVER, 2222], ["tcp", CLIENT, SERVER, 2222]]]
    for lab in labs:
        assert lab.steps(lab.cli, probes) == [[True, False]], lab.letter
