# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's expectation table over ctnetlink (subsystem 2): dump, create, delete.

An expectation is what a connection-tracking helper (FTP, TFTP, SIP, ...) leaves behind after it
has read an address and port in its master connection: "a connection from here to there will come;
it is RELATED to that master, translate it like this". They live in a table of their own, beside
the conntrack table, and a migrated master without them loses its next data connection.

Debian 12's `conntrack -I expect` cannot be used to write them (it stores a byte of the port as the
protocol of the mask), so this speaks netlink itself, with nfnetlink's framing.

The kernel's rules, measured here:
- the master must exist and carry a helper (CTA_HELP) or the kernel answers EOPNOTSUPP, so helper
  rules go first, then masters, then expectations;
- a new expectation gets the lifetime of its helper's policy whatever CTA_EXPECT_TIMEOUT says:
  create() therefore follows every creation with an update that sets the remaining lifetime;
- the kernel finds an expectation by its expected tuple (and zone) alone.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket
import struct
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    FlowTuple,
)
# Tuples are the conntrack subsystem's own (enum ctattr_tuple, ctattr_ip, ctattr_l4proto).
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import (  # noqa: F401 (re-exported)
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_ICMP_CODE,
    CTA_PROTO_ICMP_ID,
    CTA_PROTO_ICMP_TYPE,
    CTA_PROTO_ICMPV6_CODE,
    CTA_PROTO_ICMPV6_ID,
    CTA_PROTO_ICMPV6_TYPE,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_TUPLE_IP,
    CTA_TUPLE_PROTO,
)
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NFNL_HDRLEN,
    NFGENMSG,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSGHDR,
    NETLINK_NETFILTER,
    NetlinkSocket,
    NetlinkError,
    iter_attrs,
    iter_messages,
    nfnl_msg_type,
    pack_message,
    pack_nested,
    pack_nla,
)

NFNL_SUBSYS_CTNETLINK_EXP = 2
IPCTNL_MSG_EXP_NEW = 0
IPCTNL_MSG_EXP_GET = 1
IPCTNL_MSG_EXP_DELETE = 2
EXP_NEW = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_NEW)
EXP_GET = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_GET)
EXP_DELETE = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_DELETE)

# enum ctattr_expect, enum ctattr_expect_nat (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
CTA_EXPECT_MASTER = 1
CTA_EXPECT_TUPLE = 2
CTA_EXPECT_MASK = 3
CTA_EXPECT_TIMEOUT = 4
CTA_EXPECT_ID = 5
CTA_EXPECT_HELP_NAME = 6
CTA_EXPECT_ZONE = 7
CTA_EXPECT_FLAGS = 8
CTA_EXPECT_CLASS = 9
CTA_EXPECT_NAT = 10
CTA_EXPECT_FN = 11
CTA_EXPECT_NAT_DIR = 1
CTA_EXPECT_NAT_TUPLE = 2

# Expectation flags (include/uapi/linux/netfilter/nf_conntrack_common.h).
NF_CT_EXPECT_PERMANENT = 0x1
NF_CT_EXPECT_INACTIVE = 0x2
NF_CT_EXPECT_USERSPACE = 0x4  # the kernel's own bookkeeping: it clears it on creation
EXPECT_FLAG_NAMES = {NF_CT_EXPECT_PERMANENT: "permanent", NF_CT_EXPECT_INACTIVE: "inactive",
                     NF_CT_EXPECT_USERSPACE: "userspace"}

# Directions (enum ip_conntrack_dir).
IP_CT_DIR_ORIGINAL = 0
IP_CT_DIR_REPLY = 1

HELPER_NAME_MAX = 16  # NF_CT_HELPER_NAME_LEN, the terminating NUL included
# Expectation functions have longer names ("nat-follow-master"); the kernel bounds them only by the
# attribute, this by what any of them needs.
EXPECTFN_NAME_MAX = 33

_ADDR_LEN = {socket.AF_INET: 4, socket.AF_INET6: 16}
_IP_ATTRS = {socket.AF_INET: (CTA_IP_V4_SRC, CTA_IP_V4_DST), socket.AF_INET6: (CTA_IP_V6_SRC, CTA_IP_V6_DST)}
_ICMP_ATTRS = {IPPROTO_ICMP: (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE),
               IPPROTO_ICMPV6: (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE)}
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")

# One expectation as the kernel reports it.
#   master      FlowTuple: the original tuple of the master connection (the control session)
#   tuple       FlowTuple: the connection expected, as its first packet will arrive
#   mask        FlowTuple of masks: which bits of tuple.src/sport must match (the destination and
#               protocol always match exactly; the kernel reports them as all ones)
#   timeout     seconds left
#   helper      name of the helper the expectation belongs to ("ftp"), or None
#   flags       NF_CT_EXPECT_* bits
#   expect_class  the helper's class of expectation (SIP: 0 signalling, 1 audio, 2 video)
#   nat_dir     None when the expectation carries no NAT binding, else the master's direction
#               (IP_CT_DIR_*) whose addresses the expected connection is translated towards
#   nat_tuple   FlowTuple whose src/sport hold the saved address and port of that binding
#   fn          name of the function run on the expected connection when it arrives
#               ("nat-follow-master", "sip", ...), or None
#   zone        the conntrack zone (0 by default)
#   id          the kernel's identifier (read only; informative)
Expectation = namedtuple(
    "Expectation",
    ["master", "tuple", "mask", "timeout", "helper", "flags", "expect_class",
     "nat_dir", "nat_tuple", "fn", "zone", "id"],
    defaults=(None, 0, 0, None, None, None, 0, None),
)


class ExpectError(Exception):
    """The expectation table could not be read or written at all (socket-level failure)."""


# ---------------------------------------------------------------------------------------------
# Tuples

def exact_mask(tup):
    """The mask of an expectation that matches one source address and port exactly."""
    ones = "255.255.255.255" if tup.family == socket.AF_INET else "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    return FlowTuple(tup.family, tup.proto, ones, ones, 0xFFFF, 0xFFFF)


def pack_tuple(atype, tup):
    """A nested tuple attribute (CTA_EXPECT_TUPLE, CTA_TUPLE_ORIG, ...) of a FlowTuple.

    Every member is written: the kernel refuses a tuple without both addresses, the protocol
    number and, for TCP and UDP, both ports (also for masks and NAT tuples).
    """
    a_src, a_dst = _IP_ATTRS[tup.family]
    ip = pack_nested(CTA_TUPLE_IP,
                     pack_nla(a_src, socket.inet_pton(tup.family, tup.src)),
                     pack_nla(a_dst, socket.inet_pton(tup.family, tup.dst)))
    l4 = [pack_nla(CTA_PROTO_NUM, bytes([tup.proto]))]
    if tup.proto in _ICMP_ATTRS:
        a_id, a_type, a_code = _ICMP_ATTRS[tup.proto]
        l4 += [pack_nla(a_id, _BE16.pack(tup.sport or 0)),
               pack_nla(a_type, bytes([tup.icmp_type or 0])),
               pack_nla(a_code, bytes([tup.icmp_code or 0]))]
    else:
        l4 += [pack_nla(CTA_PROTO_SRC_PORT, _BE16.pack(tup.sport or 0)),
               pack_nla(CTA_PROTO_DST_PORT, _BE16.pack(tup.dport or 0))]
    return pack_nested(atype, ip, pack_nested(CTA_TUPLE_PROTO, *l4))


def parse_tuple(buf, offset, length, family):
    """The FlowTuple of a nested tuple attribute's payload (buf[offset:offset+length])."""
    src = dst = None
    proto, sport, dport, itype, icode = 0, 0, 0, None, None
    for atype, off, size in iter_attrs(buf, offset, offset + length):
        if atype == CTA_TUPLE_IP:
            for ip_type, ip_off, ip_size in iter_attrs(buf, off, off + size):
                if ip_type in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = _address(buf, ip_off, ip_size)
                elif ip_type in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = _address(buf, ip_off, ip_size)
        elif atype == CTA_TUPLE_PROTO:
            for l4_type, l4_off, l4_size in iter_attrs(buf, off, off + size):
                if l4_type == CTA_PROTO_NUM:
                    proto = buf[l4_off]
                elif l4_type in (CTA_PROTO_SRC_PORT, CTA_PROTO_ICMP_ID, CTA_PROTO_ICMPV6_ID):
                    sport = _BE16.unpack_from(buf, l4_off)[0]
                elif l4_type == CTA_PROTO_DST_PORT:
                    dport = _BE16.unpack_from(buf, l4_off)[0]
                elif l4_type in (CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMPV6_TYPE):
                    itype = buf[l4_off]
                elif l4_type in (CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMPV6_CODE):
                    icode = buf[l4_off]
    if src is not None:
        family = socket.AF_INET if ":" not in src else socket.AF_INET6
    return FlowTuple(family, proto, src, dst, sport, dport, itype, icode)


def _address(buf, offset, size):
    family = socket.AF_INET if size == 4 else socket.AF_INET6
    return socket.inet_ntop(family, bytes(buf[offset:offset + size]))


def _string(buf, offset, size):
    return bytes(buf[offset:offset + size]).split(b"\0", 1)[0].decode("ascii", "replace")


def _nul_string(text, limit=HELPER_NAME_MAX):
    data = text.encode("ascii") + b"\0"
    if len(data) > limit:
        raise ValueError("name %r is longer than the kernel's %d bytes" % (text, limit - 1))
    return data


# ---------------------------------------------------------------------------------------------
# Messages

def dump_request(family=0):
    """IPCTNL_MSG_EXP_GET with NLM_F_DUMP: every expectation (of one family if given)."""
    return pack_message(EXP_GET, NLM_F_REQUEST | NLM_F_DUMP, b"", family=family)


def _identity_attrs(exp):
    """What the kernel requires in every EXP_NEW: expected tuple, mask and master tuple."""
    mask = exp.mask or exact_mask(exp.tuple)
    attrs = [pack_tuple(CTA_EXPECT_MASTER, exp.master),
             pack_tuple(CTA_EXPECT_TUPLE, exp.tuple),
             pack_tuple(CTA_EXPECT_MASK, mask._replace(proto=exp.tuple.proto))]
    if exp.zone:
        attrs.append(pack_nla(CTA_EXPECT_ZONE, _BE16.pack(exp.zone)))
    return attrs


def create_message(exp):
    """IPCTNL_MSG_EXP_NEW creating the expectation with everything the kernel takes.

    The NAT tuple's destination is not used by the kernel, but it wants a complete tuple.
    """
    attrs = _identity_attrs(exp)
    if exp.timeout is not None:
        attrs.append(pack_nla(CTA_EXPECT_TIMEOUT, _BE32.pack(exp.timeout)))
    if exp.helper:
        attrs.append(pack_nla(CTA_EXPECT_HELP_NAME, _nul_string(exp.helper)))
    attrs.append(pack_nla(CTA_EXPECT_FLAGS, _BE32.pack((exp.flags or 0) & ~NF_CT_EXPECT_USERSPACE)))
    if exp.expect_class:
        attrs.append(pack_nla(CTA_EXPECT_CLASS, _BE32.pack(exp.expect_class)))
    if exp.nat_dir is not None and exp.nat_tuple is not None:
        attrs.append(pack_nested(CTA_EXPECT_NAT,
                                 pack_nla(CTA_EXPECT_NAT_DIR, _BE32.pack(exp.nat_dir)),
                                 pack_tuple(CTA_EXPECT_NAT_TUPLE, exp.nat_tuple)))
    if exp.fn:
        attrs.append(pack_nla(CTA_EXPECT_FN, _nul_string(exp.fn, EXPECTFN_NAME_MAX)))
    return pack_message(EXP_NEW, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, b"".join(attrs),
                        family=exp.tuple.family)


def timeout_message(exp):
    """IPCTNL_MSG_EXP_NEW without NLM_F_CREATE: give an existing expectation its lifetime."""
    attrs = _identity_attrs(exp) + [pack_nla(CTA_EXPECT_TIMEOUT, _BE32.pack(exp.timeout))]
    return pack_message(EXP_NEW, NLM_F_REQUEST, b"".join(attrs), family=exp.tuple.family)


def delete_message(exp):
    """IPCTNL_MSG_EXP_DELETE of one expectation, found by its expected tuple and zone."""
    attrs = [pack_tuple(CTA_EXPECT_TUPLE, exp.tuple)]
    if exp.zone:
        attrs.append(pack_nla(CTA_EXPECT_ZONE, _BE16.pack(exp.zone)))
    return pack_message(EXP_DELETE, NLM_F_REQUEST, b"".join(attrs), family=exp.tuple.family)


def parse_expect_message(buf, offset, length):
    """One EXP_NEW message (as dumped) as an Expectation; None if it lacks its tuples."""
    family = NFGENMSG.unpack_from(buf, offset + NLMSGHDR.size)[0]
    fields = {"timeout": None, "helper": None, "flags": 0, "expect_class": 0, "nat_dir": None,
              "nat_tuple": None, "fn": None, "zone": 0, "id": None}
    tuples = {}
    for atype, off, size in iter_attrs(buf, offset + NFNL_HDRLEN, offset + length):
        if atype in (CTA_EXPECT_MASTER, CTA_EXPECT_TUPLE, CTA_EXPECT_MASK):
            tuples[atype] = parse_tuple(buf, off, size, family)
        elif atype == CTA_EXPECT_TIMEOUT:
            fields["timeout"] = _BE32.unpack_from(buf, off)[0]
        elif atype == CTA_EXPECT_ID:
            fields["id"] = _BE32.unpack_from(buf, off)[0]
        elif atype == CTA_EXPECT_HELP_NAME:
            fields["helper"] = _string(buf, off, size) or None
        elif atype == CTA_EXPECT_ZONE:
            fields["zone"] = _BE16.unpack_from(buf, off)[0]
        elif atype == CTA_EXPECT_FLAGS:
            fields["flags"] = _BE32.unpack_from(buf, off)[0]
        elif atype == CTA_EXPECT_CLASS:
            fields["expect_class"] = _BE32.unpack_from(buf, off)[0]
        elif atype == CTA_EXPECT_FN:
            fields["fn"] = _string(buf, off, size) or None
        elif atype == CTA_EXPECT_NAT:
            for nat_type, nat_off, nat_size in iter_attrs(buf, off, off + size):
                if nat_type == CTA_EXPECT_NAT_DIR:
                    fields["nat_dir"] = _BE32.unpack_from(buf, nat_off)[0]
                elif nat_type == CTA_EXPECT_NAT_TUPLE:
                    fields["nat_tuple"] = parse_tuple(buf, nat_off, nat_size, family)
    if CTA_EXPECT_MASTER not in tuples or CTA_EXPECT_TUPLE not in tuples:
        return None
    return Expectation(tuples[CTA_EXPECT_MASTER], tuples[CTA_EXPECT_TUPLE], tuples.get(CTA_EXPECT_MASK), **fields)


def parse_dump(buf, start, end):
    """The Expectations of one chunk of a dump (non-expectation messages are skipped)."""
    result = []
    for offset, length, mtype, _flags, _seq in iter_messages(buf, start, end):
        if mtype == EXP_NEW:
            exp = parse_expect_message(buf, offset, length)
            if exp is not None:
                result.append(exp)
    return result


# ---------------------------------------------------------------------------------------------
# The table

class ExpectTable(object):
    """The expectation table of the current network namespace, through one ctnetlink socket."""

    def __init__(self):
        try:
            self._nl = NetlinkSocket(NETLINK_NETFILTER, buffer_size=4 << 20)
        except OSError as exc:
            raise ExpectError("cannot open a netfilter netlink socket: %s" % exc)

    def close(self):
        self._nl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def dump(self, family=0):
        """Every expectation (of one address family if family is set), as dumped."""
        result = []
        try:
            for buf, start, end in self._nl.dump(dump_request(family)):
                result.extend(parse_dump(buf, start, end))
        except NetlinkError as exc:
            raise ExpectError("expectation dump failed: %s" % exc)
        except (ValueError, struct.error) as exc:
            raise ExpectError("malformed expectation message in dump: %s" % exc)
        return result

    def create(self, expectations, keep_timeout=True):
        """Create expectations. Returns [(expectation, errno)] of those refused.

        keep_timeout: follow each creation by an update giving it its own remaining lifetime (the
        kernel starts a new one with its helper's full policy timeout). Typical errors: ENOENT
        (no master with that tuple), EOPNOTSUPP (the master has no helper, or no such helper),
        EBUSY (the helper's limit of expectations per master), EEXIST (the tuple is expected already).
        """
        expectations = list(expectations)
        messages, owners = [], []
        failures = []
        for index, exp in enumerate(expectations):
            try:
                batch = [create_message(exp)]
                if keep_timeout and exp.timeout is not None:
                    batch.append(timeout_message(exp))
            except (KeyError, OSError, TypeError, ValueError, AttributeError, struct.error):
                failures.append((exp, errno.EINVAL))
                continue
            messages.extend(batch)
            owners.extend([index] * len(batch))
        refused = self._transact(messages, "create")
        seen = set()
        for position, code in refused:
            index = owners[position]
            if index not in seen:  # a refused creation also fails its update: report it once
                seen.add(index)
                failures.append((expectations[index], code))
        return failures

    def delete(self, expectations):
        """Delete expectations (by expected tuple and zone). Returns [(expectation, errno)] refused."""
        expectations = list(expectations)
        refused = self._transact([delete_message(exp) for exp in expectations], "delete")
        return [(expectations[index], code) for index, code in refused]

    def _transact(self, messages, verb):
        try:
            # One acknowledgement per request: a batch's errors must map back to their expectation.
            return self._nl.transact(messages, ack_each=True)
        except NetlinkError as exc:
            raise ExpectError("expectation %s failed: %s" % (verb, exc))


def strerror(code):
    """An errno as text, with what it means for a re-created expectation."""
    meaning = {
        errno.ENOENT: "no master connection with that tuple",
        errno.EOPNOTSUPP: "the master has no helper, or the helper is unknown",
        errno.EBUSY: "the helper allows no more expectations for this master",
        errno.EEXIST: "that connection is expected already",
        errno.EINVAL: "the expectation is not valid for the kernel",
    }.get(code)
    return "%s (%s)" % (os.strerror(code), meaning) if meaning else os.strerror(code)
