#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: nat_rules
short_description: Gather and apply NAT rules as an ietf-nat model document, with iptables or nftables
version_added: "0.1.0"
description:
  - Reads a host's NAT rules (source NAT to an address pool with a port range, masquerade,
    destination NAT / port forwards, and their matches) into the implementation-agnostic model of
    this collection (RFC 8512 C(ietf-nat) policies, augmented by C(nfstate-nat-rules)), and makes a
    host serve the rules of such a document, whichever implementation it was gathered from.
  - One policy holds one rule, so the rule order is kept. Interfaces are named by role
    (C(inside), C(outside), C(loopback)); O(interfaces) maps them to this host's devices (C(loopback)
    defaults to C(lo)).
  - Exemptions (C(-j RETURN), C(accept) in a nat chain), C(redirect), the C(random),
    C(fully-random) and C(persistent) flags, negated matches, address ranges and sets, several
    protocols per rule and rule comments are carried; counters are read but their values do not
    move (docs/model.md lists what each implementation can render).
  - The rules live in chains or a table of our own, so the host's other rules are never touched.
    With O(implementation=iptables) these are the C(NFSTATE-PRE) and C(NFSTATE-POST) chains of the
    C(nat) table (IPv4 and IPv6), entered by one jump inserted first in C(PREROUTING) and
    C(POSTROUTING). With O(implementation=nftables) it is the table C(inet nfstate_nat), with the
    nat chains C(prerouting) (priority dstnat) and C(postrouting) (priority srcnat).
  - A rule in our chains or table (or, with O(include_builtin_chains), in the chains read besides)
    that the model cannot express is an error that lists the rule, unless O(skip_unsupported=true).
  - Resource-module states. V(gathered) reads the host, V(parsed) reads O(running_config)
    without touching a host, V(rendered) returns what would be sent to the host for an empty
    host without touching it, V(merged) adds the rules of the document that are missing,
    V(replaced) replaces, rule by rule, the host's rule that matches the same packets (same hook,
    family, interfaces, addresses, protocol and ports) by the document's, adds the others and keeps
    the host's remaining rules; V(overridden) makes our chains hold exactly the document's rules;
    V(deleted) removes the document's rules, or everything of ours when no document is given.
  - The result of a change is read back from the host; C(changed) compares that with what was
    there before, so a second identical run reports no change.
  - The application-level gateways (ALGs, the kernel's connection-tracking helpers for FTP, TFTP, SIP, ...)
    travel as one policy of their own holding RFC 8512 C(algs) only, beside the rules. With
    O(implementation=iptables) they are the raw-table chain C(NFSTATE-ALG) (C(-j CT --helper)), entered
    from C(PREROUTING); with O(implementation=nftables) the table C(inet nfstate_alg) (C(ct helper)
    objects and C(ct helper set) rules). An ALG is known by its name (V(merged) and V(replaced) add or
    replace by name, V(overridden) makes them exactly the document's, V(deleted) removes ours).
author:
  - nfstate.migration contributors (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - nfstate.migration.provider
  - nfstate.migration.provider.result
attributes:
  check_mode:
    support: full
    details: The payload is checked by C(iptables-restore --test) or an nftables dry run, nothing is committed.
  diff_mode:
    support: full
  platform:
    platforms: posix
requirements:
  - Linux with C(iptables-legacy-save)/C(iptables-legacy-restore) (and the C(ip6tables-) ones), or their C(-nft) variants,
    for O(implementation=iptables).
  - For O(implementation=nftables), the C(nftables) Python binding (Debian's C(python3-nftables)) or the C(nft) program.
options:
  interfaces:
    description:
      - >-
        Maps the interface roles of the model to this host's devices, for example
        C({inside: eth1, outside: eth0}). Gathering maps the devices back to roles; a rule matching
        a device that has no role here is unsupported.
    type: dict
  state:
    description:
      - What to do, see the description.
    type: str
    choices: [gathered, parsed, rendered, merged, replaced, overridden, deleted]
    default: merged
  config:
    description:
      - The rules, as a whole model document (C(ietf-nat:nat) with one instance) or as its
        C(policy) list. Mutually exclusive with O(src).
    type: raw
  src:
    description:
      - Path on the managed host of a model document, plain JSON or gzip-compressed (ending in C(.gz)).
        Mutually exclusive with O(config).
    type: path
  running_config:
    description:
      - For O(state=parsed), the implementation's own text. For iptables, the output of
        C(iptables-save -t nat) and/or C(ip6tables-save -t nat), with their C(# Generated by) header
        lines. For nftables, the libnftables JSON listing (C(nft -j list table inet nfstate_nat), or
        C(nft -j list ruleset) with O(include_builtin_chains)), as text or as a dict.
    type: raw
  skip_unsupported:
    description:
      - Skip, instead of failing on, rules that the model cannot express. They are listed in
        RV(unsupported) and in a warning. The applying states then remove them from our chains.
    type: bool
    default: false
  include_builtin_chains:
    description:
      - With O(state=gathered) or O(state=parsed), also read the NAT rules that a NAT configured
        by hand keeps outside our chains or table. The applying states always work on ours only.
      - With O(implementation=iptables), the rules written directly into the built-in
        C(PREROUTING) and C(POSTROUTING) chains of the C(nat) table, with our chain's rules in
        the place of the jump into it. Jumps and gotos into user chains are followed, with the
        jump's matches added to the rules reached. Rules of C(INPUT) and C(OUTPUT) are reported as
        unsupported.
      - With O(implementation=nftables), the rules of every base chain of type C(nat) hooked to
        C(prerouting) or C(postrouting), in any table of family C(ip), C(ip6) or C(inet), chain
        after chain in hook and priority order (our table among them, read once). A rule that
        jumps to a regular chain is replaced by that chain's rules, each with the jump's matches
        added; a C(goto) is read as a jump and an exemption on its condition; rules reached only
        through verdict maps are reported as unsupported, as are the rules of nat chains hooked to
        C(input) or C(output). Counters are ignored. A rule of an C(inet) table that matches no
        address family is read as one rule per family.
    type: bool
    default: false
notes:
  - A destination NAT rule is written in C(dst-ip-address-pool), C(dst-in-ip-pool) being the internal
    address the packet is sent to and C(dst-out-ip-pool) the external destination it matches
    (V(0.0.0.0/0) or V(::/0) for any).
  - Only the order of rules of one family and one hook is significant; gathered rules come in the
    order destination NAT before source NAT, IPv4 before IPv6, so documents gathered from
    different implementations compare equal.
seealso:
  - name: RFC 8512
    description: A YANG Module for Network Address Translation (NAT) and Network Prefix Translation (NPT).
    link: https://www.rfc-editor.org/rfc/rfc8512
"""

EXAMPLES = r"""
- name: Gather the NAT rules of an iptables-legacy host, including rules written by hand
  nfstate.migration.nat_rules:
    implementation: iptables
    interfaces:
      inside: eth1
      outside: eth0
    include_builtin_chains: true
    state: gathered
  register: source_rules

- name: Gather the NAT of an nftables host, written by hand in its own tables
  nfstate.migration.nat_rules:
    implementation: nftables
    interfaces:
      inside: eth1
      outside: eth0
    include_builtin_chains: true
    state: gathered
  register: nftables_source_rules

- name: Serve the same rules with nftables on the target
  nfstate.migration.nat_rules:
    implementation: nftables
    interfaces:
      inside: ens4
      outside: ens3
    config: "{{ source_rules.gathered }}"
    state: overridden

- name: Apply the rules of a snapshot file copied to the host
  nfstate.migration.nat_rules:
    implementation: iptables
    iptables_backend: nft
    interfaces:
      inside: eth1
      outside: eth0
    src: /var/lib/nfstate/snapshot.json.gz
    state: merged

- name: Render a port forward for nftables without touching a host
  nfstate.migration.nat_rules:
    implementation: nftables
    interfaces:
      outside: eth0
    config:
      - id: 1
        dst-nat-enable: true
        dst-ip-address-pool:
          - pool-id: 1
            dst-in-ip-pool: 192.0.2.10/32
            dst-out-ip-pool: 203.0.113.1/32
        transport-protocols:
          - protocol-id: 6
        nfstate-nat-rules:address-family: ipv4
        nfstate-nat-rules:in-interface: outside
        nfstate-nat-rules:destination-port:
          - start-port-number: 8080
        nfstate-nat-rules:translated-port:
          start-port-number: 80
    state: rendered

- name: Remove everything the module installed
  nfstate.migration.nat_rules:
    implementation: iptables
    state: deleted
"""

RETURN = r"""
before:
  description: The rules on the host before the change, as a C(policy) list.
  returned: when O(state) is V(merged), V(replaced), V(overridden) or V(deleted)
  type: list
  elements: dict
  sample:
    - id: 1
      nfstate-nat-rules:rule-order: 1
      nfstate-nat-rules:address-family: ipv4
      nfstate-nat-rules:masquerade: true
      nfstate-nat-rules:out-interface: outside
after:
  description: The rules on the host after the change (in check mode, the rules it would have).
  returned: when O(state) is V(merged), V(replaced), V(overridden) or V(deleted)
  type: list
  elements: dict
  sample:
    - id: 1
      nfstate-nat-rules:rule-order: 1
      nfstate-nat-rules:address-family: ipv4
      external-ip-address-pool:
        - pool-id: 1
          external-ip-pool: 203.0.113.10/31
      port-set-restrict:
        start-port-number: 1024
        end-port-number: 2000
      subscriber-match:
        - match-id: 1
          subnet: 192.0.2.0/24
      transport-protocols:
        - protocol-id: 6
          protocol-name: TCP
      nfstate-nat-rules:out-interface: outside
gathered:
  description: The host's rules as a C(policy) list.
  returned: when O(state=gathered)
  type: list
  elements: dict
  sample:
    - id: 1
      nfstate-nat-rules:rule-order: 1
      nfstate-nat-rules:address-family: ipv4
      nfstate-nat-rules:masquerade: true
      nfstate-nat-rules:out-interface: outside
parsed:
  description: The rules of O(running_config) as a C(policy) list.
  returned: when O(state=parsed)
  type: list
  elements: dict
  sample:
    - id: 1
      nfstate-nat-rules:rule-order: 1
      nfstate-nat-rules:address-family: ipv4
      nfstate-nat-rules:masquerade: true
      nfstate-nat-rules:out-interface: outside
rendered:
  description:
    - What would be sent to an empty host, as lines. For iptables, the C(iptables-restore --noflush)
      input of each family after a comment line naming the program; for nftables, one libnftables
      JSON command per line.
  returned: when O(state=rendered)
  type: list
  elements: str
  sample: ["# iptables-legacy-restore --noflush", "*nat", ":NFSTATE-PRE - [0:0]", ":NFSTATE-POST - [0:0]",
           "-I PREROUTING 1 -j NFSTATE-PRE", "-I POSTROUTING 1 -j NFSTATE-POST", "-A NFSTATE-POST -o eth0 -j MASQUERADE", "COMMIT"]
commands:
  description:
    - What was sent to the host (in check mode, what would have been), in the shape of RV(rendered);
      empty when nothing had to change.
  returned: when O(state) is V(merged), V(replaced), V(overridden) or V(deleted)
  type: list
  elements: str
  sample: ["# iptables-legacy-restore --noflush", "*nat", "-D PREROUTING -j NFSTATE-PRE", "-D POSTROUTING -j NFSTATE-POST",
           "-F NFSTATE-POST", "-F NFSTATE-PRE", "-X NFSTATE-POST", "-X NFSTATE-PRE", "COMMIT"]
iptables_backend:
  description: The iptables backend used (given or detected).
  returned: when the implementation is iptables and a host was read
  type: str
  sample: legacy
alg_rules:
  description: The ALG rules the host holds after the task (see the description).
  returned: state is merged, replaced, overridden or deleted
  type: int
  sample: 1
unsupported:
  description:
    - Rules in our chains or table, in the chains read with O(include_builtin_chains), or in
      O(running_config), that the model cannot express, with the reason.
    - An nftables rule is named by its table and chain (the jumps that led to it joined by C(>);
      our own table's rules by their chain only) and its statements as libnftables JSON.
  returned: always
  type: list
  elements: dict
  sample:
    - rule: "-A NFSTATE-PRE -i eth0 -p tcp -m tcp --dport 22 -j REDIRECT --to-ports 2222"
      reason: target REDIRECT
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nfstate.migration.plugins.module_utils.resources import nat_rules
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import (
    PROVIDER_OPTIONS,
    provider_of,
    run_module,
)

ARGUMENT_SPEC = dict(
    PROVIDER_OPTIONS,
    interfaces=dict(type="dict"),
    state=dict(type="str", default="merged", choices=list(nat_rules.STATES)),
    config=dict(type="raw"),
    src=dict(type="path"),
    running_config=dict(type="raw"),
    skip_unsupported=dict(type="bool", default=False),
    include_builtin_chains=dict(type="bool", default=False),
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("config", "src")],
        required_if=[("state", state, ("config", "src"), True) for state in ("merged", "replaced", "overridden", "rendered")]
        + [("state", "parsed", ("running_config",))],
        supports_check_mode=True,
    )
    run_module(module, lambda m: nat_rules.run(
        provider_of(m, offline=m.params["state"] in ("parsed", "rendered")), m.params,
        check_mode=m.check_mode, diff=m._diff, warn=m.warn))


if __name__ == "__main__":
    main()
