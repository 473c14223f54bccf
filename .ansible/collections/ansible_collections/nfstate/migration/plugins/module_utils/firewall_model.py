# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stateful firewall as plain data, and its place in the model document.

Every implementation (nftables, iptables with ipset and xt_recent) parses its filter chains and
their dynamic state into a `Firewall` and renders it back from one; only this module knows how
they look in the document: RFC 8519 `ietf-access-control-list` with the augments of
yang/nfstate-firewall.yang (one ACL per chain, one ACE per rule, the named objects and their
state under /acls). Standard library only: it runs on the managed hosts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib
import ipaddress
import socket
from collections import namedtuple

ACL = "ietf-access-control-list:"
NS = "nfstate-firewall:"
ROOT = ACL + "acls"
ACL_TYPE = ACL + "mixed-eth-ipv4-ipv6-acl-type"

CHAINS = ("forward", "input", "output")
POLICIES = ("accept", "drop")
ACTIONS = ("accept", "drop", "reject", "continue")
FAMILIES = ("ipv4", "ipv6")
ROLES = ("inside", "outside")
CT_STATES = ("new", "established", "related", "invalid", "untracked")
SIDES = ("source", "destination")
RECENT_MODES = ("set", "check", "update", "remove")
SET_OPERATIONS = ("add", "update")
QUOTA_MODES = ("until", "over")
PER = ("second", "minute", "hour", "day")

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
PORT_PROTOCOLS = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
ICMP_OF_FAMILY = {"ipv4": IPPROTO_ICMP, "ipv6": IPPROTO_ICMPV6}
ACTION_IDENTITY = {"accept": ACL + "accept", "drop": ACL + "drop", "reject": ACL + "reject", "continue": NS + "continue"}
IDENTITY_ACTION = dict((identity, action) for action, identity in ACTION_IDENTITY.items())

# A token bucket: `rate` packets per `per`, `burst` packets at once.
Limit = namedtuple("Limit", ["rate", "per", "burst"], defaults=("second", 5))
# A lookup in or an update of a recent list (iptables -m recent).
Recent = namedtuple("Recent", ["name", "mode", "side", "seconds", "hitcount"], defaults=("source", None, None))
# The packet's address written into a set: `op` add | update, `timeout` None = the set's.
SetUpdate = namedtuple("SetUpdate", ["set", "op", "side", "timeout"], defaults=("add", "source", None))

# One filter rule.
#   chain        forward | input | output
#   family       ipv4 | ipv6 | None (both families)
#   in_role, out_role   interface roles matched, or None
#   proto        IP protocol number or None
#   src, dst     prefixes as canonical text, or None (need a family)
#   sport, dport (first, last) port range, or None (need tcp or udp)
#   icmp_type, icmp_code  ints or None (need icmp/icmpv6 and a family)
#   ct_states    connection-tracking states matched, in CT_STATES order; () = any
#   src_set, dst_set    names of the sets the addresses are looked up in, or None
#   limit        Limit or None; quota: name or None; recent: Recent or None
#   counter      name of the named counter the rule counts into, or None
#   set_updates  tuple of SetUpdate, in order
#   action       accept | drop | reject | continue
FilterRule = namedtuple(
    "FilterRule",
    ["chain", "family", "in_role", "out_role", "proto", "src", "dst", "sport", "dport",
     "icmp_type", "icmp_code", "ct_states", "src_set", "dst_set", "limit", "quota", "recent",
     "counter", "set_updates", "action"],
    defaults=("forward", None, None, None, None, None, None, None, None, None, None, (), None, None,
              None, None, None, None, (), "accept"),
)

Chain = namedtuple("Chain", ["name", "policy"], defaults=("accept",))
# An element of a named set: `remaining` seconds of lifetime (float) or None (does not expire),
# `timeout` its own lifetime when it differs from the set's, counters None when not counted.
SetElement = namedtuple("SetElement", ["address", "timeout", "remaining", "packets", "bytes"],
                        defaults=(None, None, None, None))
# `size`: the most elements the set holds, None for the implementation's default (65535 or 65536).
FirewallSet = namedtuple("FirewallSet", ["name", "family", "timeout", "counters", "elements", "size"],
                         defaults=(None, False, (), None))
DEFAULT_SET_SIZES = (65535, 65536)      # nftables gives a set filled by rules 65535, ipset 65536


def set_size(fwset):
    """The size to create a set with: its own, or the default if its elements fit, else room for them."""
    if fwset.size is not None:
        return max(fwset.size, len(fwset.elements))
    if len(fwset.elements) < DEFAULT_SET_SIZES[0]:
        return None
    size = DEFAULT_SET_SIZES[1]
    while size < len(fwset.elements):
        size *= 2
    return size


Counter = namedtuple("Counter", ["name", "packets", "bytes"], defaults=(0, 0))
Quota = namedtuple("Quota", ["name", "limit", "used", "mode"], defaults=(0, "until"))
# An address of a recent list: `ages` of its hits in seconds, newest first.
RecentEntry = namedtuple("RecentEntry", ["address", "ttl", "ages"], defaults=(None, ()))
RecentList = namedtuple("RecentList", ["name", "entries"], defaults=((),))
# Something the host holds that cannot be carried: the implementation's own text and why.
NotCarried = namedtuple("NotCarried", ["item", "reason"])

# The whole firewall: every member a tuple, in the canonical order of canonical().
Firewall = namedtuple("Firewall", ["chains", "rules", "sets", "counters", "quotas", "recent_lists", "not_carried"],
                      defaults=((), (), (), (), (), (), ()))

# Reasons given for what never moves.
NOT_CARRIED_LIMIT = "a rate limit's token bucket has no readable live value; it is re-learned on the target"
NOT_CARRIED_CT_COUNT = "a connection count is kept per connection by the kernel; it is re-learned on the target"
NOT_CARRIED_HASHLIMIT = "hashlimit's buckets are read-only in /proc/net/ipt_hashlimit; they are re-learned on the target"


class ModelError(ValueError):
    """A document or a firewall the model cannot hold. `path` names the offending member."""

    def __init__(self, path, message):
        super(ModelError, self).__init__("%s: %s" % (path, message))
        self.path = path
        self.message = message


class Unsupported(ValueError):
    """A rule or object that an implementation holds (or is given) and cannot express."""

    def __init__(self, item, reason):
        super(Unsupported, self).__init__("%s: %s" % (item, reason))
        self.item = item
        self.reason = reason


def _version(family):
    return 4 if family == "ipv4" else 6


def normalize_prefix(text, family):
    """Canonical prefix text; ValueError when it is no prefix of that family."""
    net = ipaddress.ip_network(text, strict=True)
    if net.version != _version(family):
        raise ValueError("%s is not an %s prefix" % (text, family))
    return str(net)


def normalize_address(text, family=None):
    """Canonical address text; ValueError when it is no address (of that family)."""
    if isinstance(text, str) and ":" not in text:
        # The C parser: a blocklist of 100k addresses is parsed and checked several times.
        try:
            canonical_text = socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
        except OSError:
            raise ValueError("%r is not an IPv4 address" % (text,))
        if family not in (None, "ipv4"):
            raise ValueError("%s is not an %s address" % (text, family))
        return canonical_text
    addr = ipaddress.ip_address(text)
    if family is not None and addr.version != _version(family):
        raise ValueError("%s is not an %s address" % (text, family))
    return str(addr)


def family_of_address(text):
    return "ipv4" if ipaddress.ip_address(text).version == 4 else "ipv6"


def canonical(firewall):
    """The firewall with its named objects sorted by name and chains in CHAINS order.

    Rules are grouped by chain (only the order inside a chain matters) and put in the one order
    of merge_families.
    """
    chain_rank = dict((name, i) for i, name in enumerate(CHAINS))
    return firewall._replace(
        chains=tuple(sorted(firewall.chains, key=lambda c: chain_rank.get(c.name, 99))),
        rules=tuple(_canonical_rules(firewall.rules)),
        sets=tuple(sorted((s._replace(elements=tuple(sorted(s.elements, key=_address_key)))
                           for s in firewall.sets), key=lambda s: s.name)),
        counters=tuple(sorted(firewall.counters, key=lambda c: c.name)),
        quotas=tuple(sorted(firewall.quotas, key=lambda q: q.name)),
        recent_lists=tuple(sorted((r._replace(entries=tuple(sorted(r.entries, key=_address_key)))
                                   for r in firewall.recent_lists), key=lambda r: r.name)),
        not_carried=tuple(firewall.not_carried),
    )


def family_free(rule):
    """True when the rule says nothing that only one family has (so one rule can serve both)."""
    return (rule.src is None and rule.dst is None and rule.icmp_type is None and rule.src_set is None
            and rule.dst_set is None and not rule.set_updates and rule.proto in (None,) + tuple(PORT_PROTOCOLS)
            and rule.quota is None)


def merge_families(rules4, rules6):
    """One chain's IPv4 rules and IPv6 rules (each list in its order) -> one list.

    Twins that say nothing family-specific become one rule for both families, aligned as a diff
    aligns lines; between them, IPv4 rules come before IPv6 rules. A packet is of one family, so
    this order changes nothing, and it is the one order every implementation gives back
    (iptables keeps the families in separate tables and cannot tell the original interleaving).
    """
    keys4 = [r._replace(family=None) if family_free(r) else ("ipv4", i) for i, r in enumerate(rules4)]
    keys6 = [r._replace(family=None) if family_free(r) else ("ipv6", i) for i, r in enumerate(rules6)]
    out = []
    matcher = difflib.SequenceMatcher(None, keys4, keys6, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            out.extend(keys4[a1:a2])
        else:
            out.extend(rules4[a1:a2])
            out.extend(rules6[b1:b2])
    return out


def _canonical_rules(rules):
    out = []
    for chain in CHAINS + tuple(sorted(set(r.chain for r in rules) - set(CHAINS))):
        mine = [r for r in rules if r.chain == chain]
        out.extend(merge_families([r._replace(family="ipv4") for r in mine if r.family in (None, "ipv4")],
                                  [r._replace(family="ipv6") for r in mine if r.family in (None, "ipv6")]))
    return out


def _address_key(item):
    if ":" not in item.address:
        return (4, socket.inet_pton(socket.AF_INET, item.address))
    return (6, ipaddress.ip_address(item.address).packed)


# ---------------------------------------------------------------------------------------------
# Checks


def _range_ok(ports):
    return (isinstance(ports, tuple) and len(ports) == 2 and all(isinstance(p, int) for p in ports)
            and 0 <= ports[0] <= ports[1] <= 65535)


def rule_problems(rule):
    """What makes a rule inexpressible in the model: a list of text, [] when it is fine."""
    problems = []
    if rule.chain not in CHAINS:
        problems.append("chain %r is not one of %s" % (rule.chain, ", ".join(CHAINS)))
    if rule.family not in FAMILIES + (None,):
        problems.append("address family %r is not ipv4 or ipv6" % (rule.family,))
        return problems
    if rule.action not in ACTIONS:
        problems.append("action %r is not one of %s" % (rule.action, ", ".join(ACTIONS)))
    for name in ("in_role", "out_role"):
        value = getattr(rule, name)
        if value is not None and value not in ROLES:
            problems.append("%s %r is not one of %s" % (name, value, ", ".join(ROLES)))
    if rule.chain == "input" and rule.out_role is not None:
        problems.append("an input rule cannot match the outgoing interface")
    if rule.chain == "output" and rule.in_role is not None:
        problems.append("an output rule cannot match the incoming interface")
    for name in ("src", "dst"):
        value = getattr(rule, name)
        if value is None:
            continue
        if rule.family is None:
            problems.append("%s needs an address family" % name)
            continue
        try:
            if normalize_prefix(value, rule.family) != value:
                problems.append("%s %s is not written canonically" % (name, value))
        except ValueError as exc:
            problems.append("%s: %s" % (name, exc))
    if rule.proto is not None:
        if not (isinstance(rule.proto, int) and 0 <= rule.proto <= 255):
            problems.append("protocol %r is not an IP protocol number" % (rule.proto,))
        elif rule.family is None and rule.proto not in PORT_PROTOCOLS:
            problems.append("protocol %d in both families: only tcp and udp can be matched without an address family"
                            % rule.proto)
    for name in ("sport", "dport"):
        value = getattr(rule, name)
        if value is not None:
            if rule.proto not in PORT_PROTOCOLS:
                problems.append("%s needs protocol tcp or udp" % name)
            if not _range_ok(value):
                problems.append("%s %r is not a port range of 0..65535" % (name, value))
    if rule.icmp_type is not None or rule.icmp_code is not None:
        if rule.family is None or rule.proto != ICMP_OF_FAMILY[rule.family]:
            problems.append("an ICMP type needs protocol icmp (ipv4) or ipv6-icmp (ipv6) and its family")
        if rule.icmp_type is None:
            problems.append("an ICMP code needs an ICMP type")
        for value in (rule.icmp_type, rule.icmp_code):
            if value is not None and not (isinstance(value, int) and 0 <= value <= 255):
                problems.append("ICMP type or code %r is not 0..255" % (value,))
    if tuple(s for s in CT_STATES if s in rule.ct_states) != tuple(rule.ct_states):
        problems.append("connection states %r are not distinct states written in the order %s"
                        % (rule.ct_states, ", ".join(CT_STATES)))
    if rule.limit is not None:
        limit = rule.limit
        if not (isinstance(limit.rate, int) and limit.rate >= 1 and limit.per in PER
                and isinstance(limit.burst, int) and limit.burst >= 1):
            problems.append("rate limit %r is not a rate of 1 or more per %s with a burst of 1 or more"
                            % (limit, "|".join(PER)))
    if rule.recent is not None:
        recent = rule.recent
        if recent.mode not in RECENT_MODES or recent.side not in SIDES:
            problems.append("recent %r: mode is one of %s, side one of %s" % (recent, ", ".join(RECENT_MODES), ", ".join(SIDES)))
        if recent.mode in ("set", "remove") and (recent.seconds or recent.hitcount):
            problems.append("recent %s takes neither seconds nor a hit count" % recent.mode)
    for update in rule.set_updates:
        if update.op not in SET_OPERATIONS or update.side not in SIDES:
            problems.append("set update %r: operation is add or update, side source or destination" % (update,))
        if update.timeout is not None and not (isinstance(update.timeout, int) and update.timeout >= 1):
            problems.append("set update %r: timeout is a number of seconds" % (update,))
    if len(set(u.set for u in rule.set_updates)) != len(rule.set_updates):
        problems.append("a rule updates each set at most once")
    return problems


def firewall_problems(firewall):
    """Every problem of a whole firewall: its rules, and the objects they name."""
    problems = []
    chains = [c.name for c in firewall.chains]
    for chain in firewall.chains:
        if chain.name not in CHAINS or chain.policy not in POLICIES:
            problems.append("chain %r: name is one of %s, policy accept or drop" % (chain, ", ".join(CHAINS)))
    if len(set(chains)) != len(chains):
        problems.append("a chain is given twice")
    sets = dict((s.name, s) for s in firewall.sets)
    counters = set(c.name for c in firewall.counters)
    quotas = set(q.name for q in firewall.quotas)
    recents = set(r.name for r in firewall.recent_lists)
    for kind, names in (("set", [s.name for s in firewall.sets]), ("counter", [c.name for c in firewall.counters]),
                        ("quota", [q.name for q in firewall.quotas]), ("recent list", [r.name for r in firewall.recent_lists])):
        if len(set(names)) != len(names):
            problems.append("a %s name is given twice" % kind)
    for index, rule in enumerate(firewall.rules, 1):
        where = "rule %d" % index
        problems.extend("%s: %s" % (where, p) for p in rule_problems(rule))
        if rule.chain not in chains:
            problems.append("%s: chain %s is not declared" % (where, rule.chain))
        for name in [rule.src_set, rule.dst_set] + [u.set for u in rule.set_updates]:
            if name is None:
                continue
            if name not in sets:
                problems.append("%s: set %s does not exist" % (where, name))
            elif rule.family != sets[name].family:
                problems.append("%s: set %s holds %s addresses, the rule is for %s"
                                % (where, name, sets[name].family, rule.family or "both families"))
        if rule.counter is not None and rule.counter not in counters:
            problems.append("%s: counter %s does not exist" % (where, rule.counter))
        if rule.quota is not None and rule.quota not in quotas:
            problems.append("%s: quota %s does not exist" % (where, rule.quota))
        if rule.recent is not None and rule.recent.name not in recents:
            problems.append("%s: recent list %s does not exist" % (where, rule.recent.name))
    for fwset in firewall.sets:
        problems.extend("set %s: %s" % (fwset.name, p) for p in _set_problems(fwset))
    for quota in firewall.quotas:
        if not (isinstance(quota.limit, int) and quota.limit >= 1 and isinstance(quota.used, int) and quota.used >= 0
                and quota.mode in QUOTA_MODES):
            problems.append("quota %s: limit >= 1, used >= 0 bytes, mode until or over" % quota.name)
    for recent in firewall.recent_lists:
        for entry in recent.entries:
            try:
                normalize_address(entry.address)
            except ValueError as exc:
                problems.append("recent list %s: %s" % (recent.name, exc))
            if any(not (isinstance(a, (int, float)) and a >= 0) for a in entry.ages):
                problems.append("recent list %s: ages of %s are not durations" % (recent.name, entry.address))
    return problems


def _set_problems(fwset):
    problems = []
    if fwset.family not in FAMILIES:
        return ["address family %r is not ipv4 or ipv6" % (fwset.family,)]
    if fwset.size is not None and not (isinstance(fwset.size, int) and fwset.size >= 1):
        problems.append("size %r is not a number of elements" % (fwset.size,))
    elif fwset.size is not None and len(fwset.elements) > fwset.size:
        problems.append("%d elements in a set of size %d" % (len(fwset.elements), fwset.size))
    seen = set()
    for element in fwset.elements:
        try:
            if normalize_address(element.address, fwset.family) != element.address:
                problems.append("%s is not written canonically" % element.address)
        except ValueError as exc:
            problems.append(str(exc))
        if element.address in seen:
            problems.append("%s is given twice" % element.address)
        seen.add(element.address)
        if element.remaining is not None and fwset.timeout is None and element.timeout is None:
            problems.append("%s has a remaining lifetime in a set without timeouts" % element.address)
        if element.remaining is not None and not (isinstance(element.remaining, (int, float)) and element.remaining >= 0):
            problems.append("%s: remaining lifetime %r is not a duration" % (element.address, element.remaining))
        if (element.packets is None) != (element.bytes is None):
            problems.append("%s: packets and bytes are counted together" % element.address)
    return problems


def refuse_unsupported(unsupported, skip):
    """The gatherers' policy: what the model cannot express stops the gather (an Unsupported
    naming every item), unless the operator asked to skip it; then it is returned, to be listed."""
    if unsupported and not skip:
        raise Unsupported(summary([u["item"] for u in unsupported]),
                          summary(["%s: %s" % (u["item"], u["reason"]) for u in unsupported]))
    return list(unsupported)


def summary(problems, shown=10):
    """Problems as one message, the first few in full."""
    text = "; ".join(problems[:shown])
    if len(problems) > shown:
        text += "; and %d more" % (len(problems) - shown)
    return text


def check(firewall):
    """Raise ModelError naming the problems of a firewall; return it canonical otherwise."""
    problems = firewall_problems(firewall)
    if problems:
        raise ModelError("/" + ROOT, summary(problems))
    return canonical(firewall)


# ---------------------------------------------------------------------------------------------
# Firewall -> document


def _seconds(value):
    return "%.3f" % value


def _port_json(ports):
    first, last = ports
    if first == last:
        return {"port": first}
    return {"lower-port": first, "upper-port": last}


def rule_to_ace(rule, position):
    """One rule as an ACE of its chain's ACL."""
    problems = rule_problems(rule)
    if problems:
        raise ModelError("rule %d" % position, "; ".join(problems))
    matches = {}
    if rule.family is not None:
        matches[NS + "address-family"] = rule.family
        l3 = {}
        if rule.proto is not None:
            l3["protocol"] = rule.proto
        suffix = "ipv4" if rule.family == "ipv4" else "ipv6"
        if rule.src is not None:
            l3["source-%s-network" % suffix] = rule.src
        if rule.dst is not None:
            l3["destination-%s-network" % suffix] = rule.dst
        if l3:
            matches[suffix] = l3
    if rule.proto in PORT_PROTOCOLS:
        l4 = {}
        if rule.sport is not None:
            l4["source-port"] = _port_json(rule.sport)
        if rule.dport is not None:
            l4["destination-port"] = _port_json(rule.dport)
        matches[PORT_PROTOCOLS[rule.proto]] = l4
    if rule.icmp_type is not None:
        icmp = {"type": rule.icmp_type}
        if rule.icmp_code is not None:
            icmp["code"] = rule.icmp_code
        matches["icmp"] = icmp
    if rule.in_role is not None:
        matches[NS + "in-interface"] = rule.in_role
    if rule.out_role is not None:
        matches[NS + "out-interface"] = rule.out_role
    if rule.ct_states:
        matches[NS + "connection-state"] = list(rule.ct_states)
    if rule.src_set is not None:
        matches[NS + "source-set"] = rule.src_set
    if rule.dst_set is not None:
        matches[NS + "destination-set"] = rule.dst_set
    if rule.limit is not None:
        matches[NS + "rate-limit"] = {"rate": rule.limit.rate, "per": rule.limit.per, "burst": rule.limit.burst}
    if rule.quota is not None:
        matches[NS + "quota"] = rule.quota
    if rule.recent is not None:
        recent = {"name": rule.recent.name, "mode": rule.recent.mode, "side": rule.recent.side}
        if rule.recent.seconds is not None:
            recent["seconds"] = rule.recent.seconds
        if rule.recent.hitcount is not None:
            recent["hit-count"] = rule.recent.hitcount
        matches[NS + "recent"] = recent
    actions = {"forwarding": ACTION_IDENTITY[rule.action]}
    if rule.counter is not None:
        actions[NS + "counter"] = rule.counter
    if rule.set_updates:
        updates = []
        for update in rule.set_updates:
            item = {"set": update.set, "operation": update.op, "side": update.side}
            if update.timeout is not None:
                item["timeout"] = update.timeout
            updates.append(item)
        actions[NS + "set-update"] = updates
    return {"name": "rule-%d" % position, NS + "rule-order": position, "matches": matches, "actions": actions}


def _counters_json(item, packets, octets):
    if packets is not None:
        item["packets"] = str(packets)
        item["bytes"] = str(octets)
    return item


def to_document(firewall):
    """The whole firewall as an RFC 7951 document ({"ietf-access-control-list:acls": {...}})."""
    firewall = check(firewall)
    acls = []
    for chain in firewall.chains:
        rules = [r for r in firewall.rules if r.chain == chain.name]
        acl = {"name": chain.name, "type": ACL_TYPE, NS + "hook": chain.name, NS + "policy": chain.policy}
        if rules:
            acl["aces"] = {"ace": [rule_to_ace(rule, i) for i, rule in enumerate(rules, 1)]}
        acls.append(acl)
    body = {}
    if acls:
        body["acl"] = acls
    if firewall.sets:
        sets = []
        for fwset in firewall.sets:
            item = {"name": fwset.name, "address-family": fwset.family, "counters": bool(fwset.counters)}
            if fwset.timeout is not None:
                item["timeout"] = fwset.timeout
            if fwset.size is not None:
                item["size"] = fwset.size
            elements = []
            for element in fwset.elements:
                entry = {"address": element.address}
                if element.timeout is not None:
                    entry["timeout"] = element.timeout
                if element.remaining is not None:
                    entry["remaining"] = _seconds(element.remaining)
                elements.append(_counters_json(entry, element.packets, element.bytes))
            if elements:
                item["element"] = elements
            sets.append(item)
        body[NS + "sets"] = {"set": sets}
    if firewall.counters:
        body[NS + "counters"] = {"counter": [_counters_json({"name": c.name}, c.packets, c.bytes) for c in firewall.counters]}
    if firewall.quotas:
        body[NS + "quotas"] = {"quota": [{"name": q.name, "limit": str(q.limit), "used": str(q.used), "mode": q.mode}
                                         for q in firewall.quotas]}
    if firewall.recent_lists:
        lists = []
        for recent in firewall.recent_lists:
            item = {"name": recent.name}
            entries = []
            for entry in recent.entries:
                out = {"address": entry.address}
                if entry.ttl is not None:
                    out["ttl"] = entry.ttl
                if entry.ages:
                    out["hit"] = [{"position": i, "age": _seconds(age)} for i, age in enumerate(entry.ages, 1)]
                entries.append(out)
            if entries:
                item["entry"] = entries
            lists.append(item)
        body[NS + "recent-lists"] = {"recent-list": lists}
    if firewall.not_carried:
        body[NS + "not-carried"] = [{"index": i, "item": n.item, "reason": n.reason}
                                    for i, n in enumerate(firewall.not_carried, 1)]
    return {ROOT: body}


# ---------------------------------------------------------------------------------------------
# Document -> firewall


class _Reader(object):
    """Members of one JSON object, read once each; whatever is left over is an error."""

    def __init__(self, obj, path):
        if not isinstance(obj, dict):
            raise ModelError(path, "expected an object")
        self.obj = dict(obj)
        self.path = path

    def take(self, name, kind=None, default=None):
        if name not in self.obj:
            return default
        value = self.obj.pop(name)
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            raise ModelError("%s/%s" % (self.path, name), "expected %s, found %r" % (_kind_name(kind), value))
        return value

    def need(self, name, kind=None):
        if name not in self.obj:
            raise ModelError(self.path, "missing %s" % name)
        return self.take(name, kind)

    def enum(self, name, allowed, default=None):
        value = self.take(name, default=default)
        if value is not None and value not in allowed:
            raise ModelError("%s/%s" % (self.path, name), "%r is not one of %s" % (value, ", ".join(allowed)))
        return value

    def uint(self, name, default=None, minimum=0, maximum=None):
        value = self.take(name, default=default)
        if value is None:
            return None
        if isinstance(value, str) and value.isdigit():
            value = int(value)    # RFC 7951 writes 64-bit integers as strings
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (maximum is not None and value > maximum):
            raise ModelError("%s/%s" % (self.path, name), "%r is not an integer of %d..%s" % (value, minimum, maximum or "max"))
        return value

    def seconds(self, name):
        value = self.take(name)
        if value is None:
            return None
        try:
            number = float(value) if isinstance(value, str) else None
        except ValueError:
            number = None
        if number is None or number < 0:
            raise ModelError("%s/%s" % (self.path, name), "%r is not a duration in seconds (decimal text)" % (value,))
        return number

    def child(self, name):
        return _Reader(self.take(name, dict, {}), "%s/%s" % (self.path, name))

    def items(self, name):
        value = self.take(name, list, [])
        return [_Reader(item, "%s/%s[%d]" % (self.path, name, i)) for i, item in enumerate(value, 1)]

    def done(self):
        if self.obj:
            raise ModelError(self.path, "not modelled here: %s" % ", ".join(sorted(self.obj)))


def _kind_name(kind):
    return {str: "text", int: "an integer", list: "a list", dict: "an object", bool: "true or false"}.get(kind, str(kind))


def _read_port(reader):
    if "port" in reader.obj:
        reader.enum("operator", ("eq",), default="eq")    # lte, gte, neq: no implementation writes them
        port = reader.uint("port", maximum=65535)
        reader.done()
        return (port, port)
    first = reader.uint("lower-port", maximum=65535)
    last = reader.uint("upper-port", maximum=65535)
    reader.done()
    if first is None or last is None:
        raise ModelError(reader.path, "expected port, or lower-port and upper-port")
    return (first, last)


def ace_to_rule(ace, chain, path):
    """One ACE -> FilterRule; ModelError naming the member it cannot read."""
    reader = _Reader(ace, path)
    reader.need("name", str)
    reader.uint(NS + "rule-order", minimum=1)
    matches = reader.child("matches")
    actions = reader.child("actions")
    reader.done()
    fields = {"chain": chain}
    family = matches.enum(NS + "address-family", FAMILIES)
    fields["family"] = family
    proto = None
    for suffix in FAMILIES:
        if suffix not in matches.obj:
            continue
        l3 = matches.child(suffix)
        if family != suffix:
            raise ModelError(l3.path, "an %s match needs address-family %s" % (suffix, suffix))
        proto = l3.uint("protocol", maximum=255)
        for side, key in (("src", "source-%s-network"), ("dst", "destination-%s-network")):
            value = l3.take(key % suffix, str)
            if value is not None:
                try:
                    fields[side] = normalize_prefix(value, family)
                except ValueError as exc:
                    raise ModelError("%s/%s" % (l3.path, key % suffix), str(exc))
        l3.done()
    for number, name in sorted(PORT_PROTOCOLS.items()):
        if name not in matches.obj:
            continue
        if proto is not None and proto != number:
            raise ModelError("%s/%s" % (matches.path, name), "a %s match in a rule for protocol %d" % (name, proto))
        proto = number
        l4 = matches.child(name)
        for side, key in (("sport", "source-port"), ("dport", "destination-port")):
            if key in l4.obj:
                fields[side] = _read_port(l4.child(key))
        l4.done()
    if "icmp" in matches.obj:
        icmp = matches.child("icmp")
        if family is None:
            raise ModelError(icmp.path, "an ICMP match needs an address family")
        if proto is not None and proto != ICMP_OF_FAMILY[family]:
            raise ModelError(icmp.path, "an ICMP match in a rule for protocol %d" % proto)
        proto = ICMP_OF_FAMILY[family]
        fields["icmp_type"] = icmp.uint("type", maximum=255)
        fields["icmp_code"] = icmp.uint("code", maximum=255)
        icmp.done()
    fields["proto"] = proto
    fields["in_role"] = matches.enum(NS + "in-interface", ROLES)
    fields["out_role"] = matches.enum(NS + "out-interface", ROLES)
    states = matches.take(NS + "connection-state", list, [])
    unknown = [s for s in states if s not in CT_STATES]
    if unknown:
        raise ModelError("%s/%sconnection-state" % (matches.path, NS), "unknown states %r" % unknown)
    fields["ct_states"] = tuple(s for s in CT_STATES if s in states)
    fields["src_set"] = matches.take(NS + "source-set", str)
    fields["dst_set"] = matches.take(NS + "destination-set", str)
    if NS + "rate-limit" in matches.obj:
        limit = matches.child(NS + "rate-limit")
        fields["limit"] = Limit(limit.uint("rate", minimum=1), limit.enum("per", PER, "second"),
                                limit.uint("burst", 5, minimum=1))
        limit.done()
    fields["quota"] = matches.take(NS + "quota", str)
    if NS + "recent" in matches.obj:
        recent = matches.child(NS + "recent")
        fields["recent"] = Recent(recent.need("name", str), recent.enum("mode", RECENT_MODES),
                                  recent.enum("side", SIDES, "source"), recent.uint("seconds", minimum=1),
                                  recent.uint("hit-count", minimum=1))
        if fields["recent"].mode is None:
            raise ModelError(recent.path, "missing mode")
        recent.done()
    matches.done()
    forwarding = actions.need("forwarding", str)
    if forwarding not in IDENTITY_ACTION:
        raise ModelError("%s/forwarding" % actions.path, "%r is not one of %s" % (forwarding, ", ".join(sorted(IDENTITY_ACTION))))
    fields["action"] = IDENTITY_ACTION[forwarding]
    logging = actions.take("logging", str)
    if logging not in (None, ACL + "log-none"):
        raise ModelError("%s/logging" % actions.path, "logging is not carried")
    fields["counter"] = actions.take(NS + "counter", str)
    updates = []
    for item in actions.items(NS + "set-update"):
        updates.append(SetUpdate(item.need("set", str), item.enum("operation", SET_OPERATIONS, "add"),
                                 item.enum("side", SIDES, "source"), item.uint("timeout", minimum=1)))
        item.done()
    fields["set_updates"] = tuple(updates)
    actions.done()
    rule = FilterRule(**fields)
    problems = rule_problems(rule)
    if problems:
        raise ModelError(path, "; ".join(problems))
    return rule


def _read_element(reader, family):
    address = reader.need("address", str)
    try:
        address = normalize_address(address, family)
    except ValueError as exc:
        raise ModelError("%s/address" % reader.path, str(exc))
    element = SetElement(address, reader.uint("timeout", minimum=1), reader.seconds("remaining"),
                         reader.uint("packets"), reader.uint("bytes"))
    reader.done()
    return element


def from_document(doc):
    """An RFC 7951 document -> Firewall (canonical); ModelError with the path of what is wrong."""
    top = _Reader(doc, "")
    body = top.child(ROOT)
    top.done()
    chains, rules = [], []
    for acl in body.items("acl"):
        name = acl.need("name", str)
        acl.take("type", str)
        hook = acl.enum(NS + "hook", CHAINS, "forward")
        if name != hook:
            raise ModelError(acl.path, "the ACL of chain %s is named %s" % (hook, name))
        chains.append(Chain(hook, acl.enum(NS + "policy", POLICIES, "accept")))
        aces = acl.child("aces")
        items = aces.take("ace", list, [])
        aces.done()
        positions = []
        for i, ace in enumerate(items, 1):
            rules.append(ace_to_rule(ace, hook, "%s/aces/ace[%d]" % (acl.path, i)))
            positions.append(ace.get(NS + "rule-order", i) if isinstance(ace, dict) else i)
        if positions != sorted(positions):
            raise ModelError("%s/aces" % acl.path, "ACEs are not listed in their rule-order")
        acl.done()
    sets = []
    for item in body.child(NS + "sets").items("set"):
        name = item.need("name", str)
        family = item.enum("address-family", FAMILIES)
        if family is None:
            raise ModelError(item.path, "missing address-family")
        timeout = item.uint("timeout", minimum=1)
        counters = item.take("counters", bool, False)
        size = item.uint("size", minimum=1, maximum=2 ** 32 - 1)
        elements = tuple(_read_element(e, family) for e in item.items("element"))
        item.done()
        sets.append(FirewallSet(name, family, timeout, counters, elements, size))
    counters = []
    for item in body.child(NS + "counters").items("counter"):
        counters.append(Counter(item.need("name", str), item.uint("packets", 0), item.uint("bytes", 0)))
        item.done()
    quotas = []
    for item in body.child(NS + "quotas").items("quota"):
        quota = Quota(item.need("name", str), item.uint("limit", minimum=1), item.uint("used", 0),
                      item.enum("mode", QUOTA_MODES, "until"))
        if quota.limit is None:
            raise ModelError(item.path, "missing limit")
        item.done()
        quotas.append(quota)
    recents = []
    for item in body.child(NS + "recent-lists").items("recent-list"):
        name = item.need("name", str)
        entries = []
        for entry in item.items("entry"):
            address = entry.need("address", str)
            try:
                address = normalize_address(address)
            except ValueError as exc:
                raise ModelError("%s/address" % entry.path, str(exc))
            ttl = entry.uint("ttl", maximum=255)
            hits = []
            for hit in entry.items("hit"):
                hits.append((hit.uint("position", minimum=1), hit.seconds("age")))
                hit.done()
            entry.done()
            if [p for p, a in hits] != list(range(1, len(hits) + 1)) or any(a is None for p, a in hits):
                raise ModelError(entry.path, "hits are numbered 1, 2, ... newest first, each with an age")
            entries.append(RecentEntry(address, ttl, tuple(a for p, a in hits)))
        item.done()
        recents.append(RecentList(name, tuple(entries)))
    not_carried = []
    for item in body.items(NS + "not-carried"):
        item.uint("index")
        not_carried.append(NotCarried(item.need("item", str), item.need("reason", str)))
        item.done()
    body.done()
    firewall = Firewall(tuple(chains), tuple(rules), tuple(sets), tuple(counters), tuple(quotas),
                        tuple(recents), tuple(not_carried))
    problems = firewall_problems(firewall)
    if problems:
        raise ModelError("/" + ROOT, summary(problems))
    return canonical(firewall)


def _refusal(where):
    def refuse(reason):
        raise Unsupported(where, reason + "; it cannot become a set")
    return refuse


def recent_as_sets(firewall):
    """The firewall with its recent lists turned into sets with a timeout, for an implementation
    that has none (nftables); Unsupported names a list that cannot be turned.

    A list becomes the set of the same name whose timeout is the `--seconds` of the rules that check
    it: `set` adds the address (restarting its lifetime), `check` looks it up, `update` does both.
    An address is an element whose remaining lifetime is that window minus the age of its newest
    hit. Only the newest hit matters then, so a list checked with a hit count above 1, with two
    different windows, removed from the packet path, or used by rules for both families (a set holds
    one family) cannot be turned. What is dropped is listed in not_carried.
    """
    sets = dict((s.name, s) for s in firewall.sets)
    rules = list(firewall.rules)
    new_sets, notes = [], []
    for recent in firewall.recent_lists:
        users = [i for i, r in enumerate(rules) if r.recent is not None and r.recent.name == recent.name]
        where = "recent list %s" % recent.name
        refuse = _refusal(where)
        if recent.name in sets:
            refuse("a set has its name")
        if len(recent.name) > 27 or not recent.name[:1].isalpha() or not recent.name.replace("_", "").replace("-", "").isalnum():
            refuse("its name is no set name")
        families = set(rules[i].family for i in users)
        if None in families or len(families) > 1:
            refuse("rules of both families use it")
        family = families.pop() if families else None
        windows = set(rules[i].recent.seconds for i in users if rules[i].recent.mode in ("check", "update"))
        if len(windows) > 1:
            refuse("rules check it over different windows (%s seconds)" % ", ".join(sorted(str(w) for w in windows)))
        window = windows.pop() if windows else None
        for i in users:
            rule = rules[i]
            mode, side = rule.recent.mode, rule.recent.side
            if mode == "remove":
                refuse("a rule removes addresses from it")
            if (rule.recent.hitcount or 1) > 1:
                refuse("a rule needs %d hits" % rule.recent.hitcount)
            changes = {"recent": None}
            if mode in ("check", "update"):
                key = "src_set" if side == "source" else "dst_set"
                if getattr(rule, key) is not None:
                    refuse("a rule that uses it already looks up set %s" % getattr(rule, key))
                changes[key] = recent.name
            if mode in ("set", "update"):
                changes["set_updates"] = rule.set_updates + (SetUpdate(recent.name, "update", side),)
            rules[i] = rule._replace(**changes)
        elements = []
        for entry in recent.entries:
            if family is not None and family_of_address(entry.address) != family:
                notes.append(NotCarried("%s: %s" % (where, entry.address), "an address of the other family, which its rules never match"))
            elif not entry.ages:
                continue
            elif window is None:
                elements.append(SetElement(entry.address))
            elif entry.ages[0] < window:
                elements.append(SetElement(entry.address, None, window - entry.ages[0]))
        if family is None:
            if recent.entries:
                notes.append(NotCarried(where, "no rule uses it"))
            continue
        new_sets.append(FirewallSet(recent.name, family, window, False, tuple(elements)))
        span = "permanent" if window is None else "%s s" % window
        notes.append(NotCarried(where, "carried as set %s: only its addresses' newest hits, as remaining lifetimes of a "
                                       "%s window" % (recent.name, span)))
    return canonical(firewall._replace(rules=tuple(rules), sets=firewall.sets + tuple(new_sets), recent_lists=(),
                                       not_carried=firewall.not_carried + tuple(notes)))


def without_state(firewall):
    """The firewall's configuration only: sets emptied, counters and quotas at zero, recent lists
    empty. What two hosts must agree on exactly; the state is compared with tolerances."""
    return firewall._replace(
        sets=tuple(s._replace(elements=()) for s in firewall.sets),
        counters=tuple(c._replace(packets=0, bytes=0) for c in firewall.counters),
        quotas=tuple(q._replace(used=0) for q in firewall.quotas),
        recent_lists=tuple(r._replace(entries=()) for r in firewall.recent_lists),
        not_carried=(),
    )
