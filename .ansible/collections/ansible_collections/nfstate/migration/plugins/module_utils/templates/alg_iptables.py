# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ALG configuration in iptables: `-t raw ... -j CT --helper NAME`, as iptables-restore text.

Our ALG rules live in a raw-table chain of our own (NFSTATE-ALG) entered from PREROUTING by one
unconditional jump, so the host's other rules are never touched. One rule per RFC 8512 alg; its
name travels in a comment ("nfstate-alg:NAME"), since iptables has no named helper objects. The
raw table runs before connection tracking; the CT target attaches the helper to the template of
the session about to be created. Pure: text in, data out.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import shlex
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.alg_model import (
    KNOWN_HELPERS,
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    AlgRule,
)

TABLE = "raw"
OWN_CHAIN = "NFSTATE-ALG"
BUILTIN_CHAIN = "PREROUTING"
COMMENT_PREFIX = "nfstate-alg:"

# What one family's raw table holds of ours.
#   rules        AlgRules of our chain, in order
#   unsupported  [{"rule": line, "reason": text}]
#   chain        our chain exists
#   jumps        number of unconditional jumps from PREROUTING into it
AlgTable = namedtuple("AlgTable", ["rules", "unsupported", "chain", "jumps"])


class RenderError(ValueError):
    """An AlgRule iptables cannot be given."""


def _port_text(ports):
    first, last = ports
    return str(first) if first == last else "%d:%d" % (first, last)


def rule_args(rule):
    """The arguments after `-A NFSTATE-ALG` of one AlgRule, in iptables-save's order."""
    if rule.helper not in KNOWN_HELPERS or rule.proto not in PROTOCOL_NAMES:
        raise RenderError("%s: unknown helper %r or protocol %r" % (rule.name, rule.helper, rule.proto))
    if not re.match(r"^[A-Za-z0-9._-]+$", rule.name):
        raise RenderError("alg name %r cannot travel in an iptables comment" % rule.name)
    proto = PROTOCOL_NAMES[rule.proto]
    args = ["-p", proto, "-m", proto]
    if rule.sports is not None:
        args += ["--sport", _port_text(rule.sports)]
    args += ["--dport", _port_text(rule.dports), "-m", "comment", "--comment", COMMENT_PREFIX + rule.name,
             "-j", "CT", "--helper", rule.helper]
    return args


def restore_payload(rules, current=None):
    """`iptables-restore --noflush` input making our chain hold exactly these rules.

    current (an AlgTable of the host, or None for an empty host) decides the jump: a missing one is
    inserted first in PREROUTING, extra ones are removed. Declaring our chain empties it.
    """
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise RenderError("alg names are not unique: %s" % ", ".join(names))
    jumps = current.jumps if current is not None else 0
    lines = ["*" + TABLE, ":%s - [0:0]" % OWN_CHAIN]
    if jumps == 0:
        lines.append("-I %s 1 -j %s" % (BUILTIN_CHAIN, OWN_CHAIN))
    lines.extend(["-D %s -j %s" % (BUILTIN_CHAIN, OWN_CHAIN)] * max(jumps - 1, 0))
    for rule in rules:
        lines.append(" ".join(["-A", OWN_CHAIN] + rule_args(rule)))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def remove_payload(current):
    """`iptables-restore --noflush` input removing our jump and chain (None when neither exists)."""
    lines = ["-D %s -j %s" % (BUILTIN_CHAIN, OWN_CHAIN)] * current.jumps
    if current.chain:
        lines += ["-F " + OWN_CHAIN, "-X " + OWN_CHAIN]
    if not lines:
        return None
    return "\n".join(["*" + TABLE] + lines + ["COMMIT"]) + "\n"


def _table_lines(text):
    """The lines of the raw table in an iptables-save output (the first family's)."""
    lines, inside = [], False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            inside = line == "*" + TABLE
        elif inside and line == "COMMIT":
            break
        elif inside and line and not line.startswith("#"):
            lines.append(line)
    return lines


def _ports(text):
    match = re.match(r"^(\d+)(?::(\d+))?$", text or "")
    if not match:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else first
    return (first, last) if first <= last <= 65535 else None


def parse_rule(args):
    """(AlgRule, None) of one rule's arguments after `-A NFSTATE-ALG`, or (None, reason)."""
    fields = {}
    position = 0
    while position < len(args):
        opt = args[position]
        value = args[position + 1] if position + 1 < len(args) else None
        if opt == "-m" and value in ("tcp", "udp", "comment"):
            position += 2
            continue
        if opt in ("-p", "--sport", "--dport", "--comment", "-j", "--helper") and value is not None:
            if opt in fields:
                return None, "%s given twice" % opt
            fields[opt] = value
            position += 2
            continue
        return None, "option %s is not one an ALG rule of ours has" % opt
    proto = PROTOCOL_NUMBERS.get(fields.get("-p"))
    helper = fields.get("--helper")
    if proto is None or fields.get("-j") != "CT" or helper not in KNOWN_HELPERS:
        return None, "not a -p tcp/udp -j CT --helper rule with a kernel helper"
    dports = _ports(fields.get("--dport"))
    sports = _ports(fields["--sport"]) if "--sport" in fields else None
    if dports is None or ("--sport" in fields and sports is None):
        return None, "ports not understood"
    comment = fields.get("--comment", "")
    name = comment[len(COMMENT_PREFIX):] if comment.startswith(COMMENT_PREFIX) else helper
    return AlgRule(name, helper, proto, dports, sports), None


def parse_save(text):
    """The AlgTable of an `iptables-save -t raw` output."""
    rules, unsupported = [], []
    chain, jumps = False, 0
    for line in _table_lines(text):
        if line.startswith(":"):
            chain = chain or line[1:].split()[0] == OWN_CHAIN
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words[:2] == ["-A", BUILTIN_CHAIN] and words[2:] == ["-j", OWN_CHAIN]:
            jumps += 1
        elif words[:2] == ["-A", OWN_CHAIN]:
            rule, reason = parse_rule(words[2:])
            if rule is None:
                unsupported.append({"rule": line, "reason": reason})
            else:
                rules.append(rule)
    return AlgTable(rules, unsupported, chain, jumps)
