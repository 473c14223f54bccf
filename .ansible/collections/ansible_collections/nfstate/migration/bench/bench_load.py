# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): one migration under load, with the source's table nearly full.

    sudo /path/to/venv/bin/python bench/bench_load.py [--rate 1000] [--fill 0.993]

In a lab (fmload: nat-a iptables-legacy, nat-b nftables):
  1. probers in the client (--probers processes) open new TCP connections through nat-a at --rate
     per second in all for the whole run (bench/new_connections.py: each reset at once, so its NAT
     entry lives 10 s);
  2. once those entries are steady, nat-a is filled with synthetic translated sessions
     (bench/lab_sessions.py, lifetime one hour) up to --fill of nf_conntrack_max. The limit is
     global and read-only inside a namespace (docs: DESIGN), so it cannot be lowered for the lab
     alone: the lab fills the machine's limit, counted per namespace (262,144 here);
  3. migrate_nat nat-a -> nat-b runs, with TCP and UDP flows of the lab through it;
  4. figures: both tables' counts over the run (sampled), the sessions carried (pre-copy, delta),
     the synthetic sessions found on nat-b afterwards (all must be), the new connections that
     failed inside the freeze window and outside it, the kernel's own counters of entries it
     dropped for want of room (conntrack -S: drop, early_drop, insert_failed), and the flows.
Figures go to bench/results/load.json. The lab is removed at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "lab"))
sys.path.insert(0, HERE)

import bench_results  # noqa: E402
import faults  # noqa: E402
import lab_sessions  # noqa: E402
import new_connections  # noqa: E402
from bench_migration import Started, only_report, wait_ready  # noqa: E402
from flows import FlowSet  # noqa: E402
from nfstate_lab import Lab  # noqa: E402

HOST_PYTHON = "/usr/bin/python3"
PROBE_PORT = 5007
LAB = "fmload"


def count(lab, host):
    return int(lab.run(host, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout)


def kernel_drops(lab, host):
    """The kernel's counters of entries it could not keep, summed over the CPUs (conntrack -S)."""
    totals = {"drop": 0, "early_drop": 0, "insert_failed": 0}
    for line in lab.run(host, ["conntrack", "-S"]).stdout.splitlines():
        for field in line.split():
            key, dummy, value = field.partition("=")
            if key in totals:
                totals[key] += int(value)
    return totals


class Sampler(faults.Sampler):
    """Both tables' counts every `interval` seconds, on the wall clock."""

    def __init__(self, lab, interval=0.5):
        faults.Sampler.__init__(self, lambda: (count(lab, "nat-a"), count(lab, "nat-b")), interval, clock=time.time)

    def at(self, moment):
        """The sample nearest a wall-clock moment."""
        return min(self.samples, key=lambda s: abs(s[0] - moment)) if self.samples and moment else None


def synthetic_on(lab, host, fill):
    """How many of the synthetic sessions 0..fill-1 the host's table holds (a dump in its namespace)."""
    script = ("import sys, json; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
              "from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack\n"
              "import lab_sessions\n"
              "want = set(e.orig for e in lab_sessions.entries(0, %d))\n"
              "with Conntrack() as t: have = set(e.orig for e in t.dump())\n"
              "print(json.dumps({'found': len(want & have)}))\n") % (lab_sessions.collections_root(), HERE, fill)
    out = lab.run(host, [HOST_PYTHON, "-c", script], timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])["found"]


def run(args, workdir):
    lab = Lab(LAB, source_impl="iptables-legacy", target_impl="nftables")
    started = Started(lab)
    figures = {"rate": args.rate}
    try:
        lab.up()
        limit = int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())
        figures["nf_conntrack_max"] = limit
        stop = os.path.join(lab.workdir, "load.stop")
        probe_out = os.path.join(lab.workdir, "probe.json")
        server = lab.addresses["server"][4]
        listener = started.popen("server", [HOST_PYTHON, os.path.join(HERE, "new_connections.py"), "serve", server,
                                            str(PROBE_PORT), stop], "listener", stdout=subprocess.PIPE, text=True)
        wait_ready(listener, "listener")
        # Several probers share the rate: one Python process does not open 1,000 connections a second here.
        probers = []
        for index in range(args.probers):
            out = "%s.%d" % (probe_out, index)
            probers.append((started.popen("client", [HOST_PYTHON, os.path.join(HERE, "new_connections.py"), "probe",
                                                     server, str(PROBE_PORT), stop, out, "--interval",
                                                     str(args.probers / float(args.rate)), "--timeout", "0.5"],
                                          "prober%d" % index, stdout=subprocess.PIPE, text=True), out))
            wait_ready(probers[-1][0], "prober")
        time.sleep(12)  # the prober's entries reach their steady number (each lives 10 s)
        steady = count(lab, "nat-a")
        fill = max(0, int(limit * args.fill) - steady)
        figures["populate"] = lab_sessions.populate(lab.ns("nat-a"), fill)
        figures["fill"] = fill
        figures["prober_entries_steady"] = steady
        figures["before"] = {"nat-a": count(lab, "nat-a"), "nat-b": count(lab, "nat-b")}
        drops_before = {h: kernel_drops(lab, h) for h in ("nat-a", "nat-b")}
        sampler = Sampler(lab)
        sampler.start()
        snapshots = os.path.join(workdir, "snapshots")
        os.makedirs(snapshots)
        argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "nfstate.migration.migrate_nat",
                "-e", "nfstate_source=nat-a", "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % snapshots]
        with FlowSet(lab, kinds=("tcp", "udp"), families=(4,), duration=3600) as flows:
            begun = time.time()
            task_at = {}
            with open(os.path.join(workdir, "ansible.log"), "w") as log:
                proc = subprocess.Popen(argv, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=snapshots,
                                        text=True)
                for line in proc.stdout:
                    log.write(line)
                    if line.startswith("TASK ["):
                        task_at.setdefault(line[6:].split("]")[0], time.time())
                code = proc.wait(timeout=3600)
            ended = time.time()
            time.sleep(2)
            flow_results = flows.stop()
        open(stop, "w").close()
        for prober, dummy in probers:
            prober.wait(timeout=30)
        sampler.finish()
        figures["playbook"] = {"exit": code, "seconds": round(ended - begun, 1)}
        if code:
            raise RuntimeError("the playbook failed (%d): %s" % (code, os.path.join(workdir, "ansible.log")))
        report = only_report(snapshots)
        figures["report"] = report
        figures["drops"] = {h: dict((k, v - drops_before[h][k]) for k, v in kernel_drops(lab, h).items())
                            for h in ("nat-a", "nat-b")}
        figures["synthetic_on_target"] = synthetic_on(lab, "nat-b", fill)
        attempts = []
        for dummy, out in probers:
            with open(out) as handle:
                attempts.extend(json.load(handle)["attempts"])
        attempts.sort()
        during = [a for a in attempts if begun <= a[0] <= ended]
        # The window as the client saw it: the longest stretch without a new connection.
        window = new_connections.freeze_window(during)
        failed = sum(1 for a in during if a[1] is None)
        figures["window"] = window
        figures["connections"] = {
            "attempted_during_run": len(during),
            "rate_achieved": round(len(during) / max(1.0, ended - begun), 1),
            "failed_during_run": failed,
            "failed_inside_window": window.get("attempts_failed", 0),
            "failed_outside_window": failed - window.get("attempts_failed", 0),
        }
        cut_over = next((at for name, at in task_at.items() if name.startswith("Cut over")), None)
        figures["cutover_task_at"] = cut_over
        at_freeze = sampler.at(window.get("from") or cut_over)
        figures["at_freeze"] = {"nat-a": at_freeze[1], "nat-b": at_freeze[2]} if at_freeze else None
        peak_a = max(s[1] for s in sampler.samples)
        peak_b = max(s[2] for s in sampler.samples)
        figures["fullness"] = {"nat-a_peak": peak_a, "nat-b_peak": peak_b,
                               "nat-a_peak_share": round(peak_a / float(limit), 4),
                               "nat-b_peak_share": round(peak_b / float(limit), 4),
                               "nat-a_at_start_share": round(figures["before"]["nat-a"] / float(limit), 4)}
        figures["flows"] = {n: {k: r.get(k) for k in ("ok", "lost", "max_gap_ms", "peers")} for n, r in flow_results.items()}
        figures["samples"] = sampler.samples
        return figures
    finally:
        started.end_all()
        lab.down()


def print_figures(f):
    rows = [
        ("nf_conntrack_max (global)", f["nf_conntrack_max"]),
        ("nat-a at start (share of the max)", "%d (%.2f%%)" % (f["before"]["nat-a"], 100 * f["fullness"]["nat-a_at_start_share"])),
        ("  synthetic sessions / prober entries", "%d / %d" % (f["fill"], f["prober_entries_steady"])),
        ("peak nat-a / nat-b (share)", "%d (%.2f%%) / %d (%.2f%%)" % (
            f["fullness"]["nat-a_peak"], 100 * f["fullness"]["nat-a_peak_share"],
            f["fullness"]["nat-b_peak"], 100 * f["fullness"]["nat-b_peak_share"])),
        ("tables at the freeze nat-a / nat-b", "%s / %s" % ((f["at_freeze"] or {}).get("nat-a"), (f["at_freeze"] or {}).get("nat-b"))),
        ("sessions carried: pre-copy / delta (+ / flagged ended)", "%s / %s / %s" % (
            f["report"]["transfers"]["precopy"]["sessions"], f["report"].get("delta_sessions"), f["report"].get("delta_removed"))),
        ("synthetic sessions on nat-b after", "%d of %d" % (f["synthetic_on_target"], f["fill"])),
        ("playbook", "%.1f s" % f["playbook"]["seconds"]),
        ("freeze window: client / cutover's clock", "%s s / %s ms" % (f["window"]["seconds"], f["report"]["cutover"].get("window_ms"))),
        ("new connections during the run (rate)", "%d (%.0f/s)" % (f["connections"]["attempted_during_run"], f["connections"]["rate_achieved"])),
        ("  failed inside the window", f["connections"]["failed_inside_window"]),
        ("  failed outside the window", f["connections"]["failed_outside_window"]),
        ("kernel drops nat-a (drop/early_drop/insert_failed)", "%(drop)d/%(early_drop)d/%(insert_failed)d" % f["drops"]["nat-a"]),
        ("kernel drops nat-b", "%(drop)d/%(early_drop)d/%(insert_failed)d" % f["drops"]["nat-b"]),
        ("flows whole", ", ".join("%s %s" % (n, "yes" if r["ok"] else "NO") for n, r in sorted(f["flows"].items()))),
    ]
    bench_results.print_table(["figure", "value"], rows, left_first=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="new connections per second through the source")
    parser.add_argument("--probers", type=int, default=4, help="prober processes sharing the rate")
    parser.add_argument("--fill", type=float, default=0.993, help="share of nf_conntrack_max nat-a holds at the start")
    parser.add_argument("--report", action="store_true", help="print the figures of the last run again")
    args = parser.parse_args()
    if args.report:
        last = bench_results.load("load")
        print("machine: %s, measured %s" % (bench_results.machine_line(last["machine"]), last["measured_at"]))
        print_figures(last["figures"])
        return 0
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    os.makedirs(bench_results.RESULTS, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="load-", dir=bench_results.RESULTS)
    print("machine: %s" % bench_results.machine_line(), flush=True)
    figures = run(args, workdir)
    path = bench_results.save("load", {"figures": figures, "workdir": workdir})
    print_figures(figures)
    print("\nresults: %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
