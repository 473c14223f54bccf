# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Builders of test sessions and documents, shared by the unit tests, the hostile corpus and the
property-based tests (plain functions here, Hypothesis strategies in strategies.py)."""

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
