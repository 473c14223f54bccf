"""Building blocks of the integration tests' labs: network namespaces removed with everything
started in them, veth pairs with addresses, NAT rules per implementation, a NAT site (client, NAT,
server), the collection driver run inside a namespace, and NAT hosts driven by ansible-playbook.
tests/integration/conftest.py makes fixtures of them; the two-host lab with sshd is lab/nfstate_lab.py.

Every call to the driver runs in a child /usr/bin/python3 (the managed hosts' interpreter) started
with `ip netns exec`, so no conntrack entry is ever created or deleted in the root namespace.
Namespace names start with a prefix of the test run's worker (see conftest.py), so that two workers,
or two people on one machine, never share one.
"""

import contextlib
import json
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
# The checkout, linked as a collection where ansible-playbook runs inside a namespace.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

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
    """Network namespaces made by a test, removed with everything started in them. Each name is
    `prefix` followed by the short name given to add()."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.names = []
        self.procs = []

    def add(self, short):
        name = self.prefix + short
        run("ip", "netns", "add", name)
        self.names.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    def link(self, ns_a, dev_a, addr_a, ns_b, dev_b, addr_b):
        run("ip", "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def spawn(self, ns, *argv, **kwargs):
        """A process started in namespace ns (stdin, stdout and stderr to /dev/null unless given),
        ended by cleanup()."""
        for stream in ("stdin", "stdout", "stderr"):
            kwargs.setdefault(stream, subprocess.DEVNULL)
        return self.track(subprocess.Popen(["ip", "netns", "exec", ns] + list(argv), **kwargs))

    def track(self, proc):
        """Ends proc, one of ours started elsewhere, with the namespaces."""
        self.procs.append(proc)
        return proc

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
        # Last started first (an SSH session before its sshd), each by its PID: ip netns exec execs
        # the program itself. A process that ignores SIGTERM for 3 s is killed.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
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


def nat_topology(spaces, tag):
    """client (eth0 192.0.2.2) -- (in0 192.0.2.1) NAT (out0 198.51.100.1) -- (eth0 198.51.100.2) server,
    the NAT forwarding, no rule loaded: (client, nat, server) namespaces named tag + c, n, s."""
    client, nat, server = spaces.add(tag + "c"), spaces.add(tag + "n"), spaces.add(tag + "s")
    spaces.link(client, "eth0", "192.0.2.2/24", nat, "in0", "192.0.2.1/24")
    spaces.link(nat, "out0", "198.51.100.1/24", server, "eth0", "198.51.100.2/24")
    in_ns(client, "ip", "route", "add", "default", "via", "192.0.2.1")
    in_ns(nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return client, nat, server


def routed_site(spaces, tag, addresses, nat_sysctls=("net.ipv4.ip_forward=1",)):
    """client (c0) --(in0) NAT (out0)-- (s0) server, as the module tests build it: the NAT's sysctls
    set first, then the links; `addresses` gives each end's {4: address[, 6: address]} under client,
    inside, outside and server, an address or a list of them (IPv4 /24, IPv6 /64 without duplicate
    detection). The client routes through the NAT's first inside address of each family. Returns the
    (client, nat, server) namespaces, named tag + cli, nat, srv."""
    client, nat, server = spaces.add(tag + "cli"), spaces.add(tag + "nat"), spaces.add(tag + "srv")
    in_ns(nat, "sysctl", "-qw", *nat_sysctls)
    run("ip", "-n", nat, "link", "add", "in0", "type", "veth", "peer", "name", "c0", "netns", client)
    run("ip", "-n", nat, "link", "add", "out0", "type", "veth", "peer", "name", "s0", "netns", server)
    ends = ((client, "c0", "client"), (nat, "in0", "inside"), (nat, "out0", "outside"), (server, "s0", "server"))
    for ns, dev, end in ends:
        for family in sorted(addresses[end]):
            for address in _listed(addresses[end][family]):
                if family == 4:
                    run("ip", "-n", ns, "addr", "add", address + "/24", "dev", dev)
                else:
                    run("ip", "-n", ns, "addr", "add", address + "/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
    run("ip", "-n", client, "route", "add", "default", "via", _listed(addresses["inside"][4])[0])
    if 6 in addresses["inside"]:
        run("ip", "-n", client, "-6", "route", "add", "default", "via", _listed(addresses["inside"][6])[0])
    return client, nat, server


def _listed(addresses):
    return [addresses] if isinstance(addresses, str) else list(addresses)


def collection_env(top, **overrides):
    """The checkout linked as a collection under top/coll, and the environment in which `ansible`
    run inside a namespace finds it and answers plainly."""
    coll = os.path.join(top, "coll", "ansible_collections", "nfstate")
    os.makedirs(coll)
    os.symlink(REPO, os.path.join(coll, "migration"))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(top, "coll"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=os.path.join(top, "ansible-local"))
    env.update(overrides)
    return env


def add_ipv6(site):
    """The same topology in IPv6: 2001:db8:1::/64 inside, 2001:db8:2::/64 outside (NAT ::1, peers ::2)."""
    client, nat, server = site
    for ns, dev, address in ((client, "eth0", "2001:db8:1::2/64"), (nat, "in0", "2001:db8:1::1/64"),
                             (nat, "out0", "2001:db8:2::1/64"), (server, "eth0", "2001:db8:2::2/64")):
        in_ns(ns, "ip", "addr", "add", address, "dev", dev, "nodad")
    in_ns(client, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
    in_ns(nat, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")


def nat_site(spaces, tag, port_range):
    """client -- NAT (SNAT to 198.51.100.1 with a port range) -- server, all on documentation ranges."""
    client, nat, server = nat_topology(spaces, tag)
    load_rules(nat, nat_rules(port_range))
    return client, nat, server


# -- NAT hosts driven by ansible-playbook ------------------------------------------------------

# The kernel registers its NAT hooks in a namespace only once a NAT chain exists there.
NAT_CHAINS_V4 = """
table ip nat {
    chain pre { type nat hook prerouting priority -100; }
    chain post { type nat hook postrouting priority 100; }
}
"""

# Reads the namespace's whole table with the collection's driver: {identity: what must not change}.
TABLE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack
with Conntrack() as table:
    entries = table.dump(translated_only=False)
print(json.dumps(dict((json.dumps([list(e.orig), e.zone]),
                       [list(e.reply), e.status, e.mark, e.tcp_state]) for e in entries)))
"""

# Keeps every task's whole result (invocation and diff included), by task name, in a JSON file.
RECORDER = """
import json, os
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "nfstate_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.results = {}

    def _keep(self, result, failed):
        kept = json.loads(json.dumps(result._result, default=str))
        kept["failed"] = failed
        self.results[result._task.get_name()] = kept

    def v2_runner_on_ok(self, result):
        self._keep(result, False)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._keep(result, True)

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["NFSTATE_RECORDED"], "w") as handle:
            json.dump(self.results, handle)
"""


class PlaybookHost(object):
    """A network namespace with a NAT chain, driven by ansible-playbook running inside it."""

    def __init__(self, name, root, workdir):
        self.name, self.root, self.workdir = name, root, workdir
        self.plays = 0

    def run(self, *argv, **kwargs):
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), check=True, capture_output=True,
                              text=True, timeout=60, **kwargs)

    def insert(self, src, sport, dst, dport, nat=None):
        """One TCP session with conntrack(8): translated to nat (address, port), or the host's own."""
        argv = ["conntrack", "-I", "-p", "tcp", "-s", src, "-d", dst, "--sport", str(sport), "--dport", str(dport),
                "-t", "600", "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED"]
        if nat:
            argv += ["--src-nat", "%s:%d" % nat]
        self.run(*argv)

    def table(self):
        return json.loads(self.run(PYTHON, os.path.join(self.workdir, "table.py"), self.root).stdout)

    def play(self, *steps):
        """Run steps in one playbook: ('sessions', args[, task keywords]) for nat_sessions or ('table',) or ('count',).
        Returns each step's result, as the recording callback saw it; a table step gives the table
        as TABLE reads it, a count step the number of entries."""
        self.plays += 1
        base = os.path.join(self.workdir, "%s-%d" % (self.name, self.plays))
        tasks = []
        for number, step in enumerate(steps):
            if step[0] == "sessions":
                task = {"nfstate.migration.nat_sessions": step[1], "ignore_errors": True}
                task.update(step[2] if len(step) > 2 else {})
            elif step[0] == "table":  # raw: no module to ship, a twentieth of the time
                task = {"ansible.builtin.raw": "%s %s %s" % (PYTHON, os.path.join(self.workdir, "table.py"), self.root)}
            else:
                task = {"ansible.builtin.raw": "cat /proc/sys/net/netfilter/nf_conntrack_count"}
            task["name"] = "r%d" % number
            tasks.append(task)
        with open(base + ".yml", "w") as handle:
            # JSON is YAML: the documents go in as they are.
            json.dump([{"hosts": "localhost", "gather_facts": False,
                        "vars": {"ansible_python_interpreter": PYTHON}, "tasks": tasks}], handle)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.root, ANSIBLE_LOCALHOST_WARNING="False",
                   ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
                   ANSIBLE_PIPELINING="True", ANSIBLE_CALLBACK_PLUGINS=os.path.join(self.workdir, "callbacks"),
                   ANSIBLE_CALLBACKS_ENABLED="nfstate_record", NFSTATE_RECORDED=base + ".json")
        proc = subprocess.run(["ip", "netns", "exec", self.name, ANSIBLE_PLAYBOOK, base + ".yml"], env=env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        with open(base + ".json") as handle:
            recorded = json.load(handle)
        results = []
        for number, step in enumerate(steps):
            result = recorded["r%d" % number]
            if step[0] == "table":
                result = json.loads(result["stdout"])
            elif step[0] == "count":
                result = int(result["stdout"])
            results.append(result)
        return results


@contextlib.contextmanager
def playbook_hosts(prefix, top, files=None):
    """Makes NAT namespaces on demand (`make(short)` gives a PlaybookHost); removes every one at the end,
    also after a failure. `top` receives the collection link, the recorder and the helper scripts."""
    root = top / "collections"
    (root / "ansible_collections" / "nfstate").mkdir(parents=True)
    os.symlink(REPO, str(root / "ansible_collections" / "nfstate" / "migration"))
    (top / "callbacks").mkdir()
    (top / "callbacks" / "nfstate_record.py").write_text(RECORDER)  # the name PlaybookHost.play enables
    for name, text in dict({"table.py": TABLE}, **(files or {})).items():
        (top / name).write_text(text)
    made = []

    def make(short):
        name = prefix + short
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        made.append(name)
        host = PlaybookHost(name, str(root), str(top))
        host.run("ip", "link", "set", "lo", "up")
        host.run("nft", "-f", "-", input=NAT_CHAINS_V4)
        return host

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
