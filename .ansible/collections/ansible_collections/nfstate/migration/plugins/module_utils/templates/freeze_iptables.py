# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The freeze in iptables: a chain of our own in the filter table, as save/restore text (pure).

NFSTATE-FREEZE is jumped to from the top of FORWARD and holds one DROP rule per interface for
packets that would create an entry (`--ctstate NEW ! --ctstatus CONFIRMED`), limited by
`-m time --datestop` (UTC). The kernel compares the wall clock at second resolution; legacy
xt_time and iptables-nft's native translation both keep matching through the stop second, so the
stop is written one second before the deadline. It needs nothing but iptables itself (an ipset with
a timeout would add a tool and a set per address family whose lifetime is managed elsewhere).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import shlex
from collections import namedtuple
from datetime import datetime, timezone

from ansible_collections.nfstate.migration.plugins.module_utils.freeze import NOT_INSTALLED, Freeze, FreezeState

IPT_CHAIN = "NFSTATE-FREEZE"
IPT_JUMP = "-A FORWARD -j %s" % IPT_CHAIN
IPT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

IptablesView = namedtuple("IptablesView", "chain_exists jumps jump_on_top rules")
# rules: list of (device, expires_at) for rules of our shape, (None, None) for any other rule.


def ipt_datestop(expires_at):
    # xt_time (and iptables-nft's `meta time`) still match during the stop second itself.
    return datetime.fromtimestamp(expires_at - 1, timezone.utc).strftime(IPT_DATE_FORMAT)


def ipt_rule_args(device, expires_at):
    # NEW and not yet CONFIRMED: only the packet that would create an entry, never a packet of an
    # entry that exists (a one-way stream's entry stays NEW for ever).
    return ["-i", device, "-m", "conntrack", "--ctstate", "NEW", "!", "--ctstatus", "CONFIRMED",
            "-m", "time", "--datestop", ipt_datestop(expires_at), "-j", "DROP"]


_RULE_TOKENS = len(ipt_rule_args("x", 86400))
_DEVICE_AT = 1
_STOP_AT = _RULE_TOKENS - 3


def _parse_ipt_rule(tokens):
    """(device, expires_at) if `tokens` (after `-A CHAIN`) is a rule we render, else (None, None)."""
    if len(tokens) != _RULE_TOKENS:
        return None, None
    device, stop = tokens[_DEVICE_AT], tokens[_STOP_AT]
    try:
        expires_at = calendar.timegm(datetime.strptime(stop, IPT_DATE_FORMAT).timetuple()) + 1
    except ValueError:
        return None, None
    if tokens != ipt_rule_args(device, expires_at):
        return None, None
    return device, expires_at


def parse_iptables_save(text):
    """IptablesView of the filter table in `iptables-save` output (legacy or nft backend)."""
    chain_exists, jumps, forward, rules = False, 0, [], []
    table = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
        elif table != "filter":
            continue
        elif line.startswith(":%s " % IPT_CHAIN):
            chain_exists = True
        elif line.startswith("-A FORWARD "):
            forward.append(line)
            jumps += line == IPT_JUMP
        elif line.startswith("-A %s " % IPT_CHAIN):
            rules.append(_parse_ipt_rule(shlex.split(line)[2:]))
    return IptablesView(chain_exists, jumps, bool(forward) and forward[0] == IPT_JUMP, rules)


def iptables_state(view, now):
    installed = view.chain_exists or view.jumps > 0
    if not installed:
        return NOT_INSTALLED
    devices = set(rule[0] for rule in view.rules)
    expiries = set(rule[1] for rule in view.rules)
    ours = bool(view.rules) and None not in devices and len(expiries) == 1
    intact = ours and view.chain_exists and view.jumps == 1 and view.jump_on_top \
        and len(devices) == len(view.rules)
    active = None
    if ours and view.chain_exists and view.jumps > 0:
        expires_at = expiries.pop()
        if expires_at > now:
            active = Freeze(tuple(sorted(devices)), expires_at)
    return FreezeState(True, intact, active)


def ipt_freeze_restore(wanted, view):
    """iptables-restore --noflush input that leaves our chain holding exactly `wanted`.

    Declaring the chain creates or flushes it inside the same commit, so a refresh is atomic."""
    lines = ["*filter", ":%s - [0:0]" % IPT_CHAIN]
    for device in wanted.interfaces:
        lines.append(" ".join(["-A", IPT_CHAIN] + ipt_rule_args(device, wanted.expires_at)))
    if not (view.jumps == 1 and view.jump_on_top):
        lines.extend(["-D FORWARD -j %s" % IPT_CHAIN] * view.jumps)
        lines.append("-I FORWARD 1 -j %s" % IPT_CHAIN)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def ipt_unfreeze_restore(view):
    lines = ["*filter"]
    lines.extend(["-D FORWARD -j %s" % IPT_CHAIN] * view.jumps)
    if view.chain_exists:
        lines.extend(["-F %s" % IPT_CHAIN, "-X %s" % IPT_CHAIN])
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
