# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate a state document against the YANG model on the controller, then run the module.

The managed host has no YANG library: whatever reaches it has been validated here first. A document
given inline (config) is validated as it is; one given as a controller file (controller_src) is
validated, uploaded to the host at src, and applied, in one task: a delta crosses the freeze window
in as few round trips as possible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.nfstate.migration.plugins.plugin_utils.validation import (
    read_controller_document,
    validation_failure,
)


class ActionModule(ActionBase):

    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        module_args = dict(self._task.args)
        config = module_args.get("config")
        controller_src = module_args.pop("controller_src", None)
        if config is not None:
            failure = validation_failure(config, "config")
            if failure:
                result.update(failure)
                return result
        if controller_src is not None:
            uploaded = self._upload(controller_src, module_args.get("src"))
            if uploaded.get("failed"):
                result.update(uploaded)
                return result
            result["uploaded"] = uploaded
        result.update(self._execute_module(
            module_name="nfstate.migration.nat_sessions",
            module_args=module_args,
            task_vars=task_vars,
        ))
        return result

    def _upload(self, controller_src, src):
        """Validate the controller's file and put it on the host at src; what it held, or a failure."""
        if not src or len(src) != 1:
            return dict(failed=True, msg="controller_src needs src: the one path on the host where it goes")
        try:
            document, raw, compressed = read_controller_document(controller_src)
        except ValueError as error:
            return dict(failed=True, msg=str(error))
        failure = validation_failure(document, controller_src)
        if failure:
            return failure
        self._transfer_file(controller_src, src[0])
        instance = document["ietf-nat:nat"]["instances"]["instance"][0]
        return dict(
            path=src[0],
            sessions=len(instance.get("mapping-table", {}).get("mapping-entry", [])),
            rules=len(instance.get("policy", [])),
            bytes_raw=raw,
            bytes_compressed=compressed,
        )
