"""nfstate.migration.nat_rules against real kernel NAT: iptables-legacy, iptables-nft and nftables.

Lab (namespaces created and removed here, by conftest.py's netns_lab and labs.routed_site):

    client 192.0.2.2, 2001:db8:1::2 --(in0) NAT (out0)-- server 198.51.100.2, 2001:db8:2::2
                                 192.0.2.1      198.51.100.1
                                 2001:db8:1::1  2001:db8:2::1

The server routes the source NAT pools (203.0.113.0/24, 2001:db8:3::/64) to the NAT and has no route
to the inside networks, so every answer proves a translation. The server reports the address and
port it saw; the client runs the port-forwarded server and reports where the connection arrived.
"""

import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import NatRule, rules_of
from labs import collection_env, routed_site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
HOST_PYTHON = "/usr/bin/python3"

CLIENT = {4: "192.0.2.2", 6: "2001:db8:1::2"}
NAT_INSIDE = {4: "192.0.2.1", 6: "2001:db8:1::1"}
NAT_OUTSIDE = {4: "198.51.100.1", 6: "2001:db8:2::1"}
SERVER = {4: "198.51.100.2", 6: "2001:db8:2::2"}
POOL4 = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
POOL6 = ["2001:db8:3::10", "2001:db8:3::11", "2001:db8:3::12"]
TCP_PORTS, UDP_PORTS, TCP6_PORTS = (20000, 20100), (30000, 30100), (40000, 40100)
FORWARD_PORT, FORWARD_TO = 8080, 80

# The source NAT, written by hand into the built-in chains as an operator would.
HAND_RULES = {
    "iptables-legacy": [
        "-A PREROUTING -i out0 -d %s -p tcp --dport %d -j DNAT --to-destination %s:%d"
        % (NAT_OUTSIDE[4], FORWARD_PORT, CLIENT[4], FORWARD_TO),
        "-A POSTROUTING -s 192.0.2.0/24 -o out0 -p tcp -j SNAT --to-source %s-%s:%d-%d"
        % (POOL4[0], POOL4[-1], TCP_PORTS[0], TCP_PORTS[1]),
        "-A POSTROUTING -s 192.0.2.0/24 -o out0 -p udp -j MASQUERADE --to-ports %d-%d" % UDP_PORTS,
    ],
    "ip6tables-legacy": [
        "-A POSTROUTING -s 2001:db8:1::/64 -o out0 -p tcp -j SNAT --to-source [%s-%s]:%d-%d"
        % (POOL6[0], POOL6[-1], TCP6_PORTS[0], TCP6_PORTS[1]),
    ],
}

IMPLEMENTATIONS = {
    "nftables": {"implementation": "nftables"},
    "iptables-legacy": {"implementation": "iptables", "iptables_backend": "legacy"},
    "iptables-nft": {"implementation": "iptables", "iptables_backend": "nft"},
}

HELPER = r'''
import socket, sys, threading

def answer(conn):
    peer, local = conn.getpeername(), conn.getsockname()
    conn.sendall(("%s %d %s %d\n" % (peer[0], peer[1], local[0], local[1])).encode())
    while conn.recv(1024):  # let the client close first
        pass
    conn.close()

def tcp_server(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(16)
    def loop():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

def udp_server(addr, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    def loop():
        while True:
            data, peer = sock.recvfrom(1024)
            sock.sendto(("%s %d %s %d\n" % (peer[0], peer[1], addr, port)).encode(), peer)
    threading.Thread(target=loop, daemon=True).start()

mode = sys.argv[1]
if mode == "serve":  # serve tcp:ADDR:PORT udp:ADDR:PORT ...
    for spec in sys.argv[2:]:
        kind, rest = spec.split(":", 1)
        addr, port = rest.rsplit(":", 1)
        (tcp_server if kind == "tcp" else udp_server)(addr, int(port))
    print("ready", flush=True)
    threading.Event().wait()
else:  # tcp|udp DST_ADDR DST_PORT SRC_ADDR SRC_PORT: prints what the other side saw
    dst, dport, src, sport = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(3)
    sock.bind((src, sport))
    if mode == "tcp":
        sock.connect((dst, dport))
        print(sock.makefile().readline().strip())
    else:
        sock.sendto(b"hello", (dst, dport))
        print(sock.recv(1024).decode().strip())
    sock.close()
'''


def sh(*args, **kwargs):
    check = kwargs.pop("check", True)
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60, **kwargs)


class Lab:
    def __init__(self, spaces, tmp):
        self.spaces, self.tmp = spaces, tmp
        self.interfaces = {"inside": "in0", "outside": "out0"}
        self.helper = os.path.join(tmp, "helper.py")
        with open(self.helper, "w") as out:
            out.write(HELPER)
        self.env = collection_env(tmp, ANSIBLE_STDOUT_CALLBACK="minimal")

    # -- topology
    def build(self, traffic=True):
        # IPv6 addresses must survive the renaming of the NAT's devices (which takes them down).
        self.cli, self.nat, self.srv = routed_site(
            self.spaces, "", {"client": CLIENT, "inside": NAT_INSIDE, "outside": NAT_OUTSIDE, "server": SERVER},
            nat_sysctls=("net.ipv6.conf.all.keep_addr_on_down=1", "net.ipv6.conf.default.keep_addr_on_down=1",
                         "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"))
        sh("ip", "-n", self.srv, "route", "add", "203.0.113.0/24", "via", NAT_OUTSIDE[4])
        sh("ip", "-n", self.srv, "-6", "route", "add", "2001:db8:3::/64", "via", NAT_OUTSIDE[6])
        if traffic:
            specs = ["tcp:%s:%d" % (SERVER[v], 7000 + i) for v in (4, 6) for i in range(8)]
            specs += ["udp:%s:%d" % (SERVER[4], 7100 + i) for i in range(8)]
            self.serve(self.srv, specs)
            self.serve(self.cli, ["tcp:%s:%d" % (CLIENT[4], FORWARD_TO)])

    def serve(self, ns, specs):
        proc = self.spaces.spawn(ns, HOST_PYTHON, self.helper, "serve", *specs, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"

    def rename_nat_devices(self, inside, outside):
        for old, new in ((self.interfaces["inside"], inside), (self.interfaces["outside"], outside)):
            sh("ip", "-n", self.nat, "link", "set", old, "down")
            sh("ip", "-n", self.nat, "link", "set", old, "name", new)
            sh("ip", "-n", self.nat, "link", "set", new, "up")
        self.interfaces = {"inside": inside, "outside": outside}

    def in_ns(self, ns, *args, **kwargs):
        return sh("ip", "netns", "exec", ns, *args, **kwargs)

    # -- traffic
    def seen(self, ns, mode, dst, dport, src, sport):
        """(address, port, local address, local port) as the other side saw the connection."""
        out = self.in_ns(ns, HOST_PYTHON, self.helper, mode, dst, str(dport), src, str(sport), check=False)
        assert out.returncode == 0, "%s %s:%s from %s:%s: %s" % (mode, dst, dport, src, sport, out.stderr)
        peer, pport, local, lport = out.stdout.split()
        return peer, int(pport), local, int(lport)

    def observe(self, phase):
        """How the NAT translates new connections. `phase` picks fresh server ports."""
        self.in_ns(self.nat, "conntrack", "-F", check=False)
        kept = self.seen(self.cli, "tcp", SERVER[4], 7000 + phase, CLIENT[4], 20050)[:2]
        moved = self.seen(self.cli, "tcp", SERVER[4], 7000 + phase, CLIENT[4], 45000)[:2]
        udp = self.seen(self.cli, "udp", SERVER[4], 7100 + phase, CLIENT[4], 30050)[:2]
        forward = self.seen(self.srv, "tcp", NAT_OUTSIDE[4], FORWARD_PORT, SERVER[4], 0)
        tcp6 = self.seen(self.cli, "tcp", SERVER[6], 7000 + phase, CLIENT[6], 40050)[:2]
        return {"tcp kept": kept, "tcp moved": moved, "udp": udp,
                "forward": (forward[0], forward[2], forward[3]), "tcp6": tcp6}

    # -- the module
    def module(self, kind, check=False, python=HOST_PYTHON, expect_failure=False, **args):
        """Run nfstate.migration.nat_rules in the NAT namespace; returns its result."""
        args = dict(IMPLEMENTATIONS[kind], interfaces=self.interfaces, **args)
        cmd = ["ip", "netns", "exec", self.nat, ANSIBLE, "localhost", "-m", "nfstate.migration.nat_rules",
               "-a", json.dumps(args), "-e", "ansible_python_interpreter=%s" % python]
        out = sh(*(cmd + (["--check"] if check else [])), check=False, env=self.env, cwd=self.tmp)
        found = re.search(r"^localhost \| (CHANGED|SUCCESS|FAILED!) => (\{.*)", out.stdout, re.M | re.S)
        assert found, out.stdout + out.stderr
        assert (found.group(1) == "FAILED!") == expect_failure, out.stdout + out.stderr
        return json.loads(found.group(2))

    def nat_state(self):
        """The namespace's NAT rules as its implementation shows them, without comments and counters."""
        text = "".join(self.in_ns(self.nat, *tool).stdout for tool in self.tools)
        return re.sub(r"^#.*$|\[\d+:\d+\]", "", text, flags=re.M)


@pytest.fixture
def lab(netns_lab, tmp_path):
    return Lab(netns_lab, str(tmp_path))


def in_range(port, ports):
    return ports[0] <= port <= ports[1]


def test_rules_move_between_implementations_and_translate_as_the_source(lab):
    lab.build()
    for tool, lines in HAND_RULES.items():
        for line in lines:
            lab.in_ns(lab.nat, tool, "-t", "nat", *line.split())
    source = lab.observe(0)
    # What the source does: the pool, the port range (a source port inside it is kept), masquerade
    # with a port range, the port forward, and IPv6 source NAT.
    assert source["tcp kept"][0] in POOL4 and source["tcp kept"][1] == 20050
    assert source["tcp moved"][0] == source["tcp kept"][0] and in_range(source["tcp moved"][1], TCP_PORTS)
    assert source["udp"] == (NAT_OUTSIDE[4], 30050)
    assert source["forward"] == (SERVER[4], CLIENT[4], FORWARD_TO)
    assert source["tcp6"][0] in POOL6 and source["tcp6"][1] == 40050

    gathered = lab.module("iptables-legacy", state="gathered", include_builtin_chains=True)
    document = gathered["gathered"]
    assert len(document) == 4 and gathered["unsupported"] == []
    for tool in HAND_RULES:
        lab.in_ns(lab.nat, tool, "-t", "nat", "-F")

    def same_as_source(observed):
        assert observed["tcp kept"] == source["tcp kept"]
        assert observed["tcp moved"][0] == source["tcp moved"][0] and in_range(observed["tcp moved"][1], TCP_PORTS)
        for key in ("udp", "forward", "tcp6"):
            assert observed[key] == source[key], key

    # iptables-legacy -> nftables, on devices named differently: roles, not names, travel.
    # (`after` is read back from the host once the rules are applied.)
    lab.rename_nat_devices("lan1", "wan1")
    applied = lab.module("nftables", state="merged", config=document)
    assert applied["changed"] is True and applied["before"] == [] and applied["after"] == document
    same_as_source(lab.observe(1))
    # nft's own program instead of the Python binding (the controller's Python has no binding).
    again = lab.module("nftables", state="merged", config=document, python=sys.executable)
    assert again["changed"] is False
    from_nft = again["before"]
    assert from_nft == document
    assert lab.module("nftables", state="deleted")["changed"] is True

    # nftables -> iptables-nft, from a compressed document file on the host.
    src = os.path.join(lab.tmp, "rules.json.gz")
    with gzip.open(src, "wt") as out:
        json.dump({"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "policy": from_nft}]}}}, out)
    applied = lab.module("iptables-nft", state="overridden", src=src)
    assert applied["changed"] is True
    same_as_source(lab.observe(2))
    from_iptables_nft = applied["after"]
    assert from_iptables_nft == document
    assert lab.module("iptables-nft", state="deleted")["changed"] is True

    # iptables-nft -> iptables-legacy, now in our own chains.
    applied = lab.module("iptables-legacy", state="merged", config=from_iptables_nft)
    assert applied["changed"] is True and applied["after"] == document
    same_as_source(lab.observe(3))


HOST_RULES = {
    # Something of the host's own in the same hooks, which must survive us.
    "nftables": ("nft", "-f", "-"),
    "iptables-legacy": ("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-p", "icmp", "-j", "ACCEPT"),
    "iptables-nft": ("iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-p", "icmp", "-j", "ACCEPT"),
}
# iptables-nft leaves an empty built-in chain behind in its own nft table: compare what iptables shows.
STATE_TOOLS = {
    "nftables": [("nft", "list", "ruleset"), ("iptables-legacy-save", "-t", "nat")],
    "iptables-legacy": [("iptables-legacy-save", "-t", "nat"), ("ip6tables-legacy-save", "-t", "nat"),
                        ("nft", "list", "ruleset")],
    "iptables-nft": [("iptables-nft-save", "-t", "nat"), ("ip6tables-nft-save", "-t", "nat"),
                     ("iptables-legacy-save", "-t", "nat")],
}
HOST_TABLE = 'table inet nfsh4_host {\n chain post {\n  type nat hook postrouting priority srcnat\n  oifname "out0" ip protocol icmp accept\n }\n}\n'

POLICY = [
    {"id": 1, "nfstate-nat-rules:address-family": "ipv4", "nfstate-nat-rules:masquerade": True,
     "nfstate-nat-rules:out-interface": "outside", "subscriber-match": [{"match-id": 1, "subnet": "192.0.2.0/24"}]},
    {"id": 2, "nfstate-nat-rules:address-family": "ipv6", "nfstate-nat-rules:out-interface": "outside",
     "nfstate-nat-rules:external-ipv6-address-pool": [{"pool-id": 1, "external-ipv6-pool": "2001:db8:3::10/127"}],
     "transport-protocols": [{"protocol-id": 17}], "port-set-restrict": {"start-port-number": 5000}},
    {"id": 3, "nfstate-nat-rules:address-family": "ipv4", "dst-nat-enable": True,
     "nfstate-nat-rules:in-interface": "outside",
     "dst-ip-address-pool": [{"pool-id": 1, "dst-in-ip-pool": "192.0.2.2/32", "dst-out-ip-pool": "198.51.100.1/32"}],
     "transport-protocols": [{"protocol-id": 6}], "nfstate-nat-rules:destination-port": [{"start-port-number": 8080}],
     "nfstate-nat-rules:translated-port": {"start-port-number": 80}},
]


@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_check_mode_idempotence_and_deleted_touch_only_ours(lab, kind):
    lab.build(traffic=False)
    if kind == "nftables":
        lab.in_ns(lab.nat, *HOST_RULES[kind], input=HOST_TABLE)
    else:
        lab.in_ns(lab.nat, *HOST_RULES[kind])
    lab.tools = STATE_TOOLS[kind]
    pristine = lab.nat_state()

    checked = lab.module(kind, check=True, state="merged", config=POLICY)
    assert checked["changed"] is True and len(checked["after"]) == 3 and checked["commands"]
    assert lab.nat_state() == pristine

    first = lab.module(kind, state="merged", config=POLICY)
    assert first["changed"] is True and len(first["after"]) == 3
    applied_state = lab.nat_state()
    again = lab.module(kind, state="merged", config=POLICY)
    assert again["changed"] is False and again["commands"] == [] and again["before"] == first["after"]
    assert lab.nat_state() == applied_state

    deleted = lab.module(kind, state="deleted")
    assert deleted["changed"] is True and deleted["after"] == []
    assert lab.nat_state() == pristine
    assert lab.module(kind, state="deleted")["changed"] is False


def test_rules_the_model_cannot_express_are_reported(lab):
    lab.build(traffic=False)
    statistic = "-A NFSTATE-PRE -i out0 -p tcp -m tcp --dport 2222 -m statistic --mode nth --every 2 --packet 0 -j REDIRECT --to-ports 22"
    lab.in_ns(lab.nat, "iptables-legacy-restore", "--noflush", input="\n".join([
        "*nat", ":NFSTATE-PRE - [0:0]", ":NFSTATE-POST - [0:0]", "-A PREROUTING -j NFSTATE-PRE",
        "-A POSTROUTING -j NFSTATE-POST", "-A NFSTATE-POST -o out0 -j MASQUERADE", statistic, "COMMIT", ""]))
    failed = lab.module("iptables-legacy", state="gathered", expect_failure=True)
    assert statistic in failed["msg"] and failed["unsupported"] == [{"rule": statistic, "reason": "match -m statistic"}]
    skipped = lab.module("iptables-legacy", state="gathered", skip_unsupported=True)
    assert rules_of(skipped["gathered"]) == [NatRule("masquerade", "ipv4", None, "outside")]
    assert skipped["unsupported"] == failed["unsupported"]
    # Applying over it is refused too: it would be lost.
    lab.module("iptables-legacy", state="merged", config=POLICY, expect_failure=True)

    lab.in_ns(lab.nat, "nft", "-f", "-", input=(
        "table inet nfstate_nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat\n"
        '  meta nfproto ipv4 oifname "out0" masquerade\n  meta mark 7 masquerade\n }\n}\n'))
    failed = lab.module("nftables", state="gathered", expect_failure=True)
    assert [item["reason"] for item in failed["unsupported"]] == ["match on meta mark"]
    assert "masquerade" in failed["msg"]
