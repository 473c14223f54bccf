# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source agent's baseline: what the target holds after the pre-copy and each delta."""

from ansible_collections.nfstate.migration.plugins.module_utils.agent.baseline import Baseline
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import IPS_SRC_NAT
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import REFRESH_HORIZON
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import session_key

from ansible_collections.nfstate.migration.tests.unit.builders import SEEN, V4, many_tcp_sessions, udp


def stream(port, timeout):
    """A UDP session source-NATed to 198.51.100.1 with `timeout` seconds left."""
    return udp(V4, "192.0.2.7", "203.0.113.9", port, 53, "203.0.113.9", "198.51.100.1", 53, port,
               SEEN | IPS_SRC_NAT, timeout=timeout)


def test_only_copies_that_may_run_out_are_at_risk_whatever_the_table():
    long_lived = many_tcp_sessions(1000)  # 300 s each
    for entry in long_lived:
        assert entry.timeout < REFRESH_HORIZON
    lasting = [e._replace(timeout=REFRESH_HORIZON * 10) for e in long_lived]
    short = [stream(5000 + i, 30) for i in range(5)]
    baseline = Baseline(lasting + short, taken=1000.0)
    assert set(baseline.at_risk(1000.0)) == set(session_key(e) for e in short)
    # Time passes: the lasting copies on the target come within the horizon too.
    assert len(baseline.at_risk(1000.0 + REFRESH_HORIZON * 9 + 1)) == len(lasting) + len(short)


def test_a_delta_moves_the_baseline_and_its_clock():
    kept, ending, refreshed = stream(5001, 30), stream(5002, 30), stream(5003, 30)
    baseline = Baseline([kept, ending, refreshed], taken=100.0)
    assert baseline.elapsed(session_key(refreshed), 110.0) == 10
    newcomer = stream(5004, 30)
    baseline.advance([newcomer], [ending], [refreshed._replace(timeout=30)], now=120.0)
    assert session_key(ending) not in baseline.entries
    # The refreshed copy counts down from the delta on, not from the pre-copy.
    assert baseline.elapsed(session_key(refreshed), 125.0) == 5
    assert baseline.elapsed(session_key(kept), 125.0) == 25
    assert set(baseline.at_risk(125.0)) == set(session_key(e) for e in (kept, refreshed, newcomer))
    present, removed = baseline.crossed_sessions()
    assert sorted(session_key(e) for e in present) == sorted(session_key(e) for e in (newcomer, refreshed))
    assert removed == [ending]


def test_the_latest_word_on_a_session_is_what_crossed():
    first = stream(5010, 30)
    baseline = Baseline([], taken=0.0)
    baseline.advance([first], [], [], now=1.0)
    baseline.advance([], [first], [], now=2.0)  # it ended before the window
    present, removed = baseline.crossed_sessions()
    assert present == [] and removed == [first]
    rebound = first._replace(reply=first.reply._replace(dport=6010))
    baseline.advance([rebound], [], [], now=3.0)
    present, removed = baseline.crossed_sessions()
    assert present == [rebound] and removed == []


def test_a_full_comparison_finds_what_events_would_have_said():
    kept, ending, refreshed = stream(5021, 3600), stream(5022, 30), stream(5023, 30)
    baseline = Baseline([kept, ending, refreshed], taken=0.0)
    newcomer = stream(5024, 30)
    now = 20.0  # the target's copies have 10 s left; the source's traffic kept one at 30 s
    added, removed, again = baseline.compare([kept, refreshed._replace(timeout=30), newcomer], now)
    assert added == [newcomer] and removed == [ending] and again == [refreshed._replace(timeout=30)]
