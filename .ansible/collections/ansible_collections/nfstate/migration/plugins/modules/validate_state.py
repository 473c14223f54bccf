#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: validate_state
short_description: Validate a NAT state document against the ietf-nat and nfstate YANG models
version_added: 0.1.0
description:
  - Checks an RFC 7951 JSON document of C(ietf-nat:nat), as gathered by M(nfstate.migration.nat_sessions)
    and M(nfstate.migration.nat_rules), against RFC 8512's C(ietf-nat) module and the collection's
    C(nfstate-nat) augments, on the controller.
  - Reports every error with its path, and the document's size as JSON and compressed.
  - The skeleton of the document (instance, snapshot metadata, rules) is validated by yangson; the
    mapping entries (sessions) by the strict checker the managed hosts run before they apply a
    document, which is stricter than the YANG model (a session address is a host prefix, a
    session is translated, one instance per document, ...).
  - A file is read with bounds checked before it is parsed, as on the managed hosts. gzip is
    decompressed as a stream under a ceiling of 2 KiB per session of O(max_sessions) plus 16 MiB;
    strings are at most 64 KiB, nesting at most 32 levels, member names unique, and the document
    holds at most O(max_sessions) sessions.
  - This is an action plugin; it runs on the controller and needs the collection's C(requirements.txt)
    (yangson, pyang) there.
author:
  - nfstate.migration contributors (!UNKNOWN)
options:
  path:
    description:
      - Path on the controller of the document, JSON or gzip-compressed JSON (name ending in C(.gz)).
      - Mutually exclusive with O(document).
    type: path
  document:
    description:
      - The document itself.
    type: dict
  max_sessions:
    description:
      - The most sessions a document read from O(path) may hold; its size, value count and expanded
        gzip size are bounded accordingly.
      - Defaults to the environment variable E(NFSTATE_MAX_SESSIONS) when set, else 262144.
    type: int
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  platform:
    support: full
    platforms: all
    description: Runs on the controller.
"""

EXAMPLES = r"""
- name: Validate a snapshot fetched from the source
  nfstate.migration.validate_state:
    path: nfstate-snapshots/nat-a-precopy.json.gz
  delegate_to: localhost
"""

RETURN = r"""
valid:
  description: Whether the document is valid (the task fails when it is not).
  returned: success
  type: bool
  sample: true
errors:
  description: "Every error, as C(path: message)."
  returned: failure
  type: list
  elements: str
  sample: ["/ietf-nat:nat/instances/instance[id=\"1\"]/mapping-table/mapping-entry[index=\"3\"]/lifetime: -5 is out of range 0..4294967295"]
sessions:
  description: Number of sessions (mapping entries) in the document.
  returned: success
  type: int
  sample: 1024
rules:
  description: Number of NAT rules (policies) in the document.
  returned: success
  type: int
  sample: 3
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
"""
