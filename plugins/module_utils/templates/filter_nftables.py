# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stateful firewall in nftables: our filter table as libnftables JSON, and the model.

Our firewall is the table `inet nfstate_filter`: base chains forward / input / output with their
policy, the rules, named sets (timeouts, per-element counters), named counters and quotas. It is
read from a JSON listing (`nft -j list table inet nfstate_filter`) and written as JSON commands,
except the set elements: measured on nft 1.0.6, JSON input silently drops an element's counter
values (and JSON listings give its expiry in whole seconds), while the text syntax keeps both, so
elements are read from the text listing when it is given and written as an `nft -f` text script.

Everything here is pure: data in, data out. The caller runs the commands (NftJson of
nat_nftables runs JSON; `nft -f -` the element script), the JSON first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import math
import re
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    CHAINS, CT_STATES, DEFAULT_SET_SIZES, ICMP_OF_FAMILY, NOT_CARRIED_LIMIT, PORT_PROTOCOLS, Chain, Counter, Firewall,
    FilterRule, FirewallSet, Limit, NotCarried, Quota, SetElement, SetUpdate, Unsupported, canonical,
    firewall_problems, normalize_address, normalize_prefix, refuse_unsupported, rule_problems, set_size, summary,
)

TABLE_FAMILY = "inet"
TABLE_NAME = "nfstate_filter"
CHAIN_PRIORITY = 0
SET_TYPES = {"ipv4_addr": "ipv4", "ipv6_addr": "ipv6"}
TYPE_OF_FAMILY = dict((family, name) for name, family in SET_TYPES.items())
PAYLOAD_FAMILY = {"ip": "ipv4", "ip6": "ipv6"}
PAYLOAD_OF_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "gre": 47, "esp": 50,
                    "ah": 51, "sctp": 132, "udplite": 136, "dccp": 33}
PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp"}
# The ICMP type names nft lists (it lists names, not numbers, for the types it knows).
ICMP_TYPES = {
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5, "echo-request": 8,
    "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11, "parameter-problem": 12,
    "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15, "info-reply": 16,
    "address-mask-request": 17, "address-mask-reply": 18,
}
ICMPV6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
    "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
    "mld-listener-done": 132, "nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
    "nd-neighbor-advert": 136, "nd-redirect": 137, "mld2-listener-report": 143,
}

# What the host holds of ours.
#   firewall     Firewall (canonical), with what cannot move in its not_carried
#   unsupported  [{"item": text, "reason": text}]: rules and objects the model cannot express
#   exists       our table exists
NftFilter = namedtuple("NftFilter", ["firewall", "unsupported", "exists"])


class RenderError(ValueError):
    """The firewall holds something nftables cannot be given; the message names it."""


# ---------------------------------------------------------------------------------------------
# Parsing: the text listing (elements)

_DURATION = re.compile(r"(\d+)(ms|d|h|m|s)")
_UNIT_MS = {"d": 86400000, "h": 3600000, "m": 60000, "s": 1000, "ms": 1}


def parse_duration(text):
    """nft's duration text ("1h2m3s4ms", "30s") -> seconds (float); ValueError otherwise."""
    pos, total = 0, 0
    for found in _DURATION.finditer(text):
        if found.start() != pos:
            break
        total += int(found.group(1)) * _UNIT_MS[found.group(2)]
        pos = found.end()
    if pos != len(text) or not text:
        raise ValueError("not an nft duration: %r" % text)
    return total / 1000.0


def duration_text(seconds):
    """Seconds -> nft's duration text, to the millisecond ("1799s500ms")."""
    millis = int(round(seconds * 1000))
    whole, rest = divmod(millis, 1000)
    if whole and rest:
        return "%ds%dms" % (whole, rest)
    return "%ds" % whole if whole else "%dms" % rest


def parse_elements_text(text):
    """{set name: {address: SetElement}} from the text listing of our table or of its sets.

    The text keeps what the JSON listing loses: expiry to the millisecond and, per nft's own
    advice, the element counters. Only plain address elements are read; a set whose elements
    are anything else (ranges, concatenations) is left out, and parse_ruleset reports it.
    """
    out = {}
    current = None
    collecting = None
    for line in text.splitlines():
        stripped = line.strip()
        found = re.match(r"set (\S+) \{$", stripped)
        if found:
            current = found.group(1)
            continue
        if current is None:
            continue
        if collecting is None and stripped.startswith("elements = {"):
            collecting = [stripped[len("elements = {"):]]
        elif collecting is not None:
            collecting.append(stripped)
        if collecting is not None and collecting[-1].endswith("}"):
            body = " ".join(collecting)[:-1]
            collecting = None
            elements = {}
            try:
                for item in body.split(","):
                    if item.strip():
                        element = _parse_element_text(item.split())
                        elements[element.address] = element
            except ValueError:
                elements = None
            if elements is not None:
                out[current] = elements
        elif collecting is None and stripped == "}":
            current = None
    return out


def _parse_element_text(tokens):
    address = normalize_address(tokens[0])
    fields = {"timeout": None, "remaining": None, "packets": None, "bytes": None}
    i = 1
    while i < len(tokens):
        word = tokens[i]
        if word == "counter" and tokens[i + 1:i + 2] == ["packets"] and tokens[i + 3:i + 4] == ["bytes"]:
            fields["packets"], fields["bytes"] = int(tokens[i + 2]), int(tokens[i + 4])
            i += 5
        elif word == "timeout":
            fields["timeout"] = int(round(parse_duration(tokens[i + 1])))
            i += 2
        elif word == "expires":
            fields["remaining"] = parse_duration(tokens[i + 1])
            i += 2
        else:
            raise ValueError("element word %r" % word)
    return SetElement(address, fields["timeout"], fields["remaining"], fields["packets"], fields["bytes"])


# ---------------------------------------------------------------------------------------------
# Parsing: the JSON listing


def _objects(ruleset, kind):
    items = ruleset.get("nftables", []) if isinstance(ruleset, dict) else []
    for item in items:
        if isinstance(item, dict) and kind in item and isinstance(item[kind], dict):
            obj = item[kind]
            if (obj.get("family"), obj.get("table", obj.get("name") if kind == "table" else None)) == (TABLE_FAMILY, TABLE_NAME):
                yield obj


def _text(obj):
    return json.dumps(obj, sort_keys=True)


def parse_ruleset(ruleset, interfaces, elements_text=None, skip_unsupported=False):
    """Our table in a libnftables JSON listing -> NftFilter.

    `interfaces` maps role -> device name. `elements_text` is the text listing of our table
    (`nft list table inet nfstate_filter`): when given, set elements are taken from it.
    A rule or object the model cannot express raises Unsupported naming it; with
    skip_unsupported it is left out and listed in `unsupported` instead.
    """
    roles = dict((dev, role) for role, dev in (interfaces or {}).items())
    exists = any(True for dummy in _objects(ruleset, "table"))
    unsupported = []
    not_carried = []
    text_elements = parse_elements_text(elements_text) if elements_text else {}

    sets = []
    for obj in _objects(ruleset, "set"):
        try:
            sets.append(_parse_set(obj, text_elements.get(obj.get("name"))))
        except Unsupported as exc:
            unsupported.append({"item": "set %s" % obj.get("name"), "reason": exc.reason})
    known_sets = dict((s.name, s) for s in sets)
    counters = [Counter(o["name"], int(o.get("packets", 0)), int(o.get("bytes", 0))) for o in _objects(ruleset, "counter")]
    quotas = [Quota(o["name"], int(o["bytes"]), int(o.get("used", 0)), "over" if o.get("inv") else "until")
              for o in _objects(ruleset, "quota")]

    chains = []
    for obj in _objects(ruleset, "chain"):
        name = obj.get("name")
        if name in CHAINS and obj.get("type") == "filter" and obj.get("hook") == name and "policy" in obj:
            if obj.get("policy") not in ("accept", "drop"):
                unsupported.append({"item": "chain %s" % name, "reason": "policy %r" % obj.get("policy")})
            chains.append(Chain(name, obj.get("policy")))
        else:
            unsupported.append({"item": "chain %s" % name, "reason": "only base filter chains forward, input and output "
                                                                     "(named after their hook) are modelled"})
    chain_names = set(c.name for c in chains)
    rules = []
    for obj in _objects(ruleset, "rule"):
        if obj.get("chain") not in chain_names:
            continue
        try:
            rule = parse_rule(obj.get("expr", []), obj["chain"], roles)
            for name in [rule.src_set, rule.dst_set] + [u.set for u in rule.set_updates]:
                if name is not None and name not in known_sets:
                    raise Unsupported("rule", "set %s is not modelled" % name)
                if name is not None and rule.family is None:
                    rule = rule._replace(family=known_sets[name].family)
            problems = rule_problems(rule)
            if problems:
                raise Unsupported("rule", "; ".join(problems))
        except Unsupported as exc:
            unsupported.append({"item": _rule_text(obj), "reason": exc.reason})
            continue
        rules.append(rule)
        if rule.limit is not None:
            not_carried.append(NotCarried("%s rule %d: limit rate %d/%s burst %d packets" % (
                rule.chain, sum(1 for r in rules if r.chain == rule.chain), rule.limit.rate, rule.limit.per,
                rule.limit.burst), NOT_CARRIED_LIMIT))
    firewall = canonical(Firewall(tuple(chains), tuple(rules), tuple(sets), tuple(counters), tuple(quotas), (),
                                  tuple(not_carried)))
    problems = firewall_problems(firewall)
    if problems:
        unsupported.extend({"item": "table inet %s" % TABLE_NAME, "reason": p} for p in problems)
    return NftFilter(firewall, refuse_unsupported(unsupported, skip_unsupported), exists)


def _rule_text(obj):
    return "rule %s %s: %s" % (obj.get("chain"), obj.get("handle", "?"), _text(obj.get("expr", [])))


def _parse_set(obj, from_text):
    family = SET_TYPES.get(obj.get("type"))
    if family is None:
        raise Unsupported("set", "type %r: only ipv4_addr and ipv6_addr sets are modelled" % (obj.get("type"),))
    flags = set(obj.get("flags", []))
    if flags - {"timeout", "dynamic", "constant"}:
        raise Unsupported("set", "flags %s are not modelled" % ", ".join(sorted(flags - {"timeout", "dynamic", "constant"})))
    stmts = obj.get("stmt", [])
    counters = any("counter" in s for s in stmts)
    if any("counter" not in s for s in stmts):
        raise Unsupported("set", "element statements other than counter are not modelled")
    timeout = obj.get("timeout")
    if from_text is not None:
        elements = tuple(from_text.values())
    else:
        elements = tuple(_parse_element_json(e) for e in obj.get("elem", []))
    if timeout is None and any(e.remaining is not None for e in elements) and "timeout" not in flags:
        raise Unsupported("set", "elements expire in a set without the timeout flag")
    size = obj.get("size")
    return FirewallSet(obj["name"], family, int(timeout) if timeout is not None else None, counters, elements,
                       None if size in DEFAULT_SET_SIZES else size)


def _parse_element_json(item):
    if isinstance(item, str):
        return SetElement(normalize_address(item))
    body = item.get("elem") if isinstance(item, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("val"), str):
        raise Unsupported("set", "element %s is not an address" % _text(item))
    counter = body.get("counter") or {}
    return SetElement(normalize_address(body["val"]), body.get("timeout"),
                      float(body["expires"]) if "expires" in body else None,
                      counter.get("packets"), counter.get("bytes"))


def _payload(expr):
    body = expr.get("payload") if isinstance(expr, dict) else None
    if isinstance(body, dict):
        return body.get("protocol"), body.get("field")
    return None, None


def _meta(expr):
    body = expr.get("meta") if isinstance(expr, dict) else None
    return body.get("key") if isinstance(body, dict) else None


def _set_field(fields, key, value):
    if fields.get(key) not in (None, value):
        raise Unsupported("rule", "%s is matched twice" % key)
    fields[key] = value


def _port_range(value):
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "range" in value:
        first, last = value["range"]
        return (int(first), int(last))
    raise Unsupported("rule", "port match %s: one port or one range per rule" % _text(value))


def _protocol(value):
    if isinstance(value, int):
        return value
    number = PROTOCOL_NUMBERS.get(value)
    if number is None:
        raise Unsupported("rule", "protocol %r" % (value,))
    return number


def _set_name(value):
    if isinstance(value, str) and value.startswith("@"):
        return value[1:]
    return None


def parse_rule(exprs, chain, roles):
    """One rule's JSON statements -> FilterRule; Unsupported names what the model lacks."""
    fields = {"chain": chain}
    protos = set()
    verdict = None
    updates = []
    acted = False       # a counter or set statement was seen: the model runs them after every match
    for expr in exprs:
        if verdict is not None:
            raise Unsupported("rule", "statements after the verdict")
        if not isinstance(expr, dict) or len(expr) != 1:
            raise Unsupported("rule", "statement %s" % _text(expr))
        kind, body = next(iter(expr.items()))
        if acted and kind in ("match", "limit", "quota"):
            raise Unsupported("rule", "a counter or set statement before a match (it would count or add more packets)")
        acted = acted or kind in ("counter", "set")
        if kind == "match":
            _parse_match(body, fields, protos, roles)
        elif kind in ("accept", "drop"):
            verdict = kind
        elif kind == "reject":
            if body not in (None, {}):
                raise Unsupported("rule", "reject with %s (only the default reject is modelled)" % _text(body))
            verdict = "reject"
        elif kind == "counter":
            if not isinstance(body, str):
                raise Unsupported("rule", "an anonymous counter (a named counter is modelled)")
            _set_field(fields, "counter", body)
        elif kind == "quota":
            if not isinstance(body, str):
                raise Unsupported("rule", "an anonymous quota (a named quota is modelled)")
            _set_field(fields, "quota", body)
        elif kind == "limit":
            if not isinstance(body, dict) or body.get("inv") or body.get("rate_unit", "packets") != "packets":
                raise Unsupported("rule", "limit %s (a packet rate without `over` is modelled)" % _text(body))
            _set_field(fields, "limit", Limit(int(body["rate"]), body.get("per", "second"), int(body.get("burst", 5))))
        elif kind == "set":
            updates.append(_parse_set_statement(body, fields))
        elif kind == "ct count":
            raise Unsupported("rule", "ct count: connection counts are not modelled (no live value is readable either)")
        else:
            raise Unsupported("rule", "statement %s is not modelled" % kind)
    fields["set_updates"] = tuple(updates)
    fields["action"] = verdict or "continue"
    if protos:
        if len(protos) > 1:
            raise Unsupported("rule", "protocols %s matched together" % sorted(protos))
        fields["proto"] = protos.pop()
    return FilterRule(**fields)


def _parse_set_statement(body, fields):
    name = _set_name(body.get("set"))
    op = body.get("op")
    if name is None or op not in ("add", "update"):
        raise Unsupported("rule", "set statement %s" % _text(body))
    elem = body.get("elem")
    timeout = None
    if isinstance(elem, dict) and "elem" in elem:
        timeout = elem["elem"].get("timeout")
        if set(elem["elem"]) - {"val", "timeout"}:
            raise Unsupported("rule", "set statement %s" % _text(body))
        elem = elem["elem"]["val"]
    proto, field = _payload(elem)
    if proto not in PAYLOAD_FAMILY or field not in ("saddr", "daddr"):
        raise Unsupported("rule", "a set statement that writes anything but the packet's address")
    _set_field(fields, "family", PAYLOAD_FAMILY[proto])
    return SetUpdate(name, op, "source" if field == "saddr" else "destination", int(timeout) if timeout else None)


def _parse_match(body, fields, protos, roles):
    op, left, right = body.get("op"), body.get("left"), body.get("right")
    meta = _meta(left)
    proto, field = _payload(left)
    ct_key = left.get("ct", {}).get("key") if isinstance(left, dict) and isinstance(left.get("ct"), dict) else None
    if ct_key == "state" and op in ("==", "in"):
        values = right if isinstance(right, list) else right.get("set") if isinstance(right, dict) else [right]
        if not isinstance(values, list) or any(v not in CT_STATES for v in values):
            raise Unsupported("rule", "ct state %s" % _text(right))
        _set_field(fields, "ct_states", tuple(s for s in CT_STATES if s in values))
        return
    if op != "==":
        raise Unsupported("rule", "match with operator %r" % op)
    if meta in ("iifname", "oifname"):
        if right not in roles:
            raise Unsupported("rule", "interface %r has no role" % (right,))
        _set_field(fields, "in_role" if meta == "iifname" else "out_role", roles[right])
    elif meta == "nfproto":
        if right not in ("ipv4", "ipv6"):
            raise Unsupported("rule", "nfproto %r" % (right,))
        _set_field(fields, "family", right)
    elif meta == "l4proto":
        protos.add(_protocol(right))
    elif proto in PAYLOAD_FAMILY and field in ("saddr", "daddr"):
        family = PAYLOAD_FAMILY[proto]
        _set_field(fields, "family", family)
        name = _set_name(right)
        if name is not None:
            _set_field(fields, "src_set" if field == "saddr" else "dst_set", name)
        else:
            _set_field(fields, "src" if field == "saddr" else "dst", _prefix(right, family))
    elif (proto, field) in (("ip", "protocol"), ("ip6", "nexthdr")):
        _set_field(fields, "family", PAYLOAD_FAMILY[proto])
        protos.add(_protocol(right))
    elif proto in ("tcp", "udp") and field in ("sport", "dport"):
        protos.add(PROTOCOL_NUMBERS[proto])
        _set_field(fields, field, _port_range(right))
    elif proto in ("icmp", "icmpv6") and field in ("type", "code"):
        family = "ipv4" if proto == "icmp" else "ipv6"
        _set_field(fields, "family", family)
        protos.add(ICMP_OF_FAMILY[family])
        if field == "type":
            names = ICMP_TYPES if proto == "icmp" else ICMPV6_TYPES
            value = right if isinstance(right, int) else names.get(right)
            if value is None:
                raise Unsupported("rule", "icmp type %r" % (right,))
            _set_field(fields, "icmp_type", value)
        else:
            _set_field(fields, "icmp_code", int(right))
    else:
        raise Unsupported("rule", "match %s is not modelled" % _text(left))


def _prefix(value, family):
    if isinstance(value, str):
        return normalize_prefix(value, family) if "/" in value else str(ipaddress.ip_network(normalize_address(value, family)))
    if isinstance(value, dict) and isinstance(value.get("prefix"), dict):
        return normalize_prefix("%s/%s" % (value["prefix"]["addr"], value["prefix"]["len"]), family)
    raise Unsupported("rule", "address match %s: one address or prefix per rule" % _text(value))


# ---------------------------------------------------------------------------------------------
# Rendering


def _obj(**fields):
    out = {"family": TABLE_FAMILY, "table": TABLE_NAME}
    out.update(fields)
    return out


def _match(left, right):
    return {"match": {"op": "==", "left": left, "right": right}}


def _address_json(prefix):
    net = ipaddress.ip_network(prefix)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _port_json(ports):
    return ports[0] if ports[0] == ports[1] else {"range": list(ports)}


def rule_exprs(rule, interfaces):
    """libnftables JSON statements of one rule; RenderError naming what nftables lacks."""
    problems = rule_problems(rule)
    if problems:
        raise RenderError("; ".join(problems))
    if rule.recent is not None:
        raise RenderError("recent list %s: nftables has no recent lists (firewall_model.recent_as_sets turns them "
                          "into sets with a timeout where it can)" % rule.recent.name)
    exprs = []
    family = rule.family
    if family is not None:
        exprs.append(_match({"meta": {"key": "nfproto"}}, family))
    for key, role in (("iifname", rule.in_role), ("oifname", rule.out_role)):
        if role is not None:
            dev = (interfaces or {}).get(role)
            if not dev:
                raise RenderError("the %s role has no device in `interfaces`" % role)
            exprs.append(_match({"meta": {"key": key}}, dev))
    if rule.proto is not None:
        exprs.append(_match({"meta": {"key": "l4proto"}}, PROTOCOL_NAMES.get(rule.proto, rule.proto)))
    if family is not None:
        payload = PAYLOAD_OF_FAMILY[family]
        for field, prefix, set_name in (("saddr", rule.src, rule.src_set), ("daddr", rule.dst, rule.dst_set)):
            if prefix is not None:
                exprs.append(_match({"payload": {"protocol": payload, "field": field}}, _address_json(prefix)))
            if set_name is not None:
                exprs.append(_match({"payload": {"protocol": payload, "field": field}}, "@" + set_name))
    for field, ports in (("sport", rule.sport), ("dport", rule.dport)):
        if ports is not None:
            exprs.append(_match({"payload": {"protocol": PORT_PROTOCOLS[rule.proto], "field": field}}, _port_json(ports)))
    if rule.icmp_type is not None:
        proto = "icmp" if family == "ipv4" else "icmpv6"
        exprs.append(_match({"payload": {"protocol": proto, "field": "type"}}, rule.icmp_type))
        if rule.icmp_code is not None:
            exprs.append(_match({"payload": {"protocol": proto, "field": "code"}}, rule.icmp_code))
    if rule.ct_states:
        states = list(rule.ct_states)
        exprs.append({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states if len(states) > 1 else states[0]}})
    if rule.limit is not None:
        exprs.append({"limit": {"rate": rule.limit.rate, "per": rule.limit.per, "burst": rule.limit.burst}})
    if rule.quota is not None:
        exprs.append({"quota": rule.quota})
    if rule.counter is not None:
        exprs.append({"counter": rule.counter})
    for update in rule.set_updates:
        if family is None:
            raise RenderError("a set update needs the rule's address family")
        elem = {"payload": {"protocol": PAYLOAD_OF_FAMILY[family], "field": "saddr" if update.side == "source" else "daddr"}}
        if update.timeout is not None:
            elem = {"elem": {"val": elem, "timeout": update.timeout}}
        exprs.append({"set": {"op": update.op, "elem": elem, "set": "@" + update.set}})
    if rule.action != "continue":
        exprs.append({rule.action: None})
    return exprs


def render_commands(firewall, interfaces):
    """libnftables JSON commands that make our table hold exactly `firewall`, in one transaction
    (the table is created, deleted and created again: whatever it held goes), elements aside:
    render_elements() gives them, to run after these."""
    problems = firewall_problems(firewall)
    if problems:
        raise RenderError(summary(problems))
    if firewall.recent_lists:
        raise RenderError("recent lists %s: nftables has no recent lists (firewall_model.recent_as_sets turns them "
                          "into sets with a timeout where it can)" % ", ".join(r.name for r in firewall.recent_lists))
    table = {"family": TABLE_FAMILY, "name": TABLE_NAME}
    cmds = [{"metainfo": {"json_schema_version": 1}}, {"add": {"table": table}}, {"delete": {"table": table}},
            {"add": {"table": table}}]
    for fwset in firewall.sets:
        obj = _obj(name=fwset.name, type=TYPE_OF_FAMILY[fwset.family])
        # JSON input of nft 1.0.6 refuses the `dynamic` flag; rules that add to a set work without it.
        if fwset.timeout is not None or any(e.remaining is not None for e in fwset.elements):
            obj["flags"] = ["timeout"]
        if fwset.timeout is not None:
            obj["timeout"] = fwset.timeout
        if fwset.counters:
            obj["stmt"] = [{"counter": None}]
        if set_size(fwset) is not None:
            obj["size"] = set_size(fwset)
        cmds.append({"add": {"set": obj}})
    for counter in firewall.counters:
        cmds.append({"add": {"counter": _obj(name=counter.name, packets=counter.packets, bytes=counter.bytes)}})
    for quota in firewall.quotas:
        cmds.append({"add": {"quota": _obj(name=quota.name, bytes=quota.limit, used=quota.used, inv=quota.mode == "over")}})
    for chain in firewall.chains:
        cmds.append({"add": {"chain": _obj(name=chain.name, type="filter", hook=chain.name, prio=CHAIN_PRIORITY,
                                           policy=chain.policy)}})
    for index, rule in enumerate(firewall.rules, 1):
        try:
            exprs = rule_exprs(rule, interfaces)
        except RenderError as exc:
            raise RenderError("rule %d (%s): %s" % (index, rule.chain, exc))
        cmds.append({"add": {"rule": _obj(chain=rule.chain, expr=exprs)}})
    return {"nftables": cmds}


def render_elements(firewall):
    """The `nft -f` text script adding every set's elements with their remaining lifetime and
    counters ("" when there is none). Elements whose lifetime ran out are left out."""
    lines = []
    for fwset in firewall.sets:
        items = []
        for element in fwset.elements:
            words = [element.address]
            if fwset.counters and element.packets is not None:
                words.append("counter packets %d bytes %d" % (element.packets, element.bytes))
            if element.remaining is not None:
                if element.remaining < 0.001:
                    continue
                timeout = element.timeout or fwset.timeout or 0
                # A lifetime cannot be shorter than what remains of it.
                timeout = max(timeout, int(math.ceil(element.remaining)))
                if timeout != fwset.timeout:
                    words.append("timeout %ds" % timeout)
                words.append("expires %s" % duration_text(element.remaining))
            elif element.timeout is not None:
                words.append("timeout %ds" % element.timeout)
            items.append(" ".join(words))
        for start in range(0, len(items), 1000):
            lines.append("add element %s %s %s { %s }" % (TABLE_FAMILY, TABLE_NAME, fwset.name, ", ".join(items[start:start + 1000])))
    return "\n".join(lines) + ("\n" if lines else "")


def render_members(firewall, elements):
    """The `nft -f` script (one transaction) changing only members: `elements` is {set name:
    SetChange} (firewall_learned). A refreshed element is deleted and added with its new
    lifetime (adding an element that exists changes nothing); "" when nothing changes."""
    lines = []
    for fwset in firewall.sets:
        change = elements.get(fwset.name)
        if change is None:
            continue
        gone = list(change.removed) + [e.address for e in change.refreshed]
        if gone:
            lines.append("delete element %s %s %s { %s }" % (TABLE_FAMILY, TABLE_NAME, fwset.name, ", ".join(gone)))
        fresh = change.added + change.refreshed
        if fresh:
            lines.append(render_elements(Firewall(sets=(fwset._replace(elements=fresh),))).rstrip("\n"))
    return "\n".join(line for line in lines if line) + ("\n" if any(lines) else "")


def delete_commands():
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, {"delete": {"table": {"family": TABLE_FAMILY, "name": TABLE_NAME}}}]}


def list_command():
    return {"nftables": [{"list": {"table": {"family": TABLE_FAMILY, "name": TABLE_NAME}}}]}


def list_text_args():
    """nft's arguments for the text listing of our table (elements with counters and ms expiry)."""
    return ["list", "table", TABLE_FAMILY, TABLE_NAME]
