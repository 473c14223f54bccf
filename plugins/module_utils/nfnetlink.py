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
import sys

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
_FLAGS_LOW_BYTE = 6 if sys.byteorder == "little" else 7  # NLM_F_ACK lives in nlmsg_flags' low byte
_TIMEVAL = struct.Struct("@ll")
_ERR_SEQ = struct.Struct("=iIHHI")  # error, then the echoed request's len, type, flags, seq

# Acknowledgements are small datagrams, but the kernel charges each one's buffer overhead against
# the receive buffer; this is a generous estimate of that charge, used to size batches so that no
# acknowledgement is ever dropped for lack of room.
ACK_COST = 2048  # measured here: about 830 bytes each
# Past a few thousand requests per sendmsg nothing gets faster; memory keeps growing.
MAX_BATCH = 4096

_BIG_BUFFER = 32 << 20
_RECV_SIZE = 1 << 20
# A request the kernel drops without answering must not hang us forever.
RECV_TIMEOUT = 30


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
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(RECV_TIMEOUT, 0))
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
        return max(16, min(MAX_BATCH, self.rcvbuf // ACK_COST)), max(4096, self.sndbuf // 2 - 4096)

    def transact(self, messages, ack_each=False, max_messages=None):
        """Send requests and map the kernel's answers back to them.

        messages: an iterable of packed messages (their seq fields are overwritten). Many go in
        one sendmsg, which the kernel handles synchronously, in order, answering into our receive
        buffer; batches are sized so those answers always fit. The kernel reports every failed
        request whether or not it asked for an acknowledgement, so by default only the last request
        of a sendmsg carries NLM_F_ACK: its answer proves all before it were handled, and the
        acknowledgements of the successful ones (half the kernel's work) are never made.
        ack_each=True asks for one per request instead.
        Returns [(index, errno)] for the refused requests, index counting from 0 in given order.
        """
        count_limit, byte_limit = self.batch_limits()
        if max_messages:
            count_limit = min(count_limit, max_messages)
        failures = []
        data = bytearray()
        count = index = last = 0
        seq0 = self._next_seq(count_limit)
        for message in messages:
            if count and (count >= count_limit or len(data) + len(message) > byte_limit):
                self._exchange(data, last, seq0, count, index - count, failures)
                data = bytearray()
                count = 0
                seq0 = self._next_seq(count_limit)
            last = len(data)
            data += message
            _SEQ.pack_into(data, last + SEQ_OFFSET, seq0 + count)
            if ack_each:
                data[last + _FLAGS_LOW_BYTE] |= NLM_F_ACK
            count += 1
            index += 1
        if count:
            self._exchange(data, last, seq0, count, index - count, failures)
        return failures

    def _next_seq(self, count):
        if self._seq + count >= 0x7FFFFFFF:
            self._seq = 1
        seq, self._seq = self._seq, self._seq + count
        return seq

    def _exchange(self, data, last, seq0, count, first_index, failures):
        data[last + _FLAGS_LOW_BYTE] |= NLM_F_ACK
        self._sendall(data)
        buf = self._buf
        recv_into = self.sock.recv_into
        unpack_err = _ERR_SEQ.unpack_from
        len_type = NLMSG_LEN_TYPE.unpack_from
        last_seq = seq0 + count - 1
        while True:
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
                    position = seq - seq0
                    if not 0 <= position < count:
                        raise NetlinkError(errno.EPROTO, "answer for unknown sequence number %d" % seq)
                    if error:
                        failures.append((first_index + position, -error))
                    if seq == last_seq:
                        return
                offset += nla_align(length)

    def _sendall(self, data):
        try:
            sent = self.sock.send(data)
        except OSError as exc:
            raise NetlinkError(exc.errno, "netlink send: %s" % os.strerror(exc.errno))
        if sent != len(data):
            raise NetlinkError(errno.EMSGSIZE, "netlink accepted %d of %d bytes" % (sent, len(data)))

    def dump(self, request):
        """Send a dump request and yield (buffer, start, end) for each received chunk of messages.

        The buffer is reused: consume a chunk before asking for the next. Chunks hold only data
        messages (the closing NLMSG_DONE is removed). Raises NetlinkError when the kernel reports
        an error or the dump was interrupted or lost data (the receive buffer overran).
        """
        data = bytearray(request)
        _SEQ.pack_into(data, SEQ_OFFSET, self._next_seq(1))
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
