# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's end of a cutover agent: a relay that holds the channel open between tasks.

An Ansible task lives in a worker process that ends with the task; the channel to an agent must
outlive it, from before the pre-copy to after the release. So the task that starts an agent starts
a relay: a small detached process that runs the agent through the host's connection (its ssh
command line, with the inventory's settings) and passes lines between the agent and one client at
a time on a Unix socket. The relay ends when the agent ends, and it closes the agent's input
(the agent then undoes what is not committed) when ansible-playbook is gone.

Run as a script (standard library only):
    python agent_relay.py SOCKET WATCH_PID -- ARGV...
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import select
import socket
import subprocess
import sys
import time

READY_TIMEOUT = 60
POLL = 0.2


class ChannelError(Exception):
    """The agent or its relay cannot be reached, or answered with a failure."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def relay(socket_path, watch_pid, argv):
    """Run the agent (argv) and serve its lines on socket_path until it ends."""
    agent = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    os.chmod(socket_path, 0o600)
    server.listen(1)
    client = None
    pending = b""       # agent output while no client is connected
    try:
        while True:
            readers = [agent.stdout, server] + ([client] if client else [])
            ready, dummy, dummy = select.select(readers, [], [], POLL)
            if watch_pid and not _alive(watch_pid):
                agent.stdin.close()  # the controller is gone: the agent undoes and ends
                agent.wait(60)
                return 3
            for source in ready:
                if source is agent.stdout:
                    data = os.read(agent.stdout.fileno(), 1 << 20)
                    if not data:
                        return agent.wait()
                    if client is None:
                        pending += data
                    else:
                        client.sendall(data)
                elif source is server:
                    if client is not None:
                        client.close()
                    client, dummy = server.accept()
                    if pending:
                        client.sendall(pending)
                        pending = b""
                else:
                    data = client.recv(1 << 20)
                    if not data:
                        client.close()
                        client = None
                    else:
                        agent.stdin.write(data)
    finally:
        server.close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        if agent.poll() is None:
            try:
                agent.stdin.close()
            except OSError:
                pass


def spawn(socket_path, watch_pid, argv, log_path):
    """Start a detached relay (its own session, so that it survives the task that starts it)."""
    with open(log_path, "ab") as log:
        subprocess.Popen([sys.executable, os.path.abspath(__file__), socket_path, str(watch_pid), "--"] + list(argv),
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, start_new_session=True)


class AgentClient(object):
    """Lines to and from one agent, through its relay."""

    def __init__(self, socket_path, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        self.sock = None
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(socket_path)
                self.sock = sock
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise ChannelError("no relay answers on %s" % socket_path)
                time.sleep(0.05)
        self._buffer = b""

    def send_raw(self, line):
        self.sock.sendall(line if line.endswith(b"\n") else line + b"\n")

    def receive_raw(self, timeout=None):
        """The next line from the agent (bytes, without its newline)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, dummy, dummy = select.select([self.sock], [], [], wait)
            if not ready:
                raise ChannelError("the agent did not answer within %ss" % timeout)
            data = self.sock.recv(1 << 20)
            if not data:
                raise ChannelError("the agent's channel closed (the agent ended)")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def request(self, message, timeout=None):
        """Send a request and return its answer; ChannelError when the agent refuses it."""
        self.send_raw(json.dumps(message, separators=(",", ":")).encode("utf-8"))
        return self.answer(timeout)

    def request_raw(self, line, timeout=None):
        """request() for a request already encoded (a line passed on without parsing it)."""
        self.send_raw(line)
        return self.answer(timeout)

    def answer(self, timeout=None):
        reply = json.loads(self.receive_raw(timeout))
        if not reply.get("ok"):
            raise ChannelError(reply.get("error", "the agent failed"))
        return reply

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(relay(sys.argv[1], int(sys.argv[2]), sys.argv[separator + 1:]))
