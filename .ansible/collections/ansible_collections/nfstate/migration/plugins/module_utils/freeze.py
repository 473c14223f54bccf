# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freezing a network function: stop it from creating new sessions until a deadline.

A freeze drops forwarded packets that would *create* a conntrack entry (state NEW and not yet
confirmed) when they enter one of the NF's interfaces: new connections wait (TCP retransmits its
SYN) while every packet of an entry that exists keeps flowing, a one-way UDP stream included
(conntrack calls every packet of an entry that has not seen a reply NEW, so `ct state new` alone
would hold it too). Only the forward hook is touched: the host's own traffic (the controller's SSH
session) goes through input/output and is never held. The kernel lifts the freeze by itself at its
deadline, with no process left behind to do it; each implementation's provider renders it
(templates/freeze_*.py).

This module holds what every implementation shares: the freeze as data, options and deadline math.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import re
from collections import namedtuple
from datetime import datetime, timezone

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
