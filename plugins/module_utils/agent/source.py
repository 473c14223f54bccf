# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source's side of a cutover: it knows what changed since the pre-copy without dumping.

From its start the agent reads the conntrack events of the source (a thread keeps the socket
drained, so the kernel never drops any while the pre-copy is gathered). A delta takes a barrier
(every event up to now read) and is what the events say changed since the last delta (the
pre-copy at first; agent/baseline.py): sessions new or re-bound, sessions ended, and sessions whose
lifetime the target's copy would outlive too little (re-read by a batched GET: a timeout refreshed
by traffic makes no event). The driver takes one delta before the freeze, so that the window's own
carries only the last moments' changes. Lost events (ENOBUFS) fall back to a full comparison with
a dump, and the answer says so.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import select as io_select  # session_model has a select() of its own
import threading
import time

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model, alg_state
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack, without_ended_twins
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import IPS_CONFIRMED
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_events import (
    DESTROY,
    LOST,
    NEW,
    ConntrackEvents,
)
from ansible_collections.nfstate.migration.plugins.module_utils.forwarded import addresses_for
from ansible_collections.nfstate.migration.plugins.module_utils.freeze import Freeze, expiry_for, interface_devices
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    build_document,
    document_sessions,
    instance,
    read_document,
    removed_mapping,
    set_mapping_entries,
    snapshot_age,
)
from ansible_collections.nfstate.migration.plugins.module_utils.agent.baseline import Baseline
from ansible_collections.nfstate.migration.plugins.module_utils.agent.firewall import Beside, SourceFirewall
from ansible_collections.nfstate.migration.plugins.module_utils.agent.protocol import AgentError
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    select,
    session_key,
    split_supported,
    wants_forwarded,
)


class EventLog(object):
    """The latest event of every session since the subscription, kept by a reader thread."""

    def __init__(self, translated_only=True):
        self.events = ConntrackEvents(translated_only=translated_only)
        self.latest = {}        # session key -> (kind, entry, sequence)
        self.sequence = 0
        self.lost = False
        self._lock = threading.Lock()
        self._barrier_wanted = threading.Event()
        self._barrier_done = threading.Event()
        # The reader sleeps in select() on the socket and this pipe: a barrier wakes it at once.
        self._wake_r, self._wake_w = os.pipe()
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
                ready = io_select.select([self.events.fileno(), self._wake_r], [], [], 0.5)[0]
                if self._wake_r in ready:
                    os.read(self._wake_r, 64)
                if self._barrier_wanted.is_set():
                    self._barrier_wanted.clear()
                    try:
                        self._record(self.events.barrier())
                    except Exception as exc:  # pylint: disable=broad-except
                        self._barrier_error = exc
                    self._barrier_done.set()
                    continue
                if self.events.fileno() in ready:
                    self._record(self.events.read(timeout=0))
            except Exception:  # pylint: disable=broad-except
                with self._lock:
                    self.lost = True
                time.sleep(0.05)

    def barrier(self, timeout=5.0):
        """Every event up to now recorded; returns the sequence number reached."""
        self._barrier_error = None
        self._barrier_done.clear()
        self._barrier_wanted.set()
        os.write(self._wake_w, b"b")
        if not self._barrier_done.wait(timeout):
            raise AgentError("the conntrack event barrier did not return within %ss" % timeout)
        if self._barrier_error is not None:
            raise AgentError("conntrack event barrier: %s" % self._barrier_error)
        with self._lock:
            return self.sequence

    def snapshot(self):
        """(latest events, whether any were lost since the last snapshot): a loss is answered once,
        by a full comparison read after this snapshot."""
        with self._lock:
            lost, self.lost = self.lost, False
            return dict(self.latest), lost

    def new_since(self, sequence):
        """Sessions created (confirmed) after `sequence`: a freeze that held would allow none."""
        with self._lock:
            return [entry for kind, entry, seq in self.latest.values()
                    if seq > sequence and kind == NEW and entry.status & IPS_CONFIRMED]

    def close(self):
        self._stop = True
        os.write(self._wake_w, b"s")
        self._thread.join(1.0)
        self.events.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _sequence(state):
    """The sequence adjustment of an ALG state (None when it has none)."""
    return None if state is None else (state.seq_adj_orig, state.seq_adj_reply)


class SourceSide(object):
    """Requests the driver sends the source's agent."""

    def __init__(self, provider, selectors, instance_name):
        self.provider = provider
        self.selectors = selectors or {}
        self.instance_name = instance_name
        # The firewall's forwarded sessions are untranslated: their events count too, and the
        # host's addresses (read once, before the window) keep its own connections out.
        self.log = EventLog(translated_only=not wants_forwarded(self.selectors))
        self.local = addresses_for(self.selectors)
        self.baseline = None         # what the target holds: the pre-copy, advanced by each delta
        self.baseline_at = 0         # event sequence the baseline accounts for
        self.expectations = []       # the last delta's expectation table (the target's is made exactly it)
        self.precopy_base = None     # the pre-copy document without its sessions (rules, metadata)
        self.frozen = None           # Freeze in force
        self.frozen_until = None     # monotonic time the kernel lifts it
        self.delta_at = None         # event sequence of the last delta taken while frozen
        self.released = None         # the addresses given up (to take back on an undo)
        self.service = None          # the service addresses this host holds, as the freeze was told
        self.alg = True              # carry the ALG state (helpers, sequence adjustment, expectations)
        self.firewall = None         # SourceFirewall: the firewall's learned state crosses too
        self.learned = None          # its read once frozen, begun by the freeze (Beside)

    # -- before the window ------------------------------------------------------------------

    def prepare(self, precopy, age=0.0, alg=True, firewall=None):
        """Load the pre-copy this agent's events are compared with (read before the window).
        firewall: {interfaces} when the firewall's learned state crosses too."""
        self.alg = bool(alg)
        try:
            document = read_document(precopy)
            present = document_sessions(document).present
        except (OSError, ValueError) as exc:
            raise AgentError("cannot read the pre-copy %s: %s" % (precopy, exc))
        base = dict(instance(document))
        base.pop("mapping-table", None)
        self.precopy_base = {"ietf-nat:nat": {"instances": {"instance": [base]}}}
        # The snapshot says when it was read (this host's clock): lifetimes count down from there.
        age = max(float(age or 0), snapshot_age(document, datetime.datetime.now(datetime.timezone.utc)))
        self.baseline = Baseline(present, time.monotonic() - age)
        self.baseline_at = 0
        if firewall is not None:
            self.firewall = SourceFirewall(self.provider, firewall.get("interfaces"), document)
        return {"sessions": len(self.baseline)}

    # -- the window -------------------------------------------------------------------------

    def freeze(self, interfaces, deadline, service=None):
        """service: (addresses, interfaces) of the service, which the target may claim from here on."""
        devices = interface_devices(interfaces)
        now = time.time()
        wanted = Freeze(devices, expiry_for(deadline, now))
        self.provider.freeze(wanted, now)
        # The freeze holds new connections from here: the firewall's members are read now, beside
        # the freeze's read-back, and the window's delta takes the result.
        self.learned = Beside(self.firewall.delta, True) if self.firewall is not None else None
        state = self.provider.read_freeze(time.time())
        if not (state.intact and state.active == wanted):
            self.provider.unfreeze()
            self._drop_learned()
            raise AgentError("the freeze read back does not match what was written: removed it again")
        self.frozen = wanted
        self.service = service
        self.frozen_until = time.monotonic() + (wanted.expires_at - time.time())
        return {"expires_at": wanted.expires_at}

    def _drop_learned(self):
        """Wait for a read begun by a freeze that did not hold, and forget it."""
        learned, self.learned = self.learned, None
        if learned is not None:
            try:
                learned.result()
            except AgentError:
                pass

    def delta(self, full=False):
        """What changed since the last delta (the pre-copy at first), as a delta document (its JSON
        text travels as is); the baseline then holds it. Before the freeze it lets the target catch
        up while this host serves; once frozen it is the window's.

        full: compare with a dump rather than the events. The kernel gives an entry its event cache
        only when someone listens as it is created (nf_conntrack_events=2, the default), so the
        sessions older than this agent never report their end nor their state changes: a catch-up
        before the window finds them with a dump, at the cost of reading the table once."""
        if self.baseline is None:
            raise AgentError("no pre-copy loaded: send prepare first")
        # The firewall is read beside the sessions (its programs run while this thread works).
        learned, self.learned = self.learned, None
        if learned is None and self.firewall is not None:
            learned = Beside(self.firewall.delta, bool(self.frozen))
        sequence = self.log.barrier()
        latest, lost = self.log.snapshot()
        now = time.monotonic()
        started = now
        # The expectation table is small (minutes-lived, a few per ALG session): read whole each time.
        expectations = alg_state.dump_expectations() if self.alg else []
        expectations_ms = round((time.monotonic() - started) * 1000, 2)
        if lost or full:
            added, removed, refreshed = self._full_comparison(now)
        else:
            added, removed, refreshed = self._from_events(latest, now)
        if self.alg:
            self._alg_sessions(added, removed, refreshed, expectations)
        self.baseline.advance(added, removed, refreshed, now)
        self.baseline_at = sequence
        self.expectations = expectations
        if self.frozen is not None:
            self.delta_at = sequence
        not_carried = []
        document = self._document(added + refreshed, removed, expectations, not_carried)
        firewall = None
        if learned is not None:
            fw_document, firewall = learned.result()
            if fw_document:
                document.update(fw_document)
        return {"document": document, "added": len(added), "removed": len(removed), "refreshed": len(refreshed),
                "lost_events": lost, "full": bool(lost or full), "frozen": bool(self.frozen), "expectations": alg_state.carried(document),
                "expectations_ms": expectations_ms, "alg_not_carried": not_carried, "firewall": firewall}

    def _from_events(self, latest, now):
        baseline, since = self.baseline, self.baseline_at
        added, removed, changed = [], [], []
        for key, (kind, entry, sequence) in latest.items():
            if sequence <= since:
                continue  # an earlier delta carried it
            before = baseline.entries.get(key)
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
        added, dummy = split_supported(select(added, self.selectors, self.local))
        # A lifetime refreshed by traffic makes no event: re-read the sessions whose copy on the
        # target may run out (and those whose state changed), never the whole table.
        ended = set(session_key(e) for e in removed)
        candidates = dict((key, e) for key, e in baseline.at_risk(now).items() if key not in ended)
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
                if state_moved or baseline.refreshed(before, current, now):
                    refreshed.append(current)
        return added, removed, refreshed

    def _full_comparison(self, now):
        with Conntrack() as table:
            entries, dummy = split_supported(select(table.dump(translated_only=not wants_forwarded(self.selectors)),
                                                    self.selectors, self.local))
            entries = without_ended_twins(table, entries)
        if not self.alg:
            entries = alg_state.gathered(entries, False)[0]
        return self.baseline.compare(entries, now)

    def _alg_sessions(self, added, removed, refreshed, expectations):
        """Re-read the ALG sessions (an event may lack their helper state): a master whose sequence
        adjustment moved since the target's copy is re-created there (the kernel takes it only on
        creation), and the masters of the expectations travel so that those can name them."""
        wanted = set(alg_model.master_key(exp.master) for exp in expectations)
        ended = set(session_key(e) for e in removed)
        fresh = set(session_key(e) for e in added)
        carried = fresh | set(session_key(e) for e in refreshed)
        held = [e for key, e in self.baseline.alg_entries() if key not in ended and key not in fresh]
        new = [e for e in added if e.alg is not None]
        if not held and not new:
            return
        with Conntrack() as table:
            currents = table.get(held + new)
        for position, (before, current) in enumerate(zip(held + new, currents)):
            if current is None or current.reply != before.reply:
                continue
            if position >= len(held):  # new since the last delta: its state as the kernel holds it now
                added[added.index(before)] = current
                continue
            if _sequence(before.alg) != _sequence(current.alg):
                removed.append(before)
                added.append(current)
                refreshed[:] = [e for e in refreshed if session_key(e) != session_key(before)]
            elif alg_model.master_key(current.orig) in wanted and session_key(current) not in carried:
                refreshed.append(current)

    def _document(self, present, removed, expectations=(), not_carried=None):
        if not self.alg:
            present = alg_state.gathered(present, False)[0]
        document = build_document(present, self.instance_name, self.precopy_base, kind="delta",
                                  expectations=expectations, not_carried=not_carried)
        mappings = instance(document)["mapping-table"]["mapping-entry"]
        mappings.extend(removed_mapping(e, i) for i, e in enumerate(removed, len(mappings) + 1))
        set_mapping_entries(document, mappings)
        return document

    def crossed(self):
        """After the window: every session that crossed after the pre-copy, one delta document
        (what the run's snapshot directory keeps, and what an undo on the target must remove)."""
        present, removed = self.baseline.crossed_sessions()
        document = self._document(present, removed, self.expectations)
        if self.firewall is not None and self.firewall.document:
            document.update(self.firewall.document)
        return {"document": document, "sessions": len(present), "removed": len(removed),
                "expectations": alg_state.carried(document)}

    def check(self):
        """Frozen without a break since the last delta: the kernel deadline is ahead, and no session
        was created meanwhile (a freeze lifted or removed lets them through)."""
        if self.frozen is None or self.delta_at is None:
            raise AgentError("check needs a freeze and a delta taken while frozen first")
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
        # Announced even if never released: the controller may have died between the target's
        # claim (its announcement turned the neighbours) and this host's release.
        back = self.released or (self.service if self.frozen is not None else None)
        if back is not None:
            addresses, interfaces = back
            run_addresses(dict(addresses=addresses, interfaces=interfaces, state="present", announce="always",
                               count=3, interval=0.1))
        if self.frozen is not None:
            self.provider.unfreeze()

    def close(self):
        self.log.close()
