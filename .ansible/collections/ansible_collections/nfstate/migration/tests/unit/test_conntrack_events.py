"""Conntrack events without a kernel: kinds, losses, the barrier's marker, parsed like a dump."""

import errno
import socket
import struct

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import conntrack as ct
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack_events as ce
from ansible_collections.nfstate.migration.plugins.module_utils import netlink as nl
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPS_CONFIRMED,
    IPS_SRC_NAT,
    ConntrackEntry,
    FlowTuple,
)

A4 = socket.AF_INET
SESSION = ConntrackEntry(FlowTuple(A4, 17, "192.0.2.2", "198.51.100.2", 5353, 53),
                         FlowTuple(A4, 17, "198.51.100.2", "198.51.100.1", 53, 20002), IPS_CONFIRMED | IPS_SRC_NAT, 30)
HOST_OWN = ConntrackEntry(FlowTuple(A4, 6, "198.18.0.10", "198.18.0.1", 50000, 22),
                          FlowTuple(A4, 6, "198.18.0.1", "198.18.0.10", 22, 50000), IPS_CONFIRMED, 300)


def _tuple(atype, tup):
    ip = nl.pack_nested(ct.CTA_TUPLE_IP, nl.pack_nla(ct.CTA_IP_V4_SRC, socket.inet_aton(tup.src)),
                        nl.pack_nla(ct.CTA_IP_V4_DST, socket.inet_aton(tup.dst)))
    proto = nl.pack_nested(ct.CTA_TUPLE_PROTO, nl.pack_nla(ct.CTA_PROTO_NUM, bytes([tup.proto])),
                           nl.pack_nla(ct.CTA_PROTO_SRC_PORT, struct.pack(">H", tup.sport)),
                           nl.pack_nla(ct.CTA_PROTO_DST_PORT, struct.pack(">H", tup.dport)))
    return nl.pack_nested(atype, ip, proto)


def event_message(entry, kind):
    """An event as ctnetlink_conntrack_event() writes it: NEW with CREATE|EXCL, UPDATE without."""
    attrs = [_tuple(ct.CTA_TUPLE_ORIG, entry.orig), _tuple(ct.CTA_TUPLE_REPLY, entry.reply),
             nl.pack_nla(ct.CTA_STATUS, struct.pack(">I", entry.status))]
    if kind != ce.DESTROY:
        attrs.append(nl.pack_nla(ct.CTA_TIMEOUT, struct.pack(">I", entry.timeout)))
    mtype = ct.CT_DELETE if kind == ce.DESTROY else ct.CT_NEW
    flags = nl.NLM_F_CREATE | nl.NLM_F_EXCL if kind == ce.NEW else 0
    return nl.pack_message(mtype, flags, b"".join(attrs), family=A4)


class ScriptedSubscription(object):
    """Stands in for the NetlinkSocket: datagrams (or OSErrors) queued in order."""

    def __init__(self, queue):
        self.queue = list(queue)
        self.buf = bytearray(1 << 16)
        self.waits = []

    def receive(self, timeout=None):
        self.waits.append(timeout)
        if not self.queue:
            return self.buf, 0
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise nl.NetlinkError(item.errno, str(item))
        self.buf[:len(item)] = item
        return self.buf, len(item)


def subscription(queue, translated_only=False):
    events = ce.ConntrackEvents.__new__(ce.ConntrackEvents)
    events.groups = ce.ALL_GROUPS
    events.translated_only = translated_only
    events._nl = ScriptedSubscription(queue)
    events._reader = ct.EntryReader()
    events._marker, events._marker_seen, events._markers = None, False, 0
    events.lost = 0
    return events


def test_kinds_follow_message_type_and_flags_and_entries_parse_like_a_dump():
    queue = [event_message(SESSION, ce.NEW), event_message(SESSION._replace(timeout=120), ce.UPDATE),
             event_message(SESSION._replace(timeout=0), ce.DESTROY)]
    events = subscription(queue).read(timeout=1)
    assert events == [(ce.NEW, SESSION), (ce.UPDATE, SESSION._replace(timeout=120)),
                      (ce.DESTROY, SESSION._replace(timeout=0))]


def test_read_waits_only_for_the_first_datagram_and_stops_at_max_events():
    events = subscription([event_message(SESSION, ce.NEW)] * 5)
    assert len(events.read(timeout=2, max_events=3)) == 3
    assert 1.5 < events._nl.waits[0] <= 2 and events._nl.waits[1:] == [0, 0]
    assert len(events.read(timeout=0)) == 2 and events.read(timeout=0) == []


def test_events_that_are_not_reported_do_not_end_the_wait():
    events = subscription([event_message(HOST_OWN, ce.NEW), event_message(SESSION, ce.NEW)], translated_only=True)
    assert events.read(timeout=5) == [(ce.NEW, SESSION)]
    assert len(events._nl.waits) == 3 and events._nl.waits[1] > 0  # still waiting after the first datagram


def test_several_messages_in_one_datagram_are_all_read():
    events = subscription([event_message(SESSION, ce.NEW) + event_message(HOST_OWN, ce.NEW)])
    assert [entry for _kind, entry in events.read()] == [SESSION, HOST_OWN]


def test_lost_events_are_an_event_in_their_place_and_counted():
    queue = [event_message(SESSION, ce.NEW), OSError(errno.ENOBUFS, "No buffer space available"),
             event_message(SESSION, ce.DESTROY)]
    events = subscription(queue)
    assert [kind for kind, _e in events.read()] == [ce.NEW, ce.LOST, ce.DESTROY]
    assert events.lost == 1


def test_other_socket_errors_are_conntrack_errors():
    events = subscription([OSError(errno.EBADF, "Bad file descriptor")])
    with pytest.raises(ct.ConntrackError):
        events.read()


def test_translated_only_drops_the_hosts_own_connections():
    queue = [event_message(HOST_OWN, ce.NEW), event_message(SESSION, ce.NEW)]
    assert subscription(queue, translated_only=True).read() == [(ce.NEW, SESSION)]


def test_markers_are_never_reported_and_only_our_own_destroy_ends_a_barrier():
    ours = FlowTuple(A4, 17, ce.MARKER_SRC, ce.MARKER_DST, 2000, 7)
    theirs = ours._replace(sport=2001)  # another reader's barrier

    def marker(orig):
        return ConntrackEntry(orig, orig._replace(src=orig.dst, dst=orig.src, sport=orig.dport, dport=orig.sport),
                              IPS_CONFIRMED, 10)

    queue = [event_message(marker(ours), ce.NEW), event_message(marker(theirs), ce.DESTROY),
             event_message(SESSION, ce.NEW)]
    events = subscription(queue)
    events._marker = ours
    assert events.read() == [(ce.NEW, SESSION)]
    assert not events._marker_seen
    events._nl.queue = [event_message(marker(ours), ce.DESTROY)]
    assert events.read() == [] and events._marker_seen


def test_a_barrier_needs_the_destroy_group():
    events = subscription([])
    events.groups = (ce.NFNLGRP_CONNTRACK_NEW,)
    with pytest.raises(ValueError):
        events.barrier()


def test_events_iterates_until_nothing_comes_within_the_timeout():
    events = subscription([event_message(SESSION, ce.NEW)] * 3 + [event_message(SESSION, ce.DESTROY)])
    assert [kind for kind, _e in events.events(timeout=0)] == [ce.NEW] * 3 + [ce.DESTROY]
