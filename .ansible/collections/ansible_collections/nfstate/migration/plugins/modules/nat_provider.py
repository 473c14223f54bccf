#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: nat_provider
short_description: Find the implementation that serves a NAT, and whether the host has what it needs
version_added: "0.2.0"
description:
  - Reads, without changing anything, which implementation serves the host's NAT (or takes the one
    given), which iptables backend, whether the programs that implementation runs are present,
    and whether the kernel tracks connections in this network namespace.
  - The nat role runs it once per host and keeps the answer, so that its entry points are cheap.
author:
  - nfstate.migration contributors (@nfstate)
extends_documentation_fragment:
  - nfstate.migration.provider
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Nothing changes.
  platform:
    support: full
    platforms: posix
    description: Linux with nftables or iptables.
options:
  tool_paths:
    description:
      - Look for the programs in these directories only. By default they are looked for in C(PATH) and the usual
        C(sbin) and C(bin) directories.
    type: list
    elements: path
"""

EXAMPLES = r"""
- name: Which implementation serves this NAT, and is anything missing?
  nfstate.migration.nat_provider:
  register: provider

- name: Check an iptables host with its backend given
  nfstate.migration.nat_provider:
    implementation: iptables
    iptables_backend: nft
"""

RETURN = r"""
implementation:
  description: The implementation, as given or detected.
  returned: always
  type: str
  sample: iptables
iptables_backend:
  description: The iptables backend, as given or detected (iptables only).
  returned: when the implementation is iptables and its programs are there
  type: str
  sample: legacy
missing_programs:
  description: Programs the implementation runs that are not on the host.
  returned: always
  type: list
  elements: str
  sample: []
conntrack:
  description: Whether the kernel tracks connections in this network namespace (nf_conntrack is loaded).
  returned: always
  type: bool
  sample: true
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import ProviderError, has_program
from ansible_collections.nfstate.migration.plugins.module_utils.providers.iptables import BACKENDS, backend_programs
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import (
    PROVIDER_OPTIONS,
    provider_of,
    run_module,
)

CONNTRACK = "/proc/sys/net/netfilter/nf_conntrack_max"


def finder(module):
    """Whether a program is there: in the given directories only, or where the providers look."""
    paths = module.params.get("tool_paths")
    if paths:
        return lambda name: any(os.access(os.path.join(path, name), os.X_OK) for path in paths)
    return lambda name: has_program(module, name)


def run(module):
    result = dict(changed=False, missing_programs=[], conntrack=os.path.exists(CONNTRACK))
    params = module.params
    present = finder(module)
    if params["implementation"] == "iptables" and params["iptables_backend"] in BACKENDS:
        # A backend given: its programs are checked before anything is run.
        missing = [name for name in backend_programs(params["iptables_backend"]) if not present(name)]
        if missing:
            result.update(implementation="iptables", missing_programs=missing)
            return result
    if params.get("tool_paths") and params["implementation"] in ("iptables", "nftables"):
        wanted = backend_programs("legacy") if params["implementation"] == "iptables" else ["nft"]
        missing = [name for name in wanted if not present(name)]
        if params["implementation"] == "iptables" and missing:
            missing = [name for name in backend_programs("nft") if not present(name)] and missing
        if missing:
            result.update(implementation=params["implementation"], missing_programs=missing)
            return result
    try:
        provider = provider_of(module)
        settings = provider.settings()
    except ProviderError as exc:
        if params["implementation"] == "iptables":
            result.update(implementation="iptables",
                          missing_programs=[name for name in backend_programs("legacy") if not present(name)],
                          msg=str(exc))
            return result
        raise
    result.update(settings, implementation=provider.name,
                  missing_programs=[name for name in provider.required_programs() if not present(name)])
    return result


def main():
    module = AnsibleModule(argument_spec=dict(PROVIDER_OPTIONS, tool_paths=dict(type="list", elements="path")),
                           supports_check_mode=True)
    run_module(module, run)


if __name__ == "__main__":
    main()
