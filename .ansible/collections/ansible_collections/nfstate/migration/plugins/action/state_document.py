# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Put a state document from the controller on a host, validated against the YANG model first.

The one way a document crosses: whatever reaches a host has been validated on the controller
(the host has no YANG library), and the task says what it carried.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.plugins.action import ActionBase
from ansible.utils.hashing import checksum

from ansible_collections.nfstate.migration.plugins.plugin_utils.validation import (
    read_controller_document,
    validation_failure,
)


def carried(document, raw, compressed):
    """What a document holds and weighs, for reports."""
    instance = document["ietf-nat:nat"]["instances"]["instance"][0]
    return dict(
        sessions=len(instance.get("mapping-table", {}).get("mapping-entry", [])),
        rules=len(instance.get("policy", [])),
        bytes_raw=raw,
        bytes_compressed=compressed,
    )


class ActionModule(ActionBase):

    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(("src", "dest", "mode"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        src, dest = self._task.args.get("src"), self._task.args.get("dest")
        if not src or not dest:
            result.update(failed=True, msg="give src (the document on the controller) and dest (its path on the host)")
            return result
        try:
            document, raw, compressed = read_controller_document(src)
        except ValueError as error:
            result.update(failed=True, msg=str(error))
            return result
        failure = validation_failure(document, src)
        if failure:
            result.update(failure)
            return result
        result.update(carried(document, raw, compressed), path=dest)
        if self._task.check_mode:
            result["changed"] = True
            return result
        # The directory is ours (mode 0700): documents describe who talks to whom.
        made = self._execute_module(module_name="ansible.builtin.file", task_vars=task_vars, module_args=dict(
            path=os.path.dirname(dest), state="directory", mode="0700"))
        if made.get("failed"):
            result.update(failed=True, msg="cannot make %s on the host: %s" % (os.path.dirname(dest), made.get("msg")))
            return result
        # The same bytes already there: nothing to send (a re-run changes nothing).
        held = self._execute_remote_stat(dest, all_vars=task_vars, follow=False, checksum=True)
        if not held.get("exists") or held.get("checksum") != checksum(src):
            self._transfer_file(src, dest)
            result["changed"] = True
        moded = self._execute_module(module_name="ansible.builtin.file", task_vars=task_vars, module_args=dict(
            path=dest, state="file", mode=self._task.args.get("mode", "0600")))
        if moded.get("failed"):
            result.update(failed=True, msg="cannot set the mode of %s on the host: %s" % (dest, moded.get("msg")))
        result["changed"] = result.get("changed", False) or bool(moded.get("changed"))
        return result
