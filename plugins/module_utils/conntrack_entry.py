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

# TCP conntrack states (enum tcp_conntrack), by kernel number.
TCP_STATES = (
    "none", "syn-sent", "syn-recv", "established", "fin-wait",
    "close-wait", "last-ack", "time-wait", "close", "syn-sent2",
)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
PROTOCOL_NAMES = {IPPROTO_ICMP: "icmp", IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMPV6: "icmpv6"}

# One direction of a connection. Addresses are text (as socket.inet_ntop writes them). For TCP/UDP,
# sport/dport are ports. For ICMP/ICMPv6, sport is the query identifier in both directions (the
# kernel keeps it as the source side of each tuple), dport is 0, icmp_type/icmp_code are set.
FlowTuple = namedtuple(
    "FlowTuple",
    ["family", "proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code"],
    defaults=(None, None),
)

# One conntrack entry as the kernel reports it. `reply` is the translated reply tuple.
# tcp_* fields are None for non-TCP entries; labels is None or 16 bytes; timeout in seconds.
ConntrackEntry = namedtuple(
    "ConntrackEntry",
    [
        "orig", "reply", "status", "timeout",
        "mark", "zone", "labels",
        "tcp_state", "tcp_wscale_orig", "tcp_wscale_reply", "tcp_flags_orig", "tcp_flags_reply",
    ],
    defaults=(0, 0, None, None, None, None, None, None),
)


def is_translated(entry):
    """True when the kernel applied source or destination NAT to the entry."""
    return bool(entry.status & IPS_NAT_MASK) or translation(entry) != (None, None)


def is_icmp(tup):
    return tup.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)


# ICMP queries and their replies (RFC 792, RFC 4443): echo, timestamp, information, address mask.
ICMP_REPLY_TYPE = {8: 0, 13: 14, 15: 16, 17: 18}
ICMPV6_REPLY_TYPE = {128: 129}


def translation(entry):
    """The NAT binding implied by an entry: (nat_src, nat_dst), each (address, port) or None.

    The reply tuple, read backwards, is the packet as it leaves the NAT in the original direction.
    Where it differs from the original tuple, that side was translated.
    For ICMP the query identifier stands in the sport field of *both* tuples (as in the kernel),
    and it can only be changed by source NAT; a destination NAT binding then carries port None.
    """
    orig, reply = entry.orig, entry.reply
    if is_icmp(orig):
        nat_src = None if (reply.dst, reply.sport) == (orig.src, orig.sport) else (reply.dst, reply.sport)
        nat_dst = None if reply.src == orig.dst else (reply.src, None)
        return nat_src, nat_dst
    nat_src = None if (reply.dst, reply.dport) == (orig.src, orig.sport) else (reply.dst, reply.dport)
    nat_dst = None if (reply.src, reply.sport) == (orig.dst, orig.dport) else (reply.src, reply.sport)
    return nat_src, nat_dst


def inverse(tup):
    """The reply tuple the kernel expects for an un-translated connection (its plain inverse)."""
    if is_icmp(tup):
        replies = ICMP_REPLY_TYPE if tup.proto == IPPROTO_ICMP else ICMPV6_REPLY_TYPE
        return tup._replace(src=tup.dst, dst=tup.src, icmp_type=replies.get(tup.icmp_type, tup.icmp_type))
    return tup._replace(src=tup.dst, dst=tup.src, sport=tup.dport, dport=tup.sport)


def describe(entry):
    """One line naming a session, for errors and reports: proto src:port -> dst:port [nat]."""
    orig = entry.orig
    proto = PROTOCOL_NAMES.get(orig.proto, str(orig.proto))
    if is_icmp(orig):
        text = "%s %s -> %s id %s" % (proto, orig.src, orig.dst, orig.sport)
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
