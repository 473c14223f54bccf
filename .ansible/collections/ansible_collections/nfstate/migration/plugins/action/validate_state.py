# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate a state document on the controller (a snapshot file, or data) against the YANG model."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import json

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.nfstate.migration.plugins.plugin_utils.validation import (
    read_controller_document,
    validation_failure,
)


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("path", "document", "max_sessions"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        path = self._task.args.get("path")
        document = self._task.args.get("document")
        if (path is None) == (document is None):
            raise AnsibleActionFail("give exactly one of path and document")
        if path is not None:
            try:
                document, raw, compressed = read_controller_document(path, self._task.args.get("max_sessions"))
            except ValueError as error:
                raise AnsibleActionFail(str(error))
            what = path
        else:
            try:
                text = json.dumps(document, separators=(",", ":")).encode()
            except (TypeError, ValueError) as error:
                raise AnsibleActionFail("document is not JSON data: %s" % error)
            raw, compressed = len(text), len(gzip.compress(text))
            what = "the document"
        failure = validation_failure(document, what)
        if failure:
            result.update(failure)
            return result
        instance = document["ietf-nat:nat"]["instances"]["instance"][0]
        result.update(
            changed=False,
            valid=True,
            sessions=len(instance.get("mapping-table", {}).get("mapping-entry", [])),
            rules=len(instance.get("policy", [])),
            bytes_raw=raw,
            bytes_compressed=compressed,
        )
        return result
