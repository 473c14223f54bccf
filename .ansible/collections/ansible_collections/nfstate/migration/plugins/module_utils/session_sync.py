# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan how to bring a host's session table to a desired set of sessions (pure, no kernel).

A session is identified by its zone and original tuple; its *binding* is the translated reply
tuple. Two entries with the same identity and binding are the same session: timeouts and TCP
state move on by themselves and never make a re-run report a change. The one exception is a
session the host holds with a lifetime clearly shorter than wanted (its source kept it alive with
traffic meanwhile): it is refreshed, or it would run out on the host while still in use.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    TCP_STATES,
    endpoint,
    is_icmp,
    translation,
)
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import needs_refresh
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import session_key

# refresh: the sessions of `unchanged` whose lifetime the host must extend (Conntrack.update).
Plan = namedtuple("Plan", ["create", "delete", "unchanged", "conflicts", "refresh"])

# A desired session the host cannot take as it is: `existing` is the entry in the way.
Conflict = namedtuple("Conflict", ["wanted", "existing", "reason"])


def plan(existing, selected, desired, state, removed=(), ignored=frozenset()):
    """Operations that make the host hold `desired`.

    existing: every entry on the host (for collisions with sessions outside the selection).
    selected: the entries of `existing` that belong to the network function.
    state: merged (add what is missing; a session held with another binding is a conflict),
    replaced (the same, but such a session is re-created with the wanted binding), overridden
    (the selection becomes exactly `desired`), deleted (remove `desired`, or the whole selection
    when `desired` is None).
    removed: sessions a delta snapshot says ended; deleted where the host holds them with that binding.
    ignored: session keys left alone by `overridden` (sessions whose lifetime ran out in transit).
    """
    by_key = dict((session_key(e), e) for e in existing)
    if state == "deleted":
        if desired is None:
            return Plan([], list(selected), [], [], [])
        # Only the selection, and only the document's session itself: the host's own connection or
        # a newer session with the same tuple but another binding is not what the document names.
        held = dict((session_key(e), e) for e in selected)
        delete = [held[session_key(w)] for w in desired
                  if session_key(w) in held and held[session_key(w)].reply == w.reply]
        return Plan([], delete, [], [], [])

    delete = []
    for gone in removed:
        current = by_key.get(session_key(gone))
        if current is not None and current.reply == gone.reply:
            delete.append(by_key.pop(session_key(gone)))
    selected_keys = set(session_key(e) for e in selected)
    if state == "overridden":
        keep = set(session_key(w) for w in desired) | set(ignored)
        stale = [e for e in selected if session_key(e) not in keep and session_key(e) in by_key]
        for entry in stale:
            delete.append(by_key.pop(session_key(entry)))

    # The kernel finds a session by either of its tuples: a new one may take neither tuple of another
    # session, in either direction (its reply tuple names the translated address and port).
    tuples_in_use = {}
    for entry in by_key.values():
        _hold(tuples_in_use, entry)
    create, unchanged, conflicts, refresh = [], [], [], []
    for wanted in desired:
        key = session_key(wanted)
        current = by_key.get(key)
        if current is not None and current.reply == wanted.reply:
            unchanged.append(wanted)
            if needs_refresh(current, wanted):
                refresh.append(wanted)
            continue
        if current is not None:
            if state not in ("replaced", "overridden") or key not in selected_keys:
                conflicts.append(Conflict(wanted, current, "exists with a different binding"))
                continue
            delete.append(by_key.pop(key))
            _release(tuples_in_use, current)
        holder = tuples_in_use.get((wanted.zone, wanted.reply))
        if holder is not None:
            conflicts.append(Conflict(wanted, holder, "its translated address and port are taken"))
            continue
        holder = tuples_in_use.get((wanted.zone, wanted.orig))
        if holder is not None:
            conflicts.append(Conflict(wanted, holder, "its original tuple is another session's translated one"))
            continue
        _hold(tuples_in_use, wanted)
        create.append(wanted)
    return Plan(create, delete, unchanged, conflicts, refresh)


def _hold(tuples, entry):
    tuples[(entry.zone, entry.orig)] = entry
    tuples[(entry.zone, entry.reply)] = entry


def _release(tuples, entry):
    for tup in (entry.orig, entry.reply):
        if tuples.get((entry.zone, tup)) is entry:
            del tuples[(entry.zone, tup)]


_ACTION_OPTIONS = {"create": "-I", "update": "-U", "delete": "-D"}


def render_command(entry, action="create"):
    """The operation (create, update or delete) as the conntrack(8) command line an operator would
    type, for review."""
    orig = entry.orig
    family = "ipv6" if ":" in orig.src else "ipv4"
    argv = ["conntrack", _ACTION_OPTIONS[action], "-f", family, "-p", str(orig.proto),
            "-s", orig.src, "-d", orig.dst]
    if is_icmp(orig):
        argv += ["--icmp-type", str(orig.icmp_type), "--icmp-code", str(orig.icmp_code),
                 "--icmp-id", str(orig.sport)]
    else:
        argv += ["--sport", str(orig.sport), "--dport", str(orig.dport)]
    if entry.zone:
        argv += ["-w", str(entry.zone)]
    if action == "create":
        nat_src, nat_dst = translation(entry)
        if nat_src:
            argv += ["--src-nat", endpoint(*nat_src)]
        if nat_dst:
            argv += ["--dst-nat", endpoint(*nat_dst)]
        argv += ["-t", str(entry.timeout)]
        if entry.tcp_state is not None:
            argv += ["--state", TCP_STATES[entry.tcp_state].upper().replace("-", "_")]
        if entry.mark:
            argv += ["-m", str(entry.mark)]
    elif action == "update":
        # The binding stays as it is: only what an update changes.
        argv += ["-t", str(entry.timeout)]
        if entry.mark:
            argv += ["-m", str(entry.mark)]
    return " ".join(argv)
