# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's own addresses, which tell the firewall's forwarded sessions from the host's own.

An untranslated session with one of these at an end is a connection of the host itself (its SSH
session with the controller, say) and never migrates; one between two other addresses was
forwarded through the host, and belongs to its firewall (selector `forwarded`), unless it is
addressed to a multicast group or a broadcast address, which are delivered to the host and never
forwarded (session_model.forwarded_ends).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_events import MARKER_DST, MARKER_SRC
from ansible_collections.nfstate.migration.plugins.module_utils.service_addresses import Rtnetlink
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import wants_forwarded


def directed_broadcast(address, prefixlen):
    """The broadcast address of an IPv4 address's network (None for IPv6, /31 and /32, which
    have none): a datagram sent to it is the host's, as one sent to its own address."""
    if ":" in address or prefixlen >= 31:
        return None
    return str(ipaddress.ip_interface("%s/%d" % (address, prefixlen)).network.broadcast_address)


def local_addresses():
    """Every address of this network namespace, read over rtnetlink, with the broadcast address
    of each IPv4 network, and the event barrier's marker addresses (its entry is never a session)."""
    with Rtnetlink() as netlink:
        held = netlink.addresses()
    found = set(item.address for item in held)
    found.update(b for b in (directed_broadcast(item.address, item.prefixlen) for item in held) if b)
    return frozenset(found) | frozenset((MARKER_SRC, MARKER_DST))


def addresses_for(selectors):
    """The host's addresses when the selectors take forwarded sessions, else none (not read)."""
    return local_addresses() if wants_forwarded(selectors) else frozenset()
