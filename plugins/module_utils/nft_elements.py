# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set elements of our nftables table added and deleted over nfnetlink, in one transaction.

The cutover's window writes the members that changed since the catch-up. `nft -f` would do it,
but it first reads the table's whole cache: several milliseconds, more on a busy host. One batch
(NFNL_MSG_BATCH_BEGIN, NFT_MSG_DELSETELEM and NFT_MSG_NEWSETELEM per set, NFNL_MSG_BATCH_END) is
the same transaction without it: all of it or nothing. An element gets its lifetime (timeout) and
what remains of it (expiration), and its counter values when the set counts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import math
import os
import socket
import struct

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import SetElement
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    NLMSG_LEN_TYPE,
    NetlinkError,
    NetlinkSocket,
    error_of,
    nfnl_msg_type,
    nla_align,
    pack_message,
    pack_nested,
    pack_nla,
)

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFPROTO_INET = 1
# enum nft_set_elem_list_attributes, nft_list_attributes, nft_set_elem_attributes, nft_data_attributes
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_EXPIRATION = 5
NFTA_SET_ELEM_EXPR = 7
NFTA_DATA_VALUE = 1
# the counter expression
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2

_BE64 = struct.Struct(">Q")
_SEQ_AT = 8


def _string(text):
    return text.encode("ascii") + b"\0"


def _key(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def element_attrs(fwset, element, with_lifetime=True):
    """One NFTA_LIST_ELEM: its key, its lifetime and what remains of it (ms, as nft gives them:
    a lifetime never shorter than its remainder), its counter values when the set counts."""
    attrs = [pack_nested(NFTA_SET_ELEM_KEY, pack_nla(NFTA_DATA_VALUE, _key(element.address)))]
    if with_lifetime:
        if element.remaining is not None:
            timeout = max(element.timeout or fwset.timeout or 0, int(math.ceil(element.remaining)))
            attrs.append(pack_nla(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(timeout * 1000)))
            attrs.append(pack_nla(NFTA_SET_ELEM_EXPIRATION, _BE64.pack(int(round(element.remaining * 1000)))))
        elif element.timeout is not None:
            attrs.append(pack_nla(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(element.timeout * 1000)))
        if fwset.counters and element.packets is not None:
            counter = pack_nested(NFTA_EXPR_DATA, pack_nla(NFTA_COUNTER_BYTES, _BE64.pack(element.bytes or 0)),
                                  pack_nla(NFTA_COUNTER_PACKETS, _BE64.pack(element.packets)))
            attrs.append(pack_nested(NFTA_SET_ELEM_EXPR, pack_nla(NFTA_EXPR_NAME, _string("counter")), counter))
    return pack_nested(NFTA_LIST_ELEM, *attrs)


def _set_message(msg, table, name, items, flags):
    payload = (pack_nla(NFTA_SET_ELEM_LIST_TABLE, _string(table)) + pack_nla(NFTA_SET_ELEM_LIST_SET, _string(name))
               + pack_nested(NFTA_SET_ELEM_LIST_ELEMENTS, *items))
    return pack_message(nfnl_msg_type(NFNL_SUBSYS_NFTABLES, msg), flags, payload, family=NFPROTO_INET)


def member_batch(firewall, elements, table):
    """The batch's messages (bytes each, seq 0) changing the members of `firewall`'s sets as
    `elements` ({set name: firewall_learned.SetChange}) says: a refreshed element is deleted and
    added again, since adding one that exists changes nothing. [] when nothing changes."""
    messages = []
    for fwset in firewall.sets:
        change = elements.get(fwset.name)
        if change is None:
            continue
        gone = [element_attrs(fwset, SetElement(address), False) for address in change.removed] + \
            [element_attrs(fwset, e, False) for e in change.refreshed]
        if gone:
            messages.append(_set_message(NFT_MSG_DELSETELEM, table, fwset.name, gone, NLM_F_REQUEST | NLM_F_ACK))
        fresh = [element_attrs(fwset, e) for e in change.added + change.refreshed if e.remaining is None or e.remaining >= 0.001]
        if fresh:
            messages.append(_set_message(NFT_MSG_NEWSETELEM, table, fwset.name, fresh,
                                         NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK))
    if not messages:
        return []
    res_id = socket.htons(NFNL_SUBSYS_NFTABLES)
    return ([pack_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, b"", res_id=res_id)] + messages
            + [pack_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, b"", res_id=res_id)])


def send_batch(messages, timeout=5):
    """Send one batch and wait for the answers of its acknowledged messages; NetlinkError with
    the first refusal (the kernel then committed nothing)."""
    data = bytearray()
    wanted = set()
    for seq, message in enumerate(messages, 1):
        start = len(data)
        data += message
        struct.pack_into("=I", data, start + _SEQ_AT, seq)
        if struct.unpack_from("=H", data, start + 6)[0] & NLM_F_ACK:
            wanted.add(seq)
    with NetlinkSocket(NETLINK_NETFILTER, buffer_size=1 << 20, timeout=timeout) as nl:
        sent = nl.sock.send(data)
        if sent != len(data):
            raise NetlinkError(errno.EMSGSIZE, "netlink accepted %d of %d bytes" % (sent, len(data)))
        buf = bytearray(1 << 16)
        refused = None
        while wanted:
            try:
                nbytes = nl.sock.recv_into(buf)
            except OSError as exc:
                raise NetlinkError(exc.errno, "reading nftables answers: %s" % os.strerror(exc.errno))
            offset = 0
            while offset + NLMSG_HDRLEN <= nbytes:
                length, mtype = NLMSG_LEN_TYPE.unpack_from(buf, offset)
                if length < NLMSG_HDRLEN:
                    raise NetlinkError(errno.EPROTO, "malformed netlink message")
                if mtype == NLMSG_ERROR:
                    code, seq = error_of(buf, offset)
                    wanted.discard(seq)
                    if code and refused is None:
                        refused = code
                offset += nla_align(length)
        if refused:
            raise NetlinkError(refused, "nftables refused the set elements: %s" % os.strerror(refused))
