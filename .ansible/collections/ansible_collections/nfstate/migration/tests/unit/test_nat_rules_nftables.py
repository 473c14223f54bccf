"""Parsing and rendering our nftables table as libnftables JSON."""

import copy
import json

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.templates.nat_nftables import (
    RenderError, delete_commands, installed, parse_ruleset, render_commands, rule_exprs,
)

from ansible_collections.nfstate.migration.tests.unit.builders import EXPECTED_NFT as EXPECTED
from ansible_collections.nfstate.migration.tests.unit.builders import LISTING, match, meta, payload, rule

IFACES = {"inside": "veth-in", "outside": "veth-out"}


def test_parse_listing():
    table = parse_ruleset(LISTING, IFACES)
    assert table.rules == EXPECTED
    assert table.unsupported == []
    assert table.exists and installed(table)


def test_other_tables_are_ignored():
    listing = copy.deepcopy(LISTING)
    listing["nftables"].append({"table": {"family": "ip", "name": "nat", "handle": 7}})
    listing["nftables"].append({"chain": {"family": "ip", "table": "nat", "name": "postrouting", "type": "nat",
                                          "hook": "postrouting", "prio": 100, "policy": "accept"}})
    listing["nftables"].append({"rule": {"family": "ip", "table": "nat", "chain": "postrouting",
                                         "expr": [{"counter": None}, {"masquerade": None}]}})
    assert parse_ruleset(listing, IFACES) == parse_ruleset(LISTING, IFACES)


def test_missing_table():
    table = parse_ruleset({"nftables": []}, IFACES)
    assert table.rules == [] and not table.exists and not installed(table)
    assert delete_commands(table) is None


@pytest.mark.parametrize("exprs,reason", [
    ([match(meta("oifname"), "veth-out"), {"log": {"prefix": "nat "}}, {"masquerade": None}],
     "statement 'log'"),
    ([match(meta("oifname"), "veth-out"), {"masquerade": None}], "matches both address families"),
    ([match(meta("nfproto"), "ipv4"), match(meta("oifname"), "eth7"), {"masquerade": None}],
     "interface 'eth7' has no role"),
    ([match(meta("nfproto"), "ipv4"), {"masquerade": {"flags": ["random", "netmap"]}}], "masquerade flags"),
    ([{"match": {"op": "<", "left": payload("tcp", "dport"), "right": 1024}}, match(meta("nfproto"), "ipv4"),
      {"masquerade": None}], "match operator '<'"),
    ([match(meta("nfproto"), "ipv4"), match(payload("tcp", "sport"), 5), {"masquerade": None}],
     "match on tcp sport"),
    ([match(meta("nfproto"), "ipv4"), match(meta("mark"), 1), {"masquerade": None}], "match on meta mark"),
    ([match(meta("nfproto"), "ipv6"), {"snat": {"family": "ip", "addr": "203.0.113.1"}}], "mixes address families"),
    ([match(meta("nfproto"), "ipv4"), {"dnat": {"family": "ip", "addr": "192.0.2.1"}}], "dnat in the postrouting"),
    ([match(meta("nfproto"), "ipv4"), {"drop": None}], "statement 'drop'"),
])
def test_unsupported_rules_are_listed_with_the_reason(exprs, reason):
    listing = copy.deepcopy(LISTING)
    listing["nftables"].append(rule("postrouting", *exprs))
    table = parse_ruleset(listing, IFACES)
    assert table.rules == EXPECTED
    assert len(table.unsupported) == 1
    assert reason in table.unsupported[0]["reason"]
    assert table.unsupported[0]["rule"] == "postrouting: " + json.dumps(exprs, sort_keys=True)


def test_rule_in_a_chain_that_is_not_ours():
    listing = copy.deepcopy(LISTING)
    listing["nftables"].append(rule("mine", match(meta("nfproto"), "ipv4"), {"masquerade": None}))
    assert "not ours" in parse_ruleset(listing, IFACES).unsupported[0]["reason"]


def test_rule_exprs():
    assert rule_exprs(EXPECTED[3], IFACES) == [
        match(meta("nfproto"), "ipv4"),
        match(meta("oifname"), "veth-out"),
        match(payload("ip", "saddr"), {"prefix": {"addr": "192.0.2.0", "len": 24}}),
        match(payload("tcp", "dport"), 80),
        {"snat": {"family": "ip", "addr": {"range": ["203.0.113.10", "203.0.113.12"]},
                  "port": {"range": [1024, 2000]}}},
    ]
    assert rule_exprs(EXPECTED[6], IFACES) == [
        match(meta("nfproto"), "ipv4"), match(meta("l4proto"), 47),
        {"snat": {"family": "ip", "addr": "203.0.113.1"}}]
    assert rule_exprs(EXPECTED[5], IFACES)[-1] == {"masquerade": {}}
    assert rule_exprs(EXPECTED[1], IFACES)[1] == match(payload("tcp", "dport"), {"set": [53, {"range": [1000, 2000]}]})


def test_render_commands_replace_our_chains_in_one_batch():
    cmds = render_commands(EXPECTED, IFACES)["nftables"]
    assert cmds[1] == {"add": {"table": {"family": "inet", "name": "nfstate_nat"}}}
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert {(c["name"], c["hook"], c["prio"], c["type"]) for c in chains} == {
        ("prerouting", "prerouting", -100, "nat"), ("postrouting", "postrouting", 100, "nat")}
    assert [c["flush"]["chain"]["name"] for c in cmds if "flush" in c] == ["postrouting", "prerouting"]
    added = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert [a["chain"] for a in added] == ["prerouting"] * 3 + ["postrouting"] * 6


def test_rendered_rules_parse_back():
    listing = {"nftables": [
        {"table": {"family": "inet", "name": "nfstate_nat"}},
        {"chain": {"family": "inet", "table": "nfstate_nat", "name": "prerouting", "type": "nat",
                   "hook": "prerouting", "prio": -100}},
        {"chain": {"family": "inet", "table": "nfstate_nat", "name": "postrouting", "type": "nat",
                   "hook": "postrouting", "prio": 100}},
    ]}
    for cmd in render_commands(EXPECTED, IFACES)["nftables"]:
        if "rule" in cmd.get("add", {}):
            listing["nftables"].append({"rule": cmd["add"]["rule"]})
    assert parse_ruleset(listing, IFACES).rules == EXPECTED


def test_render_errors():
    with pytest.raises(RenderError, match="outside role has no device"):
        render_commands([EXPECTED[5]], {"inside": "veth-in"})
    with pytest.raises(RenderError, match="needs an address range"):
        rule_exprs(EXPECTED[3]._replace(to_addresses=None), IFACES)


def test_delete_commands():
    assert delete_commands(parse_ruleset(LISTING, IFACES))["nftables"][1] == {
        "delete": {"table": {"family": "inet", "name": "nfstate_nat"}}}
