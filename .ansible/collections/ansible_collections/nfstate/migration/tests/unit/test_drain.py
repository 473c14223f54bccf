"""The wait for a released source to go quiet (module_utils/drain.py), on a clock of its own."""

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.drain import (
    parse_snmp6_forwarded,
    parse_snmp_forwarded,
    wait_quiet,
)

SNMP = """Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos
Ip: 1 64 900 0 0 417 0
Icmp: InMsgs InErrors
Icmp: 3 0
"""
SNMP6 = "Ip6InReceives                   \t12\nIp6OutForwDatagrams             \t58\nIp6InDelivers 3\n"


def test_parse_counters():
    assert parse_snmp_forwarded(SNMP) == 417
    assert parse_snmp6_forwarded(SNMP6) == 58
    with pytest.raises(ValueError):
        parse_snmp_forwarded("Icmp: InMsgs\nIcmp: 3\n")
    with pytest.raises(ValueError):
        parse_snmp6_forwarded("Ip6InReceives 12\n")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def counter(clock, moving_until, step=5):
    """A forwarding counter that moves every poll until `moving_until` seconds, then stops."""
    state = {"value": 100}

    def read():
        if clock.now < moving_until:
            state["value"] += step
        return state["value"]
    return read


def test_quiet_once_the_counter_stops_for_the_interval():
    clock = Clock()
    result = wait_quiet(counter(clock, 3.0), quiet=1.0, grace=30, interval=0.1, clock=clock, sleep=clock.sleep)
    assert result["quiet"] is True
    assert 3.9 <= result["waited"] <= 4.1
    assert 2.9 <= result["last_packet"] <= 3.0
    assert result["forwarded"] > 0


def test_a_counter_that_never_stops_ends_at_the_grace_period():
    clock = Clock()
    result = wait_quiet(counter(clock, 1e9), quiet=1.0, grace=5, interval=0.1, clock=clock, sleep=clock.sleep)
    assert result["quiet"] is False
    assert 5.0 <= result["waited"] <= 5.2


def test_nothing_forwarded_waits_the_quiet_interval_only():
    clock = Clock()
    result = wait_quiet(lambda: 7, quiet=2.0, grace=30, interval=0.1, clock=clock, sleep=clock.sleep)
    assert result == {"quiet": True, "waited": pytest.approx(2.0, abs=0.11), "forwarded": 0, "last_packet": None}


def test_no_grace_does_not_wait():
    clock = Clock()
    result = wait_quiet(counter(clock, 1e9), quiet=2.0, grace=0, interval=0.1, clock=clock, sleep=clock.sleep)
    assert result["quiet"] is False and result["waited"] == 0
