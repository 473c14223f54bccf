#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nat_agent
short_description: Start a cutover agent on a NAT host, driven later through a channel kept open
version_added: 0.2.0
description:
  - Uploads the cutover agent (the collection's module_utils as one zip, standard library only) into O(work_dir) on
    the host and starts it with the host's Python. The controller side is a relay that keeps the channel open after
    the task, so that M(nfstate.migration.cutover) drives the freeze window without a module run inside it.
  - The channel is the host's own connection command line, with the inventory's settings (user, port, key, jump host
    through C(ansible_ssh_common_args), become). Connections C(ssh) (key-based) and C(local) are supported.
  - A source's agent reads the host's conntrack events from the moment the task returns; start it before the
    pre-copy is gathered.
  - The agent ends by itself when its input ends (ansible-playbook gone, or the channel broken) or after O(deadline)
    seconds without a request, and then undoes what was not committed. A source serves again (unfrozen, its
    addresses back), a target keeps nothing of ours active (addresses released, sessions and our rules removed).
  - This is an action plugin.
author:
  - nfstate.migration contributors (!UNKNOWN)
options:
  role:
    description: Which end of the migration the host is.
    type: str
    required: true
    choices: [source, target]
  implementation:
    description: The host's implementation (as M(nfstate.migration.nat_provider) found it).
    type: str
    required: true
    choices: [iptables, nftables]
  iptables_backend:
    description: The host's iptables backend, with O(implementation=iptables).
    type: str
    default: auto
    choices: [auto, legacy, nft]
  deadline:
    description: Seconds without a request after which the agent undoes what is not committed and ends.
    type: int
    required: true
  selectors:
    description: The service's selectors (see M(nfstate.migration.nat_sessions)); a source's delta holds only those sessions.
    type: dict
  instance_name:
    description: The NAT instance's name in the delta.
    type: str
    default: nat
  precopy:
    description:
      - A target's pre-copy document on the host. Started before that document is applied, the agent then
        removes what the apply created (its sessions, our rules unless O(keep_rules)) if it undoes before the
        cutover's first request.
    type: path
  keep_rules:
    description: A target that held NAT rules of ours before the pre-copy keeps them when it undoes.
    type: bool
    default: false
  work_dir:
    description: Directory on the host for the agent's zip.
    type: path
    required: true
  socket_dir:
    description: Directory on the controller for the relay's socket and log (mode 0700).
    type: path
    required: true
attributes:
  check_mode:
    support: none
    description: No agent is started in check mode.
  diff_mode:
    support: none
    description: Nothing to show.
  platform:
    support: full
    platforms: posix
    description: Linux hosts reached by ssh or local connections.
"""

EXAMPLES = r"""
- name: Start the source's agent before the pre-copy
  nfstate.migration.nat_agent:
    role: source
    implementation: iptables
    deadline: 120
    work_dir: /var/lib/nfstate/nat-a
    socket_dir: "{{ playbook_dir }}/nfstate-snapshots/run/agents"
  register: source_agent
"""

RETURN = r"""
socket:
  description: The relay's Unix socket on the controller, for M(nfstate.migration.cutover).
  returned: success
  type: str
  sample: /srv/nfstate-snapshots/20261201T120000Z/agents/source-nat-a.sock
pid:
  description: The agent's process id on the host.
  returned: success
  type: int
  sample: 4242
role:
  description: The agent's role.
  returned: success
  type: str
  sample: source
"""
