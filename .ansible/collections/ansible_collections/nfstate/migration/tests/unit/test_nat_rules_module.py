"""The nat_rules module's offline states (parsed, rendered) and its input checks, run as Ansible runs it:
a separate Python process reading its arguments from a file and answering in JSON."""

import gzip
import json

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.templates.nat_iptables import parse_save
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import NS, canonical, rules_of
from ansible_collections.nfstate.migration.plugins.module_utils.templates.nat_nftables import parse_ruleset

from ansible_collections.nfstate.migration.tests.unit.builders import (
    EXPECTED_NFT, EXPECTED_V4, EXPECTED_V6, LISTING, SAVE_V4, SAVE_V6, run_nat_rules_module,
)

IFACES = {"inside": "veth-in", "outside": "veth-out"}


def test_parsed_iptables_both_families(tmp_path):
    result = run_nat_rules_module(tmp_path, implementation="iptables", state="parsed", interfaces=IFACES,
                                  running_config=SAVE_V4 + SAVE_V6)
    assert "failed" not in result, result
    assert rules_of(result["parsed"]) == canonical(EXPECTED_V4 + EXPECTED_V6)
    assert result["changed"] is False and result["unsupported"] == []


def test_parsed_nftables_from_text_and_from_dict(tmp_path):
    for running_config in (json.dumps(LISTING), LISTING):
        result = run_nat_rules_module(tmp_path, implementation="nftables", state="parsed", interfaces=IFACES,
                                      running_config=running_config)
        assert rules_of(result["parsed"]) == EXPECTED_NFT


def test_parsed_unsupported_rule_fails_listing_it_unless_skipped(tmp_path):
    line = "-A NFSTATE-PRE -i veth-out -p tcp -m tcp --dport 22 -m statistic --mode nth --every 2 --packet 0 -j REDIRECT"
    text = SAVE_V4.replace("COMMIT", line + "\nCOMMIT")
    failed = run_nat_rules_module(tmp_path, implementation="iptables", state="parsed", interfaces=IFACES, running_config=text)
    assert failed["failed"] is True
    assert line in failed["msg"] and "match -m statistic" in failed["msg"]
    assert failed["unsupported"] == [{"rule": line, "reason": "match -m statistic"}]
    skipped = run_nat_rules_module(tmp_path, implementation="iptables", state="parsed", interfaces=IFACES,
                                   running_config=text, skip_unsupported=True)
    assert "failed" not in skipped
    assert rules_of(skipped["parsed"]) == EXPECTED_V4
    assert skipped["unsupported"] == [{"rule": line, "reason": "match -m statistic"}]
    assert any(line in json.dumps(warning) for warning in skipped["warnings"]), skipped["warnings"]


def restore_inputs(lines):
    """{program: restore input} of rendered iptables lines (each family after a comment naming its program)."""
    payloads, program = {}, None
    for line in lines:
        if line.startswith("# "):
            program = line[2:].split()[0]
            payloads[program] = ""
        else:
            payloads[program] += line + "\n"
    return payloads


def test_rendered_for_both_implementations_from_a_gzip_document(tmp_path):
    doc = {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "policy": None}]}}}
    doc["ietf-nat:nat"]["instances"]["instance"][0]["policy"] = run_nat_rules_module(
        tmp_path, implementation="nftables", state="parsed", interfaces=IFACES, running_config=LISTING)["parsed"]
    src = tmp_path / "doc.json.gz"
    with gzip.open(str(src), "wt") as handle:
        json.dump(doc, handle)

    ipt = run_nat_rules_module(tmp_path, implementation="iptables", state="rendered", interfaces=IFACES, src=str(src))
    payloads = restore_inputs(ipt["rendered"])
    assert sorted(payloads) == ["ip6tables-restore", "iptables-restore"]
    v4 = [rule for rule in EXPECTED_NFT if rule.family == "ipv4"]
    v6 = [rule for rule in EXPECTED_NFT if rule.family == "ipv6"]
    assert parse_save(payloads["iptables-restore"], "ipv4", IFACES).rules == v4
    assert parse_save(payloads["ip6tables-restore"], "ipv6", IFACES).rules == v6

    nft = run_nat_rules_module(tmp_path, implementation="nftables", state="rendered", interfaces=IFACES, config=doc)
    listing = {"nftables": [
        {"table": {"family": "inet", "name": "nfstate_nat"}},
        {"chain": {"family": "inet", "table": "nfstate_nat", "name": "prerouting", "type": "nat", "hook": "prerouting"}},
        {"chain": {"family": "inet", "table": "nfstate_nat", "name": "postrouting", "type": "nat", "hook": "postrouting"}},
    ] + [{"rule": cmd["add"]["rule"]} for cmd in map(json.loads, nft["rendered"]) if "rule" in cmd.get("add", {})]}
    assert parse_ruleset(listing, IFACES).rules == EXPECTED_NFT


def test_bad_document_names_the_member(tmp_path):
    policy = run_nat_rules_module(tmp_path, implementation="iptables", state="parsed", interfaces=IFACES,
                                  running_config=SAVE_V4)["parsed"]
    del policy[1][NS + "address-family"]
    result = run_nat_rules_module(tmp_path, implementation="iptables", state="rendered", interfaces=IFACES, config=policy)
    assert result["failed"] is True
    assert result["path"] == "policy[1]/" + NS + "address-family"


@pytest.mark.parametrize("interfaces,words", [
    ({"inside": "veth-in", "dmz": "veth-dmz"}, "unknown role 'dmz'"),
    ({"inside": "veth-x", "outside": "veth-x"}, "two roles"),
])
def test_bad_interfaces(tmp_path, interfaces, words):
    result = run_nat_rules_module(tmp_path, implementation="iptables", state="parsed", interfaces=interfaces,
                                  running_config=SAVE_V4)
    assert result["failed"] is True and words in result["msg"]


def test_rendering_a_role_without_a_device_fails(tmp_path):
    result = run_nat_rules_module(tmp_path, implementation="nftables", state="rendered", interfaces={"inside": "veth-in"},
                                  config=run_nat_rules_module(tmp_path, implementation="iptables", state="parsed", interfaces=IFACES,
                                                              running_config=SAVE_V4)["parsed"])
    assert result["failed"] is True and "outside role has no device" in result["msg"]
