# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The freeze resource: present (frozen until a deadline) or absent, through the host's provider."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.nfstate.migration.plugins.module_utils.freeze import (
    Freeze,
    FreezeError,
    describe,
    expiry_for,
    interface_devices,
    needs_freeze,
)
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import ResourceError, diff_text


def verify_frozen(provider, wanted):
    """Read back what the kernel holds: a freeze without a working deadline must never stay."""
    now = time.time()
    state = provider.read_freeze(now)
    active = state.active
    if state.intact and active is not None and active.interfaces == wanted.interfaces \
            and abs(active.expires_at - wanted.expires_at) <= 1 and active.expires_at > now:
        return state
    provider.unfreeze()
    raise ResourceError("the freeze read back does not match what was written (%r, wanted %r): "
                        "removed it again" % (state, wanted))


def run(provider, params, check_mode=False, diff=False, warn=None):
    warn = warn or (lambda message: None)
    now = time.time()
    present = params["state"] == "present"
    try:
        wanted = Freeze(interface_devices(params["interfaces"]), expiry_for(params["deadline"], now)) if present else None
    except FreezeError as exc:
        raise ResourceError(str(exc))
    before = provider.read_freeze(now)
    payload = None
    if present:
        for device in wanted.interfaces:
            if not os.path.exists(os.path.join("/sys/class/net", device)):
                warn("interface %s does not exist (yet): its new connections will be held once it does" % device)
        changed = needs_freeze(before, wanted)
        after = before
        if changed:
            if check_mode:
                payload = provider.render_freeze(wanted, now)
                after = before._replace(installed=True, intact=True, active=wanted)
            else:
                payload = provider.freeze(wanted, time.time())
                after = verify_frozen(provider, wanted)
    else:
        changed = before.installed
        after = before
        if changed:
            if check_mode:
                after = before._replace(installed=False, intact=True, active=None)
            else:
                payload = provider.unfreeze()
                after = provider.read_freeze(time.time())
                if after.installed:
                    raise ResourceError("the freeze is still installed after removing it: %r" % (after,))
    now = time.time()
    result = dict(changed=changed, before=describe(before, now), after=describe(after, now),
                  commands=provider.command_lines(payload), **describe(after, now))
    if diff:
        result["diff"] = diff_text("freeze", result["before"], result["after"])
    result.update(provider.settings())
    return result
