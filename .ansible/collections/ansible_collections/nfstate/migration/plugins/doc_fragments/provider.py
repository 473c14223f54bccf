# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The implementation a module works through, shared by nat_rules and nat_freeze.
    DOCUMENTATION = r"""
options:
  implementation:
    description:
      - The packet filter that implements the network function on this host.
      - V(auto) detects it. Our own table or chains come first, then whichever implementation holds
        NAT rules, else V(nftables) where C(nft) is installed.
      - Must be given with the states C(parsed) and C(rendered), which read no host.
    type: str
    choices: [auto, iptables, nftables]
    default: auto
  iptables_backend:
    description:
      - With O(implementation=iptables), which iptables to use. V(legacy) is the classic x_tables
        (C(iptables-legacy-*)), V(nft) the nf_tables based C(iptables-nft-*).
      - V(auto) detects it. The backend whose nat table holds rules wins, else the host's default
        C(iptables). A host where both hold NAT rules is an error that asks which one.
    type: str
    choices: [auto, legacy, nft]
    default: auto
"""

    # The result every resource module returns.
    RESULT = r"""
options: {}
notes:
  - Every module of the collection that changes a host returns the same shape. RV(before) and
    RV(after) hold the resource as structured data, RV(commands) is a list of lines. They are what
    was sent to the host, or in check mode what would be. In diff mode, the diff of before and after.
"""
