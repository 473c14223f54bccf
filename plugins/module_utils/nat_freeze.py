# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freeze a NAT: stop it from creating new sessions until a deadline, enforced by the kernel.

A freeze drops forwarded packets in conntrack state NEW that enter one of the NF's interfaces, so
new connections through the NAT wait (TCP retransmits its SYN) while established sessions keep
flowing and the snapshot taken meanwhile is complete. Only the forward hook is touched: the host's
own traffic (the controller's SSH session) goes through input/output and is never held.

The freeze lifts itself when its deadline passes, with no process left behind to do it:
- nftables: a rule `ct state new iifname @frozen_iifs drop` in our own table `inet nfstate_freeze`;
  the interfaces are elements of a set with a timeout, and the kernel expires them on a monotonic
  clock, immune to wall clock steps (libnftables JSON takes whole seconds, so it lifts within the
  second before the deadline).
- iptables: our own chain NFSTATE-FREEZE in the filter table, jumped to from the top of FORWARD,
  with one DROP rule per interface limited by `-m time --datestop` (UTC). The kernel compares the
  wall clock at second resolution; legacy xt_time and iptables-nft's native translation both keep
  matching through the stop second, so the stop is written one second before the deadline.
  It needs nothing but iptables itself (an ipset with a timeout would add a tool and a set per
  address family whose lifetime has to be managed outside the ruleset).

Everything here is pure (rendering, parsing, deadline math) except the two small runner classes,
which take any object with get_bin_path/run_command (an AnsibleModule) to reach the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import json
import math
import os
import re
import shlex
from collections import namedtuple
from datetime import datetime, timezone

NFT_FAMILY = "inet"
NFT_TABLE = "nfstate_freeze"
NFT_SET = "frozen_iifs"
NFT_CHAIN = "forward"
# Before the usual filter chains (priority 0): a drop here is final whatever they accept.
NFT_CHAIN_PRIORITY = -10
NFT_COMMENT_PREFIX = "expires_at="

IPT_CHAIN = "NFSTATE-FREEZE"
IPT_JUMP = "-A FORWARD -j %s" % IPT_CHAIN
IPT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

ROLES = ("inside", "outside")
# A freeze of more than a day is far more likely a unit mistake (milliseconds?) than an intent.
MAX_DEADLINE = 86400
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")

# interfaces: sorted tuple of device names; expires_at: whole seconds since the epoch (UTC).
Freeze = namedtuple("Freeze", "interfaces expires_at")
# installed: some object of ours exists; intact: our objects are exactly what we render
# (so rewriting them with the same freeze would change nothing); active: the Freeze in force, or None.
FreezeState = namedtuple("FreezeState", "installed intact active")
NOT_INSTALLED = FreezeState(False, True, None)


class FreezeError(Exception):
    """The freeze cannot be set up, read or removed; the message says what and why."""


# ---------------------------------------------------------------- options and deadline math

def interface_devices(interfaces):
    """Sorted, de-duplicated device names from the {inside: dev, outside: dev} option."""
    interfaces = interfaces or {}
    unknown = sorted(set(interfaces) - set(ROLES))
    if unknown:
        raise FreezeError("unknown interface role(s) %s: use %s" % (", ".join(unknown), ", ".join(ROLES)))
    devices = set()
    for role in ROLES:
        device = interfaces.get(role)
        if device is None:
            continue
        if not _DEVICE_NAME.match(device) or device in (".", ".."):
            raise FreezeError("interfaces.%s: %r is not a plain network device name" % (role, device))
        devices.add(device)
    if not devices:
        raise FreezeError("interfaces: give the inside and/or the outside device of the NAT")
    return tuple(sorted(devices))


def check_deadline(deadline):
    if deadline is None or deadline < 1 or deadline > MAX_DEADLINE:
        raise FreezeError("deadline must be between 1 and %d seconds, got %r" % (MAX_DEADLINE, deadline))
    return int(deadline)


def expiry_for(deadline, now):
    """The whole second at which a freeze of `deadline` seconds starting at `now` lifts."""
    return int(math.ceil(now + check_deadline(deadline)))


def remaining_seconds(expires_at, now):
    return max(0, int(math.floor(expires_at - now)))


def iso_utc(epoch):
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_frozen(state, now):
    return state.active is not None and state.active.expires_at > now


def needs_freeze(state, wanted):
    """True when the host must be rewritten to hold exactly `wanted` (new, moved or repaired)."""
    return not (state.intact and state.active == wanted)


def describe(state, now):
    """The user-facing view of a state: for results and diffs."""
    frozen = is_frozen(state, now)
    return {
        "frozen": frozen,
        "interfaces": list(state.active.interfaces) if frozen else [],
        "expires_at": iso_utc(state.active.expires_at) if frozen else None,
        "remaining": remaining_seconds(state.active.expires_at, now) if frozen else 0,
    }


# ---------------------------------------------------------------- nftables (libnftables JSON)

def _nft_table():
    return {"family": NFT_FAMILY, "name": NFT_TABLE}


def nft_rule_expr():
    """Drop forwarded packets that would open a session and entered a frozen interface."""
    return [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@" + NFT_SET}},
        {"drop": None},
    ]


def nft_timeout(wanted, now):
    """Whole seconds for the kernel timer: libnftables JSON takes integer seconds only (it silently
    drops a fractional or text timeout, which would freeze for ever). Rounded down, so the kernel
    lifts the freeze within the second before `expires_at`, never after it."""
    return max(1, int(math.floor(wanted.expires_at - now)))


def nft_freeze_commands(wanted, now):
    """One transaction that (re)creates our table holding `wanted`.

    add+delete+add replaces the table atomically whether or not it exists, so a refresh never
    opens a gap and always repairs a table someone edited. The set's own default timeout is a
    second guard: no element can outlive the deadline even if its own timeout were lost."""
    timeout = nft_timeout(wanted, now)
    table = _nft_table()
    where = {"family": NFT_FAMILY, "table": NFT_TABLE}
    comment = "%s%d" % (NFT_COMMENT_PREFIX, wanted.expires_at)
    elements = [{"elem": {"val": device, "timeout": timeout, "comment": comment}} for device in wanted.interfaces]
    return {"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        {"add": {"set": dict(where, name=NFT_SET, type="ifname", flags=["timeout"], timeout=timeout)}},
        {"add": {"chain": dict(where, name=NFT_CHAIN, type="filter", hook="forward",
                               prio=NFT_CHAIN_PRIORITY, policy="accept")}},
        {"add": {"rule": dict(where, chain=NFT_CHAIN, expr=nft_rule_expr())}},
        {"add": {"element": dict(where, name=NFT_SET, elem=elements)}},
    ]}


def nft_unfreeze_commands():
    return {"nftables": [{"delete": {"table": _nft_table()}}]}


def nft_list_tables_commands():
    return {"nftables": [{"list": {"tables": None}}]}


def nft_list_table_commands():
    return {"nftables": [{"list": {"table": _nft_table()}}]}


def nft_has_table(listing):
    for item in listing.get("nftables", []):
        table = item.get("table")
        if table and table.get("family") == NFT_FAMILY and table.get("name") == NFT_TABLE:
            return True
    return False


def _nft_element_expiry(elem, now):
    """Absolute expiry of one listed set element, or None if it never expires."""
    if not isinstance(elem, dict) or "expires" not in elem:
        return None
    kernel = now + elem["expires"]
    comment = elem.get("comment") or ""
    if comment.startswith(NFT_COMMENT_PREFIX):
        try:
            noted = int(comment[len(NFT_COMMENT_PREFIX):])
        except ValueError:
            noted = None
        # The kernel lists whole seconds left; our note is exact unless the wall clock moved.
        if noted is not None and abs(noted - kernel) <= 2:
            return noted
    return int(math.ceil(kernel))


def parse_nft_table(listing, now):
    """FreezeState from `list table inet nfstate_freeze` in JSON (None listing: no table)."""
    if listing is None:
        return NOT_INSTALLED
    sets, chains, rules = [], [], []
    for item in listing.get("nftables", []):
        for kind, bucket in (("set", sets), ("chain", chains), ("rule", rules)):
            if kind in item and item[kind].get("table") == NFT_TABLE:
                bucket.append(item[kind])
    intact = (
        len(sets) == 1 and sets[0].get("name") == NFT_SET and sets[0].get("type") == "ifname"
        and "timeout" in sets[0].get("flags", [])
        and len(chains) == 1 and chains[0].get("name") == NFT_CHAIN and chains[0].get("hook") == "forward"
        and chains[0].get("type") == "filter"
        and len(rules) == 1 and rules[0].get("chain") == NFT_CHAIN and rules[0].get("expr") == nft_rule_expr()
    )
    devices, expiries = set(), set()
    for item in sets[0].get("elem", []) if sets else []:
        elem = item.get("elem", item) if isinstance(item, dict) else item
        devices.add(elem.get("val") if isinstance(elem, dict) else elem)
        expiries.add(_nft_element_expiry(elem, now))
    if None in expiries or len(expiries) > 1:
        intact = False  # an element without a timer, or elements out of step: rewrite on present
    finite = [when for when in expiries if when is not None]
    active = Freeze(tuple(sorted(devices)), min(finite)) if devices and finite else None
    return FreezeState(True, intact, active)


class NftablesRunner:
    """libnftables through Debian's python3-nftables binding when importable, else `nft -j -f -`."""

    def __init__(self, module):
        self.module = module
        self.library = None
        self.nft = None
        try:
            import nftables  # pylint: disable=import-outside-toplevel
            self.library = nftables.Nftables()
        except (ImportError, OSError):
            self.nft = module.get_bin_path("nft", required=True)

    @property
    def via(self):
        return "python3-nftables" if self.library else self.nft + " -j"

    def run(self, commands):
        if self.library is not None:
            rc, output, error = self.library.json_cmd(commands)
        else:
            rc, output, error = self.module.run_command([self.nft, "-j", "-f", "-"], data=json.dumps(commands))
            if rc == 0 and output.strip():
                output = json.loads(output)
        if rc != 0:
            raise FreezeError("nft (%s) failed: %s" % (self.via, (error or "").strip()))
        return output or {}

    def read(self, now):
        if not nft_has_table(self.run(nft_list_tables_commands())):
            return NOT_INSTALLED
        return parse_nft_table(self.run(nft_list_table_commands()), now)

    def freeze(self, wanted, now):
        self.run(nft_freeze_commands(wanted, now))

    def unfreeze(self):
        self.run(nft_unfreeze_commands())


# ---------------------------------------------------------------- iptables (save/restore)

IptablesView = namedtuple("IptablesView", "chain_exists jumps jump_on_top rules")
# rules: list of (device, expires_at) for rules of our shape, (None, None) for any other rule.


def ipt_datestop(expires_at):
    # xt_time (and iptables-nft's `meta time`) still match during the stop second itself.
    return datetime.fromtimestamp(expires_at - 1, timezone.utc).strftime(IPT_DATE_FORMAT)


def ipt_rule_args(device, expires_at):
    return ["-i", device, "-m", "conntrack", "--ctstate", "NEW",
            "-m", "time", "--datestop", ipt_datestop(expires_at), "-j", "DROP"]


def _parse_ipt_rule(tokens):
    """(device, expires_at) if `tokens` (after `-A CHAIN`) is a rule we render, else (None, None)."""
    if len(tokens) != 12:
        return None, None
    device, stop = tokens[1], tokens[9]
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


def combine_states(states):
    """One state over the address families: intact only if every family holds the same freeze."""
    actives = set(state.active for state in states)
    active = None
    candidates = [a for a in actives if a is not None]
    if candidates:
        active = max(candidates, key=lambda freeze: freeze.expires_at)
    return FreezeState(
        any(state.installed for state in states),
        all(state.intact for state in states) and len(actives) == 1,
        active,
    )


def ipv6_enabled():
    return os.path.isdir("/proc/sys/net/ipv6")


class IptablesRunner:
    """iptables-<backend>-save/-restore for IPv4, and ip6tables likewise when the host has IPv6:
    forwarded IPv6 connections would otherwise still open sessions during the freeze."""

    def __init__(self, module, backend, families=None):
        if backend not in ("legacy", "nft"):
            raise FreezeError("iptables_backend must be legacy or nft, got %r" % (backend,))
        self.module = module
        if families is None:
            families = ("iptables", "ip6tables") if ipv6_enabled() else ("iptables",)
        self.saves = [module.get_bin_path("%s-%s-save" % (family, backend), required=True) for family in families]
        self.restores = [module.get_bin_path("%s-%s-restore" % (family, backend), required=True)
                         for family in families]

    def _views(self):
        views = []
        for save in self.saves:
            # No `-t filter`: naming the table would load it (legacy) and so change the host on a
            # mere read; without it, save lists only the tables that exist.
            rc, out, err = self.module.run_command([save])
            if rc != 0:
                raise FreezeError("%s failed: %s" % (save, err.strip()))
            views.append(parse_iptables_save(out))
        return views

    def _restore(self, restore, text):
        rc, dummy, err = self.module.run_command([restore, "-w", "5", "--noflush"], data=text)
        if rc != 0:
            raise FreezeError("%s failed: %s\ninput was:\n%s" % (restore, err.strip(), text))

    def read(self, now):
        return combine_states([iptables_state(view, now) for view in self._views()])

    def freeze(self, wanted, now):
        for restore, view in zip(self.restores, self._views()):
            self._restore(restore, ipt_freeze_restore(wanted, view))

    def unfreeze(self):
        for restore, view in zip(self.restores, self._views()):
            if view.chain_exists or view.jumps:
                self._restore(restore, ipt_unfreeze_restore(view))


def runner_for(module, implementation, iptables_backend=None):
    if implementation == "nftables":
        return NftablesRunner(module)
    if implementation == "iptables":
        return IptablesRunner(module, iptables_backend)
    raise FreezeError("implementation must be iptables or nftables, got %r" % (implementation,))
