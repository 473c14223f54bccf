# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NAT rules as plain data, and their place in the model document (ietf-nat policies).

Every implementation (iptables, nftables) parses its rules into `NatRule`s and renders them
back from `NatRule`s; only this module knows how a rule looks in the document, one ietf-nat
policy per rule (yang/nfstate-nat-rules.yang).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model

NS = "nfstate-nat-rules:"

# no-snat and no-dnat are exemptions: the packets they match are left untranslated by them and
# by every later rule of the same hook ("do not translate traffic to this prefix").
KINDS = ("snat", "masquerade", "dnat", "redirect", "no-snat", "no-dnat")
EXEMPTIONS = ("no-snat", "no-dnat")
FAMILIES = ("ipv4", "ipv6")
# loopback is the host's loopback interface, lo on every Linux host unless `interfaces` says
# otherwise (firewalld masquerades what does not leave by it).
ROLES = ("inside", "outside", "loopback")
LOOPBACK_DEVICE = "lo"

# Which netfilter hook a kind of rule runs in: destination NAT before routing, source NAT after.
HOOK_OF_KIND = {"dnat": "prerouting", "redirect": "prerouting", "no-dnat": "prerouting",
                "snat": "postrouting", "masquerade": "postrouting", "no-snat": "postrouting"}
HOOKS = ("prerouting", "postrouting")
# Matches a rule can negate ("! -o eth0", "tcp dport != 80-90"), in the order `negated` lists them.
NEGATABLE = ("in_role", "out_role", "src", "dst", "dports")
# How the kernel picks the translated address and port (NF_NAT_RANGE_PROTO_RANDOM,
# _PROTO_RANDOM_FULLY, _PERSISTENT), in the order `flags` lists them.
FLAGS = ("random", "fully-random", "persistent")

IPPROTO_TCP = 6
IPPROTO_UDP = 17
# Protocols whose headers carry ports that a NAT rule can match and translate.
PORT_PROTOCOLS = {6: "tcp", 17: "udp", 33: "dccp", 132: "sctp", 136: "udplite"}
PROTOCOL_NAMES = {
    1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 50: "esp", 51: "ah",
    58: "ipv6-icmp", 132: "sctp", 136: "udplite",
}
PROTOCOL_NUMBERS = dict((name, number) for number, name in PROTOCOL_NAMES.items())
PROTOCOL_NUMBERS.update({"icmpv6": 58, "ipv6icmp": 58, "udp-lite": 136})

# One NAT rule.
#   kind         snat | masquerade | dnat
#   family       ipv4 | ipv6
#   in_role      inside | outside | None: interface the packet arrived on (dnat only)
#   out_role     inside | outside | None: interface the packet leaves by (snat, masquerade)
#   src, dst     matched addresses: None (any), one prefix as text ("192.0.2.0/24"), or, when
#                that is not one prefix (a range, a set), a tuple of (first, last) address
#                ranges, sorted, disjoint and not adjacent (see address_match)
#   proto        matched IP protocol number, None (any), or a sorted tuple of two or more
#   dports       matched destination port ranges, a tuple of (first, last), sorted; () = any
#   to_addresses (first, last) address range translated to (snat, dnat) or None (masquerade,
#                redirect, exemptions)
#   to_ports     (first, last) port range translated to, or None (keep / kernel's choice)
#   negated      the matches that are negated, a tuple of NEGATABLE names in that order
#   flags        FLAGS of the translation, in that order
#   comment      the rule's comment (iptables -m comment, nftables comment) or None
#   dst_local    True: matches packets sent to an address of the host itself (whichever host it
#                is: iptables addrtype --dst-type LOCAL, nftables fib daddr type local); False:
#                to any other address; None: either
NatRule = namedtuple(
    "NatRule",
    ["kind", "family", "in_role", "out_role", "src", "dst", "proto", "dports",
     "to_addresses", "to_ports", "negated", "flags", "comment", "dst_local"],
    defaults=(None, None, None, None, None, (), None, None, (), (), None, None),
)
# iptables' comment match holds up to 255 bytes (nftables' comments 128).
MAX_COMMENT = 255


class ModelError(ValueError):
    """A policy the rules model cannot read. `path` is the JSON path of the offending member."""

    def __init__(self, path, message):
        super(ModelError, self).__init__("%s: %s" % (path, message))
        self.path = path
        self.message = message


def devices_of(interfaces):
    """{role: device} of an `interfaces` mapping, the loopback role filled in when it is free."""
    out = dict(interfaces or {})
    if "loopback" not in out and LOOPBACK_DEVICE not in out.values():
        out["loopback"] = LOOPBACK_DEVICE
    return out


def roles_of(interfaces):
    """{device: role}, the inverse of devices_of."""
    return dict((dev, role) for role, dev in devices_of(interfaces).items())


def protocol_number(text):
    """IP protocol number from an iptables/nftables name or number; None if unknown."""
    text = str(text).lower()
    if text.isdigit() and int(text) <= 255:
        return int(text)
    return PROTOCOL_NUMBERS.get(text)


def _version(family):
    return 4 if family == "ipv4" else 6


def normalize_prefix(text, family):
    """Canonical prefix text; raises ValueError when it is no prefix of that family."""
    net = ipaddress.ip_network(text, strict=True)
    if net.version != _version(family):
        raise ValueError("%s is not an %s prefix" % (text, family))
    return str(net)


def normalize_address(text, family):
    addr = ipaddress.ip_address(text)
    if addr.version != _version(family):
        raise ValueError("%s is not an %s address" % (text, family))
    return str(addr)


def merge_port_ranges(ranges):
    """Sorted ranges with overlapping and adjacent ones joined: one spelling per set of ports."""
    return _merge(ranges)


def _merge(ranges):
    merged = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return tuple(merged)


def _address(text, family):
    addr = ipaddress.ip_address(text)
    if addr.version != _version(family):
        raise ValueError("%s is not an %s address" % (text, family))
    return addr


def address_match(ranges, family):
    """The canonical value of an address match covering these (first, last) address ranges:
    one prefix as text when they are exactly one prefix, else the tuple of merged ranges."""
    numbers = []
    for first, last in ranges:
        first, last = _address(first, family), _address(last, family)
        if first > last:
            raise ValueError("address range %s-%s is reversed" % (first, last))
        numbers.append((int(first), int(last)))
    if not numbers:
        raise ValueError("an empty address match")
    merged = _merge(numbers)
    make = ipaddress.IPv4Address if family == "ipv4" else ipaddress.IPv6Address
    if len(merged) == 1:
        nets = list(ipaddress.summarize_address_range(make(merged[0][0]), make(merged[0][1])))
        if len(nets) == 1:
            return str(nets[0])
    return tuple((str(make(a)), str(make(b))) for a, b in merged)


def match_ranges(value):
    """The (first, last) address ranges of a match value (a prefix text or a tuple of ranges)."""
    if isinstance(value, str):
        net = ipaddress.ip_network(value)
        return ((str(net.network_address), str(net.broadcast_address)),)
    return tuple(value)


def match_prefixes(value):
    """The prefixes that cover a match value, in address order."""
    if isinstance(value, str):
        return [value]
    return [prefix for first, last in value for prefix in _range_prefixes(first, last)]


def protocols(rule):
    """The protocols a rule matches, as a tuple (() = any)."""
    if rule.proto is None:
        return ()
    if isinstance(rule.proto, tuple):
        return rule.proto
    return (rule.proto,)


def protocol_match(numbers):
    """The canonical `proto` of a set of protocol numbers: None, a number, or a sorted tuple."""
    numbers = tuple(sorted(set(numbers)))
    if not numbers:
        return None
    return numbers[0] if len(numbers) == 1 else numbers


def _match_problems(name, value, family):
    if isinstance(value, str):
        try:
            if normalize_prefix(value, family) != value:
                return ["%s %s is not written canonically" % (name, value)]
        except ValueError as exc:
            return ["%s: %s" % (name, exc)]
        return []
    try:
        if not isinstance(value, tuple) or not all(isinstance(r, tuple) and len(r) == 2 for r in value):
            return ["%s %r is neither a prefix nor a tuple of address ranges" % (name, value)]
        if address_match(value, family) != value:
            return ["%s %r is not written canonically (%r)" % (name, value, address_match(value, family))]
    except (TypeError, ValueError) as exc:
        return ["%s: %s" % (name, exc)]
    return []


def rule_problems(rule):
    """What makes a rule inexpressible in the model (and in the implementations): list of text."""
    problems = []
    if rule.kind not in KINDS:
        return ["unknown kind %r" % (rule.kind,)]
    if rule.family not in FAMILIES:
        return ["unknown address family %r" % (rule.family,)]
    for name in ("in_role", "out_role"):
        value = getattr(rule, name)
        if value is not None and value not in ROLES:
            problems.append("%s %r is not one of %s" % (name, value, ", ".join(ROLES)))
    destination = HOOK_OF_KIND[rule.kind] == "prerouting"
    if destination and rule.out_role is not None:
        problems.append("destination NAT cannot match the outgoing interface (it runs before routing)")
    if not destination and rule.in_role is not None:
        problems.append("source NAT cannot match the incoming interface (it runs after routing)")
    for name in ("src", "dst"):
        value = getattr(rule, name)
        if value is not None:
            problems.extend(_match_problems(name, value, rule.family))
    protos = protocols(rule)
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255 for p in protos):
        problems.append("protocol %r is not an IP protocol number" % (rule.proto,))
    elif isinstance(rule.proto, tuple) and protocol_match(protos) != rule.proto:
        problems.append("protocols %r are not two or more, sorted, once each" % (rule.proto,))
    with_ports = bool(protos) and all(p in PORT_PROTOCOLS for p in protos)
    if rule.dports:
        if not with_ports:
            problems.append("destination ports need a protocol with ports (tcp, udp, sctp, dccp, udplite)")
        if merge_port_ranges(rule.dports) != tuple(rule.dports) or not _ports_ok(rule.dports):
            problems.append("destination ports %r are not sorted, disjoint ranges of 0..65535" % (rule.dports,))
    if rule.to_ports is not None:
        if not with_ports:
            problems.append("a port translation needs a protocol with ports (tcp, udp, sctp, dccp, udplite)")
        if not _ports_ok([rule.to_ports]) or rule.to_ports[0] == 0:
            problems.append("translated ports %r are not a range of 1..65535" % (rule.to_ports,))
    negated = tuple(rule.negated or ())
    if negated != tuple(name for name in NEGATABLE if name in negated):
        problems.append("negated %r is not a tuple of %s, in that order" % (negated, ", ".join(NEGATABLE)))
    for name in negated:
        if name in NEGATABLE and getattr(rule, name) in (None, ()):
            problems.append("negated %s, but the rule does not match it" % name)
    flags = tuple(rule.flags or ())
    if flags != tuple(flag for flag in FLAGS if flag in flags):
        problems.append("flags %r are not a tuple of %s, in that order" % (flags, ", ".join(FLAGS)))
    if rule.comment is not None and not (isinstance(rule.comment, str) and 0 < len(rule.comment.encode("utf-8")) <= MAX_COMMENT
                                         and "\n" not in rule.comment and "\0" not in rule.comment):
        problems.append("comment %r is not one line of 1..%d bytes" % (rule.comment, MAX_COMMENT))
    if rule.dst_local not in (None, True, False):
        problems.append("dst_local %r is not True, False or None" % (rule.dst_local,))
    if rule.kind in EXEMPTIONS:
        if rule.to_addresses is not None or rule.to_ports is not None or flags:
            problems.append("an exemption translates nothing: no addresses, ports or flags")
        return problems
    if rule.kind in ("masquerade", "redirect"):
        if rule.to_addresses is not None:
            problems.append("%s takes the interface's address, not an address range" % rule.kind)
    elif rule.to_addresses is None:
        problems.append("%s needs an address range to translate to" % rule.kind)
    else:
        try:
            first, last = (ipaddress.ip_address(a) for a in rule.to_addresses)
            if first.version != _version(rule.family) or last.version != first.version:
                problems.append("addresses %s-%s are not %s" % (first, last, rule.family))
            elif first > last:
                problems.append("address range %s-%s is reversed" % (first, last))
            elif (str(first), str(last)) != tuple(rule.to_addresses):
                problems.append("address range %r is not written canonically" % (rule.to_addresses,))
        except (TypeError, ValueError) as exc:
            problems.append("address range %r: %s" % (rule.to_addresses, exc))
    return problems


def _ports_ok(ranges):
    return all(
        isinstance(a, int) and isinstance(b, int) and 0 <= a <= b <= 65535 for a, b in ranges
    )


def canonical(rules):
    """Rules in the one order both implementations give back.

    Only the relative order of rules in the same hook and family is significant (iptables keeps
    families in separate tables, and PREROUTING/POSTROUTING are separate chains), so a stable
    sort on (hook, family) loses nothing and makes gathered documents comparable.
    """
    return sorted(rules, key=lambda r: (HOOKS.index(HOOK_OF_KIND[r.kind]), FAMILIES.index(r.family)))


def by_hook(rules, family):
    """The family's rules split by hook, in order: {"prerouting": [...], "postrouting": [...]}."""
    out = dict((hook, []) for hook in HOOKS)
    for rule in rules:
        if rule.family == family:
            out[HOOK_OF_KIND[rule.kind]].append(rule)
    return out


# ---------------------------------------------------------------------------------------------
# Rule -> policy


def _port_number(first, last):
    out = {"start-port-number": first}
    if last != first:
        out["end-port-number"] = last
    return out


def _range_prefixes(first, last):
    return [str(net) for net in ipaddress.summarize_address_range(
        ipaddress.ip_address(first), ipaddress.ip_address(last))]


def _any_prefix(family):
    return "0.0.0.0/0" if family == "ipv4" else "::/0"


def rule_to_policy(rule, index):
    """One rule as one ietf-nat policy; `index` (1-based) is its id and its rule-order."""
    problems = rule_problems(rule)
    if problems:
        raise ValueError("rule %d cannot be written: %s" % (index, "; ".join(problems)))
    negated = set(rule.negated)
    policy = {"id": index, NS + "rule-order": index, NS + "address-family": rule.family}
    protos = protocols(rule)
    if protos:
        policy["transport-protocols"] = [_protocol_entry(proto) for proto in protos]
    if rule.src is not None:
        prefixes = match_prefixes(rule.src)
        if "src" in negated:
            policy[NS + "excluded-source"] = prefixes
        else:
            policy["subscriber-match"] = [{"match-id": i, "subnet": prefix} for i, prefix in enumerate(prefixes, 1)]
    for key, name in (("in-interface", "in_role"), ("out-interface", "out_role")):
        role = getattr(rule, name)
        if role is not None:
            policy[NS + ("excluded-" + key if name in negated else key)] = role
    if rule.dports:
        key = "excluded-destination-port" if "dports" in negated else "destination-port"
        policy[NS + key] = [_port_number(a, b) for a, b in rule.dports]
    if rule.flags:
        policy[NS + "nat-flags"] = " ".join(rule.flags)
    if rule.comment is not None:
        policy[NS + "comment"] = rule.comment
    if rule.dst_local is not None:
        policy[NS + "destination-local"] = rule.dst_local

    # A destination NAT rule names the destination it translates in dst-out-ip-pool, as
    # ietf-nat does, when that is one prefix; any other destination match goes in our members.
    pooled = rule.kind == "dnat" and (rule.dst is None or (isinstance(rule.dst, str) and "dst" not in negated))
    if rule.dst is not None and not pooled:
        if "dst" in negated:
            policy[NS + "excluded-destination"] = match_prefixes(rule.dst)
        elif isinstance(rule.dst, str):
            policy[NS + "destination-prefix"] = rule.dst
        else:
            policy[NS + "destination-address"] = match_prefixes(rule.dst)
    if HOOK_OF_KIND[rule.kind] == "prerouting":
        policy["dst-nat-enable"] = True
    if rule.kind in EXEMPTIONS:
        policy[NS + "exempt"] = True
        return policy
    if rule.kind == "dnat":
        outer = rule.dst if pooled and rule.dst is not None else _any_prefix(rule.family)
        policy["dst-ip-address-pool"] = [
            {"pool-id": i, "dst-in-ip-pool": prefix, "dst-out-ip-pool": outer}
            for i, prefix in enumerate(_range_prefixes(*rule.to_addresses), 1)
        ]
    if rule.kind == "redirect":
        policy[NS + "redirect"] = True
    if rule.kind in ("dnat", "redirect"):
        if rule.to_ports is not None:
            policy[NS + "translated-port"] = _port_number(*rule.to_ports)
        return policy

    if rule.kind == "masquerade":
        policy[NS + "masquerade"] = True
    elif rule.family == "ipv4":
        policy["external-ip-address-pool"] = [
            {"pool-id": i, "external-ip-pool": prefix}
            for i, prefix in enumerate(_range_prefixes(*rule.to_addresses), 1)
        ]
    else:
        policy[NS + "external-ipv6-address-pool"] = [
            {"pool-id": i, "external-ipv6-pool": prefix}
            for i, prefix in enumerate(_range_prefixes(*rule.to_addresses), 1)
        ]
    if rule.to_ports is not None:
        policy["port-set-restrict"] = _port_number(*rule.to_ports)
    return policy


def _protocol_entry(proto):
    entry = {"protocol-id": proto}
    if proto in PROTOCOL_NAMES:
        entry["protocol-name"] = PROTOCOL_NAMES[proto].upper()
    return entry


def to_policy(rules):
    """The document's policy list for these rules, in the order given."""
    return [rule_to_policy(rule, i) for i, rule in enumerate(rules, 1)]


# ---------------------------------------------------------------------------------------------
# Policy -> rule

# Members of a policy this model reads. Any other ietf-nat member (timers, quotas, ALGs, ...)
# asks for behaviour the rules cannot carry, so it is an error rather than silently dropped.
_POLICY_KEYS = frozenset([
    "id", "transport-protocols", "subscriber-match", "external-ip-address-pool",
    "port-set-restrict", "dst-nat-enable", "dst-ip-address-pool",
    NS + "rule-order", NS + "address-family", NS + "masquerade", NS + "in-interface",
    NS + "out-interface", NS + "destination-prefix", NS + "destination-port",
    NS + "translated-port", NS + "external-ipv6-address-pool",
    NS + "exempt", NS + "redirect", NS + "nat-flags", NS + "excluded-source", NS + "destination-address",
    NS + "excluded-destination", NS + "excluded-destination-port", NS + "excluded-in-interface",
    NS + "excluded-out-interface", NS + "comment", NS + "destination-local",
])


class _Reader(object):
    """Reads members of one JSON object, raising ModelError with their path."""

    def __init__(self, obj, path):
        if not isinstance(obj, dict):
            raise ModelError(path, "expected an object, got %s" % type(obj).__name__)
        self.obj = obj
        self.path = path

    def at(self, key):
        return "%s/%s" % (self.path, key)

    def get(self, key, kind, default=None):
        if key not in self.obj:
            return default
        value = self.obj[key]
        if kind is int and isinstance(value, bool):
            raise ModelError(self.at(key), "expected an integer, got a boolean")
        if not isinstance(value, kind):
            raise ModelError(self.at(key), "expected %s, got %r" % (_kind_name(kind), value))
        return value

    def require(self, key, kind):
        if key not in self.obj:
            raise ModelError(self.at(key), "missing")
        return self.get(key, kind)

    def items(self, key):
        """Readers for the entries of a list member ([] when absent)."""
        entries = self.get(key, list, [])
        return [_Reader(entry, "%s[%d]" % (self.at(key), i)) for i, entry in enumerate(entries)]


def _kind_name(kind):
    names = {int: "an integer", str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    return names.get(kind, str(kind))


def _read_port_number(reader):
    first = reader.require("start-port-number", int)
    last = reader.get("end-port-number", int, first)
    for key, value in (("start-port-number", first), ("end-port-number", last)):
        if not 0 <= value <= 65535:
            raise ModelError(reader.at(key), "%d is not a port number" % value)
    if last < first:
        raise ModelError(reader.at("end-port-number"), "smaller than start-port-number")
    return (first, last)


def _read_prefix(reader, key, family):
    text = reader.require(key, str)
    try:
        return normalize_prefix(text, family)
    except ValueError as exc:
        raise ModelError(reader.at(key), str(exc))


def _read_pool(readers, key, family, path):
    """A pool's prefixes as one (first, last) range; they must cover one contiguous range."""
    if not readers:
        raise ModelError(path, "an address pool is needed")
    nets = []
    for reader in readers:
        reader.require("pool-id", int)
        nets.append((ipaddress.ip_network(_read_prefix(reader, key, family)), reader.at(key)))
    nets.sort(key=lambda item: item[0].network_address)
    for (prev, dummy), (net, where) in zip(nets, nets[1:]):
        if int(net.network_address) != int(prev.broadcast_address) + 1:
            raise ModelError(
                where, "the pool is not one contiguous address range (%s does not follow %s)"
                % (net, prev))
    return (str(nets[0][0].network_address), str(nets[-1][0].broadcast_address))


def _read_prefix_list(reader, key, family):
    """A leaf-list of prefixes as the canonical match value, or None when absent."""
    values = reader.get(key, list)
    if values is None:
        return None
    if not values:
        raise ModelError(reader.at(key), "an empty list matches nothing")
    ranges = []
    for i, text in enumerate(values):
        where = "%s[%d]" % (reader.at(key), i)
        if not isinstance(text, str):
            raise ModelError(where, "expected a string, got %r" % (text,))
        try:
            ranges.extend(match_ranges(normalize_prefix(text, family)))
        except ValueError as exc:
            raise ModelError(where, str(exc))
    return address_match(ranges, family)


def _one_of(r, matches, what):
    """The one (value, negated) given among [(key, value, negated)], or (None, False)."""
    given = [(key, value, negated) for key, value, negated in matches if value not in (None, ())]
    if len(given) > 1:
        raise ModelError(r.at(given[1][0]), "a rule matches %s once: %s is given too" % (what, given[0][0]))
    if not given:
        return None, False
    return given[0][1], given[0][2]


def policy_to_rule(policy, path="policy[0]"):
    """The rule one policy describes. Raises ModelError naming the offending member."""
    r = _Reader(policy, path)
    for key in sorted(policy):
        if key not in _POLICY_KEYS:
            raise ModelError(r.at(key), "not supported by the NAT rules model")
    r.require("id", int)
    family = r.require(NS + "address-family", str)
    if family not in FAMILIES:
        raise ModelError(r.at(NS + "address-family"), "must be one of %s" % ", ".join(FAMILIES))
    negated = set()

    numbers = []
    for entry in r.items("transport-protocols"):
        number = entry.require("protocol-id", int)
        if not 0 <= number <= 255:
            raise ModelError(entry.at("protocol-id"), "%d is not an IP protocol number" % number)
        if number in numbers:
            raise ModelError(entry.at("protocol-id"), "protocol %d is listed twice" % number)
        numbers.append(number)
    proto = protocol_match(numbers)

    subscribers = []
    for entry in r.items("subscriber-match"):
        entry.require("match-id", int)
        subscribers.append(_read_prefix(entry, "subnet", family))
    positive = address_match([rng for prefix in subscribers for rng in match_ranges(prefix)], family) \
        if subscribers else None
    src, src_negated = _one_of(r, [("subscriber-match", positive, False),
                                   (NS + "excluded-source", _read_prefix_list(r, NS + "excluded-source", family), True)],
                               "its source")
    if src_negated:
        negated.add("src")

    roles = {}
    for key, name in (("in-interface", "in_role"), ("out-interface", "out_role")):
        found = []
        for member, neg in ((NS + key, False), (NS + "excluded-" + key, True)):
            role = r.get(member, str)
            if role is not None and role not in ROLES:
                raise ModelError(r.at(member), "must be one of %s" % ", ".join(ROLES))
            found.append((member, role, neg))
        roles[name], neg = _one_of(r, found, "the %s" % key)
        if neg:
            negated.add(name)

    found = []
    for member, neg in ((NS + "destination-port", False), (NS + "excluded-destination-port", True)):
        found.append((member, merge_port_ranges(_read_port_number(entry) for entry in r.items(member)), neg))
    dports, neg = _one_of(r, found, "its destination port")
    dports = dports or ()
    if neg:
        negated.add("dports")

    flags = ()
    text = r.get(NS + "nat-flags", str)
    if text is not None:
        names = text.split()
        unknown = [name for name in names if name not in FLAGS]
        if unknown or len(set(names)) != len(names):
            raise ModelError(r.at(NS + "nat-flags"), "flags are %s, once each" % ", ".join(FLAGS))
        flags = tuple(flag for flag in FLAGS if flag in names)

    dnat = r.get("dst-nat-enable", bool, False)
    masquerade = r.get(NS + "masquerade", bool, False)
    exempt = r.get(NS + "exempt", bool, False)
    redirect = r.get(NS + "redirect", bool, False)
    v4_pool = r.items("external-ip-address-pool")
    v6_pool = r.items(NS + "external-ipv6-address-pool")
    dst_pool = r.items("dst-ip-address-pool")
    to_addresses = None
    to_ports = None

    dst, dst_negated = _one_of(r, [
        (NS + "destination-prefix", _read_prefix(r, NS + "destination-prefix", family)
         if NS + "destination-prefix" in policy else None, False),
        (NS + "destination-address", _read_prefix_list(r, NS + "destination-address", family), False),
        (NS + "excluded-destination", _read_prefix_list(r, NS + "excluded-destination", family), True),
    ], "its destination")

    if exempt:
        for key in ("external-ip-address-pool", NS + "external-ipv6-address-pool", "dst-ip-address-pool",
                    "port-set-restrict", NS + "translated-port"):
            if key in policy:
                raise ModelError(r.at(key), "an exemption (%sexempt) translates nothing" % NS)
        for key, value in ((NS + "masquerade", masquerade), (NS + "redirect", redirect)):
            if value:
                raise ModelError(r.at(key), "an exemption (%sexempt) translates nothing" % NS)
        kind = "no-dnat" if dnat else "no-snat"
    elif dnat:
        for key in ("external-ip-address-pool", NS + "external-ipv6-address-pool",
                    "port-set-restrict", NS + "masquerade"):
            if key in policy:
                raise ModelError(r.at(key), "not allowed in a destination NAT rule")
        if redirect:
            if "dst-ip-address-pool" in policy:
                raise ModelError(r.at("dst-ip-address-pool"), "a redirect has no address pool")
            kind = "redirect"
        else:
            if NS + "destination-prefix" in policy:
                raise ModelError(r.at(NS + "destination-prefix"), "not allowed in a destination NAT rule")
            kind = "dnat"
            outer = set()
            for entry in dst_pool:
                entry.require("pool-id", int)
                outer.add(_read_prefix(entry, "dst-out-ip-pool", family))
                entry.require("dst-in-ip-pool", str)
            if len(outer) > 1:
                raise ModelError(r.at("dst-ip-address-pool"),
                                 "all entries of a rule must translate the same dst-out-ip-pool")
            to_addresses = _read_pool(dst_pool, "dst-in-ip-pool", family, r.at("dst-ip-address-pool"))
            pooled = outer.pop()
            if pooled != _any_prefix(family):
                if dst is not None:
                    raise ModelError(r.at("dst-ip-address-pool"),
                                     "a rule matches its destination once: dst-out-ip-pool is not %s"
                                     % _any_prefix(family))
                dst = pooled
        if NS + "translated-port" in policy:
            to_ports = _read_port_number(_Reader(policy[NS + "translated-port"], r.at(NS + "translated-port")))
    else:
        if redirect:
            raise ModelError(r.at(NS + "redirect"), "a redirect is destination NAT (dst-nat-enable true)")
        for key in ("dst-ip-address-pool", NS + "translated-port"):
            if key in policy:
                raise ModelError(r.at(key), "only a destination NAT rule (dst-nat-enable true) has it")
        if masquerade:
            for key in ("external-ip-address-pool", NS + "external-ipv6-address-pool"):
                if key in policy:
                    raise ModelError(r.at(key), "a masquerade rule has no address pool")
            kind, to_addresses = "masquerade", None
        else:
            kind = "snat"
            if family == "ipv4":
                if v6_pool:
                    raise ModelError(r.at(NS + "external-ipv6-address-pool"), "not allowed in an ipv4 rule")
                to_addresses = _read_pool(v4_pool, "external-ip-pool", family, r.at("external-ip-address-pool"))
            else:
                if v4_pool:
                    raise ModelError(r.at("external-ip-address-pool"),
                                     "ietf-nat's pool is IPv4 only: use %sexternal-ipv6-address-pool" % NS)
                to_addresses = _read_pool(v6_pool, "external-ipv6-pool", family,
                                          r.at(NS + "external-ipv6-address-pool"))
        if "port-set-restrict" in policy:
            restrict = _Reader(policy["port-set-restrict"], r.at("port-set-restrict"))
            for key in ("psid-offset", "psid-len", "psid"):
                if key in restrict.obj:
                    raise ModelError(restrict.at(key), "only the port-range case of port-set is supported")
            to_ports = _read_port_number(restrict)
    if dst_negated:
        negated.add("dst")

    rule = NatRule(kind, family, roles["in_role"], roles["out_role"], src, dst, proto,
                   dports, to_addresses, to_ports, tuple(n for n in NEGATABLE if n in negated), flags,
                   r.get(NS + "comment", str), r.get(NS + "destination-local", bool))
    problems = rule_problems(rule)
    if problems:
        raise ModelError(path, "; ".join(problems))
    return rule


def from_policy(policies, path="policy"):
    """Rules of a policy list, in rule-order (then id) order."""
    if not isinstance(policies, list):
        raise ModelError(path, "expected a list of policies")
    keyed = []
    seen_ids = {}
    seen_orders = {}
    for i, policy in enumerate(policies):
        where = "%s[%d]" % (path, i)
        if is_alg_policy(policy):
            continue  # ALG configuration: algs_of() reads it
        rule = policy_to_rule(policy, where)
        pid = policy["id"]
        order = policy.get(NS + "rule-order", pid)
        if pid in seen_ids:
            raise ModelError(where + "/id", "id %d repeats %s" % (pid, seen_ids[pid]))
        if order in seen_orders:
            raise ModelError(where + "/" + NS + "rule-order", "order %d repeats %s" % (order, seen_orders[order]))
        seen_ids[pid] = where
        seen_orders[order] = where
        keyed.append((order, pid, rule))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [item[2] for item in keyed]


def policies_of(config):
    """The policy list and its JSON path, from a whole document or a bare policy list."""
    if isinstance(config, list):
        return config, "policy"
    if not isinstance(config, dict):
        raise ModelError("", "expected a document or a policy list")
    if "policy" in config and "ietf-nat:nat" not in config:
        return config["policy"], "policy"
    try:
        instances = config["ietf-nat:nat"]["instances"]["instance"]
    except (KeyError, TypeError):
        raise ModelError("/ietf-nat:nat/instances/instance", "missing")
    if not isinstance(instances, list) or len(instances) != 1:
        raise ModelError("/ietf-nat:nat/instances/instance", "expected exactly one NAT instance")
    return instances[0].get("policy", []), "/ietf-nat:nat/instances/instance[0]/policy"


def rules_of(config):
    """Rules of a document or policy list, in the canonical order."""
    policies, path = policies_of(config)
    return canonical(from_policy(policies, path))


# The members of a policy that holds ALG configuration only (RFC 8512 `algs`, `all-algs-enable`):
# the translation rules are other policies, so either side can hold each without the other.
_ALG_POLICY_KEYS = frozenset(("id", "algs", "all-algs-enable"))


def is_alg_policy(policy):
    return isinstance(policy, dict) and "algs" in policy and _ALG_POLICY_KEYS.issuperset(policy)


def algs_of(config):
    """(AlgRules, refused) of the ALG policies of a document or policy list (see alg_model)."""
    policies, dummy = policies_of(config)
    rules, refused = [], []
    for policy in policies if isinstance(policies, list) else ():
        if is_alg_policy(policy):
            found, bad = alg_model.algs_to_rules(policy.get("algs"), policy.get("all-algs-enable"))
            rules.extend(rule for rule in found if rule.name not in set(r.name for r in rules))
            refused.extend(bad)
    return rules, refused


def alg_policy(rules, policy_id):
    """The policy entry holding these AlgRules (RFC 8512 `algs`)."""
    return {"id": policy_id, "algs": alg_model.rules_to_algs(rules)}
