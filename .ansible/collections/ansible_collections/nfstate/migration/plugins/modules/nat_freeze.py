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
  - Freezes a NAT for a migration. Forwarded packets that would create a conntrack entry (state
    C(NEW) and not yet confirmed) and enter one of the NAT's interfaces are dropped, so new
    connections through the NAT wait (TCP clients retransmit their SYN and get through once the
    freeze lifts) while every packet of an entry that exists keeps flowing, one-way UDP streams
    included, and a snapshot taken meanwhile is complete.
  - Only forwarded traffic is held. The host's own traffic, such as the controller's SSH session,
    passes untouched even when it arrives on a frozen interface.
  - The freeze carries a deadline and the kernel lifts it by itself when the deadline passes, with
    no process left running, so a source whose controller disappears serves again on its own.
  - With O(implementation=nftables) the freeze is the table C(inet nfstate_freeze). Its rule
    C(ct state new ct status ! confirmed iifname @frozen_iifs drop) sits in a forward chain at priority C(filter - 10). The
    interfaces are elements of a set with a timeout, which the kernel expires on a monotonic clock,
    whatever the wall clock does, within the second before RV(expires_at). The freeze is set and refreshed
    in one atomic libnftables JSON transaction, through Debian's C(python3-nftables) binding when
    the host's Python can import it, else C(nft -j -f -).
  - With O(implementation=iptables) the freeze is the chain C(NFSTATE-FREEZE) in the filter table,
    jumped to by the first rule of C(FORWARD). It holds one C(DROP) rule per interface, limited by
    C(--ctstate NEW ! --ctstatus CONFIRMED) and by C(-m time --datestop) in UTC. It uses only iptables itself and is written in one
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
extends_documentation_fragment:
  - nfstate.migration.provider
  - nfstate.migration.provider.result
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
    interfaces:
      inside: ens4
  register: freeze

- name: Unfreeze (also removes what an expired freeze left behind), whatever the implementation
  nfstate.migration.nat_freeze:
    state: absent
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
before:
  description: The freeze before the task (frozen, interfaces, expires_at, remaining).
  returned: always
  type: dict
  sample: {"frozen": false, "interfaces": [], "expires_at": null, "remaining": 0}
after:
  description: The freeze after the task (or as predicted in check mode).
  returned: always
  type: dict
  sample: {"frozen": true, "interfaces": ["eth0", "eth1"], "expires_at": "2026-11-26T08:16:09Z", "remaining": 119}
commands:
  description: What was sent to the host (in check mode, what would be when freezing), as lines.
  returned: always
  type: list
  elements: str
  sample: ["# iptables-legacy-restore --noflush", "*filter", ":NFSTATE-FREEZE - [0:0]", "COMMIT"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nfstate.migration.plugins.module_utils.resources import nat_freeze
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import (
    PROVIDER_OPTIONS,
    provider_of,
    run_module,
)

ARGUMENT_SPEC = dict(
    PROVIDER_OPTIONS,
    state=dict(type="str", choices=["present", "absent"], default="present"),
    deadline=dict(type="int"),
    interfaces=dict(type="dict", options=dict(inside=dict(type="str"), outside=dict(type="str"))),
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[("state", "present", ("deadline", "interfaces"))],
        supports_check_mode=True,
    )
    run_module(module, lambda m: nat_freeze.run(provider_of(m), m.params, check_mode=m.check_mode,
                                                diff=m._diff, warn=m.warn))


if __name__ == "__main__":
    main()
