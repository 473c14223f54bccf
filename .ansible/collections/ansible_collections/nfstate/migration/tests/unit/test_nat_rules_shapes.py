"""Rule shapes beyond plain NAT: exemptions, redirects, flags, negations, ranges, sets, several protocols.

Fixtures (tests/integration/test_rule_shapes.py loads them with the real tools and checks that the
kernel takes what is rendered from them):
- rule_shapes.iptables: iptables-save of the shapes written into the built-in chains;
- rule_shapes.nft and rule_shapes.json: the same shapes and a few only nftables has, written into
  a table of their own, and `nft -j list table inet shapes` (nftables 1.0.6) of it.
"""

import json
import os

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import (
    NS, ModelError, NatRule, canonical, from_policy, rule_problems, rules_of, to_policy,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_nftables as nftr
from ansible_collections.nfstate.migration.tests.unit.builders import run_nat_rules_module

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
IFACES = {"inside": "in0", "outside": "out0"}
FAMILIES = ("ipv4", "ipv6")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


IPT_TEXT = fixture("rule_shapes.iptables")
NFT_LISTING = json.loads(fixture("rule_shapes.json"))

T, U = 6, 17
V4_POOL = ("203.0.113.10", "203.0.113.19")
IPT_RULES = [
    NatRule("no-dnat", "ipv4", None, None, None, "203.0.113.1/32", T, ((8080, 8080),)),
    NatRule("dnat", "ipv4", "outside", None, None, None, T, ((80, 90),), ("192.0.2.10",) * 2, (80, 80),
            negated=("in_role", "dports")),
    NatRule("no-dnat", "ipv4", "outside", None, (("198.51.100.1", "198.51.100.9"),)),
    NatRule("redirect", "ipv4", "inside", None, None, None, T, ((80, 80),), None, (3128, 3128)),
    NatRule("redirect", "ipv4", "inside", None, None, None, U, ((53, 53),)),
    NatRule("redirect", "ipv4", "inside", None, None, None, T, ((81, 81),), None, (3128, 3130), flags=("random",)),
    NatRule("dnat", "ipv4", "outside", None, None, (("203.0.113.1", "203.0.113.3"),), T, ((443, 443),),
            ("192.0.2.20", "192.0.2.24"), negated=("dst",), flags=("random", "persistent")),
    NatRule("redirect", "ipv6", "inside", None, None, None, T, ((80, 80),), None, (3128, 3128)),
    NatRule("dnat", "ipv6", "outside", None, "2001:db8:1::/64", None, T, ((2222, 2222),),
            ("2001:db8:1::10",) * 2, (22, 22), negated=("src",)),
    NatRule("no-snat", "ipv4", None, "outside", None, "198.51.100.0/24"),
    NatRule("no-snat", "ipv4", None, None, "192.0.2.0/24", (("203.0.113.100", "203.0.113.130"),)),
    NatRule("masquerade", "ipv4", None, "inside", "192.0.2.0/24", negated=("out_role",), flags=("fully-random",)),
    NatRule("masquerade", "ipv4", None, "outside", proto=U, to_ports=(20000, 29999), flags=("random",)),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.128/25", None, T, (), V4_POOL, (1024, 65535),
            negated=("src",), flags=("fully-random", "persistent")),
    NatRule("snat", "ipv4", None, "outside", None, None, T, ((25, 25), (465, 465), (587, 587)), V4_POOL,
            negated=("dports",), flags=("persistent",)),
    NatRule("snat", "ipv4", None, "outside", None, "192.0.2.0/24", None, (), ("203.0.113.1",) * 2,
            negated=("dst",), flags=("random",)),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.64/26", None, None, (), ("203.0.113.30",) * 2,
            comment="guests: pool of their own"),
    NatRule("no-snat", "ipv6", dst="2001:db8:2::/64"),
    NatRule("snat", "ipv6", None, "outside", "2001:db8:1::10/124", None, None, (),
            ("2001:db8:2::1", "2001:db8:2::8"), flags=("persistent",)),
    NatRule("masquerade", "ipv6", None, "inside", "2001:db8:1::/64", negated=("out_role",), flags=("fully-random",)),
]

# What only nftables writes: destination sets, several protocols, masquerade persistent.
NFT_ONLY = [
    NatRule("dnat", "ipv4", "outside", None, None,
            (("203.0.113.7", "203.0.113.7"), ("203.0.113.32", "203.0.113.47"), ("203.0.113.60", "203.0.113.62")),
            T, (), ("192.0.2.30",) * 2),
    NatRule("dnat", "ipv4", "outside", None, None, None, (T, U), ((53, 53),), ("192.0.2.53",) * 2),
    NatRule("dnat", "ipv4", "outside", None, None, None, (T, U), ((5060, 5060), (10000, 20000)), ("192.0.2.60",) * 2),
    NatRule("dnat", "ipv6", "outside", None, None, "2001:db8:2::1/128", (T, U), (), ("2001:db8:1::10",) * 2),
    NatRule("no-snat", "ipv4", None, "outside", (("192.0.2.0", "192.0.2.63"), ("192.0.2.128", "192.0.2.191")),
            negated=("src",)),
    NatRule("masquerade", "ipv4", None, "outside", flags=("random", "fully-random", "persistent")),
    NatRule("masquerade", "ipv6", None, "outside", flags=("random", "fully-random", "persistent")),
]


def gather_ipt(text, include_builtin=True):
    parts = ipt.split_families(text)
    rules, unsupported = [], []
    for family in FAMILIES:
        table = ipt.parse_save(parts.get(family, ""), family, IFACES, include_builtin)
        rules += table.rules
        unsupported += table.unsupported
    return canonical(rules), unsupported


def render_ipt(rules):
    """What iptables-save prints after the payloads on an empty host, both families."""
    header = {"ipv4": "# Generated by iptables-save v1.8.9\n", "ipv6": "# Generated by ip6tables-save v1.8.9\n"}
    return "".join(header[f] + ipt.restore_payload(rules, f, IFACES) + "# Completed\n" for f in FAMILIES)


def listing_of(commands):
    """The listing nft would give of our table after these commands (the add objects as they are).

    commands: the libnftables JSON document, or the module's rendered lines (one JSON command each)."""
    if isinstance(commands, list):
        commands = {"nftables": [json.loads(line) for line in commands]}
    items = []
    for cmd in commands["nftables"]:
        if "add" in cmd:
            items.append(cmd["add"])
    return {"nftables": items}


def nft_only_rules():
    table = nftr.parse_ruleset(NFT_LISTING, IFACES, include_foreign=True)
    return table.rules, table.unsupported


def test_iptables_shapes_are_all_carried():
    rules, unsupported = gather_ipt(IPT_TEXT)
    assert unsupported == []
    assert rules == canonical(IPT_RULES)


def both(rule):
    return [rule._replace(family=family) for family in FAMILIES]


# The nft fixture in canonical order: a rule of the inet table that names no family is one rule
# for each family.
NFT_RULES = canonical(
    IPT_RULES[0:3] + both(IPT_RULES[3]) + both(IPT_RULES[4]) + both(IPT_RULES[5]) + [IPT_RULES[6]] + NFT_ONLY[0:4]
    + [IPT_RULES[9], NFT_ONLY[4], IPT_RULES[11]] + both(IPT_RULES[12]) + [IPT_RULES[13], IPT_RULES[16], IPT_RULES[18]]
    + NFT_ONLY[5:])


def test_nftables_shapes_are_all_carried():
    rules, unsupported = nft_only_rules()
    assert unsupported == []
    assert rules == NFT_RULES


def document(rules):
    return {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "policy": to_policy(rules)}]}}}


@pytest.mark.parametrize("rules", [IPT_RULES, NFT_RULES], ids=["iptables", "nftables"])
def test_documents_validate_against_the_yang_modules(rules):
    yang_model = pytest.importorskip("ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    assert yang_model.validate(document(rules)) == []
    assert rules_of(document(rules)) == canonical(rules)


def through_nftables(rules):
    listing = listing_of(nftr.render_commands(rules, IFACES))
    table = nftr.parse_ruleset(listing, IFACES)
    assert table.unsupported == []
    return table.rules


def through_iptables(rules):
    rules, unsupported = gather_ipt(render_ipt(rules), include_builtin=False)
    assert unsupported == []
    return rules


def test_iptables_to_nftables_and_back_gives_the_same_document():
    rules, dummy = gather_ipt(IPT_TEXT)
    doc = document(rules)
    there = through_nftables(rules_of(doc))
    assert document(there) == doc
    assert document(through_iptables(rules_of(document(there)))) == doc


def test_nftables_to_iptables_and_back_gives_the_same_document():
    rules = [rule for rule in nft_only_rules()[0] if rule not in NFT_ONLY]
    doc = document(rules)
    there = through_iptables(rules_of(doc))
    assert document(there) == doc
    assert document(through_nftables(rules_of(document(there)))) == doc
    # nftables to nftables holds every shape.
    assert document(through_nftables(NFT_RULES)) == document(NFT_RULES)


@pytest.mark.parametrize("rule,words", [
    (NFT_ONLY[0], "one address range per rule"),
    (NFT_ONLY[1], "one protocol per rule"),
    (NFT_ONLY[3], "one protocol per rule"),
    (NFT_ONLY[4], "one address range per rule"),
    (NFT_ONLY[5], "MASQUERADE has no --persistent"),
    (IPT_RULES[1]._replace(flags=("fully-random",)), "DNAT has no --random-fully"),
    (IPT_RULES[3]._replace(flags=("persistent",)), "REDIRECT has no --persistent"),
])
def test_what_iptables_cannot_write_is_refused_with_the_reason(rule, words):
    with pytest.raises(ipt.RenderError, match=words):
        ipt.rule_args(rule, IFACES)


def test_comments_that_an_implementation_cannot_hold_are_refused():
    quoted = IPT_RULES[16]._replace(comment='say "hi"')
    with pytest.raises(ipt.RenderError, match="cannot pass the comment"):
        ipt.restore_payload([quoted], "ipv4", IFACES)
    long = IPT_RULES[16]._replace(comment="x" * 129)
    assert ipt.rule_args(long, IFACES)[-6:-4] == ["--comment", "x" * 129]
    with pytest.raises(nftr.RenderError, match="up to 128 bytes"):
        nftr.render_commands([long], IFACES)
    assert rule_problems(IPT_RULES[16]._replace(comment="two\nlines"))
    assert rule_problems(IPT_RULES[16]._replace(comment="x" * 256))


def test_policies_use_their_places():
    policies = dict((i, policy) for i, policy in enumerate(to_policy(IPT_RULES + NFT_ONLY)))
    exempt_dnat, dnat_negated, exempt_range = policies[0], policies[1], policies[2]
    assert exempt_dnat["dst-nat-enable"] is True and exempt_dnat[NS + "exempt"] is True
    assert exempt_dnat[NS + "destination-prefix"] == "203.0.113.1/32" and "dst-ip-address-pool" not in exempt_dnat
    assert dnat_negated[NS + "excluded-in-interface"] == "outside"
    assert dnat_negated[NS + "excluded-destination-port"] == [{"start-port-number": 80, "end-port-number": 90}]
    # A range is the prefixes that cover it, in subscriber-match for a source.
    assert [m["subnet"] for m in exempt_range["subscriber-match"]] == [
        "198.51.100.1/32", "198.51.100.2/31", "198.51.100.4/30", "198.51.100.8/31"]
    redirect = policies[5]
    assert redirect[NS + "redirect"] is True and redirect[NS + "nat-flags"] == "random"
    assert redirect[NS + "translated-port"] == {"start-port-number": 3128, "end-port-number": 3130}
    assert "dst-ip-address-pool" not in redirect
    dnat_range = policies[6]
    assert dnat_range[NS + "excluded-destination"] == ["203.0.113.1/32", "203.0.113.2/31"]
    assert dnat_range["dst-ip-address-pool"][0]["dst-out-ip-pool"] == "0.0.0.0/0"
    assert dnat_range[NS + "nat-flags"] == "random persistent"
    snat = policies[13]
    assert snat[NS + "excluded-source"] == ["192.0.2.128/25"] and "subscriber-match" not in snat
    pool = [p["external-ip-pool"] for p in snat["external-ip-address-pool"]]
    assert pool == ["203.0.113.10/31", "203.0.113.12/30", "203.0.113.16/30"]
    assert policies[16][NS + "comment"] == "guests: pool of their own"
    dnat_set, two_protocols = policies[len(IPT_RULES)], policies[len(IPT_RULES) + 1]
    assert dnat_set[NS + "destination-address"] == [
        "203.0.113.7/32", "203.0.113.32/28", "203.0.113.60/31", "203.0.113.62/32"]
    assert two_protocols["transport-protocols"] == [{"protocol-id": 6, "protocol-name": "TCP"},
                                                    {"protocol-id": 17, "protocol-name": "UDP"}]


def _policy(index, change):
    policies = to_policy(IPT_RULES + NFT_ONLY)
    change(policies[index])
    return [policies[index]]


@pytest.mark.parametrize("index,change,path,words", [
    (0, lambda p: p.update({"dst-ip-address-pool": [
        {"pool-id": 1, "dst-in-ip-pool": "192.0.2.1/32", "dst-out-ip-pool": "0.0.0.0/0"}]}),
     "policy[0]/dst-ip-address-pool", "translates nothing"),
    (9, lambda p: p.update({NS + "masquerade": True}), "policy[0]/" + NS + "masquerade", "translates nothing"),
    (3, lambda p: p.pop("dst-nat-enable"), "policy[0]/" + NS + "redirect", "dst-nat-enable true"),
    (13, lambda p: p.update({"subscriber-match": [{"match-id": 1, "subnet": "192.0.2.0/24"}]}),
     "policy[0]/" + NS + "excluded-source", "matches its source once"),
    (11, lambda p: p.update({NS + "out-interface": "outside"}),
     "policy[0]/" + NS + "excluded-out-interface", "once"),
    (6, lambda p: p.update({NS + "nat-flags": "random sticky"}), "policy[0]/" + NS + "nat-flags", "flags are"),
    (6, lambda p: [e.update({"dst-out-ip-pool": "203.0.113.9/32"}) for e in p["dst-ip-address-pool"]],
     "policy[0]/dst-ip-address-pool", "matches its destination once"),
    (len(IPT_RULES), lambda p: p.update({NS + "destination-address": []}),
     "policy[0]/" + NS + "destination-address", "matches nothing"),
    (9, lambda p: p.update({NS + "nat-flags": "random"}), "policy[0]", "translates nothing"),
])
def test_errors_name_the_offending_member(index, change, path, words):
    with pytest.raises(ModelError) as err:
        from_policy(_policy(index, change))
    assert err.value.path == path
    assert words in str(err.value)


@pytest.mark.parametrize("index,change", [
    (0, lambda p: p.update({"dst-ip-address-pool": [
        {"pool-id": 1, "dst-in-ip-pool": "192.0.2.1/32", "dst-out-ip-pool": "0.0.0.0/0"}]})),
    (9, lambda p: p.update({NS + "redirect": True})),
    (3, lambda p: p.pop("dst-nat-enable")),
    (11, lambda p: p.update({"dst-nat-enable": True})),
    (6, lambda p: p.update({NS + "nat-flags": "random sticky"})),
])
def test_the_yang_validator_refuses_them_too(index, change):
    yang_model = pytest.importorskip("ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    doc = {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "policy": _policy(index, change)}]}}}
    assert yang_model.validate(doc) != []


@pytest.mark.parametrize("rule,words", [
    (NatRule("no-snat", "ipv4", to_ports=(1, 2), proto=6), "translates nothing"),
    (NatRule("redirect", "ipv4", None, "outside"), "outgoing interface"),
    (NatRule("masquerade", "ipv4", negated=("src",)), "does not match it"),
    (NatRule("masquerade", "ipv4", flags=("persistent", "random")), "in that order"),
    (NatRule("masquerade", "ipv4", proto=(17, 6)), "sorted"),
    (NatRule("masquerade", "ipv4", src=(("192.0.2.0", "192.0.2.255"),)), "canonically"),
    (NatRule("dnat", "ipv4", proto=(6, 1), dports=((80, 80),), to_addresses=("192.0.2.1",) * 2), "protocol with ports"),
])
def test_rule_problems_of_the_new_shapes(rule, words):
    assert any(words in problem for problem in rule_problems(rule)), rule_problems(rule)


OWN_CHAIN = """\
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:NFSTATE-POST - [0:0]
:DOCKER - [0:0]
[5:300] -A POSTROUTING -j NFSTATE-POST
[0:0] -A POSTROUTING -o out0 -j MASQUERADE
[0:0] -A NFSTATE-POST -d 198.51.100.0/24 -j RETURN
[0:0] -A NFSTATE-POST -d 203.0.113.0/24 -j ACCEPT
[0:0] -A DOCKER -i in0 -j RETURN
COMMIT
"""


def test_iptables_return_only_exempts_what_follows_it_in_our_chain():
    table = ipt.parse_save(OWN_CHAIN, "ipv4", IFACES, include_builtin=True)
    # `iptables-save -c` counters are dropped; ACCEPT ends the table, so it is an exemption here.
    assert table.rules == [NatRule("no-snat", "ipv4", dst="203.0.113.0/24"), NatRule("masquerade", "ipv4", None, "outside")]
    assert [item["reason"] for item in table.unsupported] == [
        "a RETURN to the calling chain, which has rules after the jump",
        "a rule of chain DOCKER, which no rule of PREROUTING or POSTROUTING reaches"]
    # Our chain alone: RETURN ends our rules, as nftables' accept ends our table.
    alone = ipt.parse_save(OWN_CHAIN, "ipv4", IFACES)
    assert alone.rules == [NatRule("no-snat", "ipv4", dst="198.51.100.0/24"), NatRule("no-snat", "ipv4", dst="203.0.113.0/24")]
    assert alone.unsupported == []


JUMPS = """\
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:LIBVIRT_PRT - [0:0]
:FWD - [0:0]
:ZONE - [0:0]
:EMPTY - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --src-type LOCAL -j DOCKER
-A PREROUTING -i out0 -j FWD
-A PREROUTING -i in0 -g ZONE
-A POSTROUTING -j LIBVIRT_PRT
-A POSTROUTING -j EMPTY
-A LIBVIRT_PRT -s 192.0.2.0/24 -d 224.0.0.0/24 -j RETURN
-A LIBVIRT_PRT -s 192.0.2.0/24 ! -d 192.0.2.0/24 -p tcp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s 192.0.2.0/24 ! -d 192.0.2.0/24 -j MASQUERADE
-A FWD -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.0.2.10:22
-A FWD -i out0 -p udp -m udp --dport 53 -j DNAT --to-destination 192.0.2.53
-A FWD -i in0 -p udp -m udp --dport 54 -j DNAT --to-destination 192.0.2.54
-A ZONE -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128
-A DOCKER -i in0 -j RETURN
-A DOCKER ! -i in0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.0.2.2:80
COMMIT
"""


def test_iptables_jumps_are_followed_with_their_matches():
    table = ipt.parse_save(JUMPS, "ipv4", IFACES, include_builtin=True)
    assert table.rules == [
        NatRule("dnat", "ipv4", "outside", None, None, None, T, ((2222, 2222),), ("192.0.2.10",) * 2, (22, 22)),
        # the jump's -i and the rule's own are one match when they agree
        NatRule("dnat", "ipv4", "outside", None, None, None, U, ((53, 53),), ("192.0.2.53",) * 2),
        NatRule("redirect", "ipv4", "inside", None, None, None, T, ((80, 80),), None, (3128, 3128)),
        # -g: what ZONE does not translate is left alone by the rest of PREROUTING
        NatRule("no-dnat", "ipv4", "inside"),
        # libvirt: the RETURN comes back to POSTROUTING, where nothing effective follows
        NatRule("no-snat", "ipv4", None, None, "192.0.2.0/24", "224.0.0.0/24"),
        NatRule("masquerade", "ipv4", None, None, "192.0.2.0/24", "192.0.2.0/24", T, (), None, (1024, 65535),
                negated=("dst",)),
        NatRule("masquerade", "ipv4", None, None, "192.0.2.0/24", "192.0.2.0/24", negated=("dst",)),
    ]
    assert [(item["rule"], item["reason"]) for item in table.unsupported] == [
        ("-A PREROUTING -m addrtype --src-type LOCAL -j DOCKER", "match option --src-type"),
        ("-A DOCKER -i in0 -j RETURN",
         "behind a jump that is listed (match option --src-type): -A PREROUTING -m addrtype --src-type LOCAL -j DOCKER"),
        ("-A DOCKER ! -i in0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.0.2.2:80",
         "behind a jump that is listed (match option --src-type): -A PREROUTING -m addrtype --src-type LOCAL -j DOCKER"),
        ("-A FWD -i in0 -p udp -m udp --dport 54 -j DNAT --to-destination 192.0.2.54", "matches in_role twice"),
    ]
    assert table.followed == ["-A PREROUTING -i out0 -j FWD", "-A POSTROUTING -j LIBVIRT_PRT", "-A POSTROUTING -j EMPTY"]
    lines = [line for line in JUMPS.splitlines() if line.startswith("-A")]
    assert sorted(table.carried + table.followed + [item["rule"] for item in table.unsupported]) == sorted(lines)


def _chain(name, **extra):
    return {"chain": dict({"family": "ip", "table": "t", "name": name}, **extra)}


def _rule(chain, *exprs):
    return {"rule": {"family": "ip", "table": "t", "chain": chain, "expr": list(exprs)}}


def _oif(dev, op="=="):
    return {"match": {"op": op, "left": {"meta": {"key": "oifname"}}, "right": dev}}


def test_nftables_return_and_goto_behind_a_base_chain():
    listing = {"nftables": [
        {"table": {"family": "ip", "name": "t"}},
        _chain("post", type="nat", hook="postrouting", prio=100, policy="accept"),
        _chain("lan"), _chain("zone"), _chain("mark"), _chain("empty"),
        _rule("post", _oif("in0"), {"jump": {"target": "lan"}}),
        _rule("post", _oif("out0"), {"goto": {"target": "zone"}}),
        _rule("post", {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 1}}, {"goto": {"target": "mark"}}),
        _rule("post", {"masquerade": None}),
        _rule("lan", _daddr("198.51.100.0", 24), {"return": None}),
        _rule("lan", {"jump": {"target": "empty"}}),
        _rule("zone", _daddr("198.51.100.0", 24), {"return": None}),
        _rule("zone", {"counter": None}, {"masquerade": {"flags": "fully-random"}}),
        _rule("zone", {"jump": {"target": "empty"}}),
        _rule("mark", {"masquerade": None}),
    ]}
    table = nftr.parse_ruleset(listing, IFACES, include_foreign=True)
    assert table.rules == [
        # entered by a goto from the base chain: its return ends the base chain too, an exemption
        NatRule("no-snat", "ipv4", None, "outside", dst="198.51.100.0/24"),
        NatRule("masquerade", "ipv4", None, "outside", flags=("fully-random",)),
        # the goto's condition: what the zone chain leaves untranslated stays so
        NatRule("no-snat", "ipv4", None, "outside"),
        NatRule("masquerade", "ipv4"),
    ]
    assert [item["reason"] for item in table.unsupported] == [
        # entered by a jump: after its return the base chain's later rules still run
        "a return from chain 'lan' to the chain that jumped to it, which has rules after the jump",
        "a goto on a condition the model cannot hold: match on meta mark",
        "behind a goto that is listed (a goto on a condition the model cannot hold: match on meta mark)",
    ]
    # Every rule is accounted for: carried, listed, or a jump read in its place.
    assert len(table.carried) + len(table.unsupported) + len(table.followed) == 10


def _daddr(addr, length):
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                      "right": {"prefix": {"addr": addr, "len": length}}}}


def test_nftables_exemption_before_a_later_nat_chain_is_listed():
    listing = {"nftables": [
        {"table": {"family": "ip", "name": "t"}},
        _chain("a", type="nat", hook="postrouting", prio=100, policy="accept"),
        _chain("b", type="nat", hook="postrouting", prio=110, policy="accept"),
        _rule("a", _daddr("198.51.100.0", 24), {"accept": None}),
        _rule("b", {"masquerade": None}),
    ]}
    table = nftr.parse_ruleset(listing, IFACES, include_foreign=True)
    assert table.rules == [NatRule("masquerade", "ipv4")]
    assert [item["reason"] for item in table.unsupported] == [nftr.LATER_CHAINS]


def test_the_module_parses_and_renders_the_shapes(tmp_path):
    parsed = run_nat_rules_module(tmp_path, implementation="iptables", state="parsed", interfaces=IFACES,
                                  running_config=IPT_TEXT, include_builtin_chains=True)
    assert "failed" not in parsed, parsed
    assert rules_of(parsed["parsed"]) == canonical(IPT_RULES) and parsed["unsupported"] == []
    rendered = run_nat_rules_module(tmp_path, implementation="nftables", state="rendered", interfaces=IFACES,
                                    config=parsed["parsed"])
    assert "failed" not in rendered, rendered
    assert nftr.parse_ruleset(listing_of(rendered["rendered"]), IFACES).rules == canonical(IPT_RULES)
    # What iptables cannot write fails the rendering, naming the reason.
    refused = run_nat_rules_module(tmp_path, implementation="iptables", state="rendered", interfaces=IFACES,
                                   config=to_policy(NFT_ONLY[1:2]))
    assert refused["failed"] is True and "one protocol per rule" in refused["msg"]


DOCKER_LIKE = """\
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -o out0 -m addrtype ! --dst-type LOCAL -j MASQUERADE
-A POSTROUTING -m addrtype --dst-type UNICAST -j MASQUERADE
-A POSTROUTING -m addrtype --dst-type LOCAL --limit-iface-out -j MASQUERADE
-A DOCKER -i in0 -j RETURN
-A DOCKER ! -i in0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.0.2.2:80
COMMIT
"""
DOCKER_RULES = [
    NatRule("no-dnat", "ipv4", "inside", dst_local=True),
    NatRule("dnat", "ipv4", "inside", None, None, None, T, ((8080, 8080),), ("192.0.2.2",) * 2, (80, 80),
            negated=("in_role",), dst_local=True),
    NatRule("masquerade", "ipv4", None, "outside", dst_local=False),
]


def test_the_host_s_own_addresses_are_a_match_of_their_own():
    # Docker publishes ports on "any address of this host": the same on whichever host applies it.
    table = ipt.parse_save(DOCKER_LIKE, "ipv4", IFACES, include_builtin=True)
    assert table.rules == DOCKER_RULES
    assert [item["reason"] for item in table.unsupported] == ["match --dst-type UNICAST", "match option --limit-iface-out"]
    policies = to_policy(DOCKER_RULES)
    assert [p[NS + "destination-local"] for p in policies] == [True, True, False]
    assert from_policy(policies) == DOCKER_RULES
    exprs = nftr.rule_exprs(DOCKER_RULES[2], IFACES)
    assert {"match": {"op": "!=", "left": {"fib": {"flags": ["daddr"], "result": "type"}}, "right": "local"}} in exprs
    assert through_nftables(DOCKER_RULES) == DOCKER_RULES
    assert through_iptables(DOCKER_RULES) == DOCKER_RULES


def test_fib_lookups_other_than_the_destination_type_are_listed():
    listing = {"nftables": [
        {"table": {"family": "ip", "name": "t"}},
        _chain("pre", type="nat", hook="prerouting", prio=-100, policy="accept"),
        _rule("pre", {"match": {"op": "==", "left": {"fib": {"flags": ["daddr", "iif"], "result": "type"}},
                                "right": "local"}}, {"dnat": {"addr": "192.0.2.2"}}),
        _rule("pre", {"match": {"op": "==", "left": {"fib": {"flags": ["daddr"], "result": "type"}},
                                "right": "broadcast"}}, {"dnat": {"addr": "192.0.2.2"}}),
    ]}
    table = nftr.parse_ruleset(listing, IFACES, include_foreign=True)
    assert table.rules == []
    assert [item["reason"] for item in table.unsupported] == ["match on fib daddr iif type", "match on fib daddr type"]


def test_the_loopback_interface_is_a_role_of_every_host():
    # firewalld: `oifname "eth0" goto nat_POST_public` then `oifname != "lo" masquerade` there.
    listing = {"nftables": [
        {"table": {"family": "ip", "name": "t"}},
        _chain("post", type="nat", hook="postrouting", prio=100, policy="accept"), _chain("public"),
        _rule("post", _oif("out0"), {"goto": {"target": "public"}}),
        _rule("post", {"goto": {"target": "public"}}),
        _rule("public", _oif("lo", "!="), {"masquerade": None}),
    ]}
    table = nftr.parse_ruleset(listing, IFACES, include_foreign=True)
    assert table.rules == [
        # "out0 and not lo" is "out0": an interface is one device
        NatRule("masquerade", "ipv4", None, "outside"),
        NatRule("no-snat", "ipv4", None, "outside"),
        NatRule("masquerade", "ipv4", None, "loopback", negated=("out_role",)),
        NatRule("no-snat", "ipv4"),
    ]
    assert table.unsupported == []
    assert ipt.rule_args(table.rules[2], IFACES) == ["!", "-o", "lo", "-j", "MASQUERADE"]
    # A host whose loopback has another name says so.
    assert ipt.rule_args(table.rules[2], dict(IFACES, loopback="lo0"))[:3] == ["!", "-o", "lo0"]
    assert through_iptables(table.rules) == table.rules
