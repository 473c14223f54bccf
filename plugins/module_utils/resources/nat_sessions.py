# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NAT sessions resource: what the nat_sessions module does, gather, parse, render and apply.

Applying is all or nothing unless the operator asks for best effort: conflicts and a lack of room
are found before the kernel is touched, and a kernel refusal part-way undoes what was done.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import os

from ansible_collections.nfstate.migration.plugins.module_utils import alg_state
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import (
    Conntrack,
    conntrack_count,
    conntrack_max,
    strerror,
    without_ended_twins,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    PROTOCOL_NAMES,
    describe,
    is_translated,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_xml import (
    ConntrackXmlError,
    parse_conntrack_xml,
)
from ansible_collections.nfstate.migration.plugins.module_utils.forwarded import addresses_for
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import expired
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    SNAPSHOT,
    DocumentError,
    build_document,
    delta_document,
    document_sessions,
    snapshot_age,
    instance,
    read_document,
    write_document,
)
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import ResourceError
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    ModelError,
    select,
    session_key,
    split_supported,
    wants_forwarded,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_sync import plan, render_command

# How many problems an error message lists before it says "and N more".
LISTED = 10
STATES = ("gathered", "parsed", "rendered", "merged", "replaced", "overridden", "deleted")
# The operations listed in `commands`: a table of 100k sessions would make a result of megabytes.
COMMANDS_SHOWN = 1000


class SessionApplyError(ResourceError):
    """A refusal that names what is wrong; its extra details go into the module's result."""

    @property
    def details(self):
        return self.extra


# ---------------------------------------------------------------- reading the host

def gather_sessions(selectors, instance_name, dest=None, check_mode=False, base=None, since=None, alg=True):
    with Conntrack() as conntrack:
        # With `forwarded` the firewall's untranslated sessions count too.
        entries = _selected(conntrack.dump(translated_only=not wants_forwarded(selectors)), selectors)
        entries = without_ended_twins(conntrack, entries)
    read_at = datetime.datetime.now(datetime.timezone.utc)
    # A session that cannot be re-created elsewhere is listed with its reason, never emitted.
    entries, unsupported = split_supported(entries)
    entries, expectations = alg_state.gathered(entries, alg, unsupported)
    result = dict(changed=False, sessions=len(entries), unsupported_sessions=unsupported)
    if since is None:
        document = build_document(entries, instance_name, base, expectations=expectations, not_carried=unsupported)
    else:
        previous = _read(since)
        if instance(previous).get(SNAPSHOT, {}).get("kind") == "delta":
            raise SessionApplyError("%s is a delta snapshot; give the full snapshot a delta is taken against" % since)
        document, added, removed, refreshed = delta_document(
            entries, _sessions(previous, since).present, instance_name, base, elapsed=snapshot_age(previous, read_at),
            expectations=expectations, not_carried=unsupported)
        result.update(delta_added=added, delta_removed=removed, delta_refreshed=refreshed)
    result["expectations"] = alg_state.carried(document)
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
        self.expectations = []  # the last snapshot's: each carries the whole expectation table

    @property
    def present(self):
        return list(self.by_key.values())


def _wanted(documents, now=None):
    """Fold the documents in order; lifetimes are counted down by the time since each was taken."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    wanted = _Wanted()
    for position, (document, label) in enumerate(documents):
        sessions = _sessions(document, label)
        elapsed = snapshot_age(document, now)
        wanted.expectations = alg_state.counted_down(sessions.expectations, elapsed)
        for entry in sessions.removed:
            key = session_key(entry)
            current = wanted.by_key.get(key)
            if current is not None and current.reply == entry.reply:
                del wanted.by_key[key]
            wanted.removed.append(entry)
        for entry in sessions.present:
            key = session_key(entry)
            if expired(entry.timeout, elapsed):
                wanted.expired.add(key)
                wanted.by_key.pop(key, None)
                continue
            wanted.expired.discard(key)
            wanted.by_key[key] = entry._replace(timeout=entry.timeout - elapsed)
    return wanted


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
        selected = _selected([e for e in existing if is_translated(e) or wants_forwarded(selectors)], selectors)
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
            before=summary(selected), created=len(todo.create), deleted=len(todo.delete),
            unchanged=len(todo.unchanged), refreshed=len(todo.refresh),
            expired=len(wanted.expired) if wanted else 0,
            all_commands=commands, conflicts=conflicts, failed_sessions=[],
        )
        failed_entries = set()
        if not check_mode and commands:
            failed, failed_entries = _carry_out(conntrack, todo, liberal, best_effort)
            result["failed_sessions"] = failed
            for key, action in (("created", "create "), ("deleted", "delete "), ("refreshed", "refresh ")):
                result[key] -= len([f for f in failed if f.startswith(action)])
    if wanted is not None and state != "deleted":
        # The kernel's order: helper rules (nat_rules, before this), masters with their helper (above),
        # then the expectations, which need their masters.
        expected = alg_state.apply_expectations(wanted.expectations, check_mode)
        result.update(expected)
        result["changed"] = result["changed"] or bool(expected["expectations_created"])
    gone = set(session_key(e) for e in todo.delete if e not in failed_entries)
    held = [e for e in selected if session_key(e) not in gone]
    result["after"] = summary(held + [e for e in todo.create if e not in failed_entries])
    return result


def _carry_out(conntrack, todo, liberal, best_effort):
    """Refresh, delete, then create; on a refusal (without best effort) stop, and put back what
    deleting and creating changed. Refreshes come first and are not undone: they only give sessions
    the host already holds the lifetime they have on the source. Returns (lines naming what the
    kernel refused, the refused entries)."""
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
    lines = (refreshed
             + ["delete %s: %s" % (describe(e), strerror(code)) for e, code in deletion_failures]
             + ["create %s: %s" % (describe(e), strerror(code)) for e, code in creation_failures])
    return lines, set(e for e, dummy in deletion_failures + creation_failures)


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
        return select(entries, selectors, addresses_for(selectors))
    except ModelError as error:
        raise SessionApplyError("selectors: %s" % error)


def _listing(lines):
    shown = "; ".join(lines[:LISTED])
    if len(lines) > LISTED:
        shown += "; and %d more" % (len(lines) - LISTED)
    return shown


def summary(entries):
    """A session table as structured data small enough for a result: counts by protocol."""
    by_protocol = {}
    for entry in entries:
        name = PROTOCOL_NAMES.get(entry.orig.proto, str(entry.orig.proto))
        by_protocol[name] = by_protocol.get(name, 0) + 1
    return {"sessions": len(entries), "by_protocol": by_protocol}


def documents_of(params, exists=os.path.exists):
    """The documents to apply, with a label each for messages: given inline, or read on the host."""
    if params.get("config") is not None:
        return [(params["config"], "config")]
    if not params.get("src"):
        return None
    documents = []
    for path in params["src"]:
        if not exists(path):
            raise SessionApplyError("state document %s does not exist on the host" % path)
        documents.append((_read(path), path))
    return documents


def run(params, check_mode=False, diff=False):
    """Carry out one nat_sessions task; the result, or a SessionApplyError."""
    state = params["state"]
    selectors = params.get("selectors") or {}
    if selectors.get("mark") is None:
        # mark_mask has a default, filled in even when no mark is given; alone it selects nothing.
        selectors = dict(selectors, mark_mask=None)
    if state == "parsed":
        return parse_sessions(params["running_config"], params["instance_name"])
    if state == "gathered":
        return gather_sessions(selectors, params["instance_name"], params.get("dest"), check_mode,
                               base=params.get("base"), since=params.get("since"), alg=params.get("alg", True))
    documents = documents_of(params)
    if state == "rendered":
        return render_sessions(documents)
    result = apply_sessions(documents, state, selectors, best_effort=params.get("best_effort", False),
                            liberal=params.get("liberal", True), check_mode=check_mode)
    commands = result.pop("all_commands")
    result["commands"] = commands[:COMMANDS_SHOWN]
    if diff:
        result["diff"] = {
            "before": "".join(c + "\n" for c in commands[:COMMANDS_SHOWN] if " -D " in c),
            "after": "".join(c + "\n" for c in commands[:COMMANDS_SHOWN] if " -I " in c or " -U " in c),
            "before_header": "sessions deleted", "after_header": "sessions created and refreshed",
        }
    return result
