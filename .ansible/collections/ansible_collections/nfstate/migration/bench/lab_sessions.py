"""Synthetic translated sessions for a lab's NAT host, created with the collection's own driver.

Session i (0 <= i < 1,000,000) is a TCP connection from a documentation client to a documentation
server that the lab's source NAT translated to its external address 203.0.113.1, with a port in the
lab's SNAT range (20000-29999):

    192.0.2.(100 + j % 100):(10000 + j // 100) -> 203.0.113.(100 + i % 100):443,  j = i // 100
    translated to 203.0.113.1:(20000 + j)

Both tuples are distinct for every i, and none meets the lab's own client (192.0.2.10) or server
(203.0.113.20), so they never collide with live flows. Entries are established, with window scale
and flags, and last an hour: they stay put for the whole benchmark.

    lab_sessions.populate(lab.ns("nat-a"), 100000)           # from the controller, as root
    lab_sessions.churn(lab.ns("nat-a"), first=100000, add=300, remove=300)

Each call runs this file inside the namespace with the host's /usr/bin/python3, the way a module
runs on a managed host.
"""

import json
import os
import subprocess
import sys

HOST_PYTHON = "/usr/bin/python3"
EXTERNAL = "203.0.113.1"
MAX_SESSIONS = 1000000  # 100 servers x 10,000 ports of the lab's SNAT range
LIFETIME = 3600


def collections_root():
    """The directory that makes this checkout importable as ansible_collections.nfstate.migration."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_results import collections_root as root  # one place decides it for every benchmark
    return root()


def session_tuples(i):
    """(client, sport, server, dport, translated port) of session i."""
    if not 0 <= i < MAX_SESSIONS:
        raise ValueError("session %d: 0 <= i < %d" % (i, MAX_SESSIONS))
    j = i // 100
    return "192.0.2.%d" % (100 + j % 100), 10000 + j // 100, "203.0.113.%d" % (100 + i % 100), 443, 20000 + j


def entries(first, count):
    """ConntrackEntry objects of sessions first .. first+count-1 (runs where the collection imports)."""
    from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
        IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, IPS_SRC_NAT, ConntrackEntry, FlowTuple)
    status = IPS_ASSURED | IPS_SEEN_REPLY | IPS_CONFIRMED | IPS_SRC_NAT
    made = []
    for i in range(first, first + count):
        client, sport, server, dport, port = session_tuples(i)
        made.append(ConntrackEntry(FlowTuple(2, 6, client, server, sport, dport),
                                   FlowTuple(2, 6, server, EXTERNAL, dport, port), status, LIFETIME,
                                   tcp_state=3, tcp_wscale_orig=7, tcp_wscale_reply=7,
                                   tcp_flags_orig=0x23, tcp_flags_reply=0x23))
    return made


def _in_namespace(ns, *args):
    argv = ["ip", "netns", "exec", ns, HOST_PYTHON, os.path.abspath(__file__), "--root", collections_root()]
    proc = subprocess.run(argv + [str(a) for a in args], capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode:
        raise RuntimeError("%s in %s failed: %s" % (args[0], ns, proc.stderr.strip()[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def populate(ns, count, first=0):
    """Create sessions first .. first+count-1 in the namespace; {"created", "seconds", "table"}."""
    return _in_namespace(ns, "create", first, count, 0)


def churn(ns, first, add, remove):
    """Create `add` new sessions from index `first` on and delete sessions 0 .. remove-1."""
    return _in_namespace(ns, "churn", first, add, remove)


def _child(action, first, count, remove):
    """Runs inside the namespace: create (and for churn, delete) with the collection's driver."""
    import time
    from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack, conntrack_count
    started = time.monotonic()
    with Conntrack() as table:
        failed = table.create(entries(first, count))
        gone = table.delete(entries(0, remove)) if action == "churn" and remove else []
    if failed or gone:
        sample = (failed or gone)[0]
        raise SystemExit("%d create / %d delete failures, e.g. errno %d for %s"
                         % (len(failed), len(gone), sample[1], sample[0].orig))
    print(json.dumps({"created": count, "deleted": remove if action == "churn" else 0,
                      "seconds": round(time.monotonic() - started, 3), "table": conntrack_count()}))


if __name__ == "__main__":
    # --root DIR ACTION FIRST COUNT REMOVE
    sys.path.insert(0, sys.argv[2])
    _child(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
