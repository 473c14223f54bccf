#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: service_addresses
short_description: Claim or release the addresses that move with a network function, and announce them
description:
  - Puts the service addresses of a network function (the NAT's gateway address on the inside, its
    public address on the outside, ...) on this host's devices, or takes them off. Each address names
    the role of the interface it belongs to. O(interfaces) maps the roles to this host's devices,
    which may be named differently on the source and on the target of a migration.
  - With O(state=present), right after adding the addresses the module tells the link about them. For
    an IPv4 address it sends a gratuitous ARP (an ARP announcement, RFC 5227). For an IPv6 address it
    sends an unsolicited neighbour advertisement to all nodes with the Override flag set (RFC 4861). Neighbours
    and switches then send the traffic for these addresses to this host at once, without waiting for
    their caches to expire.
  - IPv6 addresses are added with C(nodad). They are usable at once, without the second or more
    that duplicate address detection takes. Detection would also fail on purpose here, because the
    source still holds the address for a moment.
  - Addresses are read and changed through rtnetlink (a C(NETLINK_ROUTE) socket), all in one
    request with an answer per address. The announcements are frames built by the module and
    written to raw sockets (C(AF_PACKET) for ARP, C(ICMPv6) with hop limit 255 for neighbour
    discovery). The sockets are opened and the frames built before the first address is added. The
    time from the addresses added to the last announcement sent, RV(timings.redirect_ms), is then
    mostly the kernel's own work, well under a millisecond to a few milliseconds, where starting an
    announcement tool such as C(arping) costs tens of milliseconds per address.
  - Runs with Python's standard library only.
version_added: "1.0.0"
author:
  - nfstate.migration contributors (!UNKNOWN)
options:
  addresses:
    description:
      - The service addresses, each with its prefix length and the role of its interface.
      - A bare address without prefix length is a host address (C(/32) or C(/128)).
    type: list
    elements: dict
    required: true
    suboptions:
      address:
        description: The address and prefix length, for example V(192.0.2.254/24) or V(2001:db8::fe/64).
        type: str
        required: true
      role:
        description: The role of the interface that carries the address.
        type: str
        required: true
        choices: [inside, outside]
  interfaces:
    description:
      - This host's devices by role. Every role used in O(addresses) needs a device.
    type: dict
    required: true
    suboptions:
      inside:
        description: The device facing the internal (translated) side.
        type: str
      outside:
        description: The device facing the external side.
        type: str
  state:
    description:
      - V(present) adds the addresses that this host does not hold yet on their role's device
        (claim), then announces them as O(announce) says.
      - V(absent) removes the addresses from their role's device, whatever their prefix length
        there (release). An address already gone is not an error. Nothing is announced.
    type: str
    choices: [present, absent]
    default: present
  announce:
    description:
      - Which addresses to announce with O(state=present).
      - V(true) announces the addresses this run added. A run that finds every address in place
        changes nothing and sends nothing.
      - V(always) also announces the addresses that were already in place. Use it to make sure
        the neighbours point at this host, for example after a rollback or when the previous holder
        answered a neighbour during the overlap. The result stays unchanged when no address was
        added.
      - V(false) announces nothing.
    type: str
    choices: ["true", "false", always]
    default: "true"
  count:
    description:
      - How many rounds of announcements to send. Each round sends one frame per address, back to
        back without waiting. Repeated rounds are for frames lost on a busy or briefly
        reconfiguring link.
    type: int
    default: 3
  interval:
    description:
      - Seconds between two rounds of announcements. Only the first round counts for the redirect
        gap; the repeats only lengthen the task.
    type: float
    default: 0.1
attributes:
  check_mode:
    support: full
    description: Reads the host's addresses and reports what would be added, removed and announced, touching nothing.
  diff_mode:
    support: full
    description: Shows the service addresses this host holds, one per line with role and device, before and after.
  platform:
    support: full
    platforms: posix
    description: Linux; needs C(CAP_NET_ADMIN) to change addresses and C(CAP_NET_RAW) to announce them (root has both).
notes:
  - An address found on another device of this host, or with another prefix length, makes O(state=present)
    fail before anything changes. The module does not take an address from somewhere it did not put it.
  - Deleting a primary IPv4 address also deletes the secondary addresses of its subnet on that device
    unless C(net.ipv4.conf.<device>.promote_secondaries) is set. O(state=absent) fails before changing
    anything when that would remove an address that is not in O(addresses).
  - Devices without ARP (C(NOARP), or not Ethernet) get no announcement, with a warning. Their
    addresses are still added.
  - While two hosts hold an address, the one that announced last receives the traffic, and an IPv6
    neighbour that still holds the address logs that someone else advertises it. Claim on the target
    first, then release on the source. The nfstate.migration.redirect_addresses role explains why this
    loses nothing.
seealso:
  - name: RFC 5227, ARP announcements
    description: The form of gratuitous ARP sent here.
    link: https://www.rfc-editor.org/rfc/rfc5227#section-2.3
  - name: RFC 4861, unsolicited neighbor advertisements
    description: The IPv6 announcement sent here.
    link: https://www.rfc-editor.org/rfc/rfc4861#section-7.2.6
"""

EXAMPLES = r"""
- name: Claim the service addresses on the target and announce them
  nfstate.migration.service_addresses:
    addresses:
      - {address: 192.0.2.254/24, role: inside}
      - {address: "2001:db8:1::fe/64", role: inside}
      - {address: 203.0.113.10/24, role: outside}
    interfaces:
      inside: ens4
      outside: ens3
  register: claimed

- name: Release them on the source, whose devices are named differently
  nfstate.migration.service_addresses:
    addresses:
      - {address: 192.0.2.254/24, role: inside}
      - {address: "2001:db8:1::fe/64", role: inside}
      - {address: 203.0.113.10/24, role: outside}
    interfaces:
      inside: eth1
      outside: eth0
    state: absent

- name: Re-announce addresses already in place, five rounds 20 ms apart
  nfstate.migration.service_addresses:
    addresses: "{{ nfstate_addresses }}"
    interfaces: "{{ nfstate_interfaces }}"
    announce: always
    count: 5
    interval: 0.02
"""

RETURN = r"""
added:
  description: The addresses this run added (or would add, in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: Address and prefix length.
      type: str
    role:
      description: The role of its interface.
      type: str
    device:
      description: The device it was added to.
      type: str
  sample: [{"address": "192.0.2.254/24", "role": "inside", "device": "ens4"}]
removed:
  description:
    - The addresses this run removed (or would remove), with the prefix length they had.
    - With O(state=present), an IPv6 address whose duplicate address detection had failed is removed and added again.
  returned: always
  type: list
  elements: dict
  sample: [{"address": "192.0.2.254/24", "role": "inside", "device": "eth1"}]
addresses:
  description: The service addresses this host holds on their role's device after the run, read back from the kernel (predicted in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"address": "192.0.2.254/24", "role": "inside", "device": "ens4"},
           {"address": "2001:db8:1::fe/64", "role": "inside", "device": "ens4"}]
announced:
  description: The addresses announced (or that would be), each with its device and method (V(gratuitous-arp) or V(unsolicited-na)).
  returned: always
  type: list
  elements: dict
  sample: [{"address": "192.0.2.254", "device": "ens4", "method": "gratuitous-arp"},
           {"address": "2001:db8:1::fe", "device": "ens4", "method": "unsolicited-na"}]
timings:
  description: Durations in milliseconds measured on this host; each is null when its step did not happen (always in check mode).
  returned: always
  type: dict
  contains:
    change_ms:
      description: From the netlink request sent to the kernel's last answer, for the additions or the removals.
      type: float
      sample: 0.412
    redirect_ms:
      description:
        - From the request adding the addresses sent to the kernel (or, when none was added, the first announcement)
          to the last frame of the first announcement round. This is the host's share of the redirect gap.
      type: float
      sample: 0.538
    announce_ms:
      description: From the addresses added to the last frame of the last round, repeats included.
      type: float
      sample: 200.871
  sample: {"change_ms": 0.412, "redirect_ms": 0.538, "announce_ms": 200.871}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nfstate.migration.plugins.module_utils.resources.service_addresses import run
from ansible_collections.nfstate.migration.plugins.module_utils.service_addresses import AddressError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            addresses=dict(type="list", elements="dict", required=True, options=dict(
                address=dict(type="str", required=True),
                role=dict(type="str", required=True, choices=["inside", "outside"]),
            )),
            interfaces=dict(type="dict", required=True, options=dict(
                inside=dict(type="str"),
                outside=dict(type="str"),
            )),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            announce=dict(type="str", choices=["true", "false", "always"], default="true"),
            count=dict(type="int", default=3),
            interval=dict(type="float", default=0.1),
        ),
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module.params, check_mode=module.check_mode, diff=module._diff, warn=module.warn))
    except AddressError as error:
        module.fail_json(msg=str(error))


if __name__ == "__main__":
    main()
