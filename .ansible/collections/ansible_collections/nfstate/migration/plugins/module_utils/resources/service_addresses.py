# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service addresses resource: claim (present) or release (absent) a network function's
addresses on this host, announcing what a claim adds. Used by the service_addresses module and by
the cutover agent, which claims and releases inside the freeze window without a module run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket

from ansible_collections.nfstate.migration.plugins.module_utils.service_addresses import (
    AddressError,
    Rtnetlink,
    can_announce,
    claim,
    collateral_removals,
    plan,
    promotes_secondaries,
    read_link,
    release,
    service_addresses,
    text,
)


def _device_indexes(wanted, state):
    """{device: ifindex}; a missing device is an error for a claim, and holds nothing for a release."""
    indexes = {}
    for device in set(a.device for a in wanted):
        try:
            indexes[device] = socket.if_nametoindex(device)
        except OSError:
            if state == "present":
                raise AddressError("there is no network device %s on this host" % device)
            indexes[device] = None
    return indexes


def _describe(address):
    return {"address": text(address), "role": address.role, "device": address.device}


def _held_service(wanted, held, indexes):
    """The wanted addresses held on their role's device, as the kernel has them (any prefix length)."""
    result = []
    for address in wanted:
        for entry in held:
            if entry.address == address.address and entry.ifindex == indexes.get(address.device):
                result.append({"address": text(entry), "role": address.role, "device": address.device})
    return result


def _diff_text(items):
    return "".join("%s %s %s\n" % (i["address"], i["role"], i["device"]) for i in items)


def run(params, check_mode=False, diff=False, warn=None):
    """Carry out one claim or release; the result dict, or AddressError naming what is wrong.

    params: addresses, interfaces, state (present/absent), announce (true/false/always), count, interval.
    """
    warn = warn or (lambda message: None)
    state = params["state"]
    if params["count"] < 1:
        raise AddressError("count must be at least 1 (announce: false sends nothing)")
    if params["interval"] < 0:
        raise AddressError("interval cannot be negative")
    wanted = service_addresses(params["addresses"], params["interfaces"])
    indexes = _device_indexes(wanted, state)
    for device, index in sorted(indexes.items()):
        if index is None:
            warn("there is no network device %s on this host: nothing to remove from it" % device)
    by_address = {a.address: a for a in wanted}

    with Rtnetlink() as netlink:
        held = netlink.addresses()
        work = plan([a for a in wanted if indexes[a.device] is not None], held, indexes, state)
        removed = [{"address": text(h), "role": by_address[h.address].role, "device": by_address[h.address].device}
                   for h in work.remove]
        if state == "absent":
            device_of = {index: device for device, index in indexes.items()}
            lost = collateral_removals(work.remove, held, lambda index: promotes_secondaries(device_of[index]))
            if lost:
                raise AddressError(
                    "removing a primary address would make the kernel delete %s as well; set "
                    "net.ipv4.conf.<device>.promote_secondaries=1 on this host first" % ", ".join(text(h) for h in lost))
            others = [h for h in held if h.address in by_address and h not in work.remove]
            for entry in others:
                warn("%s stays on another device (ifindex %d) of this host and may still draw its traffic"
                     % (text(entry), entry.ifindex))

        targets = []
        if state == "present" and params["announce"] != "false":
            chosen = work.add + (work.keep if params["announce"] == "always" else [])
            links = {}
            for address in chosen:
                if address.device not in links:
                    links[address.device] = read_link(address.device)
                link = links[address.device]
                if can_announce(link):
                    targets.append((address.address, link))
                else:
                    warn("%s is not an Ethernet device with ARP: %s is not announced" % (link.name, text(address)))

        changed = bool(work.add or work.remove)
        before = _held_service(wanted, held, indexes)
        timings = {"change_ms": None, "redirect_ms": None, "announce_ms": None}
        if check_mode:
            announced = [{"address": address, "device": link.name,
                          "method": "gratuitous-arp" if ":" not in address else "unsolicited-na"}
                         for address, link in targets]
            gone = set((r["address"], r["device"]) for r in removed)
            after = [i for i in before if (i["address"], i["device"]) not in gone] + [_describe(a) for a in work.add]
        else:
            if state == "present":
                announced, timings = claim(netlink, [(a, indexes[a.device]) for a in work.add], work.remove,
                                           targets, params["count"], params["interval"])
            else:
                announced, timings = [], release(netlink, work.remove)
            after = _held_service(wanted, netlink.addresses(), indexes)

    result = dict(changed=changed, added=[_describe(a) for a in work.add], removed=removed,
                  addresses=after, announced=announced, timings=timings)
    if diff:
        result["diff"] = {"before": _diff_text(before), "after": _diff_text(after)}
    return result
