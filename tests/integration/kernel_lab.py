"""Network namespaces for the kernel driver tests, and the driver run inside them.

Every call to the driver runs in a child /usr/bin/python3 (the managed hosts' interpreter) started
with `ip netns exec`, so no conntrack entry is ever created or deleted in the root namespace.
Names carry the prefix k<pid>- of this test run.
"""

import os
import pickle
import select
import struct
import subprocess
import sys

import ansible_collections.nfstate.migration.plugins.module_utils.conntrack as conntrack_module

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
# The directory holding ansible_collections/, as tests/conftest.py set it up.
COLLECTIONS_ROOT = conntrack_module.__file__.split(os.sep + "ansible_collections" + os.sep, maxsplit=1)[0]
PREFIX = "k%d-" % os.getpid()

NAT_CHAINS = """
table ip nat {
    chain pre { type nat hook prerouting priority -100; }
    chain post { type nat hook postrouting priority 100; }
}
table ip6 nat {
    chain pre { type nat hook prerouting priority -100; }
    chain post { type nat hook postrouting priority 100; }
}
"""

DRIVER_CALL = """
import pickle, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack
options, method, args, kwargs = pickle.load(sys.stdin.buffer)
if method in ("conntrack_count", "conntrack_max"):
    result = getattr(conntrack, method)()
else:
    with conntrack.Conntrack(**options) as table:
        result = getattr(table, method)(*args, **kwargs)
sys.stdout.buffer.write(pickle.dumps(result))
"""

# Objects that live in a namespace between calls (an event subscription, say): length-prefixed
# pickles (name, kind or None, method, args, kwargs) in, ("ok", result) or ("error", text) out.
OBJECT_SERVER = """
import pickle, struct, sys, traceback
sys.path.insert(0, sys.argv[1])
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack, conntrack_events
KINDS = {"table": conntrack.Conntrack, "events": conntrack_events.ConntrackEvents}
objects = {}
source, sink = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = source.read(4)
    if len(head) < 4:
        break
    name, kind, method, args, kwargs = pickle.loads(source.read(struct.unpack("=I", head)[0]))
    try:
        if kind is not None:
            objects[name] = KINDS[kind](*args, **kwargs)
            answer = ("ok", None)
        else:
            value = getattr(objects[name], method)
            answer = ("ok", value(*args, **kwargs) if callable(value) else value)
    except Exception:
        answer = ("error", traceback.format_exc())
    data = pickle.dumps(answer)
    sink.write(struct.pack("=I", len(data)) + data)
    sink.flush()
"""


def run(*argv, **kwargs):
    kwargs.setdefault("timeout", 30)
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def in_ns(ns, *argv, **kwargs):
    return run("ip", "netns", "exec", ns, *argv, **kwargs)


def load_rules(ns, rules):
    in_ns(ns, "nft", "-f", "-", input=rules)


def driver(ns, method, *args, **kwargs):
    """Call Conntrack().method(*args, **kwargs) inside namespace ns and return its result."""
    options = kwargs.pop("options", {})
    proc = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", DRIVER_CALL, COLLECTIONS_ROOT],
                          input=pickle.dumps((options, method, args, kwargs)), capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return pickle.loads(proc.stdout)


class Remote(object):
    """Driver objects kept alive in one namespace by a child process; call them by name."""

    def __init__(self, proc):
        self.proc = proc

    def make(self, name, kind, *args, **kwargs):
        self._ask((name, kind, None, args, kwargs))

    def call(self, name, method, *args, **kwargs):
        """name.method(*args, **kwargs), or the attribute's value if it is not callable."""
        return self._ask((name, None, method, args, kwargs))

    def _ask(self, request, timeout=60):
        data = pickle.dumps(request)
        self.proc.stdin.write(struct.pack("=I", len(data)) + data)
        self.proc.stdin.flush()
        assert select.select([self.proc.stdout], [], [], timeout)[0], "no answer to %r" % (request[:3],)
        head = self.proc.stdout.read(4)
        assert len(head) == 4, self.proc.stderr.read().decode()
        status, result = pickle.loads(self.proc.stdout.read(struct.unpack("=I", head)[0]))
        assert status == "ok", result
        return result


class Namespaces(object):
    """Network namespaces made by a test, removed with everything started in them."""

    def __init__(self):
        self.names = []
        self.procs = []

    def add(self, short):
        name = PREFIX + short
        run("ip", "netns", "add", name)
        self.names.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    def link(self, ns_a, dev_a, addr_a, ns_b, dev_b, addr_b):
        run("ip", "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def start(self, ns, code, *args, **kwargs):
        text = kwargs.pop("text", True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, "-c", code] + list(args),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text)
        self.procs.append(proc)
        return proc

    def remote(self, ns):
        """A Remote whose objects live in namespace ns."""
        return Remote(self.start(ns, OBJECT_SERVER, COLLECTIONS_ROOT, text=False))

    def cleanup(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # by its PID: ip netns exec execs the interpreter itself
            proc.wait(timeout=10)
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def read_line(proc, timeout=10):
    ready = select.select([proc.stdout], [], [], timeout)[0]
    assert ready, "no answer from %s" % proc.args
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()
    return line


# -- a NAT between a client and a server ------------------------------------------------------

ECHO_SERVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(4)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    data = conn.recv(100)
    conn.sendall(data)
"""

HOLDING_CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
sock.sendall(b"hello"); assert sock.recv(100) == b"hello"
print(sock.getsockname()[1], flush=True)
sys.stdin.read()
"""


def nat_rules(port_range):
    return NAT_CHAINS + """
table ip nat {
    chain post { oifname "out0" ip saddr 192.0.2.0/24 meta l4proto { tcp, udp } snat to 198.51.100.1:%s; }
}
""" % port_range


def nat_site(spaces, tag, port_range):
    """client -- NAT (SNAT to 198.51.100.1 with a port range) -- server, all on documentation ranges."""
    client, nat, server = spaces.add(tag + "c"), spaces.add(tag + "n"), spaces.add(tag + "s")
    spaces.link(client, "eth0", "192.0.2.2/24", nat, "in0", "192.0.2.1/24")
    spaces.link(nat, "out0", "198.51.100.1/24", server, "eth0", "198.51.100.2/24")
    in_ns(client, "ip", "route", "add", "default", "via", "192.0.2.1")
    in_ns(nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    load_rules(nat, nat_rules(port_range))
    return client, nat, server
