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

NS = "nfstate-nat-rules:"

KINDS = ("snat", "masquerade", "dnat")
FAMILIES = ("ipv4", "ipv6")
ROLES = ("inside", "outside")

# Which netfilter hook a kind of rule runs in: destination NAT before routing, source NAT after.
HOOK_OF_KIND = {"dnat": "prerouting", "snat": "postrouting", "masquerade": "postrouting"}
HOOKS = ("prerouting", "postrouting")

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
#   src, dst     matched prefixes as text ("192.0.2.0/24") or None
#   proto        matched IP protocol number or None (any)
#   dports       matched destination port ranges, a tuple of (first, last), sorted; () = any
#   to_addresses (first, last) address range translated to (snat, dnat) or None (masquerade)
#   to_ports     (first, last) port range translated to, or None (keep / kernel's choice)
NatRule = namedtuple(
    "NatRule",
    ["kind", "family", "in_role", "out_role", "src", "dst", "proto", "dports",
     "to_addresses", "to_ports"],
    defaults=(None, None, None, None, None, (), None, None),
)


class ModelError(ValueError):
    """A policy the rules model cannot read. `path` is the JSON path of the offending member."""

    def __init__(self, path, message):
        super(ModelError, self).__init__("%s: %s" % (path, message))
        self.path = path
        self.message = message


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
    merged = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return tuple(merged)


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
    if rule.kind == "dnat" and rule.out_role is not None:
        problems.append("destination NAT cannot match the outgoing interface (it runs before routing)")
    if rule.kind != "dnat" and rule.in_role is not None:
        problems.append("source NAT cannot match the incoming interface (it runs after routing)")
    for name in ("src", "dst"):
        value = getattr(rule, name)
        if value is not None:
            try:
                if normalize_prefix(value, rule.family) != value:
                    problems.append("%s %s is not written canonically" % (name, value))
            except ValueError as exc:
                problems.append("%s: %s" % (name, exc))
    if rule.proto is not None and not (isinstance(rule.proto, int) and 0 <= rule.proto <= 255):
        problems.append("protocol %r is not an IP protocol number" % (rule.proto,))
    if rule.dports:
        if rule.proto not in PORT_PROTOCOLS:
            problems.append("destination ports need a protocol with ports (tcp, udp, sctp, dccp, udplite)")
        if merge_port_ranges(rule.dports) != tuple(rule.dports) or not _ports_ok(rule.dports):
            problems.append("destination ports %r are not sorted, disjoint ranges of 0..65535" % (rule.dports,))
    if rule.to_ports is not None:
        if rule.proto not in PORT_PROTOCOLS:
            problems.append("a port translation needs a protocol with ports (tcp, udp, sctp, dccp, udplite)")
        if not _ports_ok([rule.to_ports]) or rule.to_ports[0] == 0:
            problems.append("translated ports %r are not a range of 1..65535" % (rule.to_ports,))
    if rule.kind == "masquerade":
        if rule.to_addresses is not None:
            problems.append("masquerade takes the interface's address, not an address range")
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
    policy = {"id": index, NS + "rule-order": index, NS + "address-family": rule.family}
    if rule.proto is not None:
        proto = {"protocol-id": rule.proto}
        if rule.proto in PROTOCOL_NAMES:
            proto["protocol-name"] = PROTOCOL_NAMES[rule.proto].upper()
        policy["transport-protocols"] = [proto]
    if rule.src is not None:
        policy["subscriber-match"] = [{"match-id": 1, "subnet": rule.src}]
    if rule.in_role is not None:
        policy[NS + "in-interface"] = rule.in_role
    if rule.out_role is not None:
        policy[NS + "out-interface"] = rule.out_role
    if rule.dports:
        policy[NS + "destination-port"] = [_port_number(a, b) for a, b in rule.dports]

    if rule.kind == "dnat":
        policy["dst-nat-enable"] = True
        outer = rule.dst if rule.dst is not None else _any_prefix(rule.family)
        policy["dst-ip-address-pool"] = [
            {"pool-id": i, "dst-in-ip-pool": prefix, "dst-out-ip-pool": outer}
            for i, prefix in enumerate(_range_prefixes(*rule.to_addresses), 1)
        ]
        if rule.to_ports is not None:
            policy[NS + "translated-port"] = _port_number(*rule.to_ports)
        return policy

    if rule.dst is not None:
        policy[NS + "destination-prefix"] = rule.dst
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

    proto = None
    protos = r.items("transport-protocols")
    if len(protos) > 1:
        raise ModelError(r.at("transport-protocols"), "a rule matches one protocol, not %d" % len(protos))
    if protos:
        proto = protos[0].require("protocol-id", int)
        if not 0 <= proto <= 255:
            raise ModelError(protos[0].at("protocol-id"), "%d is not an IP protocol number" % proto)

    src = None
    subscribers = r.items("subscriber-match")
    if len(subscribers) > 1:
        raise ModelError(r.at("subscriber-match"), "a rule matches one source prefix, not %d" % len(subscribers))
    if subscribers:
        subscribers[0].require("match-id", int)
        src = _read_prefix(subscribers[0], "subnet", family)

    roles = {}
    for key in ("in-interface", "out-interface"):
        role = r.get(NS + key, str)
        if role is not None and role not in ROLES:
            raise ModelError(r.at(NS + key), "must be one of %s" % ", ".join(ROLES))
        roles[key] = role

    dports = []
    for entry in r.items(NS + "destination-port"):
        dports.append(_read_port_number(entry))
    dports = merge_port_ranges(dports)

    dnat = r.get("dst-nat-enable", bool, False)
    masquerade = r.get(NS + "masquerade", bool, False)
    v4_pool = r.items("external-ip-address-pool")
    v6_pool = r.items(NS + "external-ipv6-address-pool")
    dst_pool = r.items("dst-ip-address-pool")
    dst = None
    to_ports = None

    if dnat:
        for key in ("external-ip-address-pool", NS + "external-ipv6-address-pool",
                    "port-set-restrict", NS + "masquerade", NS + "destination-prefix"):
            if key in policy:
                raise ModelError(r.at(key), "not allowed in a destination NAT rule")
        kind = "dnat"
        ranges = []
        outer = set()
        for entry in dst_pool:
            entry.require("pool-id", int)
            outer.add(_read_prefix(entry, "dst-out-ip-pool", family))
            entry.require("dst-in-ip-pool", str)
        if len(outer) > 1:
            raise ModelError(r.at("dst-ip-address-pool"),
                             "all entries of a rule must translate the same dst-out-ip-pool")
        to_addresses = _read_pool(dst_pool, "dst-in-ip-pool", family, r.at("dst-ip-address-pool"))
        dst = outer.pop()
        if dst == _any_prefix(family):
            dst = None
        if NS + "translated-port" in policy:
            to_ports = _read_port_number(_Reader(policy[NS + "translated-port"], r.at(NS + "translated-port")))
    else:
        for key in ("dst-ip-address-pool", NS + "translated-port"):
            if key in policy:
                raise ModelError(r.at(key), "only a destination NAT rule (dst-nat-enable true) has it")
        if NS + "destination-prefix" in policy:
            dst = _read_prefix(r, NS + "destination-prefix", family)
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

    rule = NatRule(kind, family, roles["in-interface"], roles["out-interface"], src, dst, proto,
                   dports, to_addresses, to_ports)
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
