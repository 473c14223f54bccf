# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netfilter netlink (NETLINK_NETFILTER) with the standard library only.

Message framing (nlmsghdr + nfgenmsg), netlink attributes (NLA) packing and parsing, and a socket
that sends many requests per sendmsg and maps every acknowledgement back to its request, or reads
a dump. Protocol knowledge (which attributes mean what) lives in the callers.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

NFNETLINK_V0 = 0

# Native byte order: netlink headers are in host order; attribute payloads are the caller's business.
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (res_id is big-endian, always 0 here)
NLAHDR = struct.Struct("=HH")  # len, type
NLMSG_LEN_TYPE = struct.Struct("=IH")
NLMSGERR = struct.Struct("=i")
NLMSG_HDRLEN = NLMSGHDR.size
NFNL_HDRLEN = NLMSG_HDRLEN + NFGENMSG.size
SEQ_OFFSET = 8
_SEQ = struct.Struct("=I")
_ERR_SEQ = struct.Struct("=iIHHI")  # error, then the echoed request's len, type, flags, seq

# Acknowledgements are small datagrams, but the kernel charges each one's buffer overhead against
# the receive buffer; this is a generous estimate of that charge, used to size batches so that no
# acknowledgement is ever dropped for lack of room.
ACK_COST = 2048

_BIG_BUFFER = 32 << 20
_RECV_SIZE = 1 << 20


class NetlinkError(OSError):
    """A failed request or an unusable socket; .errno is set."""


def nla_align(length):
    return (length + 3) & ~3


def nfnl_msg_type(subsys, msg):
    return (subsys << 8) | msg


def pack_nla(atype, payload):
    """One attribute: header, payload, zero padding to 4 bytes."""
    length = NLAHDR.size + len(payload)
    return NLAHDR.pack(length, atype) + payload + b"\0" * (nla_align(length) - length)


def pack_nested(atype, *children):
    """A nested attribute holding already packed children (NLA_F_NESTED set, as the kernel does)."""
    return pack_nla(atype | NLA_F_NESTED, b"".join(children))


def pack_message(msg_type, flags, payload, family=0, seq=0, res_id=0):
    """One nfnetlink message: nlmsghdr + nfgenmsg + attributes."""
    length = NFNL_HDRLEN + len(payload)
    return (NLMSGHDR.pack(length, msg_type, flags, seq, 0)
            + NFGENMSG.pack(family, NFNETLINK_V0, res_id) + payload)


def iter_attrs(buf, offset, end):
    """Yield (type, payload_offset, payload_length) of the attributes in buf[offset:end].

    The type has the NESTED/NET_BYTEORDER flags removed. Raises ValueError on a malformed attribute.
    """
    while offset + NLAHDR.size <= end:
        length, atype = NLAHDR.unpack_from(buf, offset)
        if length < NLAHDR.size or offset + length > end:
            raise ValueError("malformed netlink attribute at offset %d" % offset)
        yield atype & NLA_TYPE_MASK, offset + NLAHDR.size, length - NLAHDR.size
        offset += nla_align(length)


def parse_attrs(buf, offset, end):
    """Attributes of buf[offset:end] as {type: (payload_offset, payload_length)} (last one wins)."""
    return {atype: (off, length) for atype, off, length in iter_attrs(buf, offset, end)}


def iter_messages(buf, offset, end):
    """Yield (offset, length, type, flags, seq) for each netlink message in buf[offset:end]."""
    while offset + NLMSG_HDRLEN <= end:
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < NLMSG_HDRLEN or offset + length > end:
            raise ValueError("malformed netlink message at offset %d" % offset)
        yield offset, length, mtype, flags, seq
        offset += nla_align(length)


def error_of(buf, offset):
    """(errno, echoed request seq) of an NLMSG_ERROR message; errno 0 is an acknowledgement."""
    error, _len, _type, _flags, seq = _ERR_SEQ.unpack_from(buf, offset + NLMSG_HDRLEN)
    return -error, seq


class NetfilterSocket(object):
    """A NETLINK_NETFILTER socket with batched requests and dump reading."""

    def __init__(self, buffer_size=_BIG_BUFFER):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            # Error acknowledgements then carry only the request's header, not its whole payload.
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.rcvbuf = self._grow(socket.SO_RCVBUF, SO_RCVBUFFORCE, buffer_size)
            self.sndbuf = self._grow(socket.SO_SNDBUF, SO_SNDBUFFORCE, min(buffer_size, 4 << 20))
        except Exception:
            self.sock.close()
            raise
        self._buf = bytearray(_RECV_SIZE)
        self._seq = 1

    def _grow(self, plain, force, size):
        # FORCE ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN; fall back to the capped size.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, plain, size)
        return self.sock.getsockopt(socket.SOL_SOCKET, plain)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def batch_limits(self):
        """(messages, bytes) one sendmsg may carry without losing an acknowledgement."""
        return max(16, self.rcvbuf // ACK_COST), max(4096, self.sndbuf // 2 - 4096)

    def transact(self, messages, max_messages=None):
        """Send requests (each flagged NLM_F_ACK by the caller) and collect their acknowledgements.

        messages: an iterable of packed messages; their seq fields are overwritten. Many go in one
        sendmsg; the kernel handles a sendmsg synchronously, so its acknowledgements are all queued
        when it returns and are read before the next send. Returns [(index, errno)] for the
        requests the kernel refused, index counting from 0 in the order given.
        """
        count_limit, byte_limit = self.batch_limits()
        if max_messages:
            count_limit = min(count_limit, max_messages)
        failures = []
        pending = []
        size = 0
        index = 0
        for message in messages:
            if pending and (len(pending) >= count_limit or size + len(message) > byte_limit):
                self._send_batch(pending, index - len(pending), failures)
                pending = []
                size = 0
            pending.append(message)
            size += len(message)
            index += 1
        if pending:
            self._send_batch(pending, index - len(pending), failures)
        return failures

    def _send_batch(self, messages, first_index, failures):
        data = bytearray(b"".join(messages))
        seq0 = self._seq
        self._seq = (seq0 + len(messages)) & 0x7FFFFFFF or 1
        pack_seq = _SEQ.pack_into
        offset = 0
        seq = seq0
        for message in messages:
            pack_seq(data, offset + SEQ_OFFSET, seq)
            offset += len(message)
            seq += 1
        self._sendall(data)
        self._collect_acks(seq0, len(messages), first_index, failures)

    def _sendall(self, data):
        sent = self.sock.send(data)
        if sent != len(data):
            raise NetlinkError(errno.EMSGSIZE, "netlink accepted %d of %d bytes" % (sent, len(data)))

    def _collect_acks(self, seq0, count, first_index, failures):
        buf = self._buf
        recv_into = self.sock.recv_into
        unpack_err = _ERR_SEQ.unpack_from
        len_type = NLMSG_LEN_TYPE.unpack_from
        remaining = count
        while remaining:
            try:
                nbytes = recv_into(buf)
            except OSError as exc:
                raise NetlinkError(exc.errno, "reading netlink acknowledgements: %s" % os.strerror(exc.errno))
            offset = 0
            while offset + NLMSG_HDRLEN <= nbytes:
                length, mtype = len_type(buf, offset)
                if length < NLMSG_HDRLEN:
                    raise NetlinkError(errno.EPROTO, "malformed netlink message")
                if mtype == NLMSG_ERROR:
                    error, _l, _t, _f, seq = unpack_err(buf, offset + NLMSG_HDRLEN)
                    position = (seq - seq0) & 0x7FFFFFFF
                    if position >= count:
                        raise NetlinkError(errno.EPROTO, "acknowledgement for unknown sequence %d" % seq)
                    if error:
                        failures.append((first_index + position, -error))
                    remaining -= 1
                offset += nla_align(length)

    def dump(self, request):
        """Send a dump request and yield (buffer, start, end) for each received chunk of messages.

        The buffer is reused: consume a chunk before asking for the next. Chunks hold only data
        messages (the closing NLMSG_DONE is removed). Raises NetlinkError when the kernel reports
        an error or the dump was interrupted or lost data (the receive buffer overran).
        """
        data = bytearray(request)
        _SEQ.pack_into(data, SEQ_OFFSET, self._seq)
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        self._sendall(data)
        buf = self._buf
        recv_into = self.sock.recv_into
        unpack = NLMSGHDR.unpack_from
        while True:
            try:
                nbytes = recv_into(buf)
            except OSError as exc:
                raise NetlinkError(exc.errno, "reading netlink dump: %s" % os.strerror(exc.errno))
            offset = 0
            while offset + NLMSG_HDRLEN <= nbytes:
                length, mtype, flags, _seq, _pid = unpack(buf, offset)
                if length < NLMSG_HDRLEN:
                    raise NetlinkError(errno.EPROTO, "malformed netlink message")
                if flags & NLM_F_DUMP_INTR:
                    raise NetlinkError(errno.EINTR, "netlink dump interrupted by a concurrent change")
                if mtype == NLMSG_DONE:
                    code = 0
                    if length >= NLMSG_HDRLEN + NLMSGERR.size:
                        code = -NLMSGERR.unpack_from(buf, offset + NLMSG_HDRLEN)[0]
                    if code:
                        raise NetlinkError(code, "netlink dump failed: %s" % os.strerror(code))
                    if offset:
                        yield buf, 0, offset
                    return
                if mtype == NLMSG_ERROR:
                    code = -NLMSGERR.unpack_from(buf, offset + NLMSG_HDRLEN)[0]
                    raise NetlinkError(code, "netlink dump failed: %s" % os.strerror(code))
                offset += nla_align(length)
            yield buf, 0, nbytes
