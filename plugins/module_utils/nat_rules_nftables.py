# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NAT rules in nftables, through libnftables' JSON interface.

Our rules live in a table of our own, `inet nfstate_nat`, with one nat chain per hook, so the
host's other tables are never touched. Rules are built and read as libnftables JSON objects:
parse_ruleset() and render_commands() are pure; NftJson runs the commands through Debian's
python3-nftables binding when it is importable, else through `nft -j -f -`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import (
    HOOK_OF_KIND, PORT_PROTOCOLS, NatRule, canonical, merge_port_ranges, normalize_address,
    normalize_prefix, protocol_number, rule_problems,
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


class NftError(RuntimeError):
    """libnftables refused a command; the message is its own."""


def installed(table):
    return table.exists and set(table.chains) == set(CHAINS)


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_ruleset(ruleset, interfaces):
    """Our table's rules in a libnftables JSON listing ({"nftables": [...]}) -> NftTable."""
    roles = dict((dev, role) for role, dev in (interfaces or {}).items())
    items = ruleset.get("nftables", []) if isinstance(ruleset, dict) else []
    exists = False
    chains = {}
    rules = dict((name, []) for name in CHAINS)
    unsupported = []
    for item in items:
        kind, obj = next(iter(item.items())) if isinstance(item, dict) and item else (None, None)
        if not isinstance(obj, dict) or not _ours(obj):
            continue
        if kind == "table":
            exists = True
        elif kind == "chain":
            chains[obj["name"]] = obj
        elif kind == "rule":
            chain = obj.get("chain")
            text = "%s: %s" % (chain, json.dumps(obj.get("expr", []), sort_keys=True))
            hook = _chain_hook(chains.get(chain))
            if hook is None:
                unsupported.append({"rule": text, "reason": "a rule in chain %r, which is not ours" % chain})
                continue
            try:
                rules[chain].append(parse_rule(obj.get("expr", []), hook, roles))
            except _Unsupported as exc:
                unsupported.append({"rule": text, "reason": str(exc)})
    good_chains = sorted(name for name, obj in chains.items() if _chain_hook(obj) is not None)
    ordered = [rule for name in ("prerouting", "postrouting") for rule in rules[name]]
    return NftTable(canonical(ordered), unsupported, exists, good_chains)


def _ours(obj):
    table = obj["table"] if "table" in obj else obj.get("name")
    return obj.get("family") == TABLE_FAMILY and table == TABLE_NAME


def _chain_hook(chain):
    """The hook of one of our chains when it is set up as we set it up, else None."""
    if not chain or chain.get("name") not in CHAINS:
        return None
    hook = CHAINS[chain["name"]][0]
    if chain.get("type") != "nat" or chain.get("hook") != hook:
        return None
    return hook


class _Unsupported(Exception):
    pass


def parse_rule(exprs, hook, roles):
    """A NatRule from one rule's JSON statements; raises _Unsupported with the reason."""
    families = set()
    fields = {"src": None, "dst": None, "in_role": None, "out_role": None}
    protos = set()
    dports = ()
    action = None
    for expr in exprs:
        if not isinstance(expr, dict) or len(expr) != 1:
            raise _Unsupported("statement %s" % json.dumps(expr))
        (name, body), = expr.items()
        if action is not None:
            raise _Unsupported("a statement after the NAT statement")
        if name == "match":
            dports = _parse_match(body, families, fields, protos, roles) or dports
        elif name in ("snat", "dnat", "masquerade"):
            action = (name, body or {})
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
    if len(families) != 1:
        raise _Unsupported("matches both address families" if not families else "mixes address families")
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
                   proto, dports, to_addresses, to_ports)
    problems = rule_problems(rule)
    if problems:
        raise _Unsupported("; ".join(problems))
    return rule


def _parse_match(body, families, fields, protos, roles):
    """Record one match statement; returns destination ports when it matches them."""
    if body.get("op") not in ("==", "in"):
        raise _Unsupported("match operator %r" % body.get("op"))
    left, right = body.get("left"), body.get("right")
    if isinstance(left, dict) and "meta" in left:
        key = left["meta"].get("key")
        if key == "nfproto" and right in FAMILY_OF_NFPROTO:
            families.add(FAMILY_OF_NFPROTO[right])
        elif key == "l4proto":
            protos.add(_protocol(right))
        elif key in ("iifname", "iif", "oifname", "oif"):
            if not isinstance(right, str) or right not in roles:
                raise _Unsupported("interface %r has no role in `interfaces`" % (right,))
            fields["in_role" if key.startswith("i") else "out_role"] = roles[right]
        else:
            raise _Unsupported("match on meta %s" % key)
        return None
    if isinstance(left, dict) and "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in FAMILY_OF_PAYLOAD and field in ("saddr", "daddr"):
            family = FAMILY_OF_PAYLOAD[proto]
            families.add(family)
            fields["src" if field == "saddr" else "dst"] = _prefix(right, family)
            return None
        if proto in PORT_PAYLOADS and field == "dport":
            protos.add(PORT_PAYLOADS[proto])
            return _ports(right)
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


# ---------------------------------------------------------------------------------------------
# Running


def load_binding():
    """Debian's python3-nftables module, or None when it is not importable."""
    try:
        import nftables  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return nftables


class NftJson(object):
    """Runs libnftables JSON commands, through the Python binding or `nft -j -f -`.

    `run_command(args, data)` -> (rc, stdout, stderr) runs a program (the module's run_command);
    it is only used when the binding is missing, with `nft_path`.
    """

    def __init__(self, binding=None, nft_path=None, run_command=None):
        self.binding = binding
        self.nft_path = nft_path
        self.run_command = run_command
        if binding is None and (nft_path is None or run_command is None):
            raise ValueError("need the nftables binding or the nft program")

    def run(self, commands, dry_run=False):
        """Run commands; the JSON output ({} when there is none). Raises NftError."""
        if self.binding is not None:
            nft = self.binding.Nftables()
            nft.set_json_output(True)
            nft.set_dry_run(dry_run)
            rc, output, error = nft.cmd(json.dumps(commands))
        else:
            args = [self.nft_path, "-j"] + (["-c"] if dry_run else []) + ["-f", "-"]
            rc, output, error = self.run_command(args, json.dumps(commands))
        if rc != 0:
            raise NftError((error or "").strip() or "nft failed with status %s" % rc)
        return json.loads(output) if output and output.strip() else {}

    def list_ours(self):
        """The JSON listing of our table, {"nftables": []} when it does not exist."""
        try:
            return self.run(list_command())
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return {"nftables": []}
            raise
