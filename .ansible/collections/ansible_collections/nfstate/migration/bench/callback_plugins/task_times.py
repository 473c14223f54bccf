# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record when each task starts and each host's result arrives, as JSON lines (wall clock).

Enabled by the benchmarks for one ansible-playbook run:

    ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=task_times \
    NFSTATE_BENCH_TASK_TIMES=/path/times.jsonl ansible-playbook ...

The clock is time.time(), the one the benchmark's probes use, so a task lines up with what the
client saw. (ansible.posix's profile_tasks would do, but it is not part of ansible-core.)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: task_times
type: aggregate
short_description: Task start and result times as JSON lines, for the benchmarks
description:
  - Appends one line per task start and per host result to the file named by NFSTATE_BENCH_TASK_TIMES.
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        path = os.environ.get("NFSTATE_BENCH_TASK_TIMES")
        self._out = open(path, "a") if path else None

    def _write(self, record):
        if self._out is not None:
            record["at"] = time.time()
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write({"event": "start", "task": task.get_name(), "uuid": task._uuid})

    def v2_playbook_on_handler_task_start(self, task):
        self._write({"event": "start", "task": task.get_name(), "uuid": task._uuid})

    def _result(self, result, status):
        self._write({"event": status, "task": result._task.get_name(), "uuid": result._task._uuid,
                     "host": result._host.get_name()})

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._write({"event": "end"})
        if self._out is not None:
            self._out.close()
            self._out = None
