"""Parsing and rendering our nftables filter table (libnftables JSON, elements in text)."""

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    Chain, Counter, FilterRule, Firewall, FirewallSet, Limit, Quota, Recent, RecentList, SetElement, SetUpdate,
    canonical, from_document, to_document,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates.filter_nftables import (
    RenderError, duration_text, parse_duration, parse_elements_text, parse_rule, parse_ruleset, render_commands,
    render_elements, rule_exprs,
)

IFACES = {"inside": "in0", "outside": "out0"}

# `nft -j list table inet nfstate_filter` (nftables 1.0.6) of a hand-written edge firewall, with one
# element given a counter and an expiry by hand: note the JSON has no `dynamic` flag and gives
# expiry in whole seconds.
LISTING = {'nftables': [{'metainfo': {'version': '1.0.6', 'release_name': 'Lester Gooch #5', 'json_schema_version': 1}},
                        {'table': {'family': 'inet', 'name': 'nfstate_filter', 'handle': 1}},
                        {'counter': {'family': 'inet', 'name': 'dns', 'table': 'nfstate_filter', 'handle': 3, 'packets': 10, 'bytes': 1000}},
                        {'quota': {'family': 'inet',
                                   'name': 'guest',
                                   'table': 'nfstate_filter',
                                   'handle': 4,
                                   'bytes': 1000000,
                                   'used': 400000,
                                   'inv': False}},
                        {'set': {'family': 'inet',
                                 'name': 'blocklist',
                                 'table': 'nfstate_filter',
                                 'type': 'ipv4_addr',
                                 'handle': 5,
                                 'size': 65535,
                                 'flags': ['timeout'],
                                 'timeout': 3600,
                                 'elem': [{'elem': {'val': '203.0.113.9', 'expires': 3500, 'counter': {'packets': 3, 'bytes': 180}}}],
                                 'stmt': [{'counter': None}]}},
                        {'set': {'family': 'inet',
                                 'name': 'knock1',
                                 'table': 'nfstate_filter',
                                 'type': 'ipv4_addr',
                                 'handle': 6,
                                 'size': 65535,
                                 'flags': ['timeout'],
                                 'timeout': 10,
                                 'elem': [{'elem': {'val': '198.51.100.7', 'expires': 7}}]}},
                        {'chain': {'family': 'inet',
                                   'table': 'nfstate_filter',
                                   'name': 'forward',
                                   'handle': 1,
                                   'type': 'filter',
                                   'hook': 'forward',
                                   'prio': 0,
                                   'policy': 'drop'}},
                        {'chain': {'family': 'inet', 'table': 'nfstate_filter', 'name': 'other', 'handle': 2}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 7,
                                  'expr': [{'match': {'op': 'in', 'left': {'ct': {'key': 'state'}}, 'right': ['established', 'related']}},
                                           {'accept': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 8,
                                  'expr': [{'match': {'op': 'in', 'left': {'ct': {'key': 'state'}}, 'right': 'invalid'}}, {'drop': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 9,
                                  'expr': [{'match': {'op': '==', 'left': {'payload': {'protocol': 'ip', 'field': 'saddr'}}, 'right': '@blocklist'}},
                                           {'drop': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 10,
                                  'expr': [{'match': {'op': '==', 'left': {'meta': {'key': 'iifname'}}, 'right': 'out0'}},
                                           {'match': {'op': '==', 'left': {'payload': {'protocol': 'tcp', 'field': 'dport'}}, 'right': 23}},
                                           {'set': {'op': 'add', 'elem': {'payload': {'protocol': 'ip', 'field': 'saddr'}}, 'set': '@blocklist'}},
                                           {'drop': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 11,
                                  'expr': [{'match': {'op': '==', 'left': {'meta': {'key': 'iifname'}}, 'right': 'out0'}},
                                           {'match': {'op': '==', 'left': {'payload': {'protocol': 'tcp', 'field': 'dport'}}, 'right': 7001}},
                                           {'set': {'op': 'add',
                                                    'elem': {'elem': {'val': {'payload': {'protocol': 'ip', 'field': 'saddr'}}, 'timeout': 10}},
                                                    'set': '@knock1'}},
                                           {'drop': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 12,
                                  'expr': [{'match': {'op': '==', 'left': {'meta': {'key': 'iifname'}}, 'right': 'in0'}},
                                           {'match': {'op': '==', 'left': {'meta': {'key': 'oifname'}}, 'right': 'out0'}},
                                           {'match': {'op': '==',
                                                      'left': {'payload': {'protocol': 'ip', 'field': 'saddr'}},
                                                      'right': {'prefix': {'addr': '192.0.2.0', 'len': 24}}}},
                                           {'quota': 'guest'},
                                           {'accept': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 13,
                                  'expr': [{'match': {'op': '==', 'left': {'meta': {'key': 'iifname'}}, 'right': 'in0'}},
                                           {'match': {'op': '==', 'left': {'meta': {'key': 'oifname'}}, 'right': 'out0'}},
                                           {'match': {'op': '==', 'left': {'payload': {'protocol': 'udp', 'field': 'dport'}}, 'right': 53}},
                                           {'counter': 'dns'},
                                           {'accept': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 14,
                                  'expr': [{'match': {'op': '==',
                                                      'left': {'payload': {'protocol': 'icmpv6', 'field': 'type'}},
                                                      'right': 'echo-request'}},
                                           {'accept': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 15,
                                  'expr': [{'match': {'op': '==',
                                                      'left': {'payload': {'protocol': 'icmp', 'field': 'type'}},
                                                      'right': 'echo-request'}},
                                           {'limit': {'rate': 10, 'burst': 5, 'per': 'second'}},
                                           {'accept': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 16,
                                  'expr': [{'ct count': {'val': 10, 'inv': True}}, {'drop': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 18,
                                  'expr': [{'match': {'op': '==',
                                                      'left': {'payload': {'protocol': 'tcp', 'field': 'dport'}},
                                                      'right': {'set': [80, 443]}}},
                                           {'accept': None}]}},
                        {'rule': {'family': 'inet',
                                  'table': 'nfstate_filter',
                                  'chain': 'forward',
                                  'handle': 19,
                                  'expr': [{'counter': {'packets': 0, 'bytes': 0}}, {'jump': {'target': 'other'}}]}}]}

# `nft list table inet nfstate_filter` of the same table a moment later.
TEXT = (
    'table inet nfstate_filter {\n'
    '\tcounter dns {\n'
    '\t\tpackets 10 bytes 1000\n'
    '\t}\n'
    '\n'
    '\tquota guest {\n'
    '\t\t1000000 bytes used 400000 bytes\n'
    '\t}\n'
    '\n'
    '\tset blocklist {\n'
    '\t\ttype ipv4_addr\n'
    '\t\tsize 65535\n'
    '\t\tflags dynamic,timeout\n'
    '\t\tcounter\n'
    '\t\ttimeout 1h\n'
    '\t\telements = { 203.0.113.9 counter packets 3 bytes 180 expires 58m20s240ms }\n'
    '\t}\n'
    '\n'
    '\tset knock1 {\n'
    '\t\ttype ipv4_addr\n'
    '\t\tsize 65535\n'
    '\t\tflags dynamic,timeout\n'
    '\t\ttimeout 10s\n'
    '\t\telements = { 198.51.100.7 expires 7s992ms }\n'
    '\t}\n'
    '\n'
    '\tchain forward {\n'
    '\t\ttype filter hook forward priority filter; policy drop;\n'
    '\t\tct state established,related accept\n'
    '\t\tct state invalid drop\n'
    '\t\tip saddr @blocklist drop\n'
    '\t\tiifname "out0" tcp dport 23 add @blocklist { ip saddr } drop\n'
    '\t\tiifname "out0" tcp dport 7001 add @knock1 { ip saddr timeout 10s } drop\n'
    '\t\tiifname "in0" oifname "out0" ip saddr 192.0.2.0/24 quota name "guest" accept\n'
    '\t\tiifname "in0" oifname "out0" udp dport 53 counter name "dns" accept\n'
    '\t\ticmpv6 type echo-request accept\n'
    '\t\ticmp type echo-request limit rate 10/second accept\n'
    '\t\tct count over 10 drop\n'
    '\t\ttcp dport { 80, 443 } accept\n'
    '\t\tcounter packets 0 bytes 0 jump other\n'
    '\t}\n'
    '\n'
    '\tchain other {\n'
    '\t}\n'
    '}\n'
)


def test_parse_listing_reads_rules_sets_counters_quotas():
    found = parse_ruleset(LISTING, IFACES, TEXT, skip_unsupported=True)
    firewall = found.firewall
    assert found.exists
    assert firewall.chains == (Chain("forward", "drop"),)
    assert firewall.rules == (
        FilterRule(ct_states=("established", "related"), action="accept"),
        FilterRule(ct_states=("invalid",), action="drop"),
        FilterRule(family="ipv4", src_set="blocklist", action="drop"),
        FilterRule(family="ipv4", in_role="outside", proto=6, dport=(23, 23), set_updates=(SetUpdate("blocklist"),),
                   action="drop"),
        FilterRule(family="ipv4", in_role="outside", proto=6, dport=(7001, 7001),
                   set_updates=(SetUpdate("knock1", timeout=10),), action="drop"),
        FilterRule(family="ipv4", in_role="inside", out_role="outside", src="192.0.2.0/24", quota="guest", action="accept"),
        FilterRule(in_role="inside", out_role="outside", proto=17, dport=(53, 53), counter="dns", action="accept"),
        FilterRule(family="ipv4", proto=1, icmp_type=8, limit=Limit(10, "second", 5), action="accept"),
        FilterRule(family="ipv6", proto=58, icmp_type=128, action="accept"),
    )
    blocklist, knock1 = firewall.sets
    assert blocklist == FirewallSet("blocklist", "ipv4", 3600, True, (SetElement("203.0.113.9", None, 3500.24, 3, 180),))
    assert knock1 == FirewallSet("knock1", "ipv4", 10, False, (SetElement("198.51.100.7", None, 7.992),))
    assert firewall.counters == (Counter("dns", 10, 1000),)
    assert firewall.quotas == (Quota("guest", 1000000, 400000, "until"),)
    assert [n.reason for n in firewall.not_carried] == [
        "a rate limit's token bucket has no readable live value; it is re-learned on the target"]


def test_what_the_model_cannot_express_is_listed_with_the_reason():
    unsupported = parse_ruleset(LISTING, IFACES, TEXT, skip_unsupported=True).unsupported
    reasons = dict((u["item"].split(":")[0], u["reason"]) for u in unsupported)
    assert "ct count" in reasons["rule forward 16"]
    assert "one port or one range" in reasons["rule forward 18"]
    assert "anonymous counter" in reasons["rule forward 19"]
    assert "only base filter chains" in reasons["chain other"]


def test_by_default_what_the_model_cannot_express_stops_the_gather_and_is_named():
    from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import Unsupported
    with pytest.raises(Unsupported) as info:
        parse_ruleset(LISTING, IFACES, TEXT)
    assert "rule forward 16" in info.value.item and "chain other" in info.value.item
    assert "ct count" in info.value.reason


def test_without_the_text_the_json_elements_are_used():
    blocklist = parse_ruleset(LISTING, IFACES, skip_unsupported=True).firewall.sets[0]
    assert blocklist.elements == (SetElement("203.0.113.9", None, 3500.0, 3, 180),)


def test_an_interface_without_role_is_not_guessed():
    found = parse_ruleset(LISTING, {"inside": "in0"}, TEXT, skip_unsupported=True)
    assert any("'out0' has no role" in u["reason"] for u in found.unsupported)
    assert all(r.in_role != "outside" for r in found.firewall.rules)


@pytest.mark.parametrize("text, seconds", [
    ("58m20s240ms", 3500.24), ("1h", 3600.0), ("7s996ms", 7.996), ("1d2h", 93600.0), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(duration_text(seconds)) == seconds


def test_duration_refuses_garbage():
    with pytest.raises(ValueError):
        parse_duration("1h garbage")


def test_element_text_over_several_lines_and_ipv6():
    text = (
        'table inet nfstate_filter {\n'
        '\tset v6 {\n'
        '\t\ttype ipv6_addr\n'
        '\t\tflags dynamic,timeout\n'
        '\t\tcounter\n'
        '\t\ttimeout 1h\n'
        '\t\telements = { 2001:db8::1 counter packets 1 bytes 84 expires 59m, 2001:db8::2 counter packets 0 bytes 0 timeout 2h expires 1h30m,\n'
        '\t\t\t     2001:db8::3 counter packets 5 bytes 500 expires 1s }\n'
        '\t}\n'
        '}\n'
    )
    elements = parse_elements_text(text)["v6"]
    assert elements["2001:db8::2"] == SetElement("2001:db8::2", 7200, 5400.0, 0, 0)
    assert elements["2001:db8::3"] == SetElement("2001:db8::3", None, 1.0, 5, 500)
    assert len(elements) == 3


def test_render_commands_and_elements_reload_to_the_same_firewall():
    firewall = parse_ruleset(LISTING, IFACES, TEXT, skip_unsupported=True).firewall
    commands = render_commands(firewall, IFACES)["nftables"]
    assert commands[1:4] == [{"add": {"table": {"family": "inet", "name": "nfstate_filter"}}},
                             {"delete": {"table": {"family": "inet", "name": "nfstate_filter"}}},
                             {"add": {"table": {"family": "inet", "name": "nfstate_filter"}}}]
    # What nft lists back is what it was given (plus handles): feed the commands as a listing.
    listing = {"nftables": [{kind: obj} for c in commands[4:] for kind, obj in c["add"].items()]}
    script = render_elements(firewall)
    assert script.splitlines() == [
        "add element inet nfstate_filter blocklist { 203.0.113.9 counter packets 3 bytes 180 expires 3500s240ms }",
        "add element inet nfstate_filter knock1 { 198.51.100.7 expires 7s992ms }",
    ]
    text = "table inet nfstate_filter {\n" + "".join(
        "\tset %s {\n\t\telements = { %s\n\t}\n" % (line.split()[4], line.split("{ ", 1)[1]) for line in script.splitlines()) + "}\n"
    again = parse_ruleset(listing, IFACES, text).firewall
    assert again == firewall._replace(not_carried=again.not_carried)


def test_render_refuses_recent_lists_and_names_the_rule():
    firewall = Firewall(chains=(Chain("forward"),),
                        rules=(FilterRule(family="ipv4", proto=6, dport=(22, 22), recent=Recent("ssh", "check", seconds=60)),),
                        recent_lists=(RecentList("ssh"),))
    with pytest.raises(RenderError, match="recent lists ssh"):
        render_commands(firewall, IFACES)
    with pytest.raises(RenderError, match="recent list ssh: nftables has no recent lists"):
        rule_exprs(firewall.rules[0], IFACES)


def test_render_needs_a_device_for_each_role():
    firewall = Firewall(chains=(Chain("forward"),), rules=(FilterRule(in_role="inside"),))
    with pytest.raises(RenderError, match="inside role has no device"):
        render_commands(firewall, {"outside": "out0"})


def test_an_element_whose_lifetime_is_longer_than_the_timeout_gets_a_longer_timeout():
    elements = (SetElement("192.0.2.1", None, 30.5), SetElement("192.0.2.2", None, 0.0))
    firewall = Firewall(sets=(FirewallSet("s", "ipv4", 10, False, elements),))
    assert render_elements(firewall) == "add element inet nfstate_filter s { 192.0.2.1 timeout 31s expires 30s500ms }\n"


@pytest.mark.parametrize("exprs, reason", [
    ([{"jump": {"target": "x"}}], "statement jump"),
    ([{"limit": {"rate": 1, "per": "second", "inv": True}}], "without `over`"),
    ([{"quota": {"val": 10, "val_unit": "mbytes"}}], "anonymous quota"),
    ([{"reject": {"type": "tcp reset"}}], "default reject"),
    ([{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@s"}}], "operator '!='"),
    ([{"log": {"prefix": "x"}}], "statement log"),
    ([{"counter": "c"}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}], "before a match"),
])
def test_parse_rule_names_what_it_cannot_read(exprs, reason):
    from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import Unsupported
    with pytest.raises(Unsupported) as info:
        parse_rule(exprs, "forward", {})
    assert reason in info.value.reason


def test_document_of_a_gathered_table_reads_back():
    firewall = parse_ruleset(LISTING, IFACES, TEXT, skip_unsupported=True).firewall
    assert from_document(to_document(firewall)) == canonical(firewall)
