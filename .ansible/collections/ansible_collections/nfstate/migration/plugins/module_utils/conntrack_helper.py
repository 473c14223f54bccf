# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The helper state of a conntrack entry: its helper's name and its TCP sequence adjustment.

A master connection of an application-level gateway (an FTP control session, a SIP dialogue)
carries, beside its tuples and NAT binding:
- CTA_HELP{CTA_HELP_NAME}: which helper reads its payload. Without it on the target, nothing
  parses the next PASV or INVITE, no expectation is made and the data connection is dropped;
- CTA_SEQ_ADJ_ORIG / CTA_SEQ_ADJ_REPLY: where the NAT helper changed the payload's length (a PORT
  command rewritten from 192,0,2,2 to 198,51,100,1 grows by 3 bytes), the correction position and
  the offsets before and after it. Without them every later segment's sequence number is off by
  that many bytes: the server reads the next command from the middle (measured: after a +3 rewrite,
  NOOP arrives as "P").
- CTA_TUPLE_MASTER on an expected connection (a data connection already open): its master.

Pure functions: they pack these attributes to append to an IPCTNL_MSG_CT_NEW that creates the
entry (beside its tuples, status and NAT attributes), and read them back from a dumped CT_NEW
message. The kernel takes them only on creation.

For conntrack.py's compiled templates (the integration):
- ConntrackEntry gains `helper` (str or None), `seq_adj_orig`, `seq_adj_reply` (SeqAdjust or None)
  and `master` (FlowTuple or None), all defaulting to None: a HelperState's members by name.
- create_template(): the helper name joins the template key (a handful of helpers, so a handful of
  templates) and is constant bytes, `pack_helper(name)`; each direction's sequence adjustment is a
  nest of three ">I" fields, F_SEQ_ORIG_POS, F_SEQ_ORIG_BEFORE, F_SEQ_ORIG_AFTER (and F_SEQ_REPLY_*),
  in the order of seq_adj_node_fields(); the key says which directions are present. `master` is a
  tuple node like the original one (CTA_TUPLE_MASTER), its fields F_MSRC, F_MDST, F_MSPORT, F_MDPORT.
  Attribute order does not matter to the kernel; the NAT attributes stay where they are.
- The dump: entries that have any of them are rare (IPS_HELPER or IPS_EXPECTED in the status), so
  the fast layout reads the status and such messages go through parse_helper_attrs() as well.
- update_template() must not carry them: the kernel sets no helper on an existing entry
  (EOPNOTSUPP) nor changes one (EBUSY), and a refresh would overwrite the target's live sequence
  adjustment, which its own helper moves on, with the source's stale one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_expect import (
    HELPER_NAME_MAX,
    pack_tuple,
    parse_tuple,
)
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NFGENMSG,
    NFNL_HDRLEN,
    NLMSGHDR,
    iter_attrs,
    pack_nested,
    pack_nla,
)

# enum ctattr_type, ctattr_help, ctattr_seqadj (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
CTA_HELP = 5
CTA_TUPLE_MASTER = 14
CTA_SEQ_ADJ_ORIG = 15
CTA_SEQ_ADJ_REPLY = 16
CTA_HELP_NAME = 1
CTA_HELP_INFO = 2
CTA_SEQADJ_CORRECTION_POS = 1
CTA_SEQADJ_OFFSET_BEFORE = 2
CTA_SEQADJ_OFFSET_AFTER = 3

# Status bits (nf_conntrack_common.h): set by the kernel, never given back.
IPS_EXPECTED = 1 << 0
IPS_SEQ_ADJUST = 1 << 6
IPS_HELPER = 1 << 13

# One direction's sequence adjustment (struct nf_ct_seqadj): segments whose sequence number is
# after correction_pos are shifted by offset_after, earlier ones by offset_before. The offsets are
# u32 in the kernel and wrap: a shrinking payload shows as 2**32 - n.
SeqAdjust = namedtuple("SeqAdjust", ["correction_pos", "offset_before", "offset_after"])

# The helper state of one entry, as dumped. private: True when the helper exported data of its
# own (CTA_HELP_INFO; only user-space helpers do), which this module cannot carry.
HelperState = namedtuple("HelperState", ["helper", "seq_adj_orig", "seq_adj_reply", "master", "private"],
                         defaults=(None, None, None, None, False))

_BE32 = struct.Struct(">I")
_SEQADJ_ORDER = (CTA_SEQADJ_CORRECTION_POS, CTA_SEQADJ_OFFSET_BEFORE, CTA_SEQADJ_OFFSET_AFTER)


def seq_adj_node_fields():
    """The attribute types of one direction's nest, in the order SeqAdjust holds them (all >I)."""
    return _SEQADJ_ORDER


def pack_helper(name):
    """CTA_HELP{CTA_HELP_NAME}: assign the named kernel helper ("ftp", "sip", "tftp", ...)."""
    data = name.encode("ascii") + b"\0"
    if len(data) > HELPER_NAME_MAX or len(data) < 2:
        raise ValueError("helper name %r: 1 to %d characters" % (name, HELPER_NAME_MAX - 1))
    return pack_nested(CTA_HELP, pack_nla(CTA_HELP_NAME, data))


def pack_seq_adj(atype, adjust):
    """CTA_SEQ_ADJ_ORIG or CTA_SEQ_ADJ_REPLY of a SeqAdjust (the kernel wants all three members)."""
    return pack_nested(atype, *(pack_nla(child, _BE32.pack(value & 0xFFFFFFFF))
                                for child, value in zip(_SEQADJ_ORDER, adjust)))


def pack_master(tup):
    """CTA_TUPLE_MASTER: the new entry is the expected connection of that master (IPS_EXPECTED)."""
    return pack_tuple(CTA_TUPLE_MASTER, tup)


def pack_helper_attrs(state):
    """The attributes of a HelperState to append to a creating CT_NEW, in the kernel's order."""
    parts = []
    if state.master is not None:
        parts.append(pack_master(state.master))
    if state.helper:
        parts.append(pack_helper(state.helper))
    if state.seq_adj_orig is not None:
        parts.append(pack_seq_adj(CTA_SEQ_ADJ_ORIG, state.seq_adj_orig))
    if state.seq_adj_reply is not None:
        parts.append(pack_seq_adj(CTA_SEQ_ADJ_REPLY, state.seq_adj_reply))
    return b"".join(parts)


def parse_seq_adj(buf, offset, length):
    values = dict.fromkeys(_SEQADJ_ORDER, 0)
    for atype, off, _size in iter_attrs(buf, offset, offset + length):
        if atype in values:
            values[atype] = _BE32.unpack_from(buf, off)[0]
    return SeqAdjust(*(values[a] for a in _SEQADJ_ORDER))


def parse_helper_attrs(buf, offset, length):
    """The HelperState of one dumped CT_NEW message starting at buf[offset] (its nlmsghdr)."""
    family = NFGENMSG.unpack_from(buf, offset + NLMSGHDR.size)[0]
    helper, orig, reply, master, private = None, None, None, None, False
    for atype, off, size in iter_attrs(buf, offset + NFNL_HDRLEN, offset + length):
        if atype == CTA_HELP:
            for h_type, h_off, h_size in iter_attrs(buf, off, off + size):
                if h_type == CTA_HELP_NAME:
                    helper = bytes(buf[h_off:h_off + h_size]).split(b"\0", 1)[0].decode("ascii", "replace") or None
                elif h_type == CTA_HELP_INFO:
                    private = True
        elif atype == CTA_SEQ_ADJ_ORIG:
            orig = parse_seq_adj(buf, off, size)
        elif atype == CTA_SEQ_ADJ_REPLY:
            reply = parse_seq_adj(buf, off, size)
        elif atype == CTA_TUPLE_MASTER:
            master = parse_tuple(buf, off, size, family)
    return HelperState(helper, orig, reply, master, private)


def has_helper_state(state):
    """True when the entry carries anything this module moves."""
    return bool(state.helper or state.seq_adj_orig or state.seq_adj_reply or state.master)
