# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cutover agent's protocol: one JSON object per line, a request and then its answer.

A request is {"op": NAME, ...arguments}; the answer {"ok": true, ...} or {"ok": false, "error": TEXT}.
Every answer carries "mono", the agent's monotonic clock when it was written, so that the driver
can tell how long the agent held a message (the clocks of two hosts are never compared).
A delta travels as the raw JSON text of a state document: the driver passes it on to the target
without parsing it inside the freeze window.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import time

# A line of a delta of 10k sessions is a few megabytes; anything larger is not ours.
MAX_LINE = 256 << 20


class AgentError(Exception):
    """A request the agent refuses or cannot carry out; the message goes back to the driver."""


def encode(message):
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")


def answer(**fields):
    fields.setdefault("ok", True)
    fields["mono"] = time.monotonic()
    return fields


def failure(error):
    return {"ok": False, "error": str(error), "mono": time.monotonic()}


def decode(line):
    """A request or an answer from one line; AgentError when it is not one."""
    if len(line) > MAX_LINE:
        raise AgentError("a line of %d bytes is too long" % len(line))
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise AgentError("not a JSON line: %s" % exc)
    if not isinstance(message, dict):
        raise AgentError("a message is a JSON object")
    return message
