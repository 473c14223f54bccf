"""The NAT rule representation <-> ietf-nat policies (yang/nfstate-nat-rules.yang)."""

import copy
import json
import os
import sys

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import (
    NS, ModelError, NatRule, canonical, from_policy, merge_port_ranges, policies_of,
    rule_problems, rules_of, to_policy,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RULES = [
    NatRule("dnat", "ipv4", "outside", None, None, "203.0.113.1/32", 6, ((8080, 8090),),
            ("192.0.2.10", "192.0.2.11"), (80, 90)),
    NatRule("dnat", "ipv6", None, None, "2001:db8:9::/48", None, 17, ((53, 53),),
            ("2001:db8::53", "2001:db8::53"), None),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.0/24", None, 6, ((80, 80), (443, 443)),
            ("203.0.113.10", "203.0.113.12"), (1024, 2000)),
    NatRule("masquerade", "ipv4", None, "outside", "192.0.2.5/32", "198.51.100.0/24", 17,
            ((53, 53), (1000, 2000)), None, (3000, 4000)),
    NatRule("snat", "ipv4", None, None, None, None, 47, (), ("203.0.113.1", "203.0.113.1"), None),
    NatRule("snat", "ipv6", None, "outside", "2001:db8:1::/64", None, 6, (),
            ("2001:db8::10", "2001:db8::12"), (1024, 2000)),
    NatRule("masquerade", "ipv6", None, "inside", None, None, None, (), None, None),
]


def yang_model():
    yangson = pytest.importorskip("yangson")
    # pyang installs the IETF modules under its environment's share/ directory.
    ietf = os.path.join(sys.prefix, "share", "yang", "modules", "ietf")
    if not os.path.exists(os.path.join(ietf, "ietf-nat.yang")):
        pytest.skip("pyang's YANG modules not found")

    def module(name, revision, ns, conformance="implement", features=()):
        entry = {"name": name, "revision": revision, "namespace": ns, "conformance-type": conformance}
        if features:
            entry["feature"] = list(features)
        return entry

    library = {"ietf-yang-library:modules-state": {"module-set-id": "nat-rules", "module": [
        module("ietf-nat", "2019-01-10", "urn:ietf:params:xml:ns:yang:ietf-nat",
               features=("napt44", "dst-nat", "basic-nat44")),
        module("ietf-inet-types", "2013-07-15", "urn:ietf:params:xml:ns:yang:ietf-inet-types", "import"),
        module("ietf-yang-types", "2013-07-15", "urn:ietf:params:xml:ns:yang:ietf-yang-types", "import"),
        module("ietf-interfaces", "2018-02-20", "urn:ietf:params:xml:ns:yang:ietf-interfaces"),
        module("nfstate-nat-rules", "2026-11-26", "urn:nfstate:yang:nfstate-nat-rules"),
    ]}}
    return yangson.DataModel(json.dumps(library), [os.path.join(REPO, "yang"), ietf])


def document(policies):
    return {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "policy": policies}]}}}


def test_round_trip_keeps_every_field_and_the_order():
    assert from_policy(to_policy(RULES)) == RULES


def test_policies_use_ietf_nat_places():
    policies = to_policy(RULES)
    dnat, snat, masq, snat6 = policies[0], policies[2], policies[3], policies[5]
    assert dnat["dst-nat-enable"] is True
    # The internal range 192.0.2.10-11 is one /31; the external destination is the matched one.
    assert dnat["dst-ip-address-pool"] == [
        {"pool-id": 1, "dst-in-ip-pool": "192.0.2.10/31", "dst-out-ip-pool": "203.0.113.1/32"}]
    assert dnat[NS + "translated-port"] == {"start-port-number": 80, "end-port-number": 90}
    assert dnat[NS + "in-interface"] == "outside"
    # 203.0.113.10-12 is not a prefix: it is covered by a /31 and a /32.
    assert snat["external-ip-address-pool"] == [
        {"pool-id": 1, "external-ip-pool": "203.0.113.10/31"},
        {"pool-id": 2, "external-ip-pool": "203.0.113.12/32"}]
    assert snat["port-set-restrict"] == {"start-port-number": 1024, "end-port-number": 2000}
    assert snat["subscriber-match"] == [{"match-id": 1, "subnet": "192.0.2.0/24"}]
    assert snat["transport-protocols"] == [{"protocol-id": 6, "protocol-name": "TCP"}]
    assert snat[NS + "destination-port"] == [{"start-port-number": 80}, {"start-port-number": 443}]
    assert masq[NS + "masquerade"] is True and "external-ip-address-pool" not in masq
    assert masq[NS + "destination-prefix"] == "198.51.100.0/24"
    assert "external-ip-address-pool" not in snat6
    assert snat6[NS + "external-ipv6-address-pool"] == [
        {"pool-id": 1, "external-ipv6-pool": "2001:db8::10/127"},
        {"pool-id": 2, "external-ipv6-pool": "2001:db8::12/128"}]
    assert [p["id"] for p in to_policy(RULES)] == [p[NS + "rule-order"] for p in to_policy(RULES)]


def test_dnat_to_any_destination_uses_the_any_prefix():
    policy = to_policy([RULES[1]])[0]
    assert policy["dst-ip-address-pool"][0]["dst-out-ip-pool"] == "::/0"
    assert from_policy([policy])[0].dst is None


def test_document_validates_against_the_yang_modules():
    model = yang_model()
    model.from_raw(document(to_policy(RULES))).validate()


@pytest.mark.parametrize("index,key,value", [
    (1, NS + "out-interface", "outside"),     # destination NAT after routing
    (2, NS + "in-interface", "inside"),       # source NAT before routing
    (2, NS + "masquerade", True),             # masquerade with a pool
    (2, NS + "out-interface", "eth0"),        # a device name, not a role
])
def test_yang_rejects_what_the_model_rejects(index, key, value):
    model = yang_model()
    policies = to_policy(RULES)
    policies[index][key] = value
    with pytest.raises(Exception):
        model.from_raw(document(policies)).validate()
    with pytest.raises(ModelError):
        from_policy(policies)


def test_order_comes_from_rule_order_not_list_position():
    policies = to_policy(RULES[2:5])
    assert from_policy(list(reversed(policies))) == RULES[2:5]


def test_canonical_order_puts_dnat_first_and_ipv4_before_ipv6_keeping_the_rest():
    shuffled = [RULES[6], RULES[2], RULES[1], RULES[5], RULES[3], RULES[0], RULES[4]]
    assert canonical(shuffled) == [RULES[0], RULES[1], RULES[2], RULES[3], RULES[4], RULES[6], RULES[5]]


def test_rules_of_a_document_or_a_policy_list():
    policies = to_policy(RULES)
    assert rules_of(document(policies)) == canonical(RULES)
    assert rules_of(policies) == canonical(RULES)
    assert policies_of(document(policies))[1] == "/ietf-nat:nat/instances/instance[0]/policy"


def test_port_ranges_are_merged_into_one_spelling():
    assert merge_port_ranges([(443, 443), (80, 80), (81, 90), (85, 100)]) == ((80, 100), (443, 443))


def _broken(index, change):
    policies = to_policy(RULES)
    change(policies[index])
    return policies


@pytest.mark.parametrize("index,change,path,words", [
    (2, lambda p: p.pop(NS + "address-family"), "policy[2]/" + NS + "address-family", "missing"),
    (2, lambda p: p["external-ip-address-pool"].append({"pool-id": 3, "external-ip-pool": "203.0.113.20/32"}),
     "policy[2]/external-ip-address-pool[2]/external-ip-pool", "contiguous"),
    (2, lambda p: p.update({"timers": {"udp-timeout": 30}}), "policy[2]/timers", "not supported"),
    (2, lambda p: p.update({"port-set-restrict": {"psid-len": 4, "psid": 1}}),
     "policy[2]/port-set-restrict/psid-len", "port-range"),
    (2, lambda p: p["subscriber-match"][0].update({"subnet": "192.0.2.1/24"}),
     "policy[2]/subscriber-match[0]/subnet", "host bits"),
    (0, lambda p: p["dst-ip-address-pool"].append(
        {"pool-id": 2, "dst-in-ip-pool": "192.0.2.12/32", "dst-out-ip-pool": "203.0.113.2/32"}),
     "policy[0]/dst-ip-address-pool", "same dst-out-ip-pool"),
    (0, lambda p: p.update({"port-set-restrict": {"start-port-number": 1}}),
     "policy[0]/port-set-restrict", "not allowed in a destination NAT"),
    (5, lambda p: p.update({"external-ip-address-pool": [{"pool-id": 1, "external-ip-pool": "203.0.113.1/32"}]}),
     "policy[5]/external-ip-address-pool", "IPv4 only"),
    (4, lambda p: p.update({"transport-protocols": [{"protocol-id": 6}, {"protocol-id": 6}]}),
     "policy[4]/transport-protocols[1]/protocol-id", "listed twice"),
    (4, lambda p: p.update({NS + "destination-port": [{"start-port-number": 80}]}),
     "policy[4]", "need a protocol with ports"),
    (3, lambda p: p[NS + "destination-port"][0].update({"end-port-number": 1}),
     "policy[3]/" + NS + "destination-port[0]/end-port-number", "smaller"),
    (4, lambda p: p.update({"id": "1"}), "policy[4]/id", "integer"),
])
def test_errors_name_the_offending_member(index, change, path, words):
    with pytest.raises(ModelError) as err:
        from_policy(_broken(index, change))
    assert err.value.path == path
    assert words in str(err.value)


def test_repeated_ids_are_an_error():
    policies = to_policy(RULES[:2])
    policies[1]["id"] = 1
    with pytest.raises(ModelError, match="repeats"):
        from_policy(policies)


def test_document_must_hold_one_instance():
    doc = document([])
    doc["ietf-nat:nat"]["instances"]["instance"].append({"id": 2})
    with pytest.raises(ModelError, match="exactly one"):
        rules_of(doc)


@pytest.mark.parametrize("rule,words", [
    (RULES[2]._replace(in_role="inside"), "incoming interface"),
    (RULES[0]._replace(out_role="inside"), "outgoing interface"),
    (RULES[3]._replace(to_addresses=("203.0.113.1", "203.0.113.1")), "masquerade"),
    (RULES[2]._replace(to_addresses=None), "needs an address range"),
    (RULES[2]._replace(to_addresses=("203.0.113.12", "203.0.113.10")), "reversed"),
    (RULES[2]._replace(src="2001:db8::/32"), "not an ipv4 prefix"),
    (RULES[4]._replace(to_ports=(1, 2)), "needs a protocol with ports"),
    (RULES[2]._replace(dports=((90, 95), (80, 91))), "sorted"),
])
def test_rule_problems(rule, words):
    assert any(words in problem for problem in rule_problems(rule))
    with pytest.raises(ValueError):
        to_policy([rule])


def test_to_policy_does_not_change_its_input():
    rules = copy.deepcopy(RULES)
    to_policy(rules)
    assert rules == RULES
