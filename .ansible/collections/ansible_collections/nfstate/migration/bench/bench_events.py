# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): conntrack events, the barrier and the batched GET.

    sudo python3 bench/bench_events.py [--sessions 100000] [--rounds 200] [--churn 20000]

In a scratch network namespace (kbe-<pid>, IPv4 nat chains loaded, removed at the end):
  queued:   N translated UDP sessions created while nobody reads, then one barrier() reads the N
            NEW events (events/s parsed into ConntrackEntry, lost or not);
  live:     another process creates N sessions in batches of 1,000 while this one reads
            continuously (events/s, losses);
  barrier:  latency of barrier() on an idle table and while another process churns sessions
            (create and delete 500 at a time, --churn events a second), 5 ms apart: median and 99th
            percentile;
  get:      Conntrack.get() of 500 sessions out of a table of N, against a dump of the table.
Prints the figures and writes them to bench/results/events.json.
"""

from __future__ import print_function

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAT_CHAINS = """
table ip nat {
    chain pre { type nat hook prerouting priority -100; }
    chain post { type nat hook postrouting priority 100; }
}
"""


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_results  # noqa: E402  (bench/results/events.json)
sys.path.insert(0, bench_results.collections_root())
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack  # noqa: E402
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack_events  # noqa: E402
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (  # noqa: E402
    IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, IPS_SRC_NAT, ConntrackEntry, FlowTuple,
)

STATUS = IPS_ASSURED | IPS_SEEN_REPLY | IPS_CONFIRMED | IPS_SRC_NAT


def sessions(count, first=0):
    """count UDP source-NAT sessions: 250 inside hosts, 200 servers, 16 public addresses."""
    entries = []
    for n in range(first, first + count):
        orig = FlowTuple(2, 17, "192.0.2.%d" % (n % 250 + 1), "198.51.100.%d" % (n % 200 + 1), 1024 + n // 250, 53)
        reply = FlowTuple(2, 17, orig.dst, "203.0.113.%d" % (n % 16 + 1), 53, 1024 + n // 16)
        entries.append(ConntrackEntry(orig, reply, STATUS, 600))
    return entries


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def create_in_batches(count, first, batch):
    with conntrack.Conntrack() as table:
        for start in range(first, first + count, batch):
            table.create(sessions(min(batch, first + count - start), start))


def churn(stop, first, rate):
    """Create and delete 500 sessions at a time, rate events a second in all, until stop is set."""
    chunk = sessions(500, first)
    period = 2.0 * len(chunk) / rate
    with conntrack.Conntrack() as table:
        next_round = time.monotonic()
        while not stop.is_set():
            table.create(chunk)
            table.delete(chunk)
            next_round += period
            time.sleep(max(0.0, next_round - time.monotonic()))


def queued(count):
    with conntrack_events.ConntrackEvents() as events, conntrack.Conntrack() as table:
        entries = sessions(count)
        table.create(entries)
        start = time.perf_counter()
        got = events.barrier(timeout=120)
        elapsed = time.perf_counter() - start
        table.delete(entries)
        events.barrier(timeout=120)
    news = sum(1 for kind, _e in got if kind == conntrack_events.NEW)
    return {"events": news, "lost": sum(1 for kind, _e in got if kind == conntrack_events.LOST),
            "seconds": round(elapsed, 3), "events_per_s": round(news / elapsed)}


def live(count):
    with conntrack_events.ConntrackEvents() as events:
        creator = multiprocessing.Process(target=create_in_batches, args=(count, 0, 1000))
        creator.start()
        news = lost = 0
        first = None
        while news < count:
            batch = events.read(timeout=5)
            if not batch:
                break
            first = first or time.perf_counter()
            for kind, _entry in batch:
                news += kind == conntrack_events.NEW
                lost += kind == conntrack_events.LOST
            if lost:
                break
        elapsed = time.perf_counter() - (first or time.perf_counter())
        creator.join()
        with conntrack.Conntrack() as table:
            table.delete(sessions(count))
        events.barrier(timeout=120)
    return {"events": news, "lost": lost, "seconds": round(elapsed, 3),
            "events_per_s": round(news / elapsed) if elapsed else None}


def barrier_latency(rounds, rate):
    stop = multiprocessing.Event()
    worker = None
    if rate:
        worker = multiprocessing.Process(target=churn, args=(stop, 200000, rate))
        worker.start()
        time.sleep(0.5)
    times, carried = [], 0
    try:
        with conntrack_events.ConntrackEvents() as events:
            for _round in range(rounds):
                start = time.perf_counter()
                carried += len(events.barrier())
                times.append((time.perf_counter() - start) * 1000.0)
                time.sleep(0.005)  # an agent's rhythm: events pile up between two barriers
    finally:
        if worker is not None:
            stop.set()
            worker.join()
    return {"rounds": rounds, "churn_events_per_s": rate, "median_ms": round(percentile(times, 0.5), 3),
            "p99_ms": round(percentile(times, 0.99), 3), "events_read_meanwhile": carried}


def get_against_dump(count):
    entries = sessions(count)
    with conntrack.Conntrack() as table:
        table.create(entries)
        wanted = entries[::max(1, count // 500)][:500]
        start = time.perf_counter()
        found = table.get(wanted)
        get_s = time.perf_counter() - start
        start = time.perf_counter()
        dumped = table.dump()
        dump_s = time.perf_counter() - start
        table.delete(entries)
    return {"table": len(dumped), "asked": len(wanted), "found": sum(1 for e in found if e is not None),
            "get_ms": round(get_s * 1000.0, 2), "dump_ms": round(dump_s * 1000.0, 1)}


def inside(args):
    results = {"sessions": args.sessions}
    results["queued"] = queued(args.sessions)
    results["live"] = live(args.sessions)
    results["barrier_idle"] = barrier_latency(args.rounds, 0)
    results["barrier_loaded"] = barrier_latency(args.rounds, args.churn)
    results["get"] = get_against_dump(args.sessions)
    json.dump(results, sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--churn", type=int, default=20000, help="events per second made during the loaded barrier rounds")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    if os.geteuid() != 0:
        raise SystemExit("needs root (a scratch network namespace)")
    ns = "kbe-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=NAT_CHAINS, text=True, check=True)
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--inside",
                               "--sessions", str(args.sessions), "--rounds", str(args.rounds),
                               "--churn", str(args.churn)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        results = json.loads(proc.stdout)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    print("conntrack events, %d sessions (%s)" % (args.sessions, bench_results.machine_line()))
    for name in ("queued", "live"):
        row = results[name]
        print("  %-7s %7d NEW events read in %6.3f s: %8s events/s, lost %d"
              % (name, row["events"], row["seconds"], row["events_per_s"], row["lost"]))
    for name in ("barrier_idle", "barrier_loaded"):
        row = results[name]
        print("  %-15s median %7.3f ms, p99 %7.3f ms over %d rounds (%d events read meanwhile, churn %d events/s)"
              % (name, row["median_ms"], row["p99_ms"], row["rounds"], row["events_read_meanwhile"],
                 row["churn_events_per_s"]))
    row = results["get"]
    print("  get     %d of %d sessions (%d found) in %.2f ms; a dump of the table takes %.1f ms"
          % (row["asked"], row["table"], row["found"], row["get_ms"], row["dump_ms"]))
    print("figures written to %s" % bench_results.save("events", results))


if __name__ == "__main__":
    main()
