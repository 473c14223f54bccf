"""Property tests: any firewall both implementations can hold survives the document and both renderers."""

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    Chain, Counter, FilterRule, Firewall, FirewallSet, Limit, Quota, SetElement, SetUpdate, canonical,
    firewall_problems, from_document, to_document,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_nftables as nft

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

IFACES = {"inside": "lan0", "outside": "wan0"}
SETS = (FirewallSet("v4a", "ipv4", 3600, True), FirewallSet("v4b", "ipv4", 60), FirewallSet("v6a", "ipv6", 600))
PREFIXES = {"ipv4": ["192.0.2.0/24", "198.51.100.7/32", "203.0.113.128/25"], "ipv6": ["2001:db8::/32", "2001:db8:1::5/128"]}

ports = st.one_of(st.none(), st.integers(0, 65535).map(lambda p: (p, p)),
                  st.tuples(st.integers(0, 65534), st.integers(1, 1000)).map(lambda t: (t[0], min(65535, t[0] + t[1]))))
roles = st.sampled_from([None, "inside", "outside"])
states = st.lists(st.sampled_from(["new", "established", "related", "invalid", "untracked"]), unique=True).map(
    lambda s: tuple(x for x in ("new", "established", "related", "invalid", "untracked") if x in s))


@st.composite
def rule(draw):
    family = draw(st.sampled_from([None, "ipv4", "ipv6"]))
    fields = {"family": family, "in_role": draw(roles), "out_role": draw(roles), "ct_states": draw(states),
              "action": draw(st.sampled_from(["accept", "drop", "reject", "continue"]))}
    kind = draw(st.sampled_from(["none", "ports", "icmp", "other"]))
    if kind == "ports":
        fields.update(proto=draw(st.sampled_from([6, 17])), sport=draw(ports), dport=draw(ports))
    elif kind == "icmp" and family is not None:
        fields.update(proto=1 if family == "ipv4" else 58, icmp_type=draw(st.integers(0, 255)))
        fields["icmp_code"] = draw(st.one_of(st.none(), st.integers(0, 255)))
    elif kind == "other" and family is not None:
        fields["proto"] = draw(st.sampled_from([47, 50, 132]))
    if family is not None:
        fields["src"] = draw(st.one_of(st.none(), st.sampled_from(PREFIXES[family])))
        fields["dst"] = draw(st.one_of(st.none(), st.sampled_from(PREFIXES[family])))
        names = [s.name for s in SETS if s.family == family]
        fields["src_set"] = draw(st.one_of(st.none(), st.sampled_from(names)))
        fields["dst_set"] = draw(st.one_of(st.none(), st.sampled_from(names)))
        updates = draw(st.lists(st.sampled_from(names), unique=True, max_size=2))
        fields["set_updates"] = tuple(SetUpdate(n, draw(st.sampled_from(["add", "update"])), draw(st.sampled_from(["source", "destination"])),
                                                draw(st.one_of(st.none(), st.integers(1, 86400)))) for n in updates)
    if not fields.get("set_updates"):
        limits = st.builds(Limit, st.integers(1, 1000), st.sampled_from(["second", "minute", "hour", "day"]), st.integers(1, 100))
        fields["limit"] = draw(st.one_of(st.none(), limits))
    return FilterRule(**fields)


@st.composite
def firewall(draw):
    rules = list(draw(st.lists(rule(), max_size=8)))
    counters, quotas = [], []
    for i, item in enumerate(rules):
        if draw(st.booleans()) and draw(st.booleans()):
            # Each named object in exactly one rule: iptables keeps them in rules.
            if item.family is not None and not item.set_updates and draw(st.booleans()):
                quotas.append(Quota("q%d" % i, draw(st.integers(1, 10 ** 12)), 0))
                quotas[-1] = quotas[-1]._replace(used=draw(st.integers(0, quotas[-1].limit)))
                rules[i] = item._replace(quota="q%d" % i)
            else:
                counters.append(Counter("c%d" % i, draw(st.integers(0, 10 ** 9)), draw(st.integers(0, 10 ** 12))))
                rules[i] = item._replace(counter="c%d" % i)
    sets = []
    for fwset in SETS:
        addresses = draw(st.lists(st.integers(1, 200), unique=True, max_size=4))
        prefix = "192.0.2." if fwset.family == "ipv4" else "2001:db8::"
        elements = tuple(SetElement(prefix + (str(a) if fwset.family == "ipv4" else "%x" % a), None,
                                    float(draw(st.integers(1, fwset.timeout))),
                                    *((draw(st.integers(0, 1000)), draw(st.integers(0, 10 ** 6))) if fwset.counters else (None, None)))
                         for a in addresses)
        sets.append(fwset._replace(elements=elements))
    result = canonical(Firewall((Chain("forward", draw(st.sampled_from(["accept", "drop"]))),), tuple(rules), tuple(sets),
                                tuple(counters), tuple(quotas)))
    assert firewall_problems(result) == []
    return result


def _split_like_iptables(fw):
    """iptables reads a rule that only adds to sets followed by a rule with the same matches as one
    rule; such firewalls are equivalent to another document, so they are not compared here."""
    rules = list(fw.rules)
    for first, second in zip(rules, rules[1:]):
        if first.action == "continue" and first.set_updates and ipt._same_matches(first, second):
            return True
    return False


SETTINGS = dict(max_examples=100, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))


@hypothesis.given(firewall())
@hypothesis.settings(**SETTINGS)
def test_document_round_trip(fw):
    assert from_document(to_document(fw)) == fw


@hypothesis.given(firewall())
@hypothesis.settings(**SETTINGS)
def test_iptables_round_trip(fw):
    hypothesis.assume(not _split_like_iptables(fw))
    saves = dict((family, ipt.restore_payload(fw, family, IFACES)) for family in ("ipv4", "ipv6"))
    found = ipt.parse_save(saves, ipt.render_ipset(fw), {}, IFACES)
    assert found.unsupported == []
    assert found.firewall._replace(not_carried=()) == fw


@hypothesis.given(firewall())
@hypothesis.settings(**SETTINGS)
def test_nftables_round_trip(fw):
    commands = nft.render_commands(fw, IFACES)["nftables"]
    listing = {"nftables": [{kind: obj} for c in commands[4:] for kind, obj in c["add"].items()]}
    script = nft.render_elements(fw)
    text = "table inet nfstate_filter {\n" + "".join(
        "\tset %s {\n\t\telements = { %s\n\t}\n" % (line.split()[4], line.split("{ ", 1)[1]) for line in script.splitlines()) + "}\n"
    found = nft.parse_ruleset(listing, IFACES, text)
    assert found.firewall._replace(not_carried=()) == fw
