# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cutover agent: a process on a NAT host that the controller drives through a channel opened
before the freeze window, so that nothing inside the window waits for a module run.

    python3 agent.zip --role source|target --implementation I [--iptables-backend B] --deadline S

It reads requests from stdin and writes answers to stdout (agent/protocol.py), standard library
only. It ends, undoing what is not committed, when its input ends (the controller, or the channel
to it, is gone) or when its deadline passes without a word from the controller: a source that
serves again on its own, a target with nothing of ours active. Once committed it just ends.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import os
import select
import sys
import time

from ansible_collections.nfstate.migration.plugins.module_utils.agent.protocol import (
    AgentError,
    answer,
    decode,
    encode,
    failure,
)
from ansible_collections.nfstate.migration.plugins.module_utils.agent.source import SourceSide
from ansible_collections.nfstate.migration.plugins.module_utils.agent.target import TargetSide
from ansible_collections.nfstate.migration.plugins.module_utils.providers import LocalHost, provider_for
from ansible_collections.nfstate.migration.plugins.module_utils.resources import service_addresses


def run_addresses(params):
    return service_addresses.run(params)


class Agent(object):

    def __init__(self, side, role, deadline):
        self.side = side
        self.role = role
        self.deadline = deadline
        self.committed = False
        self.done = False
        self.last_word = time.monotonic()

    def handle(self, request):
        op = request.get("op")
        side = self.side
        if op == "hello":
            return answer(role=self.role, pid=os.getpid())
        if op == "prepare":
            if self.role == "source":
                return answer(**side.prepare(request["precopy"], request.get("age", 0.0), request.get("alg", True),
                                             request.get("firewall")))
            return answer(**side.prepare(request["precopy"], request.get("keep_rules", False), request.get("firewall")))
        if op == "commit":
            self.committed = True
            return answer()
        if op == "bye":
            self.done = True
            return answer(committed=self.committed)
        handlers = self._source_ops() if self.role == "source" else self._target_ops()
        if op not in handlers:
            raise AgentError("unknown request %r for the %s" % (op, self.role))
        return answer(**handlers[op](request))

    def _source_ops(self):
        side = self.side
        return {
            "freeze": lambda r: side.freeze(r["interfaces"], r["deadline"],
                                            (r["addresses"], r["service_interfaces"]) if r.get("addresses") else None),
            "delta": lambda r: side.delta(bool(r.get("full"))),
            "check": lambda r: side.check(),
            "crossed": lambda r: side.crossed(),
            "release": lambda r: side.release(r["addresses"], r["interfaces"], run_addresses),
            "unfreeze": lambda r: side.unfreeze(),
        }

    def _target_ops(self):
        side = self.side
        return {
            "apply": lambda r: side.apply(r["document"], bool(r.get("frozen"))),
            "verify": lambda r: side.verify(),
            "claim": lambda r: side.claim(r["addresses"], r["interfaces"], r["valid_ms"], run_addresses),
            "announce": lambda r: side.announce(r["addresses"], r["interfaces"], r.get("count", 2),
                                                r.get("interval", 0.1), run_addresses),
        }

    def serve(self, stdin, stdout):
        """Answer requests until the input ends or the deadline passes; True once committed."""
        buffered = b""
        fd = stdin.fileno()
        while True:
            left = self.deadline - (time.monotonic() - self.last_word)
            if left <= 0:
                return self.committed
            ready, dummy, dummy = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return self.committed
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                self.last_word = time.monotonic()
                stdout.write(encode(self._answer(line)))
                stdout.flush()
                if self.done:
                    return self.committed

    def _answer(self, line):
        started = time.monotonic()
        try:
            reply = self.handle(decode(line))
            # How long the request took here: the driver's profile of the window, part by part.
            reply["took_ms"] = round((time.monotonic() - started) * 1000, 2)
            return reply
        except (AgentError, KeyError, TypeError, ValueError, OSError) as exc:
            return failure(exc if not isinstance(exc, KeyError) else "missing argument %s" % exc)
        except Exception as exc:  # pylint: disable=broad-except
            return failure("%s: %s" % (type(exc).__name__, exc))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nfstate-agent")
    parser.add_argument("--role", choices=["source", "target"], required=True)
    parser.add_argument("--implementation", required=True)
    parser.add_argument("--iptables-backend", default="auto")
    parser.add_argument("--deadline", type=float, required=True,
                        help="seconds without a word from the controller after which the agent undoes and ends")
    parser.add_argument("--selectors", default="{}")
    parser.add_argument("--instance-name", default="nat")
    parser.add_argument("--precopy", default=None,
                        help="a target's pre-copy document: an undo before the cutover removes what its apply created")
    parser.add_argument("--keep-rules", action="store_true", help="a target that held NAT rules of ours before: keep them")
    args = parser.parse_args(argv)
    provider = provider_for(LocalHost(), args.implementation, args.iptables_backend)
    if args.role == "source":
        side = SourceSide(provider, json.loads(args.selectors), args.instance_name)
    else:
        side = TargetSide(provider, args.precopy, args.keep_rules)
    agent = Agent(side, args.role, args.deadline)
    stdout = sys.stdout.buffer
    # The first line says the agent is ready (a source is subscribed to the events from here on).
    stdout.write(encode(answer(role=args.role, pid=os.getpid(), ready=True)))
    stdout.flush()
    committed = False
    try:
        committed = agent.serve(sys.stdin.buffer, stdout)
    finally:
        if not committed:
            try:
                side.undo(run_addresses)
            except Exception as exc:  # pylint: disable=broad-except
                sys.stderr.write("nfstate agent: undo failed: %s\n" % exc)
        side.close()
    return 0
