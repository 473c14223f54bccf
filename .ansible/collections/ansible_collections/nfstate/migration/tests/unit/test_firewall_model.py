"""The firewall model: plain data <-> RFC 7951 document, strict checks, and the YANG validator."""

import copy

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    Chain, Counter, FilterRule, Firewall, FirewallSet, Limit, ModelError, NotCarried, Quota, Recent, RecentEntry,
    RecentList, SetElement, SetUpdate, canonical, firewall_problems, from_document, recent_as_sets, to_document, without_state,
)

ROOT = "ietf-access-control-list:acls"
NS = "nfstate-firewall:"


def edge_firewall():
    """An edge firewall with every kind of rule and state the model holds."""
    return canonical(Firewall(
        chains=(Chain("forward", "drop"), Chain("input", "accept")),
        rules=(
            FilterRule(ct_states=("established", "related"), action="accept"),
            FilterRule(ct_states=("invalid",), action="drop"),
            FilterRule(family="ipv4", src_set="blocklist", action="drop"),
            FilterRule(family="ipv4", in_role="outside", proto=6, dport=(23, 23),
                       set_updates=(SetUpdate("blocklist"),), action="drop"),
            FilterRule(family="ipv4", in_role="outside", proto=6, dport=(7001, 7001),
                       set_updates=(SetUpdate("knock1", timeout=10),), action="drop"),
            FilterRule(family="ipv4", in_role="outside", proto=6, dport=(7002, 7002), src_set="knock1",
                       set_updates=(SetUpdate("knock2", op="update"),), action="drop"),
            FilterRule(family="ipv4", in_role="outside", proto=6, dport=(22, 22), src_set="knock2",
                       ct_states=("new",), action="accept"),
            FilterRule(family="ipv4", in_role="inside", out_role="outside", src="192.0.2.0/24", quota="guest",
                       action="accept"),
            FilterRule(in_role="inside", out_role="outside", proto=17, dport=(53, 53), counter="dns", action="accept"),
            FilterRule(family="ipv6", proto=58, icmp_type=128, action="accept"),
            FilterRule(family="ipv4", proto=1, icmp_type=8, icmp_code=0, limit=Limit(10, "second", 5), action="accept"),
            FilterRule(chain="input", proto=6, sport=(1000, 2000), action="reject"),
        ),
        sets=(FirewallSet("blocklist", "ipv4", 3600, True, (SetElement("203.0.113.9", None, 3500.25, 3, 180),)),
              FirewallSet("knock1", "ipv4", 10),
              FirewallSet("knock2", "ipv4", 10, False, (SetElement("198.51.100.7", None, 8.0),))),
        counters=(Counter("dns", 10, 1000),),
        quotas=(Quota("guest", 1000000, 400000),),
    ))


def test_document_round_trip_keeps_everything():
    firewall = edge_firewall()._replace(
        recent_lists=(RecentList("k1", (RecentEntry("198.51.100.9", 64, (0.5, 3.25)),)),),
        not_carried=(NotCarried("rule 11: limit rate 10/second", "token bucket"),),
        rules=edge_firewall().rules + (FilterRule(family="ipv4", proto=6, dport=(8001, 8001),
                                                  recent=Recent("k1", "check", seconds=30, hitcount=2)),))
    doc = to_document(firewall)
    assert from_document(doc) == canonical(firewall)


def test_document_shape_uses_the_standard_where_it_can():
    doc = to_document(edge_firewall())
    acls = doc[ROOT]
    forward = acls["acl"][0]
    assert forward["name"] == "forward" and forward[NS + "policy"] == "drop"
    assert forward["type"] == "ietf-access-control-list:mixed-eth-ipv4-ipv6-acl-type"
    aces = forward["aces"]["ace"]
    assert [a[NS + "rule-order"] for a in aces] == list(range(1, len(aces) + 1))
    trap = aces[3]
    assert trap["matches"]["tcp"] == {"destination-port": {"port": 23}}
    assert trap["matches"]["ipv4"] == {"protocol": 6}
    assert trap["actions"] == {"forwarding": "ietf-access-control-list:drop",
                               NS + "set-update": [{"set": "blocklist", "operation": "add", "side": "source"}]}
    both = aces[0]
    assert both["matches"] == {NS + "connection-state": ["established", "related"]}
    element = acls[NS + "sets"]["set"][0]["element"][0]
    assert element == {"address": "203.0.113.9", "remaining": "3500.250", "packets": "3", "bytes": "180"}
    assert acls[NS + "quotas"]["quota"] == [{"name": "guest", "limit": "1000000", "used": "400000", "mode": "until"}]


def test_validator_accepts_the_documents():
    yang_model = pytest.importorskip("ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    firewall = edge_firewall()._replace(
        recent_lists=(RecentList("k1", (RecentEntry("198.51.100.9", 64, (0.5,)),)),),
        not_carried=(NotCarried("x", "y"),))
    assert yang_model.validate(to_document(firewall)) == []


def test_validator_refuses_a_rule_naming_a_missing_set():
    yang_model = pytest.importorskip("ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    doc = to_document(edge_firewall())
    doc[ROOT]["acl"][0]["aces"]["ace"][2]["matches"][NS + "source-set"] = "nowhere"
    errors = yang_model.validate(doc)
    assert errors and errors[0][0].endswith("matches/nfstate-firewall:source-set")


@pytest.mark.parametrize("edit, path, message", [
    (lambda d: d[ROOT]["acl"][0]["aces"]["ace"][3]["matches"].update({"bogus": 1}),
     "/ietf-access-control-list:acls/acl[1]/aces/ace[4]/matches", "bogus"),
    (lambda d: d[ROOT]["acl"][0]["aces"]["ace"][3]["matches"]["ipv4"].update({"source-ipv4-network": "2001:db8::/32"}),
     "ipv4/source-ipv4-network", "not an ipv4 prefix"),
    (lambda d: d[ROOT]["acl"][0]["aces"]["ace"][0]["actions"].update({"forwarding": "acl:jump"}),
     "ace[1]/actions/forwarding", "is not one of"),
    (lambda d: d[ROOT][NS + "sets"]["set"][0]["element"][0].update({"remaining": "-1"}),
     "element[1]/remaining", "not a duration"),
    (lambda d: d[ROOT][NS + "sets"]["set"].pop(0),
     "/ietf-access-control-list:acls", "set blocklist does not exist"),
    (lambda d: d[ROOT][NS + "quotas"]["quota"][0].update({"mode": "sometimes"}),
     "quota[1]/mode", "not one of"),
])
def test_from_document_names_what_is_wrong(edit, path, message):
    doc = copy.deepcopy(to_document(edge_firewall()))
    edit(doc)
    with pytest.raises(ModelError) as info:
        from_document(doc)
    assert path in info.value.path and message in info.value.message


@pytest.mark.parametrize("rule, problem", [
    (FilterRule(src="192.0.2.0/24"), "needs an address family"),
    (FilterRule(family="ipv4", dport=(1, 2)), "needs protocol tcp or udp"),
    (FilterRule(family="ipv4", proto=47), None),
    (FilterRule(proto=47), "only tcp and udp"),
    (FilterRule(family="ipv6", proto=1, icmp_type=8), "ICMP type needs"),
    (FilterRule(ct_states=("related", "established")), "order"),
    (FilterRule(chain="input", out_role="outside"), "cannot match the outgoing"),
    (FilterRule(family="ipv4", src="192.0.2.1/24"), "192.0.2.1/24"),
])
def test_rule_problems(rule, problem):
    firewall = Firewall(chains=(Chain("forward"), Chain("input")), rules=(rule,))
    problems = firewall_problems(firewall)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_a_set_of_the_other_family_is_refused():
    firewall = Firewall(chains=(Chain("forward"),), rules=(FilterRule(family="ipv6", src_set="s"),),
                        sets=(FirewallSet("s", "ipv4"),))
    assert any("holds ipv4 addresses" in p for p in firewall_problems(firewall))


def test_canonical_order_puts_ipv4_before_ipv6_between_rules_for_both():
    v6 = FilterRule(family="ipv6", proto=58, icmp_type=128)
    v4 = FilterRule(family="ipv4", proto=1, icmp_type=8)
    both = FilterRule(ct_states=("established",))
    firewall = Firewall(chains=(Chain("forward"),), rules=(v6, v4, both, v6._replace(action="drop"), v4._replace(action="drop")))
    assert canonical(firewall).rules == (v4, v6, both, v4._replace(action="drop"), v6._replace(action="drop"))


def test_without_state_keeps_the_configuration_only():
    bare = without_state(edge_firewall())
    assert all(not s.elements for s in bare.sets) and bare.quotas[0].used == 0 and bare.counters[0].packets == 0
    assert bare.rules == edge_firewall().rules


def _recent_firewall(check=None, entries=()):
    check = check or Recent("knock", "check", seconds=60)
    return canonical(Firewall(
        chains=(Chain("forward", "drop"),),
        rules=(FilterRule(family="ipv4", proto=6, dport=(7101, 7101), recent=Recent("knock", "set"), action="drop"),
               FilterRule(family="ipv4", proto=6, dport=(2222, 2222), recent=check, action="accept")),
        recent_lists=(RecentList("knock", entries),)))


def test_recent_lists_become_sets_with_the_window_as_timeout():
    entries = (RecentEntry("198.51.100.7", 64, (12.5, 40.0)), RecentEntry("198.51.100.8", 64, (75.0,)),
               RecentEntry("2001:db8::8", 64, (1.0,)))
    turned = recent_as_sets(_recent_firewall(entries=entries))
    assert turned.recent_lists == ()
    assert turned.rules == (
        FilterRule(family="ipv4", proto=6, dport=(7101, 7101), set_updates=(SetUpdate("knock", "update"),), action="drop"),
        FilterRule(family="ipv4", proto=6, dport=(2222, 2222), src_set="knock", action="accept"))
    # The newest hit counts; an address whose window has passed is gone, one of the other family too.
    assert turned.sets == (FirewallSet("knock", "ipv4", 60, False, (SetElement("198.51.100.7", None, 47.5),)),)
    assert [n.item for n in turned.not_carried] == ["recent list knock: 2001:db8::8", "recent list knock"]
    assert firewall_problems(turned) == []


@pytest.mark.parametrize("check, reason", [
    (Recent("knock", "check", seconds=60, hitcount=2), "needs 2 hits"),
    (Recent("knock", "remove"), "removes addresses"),
])
def test_recent_lists_that_cannot_become_sets_are_named(check, reason):
    from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import Unsupported
    with pytest.raises(Unsupported) as info:
        recent_as_sets(_recent_firewall(check))
    assert info.value.item == "recent list knock" and reason in info.value.reason


def test_recent_lists_checked_over_two_windows_cannot_become_one_set():
    from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import Unsupported
    firewall = _recent_firewall()
    firewall = firewall._replace(rules=firewall.rules + (
        FilterRule(family="ipv4", proto=6, dport=(2223, 2223), recent=Recent("knock", "check", seconds=30)),))
    with pytest.raises(Unsupported, match="different windows"):
        recent_as_sets(firewall)
