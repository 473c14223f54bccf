#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: state_document
short_description: Put a state document from the controller on a host, validated against the YANG model first
version_added: 0.2.0
description:
  - The one way a state document (rules and sessions, RFC 7951 JSON of C(ietf-nat:nat)) crosses to a
    managed host. It is validated against the YANG model on the controller, as
    M(nfstate.migration.validate_state) does, and uploaded only when valid, into a directory of mode
    0700. Its size is reported as JSON and compressed.
  - The same bytes already at O(dest) are not sent again.
  - This is an action plugin; the validation needs the collection's C(requirements.txt) on the controller.
author:
  - nfstate.migration contributors (!UNKNOWN)
options:
  src:
    description: Path on the controller of the document, JSON or gzip-compressed JSON (name ending in C(.gz)).
    type: path
    required: true
  dest:
    description: Path on the managed host.
    type: path
    required: true
  mode:
    description: Mode of the file on the host.
    type: str
    default: "0600"
attributes:
  check_mode:
    support: full
    description: Validates and reports, uploads nothing.
  diff_mode:
    support: none
    description: A document is data of megabytes; its counts are in the result instead.
  platform:
    support: full
    platforms: posix
    description: Validates on the controller, writes on the host.
"""

EXAMPLES = r"""
- name: Carry the pre-copy snapshot to the target
  nfstate.migration.state_document:
    src: nfstate-snapshots/20261201T120000Z/precopy.json.gz
    dest: /var/lib/nfstate/nat-b/precopy.json.gz
"""

RETURN = r"""
path:
  description: Where the document is on the host.
  returned: success
  type: str
  sample: /var/lib/nfstate/nat-b/precopy.json.gz
sessions:
  description: Number of sessions (mapping entries) in the document.
  returned: success
  type: int
  sample: 1024
rules:
  description: Number of NAT rules (policies) in the document.
  returned: success
  type: int
  sample: 8
bytes_raw:
  description: Size of the document as JSON, in bytes.
  returned: success
  type: int
  sample: 412033
bytes_compressed:
  description: Size of the document compressed with gzip, in bytes.
  returned: success
  type: int
  sample: 40120
errors:
  description: "Every validation error, as C(path: message)."
  returned: when the document is not valid
  type: list
  elements: str
  sample: ["/ietf-nat:nat/instances/instance/0/mapping-table/mapping-entry/3/transport-protocol: not a uint8"]
"""
