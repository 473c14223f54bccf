# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): a fleet of pairs migrated in one run, against the number of pairs.

    sudo /path/to/venv/bin/python bench/bench_fleet.py [--pairs 1,2,4,8] [--forks 8]

For each count N, a fleet of N labs (lab/fleet.py: qb1..qbN, one pair nat-a iptables-legacy ->
nat-b nftables each, real sshd on each host, one inventory) with a live TCP flow through each NAT;
one ansible-playbook nfstate.migration.migrate_nat -e nfstate_sources=GROUP run with --forks F. The
figures: the run's wall time, the controller's CPU time (ansible-playbook and its children), and
each pair's freeze window (report.json's cutover.window_ms). With
N <= F the pairs run side by side, so the wall time should grow with N / F, not with N; on a machine
with fewer cores than pairs it grows with the CPU the pairs share.
Figures go to bench/results/fleet.json and are printed as a table. Every lab is removed at the end.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "lab"))
sys.path.insert(0, HERE)

import bench_results  # noqa: E402
from fleet import Fleet  # noqa: E402
from flows import FlowSet  # noqa: E402

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
PREFIX = "qb"


def measure(count, forks, snapshots):
    """One run of `count` pairs; {pairs, forks, wall_seconds, windows_ms, outcomes, rc}."""
    with Fleet(PREFIX, count, forks=forks) as fleet:
        flowsets = [FlowSet(lab, kinds=("tcp",), families=(4,), duration=1800).start() for lab in fleet.labs]
        try:
            argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_sources=%s" % fleet.SOURCES,
                    "-e", "nfstate_snapshot_dir=%s" % snapshots, "--forks", str(forks)]
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            run = subprocess.run(argv, env=fleet.env, capture_output=True, text=True, check=False, timeout=3600)
            wall = time.monotonic() - started
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            healthy = [FlowSet.healthy(flows.stop()) for flows in flowsets]
    if run.returncode != 0:
        sys.stderr.write(run.stdout[-4000:])
    runs = sorted(os.listdir(snapshots))
    with open(os.path.join(snapshots, runs[-1], "fleet.json")) as handle:
        pairs = json.load(handle)["pairs"]
    windows = []
    for pair in pairs:
        with open(os.path.join(pair["snapshots"], "report.json")) as handle:
            windows.append(json.load(handle)["cutover"]["window_ms"])
    # The controller's CPU (ansible-playbook, its forks, ssh clients); the hosts' sshd and modules
    # run on the same two cores but are not its children.
    controller_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"pairs": count, "forks": forks, "rc": run.returncode, "wall_seconds": round(wall, 1),
            "controller_cpu_seconds": round(controller_cpu, 1),
            "windows_ms": windows, "outcomes": [pair["outcome"] for pair in pairs], "flows_whole": healthy}


def table(results, out=None):
    base = results[0]["wall_seconds"] if results else None
    rows = []
    for r in results:
        w = r["windows_ms"] or [0]
        rows.append([r["pairs"], r["forks"], "%.1f" % r["wall_seconds"], "%.2f" % (r["wall_seconds"] / base),
                     "%.1f" % (r["wall_seconds"] / r["pairs"]), "%.1f" % r.get("controller_cpu_seconds", 0),
                     "%.0f" % min(w), "%.0f" % statistics.median(w), "%.0f" % max(w),
                     "%d/%d" % (r["outcomes"].count("migrated"), r["pairs"]),
                     "%d/%d" % (sum(r["flows_whole"]), r["pairs"])])
    return bench_results.print_table(
        ["pairs", "forks", "wall s", "x 1 pair", "s / pair", "controller CPU s", "window min ms", "median", "max", "migrated",
         "flows whole"], rows, out=out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="1,2,4,8", help="the fleet sizes, comma-separated")
    parser.add_argument("--forks", type=int, default=8)
    parser.add_argument("--report", action="store_true", help="print the table of the last run again")
    args = parser.parse_args()
    if args.report:
        table(bench_results.load("fleet")["results"])
        return 0
    if os.geteuid() != 0:
        raise SystemExit("the labs need root")
    results = []
    with tempfile.TemporaryDirectory(prefix="nfstate-bench-fleet-") as snapshots:
        for count in [int(n) for n in args.pairs.split(",")]:
            results.append(measure(count, args.forks, os.path.join(snapshots, str(count))))
            print("%d pair(s): %.1f s" % (count, results[-1]["wall_seconds"]), flush=True)
    print("fleet in one run, forks %d (%s)" % (args.forks, bench_results.machine_line()))
    table(results)
    print("figures written to %s" % bench_results.save("fleet", {"results": results}))
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
