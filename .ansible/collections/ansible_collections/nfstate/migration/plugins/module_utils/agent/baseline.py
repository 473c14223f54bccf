# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the target holds, as far as the source knows: the pre-copy, advanced by every delta.

A cutover may send deltas before the freeze (the target catches up while the source serves), so
that the one inside the window carries only what changed in the last moments. Each delta is taken
against this baseline and then advances it. Lifetimes are kept as expiry times on the source's
monotonic clock: a session that crossed in a delta has counted down on the target since that
delta, not since the pre-copy. The baseline also keeps every session that crossed after the
pre-copy, the last word on each: the run's delta document for the audit trail.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import bisect

from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import REFRESH_HORIZON, refreshed_at_risk
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import session_key


class Baseline(object):

    def __init__(self, entries, taken):
        """entries: the pre-copy's sessions; taken: when they were read (monotonic seconds)."""
        self.entries = dict((session_key(e), e) for e in entries)
        self.expiry = dict((key, taken + e.timeout) for key, e in self.entries.items())
        # The pre-copy sorted by expiry, for a bisection inside the window rather than a pass over
        # the table; what deltas changed since is in `recent` (as small as the deltas).
        self._sorted = sorted((at, key) for key, at in self.expiry.items())
        self._sorted_at = [at for at, dummy in self._sorted]
        self.recent = set()
        # The ALG sessions (helper, sequence adjustment, master): a delta re-reads them by key.
        self.alg_keys = set(key for key, e in self.entries.items() if e.alg is not None)
        self.crossed = {}  # session key -> (entry, removed?) of every delta, the latest

    def __len__(self):
        return len(self.entries)

    def elapsed(self, key, now):
        """Seconds the target's copy of the session has counted down, as refreshed_at_risk wants it."""
        return self.entries[key].timeout - (self.expiry[key] - now)

    def at_risk(self, now):
        """The sessions whose copy on the target has less than REFRESH_HORIZON seconds left."""
        limit = now + REFRESH_HORIZON
        found = {}
        for at, key in self._sorted[:bisect.bisect_left(self._sorted_at, limit)]:
            if key not in self.recent and key in self.entries:
                found[key] = self.entries[key]
        for key in self.recent:
            if key in self.entries and self.expiry[key] < limit:
                found[key] = self.entries[key]
        return found

    def alg_entries(self):
        """(key, entry) of the ALG sessions the target holds."""
        return [(key, self.entries[key]) for key in self.alg_keys if key in self.entries]

    def refreshed(self, before, current, now):
        """Whether a session with an unchanged binding must cross again (see refreshed_at_risk)."""
        return refreshed_at_risk(before, current, self.elapsed(session_key(before), now))

    def compare(self, entries, now):
        """(added, removed, refreshed) against a full read of the table: the way back when events were lost."""
        current = dict((session_key(e), e) for e in entries)
        added, refreshed = [], []
        for key, entry in current.items():
            before = self.entries.get(key)
            if before is None or before.reply != entry.reply:
                added.append(entry)
            elif self.refreshed(before, entry, now):
                refreshed.append(entry)
        removed = [e for key, e in self.entries.items() if key not in current or current[key].reply != e.reply]
        return added, removed, refreshed

    def advance(self, added, removed, refreshed, now):
        """The target applied this delta (or the cutover fails as a whole)."""
        for entry in removed:
            key = session_key(entry)
            self.entries.pop(key, None)
            self.expiry.pop(key, None)
            self.recent.discard(key)
            self.alg_keys.discard(key)
            self.crossed[key] = (entry, True)
        for entry in added + refreshed:
            key = session_key(entry)
            self.entries[key] = entry
            self.expiry[key] = now + entry.timeout
            self.recent.add(key)
            if entry.alg is not None:
                self.alg_keys.add(key)
            else:
                self.alg_keys.discard(key)
            self.crossed[key] = (entry, False)

    def crossed_sessions(self):
        """(present, removed): what crossed after the pre-copy, each session's latest word."""
        present = [e for e, gone in self.crossed.values() if not gone]
        removed = [e for e, gone in self.crossed.values() if gone]
        return present, removed
