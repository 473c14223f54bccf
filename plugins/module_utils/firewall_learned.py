# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the firewall's packet path learned since the target was last given it (pure).

The cutover carries the firewall's learned state again after the pre-copy: whole in the catch-up
(before the freeze), and inside the window only the members that changed, as element commands.
Both sides compare two Firewall values: what the target holds (counted down by the seconds since
it was written) and what the source holds now.

    members   a set's elements added, removed, or whose lifetime started again (an `update`
              rule, or an address that left and came back); a recent list whose hits differ
    counts    quota use, named counters, element counters: they move with every packet
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections import namedtuple

# Seconds by which a lifetime must exceed what the held copy has left to count as started again:
# two readings of one lifetime, taken on two hosts with a few milliseconds between them, differ.
LIFETIME_TOLERANCE = 2.0
# A held element with less than this left may be gone from the target when the commands arrive:
# it is never deleted (nft fails a transaction that deletes a missing element), only added again.
EXPIRY_MARGIN = 1.0

# elements: {set name: SetChange}; recent_lists: names of the lists whose entries differ;
# counts: whether quota use, counters or element counters differ.
LearnedChanges = namedtuple("LearnedChanges", ["elements", "recent_lists", "counts"])
#   added      SetElement the target lacks (or whose copy there is about to run out)
#   removed    addresses the target holds and the source no longer does
#   refreshed  SetElement the target holds with a shorter lifetime left: deleted and added again
SetChange = namedtuple("SetChange", ["added", "removed", "refreshed"])


def members_changed(changes):
    return bool(changes.elements or changes.recent_lists)


def _left(element, elapsed):
    return None if element.remaining is None else element.remaining - elapsed


def set_changes(held, current, elapsed, tolerance=LIFETIME_TOLERANCE, margin=EXPIRY_MARGIN):
    """SetChange from the held set (written `elapsed` seconds ago) to the current one; None when
    their members agree."""
    held_by = dict((e.address, e) for e in held.elements) if held is not None else {}
    added, refreshed = [], []
    for element in current.elements:
        before = held_by.get(element.address)
        left = None if before is None else _left(before, elapsed)
        if before is None or (left is not None and left <= margin):
            added.append(element)
        elif element.remaining is None and left is not None:
            refreshed.append(element)   # it no longer expires
        elif element.remaining is not None and (left is None or element.remaining > left + tolerance):
            refreshed.append(element)
    wanted = set(e.address for e in current.elements)
    removed = [e.address for e in held_by.values()
               if e.address not in wanted and (_left(e, elapsed) is None or _left(e, elapsed) > margin)]
    if not (added or removed or refreshed):
        return None
    return SetChange(tuple(added), tuple(sorted(removed)), tuple(refreshed))


def _recent_hits(recent):
    return sorted((e.address, len(e.ages)) for e in recent.entries)


def _counts_differ(held, current):
    """Whether an element both sets hold counted packets since (members aside)."""
    before = dict((e.address, (e.packets, e.bytes)) for e in held.elements)
    return any(e.address in before and before[e.address] != (e.packets, e.bytes) for e in current.elements)


def learned_changes(held, current, elapsed, tolerance=LIFETIME_TOLERANCE, margin=EXPIRY_MARGIN):
    """LearnedChanges from `held` (the Firewall the target was given `elapsed` seconds ago) to
    `current` (the source's now). Sets and lists are matched by name; one that the target does
    not hold counts as all members added."""
    held_sets = dict((s.name, s) for s in held.sets)
    elements = {}
    for fwset in current.sets:
        change = set_changes(held_sets.get(fwset.name), fwset, elapsed, tolerance, margin)
        if change is not None:
            elements[fwset.name] = change
    held_recent = dict((r.name, r) for r in held.recent_lists)
    recent = tuple(r.name for r in current.recent_lists
                   if r.name not in held_recent or _recent_hits(held_recent[r.name]) != _recent_hits(r))
    counts = (held.quotas != current.quotas or held.counters != current.counters
              or any(s.name in held_sets and _counts_differ(held_sets[s.name], s) for s in current.sets))
    return LearnedChanges(elements, recent, bool(counts))


def with_members(firewall, sets, recent_lists):
    """`firewall` (rules, quotas, counters as read before) with the members read just now: each
    of its sets gets the elements of the same name in `sets` ({name: [SetElement]}, none when
    absent) and each recent list the entries in `recent_lists` ({name: RecentList})."""
    fresh_sets = tuple(s._replace(elements=tuple(sets.get(s.name, ()))) for s in firewall.sets)
    fresh_recent = tuple(recent_lists.get(r.name, r._replace(entries=())) for r in firewall.recent_lists)
    return firewall._replace(sets=fresh_sets, recent_lists=fresh_recent)


def summary(changes):
    """Counts for the cutover's report."""
    return {"added": sum(len(c.added) for c in changes.elements.values()),
            "removed": sum(len(c.removed) for c in changes.elements.values()),
            "refreshed": sum(len(c.refreshed) for c in changes.elements.values()),
            "recent_lists": len(changes.recent_lists), "counts": changes.counts}
