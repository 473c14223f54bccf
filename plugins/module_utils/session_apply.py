# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the nat_sessions module does, without Ansible: gather, parse, render and apply sessions.

Applying is all or nothing unless the operator asks for best effort: conflicts and a lack of room
are found before the kernel is touched, and a kernel refusal part-way undoes what was done.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import datetime
import errno
import os
import socket

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import (
    Conntrack,
    conntrack_count,
    conntrack_max,
    strerror,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import describe, is_translated
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_xml import (
    ConntrackXmlError,
    parse_conntrack_xml,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    SNAPSHOT,
    DocumentError,
    date_and_time,
    document_sessions,
    instance,
    new_document,
    read_document,
    removed_mapping,
    set_mapping_entries,
    write_document,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    ModelError,
    entries_to_mappings,
    select,
    session_key,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_sync import (
    REFRESH_SLACK,
    plan,
    render_command,
)

# How many problems an error message lists before it says "and N more".
LISTED = 10
# A session with less lifetime left than this when it would be applied is let go: it is ending on
# the source as well, and re-creating it would only race its expiry.
EXPIRY_MARGIN = 2
# A delta carries a session whose binding is unchanged when the source refreshed it and the target's
# copy has less than this left (seconds): a UDP or ICMP flow (30 to 180 s) kept alive by traffic.
# A TCP connection with days to live is never carried, so a delta grows with what changed, not
# with the table.
REFRESH_HORIZON = 600


class SessionApplyError(Exception):
    """A refusal that names what is wrong; `details` go into the module's result."""

    def __init__(self, message, **details):
        super(SessionApplyError, self).__init__(message)
        self.details = details


# ---------------------------------------------------------------- reading the host

def build_document(entries, instance_name, base=None, kind="full"):
    """A snapshot document of `entries`; into a copy of `base` (e.g. the rules) when given."""
    snapshot = dict(taken_at=date_and_time(), source_host=socket.gethostname(), kind=kind)
    if base is None:
        document = new_document(instance_name, **snapshot)
    else:
        document = copy.deepcopy(base)
        meta = instance(document).setdefault(SNAPSHOT, {})
        meta.update(new_document(instance_name, **snapshot)["ietf-nat:nat"]["instances"]["instance"][0][SNAPSHOT])
    set_mapping_entries(document, entries_to_mappings(entries))
    return document


def delta_document(entries, previous, instance_name, base=None, elapsed=0):
    """What changed since `previous` (a full snapshot's sessions, taken `elapsed` seconds before
    `entries` were read): new or re-bound sessions, refreshed ones at risk (see refreshed_at_risk),
    and the ended or re-bound ones flagged removed. Any other session whose binding is the same is
    left out: its timeout and TCP state move on by themselves on the target.
    Returns (document, added, removed, refreshed)."""
    before = dict((session_key(e), e) for e in previous)
    now = dict((session_key(e), e) for e in entries)
    added = [e for key, e in now.items() if key not in before or before[key].reply != e.reply]
    refreshed = [e for key, e in now.items()
                 if key in before and before[key].reply == e.reply and refreshed_at_risk(before[key], e, elapsed)]
    removed = [e for key, e in before.items() if key not in now or now[key].reply != e.reply]
    document = build_document(added + refreshed, instance_name, base, kind="delta")
    first = len(added) + len(refreshed) + 1
    mappings = instance(document)["mapping-table"]["mapping-entry"]
    mappings.extend(removed_mapping(e, i) for i, e in enumerate(removed, first))
    set_mapping_entries(document, mappings)
    return document, len(added), len(removed), len(refreshed)


def refreshed_at_risk(before, now, elapsed):
    """Whether a session with an unchanged binding must travel in a delta anyway.

    The target's copy was made from `before` and has counted down since: `elapsed` seconds less.
    The source's traffic kept the session alive meanwhile (its lifetime now is longer than that by
    more than the slack), and that copy runs out within the horizon: without the delta the target
    would lose a live flow if the migration outlasts it.
    """
    left_on_target = before.timeout - elapsed
    return now.timeout - left_on_target > REFRESH_SLACK and left_on_target < REFRESH_HORIZON


def gather_sessions(selectors, instance_name, dest=None, check_mode=False, base=None, since=None):
    with Conntrack() as conntrack:
        entries = _selected(conntrack.dump(translated_only=True), selectors)
    read_at = datetime.datetime.now(datetime.timezone.utc)
    result = dict(changed=False, sessions=len(entries))
    if since is None:
        document = build_document(entries, instance_name, base)
    else:
        previous = _read(since)
        if instance(previous).get(SNAPSHOT, {}).get("kind") == "delta":
            raise SessionApplyError("%s is a delta snapshot; give the full snapshot a delta is taken against" % since)
        document, added, removed, refreshed = delta_document(
            entries, _sessions(previous, since).present, instance_name, base, elapsed=_age(previous, read_at))
        result.update(delta_added=added, delta_removed=removed, delta_refreshed=refreshed)
    if dest is None:
        result["gathered"] = document
        return result
    if not check_mode:
        parent = os.path.dirname(dest)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700)
        write_document(document, dest)
    result.update(changed=not check_mode, dest=dest)
    return result


def parse_sessions(xml_text, instance_name):
    skipped = []
    try:
        entries = parse_conntrack_xml(xml_text, skipped=skipped)
    except ConntrackXmlError as error:
        raise SessionApplyError("cannot parse the conntrack XML: %s" % error)
    entries = [e for e in entries if is_translated(e)]
    return dict(changed=False, sessions=len(entries), parsed=build_document(entries, instance_name),
                skipped=[str(s) for s in skipped])


def render_sessions(documents):
    wanted = _wanted(documents)
    commands = ([render_command(e, "delete") for e in wanted.removed]
                + [render_command(e) for e in wanted.present])
    return dict(changed=False, sessions=len(wanted.present), rendered=commands)


# ---------------------------------------------------------------- applying

class _Wanted(object):
    """The sessions a chain of snapshots (a full one, then deltas) asks for, at this moment."""

    def __init__(self):
        self.by_key = {}
        self.removed = []
        self.expired = set()

    @property
    def present(self):
        return list(self.by_key.values())


def _wanted(documents, now=None):
    """Fold the documents in order; lifetimes are counted down by the time since each was taken."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    wanted = _Wanted()
    for position, (document, label) in enumerate(documents):
        sessions = _sessions(document, label)
        elapsed = _age(document, now)
        for entry in sessions.removed:
            key = session_key(entry)
            current = wanted.by_key.get(key)
            if current is not None and current.reply == entry.reply:
                del wanted.by_key[key]
            wanted.removed.append(entry)
        for entry in sessions.present:
            key = session_key(entry)
            if entry.timeout - elapsed < EXPIRY_MARGIN:
                wanted.expired.add(key)
                wanted.by_key.pop(key, None)
                continue
            wanted.expired.discard(key)
            wanted.by_key[key] = entry._replace(timeout=entry.timeout - elapsed)
    return wanted


def _age(document, now):
    """Seconds since the document's snapshot was taken (0 when it does not say)."""
    taken_at = instance(document).get(SNAPSHOT, {}).get("taken-at")
    if not taken_at:
        return 0
    # A document read on the host has not been through the YANG validator: a time that is not
    # date-and-time text must not end the module with a traceback.
    try:
        moment = datetime.datetime.fromisoformat(taken_at.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return 0
    if moment.tzinfo is None:
        return 0
    return max(0, int((now - moment).total_seconds()))


def check_room(to_create, to_delete, count, maximum):
    """Refuse before touching anything when the table cannot hold the new sessions."""
    needed = to_create - to_delete
    free = maximum - count
    if needed > free:
        raise SessionApplyError(
            "the conntrack table is too small: %d sessions to add, %d free of nf_conntrack_max %d "
            "(%d in use); raise net.netfilter.nf_conntrack_max on the host" % (needed, free, maximum, count),
            needed=needed, free=free,
        )


def apply_sessions(documents, state, selectors, best_effort=False, liberal=True, check_mode=False):
    """Bring the host's selected sessions to what `documents` (a list of (document, label)) ask."""
    wanted = _wanted(documents) if documents else None
    desired = wanted.present if wanted is not None else None
    with Conntrack() as conntrack:
        existing = conntrack.dump(translated_only=False)
        selected = _selected([e for e in existing if is_translated(e)], selectors)
        todo = plan(existing, selected, desired, state,
                    removed=wanted.removed if wanted else (), ignored=wanted.expired if wanted else ())
        conflicts = ["%s: %s (held by %s)" % (describe(c.wanted), c.reason, describe(c.existing))
                     for c in todo.conflicts]
        if conflicts and not best_effort:
            raise SessionApplyError(
                "%d session(s) of the document conflict with the host, nothing was applied: %s"
                % (len(conflicts), _listing(conflicts)),
                conflicts=conflicts,
            )
        check_room(len(todo.create), len(todo.delete), conntrack_count(), conntrack_max())
        commands = ([render_command(e, "update") for e in todo.refresh]
                    + [render_command(e, "delete") for e in todo.delete]
                    + [render_command(e, "create") for e in todo.create])
        result = dict(
            changed=bool(commands), sessions=len(desired) if desired is not None else len(selected),
            before=len(selected), created=len(todo.create), deleted=len(todo.delete),
            unchanged=len(todo.unchanged), refreshed=len(todo.refresh),
            expired=len(wanted.expired) if wanted else 0,
            all_commands=commands, conflicts=conflicts, failed_sessions=[],
        )
        if not check_mode and commands:
            failed = _carry_out(conntrack, todo, liberal, best_effort)
            result["failed_sessions"] = failed
            for key, action in (("created", "create "), ("deleted", "delete "), ("refreshed", "refresh ")):
                result[key] -= len([f for f in failed if f.startswith(action)])
    result["after"] = result["before"] - result["deleted"] + result["created"]
    return result


def _carry_out(conntrack, todo, liberal, best_effort):
    """Refresh, delete, then create; on a refusal (without best effort) stop, and put back what
    deleting and creating changed. Refreshes come first and are not undone: they only give sessions
    the host already holds the lifetime they have on the source."""
    refresh_failures = _refresh(conntrack, todo.refresh, liberal)
    if refresh_failures and not best_effort:
        lines = ["%s: %s" % (describe(e), strerror(code)) for e, code in refresh_failures]
        raise SessionApplyError(
            "the kernel refused to refresh %d session(s); nothing else was applied: %s"
            % (len(lines), _listing(lines)),
            failed_sessions=lines,
        )
    refreshed = ["refresh %s: %s" % (describe(e), strerror(code)) for e, code in refresh_failures]
    deletion_failures = [(e, code) for e, code in conntrack.delete(todo.delete) if code != errno.ENOENT]
    if deletion_failures and not best_effort:
        _restore(conntrack, todo.delete, deletion_failures, [])
        raise _kernel_refusal("delete", deletion_failures)
    creation_failures = conntrack.create(todo.create, liberal=liberal)
    if creation_failures and not best_effort:
        _restore(conntrack, todo.delete, deletion_failures, todo.create, creation_failures)
        raise _kernel_refusal("create", creation_failures)
    return (refreshed
            + ["delete %s: %s" % (describe(e), strerror(code)) for e, code in deletion_failures]
            + ["create %s: %s" % (describe(e), strerror(code)) for e, code in creation_failures])


def _refresh(conntrack, entries, liberal):
    """Extend the lifetime of held sessions; one that ran out between the dump and the update
    (ENOENT) is created again with its binding, as it still lives on the source."""
    failures = conntrack.update(entries, liberal=liberal)
    gone = [e for e, code in failures if code == errno.ENOENT]
    refused = [(e, code) for e, code in failures if code != errno.ENOENT]
    return refused + (conntrack.create(gone, liberal=liberal) if gone else [])


def _restore(conntrack, deleted, deletion_failures, created, creation_failures=()):
    not_created = set(failure[0] for failure in creation_failures)
    conntrack.delete([e for e in created if e not in not_created])
    not_deleted = set(failure[0] for failure in deletion_failures)
    conntrack.create([e for e in deleted if e not in not_deleted], liberal=True)


def _kernel_refusal(action, failures):
    lines = ["%s: %s" % (describe(e), strerror(code)) for e, code in failures]
    return SessionApplyError(
        "the kernel refused to %s %d session(s); what was applied has been undone: %s"
        % (action, len(failures), _listing(lines)),
        failed_sessions=lines,
    )


# ---------------------------------------------------------------- helpers

def _read(path):
    try:
        return read_document(path)
    except (OSError, ValueError) as error:
        raise SessionApplyError("cannot read state document %s: %s" % (path, error))


def _sessions(document, label):
    try:
        return document_sessions(document)
    except DocumentError as error:
        raise SessionApplyError("%s is not a valid state document: %s" % (label, error),
                                errors=["%s: %s" % e for e in error.errors])
    except ModelError as error:
        raise SessionApplyError("%s is not a valid state document: %s" % (label, error))


def _selected(entries, selectors):
    try:
        return select(entries, selectors)
    except ModelError as error:
        raise SessionApplyError("selectors: %s" % error)


def _listing(lines):
    shown = "; ".join(lines[:LISTED])
    if len(lines) > LISTED:
        shown += "; and %d more" % (len(lines) - LISTED)
    return shown
