# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The freeze in nftables: a table of our own, rendered and read as libnftables JSON (pure).

`inet nfstate_freeze` holds a forward chain at priority filter - 10 (before the usual filter
chains: a drop here is final whatever they accept) with one rule
`ct state new ct status ! confirmed iifname @frozen_iifs drop`; the interfaces are elements of a
set with a timeout, which the kernel expires on a monotonic clock, immune to wall clock steps
(libnftables JSON takes whole seconds, so it lifts within the second before the deadline).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

from ansible_collections.nfstate.migration.plugins.module_utils.freeze import NOT_INSTALLED, Freeze, FreezeState

NFT_FAMILY = "inet"
NFT_TABLE = "nfstate_freeze"
NFT_SET = "frozen_iifs"
NFT_CHAIN = "forward"
# Before the usual filter chains (priority 0): a drop here is final whatever they accept.
NFT_CHAIN_PRIORITY = -10
NFT_COMMENT_PREFIX = "expires_at="


def _nft_table():
    return {"family": NFT_FAMILY, "name": NFT_TABLE}


def nft_rule_expr():
    """Drop forwarded packets that would create an entry and entered a frozen interface."""
    return [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
        {"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "confirmed"}},
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@" + NFT_SET}},
        {"drop": None},
    ]


def nft_timeout(wanted, now):
    """Whole seconds for the kernel timer: libnftables JSON takes integer seconds only (it silently
    drops a fractional or text timeout, which would freeze for ever). Rounded down, so the kernel
    lifts the freeze within the second before `expires_at`, never after it."""
    return max(1, int(math.floor(wanted.expires_at - now)))


def nft_freeze_commands(wanted, now):
    """One transaction that (re)creates our table holding `wanted`.

    add+delete+add replaces the table atomically whether or not it exists, so a refresh never
    opens a gap and always repairs a table someone edited. The set's own default timeout is a
    second guard: no element can outlive the deadline even if its own timeout were lost."""
    timeout = nft_timeout(wanted, now)
    table = _nft_table()
    where = {"family": NFT_FAMILY, "table": NFT_TABLE}
    comment = "%s%d" % (NFT_COMMENT_PREFIX, wanted.expires_at)
    elements = [{"elem": {"val": device, "timeout": timeout, "comment": comment}} for device in wanted.interfaces]
    return {"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        {"add": {"set": dict(where, name=NFT_SET, type="ifname", flags=["timeout"], timeout=timeout)}},
        {"add": {"chain": dict(where, name=NFT_CHAIN, type="filter", hook="forward",
                               prio=NFT_CHAIN_PRIORITY, policy="accept")}},
        {"add": {"rule": dict(where, chain=NFT_CHAIN, expr=nft_rule_expr())}},
        {"add": {"element": dict(where, name=NFT_SET, elem=elements)}},
    ]}


def nft_unfreeze_commands():
    return {"nftables": [{"delete": {"table": _nft_table()}}]}


def nft_list_tables_commands():
    return {"nftables": [{"list": {"tables": None}}]}


def nft_list_table_commands():
    return {"nftables": [{"list": {"table": _nft_table()}}]}


def nft_has_table(listing):
    for item in listing.get("nftables", []):
        table = item.get("table")
        if table and table.get("family") == NFT_FAMILY and table.get("name") == NFT_TABLE:
            return True
    return False


def _nft_element_expiry(elem, now):
    """Absolute expiry of one listed set element, or None if it never expires."""
    if not isinstance(elem, dict) or "expires" not in elem:
        return None
    kernel = now + elem["expires"]
    comment = elem.get("comment") or ""
    if comment.startswith(NFT_COMMENT_PREFIX):
        try:
            noted = int(comment[len(NFT_COMMENT_PREFIX):])
        except ValueError:
            noted = None
        # The kernel lists whole seconds left; our note is exact unless the wall clock moved.
        if noted is not None and abs(noted - kernel) <= 2:
            return noted
    return int(math.ceil(kernel))


def parse_nft_table(listing, now):
    """FreezeState from `list table inet nfstate_freeze` in JSON (None listing: no table)."""
    if listing is None:
        return NOT_INSTALLED
    sets, chains, rules = [], [], []
    for item in listing.get("nftables", []):
        for kind, bucket in (("set", sets), ("chain", chains), ("rule", rules)):
            if kind in item and item[kind].get("table") == NFT_TABLE:
                bucket.append(item[kind])
    intact = (
        len(sets) == 1 and sets[0].get("name") == NFT_SET and sets[0].get("type") == "ifname"
        and "timeout" in sets[0].get("flags", [])
        and len(chains) == 1 and chains[0].get("name") == NFT_CHAIN and chains[0].get("hook") == "forward"
        and chains[0].get("type") == "filter"
        and len(rules) == 1 and rules[0].get("chain") == NFT_CHAIN and rules[0].get("expr") == nft_rule_expr()
    )
    devices, expiries = set(), set()
    for item in sets[0].get("elem", []) if sets else []:
        elem = item.get("elem", item) if isinstance(item, dict) else item
        devices.add(elem.get("val") if isinstance(elem, dict) else elem)
        expiries.add(_nft_element_expiry(elem, now))
    if None in expiries or len(expiries) > 1:
        intact = False  # an element without a timer, or elements out of step: rewrite on present
    finite = [when for when in expiries if when is not None]
    active = Freeze(tuple(sorted(devices)), min(finite)) if devices and finite else None
    return FreezeState(True, intact, active)
