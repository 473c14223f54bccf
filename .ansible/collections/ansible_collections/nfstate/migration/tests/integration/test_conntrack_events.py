"""Conntrack events and the batched GET against the real kernel, in namespaces made here.

The subscription lives in a child process inside the NAT namespace (labs.Remote) while
traffic and injected entries change the table.
"""

import json
import os
import shutil
import socket
import time

import pytest

from labs import COLLECTIONS_ROOT, ECHO_SERVER, HOLDING_CLIENT, PYTHON, driver, in_ns, read_line
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_NAT_MASK,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    ConntrackEntry,
    FlowTuple,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_events import (
    DESTROY,
    LOST,
    MARKER_SRC,
    NEW,
    UPDATE,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "nft", "conntrack")), reason="needs ip, nft, conntrack"),
]

A4 = socket.AF_INET
SEEN = IPS_ASSURED | IPS_SEEN_REPLY | IPS_CONFIRMED

# Sends one UDP datagram from a fixed port, so that every run of it belongs to the same session.
UDP_SEND = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.sendto(b"ping", (sys.argv[3], int(sys.argv[4])))
"""


# An agent's two ways of reading: a thread that reads with a timeout while the main thread works,
# and a loop that waits in select() on the subscription with other sockets.
READERS = """
import json, select, socket, sys, threading
sys.path.insert(0, sys.argv[1])
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack, conntrack_events
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import ConntrackEntry, FlowTuple

def entries(first, count):
    return [ConntrackEntry(FlowTuple(2, 17, "192.0.2.%d" % (n % 200 + 10), "203.0.113.9", 10000 + n // 200, 53),
                           FlowTuple(2, 17, "203.0.113.9", "198.51.100.1", 53, 1024 + n), 14 | 16, 600)
            for n in range(first, first + count)]

result = {}
with conntrack_events.ConntrackEvents(translated_only=True) as events, conntrack.Conntrack() as table:
    stop, seen = threading.Event(), []
    def reader():
        while not stop.is_set():
            seen.extend(events.read(timeout=0.1))
        seen.extend(events.barrier())
    thread = threading.Thread(target=reader)
    thread.start()
    for start in range(0, 1000, 100):  # the main thread's work
        assert table.create(entries(start, 100)) == []
    stop.set()
    thread.join(30)
    result["thread"] = [kind for kind, _entry in seen]

    other, peer = socket.socketpair()
    assert table.delete(entries(0, 1000)) == []
    peer.send(b"x")
    got, woken = [], set()
    while len(got) < 1000:
        ready = select.select([events, other], [], [], 5)[0]
        if not ready:
            break
        for source in ready:
            if source is other:
                other.recv(1)
                woken.add("other")
            else:
                got.extend(events.read(0))
                woken.add("events")
    result["select"] = [kind for kind, _entry in got]
    result["woken"] = sorted(woken)
print(json.dumps(result))
"""


class Lab(object):
    """A NAT site with an event subscription and a table object alive in the NAT namespace."""

    def __init__(self, spaces, site):
        self.spaces = spaces
        self.client, self.nat, self.server = site
        self.remote = spaces.remote(self.nat)
        self.remote.make("events", "events")
        self.remote.make("table", "table")

    def barrier(self, name="events"):
        return self.remote.call(name, "barrier")

    def table(self, method, *args, **kwargs):
        return self.remote.call("table", method, *args, **kwargs)

    def udp(self, sport, dport):
        """Send one datagram through the NAT and wait until its entry is confirmed with a fresh
        lifetime: the send returns before the NAT host has handled the packet, and a barrier
        covers only the changes made before it."""
        in_ns(self.client, PYTHON, "-c", UDP_SEND, "192.0.2.2", str(sport), "198.51.100.2", str(dport))
        orig = FlowTuple(A4, 17, "192.0.2.2", "198.51.100.2", sport, dport)
        probe = ConntrackEntry(orig, orig._replace(src=orig.dst, dst=orig.src, sport=dport, dport=sport), 0, 0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [entry] = self.table("get", [probe])
            if entry is not None and entry.timeout > 20:  # a datagram sets its entry's lifetime to 30 s
                return
            time.sleep(0.01)
        raise AssertionError("the datagram from port %d never made a session on the NAT host" % sport)


@pytest.fixture
def lab(netns_lab, nat_site):
    return Lab(netns_lab, nat_site("e", "20000-20099"))


def of(events, orig):
    return [(kind, entry) for kind, entry in events if entry is not None and entry.orig == orig]


def injected(count, first=0):
    """count UDP source-NAT sessions as a source NAT would have dumped them, numbered from first."""
    entries = []
    for n in range(first, first + count):
        orig = FlowTuple(A4, 17, "192.0.2.%d" % (n % 200 + 10), "203.0.113.%d" % (n % 50 + 1), 10000 + n // 200, 53)
        reply = FlowTuple(A4, 17, orig.dst, "198.51.100.1", 53, 1024 + n)
        entries.append(ConntrackEntry(orig, reply, SEEN | IPS_SRC_NAT, 600))
    return entries


def test_real_traffic_shows_as_new_with_its_binding_updates_and_destroy(lab):
    server = lab.spaces.start(lab.server, ECHO_SERVER, "198.51.100.2", "8080")
    assert read_line(server) == "ready"
    flow = lab.spaces.start(lab.client, HOLDING_CLIENT, "198.51.100.2", "8080")
    sport = int(read_line(flow))
    lab.udp(40000, 9)
    events = lab.barrier()

    tcp = of(events, FlowTuple(A4, 6, "192.0.2.2", "198.51.100.2", sport, 8080))
    kinds = [kind for kind, _entry in tcp]
    assert kinds[0] == NEW and set(kinds[1:]) == {UPDATE}, kinds
    new = tcp[0][1]
    assert new.status & IPS_SRC_NAT and new.tcp_state == 1  # confirmed at its SYN, already translated
    assert new.reply.dst == "198.51.100.1" and 20000 <= new.reply.dport <= 20099
    assert all(entry.reply == new.reply for _kind, entry in tcp)  # the binding never changes
    assert tcp[-1][1].tcp_state == 3 and tcp[-1][1].status & IPS_ASSURED  # established
    [(kind, udp)] = of(events, FlowTuple(A4, 17, "192.0.2.2", "198.51.100.2", 40000, 9))
    assert kind == NEW and udp.reply.dst == "198.51.100.1" and 20000 <= udp.reply.dport <= 20099
    # What the events say is what the table holds.
    assert {(e.orig, e.reply) for e in lab.table("dump")} == {(tcp[-1][1].orig, new.reply), (udp.orig, udp.reply)}

    in_ns(lab.nat, "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "8080")
    [(kind, gone)] = of(lab.barrier(), new.orig)
    assert kind == DESTROY and gone.reply == new.reply and gone.status & IPS_SRC_NAT
    # A DESTROY carries less than a dump: here no TCP window tracking.
    assert gone.tcp_wscale_orig is None and gone.tcp_flags_orig is None


def test_injected_entries_show_as_new_update_and_destroy(lab):
    dnat = ConntrackEntry(FlowTuple(A4, 6, "203.0.113.7", "198.51.100.1", 41000, 8443),
                          FlowTuple(A4, 6, "192.0.2.20", "203.0.113.7", 443, 41000), SEEN | IPS_DST_NAT, 3600,
                          mark=7, zone=3, tcp_state=2, tcp_wscale_orig=7, tcp_wscale_reply=7,
                          tcp_flags_orig=0x23, tcp_flags_reply=0x23)
    entries = injected(20) + [dnat]
    assert lab.table("create", entries) == []
    events = lab.barrier()
    assert [kind for kind, _e in events] == [NEW] * len(entries)
    assert [(e.orig, e.reply, e.zone, e.mark) for _k, e in events] == [(e.orig, e.reply, e.zone, e.mark) for e in entries]
    assert all(e.status & IPS_NAT_MASK == entry.status & IPS_NAT_MASK for (_k, e), entry in zip(events, entries))

    # A TCP state change (syn-recv -> established) is an UPDATE with the new state.
    assert lab.table("update", [dnat._replace(tcp_state=3)]) == []
    [(kind, updated)] = lab.barrier()
    assert kind == UPDATE and updated.orig == dnat.orig and updated.tcp_state == 3 and updated.reply == dnat.reply

    assert lab.table("delete", entries) == []
    events = lab.barrier()
    assert sorted((kind, e.orig, e.zone) for kind, e in events) == sorted((DESTROY, e.orig, e.zone) for e in entries)


def test_lost_events_are_reported_when_the_buffer_is_tiny_and_flooded(lab):
    lab.remote.make("tiny", "events", buffer_size=4096)
    assert driver(lab.nat, "create", injected(3000)) == []  # from another process: nobody reads meanwhile
    events = lab.remote.call("tiny", "read", 0)
    assert LOST in [kind for kind, _e in events]
    assert lab.remote.call("tiny", "read", 0) == []  # what fitted was read; the rest is gone for good
    assert lab.remote.call("tiny", "lost") >= 1
    # The big subscription lost nothing: every creation is there, and no LOST.
    events = lab.barrier()
    assert len(events) == 3000 and {kind for kind, _e in events} == {NEW}
    assert lab.remote.call("events", "lost") == 0
    # The tiny one still works once its queue has room again.
    lab.udp(40001, 9)
    assert [kind for kind, _e in lab.barrier("tiny")] == [NEW]


def test_barrier_returns_only_after_every_earlier_event_was_read(lab):
    for round_ in range(3):
        entries = injected(2000, first=round_ * 2000)
        assert driver(lab.nat, "create", entries) == []
        events = lab.barrier()  # the creator has exited: all 2000 happened before the barrier
        assert [(kind, e.orig) for kind, e in events] == [(NEW, e.orig) for e in entries]
        assert lab.remote.call("events", "read", 0) == []
    # The marker never stays, never shows as an event, and is never a session.
    everything = lab.table("dump", translated_only=False)
    assert len(everything) == 6000 and not [e for e in everything if e.orig.src == MARKER_SRC]
    assert driver(lab.nat, "conntrack_count") == 6000


def test_get_reads_the_same_as_a_dump_and_says_gone(lab):
    server = lab.spaces.start(lab.server, ECHO_SERVER, "198.51.100.2", "8080")
    assert read_line(server) == "ready"
    flow = lab.spaces.start(lab.client, HOLDING_CLIENT, "198.51.100.2", "8080")
    read_line(flow)
    assert lab.table("create", injected(500)) == []
    dumped = lab.table("dump")
    assert len(dumped) == 501
    gone = injected(1, first=600)[0]
    asked = dumped[::-1] + [gone]
    got = lab.table("get", asked)
    assert len(got) == len(asked) and got[-1] is None
    for want, have in zip(asked[:-1], got):
        assert have._replace(timeout=0) == want._replace(timeout=0)
        assert want.timeout - 2 <= have.timeout <= want.timeout


def test_a_timeout_refreshed_by_traffic_makes_no_event_and_get_sees_it(lab):
    lab.udp(40002, 9)  # nobody listens: the session never sees a reply
    [(kind, entry)] = lab.barrier()
    assert kind == NEW
    assert lab.table("update", [entry._replace(timeout=5)]) == []
    [(kind, _entry)] = lab.barrier()  # a change made through ctnetlink is reported
    assert kind == UPDATE
    [short] = lab.table("get", [entry])
    assert short.timeout <= 5
    lab.udp(40002, 9)  # the same session again: its timeout is refreshed by the packet
    assert lab.barrier() == []
    [refreshed] = lab.table("get", [entry])
    assert refreshed.timeout > 5 and refreshed.reply == entry.reply


def test_readers_in_a_thread_and_with_select(lab):
    result = json.loads(in_ns(lab.nat, PYTHON, "-c", READERS, COLLECTIONS_ROOT, timeout=60).stdout)
    assert result["thread"] == [NEW] * 1000
    assert result["select"] == [DESTROY] * 1000
    assert result["woken"] == ["events", "other"]
