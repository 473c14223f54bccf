# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A dump of a busy table is not one moment (bench/bench_load.py, a port pool in use to the last
port): an ended session can be listed beside the newer one that took its translated tuple. The
pre-copy's gather and the catch-up's comparison keep only what the kernel still holds."""

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import without_ended_twins
from ansible_collections.nfstate.migration.tests.unit.builders import many_tcp_sessions


class TableNow(object):
    """What the kernel holds now, looked up by original tuple."""

    def __init__(self, entries):
        self.now = dict((e.orig, e) for e in entries)
        self.looked = []

    def get(self, entries):
        self.looked.extend(entries)
        return [self.now.get(e.orig) for e in entries]


def test_a_dump_that_lists_an_ended_session_beside_the_one_that_took_its_port_keeps_the_newer():
    sessions = many_tcp_sessions(4)
    ended = sessions[1]
    newer = ended._replace(orig=ended.orig._replace(sport=ended.orig.sport + 30000))  # its translated tuple
    table = TableNow(sessions[:1] + sessions[2:] + [newer])
    kept = without_ended_twins(table, sessions + [newer])
    assert kept == sessions[:1] + sessions[2:] + [newer]
    assert sorted(e.orig.sport for e in table.looked) == sorted([ended.orig.sport, newer.orig.sport])
    assert without_ended_twins(table, sessions) == sessions  # no twins: no lookup
