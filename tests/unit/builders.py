# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Builders of test sessions and documents, shared by the unit tests, the hostile corpus and the
property-based tests (plain functions here, Hypothesis strategies in strategies.py)."""

import copy
import socket

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    ConntrackEntry,
    FlowTuple,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    instance,
    new_document,
    set_sessions,
)

V4, V6 = socket.AF_INET, socket.AF_INET6
SEEN = IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED
INSTANCE = '/ietf-nat:nat/instances/instance[id="1"]'
ENTRY = INSTANCE + '/mapping-table/mapping-entry[index="%d"]'


def tcp(family, src, dst, sport, dport, rsrc, rdst, rsport, rdport, status, **extra):
    fields = dict(timeout=431999, mark=0, zone=0, labels=None, tcp_state=3,
                  tcp_wscale_orig=7, tcp_wscale_reply=9, tcp_flags_orig=0x23, tcp_flags_reply=0x03)
    fields.update(extra)
    return ConntrackEntry(FlowTuple(family, 6, src, dst, sport, dport),
                          FlowTuple(family, 6, rsrc, rdst, rsport, rdport), status, **fields)


def udp(family, src, dst, sport, dport, rsrc, rdst, rsport, rdport, status, **extra):
    return ConntrackEntry(FlowTuple(family, 17, src, dst, sport, dport),
                          FlowTuple(family, 17, rsrc, rdst, rsport, rdport), status,
                          extra.pop("timeout", 120), **extra)


def icmp(family, src, dst, ident, rsrc, rdst, rident, status, **extra):
    proto, request, reply = (1, 8, 0) if family == V4 else (58, 128, 129)
    return ConntrackEntry(FlowTuple(family, proto, src, dst, ident, 0, request, 0),
                          FlowTuple(family, proto, rsrc, rdst, rident, 0, reply, 0), status,
                          extra.pop("timeout", 30), **extra)


def sample_entries():
    """One session of each kind a NAT holds: SNAT, masquerade, port forward, twice NAT; TCP, UDP,
    ICMP, ICMPv6; IPv4 and IPv6; with and without window tracking, mark, zone and labels."""
    return [
        tcp(V4, "192.0.2.2", "203.0.113.9", 41000, 443, "203.0.113.9", "198.51.100.1", 443, 25001,
            SEEN | IPS_SRC_NAT, mark=7, zone=5),
        tcp(V6, "2001:db8:1::2", "2001:db8:2::2", 50000, 80, "2001:db8:2::2", "2001:db8:2::1", 80, 20001,
            SEEN | IPS_SRC_NAT),
        tcp(V4, "198.51.100.2", "198.51.100.1", 38972, 8080, "192.0.2.2", "198.51.100.2", 80, 38972,
            SEEN | IPS_DST_NAT),
        udp(V4, "192.0.2.2", "198.51.100.2", 55163, 53, "198.51.100.2", "198.51.100.1", 53, 25365,
            IPS_CONFIRMED | IPS_SRC_NAT, mark=42, labels=bytes(range(16))),
        udp(V6, "2001:db8:2::2", "2001:db8:2::1", 55478, 5353, "2001:db8:1::2", "2001:db8:2::2", 53, 55478,
            IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_DST_NAT),
        udp(V4, "198.51.100.2", "198.51.100.1", 40000, 5353, "192.0.2.2", "192.0.2.1", 53, 61000,
            SEEN | IPS_SRC_NAT | IPS_DST_NAT),
        icmp(V4, "192.0.2.8", "203.0.113.9", 777, "203.0.113.9", "198.51.100.1", 2049,
             IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_SRC_NAT, zone=5),
        icmp(V6, "2001:db8:1::2", "2001:db8:2::2", 9131, "2001:db8:2::2", "2001:db8:2::1", 9131,
             IPS_CONFIRMED | IPS_SRC_NAT),
        icmp(V4, "198.51.100.2", "198.51.100.1", 12, "192.0.2.2", "198.51.100.2", 12,
             IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_DST_NAT),
        tcp(V4, "192.0.2.3", "203.0.113.9", 41001, 443, "203.0.113.9", "198.51.100.1", 443, 25002,
            SEEN | IPS_SRC_NAT, tcp_state=7, tcp_wscale_orig=None, tcp_wscale_reply=None,
            tcp_flags_orig=None, tcp_flags_reply=None),
    ]


def many_tcp_sessions(count):
    """`count` distinct established TCP sessions source-NATed to 198.51.100.x (a big table)."""
    entries = []
    for i in range(count):
        client, port = "192.0.2.%d" % (i // 60000 + 1), 1024 + i % 60000
        orig = FlowTuple(V4, 6, client, "203.0.113.%d" % (i % 200 + 1), port, 443)
        reply = FlowTuple(V4, 6, orig.dst, "198.51.100.%d" % (i // 60000 + 1), 443, port)
        entries.append(ConntrackEntry(orig, reply, SEEN | IPS_SRC_NAT, 300, 0, 0, None, 3, 7, 7, 0x23, 0x23))
    return entries


def snapshot_document(entries, name="edge-nat"):
    """A full snapshot document holding `entries` (indexed 1..n)."""
    doc = new_document(name, taken_at="2026-11-26T08:00:00Z", source_host="nat-a",
                       implementation="iptables", kind="full")
    return set_sessions(doc, entries)


def mapping_entries_of(doc):
    return instance(doc)["mapping-table"]["mapping-entry"]


def one_entry_document(mapping):
    """A snapshot document whose one mapping entry is `mapping` (taken as it is)."""
    doc = snapshot_document([])
    instance(doc)["mapping-table"]["mapping-entry"] = [mapping]
    instance(doc)["nfstate-nat:snapshot"]["session-count"] = 1
    return doc


def _untranslated(m):
    # The reply is the plain inverse of the original tuple: nothing is translated.
    for side in ("src", "dst"):
        m["external-%s-address" % side] = m["internal-%s-address" % side]
        if "internal-%s-port" % side in m:
            m["external-%s-port" % side] = dict(m["internal-%s-port" % side])


def _other_family(address):
    return "2001:db8::99/128" if "." in address else "192.0.2.99/32"


def _set(member, value):
    def mutate(m):
        m[member] = value
    return mutate


def _set_in(container, member, value):
    def mutate(m):
        m[container][member] = value
    return mutate


def _when(member, mutate):
    """`mutate`, for entries that hold `member` only (KeyError for the others)."""
    def apply(m):
        if member not in m:
            raise KeyError(member)
        mutate(m)
    return apply


def _drop(member):
    def mutate(m):
        del m[member]
    return mutate


# Mutations of one mapping entry (a dict, changed in place), applied to every sample entry by the
# validator's tests; a mutation that does not fit an entry (KeyError) is skipped for it.
ENTRY_MUTATIONS = {
    "port out of range": _set_in("internal-src-port", "start-port-number", 70000),
    "port negative": _set_in("external-src-port", "start-port-number", -1),
    "end before start": _set_in("internal-src-port", "end-port-number", 0),
    "port range": lambda m: m["internal-src-port"].update({"end-port-number": m["internal-src-port"]["start-port-number"] + 1}),
    "tcp state on udp": _when("nfstate-nat:tcp", _set("transport-protocol", 17)),
    "udp entry said to be tcp": lambda m: m.update({"transport-protocol": {17: 6}[m["transport-protocol"]]}),
    "icmp state on tcp": _when("nfstate-nat:tcp", _set("nfstate-nat:icmp", {"type": 8})),
    "tcp state on icmp": _when("nfstate-nat:icmp", _set("nfstate-nat:tcp", {"state": "established"})),
    "address without length": _set("internal-src-address", "192.0.2.1"),
    "ipv6 garbage": _set("internal-src-address", "2001:db8::zz/128"),
    "network prefix": lambda m: m.update({"internal-dst-address": m["internal-dst-address"].split("/")[0] + "/24"}),
    "address of the other family": lambda m: m.update({"external-dst-address": _other_family(m["external-dst-address"])}),
    "icmp protocol of the other family": lambda m: m.update({"transport-protocol": {1: 58, 58: 1}[m["transport-protocol"]]}),
    "icmp with a destination port": _when("nfstate-nat:icmp", _set("internal-dst-port", {"start-port-number": 7})),
    "unknown member": _set("foo", 1),
    "unqualified augment": _set("tcp", {}),
    "augment member qualified twice": lambda m: m["nfstate-nat:tcp"].update({"nfstate-nat:state": "close"}),
    "boolean as number": _set("nfstate-nat:seen-reply", 1),
    "number as boolean": _set("lifetime", True),
    "number as text": _set("lifetime", "300"),
    "number as float": _set("lifetime", 1.5),
    "null value": _set("lifetime", None),
    "null end port": _set_in("internal-src-port", "end-port-number", None),
    "null labels": _set("nfstate-nat:labels", None),
    "null tcp side": lambda m: m["nfstate-nat:tcp"].update({"original": None}),
    "lifetime beyond uint32": _set("lifetime", 1 << 32),
    "lifetime negative": _set("lifetime", -1),
    "lifetime missing": _drop("lifetime"),
    "initiator missing": _drop("nfstate-nat:initiator"),
    "initiator unknown": _set("nfstate-nat:initiator", "both"),
    "address missing": _drop("external-src-address"),
    "port container missing": _drop("external-src-port"),
    "key as text": lambda m: m.update({"index": str(m["index"])}),
    "key missing": _drop("index"),
    "static mapping": _set("type", "static"),
    "unknown type": _set("type", "dynamic"),
    "protocol out of range": _set("transport-protocol", 256),
    "protocol unsupported": _set("transport-protocol", 255),
    "tcp state unknown": _set_in("nfstate-nat:tcp", "state", "open"),
    "tcp state missing": lambda m: m["nfstate-nat:tcp"].pop("state"),
    "unknown flag": lambda m: m["nfstate-nat:tcp"]["original"].update({"flags": "window-scale x"}),
    "flags as a list": lambda m: m["nfstate-nat:tcp"]["original"].update({"flags": ["window-scale"]}),
    "window scale beyond 14": lambda m: m["nfstate-nat:tcp"]["original"].update({"window-scale": 15}),
    "icmp type beyond uint8": _set_in("nfstate-nat:icmp", "type", 256),
    "icmp type missing": lambda m: m["nfstate-nat:icmp"].pop("type"),
    "zone beyond uint16": _set("nfstate-nat:zone", 70000),
    "mark beyond uint32": _set("nfstate-nat:mark", 1 << 32),
    "labels too short": _set("nfstate-nat:labels", "abc"),
    "labels not hex": _set("nfstate-nat:labels", "g" * 32),
    "removed not empty": _set("nfstate-nat:removed", True),
    "ports not an object": _set("internal-src-port", 5),
    "entry not an object": None,     # replaces the entry itself: see mutated_entry()
    "untranslated": _untranslated,
}

# What the strict checker refuses although the YANG model allows it, on purpose (docs/model.md,
# "Validation"): these mutations may be refused by the strict checker alone.
STRICTER_ON_PURPOSE = frozenset((
    "port range", "network prefix", "address of the other family", "icmp protocol of the other family",
    "icmp with a destination port", "lifetime missing", "initiator missing", "address missing",
    "port container missing", "static mapping", "protocol unsupported", "tcp state missing",
    "icmp type missing", "untranslated", "augment member qualified twice", "udp entry said to be tcp",
))


# Mutations that the strict checker refuses today but may come to accept: the mapping code is
# learning to carry more protocols.
MAY_BECOME_VALID = frozenset(("protocol unsupported",))


def mutated_entry(mapping, name):
    """A copy of `mapping` with ENTRY_MUTATIONS[name] applied, or None when it does not fit."""
    if name == "entry not an object":
        return [mapping]
    changed = copy.deepcopy(mapping)
    try:
        ENTRY_MUTATIONS[name](changed)
    except KeyError:
        return None
    return changed
