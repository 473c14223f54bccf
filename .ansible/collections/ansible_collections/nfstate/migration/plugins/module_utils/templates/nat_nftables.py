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
    devices_of, roles_of,
    EXEMPTIONS, FAMILIES, FLAGS, HOOK_OF_KIND, HOOKS, NEGATABLE, PORT_PROTOCOLS, NatRule,
    address_match, canonical, match_ranges, merge_port_ranges, normalize_address, normalize_prefix,
    protocol_match, protocol_number, protocols, rule_problems,
)

TABLE_FAMILY = "inet"
TABLE_NAME = "nfstate_nat"
# Chain name -> (hook, priority): the standard dstnat/srcnat priorities.
CHAINS = {"prerouting": ("prerouting", -100), "postrouting": ("postrouting", 100)}
FAMILY_OF_NFPROTO = {"ipv4": "ipv4", "ipv6": "ipv6"}
FAMILY_OF_PAYLOAD = {"ip": "ipv4", "ip6": "ipv6"}
PAYLOAD_OF_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}
PORT_PAYLOADS = dict((name, number) for number, name in PORT_PROTOCOLS.items())
# NFTNL_UDATA_COMMENT_MAXLEN
MAX_NFT_COMMENT = 128

# What the host holds of ours.
#   rules        NatRules, canonical order
#   unsupported  [{"rule": text, "reason": text}]
#   exists       our table exists
#   chains       names of our nat chains that exist with the right hook
#   carried      the rules read into `rules`, named as in `unsupported`
#   followed     the jumps and gotos whose chains were read in their place
NftTable = namedtuple("NftTable", ["rules", "unsupported", "exists", "chains", "carried", "followed"],
                      defaults=((), ()))


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
    roles = roles_of(interfaces)
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

    reader = _Reader(listing, roles)
    ordered = sorted(bases)
    for position, (dummy, dummy, dummy, key, hook) in enumerate(ordered):
        # An exemption ends its own base chain only: nat chains of later priority still run
        # (for the families they see).
        later = set(family for other in ordered[position + 1:] if other[4] == hook
                    and _effective(listing, other[3], other[3], ())
                    for family in ([NAT_TABLE_FAMILIES[other[3][0]]] if NAT_TABLE_FAMILIES[other[3][0]] else FAMILIES))
        for obj in listing.rules.get(key, []):
            if key[:2] == ours:
                reader.own(obj, key, hook, later)
            else:
                reader.foreign(obj, key, hook, [], (), False, later)
    if include_foreign:
        # Rules reached otherwise (through a verdict map, or behind a jump from a chain of the
        # host's own traffic) are listed too: nothing of a nat chain goes unaccounted.
        seen = reader.seen | set(id(obj) for key, chain in listing.chains.items() if _foreign_nat_chain(key, chain)
                                 and chain["hook"] not in HOOKS for obj in listing.rules.get(key, []))
        starts = [key for key, chain in listing.chains.items() if key[:2] != ours and _foreign_nat_chain(key, chain)]
        for key in _reachable(listing, starts):
            for obj in listing.rules.get(key, []):
                if id(obj) not in seen:
                    reader.unsupported.append({"rule": _text(key, obj), "reason": "a rule of chain %r, reached only "
                                               "through a verdict map or a rule the model does not follow" % key[2]})
    return NftTable(canonical(reader.rules), unsupported + reader.unsupported, ours in listing.tables,
                    sorted(name for name, obj in our_chains.items() if _chain_hook(obj) is not None),
                    reader.carried, reader.followed)


def _targets(value):
    """Chain names that jump and goto verdicts anywhere in a JSON value name."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("jump", "goto") and isinstance(inner, dict) and isinstance(inner.get("target"), str):
                yield inner["target"]
            else:
                yield from _targets(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _targets(inner)


def _set_names(value):
    if isinstance(value, str) and value.startswith("@"):
        yield value[1:]
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _set_names(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _set_names(inner)


def _reachable(listing, starts):
    """The chains reached from `starts` by jumps and gotos, also through verdict maps."""
    found, todo = [], list(starts)
    while todo:
        key = todo.pop(0)
        if key in found:
            continue
        found.append(key)
        for obj in listing.rules.get(key, []):
            names = list(_targets(obj.get("expr", [])))
            for name in _set_names(obj.get("expr", [])):
                names.extend(_targets(listing.maps.get((key[0], key[1], name), {}).get("elem", [])))
            todo.extend((key[0], key[1], name) for name in names)
    return found


def _effective(listing, key, start, seen):
    """True when chain `key` holds a rule that is more than jumps into chains without any."""
    if key in seen or len(seen) > MAX_JUMP_DEPTH:
        return True
    for obj in listing.rules.get(key, []):
        exprs = _without_counters(obj)
        verdict = exprs[-1] if exprs and isinstance(exprs[-1], dict) else {}
        how = "jump" if "jump" in verdict else "goto" if "goto" in verdict else None
        if how is None:
            return True
        target = (key[0], key[1], verdict[how].get("target") if isinstance(verdict[how], dict) else None)
        if _effective(listing, target, start, tuple(seen) + (key,)):
            return True
    return False


# A listing by table and chain: tables {(family, name)}, chains {(family, table, name): chain
# object} in listing order, rules {(family, table, chain): [rule objects]} in listing order.
_Listing = namedtuple("_Listing", ["tables", "chains", "rules", "maps"])


def _index(ruleset):
    items = ruleset.get("nftables", []) if isinstance(ruleset, dict) else []
    tables, chains, rules, maps = set(), {}, {}, {}
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
        elif kind == "map":
            maps[(obj.get("family"), obj.get("table"), obj.get("name"))] = obj
    return _Listing(tables, chains, rules, maps)


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


def _without_counters(obj):
    # A counter counts and changes nothing; its value is not state that moves.
    return [expr for expr in obj.get("expr", []) if not (isinstance(expr, dict) and "counter" in expr)]


class _Reader(object):
    """Reads rules into NatRules, collecting what it carries, follows and cannot express."""

    def __init__(self, listing, roles):
        self.listing = listing
        self.roles = roles
        self.rules, self.unsupported, self.carried, self.followed = [], [], [], []
        self.seen = set()

    def _refuse(self, text, reason):
        self.unsupported.append({"rule": text, "reason": reason})

    def _carry(self, text, rules):
        self.rules.extend(rules)
        self.carried.append(text)

    def own(self, obj, key, hook, later):
        """A rule of our table: exactly what we write, no more."""
        self.seen.add(id(obj))
        text = _text(key, obj)
        try:
            rule = parse_rule(_without_counters(obj), hook, self.roles, comment=obj.get("comment"))
        except _Unsupported as exc:
            return self._refuse(text, str(exc))
        if rule.kind in EXEMPTIONS and rule.family in later:
            return self._refuse(text, LATER_CHAINS)
        self._carry(text, [rule])

    def foreign(self, obj, key, hook, path, condition, follows, later):
        """A rule of another table, following its jump or goto.

        `condition` holds the matches of the jumps that led here: they apply to this rule too.
        `follows`: rules of the calling chains run after this chain returns; `later`: nat chains
        of later priority run after this base chain. Either makes an exemption inexact here.
        """
        self.seen.add(id(obj))
        exprs = _without_counters(obj)
        verdict = exprs[-1] if exprs and isinstance(exprs[-1], dict) and len(exprs[-1]) == 1 else {}
        text = _text(key, obj, path)
        family = NAT_TABLE_FAMILIES[key[0]]
        if "return" in verdict and path:
            if follows:
                # Back in the calling chain, whose later rules still run: an "unless" the model cannot hold.
                return self._refuse(text, "a return from chain %r to the chain that jumped to it, "
                                          "which has rules after the jump" % key[2])
            # Nothing runs after this chain: a return leaves the packet untranslated, an exemption.
            exprs = exprs[:-1] + [{"accept": None}]
        if "jump" in verdict or "goto" in verdict:
            return self._follow(obj, key, hook, path, condition, follows, later, exprs, verdict)
        try:
            rules = _parse_both_families(list(condition) + exprs, hook, self.roles, family, obj.get("comment"))
        except _Unsupported as exc:
            return self._refuse(text, str(exc))
        if any(rule.kind in EXEMPTIONS and rule.family in later for rule in rules):
            return self._refuse(text, LATER_CHAINS)
        self._carry(text, rules)

    def _follow(self, obj, key, hook, path, condition, follows, later, exprs, verdict):
        text = _text(key, obj, path)
        how = "jump" if "jump" in verdict else "goto"
        target = (key[0], key[1], verdict[how].get("target") if isinstance(verdict[how], dict) else None)
        if target not in self.listing.chains or "hook" in self.listing.chains[target]:
            return self._refuse(text, "a %s to %r, which is no regular chain of the table" % (how, target[2]))
        if len(path) + 1 >= MAX_JUMP_DEPTH:
            return self._refuse(text, "jumps nested deeper than %d chains" % MAX_JUMP_DEPTH)
        inner_condition = tuple(condition) + tuple(exprs[:-1])
        inner_path = list(path) + [key[2]]
        if how == "jump":
            # The chain returns here: this chain's later rules run after it.
            siblings = self.listing.rules.get(key, [])
            position = next((i for i, sibling in enumerate(siblings) if sibling is obj), len(siblings))
            after = siblings[position + 1:]
            inner_follows = follows or any(_effective_rule(self.listing, key, rule) for rule in after)
        else:
            # A goto does not come back: its chain returns where this chain would have.
            inner_follows = follows
        fallthrough = []
        if how == "goto":
            # Packets the goto takes that no rule behind it translates are left untranslated by
            # the rest of this chain: an exemption on its condition, exact when nothing runs after.
            reason = "a goto inside chain %r, whose calling chains have rules after the jump" % key[2] if follows else None
            if reason is None:
                try:
                    fallthrough = _parse_both_families(list(inner_condition) + [{"accept": None}], hook, self.roles,
                                                       NAT_TABLE_FAMILIES[key[0]])
                except _Unsupported as exc:
                    reason = "a goto on a condition the model cannot hold: %s" % exc
                if any(rule.family in later for rule in fallthrough):
                    reason = LATER_CHAINS
            if reason is not None:
                self._refuse(text, reason)
                for inner in self.listing.rules.get(target, []):
                    self.seen.add(id(inner))
                    self._refuse(_text(target, inner, inner_path), "behind a goto that is listed (%s)" % reason)
                return
        for inner in self.listing.rules.get(target, []):
            self.foreign(inner, target, hook, inner_path, inner_condition, inner_follows, later)
        if fallthrough:
            self._carry(text, fallthrough)
        else:
            self.followed.append(text)


def _effective_rule(listing, key, obj):
    exprs = _without_counters(obj)
    verdict = exprs[-1] if exprs and isinstance(exprs[-1], dict) else {}
    for how in ("jump", "goto"):
        if how in verdict:
            target = verdict[how].get("target") if isinstance(verdict[how], dict) else None
            return _effective(listing, (key[0], key[1], target), key, ())
    return True


LATER_CHAINS = "an exemption in a nat chain that nat chains of later priority follow for its family (they still run)"


def _parse_both_families(exprs, hook, roles, family, comment=None):
    """An inet rule that names no address family translates both: one rule for each."""
    try:
        return [parse_rule(exprs, hook, roles, family, comment)]
    except _NoFamily:  # only raised when the table implies no family (inet)
        return [parse_rule(exprs, hook, roles, each, comment) for each in FAMILIES]


class _Unsupported(Exception):
    pass


class _NoFamily(_Unsupported):
    pass


# Statements that end a rule, and the kind of rule each one is.
ACTIONS = {"snat": "snat", "dnat": "dnat", "masquerade": "masquerade", "redirect": "redirect",
           "accept": "exempt", "return": "exempt"}
ACTION_OPTIONS = {"snat": {"family", "addr", "port", "flags"}, "dnat": {"family", "addr", "port", "flags"},
                  "masquerade": {"port", "flags"}, "redirect": {"port", "flags"}, "accept": set(), "return": set()}


def parse_rule(exprs, hook, roles, family=None, comment=None):
    """A NatRule from one rule's JSON statements; raises _Unsupported with the reason.

    `family` is the address family the rule's table implies (ip, ip6), None for inet; `comment`
    the rule's comment.
    """
    families = set([family] if family else [])
    fields = {"src": None, "dst": None, "in_role": None, "out_role": None, "dports": (), "dst_local": None}
    negated = set()
    protos = []
    action = None
    for expr in exprs:
        if not isinstance(expr, dict) or len(expr) != 1:
            raise _Unsupported("statement %s" % json.dumps(expr))
        (name, body), = expr.items()
        if action is not None:
            raise _Unsupported("a statement after the NAT statement")
        if name == "match":
            _parse_match(body, families, fields, protos, roles, negated)
        elif name in ACTIONS:
            action = (name, body or {})
        elif name == "xt":
            # iptables-nft's targets are opaque to libnftables' JSON; its own tools read them.
            raise _Unsupported("an iptables-nft rule (statement 'xt'): gather it with "
                               "implementation=iptables, iptables_backend=nft")
        else:
            raise _Unsupported("statement %r" % name)
    if action is None:
        raise _Unsupported("a rule without a NAT statement")

    name, body = action
    if not isinstance(body, dict):
        raise _Unsupported("%s %s" % (name, json.dumps(body)))
    unknown = set(body) - ACTION_OPTIONS[name]
    if unknown:
        raise _Unsupported("%s options %s" % (name, ", ".join(sorted(unknown))))
    if "family" in body:
        if body["family"] not in FAMILY_OF_PAYLOAD:
            raise _Unsupported("%s family %r" % (name, body["family"]))
        families.add(FAMILY_OF_PAYLOAD[body["family"]])
    if not families:
        raise _NoFamily("matches both address families")
    if len(families) != 1:
        raise _Unsupported("mixes address families")
    family = families.pop()
    proto = _protocols(protos)

    kind = ACTIONS[name]
    if kind == "exempt":
        kind = "no-dnat" if hook == "prerouting" else "no-snat"
    to_addresses = None
    if kind in ("snat", "dnat"):
        if "addr" not in body:
            raise _Unsupported("%s without an address" % kind)
        to_addresses = _address_range(body["addr"], family)
    to_ports = None
    if "port" in body:
        ports = _ports(body["port"])
        if len(ports) != 1:
            raise _Unsupported("translation to a set of ports")
        to_ports = ports[0]
    flags = body.get("flags", [])
    flags = [flags] if isinstance(flags, str) else flags
    if not isinstance(flags, list) or any(flag not in FLAGS for flag in flags):
        raise _Unsupported("%s flags %s" % (name, json.dumps(body.get("flags"))))

    if HOOK_OF_KIND[kind] != hook:
        raise _Unsupported("%s in the %s chain" % (name, hook))
    src, dst = (None if value is None else _address_value(value, family) for value in (fields["src"], fields["dst"]))
    rule = NatRule(kind, family, fields["in_role"], fields["out_role"], src, dst,
                   proto, fields["dports"], to_addresses, to_ports,
                   tuple(n for n in NEGATABLE if n in negated), tuple(f for f in FLAGS if f in flags), comment,
                   fields["dst_local"])
    problems = rule_problems(rule)
    if problems:
        raise _Unsupported("; ".join(problems))
    return rule


def _protocols(protos):
    """The protocols that every protocol match of a rule allows (they are all ANDed)."""
    if not protos:
        return None
    allowed = set(protos[0])
    for each in protos[1:]:
        allowed &= set(each)
    if not allowed:
        raise _Unsupported("matches no protocol (%s)" % " and ".join(
            "/".join(str(p) for p in sorted(each)) for each in protos))
    return protocol_match(allowed)


def _set_field(fields, key, value, what, negated=None, negate=False):
    # A field matched twice (a jump's condition and the rule it leads to) is one match only when
    # both say the same; anything else is an intersection the model cannot hold. An interface is
    # one device: "out0 and not lo" is "out0".
    if key in ("in_role", "out_role") and fields[key] is not None and fields[key] != value:
        if negate and key not in negated:
            return
        if not negate and key in negated:
            negated.discard(key)
            fields[key] = value
            return
    twice = fields[key] == value and negated is not None and (key in negated) != negate
    if fields[key] not in (None, (), value) or twice:
        raise _Unsupported("matches %s twice" % what)
    fields[key] = value
    if negate:
        negated.add(key)


def _parse_match(body, families, fields, protos, roles, negated):
    """Record one match statement in families, fields, protos and negated."""
    op = body.get("op")
    if op not in ("==", "in", "!="):
        raise _Unsupported("match operator %r" % op)
    negate = op == "!="
    left, right = body.get("left"), body.get("right")
    if isinstance(right, str) and right.startswith("@"):
        raise _Unsupported("a lookup in the set %s" % right)
    if isinstance(left, dict) and "meta" in left:
        key = left["meta"].get("key")
        if key == "nfproto" and right in FAMILY_OF_NFPROTO and not negate:
            families.add(FAMILY_OF_NFPROTO[right])
        elif key == "l4proto" and not negate:
            protos.append(_protocol_set(right))
        elif key in ("iifname", "iif", "oifname", "oif"):
            if not isinstance(right, str) or right not in roles:
                raise _Unsupported("interface %r has no role in `interfaces`" % (right,))
            incoming = key.startswith("i")
            name = "in_role" if incoming else "out_role"
            _set_field(fields, name, roles[right],
                       "the incoming interface" if incoming else "the outgoing interface", negated, negate)
        elif negate:
            raise _Unsupported("negated match on meta %s" % key)
        else:
            raise _Unsupported("match on meta %s" % key)
        return
    if left == FIB_DADDR_TYPE and right == "local":
        # Sent to an address of the host itself (fib daddr type local), or not (!=).
        _set_field(fields, "dst_local", not negate, "whether the destination is local")
        return
    if isinstance(left, dict) and "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in FAMILY_OF_PAYLOAD and field in ("saddr", "daddr"):
            family = FAMILY_OF_PAYLOAD[proto]
            families.add(family)
            source = field == "saddr"
            _set_field(fields, "src" if source else "dst", _addresses(right, family),
                       "the source address" if source else "the destination address", negated, negate)
            return
        if proto == "ip" and field == "protocol" and not negate:
            # `ip protocol` is the IPv4 header's own field: the same as l4proto there.
            families.add("ipv4")
            protos.append(_protocol_set(right))
            return
        if (proto in PORT_PAYLOADS or proto == "th") and field == "dport":
            if proto != "th":
                protos.append((PORT_PAYLOADS[proto],))
            _set_field(fields, "dports", _ports(right), "the destination port", negated, negate)
            return
        raise _Unsupported("%smatch on %s %s" % ("negated " if negate else "", proto, field))
    raise _Unsupported("match on %s" % _describe(left))


FIB_DADDR_TYPE = {"fib": {"flags": ["daddr"], "result": "type"}}
BITWISE = {"&": "a mask", "|": "an or", "^": "an xor", "<<": "a shift", ">>": "a shift"}


def _describe(left):
    """What an expression is, in a few words (the rule itself is listed with it in full)."""
    if not isinstance(left, dict) or len(left) != 1:
        return json.dumps(left)
    (kind, body), = left.items()
    if kind in BITWISE:
        return "%s of %s" % (BITWISE[kind], _describe(body[0]) if isinstance(body, list) and body else "a value")
    if kind == "concat":
        return "a concatenation (%s)" % ", ".join(_describe(part) for part in body)
    if kind == "meta" and isinstance(body, dict):
        return "meta %s" % body.get("key")
    if kind == "ct" and isinstance(body, dict):
        return "ct %s" % body.get("key")
    if kind == "payload" and isinstance(body, dict):
        return "%s %s" % (body.get("protocol"), body.get("field"))
    if kind == "fib" and isinstance(body, dict):
        return "fib %s %s" % (" ".join(body.get("flags", [])), body.get("result"))
    return kind


def _protocol_set(value):
    values = value["set"] if isinstance(value, dict) and "set" in value else [value]
    return tuple(_protocol(item) for item in values)


def _addresses(value, family):
    """The (first, last) ranges of an address match: an address, a prefix, a range or a set."""
    values = value["set"] if isinstance(value, dict) and "set" in value else [value]
    ranges = []
    for item in values:
        if isinstance(item, dict) and "range" in item:
            ranges.append(tuple(_address_range(item, family)))
        else:
            ranges.extend(match_ranges(_prefix(item, family)))
    return tuple(ranges)


def _address_value(ranges, family):
    try:
        return address_match(ranges, family)
    except ValueError as exc:
        raise _Unsupported("address match: %s" % exc)


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
    if isinstance(value, dict) and "map" in value:
        raise _Unsupported("translation by a map (%s)" % _describe(value["map"].get("key")))
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


def _match(left, right, negate=False):
    return {"match": {"op": "!=" if negate else "==", "left": left, "right": right}}


def _address_json(prefix):
    net = ipaddress.ip_network(prefix)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _match_json(value):
    """An address match value as nft's right-hand side: a prefix, a range or an anonymous set."""
    if isinstance(value, str):
        return _address_json(value)
    items = []
    for first, last in value:
        nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(first), ipaddress.ip_address(last)))
        items.append(_address_json(str(nets[0])) if len(nets) == 1 else {"range": [first, last]})
    return items[0] if len(items) == 1 else {"set": items}


def _ports_json(ranges):
    items = [first if first == last else {"range": [first, last]} for first, last in ranges]
    return items[0] if len(items) == 1 else {"set": items}


def rule_exprs(rule, interfaces):
    """libnftables JSON statements of one rule."""
    problems = rule_problems(rule)
    if problems:
        raise RenderError("; ".join(problems))
    negated = set(rule.negated)
    exprs = [_match({"meta": {"key": "nfproto"}}, rule.family)]
    for key, name, role in (("iifname", "in_role", rule.in_role), ("oifname", "out_role", rule.out_role)):
        if role is not None:
            dev = devices_of(interfaces).get(role)
            if not dev:
                raise RenderError("the %s role has no device in `interfaces`" % role)
            exprs.append(_match({"meta": {"key": key}}, dev, name in negated))
    payload = PAYLOAD_OF_FAMILY[rule.family]
    for field, name in (("saddr", "src"), ("daddr", "dst")):
        value = getattr(rule, name)
        if value is not None:
            exprs.append(_match({"payload": {"protocol": payload, "field": field}}, _match_json(value),
                                name in negated))
    if rule.dst_local is not None:
        exprs.append(_match(FIB_DADDR_TYPE, "local", not rule.dst_local))
    protos = protocols(rule)
    if len(protos) > 1:
        exprs.append(_match({"meta": {"key": "l4proto"}}, {"set": list(protos)}))
    if rule.dports:
        # The port match implies its protocol; nft adds that dependency itself. Several
        # protocols share the transport header's port field.
        header = PORT_PROTOCOLS[protos[0]] if len(protos) == 1 else "th"
        exprs.append(_match({"payload": {"protocol": header, "field": "dport"}},
                            _ports_json(rule.dports), "dports" in negated))
    elif len(protos) == 1:
        exprs.append(_match({"meta": {"key": "l4proto"}}, protos[0]))
    if rule.kind in EXEMPTIONS:
        exprs.append({"accept": None})
        return exprs
    action = {}
    if rule.kind in ("snat", "dnat"):
        action["family"] = payload
        first, last = rule.to_addresses
        action["addr"] = first if first == last else {"range": [first, last]}
    if rule.to_ports is not None:
        action["port"] = _ports_json([rule.to_ports])
    if rule.flags:
        action["flags"] = rule.flags[0] if len(rule.flags) == 1 else list(rule.flags)
    exprs.append({rule.kind: action or None} if rule.kind == "redirect" else {rule.kind: action})
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
        obj = {"family": TABLE_FAMILY, "table": TABLE_NAME, "chain": HOOK_OF_KIND[rule.kind],
               "expr": rule_exprs(rule, interfaces)}
        if rule.comment is not None:
            if len(rule.comment.encode("utf-8")) > MAX_NFT_COMMENT:
                raise RenderError("nftables keeps comments of up to %d bytes, not %r" % (MAX_NFT_COMMENT, rule.comment))
            obj["comment"] = rule.comment
        cmds.append({"add": {"rule": obj}})
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
