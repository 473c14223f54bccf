# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A source's agent undoing on its own (the controller gone): it serves again, and it announces the
service addresses whenever the target may have claimed them, released here or not (the fault
matrix's redirect x controller-kill: killed between the target's claim and the source's release,
the neighbours stayed on the undoing target)."""

from unittest.mock import MagicMock

from ansible_collections.nfstate.migration.plugins.module_utils.agent.source import SourceSide

ADDRESSES = [{"address": "203.0.113.1/24", "role": "outside"}]
INTERFACES = {"outside": "out0"}


def bare_source(frozen=None, service=None, released=None):
    """A SourceSide without its event subscription (which needs the kernel): only what undo reads."""
    side = SourceSide.__new__(SourceSide)
    side.provider = MagicMock()
    side.frozen, side.service, side.released = frozen, service, released
    return side


def undo(side):
    calls = []
    side.undo(calls.append)
    return calls


def test_frozen_and_never_released_it_announces_the_service_addresses_and_unfreezes():
    side = bare_source(frozen=object(), service=(ADDRESSES, INTERFACES))
    calls = undo(side)
    assert [(c["addresses"], c["interfaces"], c["state"], c["announce"]) for c in calls] == [
        (ADDRESSES, INTERFACES, "present", "always")]
    side.provider.unfreeze.assert_called_once_with()


def test_released_it_takes_the_addresses_back():
    side = bare_source(frozen=object(), service=(ADDRESSES, INTERFACES), released=(ADDRESSES, INTERFACES))
    assert [c["state"] for c in undo(side)] == ["present"]


def test_before_the_freeze_nothing_is_announced():
    side = bare_source(service=(ADDRESSES, INTERFACES))
    assert undo(side) == []
    side.provider.unfreeze.assert_not_called()


class TableNow(object):
    """What the kernel holds now, looked up by original tuple."""

    def __init__(self, entries):
        self.now = dict((e.orig, e) for e in entries)
        self.looked = []

    def get(self, entries):
        self.looked.extend(entries)
        return [self.now.get(e.orig) for e in entries]


def test_a_dump_that_lists_an_ended_session_beside_the_one_that_took_its_port_keeps_the_newer():
    from ansible_collections.nfstate.migration.plugins.module_utils.agent.source import without_ended_twins
    from ansible_collections.nfstate.migration.tests.unit.builders import many_tcp_sessions
    sessions = many_tcp_sessions(4)
    ended = sessions[1]
    newer = ended._replace(orig=ended.orig._replace(sport=ended.orig.sport + 30000))  # its translated tuple
    table = TableNow(sessions[:1] + sessions[2:] + [newer])
    kept = without_ended_twins(table, sessions + [newer])
    assert kept == sessions[:1] + sessions[2:] + [newer]
    assert sorted(e.orig.sport for e in table.looked) == sorted([ended.orig.sport, newer.orig.sport])
    assert without_ended_twins(table, sessions) == sessions  # no twins: no lookup
