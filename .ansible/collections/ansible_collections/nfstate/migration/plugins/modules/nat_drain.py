#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: nat_drain
short_description: Wait until a NAT host that gave up its service addresses forwards nothing more
description:
  - After a redirect, neighbours whose cache still points at the old NAT host keep sending to it for a while. While
    the host holds its sessions it forwards those packets translated as before; deleting the sessions earlier would
    break their connections. This module waits until the kernel's count of forwarded packets (IP-MIB
    C(ForwDatagrams) of IPv4 and IPv6, C(/proc/net/snmp) and C(/proc/net/snmp6) of the host's network namespace)
    has not moved for O(quiet) seconds, or until O(grace) seconds have passed, whichever comes first.
  - The count covers everything the host forwards. On a host that forwards other traffic too the wait lasts the
    whole grace period.
  - It changes nothing on the host.
version_added: 0.1.0
author:
  - nfstate.migration contributors (@nfstate)
options:
  quiet:
    description: Seconds without a forwarded packet after which the neighbours are taken to have switched.
    type: float
    default: 2.0
  grace:
    description: The longest wait, in seconds; V(0) does not wait.
    type: float
    default: 30.0
attributes:
  check_mode:
    support: full
    description: Waits the same way; it never changes anything.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  platform:
    support: full
    platforms: posix
    description: Linux; reads the network namespace's IP-MIB counters under /proc/net.
"""

EXAMPLES = r"""
- name: Wait until the old NAT host's neighbours have switched (at most a minute)
  nfstate.migration.nat_drain:
    quiet: 2
    grace: 60
"""

RETURN = r"""
quiet:
  description: Whether the quiet interval was reached (V(false) when the grace period ran out first).
  returned: always
  type: bool
waited:
  description: Seconds waited.
  returned: always
  type: float
forwarded:
  description: Packets the host forwarded while it waited.
  returned: always
  type: int
last_packet:
  description: Seconds after the start at which the last forwarded packet was counted; null if none was.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nfstate.migration.plugins.module_utils.drain import forwarded_packets, wait_quiet


def main():
    module = AnsibleModule(
        argument_spec=dict(quiet=dict(type="float", default=2.0), grace=dict(type="float", default=30.0)),
        supports_check_mode=True,
    )
    quiet, grace = module.params["quiet"], module.params["grace"]
    if quiet <= 0 or grace < 0:
        module.fail_json(msg="quiet must be positive and grace not negative, got quiet=%s grace=%s" % (quiet, grace))
    try:
        result = wait_quiet(forwarded_packets, quiet, grace)
    except (IOError, OSError, ValueError) as exc:
        module.fail_json(msg="cannot read the forwarding counters: %s" % exc)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
