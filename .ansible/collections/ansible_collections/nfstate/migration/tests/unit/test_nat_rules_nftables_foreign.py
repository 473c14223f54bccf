"""Gathering a NAT written by hand in nftables tables of its own (include_builtin_chains).

The fixtures are `nft -j list ruleset` (nftables 1.0.6) of a scratch namespace:
- nft_ruleset_lab.json: the lab's source rules (lab/nfstate_lab.py nat_ruleset("nftables", "out0")),
  tables `ip nat` and `ip6 nat`;
- nft_ruleset_foreign.json: nft_ruleset_foreign.nft, our own table beside hand-written tables with
  priorities, jumps, counters and what the model cannot express.
tests/integration/test_nat_rules_foreign.py checks that nft still lists them so.
"""

import copy
import json
import os

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.templates.nat_iptables import (
    parse_save, restore_payload,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import (
    NatRule, canonical, rules_of, to_policy,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates.nat_nftables import (
    installed, parse_ruleset,
)
from ansible_collections.nfstate.migration.tests.unit.builders import run_nat_rules_module

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
IFACES = {"inside": "in0", "outside": "out0"}


def load(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return json.load(handle)


LAB = load("nft_ruleset_lab.json")
FOREIGN = load("nft_ruleset_foreign.json")

V4_EXT, V6_EXT = ("203.0.113.1",) * 2, ("2001:db8:2::1",) * 2
PORTS = (20000, 29999)
LAB_RULES = [
    NatRule("dnat", "ipv4", "outside", None, None, "203.0.113.1/32", 6, ((8080, 8080),),
            ("192.0.2.10", "192.0.2.10"), (8080, 8080)),
    NatRule("dnat", "ipv6", "outside", None, None, "2001:db8:2::1/128", 6, ((8080, 8080),),
            ("2001:db8:1::10", "2001:db8:1::10"), (8080, 8080)),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.0/24", None, 6, (), V4_EXT, PORTS),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.0/24", None, 17, (), V4_EXT, PORTS),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.0/24", None, None, (), V4_EXT, None),
    NatRule("snat", "ipv6", None, "outside", "2001:db8:1::/64", None, 6, (), V6_EXT, PORTS),
    NatRule("snat", "ipv6", None, "outside", "2001:db8:1::/64", None, 17, (), V6_EXT, PORTS),
    NatRule("snat", "ipv6", None, "outside", "2001:db8:1::/64", None, None, (), V6_EXT, None),
]

FOREIGN_RULES = [
    # inet edge pre: `iifname "out0" counter jump forwards`, the jump's match on each rule behind it
    NatRule("dnat", "ipv4", "outside", None, None, None, 6, ((2222, 2222),), ("192.0.2.10", "192.0.2.10"), (22, 22)),
    # `iifname "in0" goto elsewhere`: the rule behind the goto, then, as a goto does not come
    # back, an exemption on its condition (for both families: the condition names none)
    NatRule("dnat", "ipv4", "inside", None, None, None, None, (), ("192.0.2.11", "192.0.2.11"), None),
    NatRule("no-dnat", "ipv4", "inside"),
    # ... and one jump further, forwards -> deeper
    NatRule("dnat", "ipv6", "outside", None, None, "2001:db8:2::1/128", 17, ((5353, 5353),),
            ("2001:db8:1::10", "2001:db8:1::10"), (53, 53)),
    NatRule("no-dnat", "ipv6", "inside"),
    # postrouting, in priority order whatever the listing's order: ip early (srcnat - 10) ...
    NatRule("snat", "ipv4", None, "outside", "192.0.2.20/32", None, None, (), ("203.0.113.5", "203.0.113.5")),
    # ... our own table (srcnat), read once ...
    NatRule("masquerade", "ipv4", None, "outside", "198.51.100.0/24"),
    # ... inet edge (srcnat + 10): `counter oifname "out0" masquerade` names no family, so both
    NatRule("masquerade", "ipv4", None, "outside"),
    NatRule("masquerade", "ipv6", None, "outside"),
]


def test_the_lab_source_is_gathered_from_its_own_tables():
    table = parse_ruleset(LAB, IFACES, include_foreign=True)
    assert table.rules == LAB_RULES
    assert table.unsupported == []
    # None of it is ours: nothing of ours exists, and without the option nothing is read.
    assert not table.exists and table.chains == []
    assert parse_ruleset(LAB, IFACES).rules == []


def test_the_lab_source_goes_through_the_model_into_iptables_unchanged():
    rules = rules_of(to_policy(parse_ruleset(LAB, IFACES, include_foreign=True).rules))
    assert rules == LAB_RULES
    back = []
    for family in ("ipv4", "ipv6"):
        back += parse_save(restore_payload(rules, family, IFACES), family, IFACES).rules
    assert canonical(back) == LAB_RULES


def test_hook_and_priority_order_jumps_and_our_table_once():
    table = parse_ruleset(FOREIGN, IFACES, include_foreign=True)
    assert table.rules == FOREIGN_RULES
    assert table.exists and installed(table)
    assert [(item["rule"].split(":")[0], item["reason"]) for item in table.unsupported] == [
        ("inet edge out", "NAT of the host's own traffic is not modelled"),
        ("inet edge pre", "match on meta mark"),
        ("inet edge pre", "a lookup in the set @trusted"),
    ]
    # The rule is named with its statements, as libnftables lists them.
    assert '"right": "@trusted"' in table.unsupported[2]["rule"]


def test_without_the_option_only_our_table_is_read():
    table = parse_ruleset(FOREIGN, IFACES)
    assert table.rules == [FOREIGN_RULES[6]]
    assert table.unsupported == []


def _with_rules(listing, *items):
    out = copy.deepcopy(listing)
    out["nftables"].extend(items)
    return out


def _chain(name, **extra):
    return {"chain": dict({"family": "inet", "table": "edge", "name": name}, **extra)}


def _rule(chain, *exprs):
    return {"rule": {"family": "inet", "table": "edge", "chain": chain, "expr": list(exprs)}}


def _match(key, right):
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}}


def _read_with(listing):
    """The rules, and the unsupported ones beyond the fixture's own three."""
    table = parse_ruleset(listing, IFACES, include_foreign=True)
    return table.rules, [(item["rule"].split(":")[0], item["reason"]) for item in table.unsupported][3:]


def test_a_jump_whose_match_contradicts_the_rule_behind_it():
    rules, reasons = _read_with(_with_rules(
        FOREIGN, _rule("pre", _match("iifname", "in0"), {"jump": {"target": "inner"}}), _chain("inner"),
        _rule("inner", _match("iifname", "out0"), _match("nfproto", "ipv4"), {"dnat": {"family": "ip", "addr": "192.0.2.7"}})))
    assert rules == FOREIGN_RULES
    assert reasons == [("inet edge pre > inner", "matches the incoming interface twice")]


def test_jumps_that_cannot_be_followed():
    listing = _with_rules(
        FOREIGN,
        _rule("pre", {"jump": {"target": "missing"}}),
        _rule("pre", {"jump": {"target": "post"}}),
        _chain("loop"), _rule("pre", {"jump": {"target": "loop"}}), _rule("loop", {"jump": {"target": "loop"}}))
    rules, reasons = _read_with(listing)
    assert rules == FOREIGN_RULES
    assert reasons == [
        ("inet edge pre", "a jump to 'missing', which is no regular chain of the table"),
        ("inet edge pre", "a jump to 'post', which is no regular chain of the table"),
        ("inet edge pre > " + " > ".join(["loop"] * 15), "jumps nested deeper than 16 chains"),
    ]


def test_an_iptables_nft_rule_says_which_implementation_reads_it():
    # What `iptables-nft -t nat -A POSTROUTING -o out0 -j MASQUERADE` lists as.
    listing = _with_rules(
        LAB, {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "type": "nat",
                        "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING",
                  "expr": [_match("oifname", "out0"), {"counter": {"packets": 0, "bytes": 0}},
                           {"xt": {"type": "target", "name": "MASQUERADE"}}]}})
    table = parse_ruleset(listing, IFACES, include_foreign=True)
    assert table.rules == LAB_RULES
    assert "implementation=iptables, iptables_backend=nft" in table.unsupported[0]["reason"]


def test_ip_protocol_is_the_protocol_of_an_ipv4_rule():
    listing = _with_rules(LAB, {"rule": {"family": "ip", "table": "nat", "chain": "postrouting", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}}, "right": "gre"}},
        {"snat": {"addr": "203.0.113.1"}}]}})
    assert parse_ruleset(listing, IFACES, include_foreign=True).rules[5] == NatRule(
        "snat", "ipv4", proto=47, to_addresses=V4_EXT)


def test_parsed_state_reads_the_ruleset_with_the_option(tmp_path):
    result = run_nat_rules_module(tmp_path, implementation="nftables", state="parsed", interfaces=IFACES,
                                  running_config=LAB, include_builtin_chains=True)
    assert "failed" not in result, result
    assert rules_of(result["parsed"]) == LAB_RULES and not result.get("warnings")
    failed = run_nat_rules_module(tmp_path, implementation="nftables", state="parsed", interfaces=IFACES,
                                  running_config=FOREIGN, include_builtin_chains=True)
    assert failed["failed"] is True and "a lookup in the set @trusted" in failed["msg"]
    assert len(failed["unsupported"]) == 3


@pytest.mark.parametrize("listing", [LAB, FOREIGN])
def test_gathered_documents_validate(listing):
    yang_model = pytest.importorskip(
        "ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    policy = to_policy(parse_ruleset(listing, IFACES, include_foreign=True).rules)
    doc = {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "policy": policy}]}}}
    assert yang_model.validate(doc) == []
