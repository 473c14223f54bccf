"""The pure parts of applying sessions: deltas, folding snapshots, lifetimes, room, messages."""

import copy
import datetime
import errno
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
    describe,
)
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import EXPIRY_MARGIN, REFRESH_HORIZON, REFRESH_SLACK
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    SNAPSHOT,
    build_document,
    delta_document,
    document_sessions,
    instance,
    mapping_entries,
    new_document,
    snapshot_age,
)
from ansible_collections.nfstate.migration.plugins.module_utils.resources.nat_sessions import (
    SessionApplyError,
    _carry_out,
    _listing,
    _sessions,
    _wanted,
    check_room,
    render_sessions,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import REMOVED, session_key
from ansible_collections.nfstate.migration.plugins.module_utils.session_sync import plan
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import validate

V4, V6 = socket.AF_INET, socket.AF_INET6
SEEN = IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED
T0 = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def snat(src, sport, nat_port, timeout=300, zone=0):
    return ConntrackEntry(FlowTuple(V4, 6, src, "203.0.113.20", sport, 5001),
                          FlowTuple(V4, 6, "203.0.113.20", "203.0.113.1", 5001, nat_port),
                          SEEN | IPS_SRC_NAT, timeout, zone=zone, tcp_state=3, tcp_wscale_orig=7,
                          tcp_wscale_reply=7, tcp_flags_orig=0x03, tcp_flags_reply=0x03)


def rebind(entry, nat_port):
    return entry._replace(reply=entry.reply._replace(dport=nat_port))


A = snat("192.0.2.10", 40000, 20001)
B = snat("192.0.2.11", 40001, 20002)
C = snat("192.0.2.12", 40002, 20003)
D = snat("192.0.2.13", 40003, 20004)
PORT_FORWARD = ConntrackEntry(FlowTuple(V6, 17, "2001:db8:2::9", "2001:db8:2::1", 5555, 8053),
                              FlowTuple(V6, 17, "2001:db8:1::2", "2001:db8:2::9", 53, 5555),
                              SEEN | IPS_DST_NAT, 170, zone=4)
PING = ConntrackEntry(FlowTuple(V4, 1, "192.0.2.8", "203.0.113.20", 777, 0, 8, 0),
                      FlowTuple(V4, 1, "203.0.113.20", "203.0.113.1", 2049, 0, 0, 0), SEEN | IPS_SRC_NAT, 29)
# A live UDP flow: pre-copied with 30 s to live, kept alive by its traffic on the source since.
FLOW = ConntrackEntry(FlowTuple(V4, 17, "192.0.2.20", "203.0.113.20", 5353, 53),
                      FlowTuple(V4, 17, "203.0.113.20", "203.0.113.1", 53, 20020), SEEN | IPS_SRC_NAT, 30)


def taken(document, moment):
    instance(document)[SNAPSHOT]["taken-at"] = moment.isoformat().replace("+00:00", "Z")
    return document


def full(entries, moment=T0):
    return taken(build_document(entries, "edge"), moment)


def delta(entries, previous, moment, since=T0):
    """A delta taken at `moment` against the sessions of a full snapshot taken at `since`."""
    elapsed = (moment - since).total_seconds()
    document, _added, _removed, _refreshed = delta_document(entries, previous, "edge", elapsed=elapsed)
    return taken(document, moment)


def bindings(entries):
    """What must survive a transfer: identity and binding, not the time left."""
    return sorted((session_key(e), e.reply) for e in entries)


def later(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


# ---------------------------------------------------------------- documents

def test_build_document_is_a_valid_full_snapshot():
    document = build_document([A, PORT_FORWARD, PING], "edge")
    assert validate(document) == []
    meta = instance(document)[SNAPSHOT]
    assert meta["kind"] == "full" and meta["session-count"] == 3
    assert document_sessions(document).present == [A, PORT_FORWARD, PING]


def test_build_document_fills_a_copy_of_its_base():
    base = new_document("edge", implementation="nftables")
    instance(base)["policy"] = [{"id": 1}]
    kept = copy.deepcopy(base)
    document = build_document([A], "edge", base=base)
    assert base == kept  # the caller's rules document is not changed
    inst = instance(document)
    assert inst["policy"] == [{"id": 1}]
    assert inst[SNAPSHOT]["implementation"] == "nftables"
    assert inst[SNAPSHOT]["kind"] == "full" and inst[SNAPSHOT]["session-count"] == 1
    assert document_sessions(document).present == [A]


def test_delta_holds_new_and_rebound_sessions_and_flags_the_ended_ones():
    moved = rebind(B, 20099)
    now = [A._replace(timeout=100, tcp_state=5), moved, C]  # A only aged: not in the delta
    document, added, removed, refreshed = delta_document(now, [A, B, D], "edge")
    assert (added, removed, refreshed) == (2, 2, 0)
    sessions = document_sessions(document)
    assert sorted(sessions.present) == sorted([moved, C])
    assert sorted(sessions.removed) == sorted([B, D])
    assert instance(document)[SNAPSHOT]["kind"] == "delta"
    assert instance(document)[SNAPSHOT]["session-count"] == 4
    entries = mapping_entries(document)
    assert [e["index"] for e in entries] == [1, 2, 3, 4]
    assert [REMOVED in e for e in entries] == [False, False, True, True]
    assert all(e[REMOVED] == [None] for e in entries if REMOVED in e)
    assert validate(document) == []


def test_a_delta_of_nothing_changed_is_empty_and_valid():
    document, added, removed, refreshed = delta_document([A, B], [B, A], "edge")
    assert (added, removed, refreshed) == (0, 0, 0)
    assert mapping_entries(document) == []
    assert validate(document) == []


def test_a_zone_is_part_of_a_sessions_identity_in_a_delta():
    other_zone = A._replace(zone=3)
    _document, added, removed, _refreshed = delta_document([other_zone], [A], "edge")
    assert (added, removed) == (1, 1)


# ---------------------------------------------------------------- deltas: refreshed sessions at risk

def test_a_refreshed_session_at_risk_on_the_target_travels_in_the_delta():
    # Taken 20 s after the pre-copy: the target's copy has 10 s left, the source's has 120.
    refreshed = FLOW._replace(timeout=120)
    idle = A._replace(timeout=A.timeout - 20)  # no traffic: counted down like the target's copy
    document, added, removed, carried = delta_document([refreshed, idle], [FLOW, A], "edge", elapsed=20)
    assert (added, removed, carried) == (0, 0, 1)
    assert document_sessions(document).present == [refreshed]
    assert instance(document)[SNAPSHOT]["session-count"] == 1
    assert validate(document) == []


def test_a_refreshed_session_whose_copy_already_ran_out_travels_too():
    # The target let its copy go (or never made it): the delta brings it back.
    refreshed = FLOW._replace(timeout=118)
    _document, _added, _removed, carried = delta_document([refreshed], [FLOW], "edge", elapsed=45)
    assert carried == 1


def test_a_refreshed_session_with_a_long_life_left_on_the_target_stays_out():
    # An established TCP connection, refreshed by its traffic: days left on the target as well.
    established = A._replace(timeout=432000)
    now = established._replace(timeout=431999)
    _document, added, removed, carried = delta_document([now], [established], "edge", elapsed=25)
    assert (added, removed, carried) == (0, 0, 0)
    # the horizon is about what the copy has left, whatever the lifetime on the source
    just_under = FLOW._replace(timeout=REFRESH_HORIZON + 19)
    _document, _added, _removed, carried = delta_document(
        [just_under._replace(timeout=REFRESH_HORIZON + 30)], [just_under], "edge", elapsed=20)
    assert carried == 1
    at_horizon = FLOW._replace(timeout=REFRESH_HORIZON + 20)
    _document, _added, _removed, carried = delta_document(
        [at_horizon._replace(timeout=REFRESH_HORIZON + 60)], [at_horizon], "edge", elapsed=20)
    assert carried == 0


@pytest.mark.parametrize("now_timeout, carried", [
    (10, 0),                      # idle: counted down exactly like the target's copy
    (3, 0),                       # idle and about to end on both sides
    (10 + REFRESH_SLACK, 0),      # within the slack: timestamps are whole seconds
    (10 + REFRESH_SLACK + 1, 1),  # refreshed
])
def test_an_idle_session_stays_out_of_the_delta(now_timeout, carried):
    _document, added, _removed, refreshed = delta_document(
        [FLOW._replace(timeout=now_timeout)], [FLOW], "edge", elapsed=20)
    assert (added, refreshed) == (0, carried)


def test_a_rebound_session_is_counted_added_not_refreshed():
    moved = FLOW._replace(timeout=120, reply=FLOW.reply._replace(dport=20099))
    _document, added, removed, refreshed = delta_document([moved], [FLOW], "edge", elapsed=20)
    assert (added, removed, refreshed) == (1, 1, 0)


# ---------------------------------------------------------------- folding a chain of snapshots

def test_full_then_delta_gives_the_sources_current_set():
    before = [A, B, D]
    now = [A, rebind(B, 20099), C]
    chain = [(full(before), "full.json"), (delta(now, before, later(10)), "delta.json")]
    wanted = _wanted(chain, now=later(11))
    assert bindings(wanted.present) == bindings(now)
    assert bindings(wanted.removed) == bindings([B, D])
    assert wanted.expired == set()


def test_lifetimes_are_counted_down_by_each_snapshotssnapshot_age():
    chain = [(full([A._replace(timeout=300)]), "full"),
             (delta([A._replace(timeout=250), C._replace(timeout=200)], [A], later(50)), "delta")]
    wanted = _wanted(chain, now=later(60))
    lifetimes = dict((session_key(e), e.timeout) for e in wanted.present)
    assert lifetimes == {session_key(A): 240, session_key(C): 190}


def test_a_session_whose_lifetime_ran_out_in_transit_is_let_go():
    short = B._replace(timeout=EXPIRY_MARGIN + 10)
    wanted = _wanted([(full([A, short]), "full")], now=later(11))
    assert bindings(wanted.present) == bindings([A])
    assert wanted.expired == {session_key(B)}
    # replaced leaves the host's copy alone rather than deleting it as stale
    todo = plan([B], [B], wanted.present, "replaced", ignored=wanted.expired)
    assert todo.delete == [] and bindings(todo.create) == bindings([A])
    assert todo.create[0].timeout == A.timeout - 11


def test_a_session_with_just_enough_lifetime_is_kept():
    enough = B._replace(timeout=EXPIRY_MARGIN + 10)
    wanted = _wanted([(full([enough]), "full")], now=later(10 - 1))
    assert [e.timeout for e in wanted.present] == [EXPIRY_MARGIN + 1]
    assert wanted.expired == set()


def test_a_refreshed_session_of_a_delta_outlives_its_precopied_lifetime():
    # Pre-copy at T0 with 30 s; the flow goes on; the delta at T0+25 says 120 s; applied at T0+40.
    precopy = full([FLOW, A])
    refreshed = FLOW._replace(timeout=120)
    idle = A._replace(timeout=A.timeout - 25)
    chain = [(precopy, "full"), (delta([refreshed, idle], [FLOW, A], later(25)), "delta")]
    assert document_sessions(chain[1][0]).present == [refreshed]
    wanted = _wanted(chain, now=later(40))
    lifetimes = dict((session_key(e), e.timeout) for e in wanted.present)
    assert lifetimes == {session_key(FLOW): 120 - 15, session_key(A): A.timeout - 40}
    assert wanted.expired == set()
    # the pre-copy alone has it expired by then: without the delta the flow would be let go
    assert _wanted([(precopy, "full")], now=later(40)).expired == {session_key(FLOW)}
    # a target holding the pre-copied copy (a few seconds left) refreshes it in place
    held = FLOW._replace(timeout=2)
    todo = plan([held, A], [held, A], wanted.present, "merged")
    assert todo.refresh == [FLOW._replace(timeout=105)] and todo.create == [] and todo.delete == []


def test_a_later_snapshot_brings_an_expired_session_back():
    chain = [(full([A._replace(timeout=5)]), "full"),
             (delta([rebind(A, 20050)], [A], later(30)), "delta")]
    wanted = _wanted(chain, now=later(31))
    assert bindings(wanted.present) == bindings([rebind(A, 20050)])
    assert wanted.expired == set()


def test_a_removed_session_with_another_binding_does_not_remove_the_wanted_one():
    # A later delta flags an old binding of A as ended; the chain holds A with its current one.
    chain = [(full([A]), "full"), (delta([], [rebind(A, 20777)], later(1)), "delta")]
    wanted = _wanted(chain, now=later(2))
    assert bindings(wanted.present) == bindings([A])
    assert bindings(wanted.removed) == bindings([rebind(A, 20777)])


def test_a_snapshot_without_a_time_is_taken_as_fresh():
    document = new_document("edge")
    document = build_document([A], "edge", base=document)
    del instance(document)[SNAPSHOT]["taken-at"]
    assert snapshot_age(document, later(3600)) == 0
    assert [e.timeout for e in _wanted([(document, "doc")], now=later(3600)).present] == [A.timeout]


@pytest.mark.parametrize("stamp", ["2026-03-01T12:00:00+00:00", "2026-03-01T14:00:00+02:00", "2026-03-01T12:00:00Z"])
def test_age_reads_any_time_offset(stamp):
    document = build_document([], "edge")
    instance(document)[SNAPSHOT]["taken-at"] = stamp
    assert snapshot_age(document, later(42)) == 42


def test_age_of_a_snapshot_from_the_future_is_zero():
    assert snapshot_age(full([], moment=later(100)), T0) == 0


@pytest.mark.parametrize("stamp", ["yesterday", "2026-03-01T12:00:00", 1772366400, ""])
def test_a_bad_snapshot_time_does_not_crash_the_fold(stamp):
    # Documents read on the host have not been through the YANG validator.
    document = build_document([A], "edge")
    instance(document)[SNAPSHOT]["taken-at"] = stamp
    assert snapshot_age(document, later(10)) == 0
    assert bindings(_wanted([(document, "doc")], now=later(10)).present) == bindings([A])


def test_an_invalid_document_is_refused_with_every_path():
    document = build_document([A, B], "edge")
    entries = mapping_entries(document)
    entries[0]["external-src-port"]["start-port-number"] = 70000
    del entries[1]["lifetime"]
    with pytest.raises(SessionApplyError) as caught:
        _sessions(document, "/var/tmp/in.json")
    assert "/var/tmp/in.json is not a valid state document" in str(caught.value)
    errors = caught.value.details["errors"]
    assert len(errors) == 2
    assert errors[0].startswith('/ietf-nat:nat/instances/instance[id="1"]/mapping-table/mapping-entry[index="1"]'
                                '/external-src-port/start-port-number:')
    assert errors[1].startswith('/ietf-nat:nat/instances/instance[id="1"]/mapping-table/mapping-entry[index="2"]'
                                '/lifetime:')


def test_a_document_that_is_not_a_nat_document_is_refused():
    with pytest.raises(SessionApplyError) as caught:
        _sessions({"ietf-nat:nat": {}}, "config")
    assert "config is not a valid state document" in str(caught.value)
    assert caught.value.details["errors"] == [
        "/ietf-nat:nat/instances/instance: missing: not a NAT state document"]


# ---------------------------------------------------------------- room in the table

def test_check_room_accepts_an_exact_fit():
    check_room(to_create=10, to_delete=0, count=90, maximum=100)
    check_room(to_create=0, to_delete=0, count=100, maximum=100)


def test_check_room_counts_the_deletions_first():
    check_room(to_create=15, to_delete=5, count=90, maximum=100)


def test_check_room_refuses_one_too_many_with_the_figures():
    with pytest.raises(SessionApplyError) as caught:
        check_room(to_create=11, to_delete=0, count=90, maximum=100)
    message = str(caught.value)
    assert message.startswith("the conntrack table is too small: 11 sessions to add, 10 free of "
                              "nf_conntrack_max 100 (90 in use)")
    assert "raise net.netfilter.nf_conntrack_max" in message
    assert caught.value.details == {"needed": 11, "free": 10}


def test_check_room_on_a_table_already_over_its_limit():
    # The limit can be lowered under a full table: nothing fits, even deleting as much as adding.
    with pytest.raises(SessionApplyError):
        check_room(to_create=1, to_delete=0, count=120, maximum=100)
    with pytest.raises(SessionApplyError):
        check_room(to_create=5, to_delete=5, count=120, maximum=100)


# ---------------------------------------------------------------- carrying out a plan

class RecordingTable(object):
    """Stands in for Conntrack: records each call in order and refuses what it is told to."""

    def __init__(self, refuse=None):
        self.calls = []
        self.refuse = refuse or {}

    def _call(self, action, entries, **_options):
        entries = list(entries)
        self.calls.append((action, entries))
        return [(e, self.refuse[(action, e)]) for e in entries if (action, e) in self.refuse]

    def update(self, entries, liberal=True):
        return self._call("update", entries)

    def create(self, entries, liberal=True):
        return self._call("create", entries)

    def delete(self, entries):
        return self._call("delete", entries)


def test_refreshes_come_first_then_deletions_then_creations():
    table = RecordingTable()
    todo = plan([FLOW._replace(timeout=2), B], [FLOW._replace(timeout=2), B], [FLOW._replace(timeout=100), C], "overridden")
    assert _carry_out(table, todo, liberal=True, best_effort=False)[0] == []
    assert table.calls == [("update", [FLOW._replace(timeout=100)]), ("delete", [B]), ("create", [C])]


def test_a_session_gone_before_its_refresh_is_created_again():
    # Its lifetime ran out between the dump and the update: it still lives on the source.
    wanted = FLOW._replace(timeout=100)
    table = RecordingTable(refuse={("update", wanted): errno.ENOENT})
    todo = plan([FLOW._replace(timeout=1)], [FLOW._replace(timeout=1)], [wanted], "merged")
    assert _carry_out(table, todo, liberal=True, best_effort=False)[0] == []
    assert table.calls[:2] == [("update", [wanted]), ("create", [wanted])]


def test_a_refused_refresh_stops_before_anything_else_is_applied():
    wanted = FLOW._replace(timeout=100)
    table = RecordingTable(refuse={("update", wanted): errno.EINVAL})
    todo = plan([FLOW._replace(timeout=1)], [FLOW._replace(timeout=1)], [wanted, C], "merged")
    with pytest.raises(SessionApplyError) as caught:
        _carry_out(table, todo, liberal=True, best_effort=False)
    assert str(caught.value).startswith("the kernel refused to refresh 1 session(s); nothing else was applied: "
                                        + describe(wanted))
    assert table.calls == [("update", [wanted])]
    # best effort: reported, the rest applied
    table = RecordingTable(refuse={("update", wanted): errno.EINVAL})
    failed, dummy = _carry_out(table, todo, liberal=True, best_effort=True)
    assert failed == ["refresh %s: Invalid argument (the entry is not valid for the kernel)" % describe(wanted)]
    assert [action for action, _entries in table.calls] == ["update", "delete", "create"]


# ---------------------------------------------------------------- messages

def test_describe_names_a_session_with_its_binding():
    assert describe(A) == "tcp 192.0.2.10:40000 -> 203.0.113.20:5001 snat 203.0.113.1:20001"
    assert describe(PORT_FORWARD) == "udp [2001:db8:2::9]:5555 -> [2001:db8:2::1]:8053 dnat [2001:db8:1::2]:53 zone 4"
    assert describe(PING) == "icmp 192.0.2.8 -> 203.0.113.20 id 777 snat 203.0.113.1:2049"


def test_render_sessions_deletes_the_ended_then_creates_the_rest():
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=10)
    chain = [(full([A, B], start), "full"),
             (delta([A, C], [A, B], start + datetime.timedelta(seconds=5), since=start), "delta")]
    rendered = render_sessions(chain)
    assert rendered["changed"] is False and rendered["sessions"] == 2
    lines = rendered["rendered"]
    assert lines[0] == "conntrack -D -f ipv4 -p 6 -s 192.0.2.11 -d 203.0.113.20 --sport 40001 --dport 5001"
    assert [line.split()[1] for line in lines] == ["-D", "-I", "-I"]
    assert sorted(line.split(" -s ")[1].split()[0] for line in lines[1:]) == ["192.0.2.10", "192.0.2.12"]
    assert all("--src-nat 203.0.113.1:2000" in line and "--state ESTABLISHED" in line for line in lines[1:])


def test_listing_says_how_many_more():
    lines = ["line %d" % n for n in range(13)]
    assert _listing(lines[:2]) == "line 0; line 1"
    assert _listing(lines).endswith("; line 9; and 3 more")
