# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Conntrack events: what changed in the table, as it changes, without dumping it.

ctnetlink publishes every creation, update and destruction of an entry on three multicast groups
(NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY); conntrackd builds its caches from them. A cutover that
subscribed before its pre-copy dump knows the delta when the freeze starts.

What events do not say: a timeout that traffic refreshes produces no event (the lifetime moves on
silently); re-read the few sessions whose lifetime matters with Conntrack.get(). An UPDATE is a
change of state (TCP state, status bits, mark, labels...).

Events are lost when the socket's receive buffer is full: the kernel drops them and says so once
with ENOBUFS on the next read. That is reported as an event of kind LOST at the place of the loss:
the reader must then fall back to a full comparison against a dump.

A barrier tells when every event up to now has been read: see ConntrackEvents.barrier().
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import functools
import itertools
import os
import socket
import time
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import (
    CT_DELETE,
    CT_NEW,
    Conntrack,
    ConntrackError,
    EntryReader,
    strerror,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPPROTO_UDP,
    IPS_CONFIRMED,
    IPS_NAT_MASK,
    ConntrackEntry,
    FlowTuple,
)
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NETLINK_NETFILTER,
    NLM_F_CREATE,
    NLMSG_HDRLEN,
    NLMSG_LEN_TYPE,
    NLMSGHDR,
    NetlinkError,
    NetlinkSocket,
    nla_align,
)

NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
ALL_GROUPS = (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY)

NEW = "new"
UPDATE = "update"
DESTROY = "destroy"
LOST = "lost"  # events were dropped here (ENOBUFS): resynchronise with a dump

# kind: NEW, UPDATE, DESTROY (entry: the entry as the kernel reported it) or LOST (entry None).
# A DESTROY carries the tuples, status, mark and zone, but less than a dump of the rest (6.18 gives
# the timeout and TCP state, not the window tracking): the fields it lacks are None.
ConntrackEvent = namedtuple("ConntrackEvent", "kind entry")
LOST_EVENT = ConntrackEvent(LOST, None)

# Room for some 50k events between two reads (each costs about 1.3 KiB of buffer).
EVENT_BUFFER = 64 << 20

# The barrier's marker: an untranslated UDP entry between two addresses of 198.18.0.0/15 (RFC 2544,
# benchmarking; no traffic of ours or of anyone uses these two), alive for seconds at most.
MARKER_SRC = "198.19.255.253"
MARKER_DST = "198.19.255.254"
MARKER_TIMEOUT = 10
BARRIER_TIMEOUT = 10.0
# Every marker of this process has its own tuple: two subscriptions here see each other's markers,
# and one must never take the other's (still queued) for its own.
_MARKER_NUMBERS = itertools.count(1)


class ConntrackEvents(object):
    """A subscription to the conntrack events of the current network namespace.

    Usable from a thread (read(timeout) in a loop) or with select/poll (fileno(), then read(0)).
    One reader at a time: read() and barrier() must not run concurrently on one object.
    """

    def __init__(self, groups=ALL_GROUPS, translated_only=False, buffer_size=EVENT_BUFFER):
        """groups: the NFNLGRP_CONNTRACK_* to join; translated_only: drop events of entries the
        kernel applied no NAT to (the host's own connections), as Conntrack.dump() does."""
        self.groups = tuple(groups)
        self.translated_only = translated_only
        try:
            self._nl = NetlinkSocket(NETLINK_NETFILTER, buffer_size=buffer_size, groups=self.groups, timeout=None)
        except OSError as exc:
            raise ConntrackError("cannot subscribe to conntrack events: %s" % exc)
        self._reader = EntryReader()
        self._table = None  # the request socket of the barrier, opened when first needed
        self._marker = None  # the original tuple of the barrier's marker being waited for
        self._marker_seen = False
        self.lost = 0  # how many times events were dropped since the subscription began

    @property
    def buffer_size(self):
        """The receive buffer the kernel granted (bytes)."""
        return self._nl.rcvbuf

    def fileno(self):
        return self._nl.fileno()

    def close(self):
        self._nl.close()
        if self._table is not None:
            self._table.close()
            self._table = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading -------------------------------------------------------------------------------

    def read(self, timeout=0, max_events=4096):
        """The events queued now, at most max_events; waits up to timeout seconds (None: without
        limit) for the first one. An empty list means nothing happened meanwhile (events that are
        not reported, a barrier's marker or untranslated entries, do not end the wait)."""
        events = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(events) < max_events:
            if events:
                wait = 0  # what is already queued, without waiting again
            else:
                wait = None if deadline is None else max(0, deadline - time.monotonic())
            try:
                buf, nbytes = self._nl.receive(wait)
            except NetlinkError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise ConntrackError("reading conntrack events: %s" % exc)
                self.lost += 1
                events.append(LOST_EVENT)
                continue
            if not nbytes:
                break
            self._parse(buf, nbytes, events)
            if self._marker_seen and self._marker is not None:
                break  # a barrier waits for its marker only: no need to wait on for a reported event
        return events

    def events(self, timeout=None):
        """Events as they come, an iterator; it ends after timeout seconds without any (None: never)."""
        return itertools.chain.from_iterable(iter(functools.partial(self.read, timeout), []))

    def _parse(self, buf, nbytes, events):
        len_type = NLMSG_LEN_TYPE.unpack_from
        offset = 0
        while offset + NLMSG_HDRLEN <= nbytes:
            length, mtype = len_type(buf, offset)
            if length < NLMSG_HDRLEN or offset + length > nbytes:
                raise ConntrackError("malformed conntrack event")
            if mtype == CT_NEW or mtype == CT_DELETE:
                event = self._event(buf, offset, length, mtype)
                if event is not None:
                    events.append(event)
            offset += nla_align(length)

    def _event(self, buf, offset, length, mtype):
        try:
            entry = self._reader.entry(buf, offset, length)
        except (ValueError, IndexError) as exc:
            raise ConntrackError("malformed conntrack event: %s" % exc)
        if entry is None:
            return None
        if mtype == CT_DELETE:
            kind = DESTROY
        else:
            kind = NEW if NLMSGHDR.unpack_from(buf, offset)[2] & NLM_F_CREATE else UPDATE
        if entry.orig.src == MARKER_SRC and entry.orig.dst == MARKER_DST:
            # A barrier's marker (ours or another reader's): never a session, never reported.
            if kind == DESTROY and entry.orig == self._marker and not entry.zone:
                self._marker_seen = True
            return None
        if self.translated_only and not entry.status & IPS_NAT_MASK:
            return None
        return ConntrackEvent(kind, entry)

    # -- barrier -------------------------------------------------------------------------------

    def barrier(self, timeout=BARRIER_TIMEOUT):
        """Read every event up to now; returns them (what read() would have), LOST included.

        A marker entry is created and deleted at once through a request socket; its DESTROY event
        is queued on this subscription when the delete is handled, behind every event the kernel
        had queued before. So when it is read, every change that completed before barrier() was
        called has been read too (changes made meanwhile may fall on either side).

        The marker is safe to create on a serving NAT: it is untranslated (a dump of translated
        entries never holds it, no address selector matches it, it is never migrated), its UDP
        tuple is in 198.18.0.0/15, which no traffic uses, no NAT rule applies to an injected entry,
        and its timeout is MARKER_TIMEOUT seconds, so a reader killed between create and delete
        leaves it for that long at most. Its events are dropped by every reader of this class.
        If events were lost while waiting (the marker's own DESTROY may be among them), a new
        marker is sent, once the queue has been read up to the loss.
        Raises ConntrackError when the marker cannot be created or its event does not come.
        """
        if NFNLGRP_CONNTRACK_DESTROY not in self.groups:
            raise ValueError("a barrier needs the NFNLGRP_CONNTRACK_DESTROY group")
        if self._table is None:
            self._table = Conntrack()
        events = []
        deadline = time.monotonic() + timeout
        for _attempt in range(3):
            self._send_marker()
            while not self._marker_seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConntrackError("conntrack event barrier: the marker's event did not come within %ss" % timeout)
                batch = self.read(min(left, 0.5))
                events.extend(batch)
                if LOST_EVENT in batch:
                    break  # the marker's own event may have been dropped: send another
            if self._marker_seen:
                self._marker = None
                return events
        raise ConntrackError("conntrack event barrier: events kept being lost (the receive buffer is too small)")

    def _send_marker(self):
        # Another reader's marker may hold a tuple; the next port is another one.
        for _attempt in range(16):
            number = next(_MARKER_NUMBERS)
            orig = FlowTuple(socket.AF_INET, IPPROTO_UDP, MARKER_SRC, MARKER_DST,
                             1024 + os.getpid() % 64000, 1 + number % 65535)
            marker = ConntrackEntry(orig, orig._replace(src=orig.dst, dst=orig.src, sport=orig.dport, dport=orig.sport),
                                    IPS_CONFIRMED, MARKER_TIMEOUT)
            self._marker, self._marker_seen = orig, False
            failures = self._table.create([marker], liberal=False)
            if not failures:
                failures = self._table.delete([marker])
                if failures:
                    raise ConntrackError("conntrack event barrier: deleting the marker: %s" % strerror(failures[0][1]))
                return
            if failures[0][1] != errno.EEXIST:
                raise ConntrackError("conntrack event barrier: creating the marker: %s" % strerror(failures[0][1]))
        raise ConntrackError("conntrack event barrier: no free marker tuple")
