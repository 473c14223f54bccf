# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cutover action plugin's sequence against two scripted agents: what is asked in which order,
what is passed on without parsing, when it retries, and what it keeps for the audit trail."""

import gzip
import json
from unittest.mock import MagicMock, patch

import pytest
from ansible.errors import AnsibleActionFail
from ansible.playbook.task import Task

from ansible_collections.nfstate.migration.plugins.action import cutover
from ansible_collections.nfstate.migration.plugins.plugin_utils.agent_relay import ChannelError


class ScriptedAgent(object):
    """AgentClient's interface; answers each op from `script` (op -> answer dict or list of them)."""

    def __init__(self, name, log, script):
        self.name, self.log, self.script = name, log, script
        self.lines = []

    def _reply(self, line):
        request = json.loads(line)
        self.log.append((self.name, request["op"]))
        self.lines.append(line)
        reply = self.script.get(request["op"], {})
        if isinstance(reply, list):
            reply = reply.pop(0)
        if isinstance(reply, Exception):
            raise reply
        # In the agent's order (agent/protocol.py's answer, then took_ms): the driver reads a
        # delta's status at the line's tail.
        return dict(reply, ok=True, mono=1.0, took_ms=0.5)

    def send_raw(self, line):
        self._pending = self._reply(line)

    def receive_raw(self, timeout=None):
        return json.dumps(self._pending, separators=(",", ":")).encode("utf-8")

    def answer(self, timeout=None):
        reply = self._pending
        if not reply.get("ok"):
            raise ChannelError(reply.get("error"))
        return reply

    def request(self, message, timeout=None):
        self.send_raw(json.dumps(message).encode("utf-8"))
        return self.answer()

    def request_raw(self, line, timeout=None):
        self.send_raw(line)
        return self.answer()

    def close(self):
        pass


def delta(added, frozen):
    return {"document": {"kind": "delta", "added": added}, "added": added, "removed": 0, "refreshed": 0,
            "lost_events": False, "frozen": frozen}


APPLIED = {"created": 1, "deleted": 0, "refreshed": 0, "sessions": 1, "removed": 0}
CHECK_OK = {"frozen": True, "remaining_ms": 14000, "created_since_delta": 0}
CROSSED = {"document": {"kind": "delta", "all": True}, "sessions": 40, "removed": 3}


def run(tmp_path, source_script, target_script, **args):
    log = []
    source = ScriptedAgent("source", log, dict({"prepare": {"sessions": 1000}, "freeze": {},
                                                "delta": [delta(35, False), delta(5, True)], "check": CHECK_OK,
                                                "crossed": CROSSED}, **source_script))
    target = ScriptedAgent("target", log, dict({"prepare": {"sessions": 1000}, "apply": APPLIED,
                                                "claim": {"timings": {}, "since_delta_ms": 3}}, **target_script))
    task = MagicMock(Task)
    task.args = dict(source_socket="s", target_socket="t", precopy_source="/p", precopy_target="/q",
                     interfaces={}, deadline=15, addresses=[], source_interfaces={}, target_interfaces={},
                     delta_dest=str(tmp_path / "delta.json.gz"), **args)
    task.async_val = 0
    action = cutover.ActionModule(task, MagicMock(), MagicMock(), loader=None, templar=None, shared_loader_obj=None)
    clients = iter([source, target])
    with patch("ansible.plugins.action.ActionBase.run", return_value={}), \
            patch.object(cutover, "AgentClient", lambda *a, **k: next(clients)):
        result = action.run(task_vars={})
    return result, log, source, target


def test_the_target_catches_up_before_the_freeze_and_the_window_carries_the_rest(tmp_path):
    result, log, source, target = run(tmp_path, {}, {})
    assert log == [("source", "prepare"), ("target", "prepare"),
                   ("source", "delta"), ("target", "apply"),  # caught up while the source serves
                   ("source", "freeze"), ("source", "delta"), ("target", "apply"), ("source", "check"),
                   ("target", "claim"), ("source", "release"),
                   ("target", "verify"), ("source", "crossed"), ("source", "commit"), ("target", "commit"), ("target", "announce"),
                   ("source", "bye"), ("target", "bye")]
    assert [r["added"] for r in result["caught_up"]] == [35]
    assert result["delta"]["added"] == 5
    # The source's delta reached the target as its apply request, document and all.
    applied = [json.loads(line) for line in target.lines if json.loads(line)["op"] == "apply"]
    assert [a["document"]["added"] for a in applied] == [35, 5]
    # The audit trail holds every session that crossed after the pre-copy, not only the window's.
    with gzip.open(str(tmp_path / "delta.json.gz")) as handle:
        assert json.load(handle) == CROSSED["document"]
    assert result["applied"] == {"sessions": 40, "removed": 3, "expectations": 0}
    assert set(result["parts_ms"]) == {"frozen", "delta_taken", "applied", "checked", "claimed", "released",
                                       "freeze_sent"}


def test_a_freeze_that_lapsed_is_taken_again_with_a_new_delta(tmp_path):
    lapsed = {"frozen": False, "remaining_ms": 0, "created_since_delta": 1}
    result, log, dummy, dummy = run(tmp_path, {"check": [lapsed, CHECK_OK],
                                               "delta": [delta(35, False), delta(5, True), delta(1, True)]}, {})
    assert [op for who, op in log if who == "source"].count("freeze") == 2
    assert [a["frozen"] for a in result["attempts"]] == [False, True]
    assert result["delta"]["added"] == 1


def test_no_claim_unless_the_freeze_held_and_nothing_is_committed(tmp_path):
    lapsed = {"frozen": False, "remaining_ms": 0, "created_since_delta": 1}
    with pytest.raises(AnsibleActionFail, match="did not hold"):
        run(tmp_path, {"check": [lapsed] * 2, "delta": [delta(1, False)] + [delta(1, True)] * 2}, {}, retries=1)


def test_an_audit_trail_that_cannot_be_read_undoes_the_cutover(tmp_path):
    with pytest.raises(AnsibleActionFail, match="nothing was committed"):
        run(tmp_path, {"crossed": ChannelError("the agent's channel closed")}, {})


@pytest.mark.parametrize("rounds", [0, 2])
def test_the_catch_up_rounds_are_a_setting(tmp_path, rounds):
    deltas = [delta(10, False) for dummy in range(rounds)] + [delta(5, True)]
    result, log, dummy, dummy = run(tmp_path, {"delta": deltas}, {}, pre_deltas=rounds)
    assert len(result["caught_up"]) == rounds
    first_freeze = log.index(("source", "freeze"))
    assert log[:first_freeze].count(("source", "delta")) == rounds


def test_the_freeze_tells_the_source_which_addresses_to_announce_again_if_it_undoes(tmp_path):
    result, log, source, target = run(tmp_path, {}, {}, claim=True)
    freeze = [json.loads(line) for line in source.lines if json.loads(line)["op"] == "freeze"]
    assert freeze and "service_interfaces" in freeze[0] and freeze[0]["addresses"] == []
    dummy, dummy, source, dummy = run(tmp_path, {}, {}, claim=False)
    freeze = [json.loads(line) for line in source.lines if json.loads(line)["op"] == "freeze"]
    assert "addresses" not in freeze[0]
