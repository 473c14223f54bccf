# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Builders of test sessions and documents, shared by the unit tests, the hostile corpus and the
property-based tests (plain functions here, Hypothesis strategies in strategies.py)."""

import copy
import json
import os
import socket
import subprocess
import sys

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    ConntrackEntry,
    FlowTuple,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import NatRule
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


def bare(family, proto, src, dst, rsrc, rdst, status, keys=(0, 0), **extra):
    """A GRE (with its keys) or generic-tracker session: translated by address alone."""
    return ConntrackEntry(FlowTuple(family, proto, src, dst, keys[0], keys[1]),
                          FlowTuple(family, proto, rsrc, rdst, keys[1], keys[0]), status,
                          extra.pop("timeout", 600), **extra)


# One of each kind of session a NAT holds: (name, entry, expected initiator).
SAMPLES = [
    ("tcp snat v4", tcp(V4, "192.0.2.2", "203.0.113.9", 41000, 443,
                        "203.0.113.9", "198.51.100.1", 443, 25001, SEEN | IPS_SRC_NAT, mark=7, zone=5), "internal"),
    ("tcp masquerade v6", tcp(V6, "2001:db8:1::2", "2001:db8:2::2", 50000, 80,
                              "2001:db8:2::2", "2001:db8:2::1", 80, 20001, SEEN | IPS_SRC_NAT), "internal"),
    ("tcp port forward v4", tcp(V4, "198.51.100.2", "198.51.100.1", 38972, 8080,
                                "192.0.2.2", "198.51.100.2", 80, 38972, SEEN | IPS_DST_NAT), "external"),
    ("udp snat v4 unreplied", udp(V4, "192.0.2.2", "198.51.100.2", 55163, 53,
                                  "198.51.100.2", "198.51.100.1", 53, 25365, IPS_CONFIRMED | IPS_SRC_NAT,
                                  mark=42, labels=bytes(range(16))), "internal"),
    ("udp port forward v6", udp(V6, "2001:db8:2::2", "2001:db8:2::1", 55478, 5353,
                                "2001:db8:1::2", "2001:db8:2::2", 53, 55478,
                                IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_DST_NAT), "external"),
    ("udp twice nat v4", udp(V4, "198.51.100.2", "198.51.100.1", 40000, 5353,
                             "192.0.2.2", "192.0.2.1", 53, 61000,
                             SEEN | IPS_SRC_NAT | IPS_DST_NAT), "external"),
    ("icmp snat v4 with id remap", icmp(V4, "192.0.2.8", "203.0.113.9", 777,
                                        "203.0.113.9", "198.51.100.1", 2049,
                                        IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_SRC_NAT, zone=5), "internal"),
    ("icmpv6 snat", icmp(V6, "2001:db8:1::2", "2001:db8:2::2", 9131,
                         "2001:db8:2::2", "2001:db8:2::1", 9131, IPS_CONFIRMED | IPS_SRC_NAT), "internal"),
    ("icmp dnat v4", icmp(V4, "198.51.100.2", "198.51.100.1", 12,
                          "192.0.2.2", "198.51.100.2", 12, IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_DST_NAT), "external"),
    ("tcp without window tracking", tcp(V4, "192.0.2.3", "203.0.113.9", 41001, 443,
                                        "203.0.113.9", "198.51.100.1", 443, 25002, SEEN | IPS_SRC_NAT,
                                        tcp_state=7, tcp_wscale_orig=None, tcp_wscale_reply=None,
                                        tcp_flags_orig=None, tcp_flags_reply=None), "internal"),
    ("udplite snat v4", ConntrackEntry(FlowTuple(V4, 136, "192.0.2.2", "198.51.100.2", 4000, 5000),
                                       FlowTuple(V4, 136, "198.51.100.2", "198.51.100.1", 5000, 20100),
                                       IPS_CONFIRMED | IPS_SRC_NAT, 30), "internal"),
    ("gre pptp snat v4", bare(V4, 47, "192.0.2.2", "198.51.100.2", "198.51.100.2", "198.51.100.1",
                              SEEN | IPS_SRC_NAT, keys=(0, 0x1234), timeout=180), "internal"),
    ("gre dnat v4", bare(V4, 47, "198.51.100.2", "198.51.100.1", "192.0.2.2", "198.51.100.2",
                         IPS_CONFIRMED | IPS_DST_NAT, timeout=30, mark=3), "external"),
    ("esp snat v4", bare(V4, 50, "192.0.2.2", "198.51.100.2", "198.51.100.2", "198.51.100.1",
                         SEEN | IPS_SRC_NAT), "internal"),
    ("esp snat v6", bare(V6, 50, "2001:db8:1::2", "2001:db8:2::2", "2001:db8:2::2", "2001:db8:2::1",
                         SEEN | IPS_SRC_NAT, zone=4), "internal"),
    ("ah dnat v4", bare(V4, 51, "198.51.100.2", "198.51.100.1", "192.0.2.2", "198.51.100.2",
                        IPS_CONFIRMED | IPS_DST_NAT), "external"),
    ("protocol 253 twice nat v4", bare(V4, 253, "198.51.100.2", "198.51.100.1", "192.0.2.2", "192.0.2.1",
                                       SEEN | IPS_SRC_NAT | IPS_DST_NAT), "external"),
]
SAMPLE_IDS = [sample[0] for sample in SAMPLES]


def samples_of_every_protocol():
    """The entries of SAMPLES: sample_entries() and the protocols tracked by address alone."""
    return [sample[1] for sample in SAMPLES]


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


def snapshot_document(entries, name="edge-nat", taken_at="2026-11-26T08:00:00Z"):
    """A full snapshot document holding `entries` (indexed 1..n), read at `taken_at`."""
    doc = new_document(name, taken_at=taken_at, source_host="nat-a",
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


# NAT rules: what the iptables and nftables tools list for rules loaded by hand, and the rules they are.

# Output of iptables-legacy-save / ip6tables-legacy-save 1.8.9 for rules set up by hand.
SAVE_V4 = """\
# Generated by iptables-save v1.8.9 on Thu Nov 26 08:15:43 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:NFSTATE-POST - [0:0]
:NFSTATE-PRE - [0:0]
-A PREROUTING -j NFSTATE-PRE
-A POSTROUTING -j NFSTATE-POST
-A NFSTATE-POST -s 192.0.2.0/24 -o veth-out -p tcp -m tcp --dport 80 -j SNAT --to-source 203.0.113.10-203.0.113.12:1024-2000
-A NFSTATE-POST -s 192.0.2.5/32 -d 198.51.100.0/24 -o veth-out -p udp -m multiport --dports 53,1000:2000 -j MASQUERADE --to-ports 3000-4000
-A NFSTATE-POST -o veth-out -j MASQUERADE
-A NFSTATE-POST -o veth-out -p gre -j SNAT --to-source 203.0.113.1
-A NFSTATE-POST -o veth-out -p sctp -m sctp --dport 5 -j SNAT --to-source 203.0.113.1:5
-A NFSTATE-PRE -d 203.0.113.1/32 -i veth-out -p tcp -m tcp --dport 8080:8090 -j DNAT --to-destination 192.0.2.10-192.0.2.11:80-90
COMMIT
# Completed on Thu Nov 26 08:15:43 2026
"""

SAVE_V6 = """\
# Generated by ip6tables-save v1.8.9 on Thu Nov 26 08:15:43 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:NFSTATE-POST - [0:0]
:NFSTATE-PRE - [0:0]
-A PREROUTING -j NFSTATE-PRE
-A POSTROUTING -j NFSTATE-POST
-A NFSTATE-POST -s 2001:db8:1::/64 -o veth-out -p tcp -m tcp --dport 80 -j SNAT --to-source 2001:db8::10-2001:db8::12
-A NFSTATE-POST -s 2001:db8:1::/64 -o veth-out -p tcp -m tcp --dport 80 -j SNAT --to-source [2001:db8::10-2001:db8::12]:1024-2000
-A NFSTATE-PRE -p tcp -j DNAT --to-destination [2001:db8::10]:80
-A NFSTATE-PRE -p ipv6-icmp -j DNAT --to-destination 2001:db8::10
COMMIT
# Completed on Thu Nov 26 08:15:43 2026
"""

EXPECTED_V4 = [
    NatRule("dnat", "ipv4", "outside", None, None, "203.0.113.1/32", 6, ((8080, 8090),),
            ("192.0.2.10", "192.0.2.11"), (80, 90)),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.0/24", None, 6, ((80, 80),),
            ("203.0.113.10", "203.0.113.12"), (1024, 2000)),
    NatRule("masquerade", "ipv4", None, "outside", "192.0.2.5/32", "198.51.100.0/24", 17,
            ((53, 53), (1000, 2000)), None, (3000, 4000)),
    NatRule("masquerade", "ipv4", None, "outside"),
    NatRule("snat", "ipv4", None, "outside", proto=47, to_addresses=("203.0.113.1", "203.0.113.1")),
    NatRule("snat", "ipv4", None, "outside", proto=132, dports=((5, 5),),
            to_addresses=("203.0.113.1", "203.0.113.1"), to_ports=(5, 5)),
]

EXPECTED_V6 = [
    NatRule("dnat", "ipv6", proto=6, to_addresses=("2001:db8::10", "2001:db8::10"), to_ports=(80, 80)),
    NatRule("dnat", "ipv6", proto=58, to_addresses=("2001:db8::10", "2001:db8::10")),
    NatRule("snat", "ipv6", None, "outside", "2001:db8:1::/64", None, 6, ((80, 80),),
            ("2001:db8::10", "2001:db8::12")),
    NatRule("snat", "ipv6", None, "outside", "2001:db8:1::/64", None, 6, ((80, 80),),
            ("2001:db8::10", "2001:db8::12"), (1024, 2000)),
]


def match(left, right):
    return {"match": {"op": "==", "left": left, "right": right}}


def meta(key):
    return {"meta": {"key": key}}


def payload(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def rule(chain, *exprs):
    return {"rule": {"family": "inet", "table": "nfstate_nat", "chain": chain, "handle": 9, "expr": list(exprs)}}


# `nft -j list table inet nfstate_nat` (nftables 1.0.6) after loading rules by hand: note that nft
# drops the `meta nfproto` and `meta l4proto` matches that an address or port match implies,
# and lists a range that is a whole prefix as that prefix.
LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "nfstate_nat", "handle": 1}},
    {"chain": {"family": "inet", "table": "nfstate_nat", "name": "prerouting", "handle": 1, "type": "nat",
               "hook": "prerouting", "prio": -100, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "nfstate_nat", "name": "postrouting", "handle": 2, "type": "nat",
               "hook": "postrouting", "prio": 100, "policy": "accept"}},
    rule("prerouting", match(meta("iifname"), "veth-out"), match(payload("ip", "daddr"), "203.0.113.1"),
         match(payload("tcp", "dport"), {"range": [8080, 8090]}),
         {"dnat": {"family": "ip", "addr": {"prefix": {"addr": "192.0.2.10", "len": 31}},
                   "port": {"range": [80, 90]}}}),
    rule("prerouting", match(meta("nfproto"), "ipv6"), match(meta("iifname"), "veth-out"),
         match(payload("tcp", "dport"), 22), {"dnat": {"family": "ip6", "addr": "2001:db8::10", "port": 80}}),
    rule("prerouting", match(meta("nfproto"), "ipv4"),
         match(payload("tcp", "dport"), {"set": [53, {"range": [1000, 2000]}]}),
         {"dnat": {"family": "ip", "addr": "192.0.2.10"}}),
    rule("postrouting", match(meta("oifname"), "veth-out"),
         match(payload("ip", "saddr"), {"prefix": {"addr": "192.0.2.0", "len": 24}}),
         match(payload("tcp", "dport"), 80),
         {"snat": {"family": "ip", "addr": {"range": ["203.0.113.10", "203.0.113.12"]},
                   "port": {"range": [1024, 2000]}}}),
    rule("postrouting", match(payload("ip", "saddr"), "192.0.2.5"),
         match(payload("ip", "daddr"), {"prefix": {"addr": "198.51.100.0", "len": 24}}),
         match(payload("udp", "dport"), {"set": [53, {"range": [1000, 2000]}]}),
         {"masquerade": {"port": {"range": [3000, 4000]}}}),
    rule("postrouting", match(meta("nfproto"), "ipv4"), match(meta("oifname"), "veth-out"), {"masquerade": None}),
    rule("postrouting", match(meta("nfproto"), "ipv4"), match(meta("l4proto"), "gre"),
         {"snat": {"family": "ip", "addr": "203.0.113.1"}}),
    rule("postrouting", match(payload("ip6", "saddr"), {"prefix": {"addr": "2001:db8:1::", "len": 64}}),
         match(meta("l4proto"), "tcp"),
         {"snat": {"family": "ip6", "addr": {"range": ["2001:db8::10", "2001:db8::12"]},
                   "port": {"range": [1024, 2000]}}}),
    rule("postrouting", match(meta("nfproto"), "ipv6"), match(payload("sctp", "dport"), 5),
         {"snat": {"family": "ip6", "addr": "2001:db8::10"}}),
]}

EXPECTED_NFT = [
    NatRule("dnat", "ipv4", "outside", None, None, "203.0.113.1/32", 6, ((8080, 8090),),
            ("192.0.2.10", "192.0.2.11"), (80, 90)),
    NatRule("dnat", "ipv4", None, None, None, None, 6, ((53, 53), (1000, 2000)), ("192.0.2.10", "192.0.2.10")),
    NatRule("dnat", "ipv6", "outside", None, None, None, 6, ((22, 22),), ("2001:db8::10", "2001:db8::10"), (80, 80)),
    NatRule("snat", "ipv4", None, "outside", "192.0.2.0/24", None, 6, ((80, 80),),
            ("203.0.113.10", "203.0.113.12"), (1024, 2000)),
    NatRule("masquerade", "ipv4", None, None, "192.0.2.5/32", "198.51.100.0/24", 17,
            ((53, 53), (1000, 2000)), None, (3000, 4000)),
    NatRule("masquerade", "ipv4", None, "outside"),
    NatRule("snat", "ipv4", proto=47, to_addresses=("203.0.113.1", "203.0.113.1")),
    NatRule("snat", "ipv6", None, None, "2001:db8:1::/64", None, 6, (), ("2001:db8::10", "2001:db8::12"),
            (1024, 2000)),
    NatRule("snat", "ipv6", proto=132, dports=((5, 5),), to_addresses=("2001:db8::10", "2001:db8::10")),
]


def run_nat_rules_module(tmp_path, **args):
    """Run the nat_rules module as Ansible runs it: a separate Python process, arguments in a file,
    the answer in JSON."""
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), LANG="C")
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.nfstate.migration.plugins.modules.nat_rules", str(path)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    return json.loads(proc.stdout)
