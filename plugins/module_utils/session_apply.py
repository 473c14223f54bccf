# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the nat_sessions module does, without Ansible: gather, parse, render and apply sessions.

Applying is all or nothing unless the operator asks for best effort: conflicts and a lack of room
are found before the kernel is touched, and a kernel refusal part-way undoes what was done.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import os
import socket

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import (
    Conntrack,
    conntrack_count,
    conntrack_max,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import is_translated
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_xml import parse_conntrack_xml
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    document_entries,
    new_document,
    set_mapping_entries,
    write_document,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    ModelError,
    entry_to_mapping,
    select,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_sync import (
    describe,
    plan,
    render_command,
)

# How many problems an error message lists before it says "and N more".
LISTED = 10


class SessionApplyError(Exception):
    """A refusal that names what is wrong; `details` go into the module's result."""

    def __init__(self, message, **details):
        super(SessionApplyError, self).__init__(message)
        self.details = details


def build_document(entries, instance_name, kind="full"):
    document = new_document(
        instance_name,
        taken_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        source_host=socket.gethostname(),
        kind=kind,
        sessions=len(entries),
    )
    set_mapping_entries(document, [entry_to_mapping(e, i) for i, e in enumerate(entries, 1)])
    return document


def gather_sessions(selectors, instance_name, dest=None, check_mode=False):
    with Conntrack() as conntrack:
        entries = select(conntrack.dump(translated_only=True), selectors)
    document = build_document(entries, instance_name)
    if dest is None:
        return dict(changed=False, sessions=len(entries), gathered=document)
    if not check_mode:
        parent = os.path.dirname(dest)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700)
        write_document(document, dest)
    return dict(changed=not check_mode, sessions=len(entries), dest=dest)


def parse_sessions(xml_text, instance_name):
    try:
        entries = parse_conntrack_xml(xml_text)
    except ValueError as error:
        raise SessionApplyError("cannot parse the conntrack XML: %s" % error)
    entries = [e for e in entries if is_translated(e)]
    return dict(changed=False, sessions=len(entries), parsed=build_document(entries, instance_name))


def desired_sessions(document):
    """The document's sessions, or an error listing every malformed entry with its path."""
    try:
        return document_entries(document)
    except ModelError as error:
        raise SessionApplyError("the state document is not valid: %s" % error)


def render_sessions(document):
    entries = desired_sessions(document)
    return dict(changed=False, sessions=len(entries), rendered=[render_command(e) for e in entries])


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


def apply_sessions(document, state, selectors, best_effort=False, liberal=True, check_mode=False):
    desired = desired_sessions(document) if document is not None else None
    with Conntrack() as conntrack:
        existing = conntrack.dump(translated_only=False)
        selected = select([e for e in existing if is_translated(e)], selectors)
        todo = plan(existing, selected, desired, state)
        conflicts = ["%s: %s (held by %s)" % (describe(c.wanted), c.reason, describe(c.existing))
                     for c in todo.conflicts]
        if conflicts and not best_effort:
            raise SessionApplyError(
                "%d session(s) of the document conflict with the host, nothing was applied: %s"
                % (len(conflicts), _listing(conflicts)),
                conflicts=conflicts,
            )
        check_room(len(todo.create), len(todo.delete), conntrack_count(), conntrack_max())
        commands = ([render_command(e, "delete") for e in todo.delete]
                    + [render_command(e, "create") for e in todo.create])
        result = dict(
            changed=bool(commands), sessions=len(desired) if desired is not None else len(selected),
            before=len(selected), after=len(selected) - len(todo.delete) + len(todo.create),
            created=len(todo.create), deleted=len(todo.delete), unchanged=len(todo.unchanged),
            all_commands=commands, conflicts=conflicts, failed_sessions=[],
        )
        if check_mode or not commands:
            return result
        failed = _carry_out(conntrack, todo, liberal, best_effort)
    result["failed_sessions"] = failed
    result["created"] -= len([f for f in failed if f.startswith("create ")])
    result["after"] = result["before"] - result["deleted"] + result["created"]
    return result


def _carry_out(conntrack, todo, liberal, best_effort):
    """Delete, then create; on a refusal (without best effort) put everything back as it was."""
    deletion_failures = [(e, code) for e, code in conntrack.delete(todo.delete) if code != errno.ENOENT]
    if deletion_failures and not best_effort:
        _restore(conntrack, todo.delete, deletion_failures, [])
        raise _kernel_refusal("delete", deletion_failures)
    creation_failures = conntrack.create(todo.create, liberal=liberal)
    if creation_failures and not best_effort:
        _restore(conntrack, todo.delete, deletion_failures, todo.create, creation_failures)
        raise _kernel_refusal("create", creation_failures)
    return (["delete %s: %s" % (describe(e), os.strerror(code)) for e, code in deletion_failures]
            + ["create %s: %s" % (describe(e), os.strerror(code)) for e, code in creation_failures])


def _restore(conntrack, deleted, deletion_failures, created, creation_failures=()):
    not_created = set(e for e, _ in creation_failures)
    conntrack.delete([e for e in created if e not in not_created])
    not_deleted = set(e for e, _ in deletion_failures)
    conntrack.create([e for e in deleted if e not in not_deleted], liberal=True)


def _kernel_refusal(action, failures):
    lines = ["%s: %s" % (describe(e), os.strerror(code)) for e, code in failures]
    return SessionApplyError(
        "the kernel refused to %s %d session(s); what was applied has been undone: %s"
        % (action, len(failures), _listing(lines)),
        failed_sessions=lines,
    )


def _listing(lines):
    shown = "; ".join(lines[:LISTED])
    if len(lines) > LISTED:
        shown += "; and %d more" % (len(lines) - LISTED)
    return shown
