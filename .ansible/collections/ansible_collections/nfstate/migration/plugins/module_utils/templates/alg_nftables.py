# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ALG configuration in nftables: `ct helper` objects and `ct helper set` rules, libnftables JSON.

Our ALG rules live in a table of our own, `inet nfstate_alg`: one `ct helper` object per RFC 8512
alg (named after it, of the kernel helper's type) and one rule per alg in a prerouting chain that
assigns it to new sessions of its protocol and ports. The chain runs at the filter priority, after
connection tracking has looked the packet up and before the helper first sees it. Pure: JSON in,
data out; the caller runs the commands (nat_nftables.NftJson does).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.alg_model import (
    KNOWN_HELPERS,
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    AlgRule,
)

TABLE_FAMILY = "inet"
TABLE_NAME = "nfstate_alg"
CHAIN = "prerouting"
CHAIN_PRIORITY = 0  # filter: after conntrack (-200), where nft's documentation assigns helpers

# What the host holds of ours.
#   rules        AlgRules, in chain order
#   unsupported  [{"rule": text, "reason": text}]
#   exists       our table exists
#   chain        our chain exists with the right hook
AlgTable = namedtuple("AlgTable", ["rules", "unsupported", "exists", "chain"])


class RenderError(ValueError):
    """An AlgRule nftables cannot be given."""


def _table():
    return {"family": TABLE_FAMILY, "name": TABLE_NAME}


def _ports_json(ports):
    first, last = ports
    return first if first == last else {"range": [first, last]}


def rule_exprs(rule):
    """libnftables JSON statements of one AlgRule."""
    if rule.helper not in KNOWN_HELPERS or rule.proto not in PROTOCOL_NAMES:
        raise RenderError("%s: unknown helper %r or protocol %r" % (rule.name, rule.helper, rule.proto))
    proto = PROTOCOL_NAMES[rule.proto]
    exprs = []
    if rule.sports is not None:
        exprs.append({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "sport"}},
                                "right": _ports_json(rule.sports)}})
    exprs.append({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}},
                            "right": _ports_json(rule.dports)}})
    exprs.append({"ct helper": rule.name})
    return exprs


def render_commands(rules):
    """libnftables JSON commands making our table hold exactly these ALG rules, in one transaction.

    The table is deleted and declared again: `ct helper` objects cannot be flushed like chains,
    and a rule still naming an object keeps it from being deleted alone.
    """
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise RenderError("alg names are not unique: %s" % ", ".join(names))
    cmds = [{"metainfo": {"json_schema_version": 1}},
            {"add": {"table": _table()}}, {"delete": {"table": _table()}}, {"add": {"table": _table()}}]
    for rule in rules:
        cmds.append({"add": {"ct helper": {
            "family": TABLE_FAMILY, "table": TABLE_NAME, "name": rule.name, "type": rule.helper,
            "protocol": PROTOCOL_NAMES[rule.proto], "l3proto": "inet"}}})
    cmds.append({"add": {"chain": {"family": TABLE_FAMILY, "table": TABLE_NAME, "name": CHAIN, "type": "filter",
                                   "hook": "prerouting", "prio": CHAIN_PRIORITY, "policy": "accept"}}})
    for rule in rules:
        cmds.append({"add": {"rule": {"family": TABLE_FAMILY, "table": TABLE_NAME, "chain": CHAIN,
                                      "expr": rule_exprs(rule)}}})
    return {"nftables": cmds}


def delete_commands(current):
    """Commands removing our table, or None when it does not exist."""
    if not current.exists:
        return None
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, {"delete": {"table": _table()}}]}


def list_command():
    return {"nftables": [{"list": {"table": _table()}}]}


def _ours(obj):
    return obj.get("family") == TABLE_FAMILY and obj.get("table", obj.get("name")) == TABLE_NAME


def _ports(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, dict) and isinstance(value.get("range"), list) and len(value["range"]) == 2:
        first, last = value["range"]
        if all(isinstance(p, int) for p in (first, last)):
            return (first, last)
    return None


def parse_rule(exprs, helpers):
    """(AlgRule, None) of one rule's statements, or (None, reason) when it is not one of ours.

    helpers: {object name: (type, protocol name)} of our table's `ct helper` objects.
    """
    fields = {}
    name = None
    for expr in exprs:
        if "ct helper" in expr and isinstance(expr["ct helper"], str):
            name = expr["ct helper"]
            continue
        match = expr.get("match")
        left = (match or {}).get("left", {})
        payload = left.get("payload") if isinstance(left, dict) else None
        if not match or match.get("op") != "==" or not payload or payload.get("protocol") not in PROTOCOL_NUMBERS:
            return None, "statement %s is not an ALG match" % (expr,)
        field = payload.get("field")
        ports = _ports(match.get("right"))
        if field not in ("sport", "dport") or ports is None or field in fields:
            return None, "match %s is not a port or port range" % (match,)
        proto = PROTOCOL_NUMBERS[payload["protocol"]]
        if fields.setdefault("proto", proto) != proto:
            return None, "matches of two protocols"
        fields[field] = ports
    if name is None or name not in helpers:
        return None, "no ct helper of ours is set"
    helper, proto_name = helpers[name]
    if "dport" not in fields or PROTOCOL_NUMBERS.get(proto_name) != fields["proto"]:
        return None, "helper %s of protocol %s without a matching destination port" % (name, proto_name)
    return AlgRule(name, helper, fields["proto"], fields["dport"], fields.get("sport")), None


def parse_ruleset(listing):
    """The AlgTable of a `list table inet nfstate_alg` (or whole ruleset) JSON listing."""
    helpers, rules, unsupported = {}, [], []
    exists = chain = False
    items = (listing or {}).get("nftables", [])
    for item in items:
        if "table" in item and _ours(item["table"]):
            exists = True
        elif "ct helper" in item and _ours(item["ct helper"]):
            obj = item["ct helper"]
            helpers[obj["name"]] = (obj.get("type"), obj.get("protocol"))
        elif "chain" in item and _ours(item["chain"]) and item["chain"].get("name") == CHAIN:
            chain = item["chain"].get("hook") == "prerouting" and item["chain"].get("type") == "filter"
    for item in items:
        rule = item.get("rule")
        if rule is None or not _ours(rule) or rule.get("chain") != CHAIN:
            continue
        parsed, reason = parse_rule(rule.get("expr", []), helpers)
        if parsed is None:
            unsupported.append({"rule": rule.get("expr"), "reason": reason})
        else:
            rules.append(parsed)
    return AlgTable(rules, unsupported, exists, chain)
