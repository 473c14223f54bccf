# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fault matrix (not a test): migrate_nat in a lab for each phase x each fault, as a table.

    sudo /path/to/venv/bin/python bench/fault_matrix.py [--phases freeze,delta] [--faults target-link]
                                                        [--jobs 2] [--cut-seconds 20]
    sudo ... bench/fault_matrix.py --report        # the table of the last run again

Phases: preflight, pre-copy, freeze, delta, redirect, release, cleanup. Faults: the management
link to the source cut (source-link) or to the target (target-link) for --cut-seconds, then back;
the controller's ansible-playbook and its workers SIGKILLed (controller-kill); the target's NAT
rules and sessions removed by someone else (target-state); the controller's snapshot directory
(a tmpfs of 4 MiB) filled up (snapshots-full). How each phase is hit and what each column means:
lab/faults.py and docs/faults.md. Each cell runs in a lab of its own (fm1..fmN for --jobs N), the
lab's flows running through the run and through the re-run of the same command that follows it.
Figures go to bench/results/fault_matrix.json; each lab is removed at the end of its cell.
"""

import argparse
import datetime
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lab"))
sys.path.insert(0, HERE)

import bench_results  # noqa: E402
import faults  # noqa: E402
from nfstate_lab import Lab  # noqa: E402


def run_all(plan, args, workdir):
    """Runs the cells, --jobs at a time, each in lab fm<slot>; yields them as they end."""
    slots = ["fm%d" % (i + args.first_lab) for i in range(args.jobs)]
    free = list(slots)

    def one(index, phase, fault):
        name = free.pop()
        try:
            cell_dir = os.path.join(workdir, "%02d-%s-%s" % (index, phase, fault))
            try:
                return faults.run_cell(Lab(name, source_impl=args.source_impl, target_impl=args.target_impl),
                                       phase, fault, cell_dir, cut_seconds=args.cut_seconds,
                                       families=tuple(int(f) for f in args.families.split(",")))
            # One cell's failure is a row of the table, not the end of the run.
            except Exception as exc:  # pylint: disable=broad-except
                return {"phase": phase, "fault": fault, "error": "%s: %s" % (type(exc).__name__, exc)}
        finally:
            free.append(name)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, i, phase, fault) for i, (phase, fault) in enumerate(plan)]
        for future in futures:
            yield future.result()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default=",".join(faults.PHASES))
    parser.add_argument("--faults", default=",".join(faults.FAULTS))
    parser.add_argument("--cells", default="", help="PHASE:FAULT,... instead of --phases x --faults")
    parser.add_argument("--jobs", type=int, default=1, help="cells at a time, each in its own lab")
    parser.add_argument("--first-lab", type=int, default=1, help="labs fmN.. from this N (two runs at once)")
    parser.add_argument("--cut-seconds", type=float, default=20.0, help="how long a management link stays cut")
    parser.add_argument("--families", default="4",
                        help="address families of the lab's flows (4,6 doubles the flows' CPU on a small machine)")
    parser.add_argument("--source-impl", default="iptables-legacy")
    parser.add_argument("--target-impl", default="nftables")
    parser.add_argument("--report", action="store_true", help="print the table of the last run again")
    args = parser.parse_args()
    if args.report:
        last = bench_results.load("fault_matrix")
        print("machine: %s, measured %s" % (bench_results.machine_line(last["machine"]), last["measured_at"]))
        print(faults.format_table([c for c in last["cells"] if "error" not in c]))
        print(faults.summary([c for c in last["cells"] if "error" not in c]))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, a tmpfs)")
    plan = [(p, f) for p in args.phases.split(",") if p for f in args.faults.split(",") if f]
    if args.cells:
        plan = [tuple(c.split(":", 1)) for c in args.cells.split(",") if c]
    unknown = [x for pair in plan for x in pair if x not in faults.PHASES + faults.FAULTS]
    if unknown:
        raise SystemExit("unknown phase or fault: %s" % ", ".join(unknown))
    os.makedirs(bench_results.RESULTS, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="faults-", dir=bench_results.RESULTS)
    print("machine: %s; %s" % (bench_results.machine_line(), datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")),
          flush=True)
    cells = []
    for cell in run_all(plan, args, workdir):
        cells.append(cell)
        if "error" in cell:
            print("%s x %s: ERROR %s" % (cell["phase"], cell["fault"], cell["error"]), flush=True)
        else:
            print("%s x %s: %s (%.0f s)" % (cell["phase"], cell["fault"], " | ".join(faults.row(cell)[2:]),
                                            cell["seconds"]), flush=True)
        bench_results.save("fault_matrix", {"cells": cells, "workdir": workdir, "cut_seconds": args.cut_seconds})
    done = [c for c in cells if "error" not in c]
    print()
    print(faults.format_table(done))
    print(faults.summary(done))
    print("\nlogs (each run's and re-run's ansible output): %s" % workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
