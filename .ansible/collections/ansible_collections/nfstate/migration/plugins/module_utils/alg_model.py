# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Application-level gateways (ALGs) in the model: configuration and run-time state.

Configuration: RFC 8512's `policy/algs` list (name, transport-protocol, dst/src-transport-port,
status) and `all-algs-enable`, as AlgRules that the nftables and iptables templates render. The
ALG's name is the kernel helper's name ("ftp"), optionally followed by "-" and a suffix of the
operator's choosing ("ftp-2121") so that one helper can serve several port sets.

Run-time state (yang/nfstate-nat-alg.yang): a kernel Expectation <-> one entry of
`nfstate-nat-alg:expectations/expectation`, tied to its master by the master's mapping-entry
index; a master's HelperState <-> the members `nfstate-nat-alg:helper`, `sequence-adjustment` and
`master` of its mapping entry. Pure functions, standard library only; the way back checks what it
reads and raises AlgModelError with the member's path.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re
import socket
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import FlowTuple
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_expect import (
    EXPECT_FLAG_NAMES,
    IP_CT_DIR_ORIGINAL,
    IP_CT_DIR_REPLY,
    Expectation,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_helper import HelperState, SeqAdjust

NS = "nfstate-nat-alg:"
HELPER = NS + "helper"
SEQUENCE_ADJUSTMENT = NS + "sequence-adjustment"
MASTER = NS + "master"
EXPECTATIONS = NS + "expectations"

IPPROTO_TCP = 6
IPPROTO_UDP = 17
PROTOCOL_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
PROTOCOL_NUMBERS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}

# The helpers built into Linux (their names are the same for nftables' `ct helper` type and for
# iptables' `-j CT --helper`), with their protocol and standard port.
KNOWN_HELPERS = {
    "ftp": (IPPROTO_TCP, 21),
    "tftp": (IPPROTO_UDP, 69),
    "sip": (IPPROTO_UDP, 5060),
    "irc": (IPPROTO_TCP, 6667),
    "amanda": (IPPROTO_UDP, 10080),
    "sane": (IPPROTO_TCP, 6566),
    "snmp": (IPPROTO_UDP, 161),
    "netbios-ns": (IPPROTO_UDP, 137),
    "pptp": (IPPROTO_TCP, 1723),
    "RAS": (IPPROTO_UDP, 1719),
    "Q.931": (IPPROTO_TCP, 1720),
}
# Names as RFC 8512 users write them, for the helpers whose kernel name differs.
HELPER_ALIASES = {"h323-ras": "RAS", "ras": "RAS", "h323": "Q.931", "q.931": "Q.931"}

# What cannot move with a master of each helper: private state the kernel keeps and does not
# export. Reported per session, never dropped silently.
NOT_MOVED = {
    "sip": "SIP dialogue state beyond what the helper rebuilds from the next message (registrations, "
           "call-id and branch of pending transactions)",
    "Q.931": "H.323 call signalling state (H.245 addresses, call references)",
    "RAS": "H.323 RAS state (gatekeeper registrations)",
    "pptp": "PPTP call identifiers and the GRE keys they map (call state is rebuilt only by a new call)",
    "irc": "DCC offers still being parsed",
}

# One ALG rule: new sessions of proto to dst ports (and from src ports) get the helper.
#   name     the RFC 8512 alg name (list key)
#   helper   the kernel helper's name
#   proto    6 or 17
#   dports   (first, last) destination ports
#   sports   (first, last) source ports, or None for any
AlgRule = namedtuple("AlgRule", ["name", "helper", "proto", "dports", "sports"], defaults=(None,))


class AlgModelError(ValueError):
    """A member that cannot be mapped; .path names it relative to the item."""

    def __init__(self, path, message):
        super(AlgModelError, self).__init__("%s: %s" % (path, message) if path else message)
        self.path = path


# ---------------------------------------------------------------------------------------------
# Configuration: policy/algs

def helper_of(name):
    """The kernel helper an RFC 8512 alg name stands for, or None."""
    if name in KNOWN_HELPERS:
        return name
    if name.lower() in HELPER_ALIASES:
        return HELPER_ALIASES[name.lower()]
    best = None
    for helper in KNOWN_HELPERS:
        for candidate in (helper, helper.lower()):
            if name.startswith(candidate + "-") and (best is None or len(helper) > len(best)):
                best = helper
    return best


def _port_range(value, path):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AlgModelError(path, "not a port container")
    first = value.get("start-port-number")
    last = value.get("end-port-number", first)
    if first is None:
        return None
    for item in (first, last):
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 65535:
            raise AlgModelError(path, "port %r out of range" % (item,))
    if last < first:
        raise AlgModelError(path, "end-port-number below start-port-number")
    return (first, last)


def algs_to_rules(algs, all_algs_enable=None):
    """AlgRules of a policy's `algs` list (enabled ones only), and [{"alg", "reason"}] refused.

    all_algs_enable, when given, overrides every alg's own status (RFC 8512).
    """
    rules, refused = [], []
    if all_algs_enable is False:
        return rules, refused
    for position, alg in enumerate(algs or ()):
        name = alg.get("name")
        path = "algs[%d]" % position
        try:
            if not isinstance(name, str) or not name:
                raise AlgModelError(path + "/name", "missing")
            if not (all_algs_enable or alg.get("status", True)):
                continue
            helper = helper_of(name)
            if helper is None:
                raise AlgModelError(path + "/name", "%r names no kernel helper (%s)" % (name, ", ".join(sorted(KNOWN_HELPERS))))
            proto, port = KNOWN_HELPERS[helper]
            proto = alg.get("transport-protocol", proto)
            if proto not in PROTOCOL_NAMES:
                raise AlgModelError(path + "/transport-protocol", "%r is neither TCP (6) nor UDP (17)" % (proto,))
            dports = _port_range(alg.get("dst-transport-port"), path + "/dst-transport-port") or (port, port)
            sports = _port_range(alg.get("src-transport-port"), path + "/src-transport-port")
            rules.append(AlgRule(name, helper, proto, dports, sports))
        except AlgModelError as exc:
            refused.append({"alg": name, "reason": str(exc)})
    return rules, refused


def _port_container(ports):
    first, last = ports
    return {"start-port-number": first} if first == last else {"start-port-number": first, "end-port-number": last}


def rules_to_algs(rules):
    """A policy's `algs` list (RFC 7951 JSON) of AlgRules, every one enabled."""
    algs = []
    for rule in rules:
        alg = {"name": rule.name, "transport-protocol": rule.proto,
               "dst-transport-port": _port_container(rule.dports), "status": True}
        if rule.sports is not None:
            alg["src-transport-port"] = _port_container(rule.sports)
        algs.append(alg)
    return algs


# ---------------------------------------------------------------------------------------------
# Run-time state: the master's helper, sequence adjustment, master link

def _signed(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _seq_adj_json(adjust):
    return {"correction-position": adjust.correction_pos & 0xFFFFFFFF,
            "offset-before": _signed(adjust.offset_before), "offset-after": _signed(adjust.offset_after)}


def helper_members(state, master_index=None):
    """The nfstate-nat-alg members of a mapping entry for a HelperState ({} when it has none).

    master_index: the mapping-entry index of state.master (the caller resolves it).
    """
    members = {}
    if state.helper:
        members[HELPER] = state.helper
    adjust = {}
    if state.seq_adj_orig is not None:
        adjust["original"] = _seq_adj_json(state.seq_adj_orig)
    if state.seq_adj_reply is not None:
        adjust["reply"] = _seq_adj_json(state.seq_adj_reply)
    if adjust:
        members[SEQUENCE_ADJUSTMENT] = adjust
    if state.master is not None:
        if master_index is None:
            raise AlgModelError(MASTER, "the master of this session is not in the snapshot")
        members[MASTER] = master_index
    return members


def _uint(value, path, bits):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise AlgModelError(path, "%r is not a uint%d" % (value, bits))
    return value


def _int32(value, path):
    if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 31) <= value < (1 << 31):
        raise AlgModelError(path, "%r is not an int32" % (value,))
    return value & 0xFFFFFFFF


def _seq_adj_back(value, path):
    if not isinstance(value, dict):
        raise AlgModelError(path, "not a container")
    for member in ("correction-position", "offset-before", "offset-after"):
        if member not in value:
            raise AlgModelError(path + "/" + member, "missing")
    return SeqAdjust(_uint(value["correction-position"], path + "/correction-position", 32),
                     _int32(value["offset-before"], path + "/offset-before"),
                     _int32(value["offset-after"], path + "/offset-after"))


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _helper_name(value, path, limit=15):
    # As yang/nfstate-nat-alg.yang's helper-name: the strict checker is never looser than YANG.
    if not isinstance(value, str) or not 0 < len(value) <= limit or not _NAME.match(value):
        raise AlgModelError(path, "%r is not a name of 1 to %d letters, digits, '.', '_' or '-'" % (value, limit))
    return value


def helper_state(entry, masters=None):
    """The HelperState of a mapping entry's nfstate-nat-alg members.

    masters: {mapping-entry index: FlowTuple original tuple}, to resolve `master`.
    """
    helper = entry.get(HELPER)
    if helper is not None:
        helper = _helper_name(helper, HELPER)
    orig = reply = master = None
    adjust = entry.get(SEQUENCE_ADJUSTMENT)
    if adjust is not None:
        if not isinstance(adjust, dict):
            raise AlgModelError(SEQUENCE_ADJUSTMENT, "not a container")
        if "original" in adjust:
            orig = _seq_adj_back(adjust["original"], SEQUENCE_ADJUSTMENT + "/original")
        if "reply" in adjust:
            reply = _seq_adj_back(adjust["reply"], SEQUENCE_ADJUSTMENT + "/reply")
    if MASTER in entry:
        index = _uint(entry[MASTER], MASTER, 32)
        master = (masters or {}).get(index)
        if master is None:
            raise AlgModelError(MASTER, "no mapping entry %d" % index)
    return HelperState(helper, orig, reply, master)


# ---------------------------------------------------------------------------------------------
# Run-time state: expectations

_ANY = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
_FLAG_BITS = sorted(EXPECT_FLAG_NAMES.items())
_FLAG_OF_NAME = dict((name, bit) for bit, name in EXPECT_FLAG_NAMES.items())
_DIRECTIONS = {IP_CT_DIR_ORIGINAL: "original", IP_CT_DIR_REPLY: "reply"}
_DIRECTION_OF_NAME = dict((name, number) for number, name in _DIRECTIONS.items())
_HOST_BITS = {socket.AF_INET: 32, socket.AF_INET6: 128}


def _prefix_length(mask_text, family):
    """Length of a contiguous address mask; AlgModelError for masks a prefix cannot say."""
    value = int(ipaddress.ip_address(mask_text))
    bits = _HOST_BITS[family]
    length = bin(value).count("1")
    if value != ((1 << length) - 1) << (bits - length):
        raise AlgModelError("src-address", "source mask %s is not a prefix" % mask_text)
    return length


def expectation_item(exp, index, master_index):
    """One `expectation` list entry of a kernel Expectation.

    master_index: the mapping-entry index of the master session (exp.master is its original tuple).
    """
    tup = exp.tuple
    family = tup.family
    if tup.proto not in PROTOCOL_NAMES:
        raise AlgModelError("transport-protocol", "protocol %d expectations are not modelled" % tup.proto)
    mask = exp.mask
    length = _HOST_BITS[family] if mask is None else _prefix_length(mask.src, family)
    src = ipaddress.ip_network("%s/%d" % (tup.src, length), strict=False)
    item = {"index": index, "master": master_index, "transport-protocol": tup.proto,
            "src-address": str(src), "dst-address": tup.dst, "dst-port": tup.dport,
            "lifetime": exp.timeout or 0}
    sport_mask = 0xFFFF if mask is None else mask.sport
    if sport_mask == 0xFFFF:
        item["src-port"] = tup.sport
    elif sport_mask != 0:
        raise AlgModelError("src-port", "source port mask %#x is neither exact nor any" % sport_mask)
    if exp.helper:
        item["helper"] = exp.helper
    flags = [name for bit, name in _FLAG_BITS if (exp.flags or 0) & bit]
    if flags:
        item["flags"] = " ".join(flags)
    if exp.expect_class:
        item["class"] = exp.expect_class
    if exp.zone:
        item["zone"] = exp.zone
    if exp.nat_dir is not None:
        nat = {"direction": _DIRECTIONS.get(exp.nat_dir)}
        if nat["direction"] is None:
            raise AlgModelError("nat/direction", "direction %r" % exp.nat_dir)
        saved = exp.nat_tuple
        if saved is not None and saved.src not in (None, _ANY[family]):
            nat["address"] = saved.src
        if saved is not None and saved.sport:
            nat["port"] = saved.sport
        item["nat"] = nat
    if exp.fn:
        item["expectfn"] = exp.fn
    return item


def _address(value, path, family=None):
    try:
        address = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        raise AlgModelError(path, "%r is not an IP address" % (value,))
    if family is not None and address.version != (4 if family == socket.AF_INET else 6):
        raise AlgModelError(path, "%s is not of the expectation's address family" % value)
    return str(address)


def expectation_of_item(item, masters):
    """The kernel Expectation of one `expectation` list entry.

    masters: {mapping-entry index: FlowTuple original tuple of that session}.
    """
    for member in ("master", "transport-protocol", "src-address", "dst-address", "dst-port", "lifetime"):
        if member not in item:
            raise AlgModelError(member, "missing")
    index = _uint(item["master"], "master", 32)
    master = masters.get(index)
    if master is None:
        raise AlgModelError("master", "no mapping entry %d in the snapshot" % index)
    proto = item["transport-protocol"]
    if proto not in PROTOCOL_NAMES:
        raise AlgModelError("transport-protocol", "%r is neither TCP (6) nor UDP (17)" % (proto,))
    try:
        src = ipaddress.ip_network(item["src-address"], strict=True)
    except (TypeError, ValueError):
        raise AlgModelError("src-address", "%r is not a prefix" % (item["src-address"],))
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    dst = _address(item["dst-address"], "dst-address", family)
    dport = _uint(item["dst-port"], "dst-port", 16)
    sport = _uint(item["src-port"], "src-port", 16) if "src-port" in item else 0
    tup = FlowTuple(family, proto, str(src.network_address), dst, sport, dport)
    mask = FlowTuple(family, proto, str(src.netmask), str(ipaddress.ip_network(dst).netmask),
                     0xFFFF if "src-port" in item else 0, 0xFFFF)
    flags = 0
    for name in (item.get("flags") or "").split():
        if name not in _FLAG_OF_NAME:
            raise AlgModelError("flags", "unknown flag %r" % name)
        flags |= _FLAG_OF_NAME[name]
    nat_dir = nat_tuple = None
    nat = item.get("nat")
    if nat is not None:
        if not isinstance(nat, dict) or nat.get("direction") not in _DIRECTION_OF_NAME:
            raise AlgModelError("nat/direction", "missing or not original/reply")
        nat_dir = _DIRECTION_OF_NAME[nat["direction"]]
        saved = _address(nat["address"], "nat/address", family) if "address" in nat else _ANY[family]
        port = _uint(nat["port"], "nat/port", 16) if "port" in nat else 0
        nat_tuple = FlowTuple(family, master.proto, saved, _ANY[family], port, 0)
    helper = _helper_name(item["helper"], "helper") if "helper" in item else None
    expectfn = _helper_name(item["expectfn"], "expectfn", 32) if "expectfn" in item else None
    return Expectation(master, tup, mask, _uint(item["lifetime"], "lifetime", 32), helper, flags,
                       _uint(item.get("class", 0), "class", 32), nat_dir, nat_tuple, expectfn,
                       _uint(item.get("zone", 0), "zone", 16))


def expectations_container(expectations, master_index_of):
    """The instance member `nfstate-nat-alg:expectations` of kernel Expectations, and the refused.

    master_index_of: {FlowTuple original tuple: mapping-entry index} of the snapshot's sessions.
    An expectation whose master is not in the snapshot (or that the model cannot say) is returned
    in refused as {"expectation": text, "reason": text}, never dropped silently.
    """
    items, refused = [], []
    for exp in expectations:
        master_index = master_index_of.get(_master_key(exp.master))
        try:
            if master_index is None:
                raise AlgModelError("master", "its master session is not in the snapshot")
            items.append(expectation_item(exp, len(items) + 1, master_index))
        except AlgModelError as exc:
            refused.append({"expectation": describe_expectation(exp), "reason": str(exc)})
    return {EXPECTATIONS: {"expectation": items}} if items else {}, refused


def master_key(tup):
    """A master's original tuple as the key of master_index_of (ICMP members left out)."""
    return FlowTuple(tup.family, tup.proto, tup.src, tup.dst, tup.sport, tup.dport)


_master_key = master_key


def master_index_of(pairs):
    """{original tuple: index} of (index, original FlowTuple) pairs, as expectations_container wants."""
    return dict((_master_key(orig), index) for index, orig in pairs)


def describe_expectation(exp):
    """One line naming an expectation, for errors and reports."""
    tup = exp.tuple
    name = PROTOCOL_NAMES.get(tup.proto, str(tup.proto))
    master = exp.master
    return "%s expectation %s %s:%s -> %s:%s of %s:%s -> %s:%s" % (
        exp.helper or "helper", name, tup.src, tup.sport, tup.dst, tup.dport,
        master.src, master.sport, master.dst, master.dport)


def not_moved(helper):
    """What a master of this helper keeps that cannot move, or None."""
    return NOT_MOVED.get(helper)
