# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source's side of a cutover: it knows what changed since the pre-copy without dumping.

From its start the agent reads the conntrack events of the source (a thread keeps the socket
drained, so the kernel never drops any while the pre-copy is gathered). At the freeze it takes a
barrier (every event up to now read), and the delta is what the events say changed since the
pre-copy: sessions new or re-bound, sessions ended, and sessions whose lifetime the target's copy
would outlive too little (re-read by a batched GET: a timeout refreshed by traffic makes no event).
Lost events (ENOBUFS) fall back to a full comparison with a dump, and the answer says so.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import threading
import time

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model, alg_state
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import IPS_CONFIRMED
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_events import (
    DESTROY,
    LOST,
    NEW,
    ConntrackEvents,
)
from ansible_collections.nfstate.migration.plugins.module_utils.freeze import Freeze, expiry_for, interface_devices
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import REFRESH_HORIZON, refreshed_at_risk
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    build_document,
    delta_document,
    document_sessions,
    instance,
    read_document,
    removed_mapping,
    set_mapping_entries,
    snapshot_age,
)
from ansible_collections.nfstate.migration.plugins.module_utils.agent.protocol import AgentError
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    select,
    session_key,
    split_supported,
)


class EventLog(object):
    """The latest event of every session since the subscription, kept by a reader thread."""

    def __init__(self):
        self.events = ConntrackEvents(translated_only=True)
        self.latest = {}        # session key -> (kind, entry, sequence)
        self.sequence = 0
        self.lost = False
        self._lock = threading.Lock()
        self._barrier_wanted = threading.Event()
        self._barrier_done = threading.Event()
        self._barrier_error = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="conntrack-events")
        self._thread.daemon = True
        self._thread.start()

    def _record(self, batch):
        with self._lock:
            for event in batch:
                if event.kind == LOST:
                    self.lost = True
                    continue
                self.sequence += 1
                self.latest[session_key(event.entry)] = (event.kind, event.entry, self.sequence)

    def _run(self):
        # One reader of the socket at a time: the barrier runs here too, when asked for.
        while not self._stop:
            try:
                if self._barrier_wanted.is_set():
                    self._barrier_wanted.clear()
                    try:
                        self._record(self.events.barrier())
                    except Exception as exc:  # pylint: disable=broad-except
                        self._barrier_error = exc
                    self._barrier_done.set()
                    continue
                self._record(self.events.read(timeout=0.02))
            except Exception:  # pylint: disable=broad-except
                with self._lock:
                    self.lost = True
                time.sleep(0.05)

    def barrier(self, timeout=5.0):
        """Every event up to now recorded; returns the sequence number reached."""
        self._barrier_error = None
        self._barrier_done.clear()
        self._barrier_wanted.set()
        if not self._barrier_done.wait(timeout):
            raise AgentError("the conntrack event barrier did not return within %ss" % timeout)
        if self._barrier_error is not None:
            raise AgentError("conntrack event barrier: %s" % self._barrier_error)
        with self._lock:
            return self.sequence

    def snapshot(self):
        with self._lock:
            return dict(self.latest), self.lost

    def new_since(self, sequence):
        """Sessions created (confirmed) after `sequence`: a freeze that held would allow none."""
        with self._lock:
            return [entry for kind, entry, seq in self.latest.values()
                    if seq > sequence and kind == NEW and entry.status & IPS_CONFIRMED]

    def close(self):
        self._stop = True
        self._thread.join(1.0)
        self.events.close()


def _sequence(state):
    """The sequence adjustment of an ALG state (None when it has none)."""
    return None if state is None else (state.seq_adj_orig, state.seq_adj_reply)


class SourceSide(object):
    """Requests the driver sends the source's agent."""

    def __init__(self, provider, selectors, instance_name):
        self.provider = provider
        self.selectors = selectors or {}
        self.instance_name = instance_name
        self.log = EventLog()
        self.precopy = None          # session key -> entry, as the pre-copy holds them
        self.precopy_alg = []        # keys of its ALG sessions (helper, sequence adjustment, master)
        self.precopy_base = None     # the pre-copy document without its sessions (rules, metadata)
        self.precopy_taken = None    # monotonic time the pre-copy was read
        self.frozen = None           # Freeze in force
        self.frozen_until = None     # monotonic time the kernel lifts it
        self.delta_at = None         # event sequence of the last delta's barrier
        self.released = None         # the addresses given up (to take back on an undo)
        self.alg = True              # carry the ALG state (helpers, sequence adjustment, expectations)

    # -- before the window ------------------------------------------------------------------

    def prepare(self, precopy, age=0.0, alg=True):
        """Load the pre-copy this agent's events are compared with (read before the window)."""
        self.alg = bool(alg)
        try:
            document = read_document(precopy)
            present = document_sessions(document).present
        except (OSError, ValueError) as exc:
            raise AgentError("cannot read the pre-copy %s: %s" % (precopy, exc))
        self.precopy = dict((session_key(e), e) for e in present)
        # The ALG sessions, found once: a delta re-reads them without walking the whole pre-copy.
        self.precopy_alg = [key for key, e in self.precopy.items() if e.alg is not None]
        base = dict(instance(document))
        base.pop("mapping-table", None)
        self.precopy_base = {"ietf-nat:nat": {"instances": {"instance": [base]}}}
        # The snapshot says when it was read (this host's clock): lifetimes count down from there.
        age = max(float(age or 0), snapshot_age(document, datetime.datetime.now(datetime.timezone.utc)))
        self.precopy_taken = time.monotonic() - age
        return {"sessions": len(self.precopy)}

    # -- the window -------------------------------------------------------------------------

    def freeze(self, interfaces, deadline):
        devices = interface_devices(interfaces)
        now = time.time()
        wanted = Freeze(devices, expiry_for(deadline, now))
        self.provider.freeze(wanted, now)
        state = self.provider.read_freeze(time.time())
        if not (state.intact and state.active == wanted):
            self.provider.unfreeze()
            raise AgentError("the freeze read back does not match what was written: removed it again")
        self.frozen = wanted
        self.frozen_until = time.monotonic() + (wanted.expires_at - time.time())
        return {"expires_at": wanted.expires_at}

    def delta(self):
        """What changed since the pre-copy, as a delta document (its JSON text travels as is)."""
        if self.precopy is None:
            raise AgentError("no pre-copy loaded: send prepare first")
        self.delta_at = self.log.barrier()
        latest, lost = self.log.snapshot()
        elapsed = int(time.monotonic() - self.precopy_taken)
        started = time.monotonic()
        # The expectation table is small (minutes-lived, a few per ALG session): read whole each time.
        expectations = alg_state.dump_expectations() if self.alg else []
        expectations_ms = round((time.monotonic() - started) * 1000, 2)
        not_carried = []
        if lost:
            document, added, removed, refreshed = self._full_comparison(elapsed, expectations, not_carried)
        else:
            document, added, removed, refreshed = self._from_events(latest, elapsed, expectations, not_carried)
        return {"document": document, "added": added, "removed": removed, "refreshed": refreshed,
                "lost_events": lost, "expectations": alg_state.carried(document), "expectations_ms": expectations_ms,
                "alg_not_carried": not_carried}

    def _from_events(self, latest, elapsed, expectations=(), not_carried=None):
        precopy = self.precopy
        added, removed, changed = [], [], []
        for key, (kind, entry, dummy) in latest.items():
            before = precopy.get(key)
            if kind == DESTROY:
                if before is not None and before.reply == entry.reply:
                    removed.append(before)
                continue
            if before is None:
                added.append(entry)
            elif before.reply != entry.reply:
                removed.append(before)
                added.append(entry)
            else:
                changed.append(before)
        added, dummy = split_supported(select(added, self.selectors))
        # A lifetime refreshed by traffic makes no event: re-read the pre-copy's sessions whose copy
        # may run out (and those whose state changed), never the whole table.
        ended = set(session_key(e) for e in removed)
        candidates = dict((key, e) for key, e in precopy.items()
                          if key not in ended and e.timeout - elapsed < REFRESH_HORIZON)
        changed_keys = set(session_key(e) for e in changed)
        candidates.update((session_key(e), e) for e in changed)
        refreshed = []
        if candidates:
            befores = list(candidates.values())
            with Conntrack() as table:
                currents = table.get(befores)
            for before, current in zip(befores, currents):
                if current is None or current.reply != before.reply:
                    continue
                state_moved = session_key(before) in changed_keys and current.tcp_state != before.tcp_state
                if state_moved or refreshed_at_risk(before, current, elapsed):
                    refreshed.append(current)
        if self.alg:
            self._alg_sessions(added, removed, refreshed, expectations)
        document = self._document(added, removed, refreshed, expectations, not_carried)
        return document, len(added), len(removed), len(refreshed)

    def _alg_sessions(self, added, removed, refreshed, expectations):
        """Re-read the ALG sessions (an event may lack their helper state): a master whose sequence
        adjustment moved since the pre-copy is re-created on the target (the kernel takes it only on
        creation), and the masters of the expectations travel so that those can name them."""
        wanted = set(alg_model.master_key(exp.master) for exp in expectations)
        ended = set(session_key(e) for e in removed)
        fresh = set(session_key(e) for e in added)
        carried = fresh | set(session_key(e) for e in refreshed)
        held = [self.precopy[key] for key in self.precopy_alg if key not in ended and key not in fresh]
        new = [e for e in added if e.alg is not None]
        if not held and not new:
            return
        with Conntrack() as table:
            currents = table.get(held + new)
        for position, (before, current) in enumerate(zip(held + new, currents)):
            if current is None or current.reply != before.reply:
                continue
            if position >= len(held):  # new since the pre-copy: its state as the kernel holds it now
                added[added.index(before)] = current
                continue
            if _sequence(before.alg) != _sequence(current.alg):
                removed.append(before)
                added.append(current)
                refreshed[:] = [e for e in refreshed if session_key(e) != session_key(before)]
            elif alg_model.master_key(current.orig) in wanted and session_key(current) not in carried:
                refreshed.append(current)

    def _full_comparison(self, elapsed, expectations=(), not_carried=None):
        with Conntrack() as table:
            entries, dummy = split_supported(select(table.dump(translated_only=True), self.selectors))
        if not self.alg:
            entries = alg_state.gathered(entries, False)[0]
        document, added, removed, refreshed = delta_document(
            entries, list(self.precopy.values()), self.instance_name, self.precopy_base, elapsed=elapsed,
            expectations=expectations, not_carried=not_carried)
        return document, added, removed, refreshed

    def _document(self, added, removed, refreshed, expectations=(), not_carried=None):
        if not self.alg:
            added, refreshed = alg_state.gathered(added, False)[0], alg_state.gathered(refreshed, False)[0]
        document = build_document(added + refreshed, self.instance_name, self.precopy_base, kind="delta",
                                  expectations=expectations, not_carried=not_carried)
        mappings = instance(document)["mapping-table"]["mapping-entry"]
        mappings.extend(removed_mapping(e, i) for i, e in enumerate(removed, len(mappings) + 1))
        set_mapping_entries(document, mappings)
        return document

    def check(self):
        """Frozen without a break since the last delta: the kernel deadline is ahead, and no session
        was created meanwhile (a freeze lifted or removed lets them through)."""
        if self.frozen is None or self.delta_at is None:
            raise AgentError("check needs a freeze and a delta first")
        # No read of the ruleset here (a process per address family with iptables): a freeze lifted
        # or removed shows in the events, as a session created since the delta.
        sequence = self.log.barrier()
        created = self.log.new_since(self.delta_at)
        remaining = self.frozen_until - time.monotonic()
        ok = remaining > 0 and not created
        return {"frozen": ok, "remaining_ms": int(remaining * 1000), "created_since_delta": len(created),
                "sequence": sequence}

    def release(self, addresses, interfaces, run_addresses):
        result = run_addresses(dict(addresses=addresses, interfaces=interfaces, state="absent", announce="false",
                                    count=1, interval=0.0))
        self.released = (addresses, interfaces)
        return {"removed": len(result["removed"])}

    def unfreeze(self):
        self.provider.unfreeze()
        self.frozen = None
        return {}

    def undo(self, run_addresses):
        """The controller is gone before the end: serve again as before (addresses back, no freeze)."""
        if self.released is not None:
            addresses, interfaces = self.released
            run_addresses(dict(addresses=addresses, interfaces=interfaces, state="present", announce="always",
                               count=3, interval=0.1))
        if self.frozen is not None:
            self.provider.unfreeze()

    def close(self):
        self.log.close()
