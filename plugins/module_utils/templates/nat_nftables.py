# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NAT rules in nftables, through libnftables' JSON interface.

Our rules live in a table of our own, `inet nfstate_nat`, with one nat chain per hook, so the
host's other tables are never touched. Gathering can also read them (parse_ruleset with
include_foreign): a NAT written by hand keeps its rules in tables of its own. Rules are built and
read as libnftables JSON objects:
parse_ruleset() and render_commands() are pure; the nftables provider runs the commands.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import (
    FAMILIES, HOOK_OF_KIND, HOOKS, PORT_PROTOCOLS, NatRule, canonical, merge_port_ranges,
    normalize_address, normalize_prefix, protocol_number, rule_problems,
)

TABLE_FAMILY = "inet"
TABLE_NAME = "nfstate_nat"
# Chain name -> (hook, priority): the standard dstnat/srcnat priorities.
CHAINS = {"prerouting": ("prerouting", -100), "postrouting": ("postrouting", 100)}
FAMILY_OF_NFPROTO = {"ipv4": "ipv4", "ipv6": "ipv6"}
FAMILY_OF_PAYLOAD = {"ip": "ipv4", "ip6": "ipv6"}
PAYLOAD_OF_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}
PORT_PAYLOADS = dict((name, number) for number, name in PORT_PROTOCOLS.items())

# What the host holds of ours.
#   rules        NatRules, canonical order
#   unsupported  [{"rule": text, "reason": text}]
#   exists       our table exists
#   chains       names of our nat chains that exist with the right hook
NftTable = namedtuple("NftTable", ["rules", "unsupported", "exists", "chains"])


class RenderError(ValueError):
    """A rule the model holds but nftables cannot be given (e.g. a role without a device)."""


def installed(table):
    return table.exists and set(table.chains) == set(CHAINS)


# ---------------------------------------------------------------------------------------------
# Parsing

# Families whose nat chains see routed IPv4/IPv6 traffic, and the address family a table of each
# implies (an inet table's rules say theirs with their matches).
NAT_TABLE_FAMILIES = {"ip": "ipv4", "ip6": "ipv6", "inet": None}
# Named chain priorities, for listings that give the name instead of the number.
NAMED_PRIORITIES = {"dstnat": -100, "srcnat": 100, "filter": 0, "raw": -300, "mangle": -150, "security": 50}
# How deep jumps are followed; the kernel refuses more than 16 levels anyway.
MAX_JUMP_DEPTH = 16
HOST_TRAFFIC = "NAT of the host's own traffic is not modelled"


def parse_ruleset(ruleset, interfaces, include_foreign=False):
    """Our table's rules in a libnftables JSON listing ({"nftables": [...]}) -> NftTable.

    With include_foreign, the rules of every other nat chain hooked to prerouting or postrouting
    (tables of family ip, ip6 and inet, as `nft list ruleset` shows them) are read too, chain by
    chain in the order the kernel runs them, with the rules of the regular chains they jump to in
    the place of the jump: this is how a NAT written by hand in its own tables is gathered.
    """
    roles = dict((dev, role) for role, dev in (interfaces or {}).items())
    listing = _index(ruleset)
    ours = (TABLE_FAMILY, TABLE_NAME)
    our_chains = dict((key[2], chain) for key, chain in listing.chains.items() if key[:2] == ours)
    unsupported = []
    bases = []
    for seq, (key, chain) in enumerate(listing.chains.items()):
        if key[:2] == ours:
            hook = _chain_hook(chain)
            if hook is not None:
                bases.append((HOOKS.index(hook), _priority(chain), seq, key, hook))
        elif include_foreign and _foreign_nat_chain(key, chain):
            if chain["hook"] in HOOKS:
                bases.append((HOOKS.index(chain["hook"]), _priority(chain), seq, key, chain["hook"]))
            else:
                unsupported.extend({"rule": _text(key, obj), "reason": HOST_TRAFFIC}
                                   for obj in listing.rules.get(key, []))
    for key, objs in listing.rules.items():
        if key[:2] == ours and _chain_hook(our_chains.get(key[2])) is None:
            unsupported.extend({"rule": _text(key, obj), "reason": "a rule in chain %r, which is not ours" % key[2]}
                               for obj in objs)

    rules = []
    for dummy, dummy, dummy, key, hook in sorted(bases):
        for obj in listing.rules.get(key, []):
            if key[:2] == ours:
                found, problems = _read_own(obj, key, hook, roles)
            else:
                found, problems = _read_foreign(listing, obj, key, hook, roles, [], ())
            rules.extend(found)
            unsupported.extend(problems)
    return NftTable(canonical(rules), unsupported, ours in listing.tables,
                    sorted(name for name, obj in our_chains.items() if _chain_hook(obj) is not None))


# A listing by table and chain: tables {(family, name)}, chains {(family, table, name): chain
# object} in listing order, rules {(family, table, chain): [rule objects]} in listing order.
_Listing = namedtuple("_Listing", ["tables", "chains", "rules"])


def _index(ruleset):
    items = ruleset.get("nftables", []) if isinstance(ruleset, dict) else []
    tables, chains, rules = set(), {}, {}
    for item in items:
        kind, obj = next(iter(item.items())) if isinstance(item, dict) and item else (None, None)
        if not isinstance(obj, dict):
            continue
        if kind == "table":
            tables.add((obj.get("family"), obj.get("name")))
        elif kind == "chain":
            chains[(obj.get("family"), obj.get("table"), obj.get("name"))] = obj
        elif kind == "rule":
            rules.setdefault((obj.get("family"), obj.get("table"), obj.get("chain")), []).append(obj)
    return _Listing(tables, chains, rules)


def _chain_hook(chain):
    """The hook of one of our chains when it is set up as we set it up, else None."""
    if not chain or chain.get("name") not in CHAINS:
        return None
    hook = CHAINS[chain["name"]][0]
    if chain.get("type") != "nat" or chain.get("hook") != hook:
        return None
    return hook


def _foreign_nat_chain(key, chain):
    return key[0] in NAT_TABLE_FAMILIES and chain.get("type") == "nat" and "hook" in chain


def _priority(chain):
    prio = chain.get("prio", 0)
    if isinstance(prio, int) and not isinstance(prio, bool):
        return prio
    return NAMED_PRIORITIES.get(prio, 0) if isinstance(prio, str) else 0


def _text(key, obj, path=()):
    """How a rule is named in the unsupported list: its table and chain (and the jumps that led
    to it) and its statements as libnftables JSON."""
    exprs = json.dumps(obj.get("expr", []), sort_keys=True)
    if key[:2] == (TABLE_FAMILY, TABLE_NAME):
        return "%s: %s" % (key[2], exprs)
    return "%s %s %s: %s" % (key[0], key[1], " > ".join(tuple(path) + (key[2],)), exprs)


def _read_own(obj, key, hook, roles):
    """([NatRule], [unsupported]) of a rule of our table: exactly what we write, no more."""
    try:
        return [parse_rule(obj.get("expr", []), hook, roles)], []
    except _Unsupported as exc:
        return [], [{"rule": _text(key, obj), "reason": str(exc)}]


def _read_foreign(listing, obj, key, hook, roles, path, condition):
    """([NatRule], [unsupported]) of a rule of another table, following its jump.

    `condition` holds the matches of the jumps that led here: they apply to this rule too.
    Counters count and change nothing, so they are left out.
    """
    exprs = [expr for expr in obj.get("expr", []) if not (isinstance(expr, dict) and "counter" in expr)]
    verdict = exprs[-1] if exprs and isinstance(exprs[-1], dict) and len(exprs[-1]) == 1 else {}
    text = _text(key, obj, path)
    if "goto" in verdict:
        # After a goto the calling chain's rules no longer run for the packets it takes: that
        # "unless" has no place in the model.
        return [], [{"rule": text, "reason": "a goto to chain %r" % verdict["goto"].get("target")}]
    if "jump" in verdict:
        target = (key[0], key[1], verdict["jump"].get("target"))
        if target not in listing.chains or "hook" in listing.chains[target]:
            return [], [{"rule": text, "reason": "a jump to %r, which is no regular chain of the table" % target[2]}]
        if len(path) + 1 >= MAX_JUMP_DEPTH:
            return [], [{"rule": text, "reason": "jumps nested deeper than %d chains" % MAX_JUMP_DEPTH}]
        found, problems = [], []
        for inner in listing.rules.get(target, []):
            more, trouble = _read_foreign(listing, inner, target, hook, roles, list(path) + [key[2]],
                                          tuple(condition) + tuple(exprs[:-1]))
            found.extend(more)
            problems.extend(trouble)
        return found, problems
    try:
        return _parse_both_families(list(condition) + exprs, hook, roles, NAT_TABLE_FAMILIES[key[0]]), []
    except _Unsupported as exc:
        return [], [{"rule": text, "reason": str(exc)}]


def _parse_both_families(exprs, hook, roles, family):
    """An inet rule that names no address family translates both: one rule for each."""
    try:
        return [parse_rule(exprs, hook, roles, family)]
    except _NoFamily:  # only raised when the table implies no family (inet)
        return [parse_rule(exprs, hook, roles, each) for each in FAMILIES]


class _Unsupported(Exception):
    pass


class _NoFamily(_Unsupported):
    pass


def parse_rule(exprs, hook, roles, family=None):
    """A NatRule from one rule's JSON statements; raises _Unsupported with the reason.

    `family` is the address family the rule's table implies (ip, ip6), None for inet.
    """
    families = set([family] if family else [])
    fields = {"src": None, "dst": None, "in_role": None, "out_role": None, "dports": ()}
    protos = set()
    action = None
    for expr in exprs:
        if not isinstance(expr, dict) or len(expr) != 1:
            raise _Unsupported("statement %s" % json.dumps(expr))
        (name, body), = expr.items()
        if action is not None:
            raise _Unsupported("a statement after the NAT statement")
        if name == "match":
            _parse_match(body, families, fields, protos, roles)
        elif name in ("snat", "dnat", "masquerade"):
            action = (name, body or {})
        elif name == "xt":
            # iptables-nft's targets are opaque to libnftables' JSON; its own tools read them.
            raise _Unsupported("an iptables-nft rule (statement 'xt'): gather it with "
                               "implementation=iptables, iptables_backend=nft")
        else:
            raise _Unsupported("statement %r" % name)
    if action is None:
        raise _Unsupported("a rule without a NAT statement")

    kind, body = action
    unknown = set(body) - {"family", "addr", "port"}
    if unknown:
        raise _Unsupported("%s options %s" % (kind, ", ".join(sorted(unknown))))
    if "family" in body:
        if body["family"] not in FAMILY_OF_PAYLOAD:
            raise _Unsupported("%s family %r" % (kind, body["family"]))
        families.add(FAMILY_OF_PAYLOAD[body["family"]])
    if not families:
        raise _NoFamily("matches both address families")
    if len(families) != 1:
        raise _Unsupported("mixes address families")
    family = families.pop()
    if len(protos) > 1:
        raise _Unsupported("matches two protocols")
    proto = protos.pop() if protos else None

    to_addresses = None
    if kind == "masquerade":
        if "addr" in body:
            raise _Unsupported("masquerade with an address")
    elif "addr" not in body:
        raise _Unsupported("%s without an address" % kind)
    else:
        to_addresses = _address_range(body["addr"], family)
    to_ports = None
    if "port" in body:
        ports = _ports(body["port"])
        if len(ports) != 1:
            raise _Unsupported("translation to a set of ports")
        to_ports = ports[0]

    if ("prerouting" if kind == "dnat" else "postrouting") != hook:
        raise _Unsupported("%s in the %s chain" % (kind, hook))
    rule = NatRule(kind, family, fields["in_role"], fields["out_role"], fields["src"], fields["dst"],
                   proto, fields["dports"], to_addresses, to_ports)
    problems = rule_problems(rule)
    if problems:
        raise _Unsupported("; ".join(problems))
    return rule


def _set_field(fields, key, value, what):
    # A field matched twice (a jump's condition and the rule it leads to) is one match only when
    # both say the same; anything else is an intersection the model cannot hold.
    if fields[key] not in (None, (), value):
        raise _Unsupported("matches %s twice" % what)
    fields[key] = value


def _parse_match(body, families, fields, protos, roles):
    """Record one match statement in families, fields and protos."""
    if body.get("op") not in ("==", "in"):
        raise _Unsupported("match operator %r" % body.get("op"))
    left, right = body.get("left"), body.get("right")
    if isinstance(right, str) and right.startswith("@"):
        raise _Unsupported("a lookup in the set %s" % right)
    if isinstance(left, dict) and "meta" in left:
        key = left["meta"].get("key")
        if key == "nfproto" and right in FAMILY_OF_NFPROTO:
            families.add(FAMILY_OF_NFPROTO[right])
        elif key == "l4proto":
            protos.add(_protocol(right))
        elif key in ("iifname", "iif", "oifname", "oif"):
            if not isinstance(right, str) or right not in roles:
                raise _Unsupported("interface %r has no role in `interfaces`" % (right,))
            incoming = key.startswith("i")
            _set_field(fields, "in_role" if incoming else "out_role", roles[right],
                       "the incoming interface" if incoming else "the outgoing interface")
        else:
            raise _Unsupported("match on meta %s" % key)
        return
    if isinstance(left, dict) and "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in FAMILY_OF_PAYLOAD and field in ("saddr", "daddr"):
            family = FAMILY_OF_PAYLOAD[proto]
            families.add(family)
            source = field == "saddr"
            _set_field(fields, "src" if source else "dst", _prefix(right, family),
                       "the source address" if source else "the destination address")
            return
        if proto == "ip" and field == "protocol":
            # `ip protocol` is the IPv4 header's own field: the same as l4proto there.
            families.add("ipv4")
            protos.add(_protocol(right))
            return
        if proto in PORT_PAYLOADS and field == "dport":
            protos.add(PORT_PAYLOADS[proto])
            _set_field(fields, "dports", _ports(right), "the destination port")
            return
        raise _Unsupported("match on %s %s" % (proto, field))
    raise _Unsupported("match on %s" % json.dumps(left))


def _protocol(value):
    number = protocol_number(value)
    if number is None:
        raise _Unsupported("protocol %r" % (value,))
    return number


def _prefix(value, family):
    try:
        if isinstance(value, str):
            return normalize_prefix(str(ipaddress.ip_network(value)), family)
        if isinstance(value, dict) and "prefix" in value:
            net = ipaddress.ip_network("%s/%s" % (value["prefix"]["addr"], value["prefix"]["len"]))
            return normalize_prefix(str(net), family)
    except (ValueError, KeyError, TypeError) as exc:
        raise _Unsupported("address %s: %s" % (json.dumps(value), exc))
    raise _Unsupported("address match %s" % json.dumps(value))


def _address_range(value, family):
    try:
        if isinstance(value, str):
            addr = normalize_address(value, family)
            return (addr, addr)
        if isinstance(value, dict) and "range" in value:
            first, last = value["range"]
            return (normalize_address(first, family), normalize_address(last, family))
        if isinstance(value, dict) and "prefix" in value:
            # nft lists a range that happens to be a whole prefix as that prefix.
            net = ipaddress.ip_network("%s/%s" % (value["prefix"]["addr"], value["prefix"]["len"]))
            return (normalize_address(str(net.network_address), family),
                    normalize_address(str(net.broadcast_address), family))
    except (ValueError, KeyError, TypeError) as exc:
        raise _Unsupported("address %s: %s" % (json.dumps(value), exc))
    raise _Unsupported("translation to %s" % json.dumps(value))


def _ports(value):
    """Port ranges of a JSON port value: a number, {"range": [a, b]} or {"set": [...]}."""
    if isinstance(value, dict) and "set" in value:
        values = value["set"]
    else:
        values = [value]
    ranges = []
    for item in values:
        if isinstance(item, int) and not isinstance(item, bool):
            ranges.append((item, item))
        elif isinstance(item, dict) and "range" in item and all(
                isinstance(p, int) for p in item["range"]):
            ranges.append(tuple(item["range"]))
        else:
            raise _Unsupported("port %s" % json.dumps(item))
    return merge_port_ranges(ranges)


# ---------------------------------------------------------------------------------------------
# Rendering


def _table():
    return {"family": TABLE_FAMILY, "name": TABLE_NAME}


def _chain(name, **extra):
    obj = {"family": TABLE_FAMILY, "table": TABLE_NAME, "name": name}
    obj.update(extra)
    return obj


def _match(left, right):
    return {"match": {"op": "==", "left": left, "right": right}}


def _address_json(prefix):
    net = ipaddress.ip_network(prefix)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _ports_json(ranges):
    items = [first if first == last else {"range": [first, last]} for first, last in ranges]
    return items[0] if len(items) == 1 else {"set": items}


def rule_exprs(rule, interfaces):
    """libnftables JSON statements of one rule."""
    problems = rule_problems(rule)
    if problems:
        raise RenderError("; ".join(problems))
    exprs = [_match({"meta": {"key": "nfproto"}}, rule.family)]
    for key, role in (("iifname", rule.in_role), ("oifname", rule.out_role)):
        if role is not None:
            dev = (interfaces or {}).get(role)
            if not dev:
                raise RenderError("the %s role has no device in `interfaces`" % role)
            exprs.append(_match({"meta": {"key": key}}, dev))
    payload = PAYLOAD_OF_FAMILY[rule.family]
    for field, prefix in (("saddr", rule.src), ("daddr", rule.dst)):
        if prefix is not None:
            exprs.append(_match({"payload": {"protocol": payload, "field": field}}, _address_json(prefix)))
    if rule.dports:
        # The port match implies its protocol; nft adds that dependency itself.
        exprs.append(_match({"payload": {"protocol": PORT_PROTOCOLS[rule.proto], "field": "dport"}},
                            _ports_json(rule.dports)))
    elif rule.proto is not None:
        exprs.append(_match({"meta": {"key": "l4proto"}}, rule.proto))
    action = {}
    if rule.kind != "masquerade":
        action["family"] = payload
        first, last = rule.to_addresses
        action["addr"] = first if first == last else {"range": [first, last]}
    if rule.to_ports is not None:
        action["port"] = _ports_json([rule.to_ports])
    exprs.append({rule.kind: action})
    return exprs


def render_commands(rules, interfaces):
    """libnftables JSON commands making our table hold exactly `rules`, in one transaction.

    Creating the table and chains is idempotent ("add"); flushing the chains before adding
    the rules replaces their content atomically.
    """
    cmds = [{"metainfo": {"json_schema_version": 1}}, {"add": {"table": _table()}}]
    for name, (hook, prio) in sorted(CHAINS.items()):
        cmds.append({"add": {"chain": _chain(name, type="nat", hook=hook, prio=prio, policy="accept")}})
    for name in sorted(CHAINS):
        cmds.append({"flush": {"chain": _chain(name)}})
    for rule in canonical(rules):
        cmds.append({"add": {"rule": {
            "family": TABLE_FAMILY, "table": TABLE_NAME, "chain": HOOK_OF_KIND[rule.kind],
            "expr": rule_exprs(rule, interfaces)}}})
    return {"nftables": cmds}


def delete_commands(current):
    """Commands removing our table, or None when it does not exist."""
    if not current.exists:
        return None
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, {"delete": {"table": _table()}}]}


def list_command():
    return {"nftables": [{"list": {"table": _table()}}]}


def list_ruleset_command():
    return {"nftables": [{"list": {"ruleset": None}}]}
