"""The planner: which sessions to create and delete so a host holds a document's sessions."""

import socket

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    ConntrackEntry,
    FlowTuple,
    inverse,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import select, session_key
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import REFRESH_SLACK
from ansible_collections.nfstate.migration.plugins.module_utils.session_sync import plan, render_command

V4, V6 = socket.AF_INET, socket.AF_INET6
SEEN = IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED
NAT = "203.0.113.1"
SERVER = "203.0.113.20"


def snat(src, sport, nat_port, nat=NAT, dst=SERVER, dport=5001, zone=0, timeout=300, tcp_state=3, mark=0):
    """A TCP session as a source NAT dumps it: the reply tuple is the translated one."""
    return ConntrackEntry(FlowTuple(V4, 6, src, dst, sport, dport), FlowTuple(V4, 6, dst, nat, dport, nat_port),
                          SEEN | IPS_SRC_NAT, timeout, mark=mark, zone=zone, tcp_state=tcp_state)


def own(src, sport, dst, dport, zone=0):
    """One of the host's own connections: never translated, its reply is the plain inverse."""
    orig = FlowTuple(V4, 6, src, dst, sport, dport)
    return ConntrackEntry(orig, inverse(orig), SEEN, 300, zone=zone, tcp_state=3)


def translated(entries):
    return [e for e in entries if e.status & (IPS_SRC_NAT | IPS_DST_NAT)]


def keys(entries):
    return sorted(session_key(e) for e in entries)


A = snat("192.0.2.10", 40000, 20001)
B = snat("192.0.2.11", 40001, 20002)
C = snat("192.0.2.12", 40002, 20003)
HOST_SSH = own("198.18.0.2", 22, "198.18.0.1", 51000)


# ---------------------------------------------------------------- merged

def test_merged_creates_what_is_missing_and_leaves_the_rest():
    existing = [A, HOST_SSH]
    result = plan(existing, translated(existing), [A, B], "merged")
    assert result.create == [B]
    assert result.unchanged == [A]
    assert result.delete == [] and result.conflicts == []


def test_merged_sees_a_moved_on_timeout_and_tcp_state_as_the_same_session():
    # Timeouts count down and TCP state moves on by themselves: a re-run must not report a change.
    later = A._replace(timeout=12, tcp_state=5, tcp_flags_orig=0x08)
    result = plan([later], [later], [A], "merged")
    assert result.unchanged == [A] and result.create == [] and result.delete == []


def test_merged_never_deletes_a_session_outside_the_document():
    result = plan([A, B, HOST_SSH], [A, B], [C], "merged")
    assert result.delete == [] and result.create == [C]


def test_merged_refuses_a_session_held_with_another_binding():
    rebound = A._replace(reply=A.reply._replace(dport=20099))
    result = plan([A], [A], [rebound, B], "merged")
    assert result.create == [B]
    assert result.delete == []
    [conflict] = result.conflicts
    assert conflict.wanted == rebound and conflict.existing == A
    assert conflict.reason == "exists with a different binding"


def test_merged_refuses_a_session_whose_tuple_is_a_host_connection():
    # The host itself talks from 192.0.2.10:40000 to the server, untranslated: same identity.
    mine = own("192.0.2.10", 40000, SERVER, 5001)
    result = plan([mine], [], [A], "merged")
    assert result.create == []
    assert [(c.wanted, c.existing, c.reason) for c in result.conflicts] == [
        (A, mine, "exists with a different binding")]


def test_merged_refuses_a_translated_port_held_by_another_session():
    thief = snat("192.0.2.99", 45000, 20001)  # another client, the same address:port on the NAT
    result = plan([A], [A], [thief], "merged")
    assert result.create == []
    [conflict] = result.conflicts
    assert conflict.existing == A
    assert conflict.reason == "its translated address and port are taken"


def test_merged_refuses_a_translated_port_held_by_a_host_connection_outside_the_selection():
    # The host's own connection from 203.0.113.1:20001 to the server owns that reply tuple.
    mine = own(NAT, 20001, SERVER, 5001)
    result = plan([mine], select(translated([mine]), {}), [A], "merged")
    assert [(c.wanted, c.existing) for c in result.conflicts] == [(A, mine)]
    assert result.create == []


def test_merged_refuses_a_session_whose_original_tuple_is_another_sessions_translated_one():
    # A port-forwarded session that would arrive as A's translated reply: the kernel keys both.
    reply_of_a = A.reply
    forwarded = ConntrackEntry(reply_of_a, FlowTuple(socket.AF_INET, 6, "192.0.2.61", SERVER, 80, 5001),
                               SEEN | IPS_DST_NAT, 600, tcp_state=3)
    result = plan([A], [A], [forwarded], "merged")
    assert result.create == []
    [conflict] = result.conflicts
    assert (conflict.existing, conflict.reason) == (A, "its original tuple is another session's translated one")


def test_two_document_sessions_may_not_take_each_others_tuples():
    forwarded = ConntrackEntry(A.reply, FlowTuple(socket.AF_INET, 6, "192.0.2.61", SERVER, 80, 5001),
                               SEEN | IPS_DST_NAT, 600, tcp_state=3)
    result = plan([], [], [A, forwarded], "merged")
    assert result.create == [A]
    assert [(c.wanted, c.existing) for c in result.conflicts] == [(forwarded, A)]


def test_two_document_sessions_may_not_share_a_translated_port():
    twin = snat("192.0.2.50", 41234, 20001)
    result = plan([], [], [A, twin], "merged")
    assert result.create == [A]
    assert [(c.wanted, c.existing) for c in result.conflicts] == [(twin, A)]


def test_a_translated_port_is_taken_per_zone():
    other_zone = snat("192.0.2.99", 45000, 20001, zone=7)
    result = plan([A], [A], [other_zone], "merged")
    assert result.create == [other_zone] and result.conflicts == []


def test_an_ipv6_session_does_not_collide_with_ipv4():
    six = ConntrackEntry(FlowTuple(V6, 6, "2001:db8:1::2", "2001:db8:2::20", 40000, 5001),
                         FlowTuple(V6, 6, "2001:db8:2::20", "2001:db8:2::1", 5001, 20001), SEEN | IPS_SRC_NAT, 300,
                         tcp_state=3)
    result = plan([A], [A], [A, six], "merged")
    assert result.create == [six] and result.unchanged == [A]


# ---------------------------------------------------------------- replaced

def test_replaced_deletes_selected_sessions_not_in_the_document_only():
    outside = snat("192.0.2.77", 40077, 30077, nat="198.51.100.1")  # another NAT's address
    existing = [A, B, outside, HOST_SSH]
    selected = select(translated(existing), {"addresses": [NAT + "/32"]})
    result = plan(existing, selected, [A, C], "overridden")
    assert result.delete == [B]
    assert result.create == [C]
    assert result.unchanged == [A]
    assert result.conflicts == []


def test_replaced_never_touches_the_hosts_own_connections():
    existing = [A, HOST_SSH, own(NAT, 20005, SERVER, 5001)]
    result = plan(existing, translated(existing), [], "overridden")
    assert result.delete == [A]


def test_replaced_recreates_a_selected_session_with_its_new_binding():
    rebound = A._replace(reply=A.reply._replace(dport=20099))
    result = plan([A], [A], [rebound], "overridden")
    assert result.delete == [A] and result.create == [rebound] and result.conflicts == []


def test_replaced_refuses_to_rebind_a_session_outside_the_selection():
    foreign = snat("192.0.2.10", 40000, 30001, nat="198.51.100.1")  # same identity, not ours
    selected = select([foreign], {"addresses": [NAT + "/32"]})
    assert selected == []
    result = plan([foreign], selected, [A], "overridden")
    assert result.delete == [] and result.create == []
    assert [(c.wanted, c.existing, c.reason) for c in result.conflicts] == [
        (A, foreign, "exists with a different binding")]


def test_replaced_frees_the_ports_of_what_it_deletes():
    # B is stale and holds 20002; the document's new session takes that port.
    taker = snat("192.0.2.60", 46000, 20002)
    result = plan([B], [B], [taker], "overridden")
    assert result.delete == [B] and result.create == [taker] and result.conflicts == []


def test_replaced_frees_the_port_of_a_rebound_session():
    # A moves to a new port and C takes A's old one, in the same run.
    moved = A._replace(reply=A.reply._replace(dport=20050))
    taker = snat("192.0.2.61", 46001, 20001)
    result = plan([A], [A], [moved, taker], "overridden")
    assert result.delete == [A]
    assert result.create == [moved, taker]
    assert result.conflicts == []


def test_merged_does_not_free_ports():
    taker = snat("192.0.2.60", 46000, 20002)
    result = plan([B], [B], [taker], "merged")
    assert result.create == [] and [c.existing for c in result.conflicts] == [B]


def test_replaced_leaves_sessions_whose_lifetime_ran_out_in_transit():
    result = plan([A, B], [A, B], [A], "overridden", ignored={session_key(B)})
    assert result.delete == [] and result.unchanged == [A]


# ---------------------------------------------------------------- refreshing lifetimes

def udp(src, sport, nat_port, timeout):
    return ConntrackEntry(FlowTuple(V4, 17, src, SERVER, sport, 53), FlowTuple(V4, 17, SERVER, NAT, 53, nat_port),
                          SEEN | IPS_SRC_NAT, timeout)


FLOW = udp("192.0.2.20", 5353, 20020, timeout=120)


@pytest.mark.parametrize("state", ["merged", "replaced", "overridden"])
def test_a_held_session_whose_lifetime_falls_short_is_refreshed(state):
    # The pre-copied copy has 8 s left; the source kept the flow alive: 120 s.
    held = FLOW._replace(timeout=8)
    result = plan([held, A], [held, A], [FLOW, A], state)
    assert result.refresh == [FLOW]  # the wanted entry: it carries the lifetime to give
    assert result.unchanged == [FLOW, A]  # same binding: still counted as unchanged
    assert result.create == [] and result.delete == [] and result.conflicts == []


@pytest.mark.parametrize("held_timeout, refreshed", [
    (120 - REFRESH_SLACK + 1, False),  # read moments apart: not a change
    (120 - REFRESH_SLACK, False),
    (120 - REFRESH_SLACK - 1, True),
    (180, False),  # the host's is longer: never shortened
])
def test_a_refresh_needs_more_than_the_slack(held_timeout, refreshed):
    held = FLOW._replace(timeout=held_timeout)
    result = plan([held], [held], [FLOW], "merged")
    assert result.refresh == ([FLOW] if refreshed else [])
    assert result.unchanged == [FLOW]


def test_a_refresh_brings_a_tcp_handshake_to_its_established_state():
    held = A._replace(tcp_state=2, timeout=40)  # syn-recv on the target, established on the source
    assert plan([held], [held], [A], "merged").refresh == [A]


def test_a_tcp_session_the_host_saw_closing_is_not_reopened():
    # The host's own traffic closed it after the snapshot: that is newer than the document.
    for state in (4, 5, 6, 7, 8):  # fin-wait .. close
        held = A._replace(tcp_state=state, timeout=60)
        assert plan([held], [held], [A], "merged").refresh == []
    closing = A._replace(tcp_state=7, timeout=120)
    assert plan([closing._replace(timeout=10)], [closing._replace(timeout=10)], [closing], "merged").refresh == [closing]


def test_a_session_with_another_binding_is_never_refreshed():
    held = FLOW._replace(timeout=3, reply=FLOW.reply._replace(dport=20099))
    result = plan([held], [held], [FLOW], "overridden")
    assert result.refresh == [] and result.delete == [held] and result.create == [FLOW]


def test_deleted_refreshes_nothing():
    held = FLOW._replace(timeout=3)
    assert plan([held], [held], [FLOW], "deleted").refresh == []


def test_render_command_for_a_refresh_keeps_the_binding_out():
    entry = udp("192.0.2.20", 5353, 20020, timeout=117)._replace(zone=4, mark=9)
    assert render_command(entry, "update") == (
        "conntrack -U -f ipv4 -p 17 -s 192.0.2.20 -d 203.0.113.20 --sport 5353 --dport 53 -w 4 -t 117 -m 9")


# ---------------------------------------------------------------- deltas: removed sessions

def test_removed_sessions_are_deleted_where_held_with_that_binding():
    result = plan([A, B], [A, B], [C], "merged", removed=[A])
    assert result.delete == [A] and result.create == [C]


def test_a_removed_session_held_with_another_binding_stays():
    # The host's session is not the one that ended on the source.
    other = A._replace(reply=A.reply._replace(dport=20099))
    result = plan([A], [A], [], "merged", removed=[other])
    assert result.delete == []


def test_a_removed_session_that_is_absent_is_nothing_to_do():
    assert plan([], [], [], "merged", removed=[A]) == ([], [], [], [], [])


def test_a_delta_rebinds_a_session_under_merged():
    # The delta says: A ended with its old binding, and came back with a new one.
    rebound = A._replace(reply=A.reply._replace(dport=20099))
    result = plan([A], [A], [rebound], "merged", removed=[A])
    assert result.delete == [A] and result.create == [rebound] and result.conflicts == []


def test_a_removed_sessions_port_can_be_taken_by_a_new_session():
    taker = snat("192.0.2.62", 46002, 20001)
    result = plan([A], [A], [taker], "merged", removed=[A])
    assert result.delete == [A] and result.create == [taker] and result.conflicts == []


# ---------------------------------------------------------------- deleted

def test_deleted_without_a_document_deletes_the_whole_selection():
    existing = [A, B, HOST_SSH]
    result = plan(existing, [A, B], None, "deleted")
    assert result.delete == [A, B] and result.create == []


def test_deleted_with_a_document_deletes_the_sessions_it_names():
    held_a = A._replace(timeout=3, tcp_state=7)
    result = plan([held_a, B, HOST_SSH], [held_a, B], [A, C], "deleted")
    assert result.delete == [held_a]
    assert result.create == []


def test_deleted_never_deletes_a_host_connection_named_by_the_document():
    # Same identity as A, but the host's own untranslated connection.
    mine = own("192.0.2.10", 40000, SERVER, 5001)
    result = plan([mine], [], [A], "deleted")
    assert result.delete == []


def test_deleted_leaves_a_session_held_with_another_binding():
    other = A._replace(reply=A.reply._replace(dport=20099))
    result = plan([other], [other], [A], "deleted")
    assert result.delete == []


def test_deleted_with_a_document_stays_inside_the_selection():
    foreign = snat("192.0.2.10", 40000, 20001, nat=NAT, zone=3)
    existing = [A, foreign]
    selected = select(existing, {"zone": 3})
    result = plan(existing, selected, [A, foreign], "deleted")
    assert result.delete == [foreign]


# ---------------------------------------------------------------- rendering

def test_render_command_for_a_source_nat_session():
    entry = snat("192.0.2.10", 40000, 20001, zone=4, mark=9, timeout=431999)
    assert render_command(entry) == (
        "conntrack -I -f ipv4 -p 6 -s 192.0.2.10 -d 203.0.113.20 --sport 40000 --dport 5001 -w 4 "
        "--src-nat 203.0.113.1:20001 -t 431999 --state ESTABLISHED -m 9")
    assert render_command(entry, "delete") == (
        "conntrack -D -f ipv4 -p 6 -s 192.0.2.10 -d 203.0.113.20 --sport 40000 --dport 5001 -w 4")


def test_render_command_for_a_port_forward():
    entry = ConntrackEntry(FlowTuple(V4, 17, "198.51.100.2", "198.51.100.1", 5555, 8080),
                           FlowTuple(V4, 17, "192.0.2.2", "198.51.100.2", 53, 5555), SEEN | IPS_DST_NAT, 170)
    assert render_command(entry) == (
        "conntrack -I -f ipv4 -p 17 -s 198.51.100.2 -d 198.51.100.1 --sport 5555 --dport 8080 "
        "--dst-nat 192.0.2.2:53 -t 170")


def test_render_command_for_icmp_and_ipv6():
    ping = ConntrackEntry(FlowTuple(V4, 1, "192.0.2.8", SERVER, 777, 0, 8, 0),
                          FlowTuple(V4, 1, SERVER, NAT, 2049, 0, 0, 0), SEEN | IPS_SRC_NAT, 29)
    assert render_command(ping) == (
        "conntrack -I -f ipv4 -p 1 -s 192.0.2.8 -d 203.0.113.20 --icmp-type 8 --icmp-code 0 --icmp-id 777 "
        "--src-nat 203.0.113.1:2049 -t 29")
    six = ConntrackEntry(FlowTuple(V6, 6, "2001:db8:1::2", "2001:db8:2::20", 40000, 443),
                         FlowTuple(V6, 6, "2001:db8:2::20", "2001:db8:2::1", 443, 20001), SEEN | IPS_SRC_NAT, 60,
                         tcp_state=7)
    assert render_command(six) == (
        "conntrack -I -f ipv6 -p 6 -s 2001:db8:1::2 -d 2001:db8:2::20 --sport 40000 --dport 443 "
        "--src-nat [2001:db8:2::1]:20001 -t 60 --state TIME_WAIT")


@pytest.mark.parametrize("state", ["merged", "replaced", "overridden"])
def test_plan_outcome_is_a_partition_of_the_document(state):
    """Every document session ends up exactly once in create, unchanged or conflicts."""
    rebound = B._replace(reply=B.reply._replace(dport=20099))
    thief = snat("192.0.2.99", 45000, 20001)
    desired = [A, rebound, C, thief]
    aged = A._replace(timeout=10)  # held, its lifetime shorter than the document's: refreshed
    result = plan([aged, B], [aged, B], desired, state)
    placed = result.create + result.unchanged + [c.wanted for c in result.conflicts]
    assert keys(placed) == keys(desired)
    assert result.refresh == [A] and A in result.unchanged


def test_replaced_rebinds_the_documents_sessions_and_keeps_the_others():
    # Per session: the document's A (another binding) replaces the host's A; B stays, unlike overridden.
    rebound = snat("192.0.2.10", 40000, 20999)
    result = plan([A, B], [A, B], [rebound], "replaced")
    assert result.delete == [A] and result.create == [rebound] and result.conflicts == []
    merged = plan([A, B], [A, B], [rebound], "merged")
    assert merged.create == [] and len(merged.conflicts) == 1
