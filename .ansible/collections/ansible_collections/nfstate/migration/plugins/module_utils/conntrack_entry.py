# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A kernel conntrack entry as plain data, shared by the netlink driver, the XML parser and the model.

An entry is kept exactly as the kernel reports it: the original tuple and the *translated* reply tuple.
The driver derives the NAT binding from the difference between the two when it re-creates an entry,
so everything above the driver only ever sees entries "as dumped".
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
from collections import namedtuple

# Status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT
IPS_FIXED_TIMEOUT = 1 << 10

# TCP conntrack states (enum tcp_conntrack), by kernel number.
TCP_STATES = (
    "none", "syn-sent", "syn-recv", "established", "fin-wait",
    "close-wait", "last-ack", "time-wait", "close", "syn-sent2",
)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_DCCP = 33
IPPROTO_GRE = 47
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136
PROTOCOL_NAMES = {
    IPPROTO_ICMP: "icmp", IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_DCCP: "dccp", IPPROTO_GRE: "gre",
    IPPROTO_ESP: "esp", IPPROTO_AH: "ah", IPPROTO_ICMPV6: "icmpv6", IPPROTO_SCTP: "sctp", IPPROTO_UDPLITE: "udplite",
}

# How the kernel tracks a protocol, which says what its tuples hold:
# - ports: TCP, UDP, UDP-Lite (and SCTP, DCCP, whose trackers also keep state we do not carry);
# - ICMP/ICMPv6: the query identifier, type and code;
# - GRE: the two keys (PPTP call IDs; 0 for plain GRE), in the port fields as in the kernel. Only
#   the PPTP helper translates keys, so a NAT without it translates GRE by its addresses alone;
# - every other protocol (ESP, AH, ...): the generic tracker, addresses only (ports 0).
PORT_PROTOCOLS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_DCCP))
ICMP_PROTOCOLS = frozenset((IPPROTO_ICMP, IPPROTO_ICMPV6))
# Whose tuples carry the port attributes (ports, or GRE's keys); the generic tracker's carry none.
PORTED_PROTOCOLS = PORT_PROTOCOLS | frozenset((IPPROTO_GRE,))

# One direction of a connection. Addresses are text (as socket.inet_ntop writes them). For TCP/UDP,
# sport/dport are ports. For ICMP/ICMPv6, sport is the query identifier in both directions (the
# kernel keeps it as the source side of each tuple), dport is 0, icmp_type/icmp_code are set. For
# GRE, sport/dport are the source and destination keys. For the generic tracker both are 0.
FlowTuple = namedtuple(
    "FlowTuple",
    ["family", "proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code"],
    defaults=(None, None),
)

# One conntrack entry as the kernel reports it. `reply` is the translated reply tuple.
# tcp_* fields are None for non-TCP entries; labels is None or 16 bytes; timeout in seconds.
# alg: None, or the conntrack_helper.HelperState of an ALG's session (its helper, sequence
# adjustment, master); a session's identity and binding never depend on it.
ConntrackEntry = namedtuple(
    "ConntrackEntry",
    [
        "orig", "reply", "status", "timeout",
        "mark", "zone", "labels",
        "tcp_state", "tcp_wscale_orig", "tcp_wscale_reply", "tcp_flags_orig", "tcp_flags_reply",
        "alg",
    ],
    defaults=(0, 0, None, None, None, None, None, None, None),
)


def is_translated(entry):
    """True when the kernel applied source or destination NAT to the entry."""
    return bool(entry.status & IPS_NAT_MASK) or translation(entry) != (None, None)


def is_icmp(tup):
    return tup.proto in ICMP_PROTOCOLS


def has_ports(tup):
    """Whether the tuple's port fields take part in NAT (ports; GRE keys are never translated)."""
    return tup.proto in PORT_PROTOCOLS


# ICMP queries and their replies (RFC 792, RFC 4443): echo, timestamp, information, address mask.
ICMP_REPLY_TYPE = {8: 0, 13: 14, 15: 16, 17: 18}
ICMPV6_REPLY_TYPE = {128: 129}


def translation(entry):
    """The NAT binding implied by an entry: (nat_src, nat_dst), each (address, port) or None.

    The reply tuple, read backwards, is the packet as it leaves the NAT in the original direction.
    Where it differs from the original tuple, that side was translated.
    For ICMP the query identifier stands in the sport field of *both* tuples (as in the kernel),
    and it can only be changed by source NAT; a destination NAT binding then carries port None.
    GRE and the generic tracker's protocols are translated by address alone: port None.
    """
    orig, reply = entry.orig, entry.reply
    proto = orig.proto
    if proto in ICMP_PROTOCOLS:
        nat_src = None if (reply.dst, reply.sport) == (orig.src, orig.sport) else (reply.dst, reply.sport)
        nat_dst = None if reply.src == orig.dst else (reply.src, None)
        return nat_src, nat_dst
    if proto not in PORT_PROTOCOLS:
        return (None if reply.dst == orig.src else (reply.dst, None),
                None if reply.src == orig.dst else (reply.src, None))
    nat_src = None if (reply.dst, reply.dport) == (orig.src, orig.sport) else (reply.dst, reply.dport)
    nat_dst = None if (reply.src, reply.sport) == (orig.dst, orig.dport) else (reply.src, reply.sport)
    return nat_src, nat_dst


def inverse(tup):
    """The reply tuple the kernel expects for an un-translated connection (its plain inverse)."""
    if is_icmp(tup):
        replies = ICMP_REPLY_TYPE if tup.proto == IPPROTO_ICMP else ICMPV6_REPLY_TYPE
        return tup._replace(src=tup.dst, dst=tup.src, icmp_type=replies.get(tup.icmp_type, tup.icmp_type))
    return tup._replace(src=tup.dst, dst=tup.src, sport=tup.dport, dport=tup.sport)


def gre_keys_translated(entry):
    """Whether a GRE entry's reply keys are not the plain swap of its original ones."""
    return (entry.reply.sport, entry.reply.dport) != (entry.orig.dport, entry.orig.sport)


def describe(entry):
    """One line naming a session, for errors and reports: proto src:port -> dst:port [nat]."""
    orig = entry.orig
    proto = PROTOCOL_NAMES.get(orig.proto, "protocol %s" % orig.proto)
    if is_icmp(orig):
        text = "%s %s -> %s id %s" % (proto, orig.src, orig.dst, orig.sport)
    elif orig.proto == IPPROTO_GRE:
        text = "gre %s -> %s keys 0x%x/0x%x" % (orig.src, orig.dst, orig.sport or 0, orig.dport or 0)
        if gre_keys_translated(entry):
            text += " reply keys 0x%x/0x%x" % (entry.reply.sport or 0, entry.reply.dport or 0)
    elif orig.proto not in PORT_PROTOCOLS:
        text = "%s %s -> %s" % (proto, orig.src, orig.dst)
    else:
        text = "%s %s -> %s" % (proto, endpoint(orig.src, orig.sport), endpoint(orig.dst, orig.dport))
    nat_src, nat_dst = translation(entry)
    if nat_src:
        text += " snat %s" % endpoint(*nat_src)
    if nat_dst:
        text += " dnat %s" % endpoint(*nat_dst)
    if entry.zone:
        text += " zone %d" % entry.zone
    return text


def endpoint(address, port):
    if port is None:
        return address
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def family_name(family):
    return {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}[family]
