"""Benchmark (not a test): gather and re-create N TCP source-NAT sessions, three ways each.

    sudo python3 bench/bench_sessions.py [--sizes 1000,10000,100000] [--pyroute2-limit 60]

In a scratch network namespace (nfsb-<pid>) with IPv4 nat chains loaded, for each size:
  gather:    ours (Conntrack().dump())  |  `conntrack -L -o xml` parsed with xml.etree  |  pyroute2 dump
  re-create: ours (Conntrack().create()) |  `conntrack -R -` fed `-I ... --src-nat IP:PORT` lines
             |  pyroute2 `entry('add')` one acknowledged message at a time
The pyroute2 paths stop after --pyroute2-limit seconds; the table says how far they got.
Every path runs in its own child process (so peak memory is its own): wall time, system CPU time
(the kernel's share: netlink work and conntrack itself), peak RSS (VmHWM) of the child and of the
tool it runs. Each path produces the same thing: ConntrackEntry tuples (gather) or N kernel entries with
their NAT binding (re-create, checked after each run).
"""

from __future__ import print_function

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAT_CHAINS = """
table ip nat {
    chain pre { type nat hook prerouting priority -100; }
    chain post { type nat hook postrouting priority 100; }
}
"""


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_results  # noqa: E402  (bench/results/sessions.json)
sys.path.insert(0, bench_results.collections_root())
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack  # noqa: E402
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (  # noqa: E402
    IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, IPS_SRC_NAT, TCP_STATES, ConntrackEntry, FlowTuple,
    translation,
)

SEEN = IPS_ASSURED | IPS_SEEN_REPLY


def synthetic_sessions(count):
    """count TCP sessions as an SNAT gathered them: 250 inside hosts, 200 servers, 4 public addresses."""
    entries = []
    for i in range(count):
        server = "198.51.100.%d" % (i % 200 + 1)
        orig = FlowTuple(2, 6, "192.0.2.%d" % (i % 250 + 1), server, 1024 + i // 250, 443)
        reply = FlowTuple(2, 6, server, "203.0.113.%d" % (i % 4 + 1), 443, 1024 + i // 4)
        entries.append(ConntrackEntry(orig, reply, SEEN | IPS_CONFIRMED | IPS_SRC_NAT, 3600, tcp_state=3,
                                      tcp_wscale_orig=7, tcp_wscale_reply=7, tcp_flags_orig=0x23, tcp_flags_reply=0x23))
    return entries


# -- the measured paths (each runs in a child process inside the namespace) ----------------------

def gather_ours(_entries, _limit):
    with conntrack.Conntrack() as table:
        return len(table.dump())


def gather_xml(_entries, _limit):
    import xml.etree.ElementTree as ET
    tool = watched(subprocess.Popen(["conntrack", "-L", "-o", "xml"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    text, _err = tool.communicate()
    if tool.returncode:
        raise RuntimeError("conntrack -L failed")
    states = {name.upper().replace("-", "_"): number for number, name in enumerate(TCP_STATES)}
    states["SYN_SENT2"] = 9
    entries = []
    for flow in ET.fromstring(text):
        tuples, meta = {}, {}
        for part in flow:
            direction = part.get("direction")
            if direction in ("original", "reply"):
                l3, l4 = part.find("layer3"), part.find("layer4")
                tuples[direction] = FlowTuple(int(l3.get("protonum")), int(l4.get("protonum")),
                                              l3.findtext("src"), l3.findtext("dst"),
                                              int(l4.findtext("sport") or 0), int(l4.findtext("dport") or 0))
            elif direction == "independent":
                meta = part
        status = (IPS_ASSURED if meta.find("assured") is not None else 0) | \
                 (0 if meta.find("unreplied") is not None else IPS_SEEN_REPLY)
        state = meta.findtext("state")
        entry = ConntrackEntry(tuples["original"], tuples["reply"], status, int(meta.findtext("timeout") or 0),
                               mark=int(meta.findtext("mark") or 0), zone=int(meta.findtext("zone") or 0),
                               tcp_state=states.get(state) if state else None)
        if translation(entry) != (None, None):  # the XML has no NAT status bits
            entries.append(entry)
    return len(entries)


def gather_pyroute2(_entries, limit):
    from pyroute2 import Conntrack
    deadline = time.monotonic() + limit
    entries = []
    with Conntrack() as table:
        for found in table.dump_entries():
            if time.monotonic() > deadline:
                break
            if not found.status & 0x30:
                continue
            o, r, info = found.tuple_orig, found.tuple_reply, found.protoinfo
            entries.append(ConntrackEntry(
                FlowTuple(o.family, o.proto, o.saddr, o.daddr, o.sport, o.dport),
                FlowTuple(r.family, r.proto, r.saddr, r.daddr, r.sport, r.dport),
                found.status, found.timeout, found.mark or 0, found.zone or 0, None,
                info.state if info else None))
    return len(entries)


def create_ours(entries, _limit):
    with conntrack.Conntrack() as table:
        failures = table.create(entries)
    return len(entries) - len(failures)


def restore_lines(entries):
    for e in entries:
        nat = translation(e)[0]
        yield ("-I -p tcp -s %s -d %s --sport %d --dport %d --state %s -t %d -u ASSURED,SEEN_REPLY "
               "--src-nat %s:%d\n" % (e.orig.src, e.orig.dst, e.orig.sport, e.orig.dport,
                                      TCP_STATES[e.tcp_state].upper().replace("-", "_"), e.timeout, nat[0], nat[1]))


def create_restore(entries, _limit):
    tool = watched(subprocess.Popen(["conntrack", "-R", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True))
    for line in restore_lines(entries):
        tool.stdin.write(line)
    _out, err = tool.communicate()
    if tool.returncode:
        raise RuntimeError("conntrack -R failed: %s" % err)
    return len(entries)


def create_pyroute2(entries, limit):
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    deadline = time.monotonic() + limit
    done = 0
    with Conntrack() as table:
        for e in entries:
            if time.monotonic() > deadline:
                break
            nat_addr, nat_port = translation(e)[0]
            orig = NFCTAttrTuple(saddr=e.orig.src, daddr=e.orig.dst, proto=6, sport=e.orig.sport, dport=e.orig.dport)
            table.entry(
                "add", tuple_orig=orig, tuple_reply=orig.reverse(), timeout=e.timeout,
                status=IPS_CONFIRMED | (e.status & SEEN),
                protoinfo={"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
                    ["CTA_PROTOINFO_TCP_STATE", e.tcp_state],
                    ["CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", e.tcp_wscale_orig],
                    ["CTA_PROTOINFO_TCP_WSCALE_REPLY", e.tcp_wscale_reply],
                    ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", {"value": (e.tcp_flags_orig | 8, 0xff)}],
                    ["CTA_PROTOINFO_TCP_FLAGS_REPLY", {"value": (e.tcp_flags_reply | 8, 0xff)}]]}]]},
                nat_src={"attrs": [["CTA_NAT_V4_MINIP", nat_addr],
                                   ["CTA_NAT_PROTO", {"attrs": [["CTA_PROTONAT_PORT_MIN", nat_port]]}]]})
            done += 1
    return done


PATHS = {f.__name__: f for f in (gather_ours, gather_xml, gather_pyroute2, create_ours, create_restore, create_pyroute2)}


def status_kb(field, pid="self"):
    """VmRSS or VmHWM (peak RSS) of a process's own memory, in KB.

    Not getrusage(): its ru_maxrss also counts the memory of the process that spawned this one
    (the kernel carries the high-water mark across exec), which here is the whole benchmark.
    """
    try:
        with open("/proc/%s/status" % pid) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


TOOL_PEAK_KB = [0]


def watched(proc):
    """Follow a tool's peak RSS while it runs (it is gone, with its numbers, once it exits)."""
    def follow():
        while proc.poll() is None:
            TOOL_PEAK_KB[0] = max(TOOL_PEAK_KB[0], status_kb("VmHWM", proc.pid))
            time.sleep(0.002)
    threading.Thread(target=follow, daemon=True).start()
    return proc


def worker(name, entries_file, limit):
    entries = None
    if name.startswith("create"):
        with open(entries_file, "rb") as handle:
            entries = pickle.load(handle)
    base = status_kb("VmRSS")
    t0, c0 = time.perf_counter(), os.times()
    done = PATHS[name](entries, limit)
    wall, c1 = time.perf_counter() - t0, os.times()
    print(json.dumps({
        "done": done, "wall": wall,
        "sys": (c1.system - c0.system) + (c1.children_system - c0.children_system),
        "user": (c1.user - c0.user) + (c1.children_user - c0.children_user),
        "base_kb": base,
        "peak_kb": status_kb("VmHWM"),
        "tool_kb": TOOL_PEAK_KB[0],
    }))


# -- the driver ----------------------------------------------------------------------------------

def sh(*argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def measure(ns, name, entries_file, limit, python):
    proc = subprocess.run(["ip", "netns", "exec", ns, python, os.path.abspath(__file__), "--worker", name,
                           entries_file, str(limit)], capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_once(ns, name, entries_file, limit, python):
    """One run of a path; a re-create starts from an empty table and is checked afterwards."""
    if name.startswith("create"):
        sh("ip", "netns", "exec", ns, "conntrack", "-F")
    result = measure(ns, name, entries_file, limit, python)
    if name.startswith("create") and "error" not in result:
        total, translated = table_entries(ns)
        result["check"] = (total, translated)
        if result["done"] != translated:
            result["error"] = "only %d of %d entries translated" % (translated, result["done"])
    return result


def table_entries(ns):
    """(all entries, translated entries) in the namespace, by our driver in a child."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.nfstate.migration.plugins.module_utils import conntrack\n"
            "with conntrack.Conntrack() as t: print(len(t.dump(False)), len(t.dump()))" % bench_results.collections_root())
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", code).stdout.split()
    return int(out[0]), int(out[1])


def mb(kb):
    return "%.0f" % (kb / 1024.0)


def run_size(ns, count, args, python, rows):
    entries = synthetic_sessions(count)
    with tempfile.NamedTemporaryFile(prefix="nfsb-", suffix=".pickle", delete=False) as handle:
        pickle.dump(entries, handle)
        entries_file = handle.name
    try:
        results = {}
        skip_pyroute2 = args.skip_pyroute2
        for name in ("create_ours", "gather_ours", "gather_xml", "gather_pyroute2",
                     "create_restore", "create_pyroute2"):
            if skip_pyroute2 and name.endswith("pyroute2"):
                continue
            runs = 1 if name.endswith("pyroute2") else args.repeat
            result = None
            for _run in range(runs):
                attempt = measure_once(ns, name, entries_file, args.pyroute2_limit, python)
                if result is None or "error" in result or ("error" not in attempt and attempt["wall"] < result["wall"]):
                    result = attempt
            results[name] = result
            print("  %-16s %6d: %s" % (name, count, json.dumps(result)), file=sys.stderr)
            if name == "create_ours" and "error" in result:
                raise SystemExit("cannot set up the table: %s" % result["error"])
        rows.append((count, results))
    finally:
        os.unlink(entries_file)


def ratio(ours, peer):
    if not ours or not peer or "error" in ours or "error" in peer or not peer.get("wall"):
        return "-"
    if peer["done"] < ours["done"]:
        # The peer stopped at its time limit: compare with its pace over the whole set.
        return "%.3f*" % (ours["wall"] / (peer["wall"] * ours["done"] / max(peer["done"], 1)))
    return "%.3f" % (ours["wall"] / peer["wall"])


def cells(result, count):
    """time, system CPU, memory: peak RSS of the child (its growth while measured) [+ its tool's]."""
    if not result:
        return ["skipped", "", ""]
    if "error" in result:
        return ["error: " + result["error"][:40], "", ""]
    wall = "%.2f" % result["wall"]
    if result["done"] < count:
        wall += " (%d done)" % result["done"]
    memory = "%s (+%s)" % (mb(result["peak_kb"]), mb(result["peak_kb"] - result["base_kb"]))
    if result["tool_kb"]:
        memory += " +%s" % mb(result["tool_kb"])
    return [wall, "%.2f" % result["sys"], memory]


def print_table(title, header, lines):
    widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header))]
    print()
    print(title)
    for row in [header] + lines:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)))


def print_tables(rows):
    for verb, ours_name, peers in (
        ("GATHER", "gather_ours", (("xml", "conntrack -L -o xml + etree", "gather_xml"),
                                   ("pyroute2", "pyroute2 dump", "gather_pyroute2"))),
        ("RE-CREATE", "create_ours", (("-R", "conntrack -R", "create_restore"),
                                      ("pyroute2", "pyroute2 create", "create_pyroute2"))),
    ):
        header = ["sessions", "ours s", "sys s", "MB"]
        for _short, label, _name in peers:
            header += [label + " s", "sys s", "MB"]
        header += ["ours/" + short for short, _label, _name in peers]
        lines = []
        for count, results in rows:
            ours = results.get(ours_name)
            line = [count] + cells(ours, count)
            for _short, _label, name in peers:
                line += cells(results.get(name), count)
            line += [ratio(ours, results.get(name)) for _short, _label, name in peers]
            lines.append(line)
        print_table(verb, header, lines)
    print()
    print("s: wall time; sys s: system CPU time (the kernel's share, tools included);")
    print("MB: peak RSS of the measuring process (+ its growth during the run) + peak RSS of the tool it ran;")
    print("ours/X: our time divided by X's (below 1: ours is faster); * X stopped at its time limit and is")
    print("compared at its pace over the whole set.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--pyroute2-limit", type=float, default=60.0,
                        help="seconds each pyroute2 path may run per size (default 60)")
    parser.add_argument("--skip-pyroute2", action="store_true")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each non-pyroute2 path; the fastest is shown (a shared machine is noisy)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of every measured path")
    parser.add_argument("--worker", nargs=3, metavar=("PATH", "ENTRIES", "LIMIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], float(args.worker[2]))
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not args.skip_pyroute2:
        try:
            subprocess.run([args.python, "-c", "import pyroute2"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            print("pyroute2 not importable by %s: its columns are skipped" % args.python, file=sys.stderr)
            args.skip_pyroute2 = True
    sizes = [int(s) for s in args.sizes.split(",")]
    if max(sizes) > conntrack.conntrack_max():
        raise SystemExit("nf_conntrack_max (%d) is below %d" % (conntrack.conntrack_max(), max(sizes)))
    ns = "nfsb-%d" % os.getpid()
    rows = []
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=NAT_CHAINS)
        print("python %s, kernel %s, %d CPUs" % (sys.version.split()[0], os.uname().release, os.cpu_count()))
        for count in sizes:
            run_size(ns, count, args, args.python, rows)
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-F"], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
    print_tables(rows)
    path = bench_results.save("sessions", {"sizes": sizes, "repeat": args.repeat, "pyroute2_limit": args.pyroute2_limit,
                                           "rows": [{"sessions": count, "paths": results} for count, results in rows]})
    print("\nresults: %s" % path)


if __name__ == "__main__":
    main()
