#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cutover
short_description: Drive a migration's freeze window through agents started before it
version_added: 0.2.0
description:
  - The freeze window of a migration, in milliseconds. The source and target agents (M(nfstate.migration.nat_agent))
    first load the pre-copy, outside the window. Then the source freezes (only the creation of sessions stops) and
    takes the delta from its conntrack events, without dumping its table. The target applies the delta against the
    pre-copy it holds, checking every session with the collection's strict model checker first. The source confirms
    it has been frozen without a break since the delta. The target claims the service addresses, and the source
    releases them.
  - No module runs inside the window. Each step is timed on the controller's clock (RV(parts_ms)).
  - A freeze that lapsed between the delta and the claim (a stalled channel, the kernel's deadline) is taken again
    with a new delta, up to O(retries) times, else the task fails and nothing is claimed.
  - The agents commit only after the release. Until then a controller that dies leaves them to undo everything.
  - This is an action plugin. It needs nothing on the controller beyond the agents' sockets.
author:
  - nfstate.migration contributors (!UNKNOWN)
options:
  source_socket:
    description: The source agent's socket (RV(nfstate.migration.nat_agent#module:socket)).
    type: path
    required: true
  target_socket:
    description: The target agent's socket.
    type: path
    required: true
  precopy_source:
    description: The pre-copy's path on the source (the delta is taken against it).
    type: path
    required: true
  precopy_target:
    description: The pre-copy's path on the target (what the target holds before the delta).
    type: path
    required: true
  precopy_age:
    description: Seconds since the pre-copy was gathered.
    type: float
    default: 0
  interfaces:
    description: The source's devices by role (what the freeze holds).
    type: dict
    required: true
  deadline:
    description: Seconds after which the kernel lifts the source's freeze by itself.
    type: int
    required: true
  claim:
    description: Claim the addresses on the target and release them on the source (V(false) leaves the redirect to the caller).
    type: bool
    default: true
  addresses:
    description: The service addresses that move, each C({address, role}).
    type: list
    elements: dict
  source_interfaces:
    description: The source's devices by role (where the addresses are released).
    type: dict
  target_interfaces:
    description: The target's devices by role (where they are claimed).
    type: dict
  keep_target_rules:
    description: The target held rules of ours before; an undo keeps them.
    type: bool
    default: false
  delta_dest:
    description: Where on the controller to write the delta (gzip when the name ends in C(.gz)), after the window.
    type: path
  retries:
    description: How many times a lapsed freeze is taken again with a new delta.
    type: int
    default: 2
  alg_state:
    description:
      - Carry the ALG state in the delta (the masters' helper and sequence adjustment, the expectation table).
        V(false) moves the sessions alone, as a model without ALG state would (a control run).
    type: bool
    default: true
  firewall:
    description:
      - Carry the stateful firewall's learned state in the deltas too (set members with their remaining lifetime, quota
        use, counters, recent lists). The catch-up before the freeze carries it whole; inside the window, the members that
        changed since, read once the source is frozen (docs/firewall.md).
      - Needs O(source_interfaces) and O(target_interfaces).
    type: bool
    default: false
  recent_as_sets:
    description: On an nftables target, recent lists become sets (as the firewall module's option of that name).
    type: bool
    default: true
attributes:
  check_mode:
    support: none
    description: A dry run stops before the window.
  diff_mode:
    support: none
    description: Nothing to show.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller.
"""

EXAMPLES = r"""
- name: Cut over from nat-a to nat-b
  nfstate.migration.cutover:
    source_socket: "{{ source_agent.socket }}"
    target_socket: "{{ target_agent.socket }}"
    precopy_source: /var/lib/nfstate/nat-a/precopy.json.gz
    precopy_target: /var/lib/nfstate/nat-b/precopy.json.gz
    interfaces: {inside: in0, outside: out0}
    deadline: 120
    addresses: [{address: 192.0.2.254/24, role: inside}]
    source_interfaces: {inside: in0, outside: out0}
    target_interfaces: {inside: lan1, outside: wan1}
    delta_dest: nfstate-snapshots/20261201T120000Z/delta.json.gz
"""

RETURN = r"""
window_ms:
  description: From the freeze request to the target's claim (or to the check without a claim), on the controller's clock.
  returned: success
  type: float
  sample: 41.3
parts_ms:
  description: Each step's end, in ms from the freeze request (frozen, delta_taken, applied, checked, claimed, released).
  returned: success
  type: dict
  sample: {"freeze_sent": 0.0, "frozen": 12.1, "delta_taken": 20.4, "applied": 31.0, "checked": 33.2, "claimed": 41.3, "released": 44.0}
agent_ms:
  description: How long each step took on its agent (freeze, delta, apply, check, claim, release), in ms; the rest of a part is the channel.
  returned: success
  type: dict
  sample: {"freeze": 9.1, "delta": 6.2, "apply": 5.0, "check": 0.4, "claim": 1.2, "release": 0.8}
marks:
  description: The same moments as epoch seconds (controller clock), for the report.
  returned: success
  type: dict
  sample: {"freeze_sent": 1764590000.12, "claimed": 1764590000.16}
delta:
  description:
    - What the delta held (added, removed, refreshed), and whether events were lost (then the source compared its whole table).
    - C(expectations) the ALG expectations it carried, C(expectations_ms) what reading the source's expectation table took,
      C(alg_not_carried) the ALG state it could not carry, with the reason.
    - With O(firewall), C(firewall) what the source's read found changed (set elements added, removed, refreshed, recent
      lists, counts, C(read) V(whole) or V(members), C(ms) the read's own time) and C(applied_firewall) what the target
      wrote (C(written) V(whole) or V(members), C(ms) the write's own time), when it changed. Inside the window both run
      beside other work (the freeze's read-back, the sessions' creation).
  returned: success
  type: dict
  sample: {"added": 12, "removed": 3, "refreshed": 2, "lost_events": false, "expectations": 1, "expectations_ms": 0.4,
           "alg_not_carried": []}
applied:
  description: What the target did with the delta.
  returned: success
  type: dict
  sample: {"created": 12, "deleted": 3, "refreshed": 2, "sessions": 14, "removed": 3, "expectations": 1, "expectations_created": 0}
attempts:
  description: Each freeze and delta taken, with whether the source held the freeze until the check.
  returned: success
  type: list
  elements: dict
  sample: [{"attempt": 1, "frozen": true, "remaining_ms": 119950, "created_since_delta": 0}]
prepared:
  description: Sessions of the pre-copy each agent loaded.
  returned: success
  type: dict
  sample: {"source": 1000, "target": 1000}
claimed:
  description: The claim's timings on the target, and how long after the delta it came.
  returned: when claim is true
  type: dict
  sample: {"timings": {"change_ms": 0.3, "redirect_ms": 0.4, "announce_ms": 0.4}, "since_delta_ms": 2}
"""
