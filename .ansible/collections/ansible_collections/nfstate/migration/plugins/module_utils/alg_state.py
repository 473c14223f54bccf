# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ALG state of a NAT on a host: what the gather adds to the sessions, what apply re-creates.

The kernel's order on the target: helper rules, then the masters with their helper (the session
driver gives CTA_HELP on creation), then the expectations, which name their masters. Expectations
live minutes and nothing refreshes them, so every snapshot carries the whole expectation table.
Standard library only (it runs on managed hosts).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import describe
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_expect import (
    ExpectError,
    ExpectTable,
    strerror,
)
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import expired


class AlgStateError(Exception):
    """The expectation table could not be read or written at all."""


def not_moved_notes(entries):
    """["<session>: <what stays behind>"] for the masters whose helper keeps private state."""
    notes = []
    for entry in entries:
        state = entry.alg
        if state is None:
            continue
        what = alg_model.not_moved(state.helper) if state.helper else None
        if what:
            notes.append("%s: moved with its %s helper, without %s" % (describe(entry), state.helper, what))
        if state.private:
            notes.append("%s: moved without the data its %s helper keeps in user space (CTA_HELP_INFO)"
                         % (describe(entry), state.helper or "user-space"))
    return notes


def dump_expectations():
    try:
        with ExpectTable() as table:
            return table.dump()
    except ExpectError as exc:
        raise AlgStateError(str(exc))


def gathered(entries, alg=True, notes=None):
    """(entries, expectations) to write into a snapshot. alg=False leaves the ALG state out (the
    sessions move alone, as a model without it would); notes gets what stays behind."""
    if not alg:
        return [e._replace(alg=None) if e.alg is not None else e for e in entries], []
    if notes is not None:
        notes.extend(not_moved_notes(entries))
    return entries, dump_expectations()


def carried(document):
    """How many expectations a snapshot document carries."""
    inst = document["ietf-nat:nat"]["instances"]["instance"][0]
    return len((inst.get(alg_model.EXPECTATIONS) or {}).get("expectation", []))


def counted_down(expectations, elapsed):
    """The expectations with their lifetime counted down by `elapsed` seconds; run-out ones left out."""
    return [exp._replace(timeout=exp.timeout - elapsed) for exp in expectations
            if exp.timeout is None or not expired(exp.timeout, elapsed)]


def expectation_key(exp):
    """What identifies an expectation in the kernel's table: its expected tuple and zone."""
    return (exp.tuple, exp.zone)


def _lines(failures):
    return ["%s: %s" % (alg_model.describe_expectation(exp), strerror(code)) for exp, code in failures]


def apply_expectations(expectations, check_mode=False, held_masters=None):
    """Create the expectations the host does not hold yet (after their masters).

    held_masters: the original tuples of the sessions this migration put on the host; an
    expectation of one of them that is not wanted any more (the source's was used or ran out) is
    deleted. Returns the counts and the refused ones with the kernel's reason.
    """
    try:
        with ExpectTable() as table:
            present = table.dump()
            have = set(expectation_key(exp) for exp in present)
            want = set(expectation_key(exp) for exp in expectations)
            missing = [exp for exp in expectations if expectation_key(exp) not in have]
            stale = []
            if held_masters is not None:
                masters = set(alg_model.master_key(tup) for tup in held_masters)
                stale = [exp for exp in present
                         if alg_model.master_key(exp.master) in masters and expectation_key(exp) not in want]
            if check_mode:
                return dict(expectations=len(expectations), expectations_created=0, expectations_deleted=0,
                            expectations_missing=len(missing), failed_expectations=[])
            gone = [(exp, code) for exp, code in table.delete(stale) if code != errno.ENOENT]
            # EEXIST: made meanwhile by the host's own helper for the same tuple, as wanted.
            refused = [(exp, code) for exp, code in table.create(missing) if code != errno.EEXIST]
    except ExpectError as exc:
        raise AlgStateError(str(exc))
    return dict(expectations=len(expectations), expectations_created=len(missing) - len(refused),
                expectations_deleted=len(stale) - len(gone), expectations_missing=len(refused),
                failed_expectations=_lines(refused) + ["delete " + line for line in _lines(gone)])
