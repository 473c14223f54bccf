# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drive the freeze window through agents started before it: milliseconds, not module runs.

    prepare  both agents load the pre-copy (outside the window)
    catch up the source compares its table with the pre-copy (a dump: sessions older than its agent
             make no events), the target applies the difference, while the source still serves
             (`pre_deltas` times): the window's delta is then only what the events say changed in
             the last moments, whatever the churn since the pre-copy. With `firewall`, the
             firewall's learned state crosses whole too (agent/firewall.py)
    freeze   the source stops creating sessions (the kernel lifts it at the deadline)
    delta    the source's events give what changed since the last delta (with `firewall`, the
             members of its sets and recent lists that changed, read once frozen)
    apply    the target applies it against what it holds (the delta's text is passed on as is)
    check    the source has been frozen without a break since the delta
    claim    the target takes the service addresses, if it is still soon enough after the check
    release  the source gives them up; the window has closed for new connections at the claim
    verify   the target still holds our rules and the sessions (also checked before the claim)
    crossed  every session that crossed after the pre-copy, one delta document for the snapshot directory
Each step is timed on the controller's clock. A freeze that lapsed (the source's check says so) is
taken again with a new delta, up to `retries` times. The crossed document is written before the
commit, so that a snapshot directory that cannot take it undoes the cutover; its YANG validation is
the playbook's next task.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import json
import os
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.nfstate.migration.plugins.plugin_utils.agent_relay import AgentClient, ChannelError

# How long before the source's freeze lifts the claim must reach the target (the check's answer,
# then the claim, travel over two channels).
CLAIM_MARGIN_MS = 2000
STEP_TIMEOUT = 120
# A test hook, inert unless the controller's environment sets it (bench/fault_matrix.py, docs/faults.md):
# NFSTATE_CUTOVER_HOLD=STEP:PATH makes the cutover create PATH once STEP (a mark: freeze_sent, frozen, applied,
# claimed, released, ...; or `prepared`, after the agents loaded the pre-copy and before the catch-up) is
# reached, and wait until PATH is removed (HOLD_LIMIT s at most), so that a fault lands there; several
# STEP:PATH separated by commas hold at each. A mark is taken when its hold ends: a hold at freeze_sent
# is not counted in the window.
HOLD_ENV = "NFSTATE_CUTOVER_HOLD"
HOLD_LIMIT = 300


def hold_path(step, environ=None):
    """The hold file NFSTATE_CUTOVER_HOLD names for `step` (STEP:PATH, several separated by commas), or None."""
    for spec in (environ if environ is not None else os.environ).get(HOLD_ENV, "").split(","):
        name, dummy, path = spec.partition(":")
        if name == step and path:
            return path
    return None


def hold_at(step, environ=None):
    """Wait at `step` while the hold file named by NFSTATE_CUTOVER_HOLD exists; nothing without it."""
    path = hold_path(step, environ)
    if path is None:
        return
    open(path, "w").close()
    limit = time.monotonic() + HOLD_LIMIT
    while os.path.exists(path) and time.monotonic() < limit:
        time.sleep(0.02)


def is_ok(raw):
    """Whether an answer line says ok, reading only its tail (a delta's line is megabytes)."""
    return b'"ok":true,"mono":' in raw[-128:]


# What the target's answer to a delta counts, for the playbook and the report.
APPLIED_COUNTS = ("created", "deleted", "refreshed", "sessions", "removed", "expectations", "expectations_created")


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("source_socket", "target_socket", "precopy_source", "precopy_target", "interfaces",
                             "deadline", "addresses", "source_interfaces", "target_interfaces", "claim",
                             "delta_dest", "retries", "keep_target_rules", "precopy_age", "pre_deltas", "alg_state",
                             "firewall", "recent_as_sets"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = self._task.args
        try:
            source = AgentClient(args["source_socket"], timeout=10)
            target = AgentClient(args["target_socket"], timeout=10)
        except ChannelError as exc:
            raise AnsibleActionFail("cannot reach the agents: %s" % exc)
        try:
            result.update(self._cutover(source, target, args))
        except ChannelError as exc:
            raise AnsibleActionFail("the cutover failed, nothing was committed: %s" % exc)
        finally:
            source.close()
            target.close()
        return result

    def _cutover(self, source, target, args):
        marks = {}
        took = {}   # ms each step took on its agent (the rest of a part is the channel)

        def mark(name):
            hold_at(name)
            marks[name] = time.time()

        source_prepare = {"op": "prepare", "precopy": args["precopy_source"], "age": float(args.get("precopy_age", 0)),
                          "alg": boolean(args.get("alg_state", True))}
        target_prepare = {"op": "prepare", "precopy": args["precopy_target"], "keep_rules": bool(args.get("keep_target_rules"))}
        if boolean(args.get("firewall", False)):
            # The firewall's learned state crosses in every delta, as the sessions do.
            source_prepare["firewall"] = {"interfaces": args.get("source_interfaces") or args["interfaces"]}
            target_prepare["firewall"] = {"interfaces": args.get("target_interfaces") or {},
                                          "recent_as_sets": boolean(args.get("recent_as_sets", True))}
        source.send_raw(self._line(source_prepare))
        target.send_raw(self._line(target_prepare))
        prepared = {"source": source.answer(STEP_TIMEOUT)["sessions"], "target": target.answer(STEP_TIMEOUT)["sessions"]}
        hold_at("prepared")

        caught_up = []
        for dummy in range(int(args.get("pre_deltas", 1))):
            started = time.time()
            # The catch-up compares with a dump: sessions older than the agent make no events.
            raw, applied = self._delta_across(source, target, full=True)
            caught_up.append(dict(self._counts(json.loads(raw), applied), ms=round((time.time() - started) * 1000, 1)))

        attempts = []
        for attempt in range(int(args.get("retries", 2)) + 1):
            mark("freeze_sent")
            freeze = {"op": "freeze", "interfaces": args["interfaces"], "deadline": int(args["deadline"])}
            if args.get("claim", True):
                # What the source announces again if it undoes after the target's claim.
                freeze.update(addresses=args["addresses"], service_interfaces=args["source_interfaces"])
            took["freeze"] = source.request(freeze, STEP_TIMEOUT).get("took_ms")
            mark("frozen")
            raw, applied = self._delta_across(source, target, lambda: mark("delta_taken"))
            mark("applied")
            took["apply"] = applied.get("took_ms")
            check = source.request({"op": "check"}, STEP_TIMEOUT)
            mark("checked")
            took["check"] = check.get("took_ms")
            attempts.append({"attempt": attempt + 1, "frozen": check["frozen"], "remaining_ms": check["remaining_ms"],
                             "created_since_delta": check["created_since_delta"]})
            if check["frozen"] and check["remaining_ms"] > CLAIM_MARGIN_MS:
                break
        else:
            raise ChannelError("the source's freeze did not hold from the delta to the claim (%s)" % attempts)

        claimed = None
        if args.get("claim", True):
            claimed = target.request({"op": "claim", "addresses": args["addresses"],
                                      "interfaces": args["target_interfaces"],
                                      "valid_ms": check["remaining_ms"] - CLAIM_MARGIN_MS}, STEP_TIMEOUT)
            mark("claimed")
            took["claim"] = claimed.get("took_ms")
            took["release"] = source.request({"op": "release", "addresses": args["addresses"],
                                              "interfaces": args["source_interfaces"]}, STEP_TIMEOUT).get("took_ms")
            mark("released")
        # The target still holds what it took over (someone may have emptied it meanwhile): else
        # nothing is committed and both agents undo, the source serving with its sessions intact.
        took["verify"] = target.request({"op": "verify"}, STEP_TIMEOUT).get("took_ms")
        crossed = source.request({"op": "crossed"}, STEP_TIMEOUT)
        if args.get("delta_dest"):
            # Kept before the commit: a snapshot directory that cannot take it (full, say) fails the
            # cutover while the agents can still undo, rather than a migration without its audit trail.
            try:
                self._write(args["delta_dest"], crossed["document"])
            except OSError as exc:
                raise ChannelError("cannot keep the delta in the snapshot directory: %s" % exc)
        # The target holds the state (and, with a claim, serves): nothing is undone from here on.
        source.request({"op": "commit"}, STEP_TIMEOUT)
        target.request({"op": "commit"}, STEP_TIMEOUT)
        if claimed:
            target.request({"op": "announce", "addresses": args["addresses"], "interfaces": args["target_interfaces"],
                            "count": 2, "interval": 0.1}, STEP_TIMEOUT)
        delta = json.loads(raw)
        took["delta"] = delta.get("took_ms")
        for agent in (source, target):
            agent.request({"op": "bye"}, STEP_TIMEOUT)

        window_end = marks.get("claimed", marks["checked"])
        return dict(
            changed=True, prepared=prepared, caught_up=caught_up, attempts=attempts, marks=marks,
            window_ms=round((window_end - marks["freeze_sent"]) * 1000, 1),
            parts_ms=dict((name, round((marks[name] - marks["freeze_sent"]) * 1000, 1)) for name in marks),
            agent_ms=took,
            delta=self._counts(delta, applied),
            # Every session that crossed after the pre-copy (the document delta_dest holds).
            applied={"sessions": crossed["sessions"], "removed": crossed["removed"],
                     "expectations": crossed.get("expectations", 0)},
            claimed=claimed and {"timings": claimed["timings"], "since_delta_ms": claimed["since_delta_ms"]},
        )

    @staticmethod
    def _delta_across(source, target, taken=None, full=False):
        """One delta from the source applied on the target: (the delta's answer as its JSON text, the
        target's answer). The delta is passed on without being parsed: the caller reads it when it
        has the time."""
        source.send_raw(b'{"op":"delta","full":true}' if full else b'{"op":"delta"}')
        raw = source.receive_raw(STEP_TIMEOUT)
        if not is_ok(raw):
            raise ChannelError("delta: %s" % json.loads(raw).get("error"))
        if taken:
            taken()
        # The source's answer is the target's request: its "document" is the delta.
        applied = target.request_raw(b'{"op":"apply",' + raw[1:], STEP_TIMEOUT)
        return raw, applied

    @staticmethod
    def _counts(delta, applied):
        counts = dict((k, delta.get(k)) for k in ("added", "removed", "refreshed", "lost_events", "full",
                                                  "expectations_ms"))
        counts.update(expectations=delta.get("expectations", 0), alg_not_carried=delta.get("alg_not_carried", []))
        if delta.get("firewall") is not None:
            counts.update(firewall=delta["firewall"], applied_firewall=applied.get("firewall"))
        counts.update(("applied_" + k, applied.get(k, 0)) for k in APPLIED_COUNTS)
        return counts

    @staticmethod
    def _line(message):
        return json.dumps(message, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _write(path, document):
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        data = json.dumps(document, separators=(",", ":")).encode("utf-8")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            handle.write(gzip.compress(data, compresslevel=6, mtime=0) if path.endswith(".gz") else data)
