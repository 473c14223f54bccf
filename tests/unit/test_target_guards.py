# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the target's agent does when someone else removed its NAT rules or sessions inside the
window (the fault matrix found both), and the cutover's test hook, which does nothing unless set.
The kernel is faked: its table is a dict."""

import errno
import heapq
import json
import os
import threading
import time
from unittest.mock import MagicMock

import pytest
from ansible.playbook.task import Task

from ansible_collections.nfstate.migration.plugins.action import cutover
from ansible_collections.nfstate.migration.plugins.module_utils.agent import target as target_mod
from ansible_collections.nfstate.migration.plugins.module_utils.agent.protocol import AgentError
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    build_document, date_and_time, instance, removed_mapping, set_mapping_entries, write_document)
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import EMPTY_ALG_RULES, RuleState
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import session_key
from ansible_collections.nfstate.migration.tests.unit.builders import many_tcp_sessions, snapshot_document


class FakeProvider:
    """Rules read without the interfaces come back as unsupported, as a real provider lists them."""

    def __init__(self, rules):
        self.current = list(rules)
        self.table = True

    def read_nat_rules(self, interfaces):
        return RuleState([], list(self.current), self.table, self.table, None)

    def read_alg_rules(self):
        return EMPTY_ALG_RULES


class FakeTable:
    """A conntrack table: session key -> entry."""

    def __init__(self, entries):
        self.entries = dict((session_key(e), e) for e in entries)
        self.dumps = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def dump(self):
        self.dumps += 1
        return list(self.entries.values())

    def get(self, entries):
        return [self.entries.get(session_key(e)) for e in entries]

    def update(self, entries):
        return [(e, 0 if session_key(e) in self.entries else 2) for e in entries]

    def delete(self, entries):
        for e in entries:
            self.entries.pop(session_key(e), None)
        return []

    def create(self, entries):
        for e in entries:
            self.entries[session_key(e)] = e
        return []


@pytest.fixture()
def side(tmp_path, monkeypatch):
    held = many_tcp_sessions(5)
    path = str(tmp_path / "precopy.json")
    # Read just now: the copies' lifetimes (300 s) are still ahead of them.
    write_document(snapshot_document(held, taken_at=date_and_time()), path)
    table = FakeTable(held)
    monkeypatch.setattr(target_mod, "Conntrack", lambda: table)
    monkeypatch.setattr(target_mod, "table_count", lambda: len(table.entries))
    provider = FakeProvider(["snat 1", "dnat 2"])
    target = target_mod.TargetSide(provider)
    target.prepare(path)
    return target, provider, table, held


def empty_delta():
    return snapshot_document([])


def test_an_undisturbed_target_applies_without_a_dump(side):
    target, dummy, table, dummy = side
    assert target.apply(empty_delta())["recreated"] == 0
    assert table.dumps == 0


def test_rules_removed_by_someone_else_refuse_the_delta_so_nothing_is_claimed(side):
    target, provider, table, dummy = side
    provider.current, provider.table = [], False
    with pytest.raises(AgentError, match="not those verified before the window"):
        target.apply(empty_delta())
    with pytest.raises(AgentError, match="claim before any delta"):
        target.claim([], {}, 10000, run_addresses=None)


def test_copies_that_ran_out_by_themselves_are_not_brought_back(side):
    target, dummy, table, held = side
    for entry in held[:2]:
        table.entries.pop(session_key(entry))
        target.expiry[session_key(entry)] = 0.0  # ran out here, as on the source
        target._expiring.append((0.0, session_key(entry)))
    target._expiring.sort()
    assert target.apply(empty_delta())["recreated"] == 0
    assert set(table.entries) == set(session_key(e) for e in held[2:])


def test_sessions_removed_by_someone_else_are_created_again_from_the_held_copies(side):
    target, dummy, table, held = side
    for entry in held[:3]:
        table.entries.pop(session_key(entry))
    result = target.apply(empty_delta())
    assert result["recreated"] == 3
    assert set(table.entries) == set(session_key(e) for e in held)


def test_the_hold_hook_does_nothing_unless_its_step_is_named(tmp_path):
    path = str(tmp_path / "hold")
    started = time.monotonic()
    cutover.hold_at("frozen", environ={})
    cutover.hold_at("frozen", environ={cutover.HOLD_ENV: "claimed:%s" % path})
    assert time.monotonic() - started < 0.5 and not os.path.exists(path)


def test_the_hold_hook_names_several_steps():
    environ = {cutover.HOLD_ENV: "prepared:/tmp/a,freeze_sent:/tmp/b"}
    assert [cutover.hold_path(step, environ) for step in ("prepared", "freeze_sent", "frozen")] == ["/tmp/a", "/tmp/b", None]


def test_the_hold_hook_waits_at_its_step_until_the_file_is_removed(tmp_path):
    path = str(tmp_path / "hold")
    waiter = threading.Thread(target=cutover.hold_at, args=("frozen", {cutover.HOLD_ENV: "frozen:%s" % path}))
    waiter.start()
    limit = time.monotonic() + 5
    while not os.path.exists(path) and time.monotonic() < limit:
        time.sleep(0.01)
    assert os.path.exists(path)
    time.sleep(0.2)
    assert waiter.is_alive()
    os.unlink(path)
    waiter.join(2)
    assert not waiter.is_alive()


class FakeAgent:
    """An agent's channel that answers each op as scripted and records what was asked."""

    def __init__(self, role):
        self.role = role
        self.ops = []

    def send_raw(self, line):
        self.ops.append(json.loads(line)["op"])

    def answer(self, timeout):
        return {"ok": True, "sessions": 0}

    def receive_raw(self, timeout):
        document = snapshot_document([])
        return json.dumps({"ok": True, "document": document, "added": 0, "removed": 0, "refreshed": 0,
                           "lost_events": 0, "took_ms": 1.0}, separators=(",", ":")).encode()

    def request_raw(self, raw, timeout):
        self.ops.append("apply")
        return {"created": 0, "deleted": 0, "refreshed": 0, "sessions": 0, "removed": 0}

    def request(self, message, timeout):
        self.ops.append(message["op"])
        if message["op"] == "check":
            return {"frozen": True, "remaining_ms": 60000, "created_since_delta": 0}
        if message["op"] == "claim":
            return {"timings": {}, "since_delta_ms": 1}
        if message["op"] == "crossed":
            return {"document": snapshot_document([]), "sessions": 0, "removed": 0}
        return {}


def cutover_action():
    task = MagicMock(Task)
    task.args = {}
    return cutover.ActionModule(task, MagicMock(), MagicMock(), loader=None, templar=None, shared_loader_obj=None)


def test_a_delta_that_cannot_be_kept_fails_the_cutover_before_anything_is_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(cutover, "is_ok", lambda raw: True)
    source, target = FakeAgent("source"), FakeAgent("target")
    blocked = tmp_path / "full"
    blocked.write_text("a file where the snapshot directory should be")
    args = {"precopy_source": "p", "precopy_target": "p", "interfaces": {}, "deadline": 120, "addresses": [],
            "source_interfaces": {}, "target_interfaces": {}, "delta_dest": str(blocked / "delta.json.gz")}
    with pytest.raises(cutover.ChannelError, match="cannot keep the delta"):
        cutover_action()._cutover(source, target, args)
    assert "release" in source.ops and "commit" not in source.ops + target.ops


def test_the_delta_is_kept_before_the_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(cutover, "is_ok", lambda raw: True)
    source, target = FakeAgent("source"), FakeAgent("target")
    dest = tmp_path / "run" / "delta.json.gz"
    args = {"precopy_source": "p", "precopy_target": "p", "interfaces": {}, "deadline": 120, "addresses": [],
            "source_interfaces": {}, "target_interfaces": {}, "delta_dest": str(dest)}
    result = cutover_action()._cutover(source, target, args)
    assert dest.exists() and source.ops[-2:] == ["commit", "bye"] and result["claimed"] is not None


def test_rules_removed_between_the_delta_and_the_claim_refuse_the_claim(side):
    # The fault matrix's delta x target-state: emptied right after the apply, the target claimed
    # and the flows crossed it untranslated until the verify refused.
    target, provider, dummy, dummy = side
    target.apply(empty_delta())
    provider.current = []
    claimed = []
    with pytest.raises(AgentError, match="not those verified"):
        target.claim([], {}, 60000, run_addresses=claimed.append)
    assert claimed == [] and target.claimed is None


def test_rules_removed_after_the_claim_are_found_before_the_commit(side):
    target, provider, dummy, dummy = side
    target.apply(empty_delta())
    target.claim([], {}, 60000, run_addresses=lambda params: {"added": [], "timings": {}})
    provider.current = []
    with pytest.raises(AgentError, match="not those verified"):
        target.verify()


def test_the_check_before_the_commit_creates_removed_sessions_again(side):
    target, dummy, table, held = side
    target.apply(empty_delta())
    table.entries.clear()
    assert target.verify() == {"recreated": len(held)}
    assert len(table.entries) == len(held)


def test_the_target_is_verified_after_the_release_and_before_any_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(cutover, "is_ok", lambda raw: True)
    source, target = FakeAgent("source"), FakeAgent("target")
    args = {"precopy_source": "p", "precopy_target": "p", "interfaces": {}, "deadline": 120, "addresses": [],
            "source_interfaces": {}, "target_interfaces": {}}
    cutover_action()._cutover(source, target, args)
    assert target.ops.index("verify") < target.ops.index("commit")
    assert target.ops.index("claim") < target.ops.index("verify")


def test_an_undoing_target_gives_up_the_addresses_then_its_rules_then_every_session_made_with_them(side):
    target, provider, table, held = side
    target.apply(empty_delta())
    calls = []
    provider.remove_nat_rules = lambda state: calls.append(("rules", len(table.entries)))
    target.claimed = ([{"address": "198.51.100.1/24", "role": "outside"}], {"outside": "out0"})
    stray = many_tcp_sessions(8)[7]   # made after the claim by a packet that still came here
    table.entries[session_key(stray)] = stray
    target.undo(lambda params: calls.append((params["state"], len(table.entries))), grace=0)
    assert calls == [("absent", 6), ("rules", 6)]
    assert table.entries == {}


def test_an_undoing_target_keeps_its_rules_until_it_has_stopped_forwarding(side):
    target, provider, table, held = side
    target.apply(empty_delta())
    started = time.monotonic()
    removed_at = []
    provider.remove_nat_rules = lambda state: removed_at.append(time.monotonic() - started)
    target.claimed = ([{"address": "198.51.100.1/24", "role": "outside"}], {"outside": "out0"})

    def forwarded():  # neighbours keep sending here for 0.4 s after the release
        return int(min(time.monotonic() - started, 0.4) * 1000)

    target.undo(lambda params: None, quiet=0.2, grace=5.0, forwarded=forwarded)
    assert len(removed_at) == 1 and 0.6 <= removed_at[0] < 2.0


@pytest.mark.parametrize("keep_rules", [False, True])
def test_a_target_that_undoes_before_the_cutover_removes_what_the_precopy_apply_created(side, tmp_path, keep_rules):
    """Started before the apply, never prepared: the controller gone between the apply and the window."""
    dummy, provider, table, held = side
    path = str(tmp_path / "applied.json")
    write_document(snapshot_document(held, taken_at=date_and_time()), path)
    own = many_tcp_sessions(8)[7]   # a session of the host's own, not in the pre-copy
    table.entries[session_key(own)] = own
    removed = []
    provider.remove_nat_rules = lambda state: removed.append("rules")
    early = target_mod.TargetSide(provider, precopy=path, keep_rules=keep_rules)
    early.undo(lambda params: None)
    assert list(table.entries) == [session_key(own)]
    assert removed == ([] if keep_rules else ["rules"])


def test_a_target_whose_precopy_never_arrived_undoes_without_failing(side, tmp_path):
    dummy, provider, table, held = side
    removed = []
    provider.remove_nat_rules = lambda state: removed.append("rules")
    early = target_mod.TargetSide(provider, precopy=str(tmp_path / "never-uploaded.json.gz"))
    early.undo(lambda params: None)
    assert len(table.entries) == len(held) and removed == ["rules"]


class StrictTable(FakeTable):
    """A create refused with EEXIST when either tuple is taken, as the kernel does."""

    def create(self, entries):
        failures = []
        for e in entries:
            if session_key(e) in self.entries or any(o.reply == e.reply for o in self.entries.values()):
                failures.append((e, errno.EEXIST))
            else:
                self.entries[session_key(e)] = e
        return failures


def test_a_copy_in_its_last_seconds_is_still_deleted_when_a_newer_session_takes_its_tuple(side, monkeypatch):
    """bench/bench_load.py at 1,000 new connections a second: the copy was forgotten up to 2 s before
    the kernel let it go, so the delta that ended it deleted nothing and the newer session with its
    tuple was refused (EEXIST) and the cutover failed."""
    target, dummy, table, held = side
    strict = StrictTable(held)
    monkeypatch.setattr(target_mod, "Conntrack", lambda: strict)
    monkeypatch.setattr(target_mod, "table_count", lambda: len(strict.entries))
    old = held[0]
    key = session_key(old)
    target.expiry[key] = time.monotonic() + 1.0   # one second left here
    target._expiring.append((target.expiry[key], key))
    target._expiring.sort()
    target.apply(empty_delta())                   # an earlier delta (the catch-up) comes and goes
    newer = old._replace(reply=old.reply._replace(dst="198.51.100.99"))  # same client port, new binding
    document = build_document([newer], "edge-nat", kind="delta")
    set_mapping_entries(document, instance(document)["mapping-table"]["mapping-entry"] + [removed_mapping(old, 2)])
    result = target.apply(document)
    assert result["created"] == 1 and strict.entries[key] == newer


def test_a_new_session_whose_translated_port_a_held_copy_still_has_takes_it_over(side, monkeypatch):
    """The source's NAT, its port pool in use to the last port, gives an ended session's port to the
    next one at once; the copy here lives a moment longer and the delta does not end it yet."""
    target, dummy, table, held = side
    strict = StrictTable(held)
    monkeypatch.setattr(target_mod, "Conntrack", lambda: strict)
    monkeypatch.setattr(target_mod, "table_count", lambda: len(strict.entries))
    old = held[0]
    newer = old._replace(orig=old.orig._replace(sport=old.orig.sport + 30000))  # another client port, same binding
    result = target.apply(build_document([newer], "edge-nat", kind="delta"))
    assert result["created"] == 1 and result["deleted"] == 1
    assert session_key(old) not in strict.entries and strict.entries[session_key(newer)] == newer
    assert session_key(old) not in target.held


def test_a_create_refused_by_a_tuple_nobody_here_holds_still_fails_the_delta(side, monkeypatch):
    target, dummy, table, held = side
    strict = StrictTable(held)
    monkeypatch.setattr(target_mod, "Conntrack", lambda: strict)
    monkeypatch.setattr(target_mod, "table_count", lambda: len(strict.entries))
    foreign = many_tcp_sessions(9)[8]
    strict.entries[session_key(foreign)] = foreign   # the host's own, not a copy of ours
    intruder = foreign._replace(orig=foreign.orig._replace(sport=foreign.orig.sport + 30000))
    with pytest.raises(AgentError, match="refused to create"):
        target.apply(build_document([intruder], "edge-nat", kind="delta"))
    assert strict.entries[session_key(foreign)] == foreign


class UnreapedTable(StrictTable):
    """Entries that ran out but are not reaped yet: invisible to a dump, in the way of a create,
    gone once looked up (either direction's tuple), as the kernel's are."""

    def __init__(self, entries, expired):
        super().__init__(entries)
        self.expired = list(expired)

    def create(self, entries):
        blocked = [e for e in entries if any(e.reply == x.reply or session_key(e) == session_key(x) for x in self.expired)]
        return [(e, errno.EEXIST) for e in blocked] + super().create([e for e in entries if e not in blocked])

    def get(self, entries):
        looked = set(e.orig for e in entries)
        self.expired = [x for x in self.expired if x.orig not in looked and x.reply not in looked]
        return super().get(entries)


def test_a_create_blocked_by_an_entry_that_ran_out_but_is_not_reaped_is_tried_again(side, monkeypatch):
    target, dummy, table, held = side
    gone = held[0]   # ran out here; its copy forgotten; the kernel has not reaped it yet
    strict = UnreapedTable(held[1:], [gone])
    monkeypatch.setattr(target_mod, "Conntrack", lambda: strict)
    monkeypatch.setattr(target_mod, "table_count", lambda: len(strict.entries))
    target.held.pop(session_key(gone))
    newer = gone._replace(orig=gone.orig._replace(sport=gone.orig.sport + 30000))  # took its translated port
    assert target.apply(build_document([newer], "edge-nat", kind="delta"))["created"] == 1
    assert strict.entries[session_key(newer)] == newer and strict.expired == []


def test_copies_near_their_end_do_not_make_every_check_dump_the_table(side):
    """Under churn the table holds fewer entries than the copies still known (those in their last
    seconds): the count alone must still tell that nothing was removed by someone else."""
    target, dummy, table, held = side
    now = time.monotonic()
    for entry in held[:2]:   # in their last second, and the kernel let them go already
        key = session_key(entry)
        table.entries.pop(key)
        target.expiry[key] = now + 0.5
        heapq.heappush(target._expiring, (target.expiry[key], key))
    target.apply(empty_delta())
    assert table.dumps == 0
    assert target._surely_alive(time.monotonic()) == len(held) - 2
