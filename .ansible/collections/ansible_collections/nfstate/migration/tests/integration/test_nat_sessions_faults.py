"""nat_sessions on bad input and kernel refusals: a clear error naming the session, the host unchanged.

The real module (and its action plugin) runs under ansible-playbook inside network namespaces made
here (conftest.py's playbook_hosts), against the kernel's own conntrack table. No packet is sent:
sessions are put in the tables with conntrack(8) or the collection's driver, on documentation
addresses only. Each check reads
the whole table before and after (identity, binding, status, state, mark and zone of every entry,
the host's own connections included) and asserts that it did not change.
"""

import json
import os
import shutil
import socket
import subprocess

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
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    SNAPSHOT,
    date_and_time,
    instance,
    mapping_entries,
    new_document,
    set_sessions,
    write_document,
)
from helpers import FILL

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "nft", "conntrack")), reason="needs ip, nft, conntrack"),
]

PYTHON = "/usr/bin/python3"  # the managed host's interpreter
V4 = socket.AF_INET
SEEN = IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED
NAT = "203.0.113.1"       # the NAT's outside address
SERVER = "203.0.113.20"   # a server outside
OURS = {"addresses": [NAT + "/32"]}


def snat(src, sport, nat_port, dst=SERVER, dport=5001, timeout=600):
    """A TCP session as the source NAT dumped it (the reply tuple is the translated one)."""
    return ConntrackEntry(FlowTuple(V4, 6, src, dst, sport, dport), FlowTuple(V4, 6, dst, NAT, dport, nat_port),
                          SEEN | IPS_SRC_NAT, timeout, tcp_state=3)


def rebind(entry, nat_port):
    return entry._replace(reply=entry.reply._replace(dport=nat_port))


def document(entries, **snapshot):
    meta = dict(taken_at=date_and_time(), source_host="nat-a", kind="full")
    meta.update(snapshot)
    return set_sessions(new_document("edge", **meta), entries)


def identity(entry):
    return json.dumps([list(entry.orig), entry.zone])


@pytest.fixture(scope="module")
def target(playbook_hosts):
    return playbook_hosts("target")


@pytest.fixture
def host(target):
    """The target with an empty table but for one of the host's own connections (its SSH session)."""
    target.run("conntrack", "-F")
    target.insert("198.18.0.1", 51000, "198.18.0.2", 22)
    return target


def file(host, name, content):
    path = os.path.join(host.workdir, name)
    write_document(content, path)
    return path


# ---------------------------------------------------------------- 1. the session exists, bound otherwise

def test_a_session_held_with_another_binding_is_refused_and_nothing_applied(host):
    held = snat("192.0.2.10", 40000, 20001)
    host.insert("192.0.2.10", 40000, SERVER, 5001, nat=(NAT, 20001))
    fresh = snat("192.0.2.11", 40001, 20002)
    config = document([rebind(held, 20099), fresh])
    before, refused, unchanged, best, after = host.play(
        ("table",), ("sessions", {"state": "merged", "config": config}), ("table",),
        ("sessions", {"state": "merged", "config": config, "best_effort": True}), ("table",))

    conflict = ("tcp 192.0.2.10:40000 -> 203.0.113.20:5001 snat 203.0.113.1:20099: exists with a different "
                "binding (held by tcp 192.0.2.10:40000 -> 203.0.113.20:5001 snat 203.0.113.1:20001)")
    assert refused["failed"] is True
    assert refused["msg"] == ("1 session(s) of the document conflict with the host, nothing was applied: "
                              + conflict)
    assert refused["conflicts"] == [conflict]
    assert unchanged == before

    # best effort: the rest is applied, the conflict listed, the held session keeps its binding
    assert best["failed"] is False and best["changed"] is True
    assert (best["created"], best["unchanged"], best["conflicts"]) == (1, 0, [conflict])
    assert after[identity(held)] == before[identity(held)]
    assert after[identity(fresh)][0] == list(fresh.reply)
    assert set(after) == set(before) | {identity(fresh)}


# ---------------------------------------------------------------- 2. the translated port is taken

def test_a_translated_port_held_by_another_session_is_refused(host):
    host.insert("192.0.2.10", 40000, SERVER, 5001, nat=(NAT, 20001))  # a NAT session
    host.insert(NAT, 20003, SERVER, 5001)                           # the host's own, from the NAT address
    wanted = [snat("192.0.2.30", 41000, 20001), snat("192.0.2.31", 41001, 20003), snat("192.0.2.32", 41002, 20010)]
    src = file(host, "collide.json.gz", document(wanted))
    before, refused, after = host.play(("table",), ("sessions", {"state": "merged", "src": [src]}), ("table",))

    assert refused["failed"] is True
    assert refused["msg"].startswith("2 session(s) of the document conflict with the host, nothing was applied: ")
    assert refused["conflicts"] == [
        "tcp 192.0.2.30:41000 -> 203.0.113.20:5001 snat 203.0.113.1:20001: its translated address and port are "
        "taken (held by tcp 192.0.2.10:40000 -> 203.0.113.20:5001 snat 203.0.113.1:20001)",
        "tcp 192.0.2.31:41001 -> 203.0.113.20:5001 snat 203.0.113.1:20003: its translated address and port are "
        "taken (held by tcp 203.0.113.1:20003 -> 203.0.113.20:5001)",
    ]
    assert after == before  # not even the third, free session


# ---------------------------------------------------------------- 3. malformed documents

def test_a_malformed_inline_document_stops_on_the_controller(host):
    valid = snat("192.0.2.40", 42000, 20040)
    # Errors the module on the host does not look for: were it run, it would create `valid`.
    unseen = document([valid])
    instance(unseen)[SNAPSHOT].update({"kind": "weekly", "taken-at": "yesterday"})
    # Errors in the sessions themselves.
    broken = document([valid, snat("192.0.2.41", 42001, 20041), snat("192.0.2.42", 42002, 20042)])
    entries = mapping_entries(broken)
    entries[1]["external-src-port"]["start-port-number"] = 70000
    entries[2]["nfstate-nat:tcp"]["state"] = "establishd"
    broken_file = file(host, "broken.json", broken)
    not_json = os.path.join(host.workdir, "not-json.json")
    with open(not_json, "w") as handle:
        handle.write('{"ietf-nat:nat": ')

    before, by_controller, sessions_by_controller, by_module, unreadable, after = host.play(
        ("table",), ("sessions", {"state": "merged", "config": unseen}),
        ("sessions", {"state": "merged", "config": broken}),
        ("sessions", {"state": "merged", "src": [broken_file]}),
        ("sessions", {"state": "merged", "src": [not_json]}), ("table",))

    inst = '/ietf-nat:nat/instances/instance[id="1"]'
    assert by_controller["failed"] is True
    assert by_controller["msg"].startswith("config is not a valid nfstate document (2 error(s)): ")
    assert sorted(e.split(": ")[0] for e in by_controller["errors"]) == [
        inst + "/nfstate-nat:snapshot/kind", inst + "/nfstate-nat:snapshot/taken-at"]
    assert "invocation" not in by_controller  # the module never ran

    entry = inst + '/mapping-table/mapping-entry[index="%d"]'
    paths = [entry % 2 + "/external-src-port/start-port-number", entry % 3 + "/nfstate-nat:tcp/state"]
    assert sessions_by_controller["msg"].startswith("config is not a valid nfstate document (2 error(s)): ")
    assert [e.split(": ")[0] for e in sessions_by_controller["errors"]] == paths
    assert "invocation" not in sessions_by_controller

    # the same document as a file on the host: the module's own checks, every error with its path
    assert by_module["failed"] is True and "invocation" in by_module
    assert by_module["msg"].startswith("%s is not a valid state document: 2 error(s) in the NAT document: "
                                       % broken_file)
    assert [e.split(": ")[0] for e in by_module["errors"]] == paths
    assert "70000 is out of range 0..65535" in by_module["errors"][0]
    assert "unknown TCP state 'establishd'" in by_module["errors"][1]
    assert unreadable["failed"] is True
    assert unreadable["msg"].startswith("cannot read state document %s: " % not_json)
    assert after == before
    assert identity(valid) not in after


# ---------------------------------------------------------------- 4. a full table

def test_a_document_bigger_than_the_free_room_is_refused_before_anything(playbook_hosts):
    full = playbook_hosts("full")
    filled = full.run(PYTHON, "-c", FILL, full.root, "3").stdout.split()
    refused_fill, count, maximum = (int(x) for x in filled)
    assert refused_fill == 0 and count == maximum - 3
    five = [snat("192.0.2.70", 44000 + n, 20070 + n) for n in range(5)]
    three = five[:3]
    too_big = file(full, "five.json", document(five))
    fits = file(full, "three.json", document(three))
    before, refused, between, ours_between, accepted, after = full.play(
        ("count",), ("sessions", {"state": "merged", "src": [too_big]}), ("count",),
        ("sessions", {"state": "gathered"}), ("sessions", {"state": "merged", "src": [fits]}), ("count",))

    assert refused["failed"] is True
    assert refused["msg"] == (
        "the conntrack table is too small: 5 sessions to add, 3 free of nf_conntrack_max %d (%d in use); "
        "raise net.netfilter.nf_conntrack_max on the host" % (maximum, maximum - 3))
    assert (refused["needed"], refused["free"]) == (5, 3)
    assert before == between == maximum - 3
    assert ours_between["sessions"] == 0  # not one of the five was created
    # an exact fit is accepted: the check is not off by one
    assert accepted["failed"] is False and accepted["created"] == 3
    assert after == maximum
    subprocess.run(["ip", "netns", "delete", full.name], capture_output=True, check=False)  # frees 180 MB now


# ---------------------------------------------------------------- 5. the kernel refuses part-way

def test_a_kernel_refusal_undoes_what_was_applied(host):
    stale = snat("192.0.2.50", 42000, 20050)  # ours, not in the document: replaced deletes it first
    host.insert("192.0.2.50", 42000, SERVER, 5001, nat=(NAT, 20050))
    good = snat("192.0.2.51", 42001, 20051)
    # A valid document, but the kernel tracks ICMP queries only: type 3 (unreachable) is refused.
    unreachable = ConntrackEntry(FlowTuple(V4, 1, "192.0.2.52", SERVER, 7, 0, 3, 0),
                                 FlowTuple(V4, 1, SERVER, NAT, 20052, 0, 3, 0), SEEN | IPS_SRC_NAT, 30)
    # The second's original tuple is the first's translated reply: the kernel would refuse the pair.
    first = snat("192.0.2.60", 43000, 20060)
    second = ConntrackEntry(FlowTuple(V4, 6, SERVER, NAT, 5001, 20060), FlowTuple(V4, 6, "192.0.2.61", SERVER, 80, 5001),
                            SEEN | IPS_DST_NAT, 600, tcp_state=3)
    pair = document([first, second])
    before, replaced, after_replaced, merged, after_merged, best, after_best = host.play(
        ("table",), ("sessions", {"state": "overridden", "config": document([good, unreachable]), "selectors": OURS}),
        ("table",), ("sessions", {"state": "merged", "config": pair}), ("table",),
        ("sessions", {"state": "merged", "config": pair, "best_effort": True}), ("table",))

    # replaced deleted `stale` and created `good` before the kernel refused: both undone
    assert replaced["failed"] is True
    assert replaced["msg"] == (
        "the kernel refused to create 1 session(s); what was applied has been undone: "
        "%s: Invalid argument (the entry is not valid for the kernel)" % describe(unreachable))
    assert after_replaced == before
    assert after_replaced[identity(stale)][0] == list(stale.reply)

    # The pair is refused before the kernel is touched: the kernel keys a session by both tuples.
    assert merged["failed"] is True
    assert merged["msg"] == (
        "1 session(s) of the document conflict with the host, nothing was applied: "
        "tcp 203.0.113.20:5001 -> 203.0.113.1:20060 dnat 192.0.2.61:80: its original tuple is another "
        "session's translated one (held by %s)" % describe(first))
    assert after_merged == before

    # With best effort the first is created and the second listed, still without a kernel refusal.
    assert best["failed"] is False and best["created"] == 1
    assert best["conflicts"] == [merged["msg"].split("applied: ")[1]]
    assert best["failed_sessions"] == []
    assert set(after_best) == set(before) | {identity(first)}
    assert after_best[identity(first)][0] == list(first.reply)


# ---------------------------------------------------------------- 6. idempotence, replaced, deleted, check mode

def test_states_are_idempotent_and_spare_the_hosts_connections(host):
    host.insert("192.0.2.90", 45000, SERVER, 5001, nat=("198.51.100.1", 30090))  # another NAT's session
    a, b, c, d = (snat("192.0.2.8%d" % n, 40080 + n, 20080 + n) for n in range(4))
    first, second = document([a, b, c]), document([a, d])
    # The host's own SSH connection, as a document would name it if it claimed it was translated.
    ssh_claimed = ConntrackEntry(FlowTuple(V4, 6, "198.18.0.1", "198.18.0.2", 51000, 22),
                                 FlowTuple(V4, 6, "198.18.0.2", NAT, 22, 20099), SEEN | IPS_SRC_NAT, 600, tcp_state=3)
    (start, merged, again, merged_table, checked, checked_table, replaced, replaced_table, replaced_again,
     deleted_named, deleted_all, end, deleted_again) = host.play(
        ("table",),
        ("sessions", {"state": "merged", "config": first}),
        ("sessions", {"state": "merged", "config": first}),
        ("table",),
        ("sessions", {"state": "overridden", "config": second, "selectors": OURS}, {"check_mode": True, "diff": True}),
        ("table",),
        ("sessions", {"state": "overridden", "config": second, "selectors": OURS}),
        ("table",),
        ("sessions", {"state": "overridden", "config": second, "selectors": OURS}),
        ("sessions", {"state": "deleted", "config": document([a, ssh_claimed]), "selectors": OURS}),
        ("sessions", {"state": "deleted"}),
        ("table",),
        ("sessions", {"state": "deleted"}))
    ssh = identity(snat("198.18.0.1", 51000, 0, dst="198.18.0.2", dport=22))
    foreign = identity(snat("192.0.2.90", 45000, 0))

    assert merged["changed"] is True and merged["created"] == 3
    assert again["changed"] is False and (again["created"], again["unchanged"]) == (0, 3)
    assert set(merged_table) == set(start) | {identity(a), identity(b), identity(c)}

    expected_commands = ["conntrack -D -f ipv4 -p 6 -s 192.0.2.81 -d 203.0.113.20 --sport 40081 --dport 5001",
                         "conntrack -D -f ipv4 -p 6 -s 192.0.2.82 -d 203.0.113.20 --sport 40082 --dport 5001"]
    assert checked["changed"] is True
    assert sorted(checked["commands"][:2]) == expected_commands
    assert checked["commands"][2].startswith("conntrack -I -f ipv4 -p 6 -s 192.0.2.83 -d 203.0.113.20 --sport 40083 "
                                             "--dport 5001 --src-nat 203.0.113.1:20083 -t ")
    assert sorted(checked["diff"]["before"].splitlines()) == expected_commands
    assert checked["diff"]["after"].splitlines() == checked["commands"][2:]
    assert checked_table == merged_table  # check mode touched nothing

    assert replaced["changed"] is True and (replaced["deleted"], replaced["created"]) == (2, 1)
    assert set(replaced_table) == set(start) | {identity(a), identity(d)}  # the foreign session stays
    assert replaced_table[ssh] == start[ssh] and replaced_table[foreign] == start[foreign]
    assert replaced_again["changed"] is False

    # deleted with a document: its sessions only, never the host's connection it names
    assert deleted_named["changed"] is True and deleted_named["deleted"] == 1
    # deleted without a document: every translated session, and still not the host's own
    assert deleted_all["deleted"] == 2
    assert set(end) == {ssh} and end[ssh] == start[ssh]
    assert deleted_again["changed"] is False


# ---------------------------------------------------------------- 7. a full snapshot, then a delta

def test_full_then_delta_gives_the_target_exactly_the_sources_sessions(playbook_hosts, target):
    source = playbook_hosts("source")
    target.run("conntrack", "-F")
    target.insert("198.18.0.1", 51000, "198.18.0.2", 22)
    for n in range(4):
        source.insert("192.0.2.2%d" % n, 40020 + n, SERVER, 5001, nat=(NAT, 20020 + n))
    source.insert("198.18.0.1", 51000, "198.18.0.3", 22)  # the source's own connection: never moves
    full = os.path.join(source.workdir, "full.json.gz")
    delta = os.path.join(source.workdir, "delta.json.gz")

    [gathered_full] = source.play(("sessions", {"state": "gathered", "dest": full, "selectors": OURS}))
    [precopy] = target.play(("sessions", {"state": "merged", "src": [full]}))
    # Meanwhile on the source: one session ends, one is bound anew, one is new.
    source.run("conntrack", "-D", "-p", "tcp", "-s", "192.0.2.20", "--sport", "40020")
    source.run("conntrack", "-D", "-p", "tcp", "-s", "192.0.2.21", "--sport", "40021")
    source.insert("192.0.2.21", 40021, SERVER, 5001, nat=(NAT, 20121))
    source.insert("192.0.2.29", 40029, SERVER, 5001, nat=(NAT, 20029))
    gathered_delta, source_table = source.play(
        ("sessions", {"state": "gathered", "dest": delta, "since": full, "selectors": OURS}), ("table",))
    target_before = target.table()
    applied, again, target_table, cleared, fresh, fresh_table = target.play(
        ("sessions", {"state": "merged", "src": [full, delta]}),
        ("sessions", {"state": "merged", "src": [full, delta]}),
        ("table",),
        ("sessions", {"state": "deleted"}),
        ("sessions", {"state": "merged", "src": [full, delta]}),
        ("table",))

    assert gathered_full["sessions"] == 4 and precopy["created"] == 4
    assert (gathered_delta["delta_added"], gathered_delta["delta_removed"]) == (2, 2)
    assert (applied["deleted"], applied["created"], applied["unchanged"]) == (2, 2, 2)
    assert again["changed"] is False

    def translated(table):
        return dict((key, value) for key, value in table.items() if value[1] & (IPS_SRC_NAT | IPS_DST_NAT))

    source_sessions = translated(source_table)
    assert len(source_sessions) == 4
    assert translated(target_table) == source_sessions
    ssh = [key for key in target_before if key not in translated(target_before)]
    assert len(ssh) == 1 and target_table[ssh[0]] == target_before[ssh[0]]
    # the same chain on an empty table gives the same set
    assert cleared["deleted"] == 4
    assert fresh["created"] == 4 and translated(fresh_table) == source_sessions
