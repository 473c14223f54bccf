#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: nat_freeze
short_description: Stop a NAT from creating new sessions until a deadline
description:
  - Freezes a NAT for a migration. Forwarded packets in conntrack state C(NEW) that enter one of the
    NAT's interfaces are dropped, so new connections through the NAT wait (TCP clients retransmit
    their SYN and get through once the freeze lifts) while established sessions keep flowing and a
    snapshot taken meanwhile is complete.
  - Only forwarded traffic is held. The host's own traffic, such as the controller's SSH session,
    passes untouched even when it arrives on a frozen interface.
  - The freeze carries a deadline and the kernel lifts it by itself when the deadline passes, with
    no process left running, so a source whose controller disappears serves again on its own.
  - With O(implementation=nftables) the freeze is the table C(inet nfstate_freeze). Its rule
    C(ct state new iifname @frozen_iifs drop) sits in a forward chain at priority C(filter - 10). The
    interfaces are elements of a set with a timeout, which the kernel expires on a monotonic clock,
    whatever the wall clock does, within the second before RV(expires_at). The freeze is set and refreshed
    in one atomic libnftables JSON transaction, through Debian's C(python3-nftables) binding when
    the host's Python can import it, else C(nft -j -f -).
  - With O(implementation=iptables) the freeze is the chain C(NFSTATE-FREEZE) in the filter table,
    jumped to by the first rule of C(FORWARD). It holds one C(DROP) rule per interface, limited by
    C(-m time --datestop) in UTC. It uses only iptables itself and is written in one
    C(iptables-restore --noflush) commit. The kernel checks the wall clock at one-second
    resolution and lifts the freeze at RV(expires_at), for the legacy backend (C(xt_time)) and for
    the nft backend (translated into a native C(meta time) range) alike. The rules are also written with ip6tables when the host has
    IPv6.
  - Unfreezing removes exactly these objects and nothing else of the host's ruleset. After a freeze
    has lifted itself, its inert objects stay until O(state=absent) removes them.
version_added: "1.0.0"
author:
  - nfstate.migration contributors (@nfstate)
options:
  state:
    description:
      - V(present) freezes the NAT, or moves the deadline of a freeze already in place to O(deadline)
        seconds from now. The result is V(changed) when the expiry moves by a second or more, or
        when the frozen interfaces change.
      - V(absent) removes the freeze and whatever is left of an expired one.
    type: str
    choices: [present, absent]
    default: present
  deadline:
    description:
      - Seconds from now after which the kernel lifts the freeze by itself. Required with
        O(state=present). At most one day (86400).
    type: int
  implementation:
    description:
      - The packet filter that implements the NAT on this host. The freeze uses the same one.
    type: str
    choices: [iptables, nftables]
    required: true
  iptables_backend:
    description:
      - Which iptables binaries to use, C(iptables-legacy-*) or C(iptables-nft-*). Required with
        O(implementation=iptables).
    type: str
    choices: [legacy, nft]
  interfaces:
    description:
      - The NAT's network devices by role. New connections entering either one are held. Required
        with O(state=present), with at least one role given.
    type: dict
    suboptions:
      inside:
        description: The device facing the internal (translated) side.
        type: str
      outside:
        description: The device facing the external side.
        type: str
attributes:
  check_mode:
    support: full
    description: Reads the host and reports what would change without touching it.
  diff_mode:
    support: full
    description: Shows the freeze (frozen, interfaces, expiry) before and after.
  platform:
    support: full
    platforms: posix
    description: Linux with nftables or iptables; needs root.
notes:
  - Only TCP clients wait transparently. Other new flows (UDP, ICMP) are dropped while frozen and
    depend on their own retries.
  - The iptables deadline follows the wall clock. A clock step while frozen moves the moment the
    freeze lifts. The nftables one does not.
seealso:
  - module: community.general.iptables_state
    description: Another way to restore a packet filter when the controller goes away, with an
      action plugin and a process that waits on the host.
"""

EXAMPLES = r"""
- name: Freeze the NAT for at most two minutes while the last snapshot is taken
  nfstate.migration.nat_freeze:
    state: present
    deadline: 120
    implementation: nftables
    interfaces:
      inside: eth1
      outside: eth0

- name: Freeze a classic iptables (legacy) NAT, inside interface only
  nfstate.migration.nat_freeze:
    deadline: 60
    implementation: iptables
    iptables_backend: legacy
    interfaces:
      inside: ens4
  register: freeze

- name: Unfreeze (also removes what an expired freeze left behind)
  nfstate.migration.nat_freeze:
    state: absent
    implementation: iptables
    iptables_backend: legacy
"""

RETURN = r"""
frozen:
  description: Whether new sessions are held now (after the task, or as predicted in check mode).
  returned: always
  type: bool
  sample: true
expires_at:
  description: When the kernel lifts the freeze, ISO 8601 in UTC; null when not frozen.
  returned: always
  type: str
  sample: "2026-11-26T08:16:09Z"
remaining:
  description: Whole seconds until the freeze lifts; 0 when not frozen.
  returned: always
  type: int
  sample: 119
interfaces:
  description: The devices whose new connections are held; empty when not frozen.
  returned: always
  type: list
  elements: str
  sample: [eth0, eth1]
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nfstate.migration.plugins.module_utils.nat_freeze import (
    Freeze,
    FreezeError,
    describe,
    expiry_for,
    interface_devices,
    needs_freeze,
    runner_for,
)


def _verify_frozen(runner, wanted):
    """Read back what the kernel holds: a freeze without a working deadline must never stay."""
    now = time.time()
    state = runner.read(now)
    active = state.active
    if state.intact and active is not None and active.interfaces == wanted.interfaces \
            and abs(active.expires_at - wanted.expires_at) <= 1 and active.expires_at > now:
        return state
    runner.unfreeze()
    raise FreezeError("the freeze read back does not match what was written (%r, wanted %r): "
                      "removed it again" % (state, wanted))


def run(module):
    params = module.params
    now = time.time()
    if params["state"] == "present":
        wanted = Freeze(interface_devices(params["interfaces"]), expiry_for(params["deadline"], now))
    runner = runner_for(module, params["implementation"], params["iptables_backend"])
    before = runner.read(now)

    if params["state"] == "present":
        for device in wanted.interfaces:
            if not os.path.exists(os.path.join("/sys/class/net", device)):
                module.warn("interface %s does not exist (yet): its new connections will be held once it does" % device)
        changed = needs_freeze(before, wanted)
        after = before
        if changed:
            if module.check_mode:
                after = before._replace(installed=True, intact=True, active=wanted)
            else:
                runner.freeze(wanted, time.time())
                after = _verify_frozen(runner, wanted)
    else:
        changed = before.installed
        after = before
        if changed:
            if module.check_mode:
                after = before._replace(installed=False, intact=True, active=None)
            else:
                runner.unfreeze()
                after = runner.read(time.time())
                if after.installed:
                    raise FreezeError("the freeze is still installed after removing it: %r" % (after,))

    now = time.time()
    result = dict(changed=changed, **describe(after, now))
    if module._diff:
        result["diff"] = {"before": describe(before, now), "after": describe(after, now)}
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            deadline=dict(type="int"),
            implementation=dict(type="str", choices=["iptables", "nftables"], required=True),
            iptables_backend=dict(type="str", choices=["legacy", "nft"]),
            interfaces=dict(type="dict", options=dict(
                inside=dict(type="str"),
                outside=dict(type="str"),
            )),
        ),
        required_if=[
            ("state", "present", ("deadline", "interfaces")),
            ("implementation", "iptables", ("iptables_backend",)),
        ],
        supports_check_mode=True,
    )
    module.run_command_environ_update = dict(LANG="C", LC_ALL="C", LC_MESSAGES="C", LC_CTYPE="C")
    try:
        module.exit_json(**run(module))
    except FreezeError as error:
        module.fail_json(msg=str(error))


if __name__ == "__main__":
    main()
