# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""When a session's lifetime matters on its way across: the policy constants and their predicates.

Lifetimes are counted in whole seconds and read moments apart on two hosts, so every comparison
allows a slack; what counts is that a session alive on the source never runs out on the target
while it is still in use, and that a re-run sees no change.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import TCP_STATES

# Seconds a held session's lifetime may fall short of the wanted one before it is refreshed.
REFRESH_SLACK = 5
# A delta carries a session whose binding is unchanged when the source refreshed it and the target's
# copy has less than this left (seconds): a UDP or ICMP flow (30 to 180 s) kept alive by traffic.
# A TCP connection with days to live is never carried, so a delta grows with what changed, not
# with the table.
REFRESH_HORIZON = 600
# A session with less lifetime left than this when it would be applied is let go: it is ending on
# the source as well, and re-creating it would only race its expiry.
EXPIRY_MARGIN = 2

# TCP states of a connection being closed: the host's own traffic took it there, which is newer
# than any snapshot, so such a session is never taken back to another state.
_TCP_CLOSING = frozenset(TCP_STATES.index(s) for s in ("fin-wait", "close-wait", "last-ack", "time-wait", "close"))


def needs_refresh(current, wanted):
    """Whether the host's copy of a session (same binding) must get the wanted lifetime."""
    if wanted.timeout - current.timeout <= REFRESH_SLACK:
        return False
    return not (current.tcp_state in _TCP_CLOSING and current.tcp_state != wanted.tcp_state)


def refreshed_at_risk(before, now, elapsed):
    """Whether a session with an unchanged binding must travel in a delta anyway.

    The target's copy was made from `before` and has counted down since: `elapsed` seconds less.
    The source's traffic kept the session alive meanwhile (its lifetime now is longer than that by
    more than the slack), and that copy runs out within the horizon: without the delta the target
    would lose a live flow if the migration outlasts it.
    """
    left_on_target = before.timeout - elapsed
    return now.timeout - left_on_target > REFRESH_SLACK and left_on_target < REFRESH_HORIZON


def expired(timeout, elapsed):
    """Whether a session `elapsed` seconds after its snapshot has too little left to re-create."""
    return timeout - elapsed < EXPIRY_MARGIN
