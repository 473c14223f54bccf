# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start a cutover agent on the task's host, reached through the host's own connection.

The agent (plugins/module_utils/agent/) is uploaded as one zip into the host's work directory and
started with the host's Python through the very command line Ansible's connection would use (the
inventory's user, port, key, jump host and ControlPath; become), by a relay on the controller that
keeps the channel open after this task (plugin_utils/agent_relay.py). The task returns once the
agent said it is ready: a source's agent reads the conntrack events from then on.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import shlex
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_bytes
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.nfstate.migration.plugins.plugin_utils.agent_bundle import agent_zip
from ansible_collections.nfstate.migration.plugins.plugin_utils.agent_relay import AgentClient, ChannelError, spawn

SSH_TRANSPORTS = ("ssh", "ansible.builtin.ssh")
LOCAL_TRANSPORTS = ("local", "ansible.builtin.local")
READY_TIMEOUT = 60


def short_socket_path(socket_dir, role, host):
    """A Unix socket path within the kernel's 108 bytes, whatever the snapshot directory's length:
    a directory of this user's under the temporary directory, named after a digest of the place."""
    base = os.path.join(tempfile.gettempdir(), "nfstate-agents-%d" % os.getuid())
    os.makedirs(base, mode=0o700, exist_ok=True)
    digest = hashlib.sha1(("%s\0%s\0%s" % (os.path.abspath(socket_dir), role, host)).encode("utf-8")).hexdigest()
    return os.path.join(base, digest[:20] + ".sock")


def agent_command(interpreter, zip_path, args):
    """The shell command that starts the agent on the host."""
    argv = [interpreter, "-u", zip_path, "--role", args["role"], "--implementation", args["implementation"],
            "--iptables-backend", args.get("iptables_backend") or "auto", "--deadline", str(args["deadline"]),
            "--selectors", json.dumps(args.get("selectors") or {}), "--instance-name", args.get("instance_name", "nat")]
    if args.get("precopy"):
        argv += ["--precopy", args["precopy"]]
    if boolean(args.get("keep_rules", False)):
        argv.append("--keep-rules")
    return " ".join(shlex.quote(str(a)) for a in argv)


def ready_answer(client, timeout):
    """The agent's first JSON line (a become wrapper may print a line of its own before it)."""
    while True:
        line = client.receive_raw(timeout)
        if line.startswith(b"{"):
            reply = json.loads(line)
            if not reply.get("ok"):
                raise ChannelError(reply.get("error", "the agent failed to start"))
            return reply


class ActionModule(ActionBase):

    TRANSFERS_FILES = True
    _VALID_ARGS = frozenset(("role", "implementation", "iptables_backend", "deadline", "selectors",
                             "instance_name", "work_dir", "socket_dir", "precopy", "keep_rules"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        for name in ("role", "implementation", "deadline", "work_dir", "socket_dir"):
            if not args.get(name):
                raise AnsibleActionFail("nat_agent needs %s" % name)
        if args["role"] not in ("source", "target"):
            raise AnsibleActionFail("role must be source or target, got %r" % args["role"])
        if self._task.check_mode:
            result.update(changed=False, skipped=True, msg="an agent is not started in check mode")
            return result

        made = self._execute_module(module_name="ansible.builtin.file", task_vars=task_vars,
                                    module_args=dict(path=args["work_dir"], state="directory", mode="0700"))
        if made.get("failed"):
            raise AnsibleActionFail("cannot make %s: %s" % (args["work_dir"], made.get("msg")))
        zip_path = os.path.join(args["work_dir"], "agent.zip")
        self._transfer_data(zip_path, agent_zip())
        interpreter = task_vars.get("ansible_python_interpreter") or \
            task_vars.get("ansible_facts", {}).get("discovered_interpreter_python") or "/usr/bin/python3"
        argv = self._local_argv(agent_command(self._templar.template(interpreter), zip_path, args))

        host = task_vars.get("inventory_hostname")
        os.makedirs(args["socket_dir"], mode=0o700, exist_ok=True)
        log_path = os.path.join(args["socket_dir"], "%s-%s.log" % (args["role"], host))
        socket_path = short_socket_path(args["socket_dir"], args["role"], host)
        # The relay watches ansible-playbook itself (this task's worker ends with the task).
        spawn(socket_path, os.getppid(), argv, log_path)
        try:
            client = AgentClient(socket_path, timeout=READY_TIMEOUT)
            try:
                become_pass = self._become_password()
                if become_pass:
                    client.send_raw(to_bytes(become_pass))
                ready = ready_answer(client, READY_TIMEOUT)
            finally:
                client.close()
        except ChannelError as exc:
            raise AnsibleActionFail("the %s agent on %s did not start: %s (see %s)" % (args["role"], host, exc, log_path))
        result.update(changed=True, socket=socket_path, pid=ready.get("pid"), role=args["role"])
        return result

    def _become_password(self):
        become = self._connection.become
        if not (self._connection.become and become):
            return None
        try:
            return become.get_option("become_pass")
        except KeyError:
            return None

    def _local_argv(self, command):
        """The controller-side command line that runs `command` on the host, as Ansible would."""
        connection = self._connection
        if connection.become:
            command = connection.become.build_become_command(command, connection._shell)
        transport = connection.transport
        if transport in SSH_TRANSPORTS:
            if connection.get_option("password"):
                raise AnsibleActionFail("the cutover agent's channel needs key-based SSH (the inventory gives a password)")
            connection.host = connection.get_option("host") or connection._play_context.remote_addr
            # No -tt: the channel carries lines of JSON, not a terminal.
            return connection._build_command(connection.get_option("ssh_executable"), "ssh", connection.host, command)
        if transport in LOCAL_TRANSPORTS:
            return ["/bin/sh", "-c", command]
        raise AnsibleActionFail("the cutover agent needs an ssh or local connection, %s has %s"
                                % (self._task.delegate_to or "the host", transport))
