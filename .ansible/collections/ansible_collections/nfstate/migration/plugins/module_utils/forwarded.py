# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's own addresses, which tell the firewall's forwarded sessions from the host's own.

An untranslated session with one of these at an end is a connection of the host itself (its SSH
session with the controller, say) and never migrates; one between two other addresses was
forwarded through the host, and belongs to its firewall (selector `forwarded`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_events import MARKER_DST, MARKER_SRC
from ansible_collections.nfstate.migration.plugins.module_utils.service_addresses import Rtnetlink
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import wants_forwarded


def local_addresses():
    """Every address of this network namespace, read over rtnetlink, and the event barrier's
    marker addresses (its entry is never a session)."""
    with Rtnetlink() as netlink:
        held = netlink.addresses()
    return frozenset(item.address for item in held) | frozenset((MARKER_SRC, MARKER_DST))


def addresses_for(selectors):
    """The host's addresses when the selectors take forwarded sessions, else none (not read)."""
    return local_addresses() if wants_forwarded(selectors) else frozenset()
