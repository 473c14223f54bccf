# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's conntrack table over ctnetlink: dump, re-create with NAT binding, refresh, delete.

Speed matters (a NAT holds 100k sessions and the migration's downtime waits for them), and the
time goes into Python building and parsing messages, not into the kernel. So both directions work
from *layouts*: the shape of a message (which attributes, where) is worked out once per kind of
entry and compiled into precompiled struct.Struct objects; each entry then costs a couple of
C-level pack/unpack calls instead of a function call per attribute.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import gc
import operator
import os
import socket
import struct

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    PORT_PROTOCOLS,
    PORTED_PROTOCOLS,
    ConntrackEntry,
    FlowTuple,
    ICMP_REPLY_TYPE,
    ICMPV6_REPLY_TYPE,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_FIXED_TIMEOUT,
    IPS_NAT_MASK,
    IPS_SEEN_REPLY,
    describe,
)
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NFNL_HDRLEN,
    NFGENMSG,
    NLA_F_NESTED,
    NLAHDR,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_LEN_TYPE,
    NLMSGHDR,
    NETLINK_NETFILTER,
    NetlinkSocket,
    NetlinkError,
    iter_attrs,
    nfnl_msg_type,
    pack_message,
)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CT_NEW = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW)
CT_GET = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET)
CT_DELETE = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE)

# enum ctattr_type and the nested enums (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_NAT_SRC = 6
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_NAT_DST = 13
CTA_ZONE = 18
CTA_LABELS = 22
CTA_LABELS_MASK = 23

CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2

CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4

CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_ID = 7
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9

CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_PROTOINFO_TCP_WSCALE_ORIGINAL = 2
CTA_PROTOINFO_TCP_WSCALE_REPLY = 3
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL = 4
CTA_PROTOINFO_TCP_FLAGS_REPLY = 5

CTA_NAT_V4_MINIP = 1
CTA_NAT_PROTO = 3
CTA_NAT_V6_MINIP = 4
CTA_PROTONAT_PORT_MIN = 1

IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
LABELS_LEN = 16
# The status bits a re-created entry may carry: CONFIRMED or the kernel answers EBUSY; the NAT bits
# are the kernel's to set from the NAT attributes.
STATUS_KEPT = IPS_ASSURED | IPS_SEEN_REPLY

PROC_CONNTRACK = "/proc/sys/net/netfilter/"

_ICMP_PROTOS = (IPPROTO_ICMP, IPPROTO_ICMPV6)
_ADDR_CODE = {socket.AF_INET: "4s", socket.AF_INET6: "16s"}
_NEW = tuple.__new__  # builds a namedtuple from a ready tuple without its Python-level __new__
# The attributes of an ALG's session (conntrack_helper): a message that has any goes through the
# slow parser as well. Rare, and told by the layout, so the common entry pays nothing for them.
# (CTA_HELP, CTA_TUPLE_MASTER, CTA_SEQ_ADJ_ORIG, CTA_SEQ_ADJ_REPLY, as in conntrack_helper)
_ALG_ATTRS = frozenset((5, 14, 15, 16))
_NLMSG_LEN = struct.Struct("=I")


def parse_helper_attrs(buf, offset, length):
    """conntrack_helper.parse_helper_attrs (imported here: that module builds on this one's tuples)."""
    from ansible_collections.nfstate.migration.plugins.module_utils import conntrack_helper  # pylint: disable=import-outside-toplevel
    return conntrack_helper.parse_helper_attrs(buf, offset, length)


def pack_helper_attrs(state):
    """conntrack_helper.pack_helper_attrs, imported as parse_helper_attrs is."""
    from ansible_collections.nfstate.migration.plugins.module_utils import conntrack_helper  # pylint: disable=import-outside-toplevel
    return conntrack_helper.pack_helper_attrs(state)


class ConntrackError(Exception):
    """The conntrack table could not be read or written at all (socket-level failure)."""


def conntrack_count():
    """Entries in this network namespace's table."""
    return _read_proc_int("nf_conntrack_count")


def conntrack_max():
    """The table's size limit (global, read-only inside a network namespace)."""
    return _read_proc_int("nf_conntrack_max")


def _read_proc_int(name):
    try:
        with open(PROC_CONNTRACK + name) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError) as exc:
        raise ConntrackError("cannot read %s%s: %s (is nf_conntrack loaded?)" % (PROC_CONNTRACK, name, exc))


# ---------------------------------------------------------------------------------------------
# Building messages. A template is a tree of attributes whose payloads are pieces: constant bytes,
# or (struct code, field) taking a value from the entry's field vector below. Compiling a template
# merges all constant bytes (headers, protocol numbers, masks) into a few 's' fields of a single
# big-endian Struct, so that one pack() call writes a whole message.

(F_OSRC, F_ODST, F_SPORT, F_DPORT, F_ITYPE, F_ICODE, F_RTYPE, F_STATUS, F_TIMEOUT, F_MARK, F_ZONE,
 F_LABELS, F_STATE, F_WSO, F_WSR, F_FLO, F_FLR, F_NSADDR, F_NSPORT, F_NDADDR, F_NDPORT) = range(21)
_NFIELDS = 21


def _attr(atype, *pieces):
    return ("attr", atype, pieces)


def _nest(atype, *children):
    return ("nest", atype | NLA_F_NESTED, children)


def _piece_size(piece):
    return len(piece) if isinstance(piece, bytes) else struct.calcsize(">" + piece[0])


def _flatten(node):
    """(pieces, length) of a packed attribute, header and padding included."""
    kind, atype, content = node
    if kind == "attr":
        pieces = list(content)
    else:
        pieces = []
        for child in content:
            pieces.extend(_flatten(child)[0])
    length = NLAHDR.size + sum(_piece_size(p) for p in pieces)
    pad = (-length) % 4
    return [NLAHDR.pack(length, atype)] + pieces + ([b"\0" * pad] if pad else []), length + pad


class MessageTemplate(object):
    """A compiled message shape: pack(fields) gives the message for one entry's field vector."""

    __slots__ = ("struct", "pick", "consts", "size")

    def __init__(self, msg_type, flags, family, nodes):
        pieces = []
        for node in nodes:
            pieces.extend(_flatten(node)[0])
        size = NFNL_HDRLEN + sum(_piece_size(p) for p in pieces)
        pieces = [NLMSGHDR.pack(size, msg_type, flags, 0, 0) + NFGENMSG.pack(family, 0, 0)] + pieces
        fmt, picks, consts = [">"], [], []
        for piece in pieces:
            if isinstance(piece, bytes):
                if consts and picks[-1] == _NFIELDS + len(consts) - 1:
                    consts[-1] += piece  # extend the previous constant run
                    fmt[-1] = "%ds" % len(consts[-1])
                    continue
                consts.append(piece)
                picks.append(_NFIELDS + len(consts) - 1)
                fmt.append("%ds" % len(piece))
            else:
                picks.append(piece[1])
                fmt.append(piece[0])
        self.struct = struct.Struct("".join(fmt))
        self.pick = operator.itemgetter(*picks)
        self.consts = tuple(consts)
        self.size = size

    def pack(self, fields):
        return self.struct.pack(*self.pick(tuple(fields) + self.consts))


def _tuple_node(direction, family, proto):
    """An address tuple; the reply direction is the plain inverse of the original."""
    reply = direction == CTA_TUPLE_REPLY
    code = _ADDR_CODE[family]
    src, dst = (F_ODST, F_OSRC) if reply else (F_OSRC, F_ODST)
    a_src, a_dst = (CTA_IP_V4_SRC, CTA_IP_V4_DST) if family == socket.AF_INET else (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    ip = _nest(CTA_TUPLE_IP, _attr(a_src, (code, src)), _attr(a_dst, (code, dst)))
    num = _attr(CTA_PROTO_NUM, bytes([proto]))
    if proto in _ICMP_PROTOS:
        a_id, a_type, a_code = ((CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
                                if proto == IPPROTO_ICMP else
                                (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE))
        l4 = (_attr(a_id, ("H", F_SPORT)), _attr(a_type, ("B", F_RTYPE if reply else F_ITYPE)),
              _attr(a_code, ("B", F_ICODE)))
    elif proto in PORTED_PROTOCOLS:
        # Ports, or GRE's keys: the kernel reads both from CTA_PROTO_SRC_PORT/DST_PORT.
        sport, dport = (F_DPORT, F_SPORT) if reply else (F_SPORT, F_DPORT)
        l4 = (_attr(CTA_PROTO_SRC_PORT, ("H", sport)), _attr(CTA_PROTO_DST_PORT, ("H", dport)))
    else:
        l4 = ()  # the generic tracker: a protocol number and addresses
    return _nest(direction, ip, _nest(CTA_TUPLE_PROTO, num, *l4))


def _nat_node(atype, family, addr_field, port_field):
    minip = CTA_NAT_V4_MINIP if family == socket.AF_INET else CTA_NAT_V6_MINIP
    children = [_attr(minip, (_ADDR_CODE[family], addr_field))]
    if port_field is not None:
        # Only the minimum: the kernel takes max = min, a range of one address and one port.
        children.append(_nest(CTA_NAT_PROTO, _attr(CTA_PROTONAT_PORT_MIN, ("H", port_field))))
    return _nest(atype, *children)


def _tcp_protoinfo_node():
    return _nest(CTA_PROTOINFO, _nest(
        CTA_PROTOINFO_TCP,
        _attr(CTA_PROTOINFO_TCP_STATE, ("B", F_STATE)),
        _attr(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, ("B", F_WSO)),
        _attr(CTA_PROTOINFO_TCP_WSCALE_REPLY, ("B", F_WSR)),
        # struct nf_ct_tcp_flags {flags, mask}: the mask says which flags to set.
        _attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, ("B", F_FLO), b"\xff"),
        _attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, ("B", F_FLR), b"\xff"),
    ))


NAT_NONE, NAT_ADDR, NAT_ADDR_PORT = 0, 1, 2


def create_template(family, proto, nat_src, nat_dst, labels, protoinfo):
    """The CT_NEW message for one kind of entry (nat_src/nat_dst: NAT_NONE/NAT_ADDR/NAT_ADDR_PORT)."""
    nodes = [
        _tuple_node(CTA_TUPLE_ORIG, family, proto),
        _tuple_node(CTA_TUPLE_REPLY, family, proto),
        _attr(CTA_STATUS, ("I", F_STATUS)),
        _attr(CTA_TIMEOUT, ("I", F_TIMEOUT)),
        _attr(CTA_MARK, ("I", F_MARK)),
        _attr(CTA_ZONE, ("H", F_ZONE)),
    ]
    if labels:
        nodes.append(_attr(CTA_LABELS, ("%ds" % LABELS_LEN, F_LABELS)))
        nodes.append(_attr(CTA_LABELS_MASK, b"\xff" * LABELS_LEN))
    if protoinfo:
        nodes.append(_tcp_protoinfo_node())
    if nat_src:
        nodes.append(_nat_node(CTA_NAT_SRC, family, F_NSADDR, F_NSPORT if nat_src == NAT_ADDR_PORT else None))
    if nat_dst:
        nodes.append(_nat_node(CTA_NAT_DST, family, F_NDADDR, F_NDPORT if nat_dst == NAT_ADDR_PORT else None))
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL  # NLM_F_ACK: the socket decides
    return MessageTemplate(CT_NEW, flags, family, nodes)


def update_template(family, proto, mark, labels, protoinfo):
    """The CT_NEW message that changes an existing entry, found by its original tuple and zone.

    Without NLM_F_CREATE the kernel only updates. The NAT attributes are left out (it refuses them
    on an existing entry), and so is the status (it refuses most changes of it).
    """
    nodes = [
        _tuple_node(CTA_TUPLE_ORIG, family, proto),
        _attr(CTA_ZONE, ("H", F_ZONE)),
        _attr(CTA_TIMEOUT, ("I", F_TIMEOUT)),
    ]
    if mark:
        nodes.append(_attr(CTA_MARK, ("I", F_MARK)))
    if labels:
        nodes.append(_attr(CTA_LABELS, ("%ds" % LABELS_LEN, F_LABELS)))
        nodes.append(_attr(CTA_LABELS_MASK, b"\xff" * LABELS_LEN))
    if protoinfo:
        nodes.append(_tcp_protoinfo_node())
    return MessageTemplate(CT_NEW, NLM_F_REQUEST, family, nodes)


def delete_template(family, proto):
    """The CT_DELETE message: the original tuple and the zone find the entry."""
    nodes = [_tuple_node(CTA_TUPLE_ORIG, family, proto), _attr(CTA_ZONE, ("H", F_ZONE))]
    return MessageTemplate(CT_DELETE, NLM_F_REQUEST, family, nodes)


def status_template(family, proto):
    """The CT_NEW message that sets the status bits of an existing entry (found by tuple and zone)."""
    nodes = [_tuple_node(CTA_TUPLE_ORIG, family, proto), _attr(CTA_ZONE, ("H", F_ZONE)),
             _attr(CTA_STATUS, ("I", F_STATUS))]
    return MessageTemplate(CT_NEW, NLM_F_REQUEST, family, nodes)


def get_template(family, proto):
    """The CT_GET message for one entry (no NLM_F_DUMP): found as CT_DELETE finds it."""
    nodes = [_tuple_node(CTA_TUPLE_ORIG, family, proto), _attr(CTA_ZONE, ("H", F_ZONE))]
    return MessageTemplate(CT_GET, NLM_F_REQUEST, family, nodes)


def nat_kinds(entry):
    """(nat_src, nat_dst) kinds of an entry; the same rule as conntrack_entry.translation()."""
    orig, reply = entry.orig, entry.reply
    if orig.proto in _ICMP_PROTOS:
        src = NAT_ADDR_PORT if reply.dst != orig.src or reply.sport != orig.sport else NAT_NONE
        return src, (NAT_ADDR if reply.src != orig.dst else NAT_NONE)
    if orig.proto not in PORT_PROTOCOLS:
        return (NAT_ADDR if reply.dst != orig.src else NAT_NONE), (NAT_ADDR if reply.src != orig.dst else NAT_NONE)
    src = NAT_ADDR_PORT if reply.dst != orig.src or reply.dport != orig.sport else NAT_NONE
    dst = NAT_ADDR_PORT if reply.src != orig.dst or reply.sport != orig.dport else NAT_NONE
    return src, dst


class _PackedAddresses(dict):
    """Address text -> packed bytes for one family; NAT pools and servers repeat a few addresses."""

    def __init__(self, family):
        super(_PackedAddresses, self).__init__()
        self.family = family

    def __missing__(self, text):
        packed = self[text] = socket.inet_pton(self.family, text)
        return packed


class _TextAddresses(dict):
    """Packed address -> text, the other way round (the length tells the family)."""

    def __missing__(self, packed):
        text = self[packed] = socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
        return text


def _with_attrs(message, attrs):
    """A packed message with more attributes at its end (nlmsg_len grown to match)."""
    if not attrs:
        return message
    return _NLMSG_LEN.pack(len(message) + len(attrs)) + message[4:] + attrs


def _is_child(entry):
    alg = entry.alg
    return alg is not None and alg.master is not None


class _MessageBuilder(object):
    """Turns entries into CT_NEW / CT_DELETE messages, compiling a template per kind of entry."""

    def __init__(self):
        self._templates = {}

    def _template(self, key, factory, *args):
        """The compiled template of one kind of entry: factory(*args), or factory(*key)."""
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = factory(*(args or key))
        return template

    def create_messages(self, entries, liberal, failures, order):
        """Yield a CT_NEW message per entry; bad entries go to failures, sent ones' indexes to order."""
        templates = self._templates
        packers = {socket.AF_INET: _PackedAddresses(socket.AF_INET), socket.AF_INET6: _PackedAddresses(socket.AF_INET6)}
        liberal_bit = IP_CT_TCP_FLAG_BE_LIBERAL if liberal else 0
        for index, entry in enumerate(entries):
            try:
                orig, reply = entry.orig, entry.reply
                family = orig.family
                proto = orig.proto
                labels = entry.labels
                protoinfo = proto == IPPROTO_TCP and entry.tcp_state is not None
                # The NAT binding, by the same rule as conntrack_entry.translation().
                if proto in _ICMP_PROTOS:
                    sport, dport = orig.sport, 0
                    itype, icode = orig.icmp_type, orig.icmp_code
                    rtype = (ICMP_REPLY_TYPE if proto == IPPROTO_ICMP else ICMPV6_REPLY_TYPE).get(itype, itype)
                    nsport = reply.sport
                    ndport = None
                    nat_src = NAT_ADDR_PORT if reply.dst != orig.src or nsport != sport else NAT_NONE
                    nat_dst = NAT_ADDR if reply.src != orig.dst else NAT_NONE
                elif proto in PORT_PROTOCOLS:
                    sport, dport = orig.sport, orig.dport
                    itype = icode = rtype = None
                    nsport, ndport = reply.dport, reply.sport
                    nat_src = NAT_ADDR_PORT if reply.dst != orig.src or nsport != sport else NAT_NONE
                    nat_dst = NAT_ADDR_PORT if reply.src != orig.dst or ndport != dport else NAT_NONE
                else:
                    # GRE (its keys as they are: only the PPTP helper translates them) and the
                    # generic tracker's protocols: translated by address alone.
                    sport, dport = orig.sport or 0, orig.dport or 0
                    if proto == IPPROTO_GRE and (reply.sport, reply.dport) != (dport, sport):
                        raise ValueError("translated GRE keys cannot be given to the kernel")
                    itype = icode = rtype = nsport = ndport = None
                    nat_src = NAT_ADDR if reply.dst != orig.src else NAT_NONE
                    nat_dst = NAT_ADDR if reply.src != orig.dst else NAT_NONE
                key = (family, proto, nat_src, nat_dst, labels is not None, protoinfo)
                alg = entry.alg
                template = templates.get(key) or self._template(key, create_template)
                if protoinfo:
                    state = entry.tcp_state
                    wso = entry.tcp_wscale_orig or 0
                    wsr = entry.tcp_wscale_reply or 0
                    flo = (entry.tcp_flags_orig or 0) | liberal_bit
                    flr = (entry.tcp_flags_reply or 0) | liberal_bit
                else:
                    state = wso = wsr = flo = flr = None
                addr = packers[family]
                # template.pack(), inlined: a method call per entry is measurable here.
                message = template.struct.pack(*template.pick((
                    addr[orig.src], addr[orig.dst], sport, dport, itype, icode, rtype,
                    IPS_CONFIRMED | (entry.status & STATUS_KEPT), entry.timeout, entry.mark or 0,
                    entry.zone or 0, labels, state, wso, wsr, flo, flr,
                    addr[reply.dst] if nat_src else None, nsport,
                    addr[reply.src] if nat_dst else None, ndport,
                ) + template.consts))
                if alg is not None:
                    message = _with_attrs(message, pack_helper_attrs(alg))
            except (KeyError, OSError, TypeError, ValueError, AttributeError, struct.error):
                failures.append((entry, errno.EINVAL))
                continue
            order.append(index)
            yield message

    def update_messages(self, entries, liberal, failures, order):
        """Yield a CT_NEW update message per entry (timeout, mark, labels, TCP protoinfo), like
        create_messages(). liberal must be what the entries were created with: the TCP flags are
        written whole (mask 0xff), so an update without the bit would take it away."""
        packers = {socket.AF_INET: _PackedAddresses(socket.AF_INET), socket.AF_INET6: _PackedAddresses(socket.AF_INET6)}
        liberal_bit = IP_CT_TCP_FLAG_BE_LIBERAL if liberal else 0
        for index, entry in enumerate(entries):
            try:
                orig = entry.orig
                family, proto = orig.family, orig.proto
                mark, labels = entry.mark, entry.labels
                protoinfo = proto == IPPROTO_TCP and entry.tcp_state is not None
                template = self._template((family, proto, mark is not None, labels is not None, protoinfo),
                                          update_template)
                if protoinfo:
                    tcp = (entry.tcp_state, entry.tcp_wscale_orig or 0, entry.tcp_wscale_reply or 0,
                           (entry.tcp_flags_orig or 0) | liberal_bit, (entry.tcp_flags_reply or 0) | liberal_bit)
                else:
                    tcp = (None,) * 5
                icmp = proto in _ICMP_PROTOS
                addr = packers[family]
                message = template.pack((
                    addr[orig.src], addr[orig.dst], orig.sport, 0 if icmp else orig.dport,
                    orig.icmp_type, orig.icmp_code, None, None, entry.timeout, mark, entry.zone or 0, labels,
                ) + tcp + (None,) * (_NFIELDS - 17))
            except (KeyError, OSError, TypeError, ValueError, AttributeError, struct.error):
                failures.append((entry, errno.EINVAL))
                continue
            order.append(index)
            yield message

    def fixed_timeout_messages(self, entries, failures, order):
        """Yield, per entry, the update that sets IPS_FIXED_TIMEOUT (kept status bits as created)."""
        pton = socket.inet_pton
        for index, entry in enumerate(entries):
            try:
                orig = entry.orig
                family, proto = orig.family, orig.proto
                template = self._template((status_template, family, proto), status_template, family, proto)
                message = template.pack((
                    pton(family, orig.src), pton(family, orig.dst), orig.sport, orig.dport, None, None, None,
                    IPS_CONFIRMED | (entry.status & STATUS_KEPT) | IPS_FIXED_TIMEOUT, None, None, entry.zone or 0,
                ) + (None,) * (_NFIELDS - 11))
            except (KeyError, OSError, TypeError, ValueError, AttributeError, struct.error):
                failures.append((entry, errno.EINVAL))
                continue
            order.append(index)
            yield message

    def delete_messages(self, entries, failures, order, factory=delete_template):
        """Yield a CT_DELETE message per entry, like create_messages() (factory=get_template: a
        CT_GET, which finds the entry the same way)."""
        pton = socket.inet_pton
        for index, entry in enumerate(entries):
            try:
                orig = entry.orig
                family, proto = orig.family, orig.proto
                template = self._template((factory, family, proto), factory, family, proto)
                icmp = proto in _ICMP_PROTOS
                message = template.pack((
                    pton(family, orig.src), pton(family, orig.dst), orig.sport, 0 if icmp else orig.dport,
                    orig.icmp_type, orig.icmp_code, None, None, None, None, entry.zone or 0,
                ) + (None,) * (_NFIELDS - 11))
            except (KeyError, OSError, TypeError, ValueError, AttributeError, struct.error):
                failures.append((entry, errno.EINVAL))
                continue
            order.append(index)
            yield message


# ---------------------------------------------------------------------------------------------
# Parsing the dump. The kernel writes every entry of one kind (family, protocol, which optional
# attributes) with the same attributes at the same offsets. A DumpLayout, worked out once from the
# first such message, holds one Struct that reads every attribute header we rely on (to recognise
# the shape: equal headers means equal offsets) and one that reads every value we want.

# The values read from a message, with their defaults, in this order: each tuple's (source,
# destination, port or identifier, port, ICMP type, ICMP code), then ConntrackEntry's own fields
# after its two tuples, in its order. Reading one more attribute is a name here (with a field of
# ConntrackEntry and a D_ index), its place in the attribute tables below, and its name in the
# unpacking of Conntrack._dump() (written out there for speed).
DUMP_FIELDS = (
    ("orig_src", None), ("orig_dst", None), ("orig_sport", 0), ("orig_dport", 0),
    ("orig_icmp_type", None), ("orig_icmp_code", None),
    ("reply_src", None), ("reply_dst", None), ("reply_sport", 0), ("reply_dport", 0),
    ("reply_icmp_type", None), ("reply_icmp_code", None),
    ("status", 0), ("timeout", 0), ("mark", 0), ("zone", 0), ("labels", None),
    ("tcp_state", None), ("tcp_wscale_orig", None), ("tcp_wscale_reply", None),
    ("tcp_flags_orig", None), ("tcp_flags_reply", None),
)
(D_OSRC, D_ODST, D_OSPORT, D_ODPORT, D_OTYPE, D_OCODE, D_RSRC, D_RDST, D_RSPORT, D_RDPORT, D_RTYPE,
 D_RCODE, D_STATUS, D_TIMEOUT, D_MARK, D_ZONE, D_LABELS, D_STATE, D_WSO, D_WSR, D_FLO, D_FLR) = range(22)
_DUMP_DEFAULTS = tuple(default for _name, default in DUMP_FIELDS)
D_ENTRY = D_STATUS  # where ConntrackEntry's own fields start

_TUPLE_IP_FIELDS = {
    CTA_IP_V4_SRC: (0, "4s"), CTA_IP_V4_DST: (1, "4s"),
    CTA_IP_V6_SRC: (0, "16s"), CTA_IP_V6_DST: (1, "16s"),
}
_TUPLE_PROTO_FIELDS = {
    CTA_PROTO_SRC_PORT: (2, "H"), CTA_PROTO_DST_PORT: (3, "H"),
    CTA_PROTO_ICMP_ID: (2, "H"), CTA_PROTO_ICMP_TYPE: (4, "B"), CTA_PROTO_ICMP_CODE: (5, "B"),
    CTA_PROTO_ICMPV6_ID: (2, "H"), CTA_PROTO_ICMPV6_TYPE: (4, "B"), CTA_PROTO_ICMPV6_CODE: (5, "B"),
}
_TOP_FIELDS = {
    CTA_STATUS: (D_STATUS, "I"), CTA_TIMEOUT: (D_TIMEOUT, "I"), CTA_MARK: (D_MARK, "I"),
    CTA_ZONE: (D_ZONE, "H"), CTA_LABELS: (D_LABELS, "%ds" % LABELS_LEN),
}
_TCP_FIELDS = {
    CTA_PROTOINFO_TCP_STATE: (D_STATE, "B"),
    CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: (D_WSO, "B"), CTA_PROTOINFO_TCP_WSCALE_REPLY: (D_WSR, "B"),
    CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: (D_FLO, "B"), CTA_PROTOINFO_TCP_FLAGS_REPLY: (D_FLR, "B"),
}


def _gapped_struct(order, items):
    """A Struct reading (offset, code) items, sorted by offset, skipping the bytes in between."""
    fmt, position = [order], 0
    for offset, code in items:
        if offset < position:
            raise ValueError("overlapping attributes")
        if offset > position:
            fmt.append("%dx" % (offset - position))
        fmt.append(code)
        position = offset + struct.calcsize(order + code)
    return struct.Struct("".join(fmt))


class DumpLayout(object):
    """How to read every message of one shape.

    shape/expected: the message as a little-endian integer, masked to the bytes that fix the
    shape (message type, family, every attribute header on the way to a value, protocol numbers);
    equal masked integers mean the same attributes at the same offsets. One int.from_bytes and an
    AND check that, far cheaper than unpacking some sixty header fields.
    """

    __slots__ = ("length", "mask", "expected", "values", "pick", "family", "proto", "usable", "alg")

    def __init__(self, buf, offset, length):
        checks = [(4, 2), (16, 1)]  # message type, nfgenmsg family
        fields = {}
        proto = [None]

        def walk(start, end, visit):
            for atype, value, size in iter_attrs(buf, offset + start, offset + end):
                rel = value - offset
                checks.append((rel - NLAHDR.size, NLAHDR.size))
                visit(atype, rel, size)

        def want(field, rel, size, code):
            if size >= struct.calcsize(">" + code):
                fields[field] = (rel, code)

        def tuple_visit(base):
            def ip(atype, rel, size):
                if atype in _TUPLE_IP_FIELDS:
                    field, code = _TUPLE_IP_FIELDS[atype]
                    want(base + field, rel, size, code)

            def l4(atype, rel, size):
                if atype == CTA_PROTO_NUM and size >= 1:
                    checks.append((rel, 1))
                    proto[0] = buf[offset + rel]
                elif atype in _TUPLE_PROTO_FIELDS:
                    field, code = _TUPLE_PROTO_FIELDS[atype]
                    want(base + field, rel, size, code)

            def visit(atype, rel, size):
                if atype == CTA_TUPLE_IP:
                    walk(rel, rel + size, ip)
                elif atype == CTA_TUPLE_PROTO:
                    walk(rel, rel + size, l4)
            return visit

        def tcp(atype, rel, size):
            if atype in _TCP_FIELDS:
                field, code = _TCP_FIELDS[atype]
                want(field, rel, size, code)

        def protoinfo(atype, rel, size):
            if atype == CTA_PROTOINFO_TCP:
                walk(rel, rel + size, tcp)

        alg = []

        def top(atype, rel, size):
            if atype in _ALG_ATTRS:
                alg.append(atype)
            if atype == CTA_TUPLE_ORIG:
                walk(rel, rel + size, tuple_visit(D_OSRC))
            elif atype == CTA_TUPLE_REPLY:
                walk(rel, rel + size, tuple_visit(D_RSRC))
            elif atype == CTA_PROTOINFO:
                walk(rel, rel + size, protoinfo)
            elif atype in _TOP_FIELDS:
                field, code = _TOP_FIELDS[atype]
                want(field, rel, size, code)

        walk(NFNL_HDRLEN, length, top)
        self.length = length
        self.mask = 0
        for rel, size in checks:
            self.mask |= ((1 << (8 * size)) - 1) << (8 * rel)
        self.expected = self.shape(buf, offset)
        items = sorted((rel, code, field) for field, (rel, code) in fields.items())
        self.values = _gapped_struct(">", [(rel, code) for rel, code, _field in items])
        position = {field: i for i, (_rel, _code, field) in enumerate(items)}
        self.pick = operator.itemgetter(*[position.get(f, len(items) + f) for f in range(len(_DUMP_DEFAULTS))])
        self.family = buf[offset + 16]
        self.proto = proto[0]
        # An entry needs both tuples' addresses and a protocol to be worth returning.
        self.usable = (self.family in _ADDR_CODE and self.proto is not None
                       and all(f in fields for f in (D_OSRC, D_ODST, D_RSRC, D_RDST)))
        # Every top-level attribute header is part of the shape: equal layouts, equal ALG attributes.
        self.alg = bool(alg)

    def shape(self, buf, offset):
        return int.from_bytes(buf[offset:offset + self.length], "little") & self.mask

    def matches(self, buf, offset):
        return self.shape(buf, offset) == self.expected


def parse_entry_message(buf, offset, length, addresses=None):
    """One CT_NEW message as a ConntrackEntry (None if it holds no address tuples), the slow way."""
    layout = DumpLayout(buf, offset, length)
    return _entry(layout, buf, offset, _TextAddresses() if addresses is None else addresses)


def _entry(layout, buf, offset, addresses):
    if not layout.usable:
        return None
    values = layout.pick(layout.values.unpack_from(buf, offset) + _DUMP_DEFAULTS)
    family, proto = layout.family, layout.proto
    alg = parse_helper_attrs(buf, offset, layout.length) if layout.alg else None
    return _NEW(ConntrackEntry, (
        _NEW(FlowTuple, (family, proto, addresses[values[D_OSRC]], addresses[values[D_ODST]]) + values[D_OSPORT:D_RSRC]),
        _NEW(FlowTuple, (family, proto, addresses[values[D_RSRC]], addresses[values[D_RDST]]) + values[D_RSPORT:D_ENTRY]),
    ) + values[D_ENTRY:] + (alg,))


_MAX_LAYOUTS = 256
_MAX_ADDRESSES = 1 << 16


class EntryReader(object):
    """ConntrackEntry tuples out of single ctnetlink messages: an event, the answer to a GET.

    Shares the DumpLayout machinery (and its cache) with the dump, so that a long stream of
    events costs about what a dump of as many entries does."""

    def __init__(self):
        self.layouts = {}
        self.addresses = _TextAddresses()

    def layout(self, buf, offset, length):
        layout = self.layouts.get(length)
        if layout is not None and layout.matches(buf, offset):
            return layout
        layout = DumpLayout(buf, offset, length)
        # Keyed by length: the common shapes differ in length; a same-length newcomer replaces
        # the cached one (still correct, the header check tells them apart).
        if len(self.layouts) < _MAX_LAYOUTS or length in self.layouts:
            self.layouts[length] = layout
        return layout

    def entry(self, buf, offset, length):
        """The entry of the message at buf[offset:offset + length], or None if it holds no tuples."""
        if len(self.addresses) > _MAX_ADDRESSES:  # a reader may live as long as its agent
            self.addresses.clear()
        return _entry(self.layout(buf, offset, length), buf, offset, self.addresses)


class Conntrack(object):
    """The conntrack table of the current network namespace, through one ctnetlink socket."""

    def __init__(self, ack_each=False, batch_size=None):
        """ack_each: have the kernel acknowledge every request, not only each batch's last one
        (failures are reported either way; see NetlinkSocket.transact). batch_size: at most
        this many requests per sendmsg (default: as many as the socket buffers allow)."""
        try:
            self._nl = NetlinkSocket(NETLINK_NETFILTER)
        except OSError as exc:
            raise ConntrackError("cannot open a netfilter netlink socket: %s" % exc)
        self.ack_each = ack_each
        self.batch_size = batch_size
        self._builder = _MessageBuilder()
        self._reader = EntryReader()

    def close(self):
        self._nl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading -------------------------------------------------------------------------------

    def dump(self, translated_only=True, family=0):
        """All entries (of one address family if family is set) as ConntrackEntry, as dumped.

        translated_only keeps only the entries the kernel applied NAT to: the NAT's sessions, not
        the host's own connections.
        """
        # The result is hundreds of thousands of tuples that all stay alive: the cyclic garbage
        # collector would rescan them again and again for nothing (it doubled the time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._dump(translated_only, family)
        except NetlinkError as exc:
            raise ConntrackError("conntrack dump failed: %s" % exc)
        except (ValueError, struct.error) as exc:
            raise ConntrackError("malformed conntrack message in dump: %s" % exc)
        finally:
            if collecting:
                gc.enable()

    def _dump(self, translated_only, family):
        request = pack_message(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, b"", family=family)
        entries = []
        append = entries.append
        reader = self._reader
        layouts = reader.layouts
        len_type = NLMSG_LEN_TYPE.unpack_from
        from_bytes = int.from_bytes
        nat_mask = IPS_NAT_MASK if translated_only else 0
        defaults = _DUMP_DEFAULTS
        text = _TextAddresses()  # also shares one string per address among all entries
        new = _NEW
        flow, entry_type = FlowTuple, ConntrackEntry
        for buf, offset, end in self._nl.dump(request):
            view = memoryview(buf)  # slices without copying, for the shape check
            while offset < end:
                length, mtype = len_type(buf, offset)
                layout = layouts.get(length)
                if layout is None or from_bytes(view[offset:offset + length], "little") & layout.mask != layout.expected:
                    layout = reader.layout(buf, offset, length)
                if layout.usable and mtype == CT_NEW and not (family and layout.family != family):
                    # _entry(), inlined, DUMP_FIELDS by name: slicing the values costs 30% more.
                    (osrc, odst, osp, odp, oit, oic, rsrc, rdst, rsp, rdp, rit, ric, status, timeout,
                     mark, zone, labels, state, wso, wsr, flo, flr) = layout.pick(
                        layout.values.unpack_from(buf, offset) + defaults)
                    if not nat_mask or status & nat_mask:
                        fam, proto = layout.family, layout.proto
                        append(new(entry_type, (
                            new(flow, (fam, proto, text[osrc], text[odst], osp, odp, oit, oic)),
                            new(flow, (fam, proto, text[rsrc], text[rdst], rsp, rdp, rit, ric)),
                            status, timeout, mark, zone, labels, state, wso, wsr, flo, flr,
                            parse_helper_attrs(buf, offset, length) if layout.alg else None)))
                offset += (length + 3) & ~3
            view.release()
        return entries

    def get(self, entries):
        """The kernel's current entry for each of the given ones, found by original tuple and zone,
        in their order: a ConntrackEntry as a dump would give it, or None where it is gone.

        One batched request per few thousand entries (IPCTNL_MSG_CT_GET without NLM_F_DUMP): what
        re-reading a few hundred sessions' lifetimes costs without dumping a table of 100k.
        """
        entries = entries if isinstance(entries, list) else list(entries)
        found = [None] * len(entries)
        failures, order = [], []
        reader = self._reader

        def on_reply(index, buf, offset, length):
            found[order[index]] = reader.entry(buf, offset, length)

        messages = self._builder.delete_messages(entries, failures, order, factory=get_template)
        try:
            refused = self._nl.transact(messages, max_messages=self.batch_size, on_reply=on_reply)
        except NetlinkError as exc:
            raise ConntrackError("conntrack get failed: %s" % exc)
        except (ValueError, struct.error) as exc:
            raise ConntrackError("malformed conntrack message in an answer: %s" % exc)
        failures.extend((entries[order[index]], code) for index, code in refused)
        for entry, code in failures:
            if code != errno.ENOENT:
                raise ConntrackError("conntrack get of %s failed: %s" % (describe(entry), strerror(code)))
        return found

    # -- writing -------------------------------------------------------------------------------

    def create(self, entries, liberal=True):
        """Re-create entries with their NAT binding. Returns [(entry, errno)] of those refused.

        Each entry gets its original tuple, the plain inverse as reply tuple and its binding as
        CTA_NAT_SRC / CTA_NAT_DST, so the kernel computes the translated reply itself. liberal marks
        TCP entries IP_CT_TCP_FLAG_BE_LIBERAL both ways: their window tracking starts blind.
        Typical errors: EEXIST (the tuple, or the translated one, is taken), ENOMEM (table full).

        GRE entries are then marked IPS_FIXED_TIMEOUT: the kernel (6.18) sets a GRE entry's own
        timeouts only when a packet creates it, so one made through ctnetlink has them at 0 and is
        deleted by its first packet. Marked so, it lives out the lifetime it was given (traffic
        does not extend it; update() does) and translates the flow's packets meanwhile.

        An entry's ALG state (entry.alg) goes with its creation: helper, sequence adjustment, and
        master (such entries are created after the others, their masters first).
        """
        entries = entries if isinstance(entries, list) else list(entries)
        if any(map(_is_child, entries)):
            # An ALG's data connection names its master, which the kernel must hold already.
            entries = sorted(entries, key=_is_child)
        failures, order = [], []
        messages = self._builder.create_messages(entries, liberal, failures, order)
        failures = self._transact(entries, messages, failures, order, "create")
        gre = [entry for entry in entries if entry.orig.proto == IPPROTO_GRE]
        if gre:
            refused = set(id(entry) for entry, _code in failures)
            created = [entry for entry in gre if id(entry) not in refused]
            fixups, order = [], []
            messages = self._builder.fixed_timeout_messages(created, fixups, order)
            failures.extend(self._transact(created, messages, fixups, order, "create (GRE timeout)"))
        return failures

    def update(self, entries, liberal=True):
        """Refresh existing entries in place. Returns [(entry, errno)] of those refused.

        Each entry, found by its original tuple and zone, gets the entry's timeout and, where the
        entry has them, its mark, labels and TCP state, window scale and flags (liberal as in
        create()). Its NAT binding stays as it is: the kernel takes NAT attributes only on creation.
        Typical error: ENOENT (the entry is gone, its lifetime ran out).
        """
        entries = entries if isinstance(entries, list) else list(entries)
        failures, order = [], []
        messages = self._builder.update_messages(entries, liberal, failures, order)
        return self._transact(entries, messages, failures, order, "update")

    def delete(self, entries):
        """Delete entries (found by original tuple and zone). Returns [(entry, errno)] failures."""
        entries = entries if isinstance(entries, list) else list(entries)
        failures, order = [], []
        messages = self._builder.delete_messages(entries, failures, order)
        return self._transact(entries, messages, failures, order, "delete")

    def _transact(self, entries, messages, failures, order, verb):
        try:
            refused = self._nl.transact(messages, ack_each=self.ack_each, max_messages=self.batch_size)
        except NetlinkError as exc:
            done = len(order)
            where = describe(entries[order[done - 1]]) if done else "the first entry"
            raise ConntrackError("conntrack %s failed near %s: %s" % (verb, where, exc))
        failures.extend((entries[order[index]], code) for index, code in refused)
        return failures


def strerror(code):
    """An errno as text, with what it means for a re-created entry."""
    meaning = {
        errno.EEXIST: "an entry with this tuple (or its translated tuple) already exists",
        errno.ENOMEM: "the conntrack table is full (nf_conntrack_max)",
        errno.ENOENT: "no such entry",
        errno.EINVAL: "the entry is not valid for the kernel",
    }.get(code)
    return "%s (%s)" % (os.strerror(code), meaning) if meaning else os.strerror(code)


def without_ended_twins(table, entries):
    """A dump of a busy table is not one moment: a session that ended while the dump went on can be
    listed beside the newer one to which the NAT gave its translated tuple at once (a port pool in
    use to the last port); no target could hold both. The kernel says which is still there: the
    others are left out (their end reaches the target with a later delta)."""
    first, twins = {}, {}
    for entry in entries:
        other = first.setdefault(entry.reply, entry)
        if other is not entry:
            twins[id(other)], twins[id(entry)] = other, entry
    if not twins:
        return entries
    looked = list(twins.values())
    gone = set(id(before) for before, now in zip(looked, table.get(looked)) if now is None or now.reply != before.reply)
    return [e for e in entries if id(e) not in gone]
