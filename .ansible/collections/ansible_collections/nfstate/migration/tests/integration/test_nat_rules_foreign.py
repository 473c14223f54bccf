"""A NAT written by hand in nftables tables of its own moves to iptables-legacy and translates as before.

Two copies of the lab's NAT (namespaces created and removed here, by conftest.py's netns_lab and labs.routed_site), one the source
with the lab's nftables rules (lab/nfstate_lab.py: `ip nat` and `ip6 nat`), one the target:

    client 192.0.2.10, 2001:db8:1::10 --(in0) NAT (out0)-- server 203.0.113.20, 2001:db8:2::20
                            192.0.2.254, 2001:db8:1::fe    203.0.113.1, 2001:db8:2::1

The server has no route to the inside networks: every answer it gives proves a translation.
"""

import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from ansible_collections.nfstate.migration.lab import nfstate_lab
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import NatRule, canonical, rules_of
from labs import collection_env, routed_site

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "unit", "fixtures")
ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
HOST_PYTHON = "/usr/bin/python3"
INTERFACES = {"inside": "in0", "outside": "out0"}

CLIENT, SERVER, EXTERNAL = nfstate_lab.CLIENT, nfstate_lab.SERVER, nfstate_lab.EXTERNAL
GATEWAY = {4: "192.0.2.254", 6: "2001:db8:1::fe"}
PORTS = nfstate_lab.SNAT_PORTS
FORWARD = nfstate_lab.FORWARD_PORT
SERVICE_PORT = 7000

# Answers every TCP connection and UDP datagram with the address and port it came from.
PROBE = r'''
import socket, sys, threading

def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET

def peer_text(peer):
    return ("%s %d\n" % (peer[0], peer[1])).encode()

def serve_tcp(sock):
    while True:
        conn, peer = sock.accept()
        conn.sendall(peer_text(peer))
        conn.close()

def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(64)
        sock.sendto(peer_text(peer), peer)

if sys.argv[1] == "listen":  # listen PORT ADDR...
    for addr in sys.argv[3:]:
        for kind, loop in ((socket.SOCK_STREAM, serve_tcp), (socket.SOCK_DGRAM, serve_udp)):
            sock = socket.socket(family(addr), kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, int(sys.argv[2])))
            if kind == socket.SOCK_STREAM:
                sock.listen(8)
            threading.Thread(target=loop, args=(sock,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
else:  # tcp|udp DST DPORT SRC SPORT
    kind, dst, dport, src, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    sock = socket.socket(family(dst), socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.bind((src, sport))
    if kind == "tcp":
        sock.connect((dst, dport))
        print(sock.makefile().readline().strip())
    else:
        sock.sendto(b"?", (dst, dport))
        print(sock.recv(64).decode().strip())
'''


def sh(*args, **kwargs):
    check = kwargs.pop("check", True)
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=check, **kwargs)


class Nat:
    """One client - NAT - server chain of namespaces."""

    def __init__(self, spaces, tmp, env, tag):
        self.spaces, self.tmp, self.env, self.tag = spaces, tmp, env, tag

    def build(self):
        self.cli, self.nat, self.srv = routed_site(
            self.spaces, self.tag, {"client": CLIENT, "inside": GATEWAY, "outside": EXTERNAL, "server": SERVER},
            nat_sysctls=("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"))
        self.listen(self.srv, SERVICE_PORT, SERVER[4], SERVER[6])
        self.listen(self.cli, FORWARD, CLIENT[4], CLIENT[6])

    def listen(self, ns, port, *addrs):
        proc = self.spaces.spawn(ns, HOST_PYTHON, self.probe, "listen", str(port), *addrs, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"

    @property
    def probe(self):
        path = os.path.join(self.tmp, "probe.py")
        if not os.path.exists(path):
            with open(path, "w") as out:
                out.write(PROBE)
        return path

    def run(self, ns, *args, **kwargs):
        return sh("ip", "netns", "exec", ns, *args, **kwargs)

    def seen(self, ns, kind, dst, dport, src, sport):
        """(address, port) the other side saw."""
        out = self.run(ns, HOST_PYTHON, self.probe, kind, dst, str(dport), src, str(sport), check=False)
        assert out.returncode == 0, "%s %s:%s from %s:%s: %s" % (kind, dst, dport, src, sport, out.stderr)
        addr, port = out.stdout.split()
        return addr, int(port)

    def observe(self):
        """How the NAT translates new connections of each kind the rules cover."""
        out = {}
        for v in (4, 6):
            out["tcp%d moved" % v] = self.seen(self.cli, "tcp", SERVER[v], SERVICE_PORT, CLIENT[v], 45000)
            out["tcp%d kept" % v] = self.seen(self.cli, "tcp", SERVER[v], SERVICE_PORT, CLIENT[v], 20050)
            out["udp%d" % v] = self.seen(self.cli, "udp", SERVER[v], SERVICE_PORT, CLIENT[v], 45001)
            # The port-less rule: the server answers a ping only to the NAT's address.
            out["icmp%d" % v] = self.run(self.cli, "ping", "-%d" % v, "-c1", "-W2", SERVER[v], check=False).returncode
            out["forward%d" % v] = self.seen(self.srv, "tcp", EXTERNAL[v], FORWARD, SERVER[v], 0)[0]
        return out

    def module(self, python=HOST_PYTHON, **args):
        """nfstate.migration.nat_rules in the NAT namespace; its result."""
        out = self.run(self.nat, ANSIBLE, "localhost", "-m", "nfstate.migration.nat_rules", "-a", json.dumps(args),
                       "-e", "ansible_python_interpreter=%s" % python, check=False, env=self.env, cwd=self.tmp)
        found = re.search(r"^localhost \| (CHANGED|SUCCESS) => (\{.*)", out.stdout, re.M | re.S)
        assert found, out.stdout + out.stderr
        return json.loads(found.group(2))


@pytest.fixture
def nats(netns_lab, tmp_path):
    """Builds NATs on demand, nats(tag) -> Nat, in netns_lab (which removes them all afterwards)."""
    tmp = str(tmp_path)
    env = collection_env(tmp, ANSIBLE_STDOUT_CALLBACK="minimal")

    def build(tag):
        nat = Nat(netns_lab, tmp, env, tag)
        nat.build()
        return nat
    return build


def lab_rules():
    (argv, text), = nfstate_lab.nat_ruleset("nftables", "out0")
    assert argv == ["nft", "-f", "-"]
    return text


def test_hand_written_nftables_nat_moves_to_iptables_legacy(nats):
    source, target = nats("src"), nats("dst")
    source.run(source.nat, "nft", "-f", "-", input=lab_rules())
    before = source.observe()
    for v in (4, 6):
        assert before["tcp%d moved" % v][0] == EXTERNAL[v] and PORTS[0] <= before["tcp%d moved" % v][1] <= PORTS[1]
        assert before["tcp%d kept" % v] == (EXTERNAL[v], 20050)
        assert before["udp%d" % v][0] == EXTERNAL[v] and PORTS[0] <= before["udp%d" % v][1] <= PORTS[1]
        assert before["icmp%d" % v] == 0
        assert before["forward%d" % v] == SERVER[v]

    gathered = source.module(implementation="nftables", interfaces=INTERFACES, state="gathered",
                             include_builtin_chains=True)
    document = gathered["gathered"]
    assert gathered["unsupported"] == [] and "warnings" not in gathered
    expected = []
    for v, family, net in ((4, "ipv4", "192.0.2.0/24"), (6, "ipv6", "2001:db8:1::/64")):
        ext = (EXTERNAL[v], EXTERNAL[v])
        expected += [
            NatRule("dnat", family, "outside", None, None, "%s/%d" % (EXTERNAL[v], 32 if v == 4 else 128), 6,
                    ((FORWARD, FORWARD),), (CLIENT[v], CLIENT[v]), (FORWARD, FORWARD)),
            NatRule("snat", family, None, "outside", net, None, 6, (), ext, PORTS),
            NatRule("snat", family, None, "outside", net, None, 17, (), ext, PORTS),
            NatRule("snat", family, None, "outside", net, None, None, (), ext, None)]
    assert rules_of(document) == canonical(expected)
    # Through the nft program (the controller's Python has no libnftables binding): the same.
    assert source.module(python=sys.executable, implementation="nftables", interfaces=INTERFACES,
                         state="gathered", include_builtin_chains=True)["gathered"] == document

    legacy = dict(implementation="iptables", iptables_backend="legacy", interfaces=INTERFACES)
    applied = target.module(state="overridden", config=document, **legacy)
    assert applied["changed"] is True and applied["after"] == document
    assert target.module(state="gathered", include_builtin_chains=True, **legacy)["gathered"] == document

    after = target.observe()
    for key, value in before.items():
        if "moved" in key or key.startswith("udp"):
            # A fresh mapping: the same address, a port of the same range.
            assert after[key][0] == value[0] and PORTS[0] <= after[key][1] <= PORTS[1], key
        else:
            assert after[key] == value, key


GATHER_PLAY = """
- name: Gather with the nat role
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run the gather entry point
      ansible.builtin.include_role:
        name: nfstate.migration.nat
        tasks_from: gather
"""


def role_gather(nat, **extra):
    """The policy of the document the nat role's gather writes in the NAT namespace (the
    implementation detected: the hand-written tables are nftables')."""
    play = os.path.join(nat.tmp, "gather.yml")
    with open(play, "w") as out:
        out.write(GATHER_PLAY)
    dest = os.path.join(nat.tmp, "gathered-%d.json.gz" % len(extra))
    extra_vars = dict(nat_interfaces=INTERFACES, nat_work_dir=os.path.join(nat.tmp, "work"),
                      nat_gather_dest=dest, ansible_python_interpreter=HOST_PYTHON, **extra)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(nat.tmp, "coll"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_LOCAL_TEMP=os.path.join(nat.tmp, "ansible-local"))
    out = nat.run(nat.nat, os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                  "-c", "local", play, "-e", json.dumps(extra_vars), check=False, env=env, cwd=nat.tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with gzip.open(dest, "rt") as handle:
        instance = json.load(handle)["ietf-nat:nat"]["instances"]["instance"][0]
    return instance.get("policy", [])


def test_the_nat_role_gathers_hand_written_nftables_tables_by_default(nats):
    source = nats("role")
    source.run(source.nat, "nft", "-f", "-", input=lab_rules())
    module = source.module(implementation="nftables", interfaces=INTERFACES, state="gathered",
                           include_builtin_chains=True)["gathered"]
    assert len(module) == 8
    assert role_gather(source) == module
    assert role_gather(source, nat_include_builtin_chains=False) == []


def _comparable(listing):
    """A listing without what differs between runs: the version line and the handles."""
    out = []
    for item in listing["nftables"]:
        if "metainfo" in item:
            continue
        (kind, obj), = item.items()
        out.append({kind: dict((k, v) for k, v in obj.items() if k != "handle")})
    return out


@pytest.mark.parametrize("fixture", ["nft_ruleset_lab.json", "nft_ruleset_foreign.json"])
def test_unit_fixtures_are_what_nft_lists(fixture, netns_lab):
    if fixture == "nft_ruleset_lab.json":
        source = lab_rules()
    else:
        with open(os.path.join(FIXTURES, "nft_ruleset_foreign.nft")) as handle:
            source = handle.read()
    with open(os.path.join(FIXTURES, fixture)) as handle:
        stored = json.load(handle)
    ns = netns_lab.add("fx")
    sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=source)
    listed = json.loads(sh("ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset").stdout)
    assert _comparable(listed) == _comparable(stored)
