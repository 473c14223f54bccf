"""The rule shapes beyond plain NAT, through the real tools and the kernel.

Each shape of tests/unit/fixtures/rule_shapes.iptables and rule_shapes.nft is loaded with the real
iptables-legacy-restore / iptables-nft-restore / nft in a namespace of its own (prefix r-shp-),
gathered with the parser, rendered for the other implementation, loaded with the real tool into a
fresh namespace (the kernel accepts it), and gathered again: the same rules come back. Then packets
go through an exemption, a source NAT and a redirect, first under iptables-legacy rules written by
hand, then under the nftables rules rendered from the document gathered there: they are translated
(or left alone) the same way.

    client 192.0.2.10 --(in0) NAT (out0)-- server 203.0.113.20, 198.51.100.20
                     192.0.2.254   203.0.113.1, 198.51.100.1
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.providers.iptables import programs
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import canonical, rules_of, to_policy
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_nftables as nftr
from labs import routed_site

TOOLS = ("nft", "iptables-legacy-restore", "iptables-nft-restore", "ip6tables-legacy-restore", "ip6tables-nft-restore")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS),
                                reason="needs root, nft and both iptables backends")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "unit", "fixtures")
INTERFACES = {"inside": "in0", "outside": "out0"}
FAMILIES = ("ipv4", "ipv6")
BACKENDS = ("legacy", "nft")
HOST_PYTHON = "/usr/bin/python3"


def sh(*args, **kwargs):
    check = kwargs.pop("check", True)
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError("%s: %s%s" % (" ".join(args), out.stdout, out.stderr))
    return out


def fixture_text(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


@pytest.fixture
def netns(netns_lab):
    """netns(tag) -> a new namespace's name (conftest.py's netns_lab removes them all afterwards)."""
    return netns_lab.add


def in_ns(ns, *args, **kwargs):
    return sh("ip", "netns", "exec", ns, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Loading and gathering with each implementation's own tools


def load_iptables(ns, backend, text):
    for family, part in sorted(ipt.split_families(text).items()):
        restore = programs(backend, family)[1]
        in_ns(ns, restore, "--noflush", input=part)


def gather_iptables(ns, backend, include_builtin, interfaces=None):
    rules, unsupported = [], []
    for family in FAMILIES:
        out = in_ns(ns, programs(backend, family)[0], "-t", "nat").stdout
        table = ipt.parse_save(out, family, interfaces or INTERFACES, include_builtin)
        rules += table.rules
        unsupported += table.unsupported
    return canonical(rules), unsupported


def apply_iptables(ns, backend, rules):
    """Our chains holding `rules`, as nat_rules writes them; what the kernel lists then."""
    for family in FAMILIES:
        in_ns(ns, programs(backend, family)[1], "--noflush", input=ipt.restore_payload(rules, family, INTERFACES))
    return gather_iptables(ns, backend, include_builtin=False)


def nft_listing(ns, *what):
    return json.loads(in_ns(ns, "nft", "-j", "list", *what).stdout)


def apply_nftables(ns, rules):
    in_ns(ns, "nft", "-j", "-f", "-", input=json.dumps(nftr.render_commands(rules, INTERFACES)))
    table = nftr.parse_ruleset(nft_listing(ns, "table", nftr.TABLE_FAMILY, nftr.TABLE_NAME), INTERFACES)
    assert nftr.installed(table)
    return table.rules, table.unsupported


def document(rules):
    return {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "policy": to_policy(rules)}]}}}


def expressible_in_iptables(rule, interfaces=None):
    try:
        ipt.rule_args(rule, interfaces or INTERFACES)
    except ipt.RenderError:
        return False
    return True


@pytest.mark.parametrize("backend", BACKENDS)
def test_iptables_shapes_move_to_nftables_and_back(netns, backend):
    source = netns("ipt-" + backend)
    load_iptables(source, backend, fixture_text("rule_shapes.iptables"))
    rules, unsupported = gather_iptables(source, backend, include_builtin=True)
    assert unsupported == []
    # The fixture is what this iptables lists: the kernel holds the shapes as written.
    parts = ipt.split_families(fixture_text("rule_shapes.iptables"))
    assert rules == canonical([r for f in FAMILIES for r in ipt.parse_save(parts[f], f, INTERFACES, True).rules])
    assert len(rules) == 20
    doc = document(rules)

    target = netns("nft-" + backend)
    there, unsupported = apply_nftables(target, rules_of(doc))
    assert unsupported == [] and document(there) == doc

    back_ns = netns("back-" + backend)
    back, unsupported = apply_iptables(back_ns, backend, rules_of(document(there)))
    assert unsupported == [] and document(back) == doc


def test_nftables_shapes_move_to_both_iptables_backends_and_back(netns):
    source = netns("nft")
    in_ns(source, "nft", "-f", os.path.join(FIXTURES, "rule_shapes.nft"))
    listing = nft_listing(source, "ruleset")
    table = nftr.parse_ruleset(listing, INTERFACES, include_foreign=True)
    assert table.unsupported == []
    # The JSON fixture the unit tests read is what this nft lists.
    assert table.rules == nftr.parse_ruleset(json.loads(fixture_text("rule_shapes.json")), INTERFACES, True).rules
    rules = table.rules
    doc = document(rules)

    # Every shape moves between nftables hosts.
    again, unsupported = apply_nftables(netns("nft2"), rules_of(doc))
    assert unsupported == [] and document(again) == doc

    # What iptables can write moves there and back; the rest is refused before anything is loaded.
    portable = [rule for rule in rules if expressible_in_iptables(rule)]
    assert 0 < len(portable) < len(rules)
    for backend in BACKENDS:
        there, unsupported = apply_iptables(netns("ipt-" + backend), backend, portable)
        assert unsupported == [] and document(there) == document(portable)
        back, unsupported = apply_nftables(netns("back-" + backend), rules_of(document(there)))
        assert unsupported == [] and document(back) == document(portable)


# ---------------------------------------------------------------------------------------------
# The corpus of real-world shapes (bench/rule_coverage.py): the kernel takes it as written

CORPUS = os.path.join(FIXTURES, "rule_corpus")


def corpus(suffix):
    return sorted(name for name in os.listdir(CORPUS) if name.endswith(suffix))


def roles_of(text):
    line = next(line for line in text.splitlines() if line.startswith("# roles:"))
    return dict(item.split("=", 1) for item in line.split(":", 1)[1].split())


def gathered(table_rules, unsupported):
    return table_rules, sorted(item["reason"] for item in unsupported)


@pytest.mark.parametrize("name", corpus(".nft"))
def test_corpus_listings_are_what_nft_lists(netns, name):
    text = fixture_text(os.path.join("rule_corpus", name))
    roles = roles_of(text)
    ns = netns("cov")
    in_ns(ns, "nft", "-f", os.path.join(CORPUS, name))
    live = nftr.parse_ruleset(nft_listing(ns, "ruleset"), roles, include_foreign=True)
    stored = nftr.parse_ruleset(json.loads(fixture_text(os.path.join("rule_corpus", name[:-4] + ".json"))),
                                roles, include_foreign=True)
    assert gathered(live.rules, live.unsupported) == gathered(stored.rules, stored.unsupported)
    assert len(live.carried) == len(stored.carried) and len(live.followed) == len(stored.followed)
    # What is carried goes into iptables where it can (the rest is refused before loading).
    portable = [rule for rule in live.rules if expressible_in_iptables(rule, roles)]
    target = netns("cov-ipt")
    for family in FAMILIES:
        in_ns(target, programs("legacy", family)[1], "--noflush", input=ipt.restore_payload(portable, family, roles))
    assert gather_iptables(target, "legacy", False, roles) == (canonical(portable), [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", corpus(".iptables"))
def test_corpus_iptables_rulesets_load_as_written(netns, name, backend):
    text = fixture_text(os.path.join("rule_corpus", name))
    roles = roles_of(text)
    ns = netns("cov-" + backend)
    load_iptables(ns, backend, text)
    rules, unsupported = gather_iptables(ns, backend, True, roles)
    parts = ipt.split_families(text)
    tables = [ipt.parse_save(parts.get(f, ""), f, roles, True) for f in FAMILIES]
    assert gathered(rules, unsupported) == gathered(canonical([r for t in tables for r in t.rules]),
                                                    [item for t in tables for item in t.unsupported])
    # What is carried goes into nftables, beside the iptables rules.
    in_ns(ns, "nft", "-j", "-f", "-", input=json.dumps(nftr.render_commands(rules, roles)))
    ours = nftr.parse_ruleset(nft_listing(ns, "table", nftr.TABLE_FAMILY, nftr.TABLE_NAME), roles)
    assert (ours.rules, ours.unsupported) == (rules, [])


# ---------------------------------------------------------------------------------------------
# Packets: an exemption, a source NAT with --random-fully, a redirect

CLIENT, GATEWAY = "192.0.2.10", "192.0.2.254"
SERVERS = {"translated": "203.0.113.20", "exempt": "198.51.100.20"}
EXTERNAL = "203.0.113.1"
SERVICE_PORT, PROXY_PORT = 7000, 3128

HAND_WRITTEN = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i in0 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128
-A POSTROUTING -d 198.51.100.0/24 -o out0 -j RETURN
-A POSTROUTING -s 192.0.2.0/24 -o out0 -j SNAT --to-source 203.0.113.1 --random-fully
COMMIT
"""

# Answers each TCP connection or UDP datagram with the address it came from.
PROBE = r'''
import socket, sys
kind, rest = sys.argv[1], sys.argv[2:]
if kind == "serve":
    port, proto = int(rest[0]), rest[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    if proto == "tcp":
        sock.listen(4)
    print("ready", flush=True)
    while True:
        if proto == "tcp":
            conn, peer = sock.accept()
            conn.sendall(peer[0].encode())
            conn.close()
        else:
            data, peer = sock.recvfrom(64)
            sock.sendto(peer[0].encode(), peer)
else:
    dst, dport, sport = rest[0], int(rest[1]), int(rest[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.bind(("0.0.0.0", sport))
    if kind == "tcp":
        sock.connect((dst, dport))
    else:
        sock.sendto(b"?", (dst, dport))
    print(sock.recv(64).decode())
'''


@pytest.fixture
def chain(netns_lab, tmp_path):
    """client - NAT - server, with a UDP service on the server and a TCP "proxy" on the NAT."""
    probe = os.path.join(str(tmp_path), "probe.py")
    with open(probe, "w") as out:
        out.write(PROBE)
    cli, nat, srv = routed_site(netns_lab, "", {"client": {4: CLIENT}, "inside": {4: GATEWAY},
                                                "outside": {4: [EXTERNAL, "198.51.100.1"]},
                                                "server": {4: list(SERVERS.values())}})
    # The server answers untranslated packets too, through the NAT.
    sh("ip", "-n", srv, "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
    for ns, port, proto in ((srv, SERVICE_PORT, "udp"), (nat, PROXY_PORT, "tcp")):
        proc = netns_lab.spawn(ns, HOST_PYTHON, probe, "serve", str(port), proto, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
    return {"cli": cli, "nat": nat, "probe": probe}


def observe(chain, sport):
    """What each side saw of the client's packets (fresh source ports: no earlier session reused)."""
    def seen(kind, dst, dport, port):
        out = in_ns(chain["cli"], HOST_PYTHON, chain["probe"], kind, dst, str(dport), str(port))
        return out.stdout.strip()
    return {
        "udp to the translated server": seen("udp", SERVERS["translated"], SERVICE_PORT, sport),
        "udp to the exempt server": seen("udp", SERVERS["exempt"], SERVICE_PORT, sport + 1),
        "tcp to port 80, redirected to the proxy": seen("tcp", SERVERS["translated"], 80, sport + 2),
    }


def test_packets_are_translated_or_exempted_alike_on_both_implementations(chain):
    nat = chain["nat"]
    expected = {"udp to the translated server": EXTERNAL, "udp to the exempt server": CLIENT,
                "tcp to port 80, redirected to the proxy": CLIENT}
    load_iptables(nat, "legacy", HAND_WRITTEN)
    assert observe(chain, 41000) == expected
    rules, unsupported = gather_iptables(nat, "legacy", include_builtin=True)
    assert unsupported == [] and [rule.kind for rule in rules] == ["redirect", "no-snat", "snat"]
    doc = document(rules)

    # Same host, other implementation: the hand-written rules go, the rendered ones come.
    for family in FAMILIES:
        in_ns(nat, programs("legacy", family)[1], input="*nat\nCOMMIT\n")
    assert gather_iptables(nat, "legacy", include_builtin=True) == ([], [])
    there, unsupported = apply_nftables(nat, rules_of(doc))
    assert unsupported == [] and document(there) == doc
    assert observe(chain, 42000) == expected


# ---------------------------------------------------------------------------------------------
# The nat_rules module applies the shapes and finds them again

MODULE = "ansible_collections.nfstate.migration.plugins.modules.nat_rules"


def run_module(ns, tmp_path, **args):
    """nat_rules run as Ansible runs it (a process reading its arguments from a file), in `ns`."""
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), LANG="C")
    out = in_ns(ns, sys.executable, "-m", MODULE, str(path), env=env, check=False)
    return json.loads(out.stdout)


@pytest.mark.parametrize("implementation,backend", [("iptables", "legacy"), ("iptables", "nft"), ("nftables", None)])
def test_the_module_applies_the_shapes_once(netns, tmp_path, implementation, backend):
    listing = json.loads(fixture_text("rule_shapes.json"))
    rules = nftr.parse_ruleset(listing, INTERFACES, include_foreign=True).rules
    if implementation == "iptables":
        rules = [rule for rule in rules if expressible_in_iptables(rule)]
    config = to_policy(rules)
    args = dict(implementation=implementation, interfaces=INTERFACES)
    if backend:
        args["iptables_backend"] = backend
    ns = netns("mod")
    first = run_module(ns, tmp_path, state="merged", config=config, **args)
    assert "failed" not in first, first
    assert first["changed"] is True and rules_of(first["after"]) == canonical(rules)
    again = run_module(ns, tmp_path, state="merged", config=config, **args)
    assert again["changed"] is False and again["commands"] == []
    gathered = run_module(ns, tmp_path, state="gathered", **args)
    assert gathered["gathered"] == to_policy(canonical(rules)) and gathered["unsupported"] == []
