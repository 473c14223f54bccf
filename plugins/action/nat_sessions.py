# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate an inline state document against the YANG model on the controller, then run the module.

The managed host has no YANG library: whatever reaches it has been validated here first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.nfstate.migration.plugins.plugin_utils.validation import validation_failure


class ActionModule(ActionBase):

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        config = self._task.args.get("config")
        if config is not None:
            failure = validation_failure(config, "config")
            if failure:
                result.update(failure)
                return result
        result.update(self._execute_module(
            module_name="nfstate.migration.nat_sessions",
            module_args=self._task.args,
            task_vars=task_vars,
        ))
        return result
