"""Netlink packing and parsing, and the ctnetlink message layouts, without a kernel.

The fast paths (compiled templates for requests, compiled layouts for the dump) are checked
against messages built attribute by attribute with the plain helpers, in the kernel's order.
"""

import errno
import socket
import struct

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import conntrack as ct
from ansible_collections.nfstate.migration.plugins.module_utils import netlink as nl
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_FIXED_TIMEOUT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    ConntrackEntry,
    FlowTuple,
    inverse,
    translation,
)

A4, A6 = socket.AF_INET, socket.AF_INET6
SEEN = IPS_ASSURED | IPS_SEEN_REPLY | IPS_CONFIRMED


# -- plain netlink ------------------------------------------------------------------------------

def test_pack_nla_pads_to_four_bytes_and_counts_header():
    packed = nl.pack_nla(7, b"\x01\x02\x03")
    assert len(packed) == 8
    assert nl.NLAHDR.unpack_from(packed) == (7, 7)
    assert packed[4:] == b"\x01\x02\x03\x00"


def test_pack_nested_sets_flag_and_total_length():
    inner = nl.pack_nla(1, b"\xaa")
    packed = nl.pack_nested(2, inner, inner)
    length, atype = nl.NLAHDR.unpack_from(packed)
    assert atype == 2 | nl.NLA_F_NESTED
    assert length == 4 + 2 * len(inner) == len(packed)


def test_iter_attrs_strips_flags_and_walks_nested():
    packed = nl.pack_nested(3, nl.pack_nla(1, b"ab"), nl.pack_nla(2, struct.pack(">I", 9))) + nl.pack_nla(4, b"")
    top = list(nl.iter_attrs(packed, 0, len(packed)))
    assert [(t, n) for t, _o, n in top] == [(3, 16), (4, 0)]
    _t, off, size = top[0]
    inner = nl.parse_attrs(packed, off, off + size)
    assert packed[inner[1][0]:inner[1][0] + inner[1][1]] == b"ab"
    assert struct.unpack_from(">I", packed, inner[2][0]) == (9,)


@pytest.mark.parametrize("bad", [
    nl.NLAHDR.pack(3, 1),  # shorter than its own header
    nl.NLAHDR.pack(12, 1) + b"\0\0\0\0",  # runs past the end
])
def test_iter_attrs_rejects_malformed(bad):
    with pytest.raises(ValueError):
        list(nl.iter_attrs(bad, 0, len(bad)))


def test_pack_message_header_and_iter_messages():
    payload = nl.pack_nla(1, b"xyz")
    one = nl.pack_message(0x101, nl.NLM_F_REQUEST, payload, family=A6, seq=5)
    two = nl.pack_message(0x102, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, b"", seq=6)
    assert nl.NLMSGHDR.unpack_from(one) == (len(one), 0x101, nl.NLM_F_REQUEST, 5, 0)
    assert nl.NFGENMSG.unpack_from(one, nl.NLMSG_HDRLEN) == (A6, 0, 0)
    found = list(nl.iter_messages(one + two, 0, len(one) + len(two)))
    assert [(o, n, t, s) for o, n, t, _f, s in found] == [(0, len(one), 0x101, 5), (len(one), len(two), 0x102, 6)]


def test_error_of_reads_errno_and_echoed_seq():
    request = nl.pack_message(0x100, nl.NLM_F_REQUEST, b"", seq=77)
    answer = _error_answer(request, -errno.EEXIST)
    assert nl.error_of(answer, 0) == (errno.EEXIST, 77)


def _error_answer(request, error):
    body = struct.pack("=i", error) + request[:nl.NLMSG_HDRLEN]
    return nl.NLMSGHDR.pack(nl.NLMSG_HDRLEN + len(body), nl.NLMSG_ERROR, 0, 0, 0) + body


# -- batched requests against a scripted kernel -------------------------------------------------

class ScriptedKernel(object):
    """Stands in for the socket: answers like netlink_rcv_skb (errors always, acks on request).

    refuse: {request payload marker: errno}; data: {marker: payload of the data answer} (a GET
    answered with an entry); queue: datagrams waiting to be read (an OSError in it is raised)."""

    def __init__(self, refuse, data=None):
        self.refuse = refuse
        self.data = data or {}
        self.queue = []
        self.sends = 0
        self.requests = 0

    def send(self, data):
        self.sends += 1
        for offset, length, mtype, flags, seq in nl.iter_messages(data, 0, len(data)):
            self.requests += 1
            marker = bytes(data[offset + nl.NFNL_HDRLEN:offset + length])
            if marker in self.data:
                self.queue.append(nl.pack_message(mtype, 0, self.data[marker], seq=seq))
            error = -self.refuse.get(marker, 0)
            if error or flags & nl.NLM_F_ACK:
                self.queue.append(_error_answer(bytes(data[offset:offset + nl.NLMSG_HDRLEN]), error))
        return len(data)

    def recv_into(self, buf, nbytes=0, flags=0):
        if not self.queue:
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError(errno.EAGAIN, "nothing queued")
            raise OSError(errno.EAGAIN, "timed out")
        answer = self.queue.pop(0)
        if isinstance(answer, OSError):
            raise answer
        buf[:len(answer)] = answer
        return len(answer)


def _scripted_socket(refuse, data=None):
    sock = nl.NetlinkSocket.__new__(nl.NetlinkSocket)
    sock.sock = ScriptedKernel(refuse, data)
    sock.rcvbuf, sock.sndbuf = 1 << 20, 1 << 20
    sock._buf = bytearray(4096)
    sock._seq = 0x7FFFFFFF - 10  # crosses the sequence wrap on the way
    sock._dirty = False
    return sock


@pytest.mark.parametrize("ack_each", [False, True])
def test_transact_maps_errors_to_request_index_across_batches(ack_each):
    messages = [nl.pack_message(0x100, nl.NLM_F_REQUEST, nl.pack_nla(1, struct.pack("=I", i))) for i in range(50)]
    refuse = {nl.pack_nla(1, struct.pack("=I", i)): code for i, code in ((0, errno.EEXIST), (17, errno.ENOMEM), (49, errno.EINVAL))}
    sock = _scripted_socket(refuse)
    failures = sock.transact(iter(messages), ack_each=ack_each, max_messages=8)
    assert failures == [(0, errno.EEXIST), (17, errno.ENOMEM), (49, errno.EINVAL)]
    assert sock.sock.sends == 7 and sock.sock.requests == 50
    assert sock.sock.queue == []  # every answer was read, none left for the next call


def test_transact_rejects_answer_to_unknown_sequence():
    sock = _scripted_socket({})
    stray = _error_answer(nl.pack_message(0x100, 0, b"", seq=12345), 0)
    sock.sock.queue.append(stray)
    with pytest.raises(nl.NetlinkError):
        sock.transact([nl.pack_message(0x100, nl.NLM_F_REQUEST, b"")])


def test_transact_hands_data_answers_to_their_request_and_sizes_batches_for_them():
    markers = [nl.pack_nla(1, struct.pack("=I", i)) for i in range(40)]
    messages = [nl.pack_message(0x101, nl.NLM_F_REQUEST, m) for m in markers]
    # Even requests are answered with data, odd ones are refused (a GET of an entry that is gone).
    data = {m: b"entry%d" % i for i, m in enumerate(markers) if i % 2 == 0}
    refuse = {m: errno.ENOENT for i, m in enumerate(markers) if i % 2}
    sock = _scripted_socket(refuse, data)
    answers = {}

    def on_reply(index, buf, offset, length):
        answers[index] = bytes(buf[offset + nl.NFNL_HDRLEN:offset + length])

    failures = sock.transact(messages, on_reply=on_reply)
    assert failures == [(i, errno.ENOENT) for i in range(1, 40, 2)]
    assert answers == {i: b"entry%d" % i for i in range(0, 40, 2)}
    # 1 MiB of receive buffer holds 128 answers of a page: 40 requests are one sendmsg
    assert sock.sock.sends == 1 and sock.batch_limits(nl.DATA_REPLY_COST)[0] == 128
    assert sock.sock.queue == []


def _done(seq, flags=0):
    return nl.NLMSGHDR.pack(nl.NLMSG_HDRLEN + 4, nl.NLMSG_DONE, flags, seq, 0) + struct.pack("=i", 0)


def _dump_chunks(count, seq=0, flags=nl.NLM_F_MULTI):
    return [nl.pack_message(0x100, flags, nl.pack_nla(1, struct.pack("=I", i)), seq=seq) for i in range(count)]


def test_dump_reports_an_interrupted_dump_only_after_reading_it_to_its_end():
    sock = _scripted_socket({})
    sock.sock.queue = _dump_chunks(2) + [_dump_chunks(1, flags=nl.NLM_F_MULTI | nl.NLM_F_DUMP_INTR)[0], _done(0)]
    seen = []
    with pytest.raises(nl.NetlinkError) as error:
        for buf, start, end in sock.dump(nl.pack_message(0x101, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, b"")):
            seen.extend(nl.iter_messages(buf, start, end))
    assert error.value.errno == errno.EINTR
    assert len(seen) == 3 and sock.sock.queue == []  # nothing left for the next request


def test_an_abandoned_dump_is_drained_before_the_next_request():
    sock = _scripted_socket({})
    sock.sock.queue = _dump_chunks(3) + [_done(0)]
    chunks = sock.dump(nl.pack_message(0x101, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, b""))
    next(chunks)
    chunks.close()  # the caller stopped reading: two messages and DONE are still queued
    assert len(sock.sock.queue) == 3
    assert sock.transact([nl.pack_message(0x100, nl.NLM_F_REQUEST, b"")]) == []
    assert sock.sock.queue == []


def test_receive_returns_datagrams_times_out_and_reports_lost_notifications():
    sock = _scripted_socket({})
    event = nl.pack_message(0x100, 0, b"")
    sock.sock.queue = [event, OSError(errno.ENOBUFS, "No buffer space available"), event]
    buf, nbytes = sock.receive(timeout=0)
    assert bytes(buf[:nbytes]) == event
    with pytest.raises(nl.NetlinkError) as error:
        sock.receive(timeout=0)
    assert error.value.errno == errno.ENOBUFS
    assert sock.receive(timeout=0)[1] == len(event)  # the socket goes on after the loss
    assert sock.receive(timeout=0)[1] == 0


def test_one_socket_class_speaks_both_protocols():
    with nl.NetlinkSocket(nl.NETLINK_ROUTE, buffer_size=1 << 16) as route:
        assert route.protocol == nl.NETLINK_ROUTE and route.rcvbuf >= 1 << 16
    with nl.NetlinkSocket(nl.NETLINK_NETFILTER, buffer_size=1 << 16) as netfilter:
        assert netfilter.sock.proto == nl.NETLINK_NETFILTER


# -- ctnetlink requests: the compiled templates against attribute-by-attribute packing ----------

def _addr(family, text):
    return socket.inet_pton(family, text)


def _ref_tuple(atype, tup):
    v4 = tup.family == A4
    ip = nl.pack_nested(ct.CTA_TUPLE_IP,
                        nl.pack_nla(ct.CTA_IP_V4_SRC if v4 else ct.CTA_IP_V6_SRC, _addr(tup.family, tup.src)),
                        nl.pack_nla(ct.CTA_IP_V4_DST if v4 else ct.CTA_IP_V6_DST, _addr(tup.family, tup.dst)))
    l4 = [nl.pack_nla(ct.CTA_PROTO_NUM, bytes([tup.proto]))]
    if tup.proto == 1:
        l4 += [nl.pack_nla(ct.CTA_PROTO_ICMP_ID, struct.pack(">H", tup.sport)),
               nl.pack_nla(ct.CTA_PROTO_ICMP_TYPE, bytes([tup.icmp_type])),
               nl.pack_nla(ct.CTA_PROTO_ICMP_CODE, bytes([tup.icmp_code]))]
    elif tup.proto == 58:
        l4 += [nl.pack_nla(ct.CTA_PROTO_ICMPV6_ID, struct.pack(">H", tup.sport)),
               nl.pack_nla(ct.CTA_PROTO_ICMPV6_TYPE, bytes([tup.icmp_type])),
               nl.pack_nla(ct.CTA_PROTO_ICMPV6_CODE, bytes([tup.icmp_code]))]
    elif tup.proto in (6, 17, 47, 136):  # ports, or GRE's keys in their place
        l4 += [nl.pack_nla(ct.CTA_PROTO_SRC_PORT, struct.pack(">H", tup.sport)),
               nl.pack_nla(ct.CTA_PROTO_DST_PORT, struct.pack(">H", tup.dport))]
    return nl.pack_nested(atype, ip, nl.pack_nested(ct.CTA_TUPLE_PROTO, *l4))


def _ref_nat(atype, family, binding):
    address, port = binding
    parts = [nl.pack_nla(ct.CTA_NAT_V4_MINIP if family == A4 else ct.CTA_NAT_V6_MINIP, _addr(family, address))]
    if port is not None:
        parts.append(nl.pack_nested(ct.CTA_NAT_PROTO, nl.pack_nla(ct.CTA_PROTONAT_PORT_MIN, struct.pack(">H", port))))
    return nl.pack_nested(atype, *parts)


def _ref_create(entry, liberal):
    """The CT_NEW request as DESIGN.md describes it, one attribute at a time."""
    nat_src, nat_dst = translation(entry)
    lib = ct.IP_CT_TCP_FLAG_BE_LIBERAL if liberal else 0
    attrs = [
        _ref_tuple(ct.CTA_TUPLE_ORIG, entry.orig),
        _ref_tuple(ct.CTA_TUPLE_REPLY, inverse(entry.orig)),
        nl.pack_nla(ct.CTA_STATUS, struct.pack(">I", IPS_CONFIRMED | entry.status & (IPS_ASSURED | IPS_SEEN_REPLY))),
        nl.pack_nla(ct.CTA_TIMEOUT, struct.pack(">I", entry.timeout)),
        nl.pack_nla(ct.CTA_MARK, struct.pack(">I", entry.mark)),
        nl.pack_nla(ct.CTA_ZONE, struct.pack(">H", entry.zone)),
    ]
    if entry.labels is not None:
        attrs += [nl.pack_nla(ct.CTA_LABELS, entry.labels), nl.pack_nla(ct.CTA_LABELS_MASK, b"\xff" * 16)]
    if entry.tcp_state is not None:
        attrs.append(nl.pack_nested(ct.CTA_PROTOINFO, nl.pack_nested(
            ct.CTA_PROTOINFO_TCP,
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_STATE, bytes([entry.tcp_state])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, bytes([entry.tcp_wscale_orig])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_WSCALE_REPLY, bytes([entry.tcp_wscale_reply])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes([entry.tcp_flags_orig | lib, 0xff])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes([entry.tcp_flags_reply | lib, 0xff])))))
    if nat_src:
        attrs.append(_ref_nat(ct.CTA_NAT_SRC, entry.orig.family, nat_src))
    if nat_dst:
        attrs.append(_ref_nat(ct.CTA_NAT_DST, entry.orig.family, nat_dst))
    flags = nl.NLM_F_REQUEST | nl.NLM_F_CREATE | nl.NLM_F_EXCL
    return nl.pack_message(ct.CT_NEW, flags, b"".join(attrs), family=entry.orig.family)


def _tcp(family, orig, reply, **extra):
    fields = dict(tcp_state=3, tcp_wscale_orig=7, tcp_wscale_reply=9, tcp_flags_orig=0x23, tcp_flags_reply=0x33)
    fields.update(extra)
    return ConntrackEntry(FlowTuple(family, 6, *orig), FlowTuple(family, 6, *reply), SEEN | IPS_SRC_NAT, 432000, **fields)


SAMPLES = [
    # SNAT, TCP, IPv4
    _tcp(A4, ("192.0.2.2", "198.51.100.2", 40000, 80), ("198.51.100.2", "198.51.100.1", 80, 20001)),
    # DNAT (port forward), UDP, mark and zone
    ConntrackEntry(FlowTuple(A4, 17, "198.51.100.2", "198.51.100.1", 5555, 8080),
                   FlowTuple(A4, 17, "192.0.2.2", "198.51.100.2", 80, 5555), SEEN | IPS_DST_NAT, 120, mark=0xdeadbeef, zone=7),
    # SNAT and DNAT at once, TCP, labels
    _tcp(A4, ("192.0.2.2", "198.51.100.1", 40001, 8080), ("192.0.2.3", "198.51.100.1", 80, 20004),
         labels=bytes(range(16))),
    # ICMP echo, SNAT changes the id
    ConntrackEntry(FlowTuple(A4, 1, "192.0.2.2", "198.51.100.2", 1234, 0, 8, 0),
                   FlowTuple(A4, 1, "198.51.100.2", "198.51.100.1", 20003, 0, 0, 0), SEEN | IPS_SRC_NAT, 30),
    # ICMP echo, DNAT: address only
    ConntrackEntry(FlowTuple(A4, 1, "198.51.100.2", "198.51.100.1", 77, 0, 8, 0),
                   FlowTuple(A4, 1, "192.0.2.2", "198.51.100.2", 77, 0, 0, 0), SEEN | IPS_DST_NAT, 30),
    # IPv6: TCP SNAT, ICMPv6 SNAT, UDP DNAT
    _tcp(A6, ("2001:db8:1::2", "2001:db8:2::2", 40000, 80), ("2001:db8:2::2", "2001:db8:2::1", 80, 20001), tcp_state=7),
    ConntrackEntry(FlowTuple(A6, 58, "2001:db8:1::2", "2001:db8:2::2", 99, 0, 128, 0),
                   FlowTuple(A6, 58, "2001:db8:2::2", "2001:db8:2::1", 20005, 0, 129, 0), SEEN | IPS_SRC_NAT, 30),
    ConntrackEntry(FlowTuple(A6, 17, "2001:db8:2::2", "2001:db8:2::1", 5555, 8080),
                   FlowTuple(A6, 17, "2001:db8:1::2", "2001:db8:2::2", 80, 5555), IPS_DST_NAT, 100, zone=3,
                   labels=b"\x01" + b"\x00" * 15),
    # GRE (PPTP keys, SNAT by address), plain GRE with DNAT, ESP and protocol 99 (generic tracker)
    ConntrackEntry(FlowTuple(A4, 47, "192.0.2.2", "198.51.100.2", 0, 0x1234),
                   FlowTuple(A4, 47, "198.51.100.2", "198.51.100.1", 0x1234, 0), SEEN | IPS_SRC_NAT, 180),
    ConntrackEntry(FlowTuple(A4, 47, "198.51.100.2", "198.51.100.1", 0, 0),
                   FlowTuple(A4, 47, "192.0.2.2", "198.51.100.2", 0, 0), IPS_DST_NAT, 30, mark=5),
    ConntrackEntry(FlowTuple(A4, 50, "192.0.2.2", "198.51.100.2", 0, 0),
                   FlowTuple(A4, 50, "198.51.100.2", "198.51.100.1", 0, 0), SEEN | IPS_SRC_NAT, 600),
    ConntrackEntry(FlowTuple(A6, 50, "2001:db8:1::2", "2001:db8:2::2", 0, 0),
                   FlowTuple(A6, 50, "2001:db8:2::2", "2001:db8:2::1", 0, 0), SEEN | IPS_SRC_NAT, 600, zone=2),
    ConntrackEntry(FlowTuple(A4, 99, "198.51.100.2", "198.51.100.1", 0, 0),
                   FlowTuple(A4, 99, "192.0.2.2", "198.51.100.2", 0, 0), IPS_DST_NAT, 600),
    # UDP-Lite, SNAT with a port
    ConntrackEntry(FlowTuple(A4, 136, "192.0.2.2", "198.51.100.2", 4000, 5000),
                   FlowTuple(A4, 136, "198.51.100.2", "198.51.100.1", 5000, 20100), SEEN | IPS_SRC_NAT, 30),
]


@pytest.mark.parametrize("liberal", [True, False])
@pytest.mark.parametrize("entry", SAMPLES, ids=range(len(SAMPLES)))
def test_create_message_equals_attribute_by_attribute_packing(entry, liberal):
    failures, order = [], []
    built = list(ct._MessageBuilder().create_messages([entry], liberal, failures, order))
    assert failures == [] and order == [0]
    assert built == [_ref_create(entry, liberal)]


def test_create_messages_reports_unusable_entries_and_keeps_order():
    good = SAMPLES[0]
    bad_family = good._replace(orig=good.orig._replace(family=99))
    bad_address = good._replace(orig=good.orig._replace(src="192.0.2.300"))
    mixed_family = good._replace(orig=good.orig._replace(src="2001:db8::1"))
    failures, order = [], []
    built = list(ct._MessageBuilder().create_messages([bad_family, good, bad_address, mixed_family, good], True, failures, order))
    assert len(built) == 2 and order == [1, 4]
    assert failures == [(bad_family, errno.EINVAL), (bad_address, errno.EINVAL), (mixed_family, errno.EINVAL)]


def _ref_update(entry, liberal):
    """The CT_NEW update request, one attribute at a time: no reply tuple, status or NAT binding."""
    lib = ct.IP_CT_TCP_FLAG_BE_LIBERAL if liberal else 0
    attrs = [
        _ref_tuple(ct.CTA_TUPLE_ORIG, entry.orig),
        nl.pack_nla(ct.CTA_ZONE, struct.pack(">H", entry.zone)),
        nl.pack_nla(ct.CTA_TIMEOUT, struct.pack(">I", entry.timeout)),
    ]
    if entry.mark is not None:
        attrs.append(nl.pack_nla(ct.CTA_MARK, struct.pack(">I", entry.mark)))
    if entry.labels is not None:
        attrs += [nl.pack_nla(ct.CTA_LABELS, entry.labels), nl.pack_nla(ct.CTA_LABELS_MASK, b"\xff" * 16)]
    if entry.orig.proto == 6 and entry.tcp_state is not None:
        attrs.append(nl.pack_nested(ct.CTA_PROTOINFO, nl.pack_nested(
            ct.CTA_PROTOINFO_TCP,
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_STATE, bytes([entry.tcp_state])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, bytes([entry.tcp_wscale_orig])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_WSCALE_REPLY, bytes([entry.tcp_wscale_reply])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes([entry.tcp_flags_orig | lib, 0xff])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes([entry.tcp_flags_reply | lib, 0xff])))))
    return nl.pack_message(ct.CT_NEW, nl.NLM_F_REQUEST, b"".join(attrs), family=entry.orig.family)


def _top_level_types(message):
    return [atype for atype, _o, _n in nl.iter_attrs(message, nl.NFNL_HDRLEN, len(message))]


@pytest.mark.parametrize("liberal", [True, False])
@pytest.mark.parametrize("entry", SAMPLES, ids=range(len(SAMPLES)))
def test_update_message_equals_attribute_by_attribute_packing(entry, liberal):
    failures, order = [], []
    built = list(ct._MessageBuilder().update_messages([entry], liberal, failures, order))
    assert failures == [] and order == [0]
    assert built == [_ref_update(entry, liberal)]


@pytest.mark.parametrize("entry", SAMPLES, ids=range(len(SAMPLES)))
def test_update_message_never_creates_and_never_carries_a_binding(entry):
    [message] = ct._MessageBuilder().update_messages([entry], True, [], [])
    _length, mtype, flags, _seq, _pid = nl.NLMSGHDR.unpack_from(message)
    assert mtype == ct.CT_NEW
    assert flags & (nl.NLM_F_CREATE | nl.NLM_F_EXCL) == 0
    types = _top_level_types(message)
    assert ct.CTA_TIMEOUT in types and ct.CTA_TUPLE_ORIG in types
    # The kernel refuses NAT attributes on an existing entry, and most status changes.
    assert not set(types) & {ct.CTA_NAT_SRC, ct.CTA_NAT_DST, ct.CTA_TUPLE_REPLY, ct.CTA_STATUS}


def test_update_message_leaves_out_what_the_entry_does_not_give():
    bare = SAMPLES[0]._replace(mark=None, labels=None, tcp_state=None)
    [message] = ct._MessageBuilder().update_messages([bare], True, [], [])
    assert _top_level_types(message) == [ct.CTA_TUPLE_ORIG, ct.CTA_ZONE, ct.CTA_TIMEOUT]
    assert message == _ref_update(bare, True)


def test_update_messages_report_unusable_entries_and_keep_order():
    good = SAMPLES[3]
    bad_address = good._replace(orig=good.orig._replace(dst="198.51.100.256"))
    bad_timeout = good._replace(timeout=-1)
    failures, order = [], []
    built = list(ct._MessageBuilder().update_messages([bad_address, good, bad_timeout, good], True, failures, order))
    assert len(built) == 2 and order == [1, 3]
    assert failures == [(bad_address, errno.EINVAL), (bad_timeout, errno.EINVAL)]


def test_delete_message_holds_original_tuple_and_zone():
    entry = SAMPLES[1]
    built = list(ct._MessageBuilder().delete_messages([entry], [], []))
    expected = nl.pack_message(ct.CT_DELETE, nl.NLM_F_REQUEST,
                               _ref_tuple(ct.CTA_TUPLE_ORIG, entry.orig) + nl.pack_nla(ct.CTA_ZONE, struct.pack(">H", 7)),
                               family=A4)
    assert built == [expected]


def test_generic_tracker_messages_carry_no_ports_and_nat_no_port_range():
    esp = SAMPLES[-3]
    [message] = ct._MessageBuilder().create_messages([esp], True, [], [])
    found = message.find(nl.pack_nla(ct.CTA_PROTO_NUM, b"\x32"))
    assert found > 0
    assert nl.pack_nla(ct.CTA_PROTO_SRC_PORT, b"\0\0") not in message
    assert nl.pack_nested(ct.CTA_NAT_PROTO, nl.pack_nla(ct.CTA_PROTONAT_PORT_MIN, b"\0\0")) not in message


def test_translated_gre_keys_are_refused_before_the_kernel():
    gre = SAMPLES[-6]
    rekeyed = gre._replace(reply=gre.reply._replace(sport=0x9999))
    failures, order = [], []
    assert list(ct._MessageBuilder().create_messages([rekeyed, gre], True, failures, order)) != []
    assert failures == [(rekeyed, errno.EINVAL)] and order == [1]


class RecordingSocket(object):
    """Stands in for the NetlinkSocket under Conntrack.create(): answers each transact in turn."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []

    def transact(self, messages, ack_each=False, max_messages=None):
        self.sent.append(list(messages))
        return self.answers.pop(0)


def test_created_gre_entries_get_a_fixed_timeout_and_only_those_created():
    gre, tcp = SAMPLES[-6], SAMPLES[0]
    taken = SAMPLES[-5]  # another GRE entry, refused with EEXIST: someone else's, left alone
    table = ct.Conntrack.__new__(ct.Conntrack)
    table._nl = RecordingSocket([[(2, errno.EEXIST)], []])
    table._builder = ct._MessageBuilder()
    table.ack_each, table.batch_size = False, None
    assert table.create([gre, tcp, taken]) == [(taken, errno.EEXIST)]
    creates, fixups = table._nl.sent
    assert len(creates) == 3 and len(fixups) == 1
    [fixup] = fixups
    expected = nl.pack_message(ct.CT_NEW, nl.NLM_F_REQUEST, b"".join([
        _ref_tuple(ct.CTA_TUPLE_ORIG, gre.orig), nl.pack_nla(ct.CTA_ZONE, struct.pack(">H", 0)),
        nl.pack_nla(ct.CTA_STATUS, struct.pack(">I", IPS_CONFIRMED | IPS_ASSURED | IPS_SEEN_REPLY | IPS_FIXED_TIMEOUT))]),
        family=A4)
    assert fixup == expected


def test_nat_kinds_follow_translation():
    kinds = {ct.NAT_NONE: False, ct.NAT_ADDR: True, ct.NAT_ADDR_PORT: True}
    untranslated = SAMPLES[0]._replace(reply=inverse(SAMPLES[0].orig))
    for entry in SAMPLES + [untranslated]:
        nat_src, nat_dst = translation(entry)
        src_kind, dst_kind = ct.nat_kinds(entry)
        assert (kinds[src_kind], kinds[dst_kind]) == (nat_src is not None, nat_dst is not None)
        if nat_dst is not None:
            assert (dst_kind == ct.NAT_ADDR_PORT) == (nat_dst[1] is not None)


# -- ctnetlink dump: compiled layouts against what the kernel writes ----------------------------

def _ref_dump_message(entry, extra_top=(), id_=1):
    """A dumped entry in ctnetlink_fill_info()'s order, with the attributes we do not read."""
    attrs = [_ref_tuple(ct.CTA_TUPLE_ORIG, entry.orig), _ref_tuple(ct.CTA_TUPLE_REPLY, entry.reply)]
    if entry.zone:
        attrs.append(nl.pack_nla(ct.CTA_ZONE, struct.pack(">H", entry.zone)))
    attrs += [nl.pack_nla(ct.CTA_STATUS, struct.pack(">I", entry.status)),
              nl.pack_nla(ct.CTA_TIMEOUT, struct.pack(">I", entry.timeout))]
    if entry.tcp_state is not None:
        attrs.append(nl.pack_nested(ct.CTA_PROTOINFO, nl.pack_nested(
            ct.CTA_PROTOINFO_TCP,
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_STATE, bytes([entry.tcp_state])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, bytes([entry.tcp_wscale_orig])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_WSCALE_REPLY, bytes([entry.tcp_wscale_reply])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes([entry.tcp_flags_orig, 0])),
            nl.pack_nla(ct.CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes([entry.tcp_flags_reply, 0])))))
    attrs.append(nl.pack_nla(ct.CTA_MARK, struct.pack(">I", entry.mark)))
    if entry.labels is not None:
        attrs.append(nl.pack_nla(ct.CTA_LABELS, entry.labels))
    attrs += list(extra_top)
    attrs += [nl.pack_nla(12, struct.pack(">I", id_)),  # CTA_ID differs for every entry
              nl.pack_nla(11, struct.pack(">I", 1))]  # CTA_USE
    return nl.pack_message(ct.CT_NEW, nl.NLM_F_MULTI, b"".join(attrs), family=entry.orig.family)


def _dumped(entry):
    """What the kernel reports for a re-created entry: NAT bits set, flags as given."""
    nat = IPS_SRC_NAT if translation(entry)[0] else 0
    nat |= IPS_DST_NAT if translation(entry)[1] else 0
    return entry._replace(status=entry.status | nat)


@pytest.mark.parametrize("entry", SAMPLES, ids=range(len(SAMPLES)))
def test_parse_entry_message_reads_every_field(entry):
    entry = _dumped(entry)
    message = _ref_dump_message(entry)
    assert ct.parse_entry_message(message, 0, len(message)) == entry


class ScriptedDump(object):
    """Stands in for NetlinkSocket.dump(): yields chunks in a reused buffer, as the socket does."""

    def __init__(self, messages, per_chunk=3):
        self.messages = messages
        self.per_chunk = per_chunk
        self.requests = []

    def dump(self, request):
        self.requests.append(request)
        buf = bytearray(1 << 16)
        for i in range(0, len(self.messages), self.per_chunk):
            chunk = b"".join(self.messages[i:i + self.per_chunk])
            buf[:len(chunk)] = chunk
            yield buf, 0, len(chunk)

    def close(self):
        pass


def _conntrack_over(messages, per_chunk=3):
    table = ct.Conntrack.__new__(ct.Conntrack)
    table._nl = ScriptedDump(messages, per_chunk)
    table._reader = ct.EntryReader()
    return table


def test_dump_fast_path_matches_slow_path_and_filters_untranslated():
    translated = [_dumped(e) for e in SAMPLES]
    host_connection = ConntrackEntry(FlowTuple(A4, 6, "198.18.0.10", "198.18.0.1", 50000, 22),
                                     FlowTuple(A4, 6, "198.18.0.1", "198.18.0.10", 22, 50000), SEEN, 300,
                                     tcp_state=3, tcp_wscale_orig=7, tcp_wscale_reply=7, tcp_flags_orig=0x23, tcp_flags_reply=0x23)
    entries = translated * 3 + [host_connection]
    messages = [_ref_dump_message(e, id_=i) for i, e in enumerate(entries)]
    table = _conntrack_over(messages)
    assert table.dump() == translated * 3
    assert table.dump(translated_only=False) == entries
    assert table.dump(family=A6) == [e for e in translated * 3 if e.orig.family == A6]
    assert nl.NFGENMSG.unpack_from(table._nl.requests[-1], nl.NLMSG_HDRLEN)[0] == A6


def test_dump_tells_apart_shapes_of_equal_length():
    # CTA_ZONE (2 bytes) and CTA_SECMARK (4 bytes) both take 8 bytes: same length, other shape.
    base = _dumped(SAMPLES[0])
    zoned = base._replace(zone=5)
    secmarked = _ref_dump_message(base, extra_top=[nl.pack_nla(17, struct.pack(">I", 5))])
    assert len(secmarked) == len(_ref_dump_message(zoned))
    table = _conntrack_over([_ref_dump_message(zoned), secmarked, _ref_dump_message(zoned), secmarked], per_chunk=1)
    assert table.dump() == [zoned, base, zoned, base]


def test_dump_returns_shared_address_strings():
    entry = _dumped(SAMPLES[0])
    table = _conntrack_over([_ref_dump_message(entry, id_=i) for i in range(4)])
    dumped = table.dump()
    assert len({id(e.reply.dst) for e in dumped}) == 1


def test_dump_skips_messages_without_tuples():
    odd = nl.pack_message(ct.CT_NEW, nl.NLM_F_MULTI, nl.pack_nla(ct.CTA_STATUS, struct.pack(">I", IPS_SRC_NAT)))
    entry = _dumped(SAMPLES[3])
    table = _conntrack_over([odd, _ref_dump_message(entry)])
    assert table.dump() == [entry]


def test_dump_fields_follow_the_entry_and_tuple_fields():
    """Conntrack._dump() builds entries straight from DUMP_FIELDS' order: they must agree."""
    names = [name for name, _default in ct.DUMP_FIELDS]
    # ...up to the last field, the ALG state, which the layout's slow path parses apart.
    assert names[ct.D_ENTRY:] == list(ConntrackEntry._fields[2:-1]) and ConntrackEntry._fields[-1] == "alg"
    tuple_fields = list(FlowTuple._fields[2:])
    assert names[ct.D_OSRC:ct.D_RSRC] == ["orig_" + f for f in tuple_fields]
    assert names[ct.D_RSRC:ct.D_ENTRY] == ["reply_" + f for f in tuple_fields]
    assert ct.D_FLR == len(names) - 1
