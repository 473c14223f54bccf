# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netlink with the standard library only: one socket class for rtnetlink and nfnetlink.

Message framing (nlmsghdr, and nfgenmsg for NETLINK_NETFILTER), netlink attributes (NLA) packing and
parsing, and a socket that sends many requests per sendmsg and maps every answer back to its
request, reads a dump, or receives multicast notifications. Protocol knowledge (which messages and
attributes mean what) lives in the callers: conntrack.py, conntrack_events.py, service_addresses.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import select
import socket
import struct
import sys

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
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
# A request answered with data (a GET) is answered by a message the kernel allocates a page for.
DATA_REPLY_COST = 8192
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


def pack_netlink(msg_type, flags, payload, seq=0):
    """One plain netlink message (rtnetlink): nlmsghdr + payload (the family header included)."""
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(payload), msg_type, flags, seq, 0) + payload


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


class NetlinkSocket(object):
    """A netlink socket of one protocol (NETLINK_ROUTE, NETLINK_NETFILTER, ...).

    Requests: transact() sends many per sendmsg and maps every answer back to its request; dump()
    reads a dump. Notifications: give the multicast groups to join and read them with receive(),
    blocking or with a timeout (fileno() for select/poll).
    """

    def __init__(self, protocol, buffer_size=_BIG_BUFFER, groups=(), timeout=RECV_TIMEOUT):
        """buffer_size: the receive buffer asked for (the send buffer gets at most 4 MiB of it);
        timeout: seconds a request waits for its answers (None: no limit)."""
        self.protocol = protocol
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            self.sock.bind((0, 0))
            # Error acknowledgements then carry only the request's header, not its whole payload.
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.rcvbuf = self._grow(socket.SO_RCVBUF, SO_RCVBUFFORCE, buffer_size)
            self.sndbuf = self._grow(socket.SO_SNDBUF, SO_SNDBUFFORCE, min(buffer_size, 4 << 20))
            if timeout:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(int(timeout), 0))
            for group in groups:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except Exception:
            self.sock.close()
            raise
        self._buf = bytearray(_RECV_SIZE)
        self._seq = 1
        # Set while an exchange is left half read (an error, a dump abandoned): its late answers
        # are read and thrown away before the next request, which would otherwise take them.
        self._dirty = False

    def _grow(self, plain, force, size):
        # FORCE ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN; fall back to the capped size.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, plain, size)
        return self.sock.getsockopt(socket.SOL_SOCKET, plain)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests ------------------------------------------------------------------------------

    def batch_limits(self, reply_cost=ACK_COST):
        """(messages, bytes) one sendmsg may carry without losing an answer of reply_cost bytes."""
        return max(16, min(MAX_BATCH, self.rcvbuf // reply_cost)), max(4096, self.sndbuf // 2 - 4096)

    def transact(self, messages, ack_each=False, max_messages=None, on_reply=None):
        """Send requests and map the kernel's answers back to them.

        messages: an iterable of packed messages (their seq fields are overwritten). Many go in
        one sendmsg, which the kernel handles synchronously, in order, answering into our receive
        buffer; batches are sized so those answers always fit. The kernel reports every failed
        request whether or not it asked for an acknowledgement, so by default only the last request
        of a sendmsg carries NLM_F_ACK: its answer proves all before it were handled, and the
        acknowledgements of the successful ones (half the kernel's work) are never made.
        ack_each=True asks for one per request instead.
        on_reply(index, buf, offset, length): called for every answer that is not an
        acknowledgement (a GET's entry); batches are then sized for answers of a page each.
        Returns [(index, errno)] for the refused requests, index counting from 0 in given order.
        """
        if self._dirty:
            self._drain()
        count_limit, byte_limit = self.batch_limits(DATA_REPLY_COST if on_reply else ACK_COST)
        if max_messages:
            count_limit = min(count_limit, max_messages)
        failures = []
        data = bytearray()
        count = index = last = 0
        seq0 = self._next_seq(count_limit)
        self._dirty = True
        for message in messages:
            if count and (count >= count_limit or len(data) + len(message) > byte_limit):
                self._exchange(data, last, seq0, count, index - count, failures, on_reply)
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
            self._exchange(data, last, seq0, count, index - count, failures, on_reply)
        self._dirty = False
        return failures

    def _next_seq(self, count):
        if self._seq + count >= 0x7FFFFFFF:
            self._seq = 1
        seq, self._seq = self._seq, self._seq + count
        return seq

    def _exchange(self, data, last, seq0, count, first_index, failures, on_reply):
        data[last + _FLAGS_LOW_BYTE] |= NLM_F_ACK
        self._sendall(data)
        buf = self._buf
        recv_into = self.sock.recv_into
        unpack_err = _ERR_SEQ.unpack_from
        unpack_seq = _SEQ.unpack_from
        len_type = NLMSG_LEN_TYPE.unpack_from
        last_seq = seq0 + count - 1
        while True:
            try:
                nbytes = recv_into(buf)
            except OSError as exc:
                raise NetlinkError(exc.errno, "reading netlink answers: %s" % os.strerror(exc.errno))
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
                elif on_reply is not None and mtype >= 0x10:  # below: NOOP, DONE, OVERRUN
                    position = unpack_seq(buf, offset + SEQ_OFFSET)[0] - seq0
                    if not 0 <= position < count:
                        raise NetlinkError(errno.EPROTO, "answer for unknown sequence number %d" % (position + seq0))
                    on_reply(first_index + position, buf, offset, length)
                offset += nla_align(length)

    def _sendall(self, data):
        try:
            sent = self.sock.send(data)
        except OSError as exc:
            raise NetlinkError(exc.errno, "netlink send: %s" % os.strerror(exc.errno))
        if sent != len(data):
            raise NetlinkError(errno.EMSGSIZE, "netlink accepted %d of %d bytes" % (sent, len(data)))

    def _drain(self):
        """Read and drop whatever an abandoned exchange left (a dump runs on as it is read)."""
        while True:
            try:
                self.sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    break
        self._dirty = False

    def dump(self, request):
        """Send a dump request and yield (buffer, start, end) for each received chunk of messages.

        The buffer is reused: consume a chunk before asking for the next. Chunks hold only data
        messages (the closing NLMSG_DONE is removed). Raises NetlinkError when the kernel reports
        an error or lost data (the receive buffer overran); EINTR, once the dump has been read to
        its end, when the table changed while it was dumped (NLM_F_DUMP_INTR: read it again).
        """
        if self._dirty:
            self._drain()
        data = bytearray(request)
        _SEQ.pack_into(data, SEQ_OFFSET, self._next_seq(1))
        self._dirty = True
        self._sendall(data)
        buf = self._buf
        recv_into = self.sock.recv_into
        unpack = NLMSGHDR.unpack_from
        interrupted = False
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
                    interrupted = True
                if mtype == NLMSG_DONE:
                    code = 0
                    if length >= NLMSG_HDRLEN + NLMSGERR.size:
                        code = -NLMSGERR.unpack_from(buf, offset + NLMSG_HDRLEN)[0]
                    self._dirty = False
                    if code:
                        raise NetlinkError(code, "netlink dump failed: %s" % os.strerror(code))
                    if offset:
                        yield buf, 0, offset
                    if interrupted:
                        raise NetlinkError(errno.EINTR, "netlink dump interrupted by a concurrent change")
                    return
                if mtype == NLMSG_ERROR:
                    code = -NLMSGERR.unpack_from(buf, offset + NLMSG_HDRLEN)[0]
                    self._dirty = False
                    raise NetlinkError(code, "netlink dump failed: %s" % os.strerror(code))
                offset += nla_align(length)
            yield buf, 0, nbytes

    # -- notifications -------------------------------------------------------------------------

    def receive(self, timeout=None):
        """(buffer, bytes) of the next datagram of notifications; (buffer, 0) if none came within
        timeout seconds (None: wait as long as it takes). The buffer is reused by the next call.

        Raises NetlinkError(ENOBUFS) when the kernel dropped notifications because the receive
        buffer was full: they are lost for good, the socket goes on with the next ones.
        """
        buf = self._buf
        try:
            try:
                return buf, self.sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if timeout is not None and timeout <= 0:
                    return buf, 0
            if not _readable(self.sock, timeout):
                return buf, 0
            return buf, self.sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return buf, 0
        except OSError as exc:
            raise NetlinkError(exc.errno, "reading netlink notifications: %s" % os.strerror(exc.errno))


def _readable(sock, timeout):
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))
