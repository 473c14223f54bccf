#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nat_sessions
short_description: Gather and re-create a NAT's live sessions (Linux conntrack) in the ietf-nat model
version_added: 0.1.0
description:
  - Reads the translated sessions of the host's kernel connection tracking table through netlink and
    expresses them as C(mapping-entry) items of RFC 8512's C(ietf-nat) model, augmented by the
    C(nfstate-nat) YANG module with what a faithful re-creation needs (TCP state, window scaling,
    mark, zone, labels).
  - Re-creates sessions from such a document with their NAT binding, so that established connections
    keep their translated address and port when their traffic reaches this host.
  - Only the network function's state is touched. Sessions the kernel did not translate (the host's own
    connections, the controller's SSH session among them) are never gathered, re-created or deleted.
  - Runs on the managed host with Python's standard library only.
  - When O(config) is given, the action plugin validates it against the YANG model on the controller
    before anything reaches the host.
version_added_collection: nfstate.migration
author:
  - nfstate.migration contributors (!UNKNOWN)
options:
  state:
    description:
      - V(gathered) reads the host's sessions into a document (returned as RV(gathered), or written to O(dest)).
      - V(parsed) turns the text of C(conntrack -L -o xml) given in O(running_config) into a document
        without touching the host.
      - V(rendered) returns the operations that V(merged) would apply, as C(conntrack) command lines,
        without touching the host.
      - V(merged) creates the document's sessions that are missing. A session that exists with the same
        binding is left alone, but for its lifetime, which is extended when the document's is longer by more
        than 5 seconds (the source kept the session alive meanwhile), see RV(refreshed). One that exists with
        a different binding is an error (see O(best_effort)).
      - V(replaced) works session by session. It is V(merged), except that a selected session the host holds
        with another binding is re-created with the document's binding instead of being a conflict.
        The host's other sessions stay.
      - V(overridden) makes the selected sessions exactly the document's. Others are deleted, those with a
        different binding are re-created, lifetimes are extended as with V(merged).
      - V(deleted) deletes the document's sessions or, without a document, every selected session.
    type: str
    choices: [gathered, parsed, rendered, merged, replaced, overridden, deleted]
    default: merged
  config:
    description:
      - The state document (RFC 7951 JSON of C(ietf-nat:nat)) for V(merged), V(replaced), V(overridden),
        V(deleted) and V(rendered). Suited to small tables; large ones travel as files, see O(src).
      - Mutually exclusive with O(src).
    type: dict
  src:
    description:
      - Paths on the managed host of the state documents to apply, as JSON, or gzip-compressed JSON when the
        name ends in C(.gz).
      - Several are applied as one, in order (a full snapshot, then the deltas taken after it, see O(since)).
      - A session's lifetime is counted down by the time since its snapshot was taken; one that has run out
        (or has under two seconds left) is let go, as it is on the source.
    type: list
    elements: path
  controller_src:
    description:
      - Path on the controller of a state document (JSON, or gzip-compressed JSON when the name ends in
        C(.gz)). The action plugin validates it against the YANG model, uploads it to the host at the one
        path given in O(src), and the module applies it, all in one task.
      - Mutually exclusive with O(config).
    type: path
  dest:
    description:
      - With V(gathered), write the document to this path on the managed host (mode 0600, gzip-compressed
        when the name ends in C(.gz)) instead of returning it.
    type: path
  base:
    description:
      - With V(gathered), a document (such as the rules gathered by M(nfstate.migration.nat_rules)) whose
        instance receives the sessions, so that one document holds the NAT's rules and its sessions.
    type: dict
  since:
    description:
      - With V(gathered), the path on the managed host of an earlier full snapshot. The document written is
        then a delta against it, with sessions that are new or whose binding changed, and sessions that ended,
        flagged C(nfstate-nat:removed).
      - A session whose binding is unchanged is left out, unless the source refreshed it and the target's
        copy is at risk of running out while the session is still in use. That is when its lifetime now
        exceeds what the copy made from the earlier snapshot has left (that snapshot's lifetime minus the
        seconds between the two snapshots) by more than 5 seconds, and what the copy has left is under
        600 seconds. In practice a live UDP or ICMP flow; a TCP connection with days to live never is, so
        the delta grows with what changed, not with the table. These are counted in RV(delta_refreshed).
    type: path
  alg:
    description:
      - With V(gathered), carry the state of the application-level gateways (connection-tracking helpers such
        as FTP, TFTP, SIP) with the sessions, the augment C(nfstate-nat-alg) (see docs/model.md). A master session
        gets its helper and sequence adjustment, an open data connection its master, and the instance the
        host's expectation table, each expectation tied to its master. Applying re-creates them in the kernel's
        order, masters then expectations.
      - V(false) leaves that state out, and the sessions move alone.
    type: bool
    default: true
  running_config:
    description:
      - With V(parsed), the output of C(conntrack -L -o xml).
    type: str
  instance_name:
    description:
      - Name of the NAT instance in gathered and parsed documents.
    type: str
    default: nat
  selectors:
    description:
      - Narrow what belongs to the network function. Translated sessions only are considered, unless
        O(selectors.forwarded); these narrow them further. A session matches when it matches every selector given.
    type: dict
    suboptions:
      addresses:
        description:
          - Prefixes of the addresses the NAT owns. A source-translated session matches by its translated
            source address, a destination-translated one by the address the client connected to.
        type: list
        elements: str
      zone:
        description: Conntrack zone of the sessions.
        type: int
      mark:
        description: Conntrack mark of the sessions, compared under O(selectors.mark_mask).
        type: int
      mark_mask:
        description: Mask applied to the session's mark before comparing it with O(selectors.mark).
        type: int
        default: 4294967295
      forwarded:
        description:
          - Also the untranslated sessions forwarded through the host, the stateful firewall's
            (M(nfstate.migration.firewall)). Neither end of such a session is an address of the host (its
            directed broadcasts included), a multicast group or the limited broadcast, so its own connections
            stay out. Their zone and mark selectors apply, not O(selectors.addresses).
          - They are carried flagged C(nfstate-firewall:forwarded), so that a target whose forward policy
            is drop lets their packets through as established.
        type: bool
        default: false
  best_effort:
    description:
      - Apply what can be applied. Sessions in conflict with the host, or that the kernel refuses, are
        skipped and listed in RV(conflicts) and RV(failed_sessions) instead of failing the task and rolling
        back what was created.
    type: bool
    default: false
  liberal:
    description:
      - Mark re-created TCP sessions liberal in both directions, so that a window tracked slightly
        differently on the target does not reset the connection. The host-wide sysctl is not touched.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Computes the operations and reports them, without touching the kernel.
  diff_mode:
    support: full
    description: Lists the sessions created, refreshed and deleted.
  platform:
    support: full
    platforms: linux
    description: Needs a Linux kernel with nf_conntrack_netlink; run as root.
notes:
  - The kernel translates re-created sessions only in a network namespace where a NAT chain or nat table
    rule is loaded. Apply the rules (M(nfstate.migration.nat_rules)) before the sessions.
  - NAT bindings can only be given when a session is created. V(replaced) re-creates a session whose
    binding differs.
seealso:
  - module: nfstate.migration.nat_rules
  - name: RFC 8512
    description: A YANG Module for Network Address Translation (NAT) and Network Prefix Translation (NPT).
    link: https://www.rfc-editor.org/rfc/rfc8512
"""

EXAMPLES = r"""
- name: Gather the NAT's sessions into a compressed file on the source
  nfstate.migration.nat_sessions:
    state: gathered
    dest: /var/tmp/nfstate/sessions.json.gz
    selectors:
      addresses: [203.0.113.1/32]

- name: Re-create them on the target (the file was copied there after validation)
  nfstate.migration.nat_sessions:
    state: merged
    src: /var/tmp/nfstate/sessions.json.gz

- name: Review what would be created from a small document
  nfstate.migration.nat_sessions:
    state: rendered
    config: "{{ lookup('ansible.builtin.file', 'snapshot.json') | from_json }}"
  register: review

- name: Read a capture of conntrack -L -o xml without touching any host
  nfstate.migration.nat_sessions:
    state: parsed
    running_config: "{{ lookup('ansible.builtin.file', 'conntrack.xml') }}"

- name: Remove the migrated sessions from the source after the target serves
  nfstate.migration.nat_sessions:
    state: deleted
    selectors:
      addresses: [203.0.113.1/32]
"""

RETURN = r"""
gathered:
  description: The document of the host's sessions (V(gathered) without O(dest)).
  returned: state is gathered and dest is not given
  type: dict
  sample: {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "mapping-table": {"mapping-entry": []}}]}}}
parsed:
  description: The document parsed from O(running_config).
  returned: state is parsed
  type: dict
  sample: {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat", "mapping-table": {"mapping-entry": []}}]}}}
rendered:
  description: The operations V(merged) would apply, as conntrack command lines.
  returned: state is rendered
  type: list
  elements: str
  sample: ["conntrack -I -f ipv4 -p 6 -s 192.0.2.10 -d 203.0.113.20 --sport 40000 --dport 5001 --src-nat 203.0.113.1:20001 -t 431999 --state ESTABLISHED"]
dest:
  description: Where the gathered document was written.
  returned: state is gathered and dest is given
  type: str
  sample: /var/tmp/nfstate/sessions.json.gz
delta_added:
  description: With O(since), the number of new or re-bound sessions in the delta.
  returned: state is gathered and since is given
  type: int
  sample: 14
delta_removed:
  description: With O(since), the number of sessions the delta flags removed.
  returned: state is gathered and since is given
  type: int
  sample: 3
delta_refreshed:
  description:
    - With O(since), the number of sessions the delta carries with an unchanged binding because the source
      refreshed them and the target's copy would run out (see O(since)); not counted in RV(delta_added).
  returned: state is gathered and since is given
  type: int
  sample: 2
expired:
  description: Sessions of the documents whose lifetime ran out since their snapshot; they are not applied.
  returned: state is merged, replaced, overridden or deleted
  type: int
  sample: 0
unsupported_sessions:
  description:
    - Sessions of the host that cannot be re-created elsewhere, each with the reason (SCTP and DCCP, whose tracker
      state the model does not carry; GRE sessions that depend on the PPTP helper). They are not in the document.
    - Also what of the ALG state stays behind, per session (SIP dialogue state, H.323 and PPTP call state, which
      the kernel's helpers keep to themselves), and the expectations that cannot be carried, with the reason.
  returned: state is gathered
  type: list
  elements: str
  sample: ["sctp 192.0.2.10:5000 -> 203.0.113.20:5000 snat 203.0.113.1:20003: SCTP keeps tracker state the model does not carry"]
expectations:
  description:
    - With V(gathered), the ALG expectations the document carries. With V(merged), V(replaced) or V(overridden),
      those the documents ask for (the last document's, their lifetimes counted down).
  returned: state is not parsed, rendered nor deleted
  type: int
  sample: 1
expectations_created:
  description: Expectations created (after their masters); those the host held already are left as they are.
  returned: state is merged, replaced or overridden
  type: int
  sample: 1
expectations_missing:
  description: Expectations the host does not hold after the task (in check mode, those it would create).
  returned: state is merged, replaced or overridden
  type: int
  sample: 0
failed_expectations:
  description: Expectations the kernel refused, with its reason (for example no master, or a master without its helper).
  returned: state is merged, replaced or overridden
  type: list
  elements: str
  sample: ["ftp expectation tcp 192.0.2.10:0 -> 203.0.113.20:50000 of 192.0.2.10:40000 -> 203.0.113.20:21: Operation not supported"]
skipped:
  description: Entries of O(running_config) that could not be read as sessions (the XML has no ICMP identifiers).
  returned: state is parsed
  type: list
  elements: str
  sample: ["icmp 192.0.2.10 -> 203.0.113.20: the XML carries no ICMP type, code or identifier"]
uploaded:
  description: With O(controller_src), what was validated and uploaded, and where it went.
  returned: when controller_src is given
  type: dict
  sample: {"path": "/var/lib/nfstate/nat-b/delta.json.gz", "sessions": 12, "rules": 0, "bytes_raw": 9120, "bytes_compressed": 714}
sessions:
  description: Number of sessions gathered, parsed or in the applied document.
  returned: always
  type: int
  sample: 1204
before:
  description:
    - The selected sessions on the host before the task, as a summary (a table of 100k sessions is carried
      in files, not in results), their number and their number by protocol.
  returned: state is merged, replaced, overridden or deleted
  type: dict
  sample: {"sessions": 12, "by_protocol": {"tcp": 10, "udp": 2}}
after:
  description: The selected sessions on the host after the task (in check mode, as predicted), summarised as RV(before).
  returned: state is merged, replaced, overridden or deleted
  type: dict
  sample: {"sessions": 1216, "by_protocol": {"tcp": 1100, "udp": 110, "icmp": 6}}
created:
  description: Number of sessions created.
  returned: state is merged, replaced, overridden or deleted
  type: int
  sample: 1204
deleted:
  description: Number of sessions deleted.
  returned: state is merged, replaced, overridden or deleted
  type: int
  sample: 0
unchanged:
  description:
    - Number of the document's sessions that were already present with the same binding (those whose
      lifetime was extended among them, see RV(refreshed)).
  returned: state is merged, replaced or overridden
  type: int
  sample: 12
refreshed:
  description:
    - Number of the sessions present with the same binding whose lifetime was extended to the document's,
      the host's being shorter by more than 5 seconds (C(conntrack -U) lines in RV(commands)). A second
      run finds nothing to refresh.
  returned: state is merged, replaced or overridden
  type: int
  sample: 2
commands:
  description: The operations applied (or, in check mode, that would be), as conntrack command lines; the first 1000.
  returned: state is merged, replaced, overridden or deleted
  type: list
  elements: str
  sample: ["conntrack -U -f ipv4 -p 17 -s 192.0.2.11 -d 203.0.113.20 --sport 5353 --dport 53 -t 117",
           "conntrack -I -f ipv4 -p 6 -s 192.0.2.10 -d 203.0.113.20 --sport 40000 --dport 5001 --src-nat 203.0.113.1:20001 -t 431999"]
conflicts:
  description: Sessions of the document the host could not take as they are, with the reason.
  returned: state is merged, replaced or overridden
  type: list
  elements: str
  sample: ["tcp 192.0.2.10:40000 -> 203.0.113.20:5001 snat 203.0.113.1:20001: exists with a different binding"]
failed_sessions:
  description: Sessions the kernel refused to create, delete or refresh, with its error (only with O(best_effort)).
  returned: state is merged, replaced or overridden
  type: list
  elements: str
  sample: ["udp 192.0.2.10:5353 -> 203.0.113.20:53 snat 203.0.113.1:20002: No space left on device"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nfstate.migration.plugins.module_utils.resources import nat_sessions
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import run_module

ARGUMENT_SPEC = dict(
    state=dict(type="str", default="merged", choices=list(nat_sessions.STATES)),
    config=dict(type="dict"),
    src=dict(type="list", elements="path"),
    # Handled on the controller by the action plugin, which never passes it on.
    controller_src=dict(type="path"),
    dest=dict(type="path"),
    base=dict(type="dict"),
    since=dict(type="path"),
    running_config=dict(type="str"),
    instance_name=dict(type="str", default="nat"),
    selectors=dict(type="dict", options=dict(
        addresses=dict(type="list", elements="str"),
        zone=dict(type="int"),
        mark=dict(type="int"),
        mark_mask=dict(type="int", default=0xFFFFFFFF),
        forwarded=dict(type="bool", default=False),
    )),
    best_effort=dict(type="bool", default=False),
    liberal=dict(type="bool", default=True),
    alg=dict(type="bool", default=True),
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("config", "src")],
        required_if=[("state", "parsed", ["running_config"])]
        + [("state", state, ("config", "src"), True) for state in ("rendered", "merged", "replaced", "overridden")],
        supports_check_mode=True,
    )
    run_module(module, lambda m: nat_sessions.run(m.params, check_mode=m.check_mode, diff=m._diff))


if __name__ == "__main__":
    main()
