# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): the migrate_nat playbook in the lab, timed from the client's side.

    sudo /path/to/venv/bin/python bench/bench_migration.py [--sizes 100,1000,10000,100000]
                                                           [--churn-size 10000 --churn 300]

For each size N, in a fresh lab (bn<N>: nat-a iptables-legacy, nat-b nftables, real sshd on each):
  1. nat-a gets N synthetic translated TCP sessions (bench/lab_sessions.py, the collection's driver)
     next to the lab's live flows (lab/flows.py: TCP, UDP, ping, port forward; IPv4 and IPv6);
  2. the client's interface is captured (tcpdump) and a prober opens a new TCP connection through
     the NAT every 20 ms (bench/new_connections.py);
  3. ansible-playbook nfstate.migration.migrate_nat runs over SSH, with a callback of ours
     (bench/callback_plugins/task_times.py) noting when every task starts;
  4. figures: each phase (report.json), the freeze window as the client saw it (longest stretch
     without a new connection), the redirect gap as the client saw it (longest silence of an
     established flow around the first packet through the target, from the capture), and the tasks
     that ran inside the freeze window (the profile).
With --churn, the --churn-size case runs again, each time with that many sessions created and as
many ended on nat-a between the pre-copy and the freeze: the delta grows, the table does not.
Figures go to bench/results/migration.json and are printed as tables. Every lab is removed at the end.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "lab"))
sys.path.insert(0, HERE)

import bench_results  # noqa: E402
import lab_sessions  # noqa: E402
import new_connections  # noqa: E402
import pcap_gaps  # noqa: E402
from flows import FlowSet  # noqa: E402
from nfstate_lab import Lab  # noqa: E402

HOST_PYTHON = "/usr/bin/python3"
PROBE_PORT = 5007
QUIET_SECONDS = 2.0
# The playbook's tasks that bound the freeze window: new connections wait from the freeze on, until
# the target holds the addresses.
FREEZE_TASK = "Cut over (catch up, freeze, delta, apply, check, claim, release)"
PRECOPY_GATHERED = "Carry the pre-copy to the target"


def lab_name(count, churn=0):
    short = "%dk" % (count // 1000) if count >= 1000 and count % 1000 == 0 else str(count)
    return ("bnc%d" % churn)[:8] if churn else ("bn" + short)[:8]


def mac_of(lab, role, dev):
    out = lab.run(role, ["ip", "-j", "link", "show", "dev", dev]).stdout
    return json.loads(out)[0]["address"]


class Started:
    """Processes this benchmark started, ended by PID (also when something fails)."""

    def __init__(self, lab):
        self.lab = lab
        self.procs = []

    def popen(self, role, argv, name, **kwargs):
        proc = self.lab.popen(role, argv, **kwargs)
        self.procs.append(proc)
        # Recorded with the lab's pids too, so that its teardown ends them if we die.
        with open(os.path.join(self.lab.workdir, "pids", "bench-%s.pid" % name), "w") as handle:
            handle.write("%d\n" % proc.pid)
        return proc

    def end(self, proc, sig=signal.SIGTERM, grace=5.0):
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def end_all(self):
        for proc in self.procs:
            self.end(proc, grace=2.0)


def wait_ready(proc, what, timeout=10.0):
    """A worker prints 'ready' (tcpdump: 'listening on') once it can take traffic."""
    deadline = time.monotonic() + timeout
    stream = proc.stdout if proc.stdout is not None else proc.stderr
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if "ready" in line or "listening on" in line:
            return
    raise RuntimeError("%s did not start (exit %s)" % (what, proc.poll()))


def task_profile(times_path):
    """[(task, start, seconds)] in order: a task lasts until the next one starts."""
    with open(times_path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    marks = [r for r in records if r["event"] in ("start", "end")]
    tasks = []
    for this, following in zip(marks, marks[1:]):
        if this["event"] == "start":
            tasks.append((this["task"], this["at"], following["at"] - this["at"]))
    return tasks


def window_tasks(tasks, window_from, window_to):
    """The tasks that ran while new connections waited, with the part of each inside the window
    (the parts add up to the window)."""
    inside = []
    if window_from is None:
        return inside
    for name, start, seconds in tasks:
        overlap = min(start + seconds, window_to) - max(start, window_from)
        if overlap > 0:
            inside.append({"task": name, "at": start, "seconds": round(seconds, 3), "inside": round(overlap, 3)})
    return inside


def run_playbook(lab, snapshots, times_path, log_path, on_precopy=None):
    """ansible-playbook nfstate.migration.migrate_nat nat-a -> nat-b; calls on_precopy() once the
    pre-copy is gathered. Returns (exit code, seconds)."""
    env = dict(lab.env)
    env.update(ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="task_times", NFSTATE_BENCH_TASK_TIMES=times_path)
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "nfstate.migration.migrate_nat",
            "-e", "nfstate_source=nat-a", "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % snapshots]
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=snapshots)
        try:
            for line in proc.stdout:
                log.write(line)
                if on_precopy is not None and PRECOPY_GATHERED in line:
                    on_precopy()
                    on_precopy = None
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, time.monotonic() - started


def only_report(snapshots):
    runs = sorted(d for d in os.listdir(snapshots) if os.path.isdir(os.path.join(snapshots, d)))
    with open(os.path.join(snapshots, runs[-1], "nat-a", "report.json")) as handle:
        return json.load(handle)


def run_case(count, churn, args, workdir):
    name = lab_name(count, churn)
    case_dir = os.path.join(workdir, name)
    snapshots = os.path.join(case_dir, "snapshots")
    os.makedirs(snapshots)
    lab = Lab(name, source_impl=args.source_impl, target_impl=args.target_impl)
    started = Started(lab)
    case = {"sessions": count, "churn": churn, "lab": name}
    try:
        lab.up()
        case["populate"] = lab_sessions.populate(lab.ns("nat-a"), count) if count else {"created": 0}
        inside_a, inside_b = lab.devices["nat-a"][0], lab.devices["nat-b"][0]
        macs = {"client": mac_of(lab, "client", "eth0"), "source": mac_of(lab, "nat-a", inside_a),
                "target": mac_of(lab, "nat-b", inside_b)}
        pcap = os.path.join(lab.workdir, "client.pcap")
        stop = os.path.join(lab.workdir, "bench.stop")
        probe_out = os.path.join(lab.workdir, "probe.json")
        patient_out = os.path.join(lab.workdir, "patient.json")
        dump = started.popen("client", ["tcpdump", "-i", "eth0", "-n", "-s", "128", "-U", "-Z", "root", "-w", pcap],
                             "tcpdump", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_ready(dump, "tcpdump")
        server = lab.addresses["server"][4]
        listener = started.popen("server", [HOST_PYTHON, os.path.join(HERE, "new_connections.py"), "serve", server,
                                            str(PROBE_PORT), stop], "listener", stdout=subprocess.PIPE, text=True)
        wait_ready(listener, "probe listener")
        with FlowSet(lab, duration=args.flow_seconds) as flows:
            prober = started.popen("client", [HOST_PYTHON, os.path.join(HERE, "new_connections.py"), "probe", server,
                                              str(PROBE_PORT), stop, probe_out, "--interval", str(args.interval),
                                              "--timeout", str(args.probe_timeout)],
                                   "prober", stdout=subprocess.PIPE, text=True)
            wait_ready(prober, "prober")
            # A patient client: what a connection whose SYN met the window waits, retransmission included.
            patient = started.popen("client", [HOST_PYTHON, os.path.join(HERE, "new_connections.py"), "probe", server,
                                               str(PROBE_PORT), stop, patient_out, "--interval", "0.05",
                                               "--timeout", "5"], "patient prober", stdout=subprocess.PIPE, text=True)
            wait_ready(patient, "patient prober")
            quiet = (time.time(), None)
            time.sleep(QUIET_SECONDS)
            quiet = (quiet[0], time.time())

            def make_churn():
                case["churned"] = lab_sessions.churn(lab.ns("nat-a"), first=count, add=churn, remove=min(churn, count))
            times_path = os.path.join(case_dir, "task_times.jsonl")
            code, seconds = run_playbook(lab, snapshots, times_path, os.path.join(case_dir, "ansible.log"),
                                         on_precopy=make_churn if churn else None)
            time.sleep(1.5)
            open(stop, "w").close()
            prober.wait(timeout=10)
            patient.wait(timeout=10)
            flow_results = flows.stop()
        listener.wait(timeout=10)
        started.end(dump, sig=signal.SIGINT)
        case["playbook"] = {"exit": code, "seconds": round(seconds, 1)}
        if churn and "churned" not in case:
            raise RuntimeError("the churn never ran: no task named %r in the playbook's output" % PRECOPY_GATHERED)
        if code != 0:
            raise RuntimeError("the playbook failed (%d); see %s" % (code, os.path.join(case_dir, "ansible.log")))
        case["report"] = only_report(snapshots)
        tasks = task_profile(times_path)
        with open(probe_out) as handle:
            attempts = json.load(handle)["attempts"]
        case["freeze_window"] = new_connections.freeze_window(attempts, after=quiet[0])
        with open(patient_out) as handle:
            case["syn_wait"] = new_connections.longest_wait(json.load(handle)["attempts"], after=quiet[0])
        case["window_tasks"] = window_tasks(tasks, case["freeze_window"]["from"], case["freeze_window"]["to"])
        freeze_start = next((start for task, start, _s in tasks if task == FREEZE_TASK), None)
        if freeze_start is not None and case["freeze_window"]["from"] is not None:
            case["freeze_window"]["from_after_freeze_task_s"] = round(case["freeze_window"]["from"] - freeze_start, 3)
        gaps = pcap_gaps.flow_gaps(pcap_gaps.read_pcap(pcap), macs["client"], macs["source"], macs["target"],
                                   window=1.0, quiet=quiet)
        case["capture"] = gaps
        case["flows"] = {flow: {k: r.get(k) for k in ("ok", "lost", "max_gap_ms", "peers")}
                         for flow, r in flow_results.items()}
        return case
    finally:
        started.end_all()
        lab.down()


def redirect_gap(case):
    """(largest gap in ms among the flows around the switch, its flow)."""
    flows = case["capture"]["flows"]
    named = [(row.get("gap_ms", 0.0), name) for name, row in flows.items() if "gap_ms" in row]
    return max(named) if named else (None, None)


def phase_names(cases):
    names = []
    for case in cases:
        for phase in case["report"]["phases"]:
            if phase["phase"] not in names:
                names.append(phase["phase"])
    return names


def summary_table(cases):
    phases = phase_names(cases)
    header = ["sessions", "delta +/-"] + ["%s s" % p for p in phases] + [
        "window (playbook) s", "window (client) s", "SYN in the window waits s", "redirect gap ms (flow)",
        "quiet gap ms", "run max gap ms", "flows whole"]
    rows = []
    for case in cases:
        report = case["report"]
        seconds = {p["phase"]: p["seconds"] for p in report["phases"]}
        gap, flow = redirect_gap(case)
        quiet = max((row.get("quiet_gap_ms", 0.0) for row in case["capture"]["flows"].values()), default=0.0)
        whole = max((r["max_gap_ms"] or 0.0) for r in case["flows"].values())
        healthy = all(r["ok"] for r in case["flows"].values())
        rows.append([case_label(case), "%d/%d" % (report["delta_sessions"], report["delta_removed"])]
                    + ["%.2f" % seconds[p] if p in seconds else "-" for p in phases]
                    + ["%.2f" % report.get("freeze_window_seconds", 0), "%.2f" % case["freeze_window"]["seconds"],
                       "%.2f" % (case.get("syn_wait") or {}).get("seconds", 0), "%s (%s)" % (gap, flow),
                       "%.1f" % quiet, "%.1f" % whole, "yes" if healthy else "NO"])
    return header, rows


def profile_rows(cases):
    """Seconds of each task inside the client's freeze window, one column per case (repeated names summed)."""
    order, table = [], {}
    for index, case in enumerate(cases):
        for task in case["window_tasks"]:
            if task["task"] not in table:
                order.append(task["task"])
                table[task["task"]] = [0.0] * len(cases)
            table[task["task"]][index] += task["inside"]
    rows = [[name[:64]] + ["%.2f" % s for s in table[name]] for name in order]
    rows.append(["(sum = the window)"] + ["%.2f" % sum(t["inside"] for t in case["window_tasks"]) for case in cases])
    return rows


# The cutover's own steps, as it timed them on the controller's clock (report.json's "cutover").
PARTS = ("frozen", "delta_taken", "applied", "checked", "claimed", "released")
# What each step took on its agent; the rest of a part is the channel and the controller.
AGENT_STEPS = ("freeze", "delta", "apply", "check", "claim", "release")


def part_rows(cases):
    """Milliseconds from the freeze request to the end of each step of the window, per case."""
    rows = []
    for part in PARTS:
        row = [part]
        for case in cases:
            parts = ((case["report"].get("cutover") or {}).get("parts_ms") or {})
            row.append("%.1f" % parts[part] if part in parts else "-")
        rows.append(row)
    for label, field in (("caught up before the freeze: sessions", "added"), ("caught up before the freeze: ms", "ms")):
        row = [label]
        for case in cases:
            rounds = (case["report"].get("cutover") or {}).get("caught_up") or []
            row.append(" / ".join(str(r.get(field)) for r in rounds) or "-")
        rows.append(row)
    row = ["in the window's delta: sessions"]
    for case in cases:
        delta = (case["report"].get("cutover") or {}).get("delta") or {}
        row.append("%s+%s-%s" % (delta.get("added", "-"), delta.get("refreshed", "-"), delta.get("removed", "-")))
    rows.append(row)
    for step in AGENT_STEPS:
        row = ["  on the agent: %s" % step]
        for case in cases:
            took = ((case["report"].get("cutover") or {}).get("agent_ms") or {})
            row.append("%.1f" % took[step] if took.get(step) is not None else "-")
        rows.append(row)
    return rows


def case_label(case):
    return "%d%s" % (case["sessions"], " +%d churn" % case["churn"] if case["churn"] else "")


def print_all(cases, gather_profile=None):
    print("\nMIGRATION (phases from report.json; delta +/-: sessions the delta carried / flagged as ended)")
    bench_results.print_table(*summary_table(cases))
    print("\nwindow (playbook): report.json's freeze_window_seconds, by the playbook's own clock;")
    print("window (client): longest stretch without a new TCP connection through the NAT (prober every 20 ms);")
    print("SYN in the window waits: the longest handshake of a patient prober (every 50 ms, 5 s to connect):")
    print("  a SYN the freeze dropped is sent again after the kernel's initial retransmission timeout (1 s);")
    print("redirect gap: longest silence of an established flow, at the client, within 1 s of the first packet")
    print("through the target (capture); quiet gap: the same flows' longest silence in 2 s before the migration;")
    print("run max gap: lab/flows.py's max_gap_ms over the whole run (CPU contention included).")
    print("\nPROFILE: seconds of each task inside the client's freeze window (a task lasts until the next starts)")
    bench_results.print_table(["task"] + [case_label(c) for c in cases], profile_rows(cases), left_first=True)
    print("\nCUTOVER: ms from the freeze request to the end of each step, by the cutover's clock (controller)")
    bench_results.print_table(["step"] + [case_label(c) for c in cases], part_rows(cases), left_first=True)
    if gather_profile:
        print("\nPROFILE of the delta gather at %d sessions (cProfile, in nat-a's namespace), cumulative:"
              % gather_profile["sessions"])
        print(gather_profile["text"])


# -- the delta gather, profiled inside the namespace -------------------------------------------------------

def profile_gather_worker(root, workdir):
    """Runs in nat-a's namespace: gather a full snapshot, then profile the delta gather against it."""
    import cProfile
    import io
    import pstats
    sys.path.insert(0, root)
    from ansible_collections.nfstate.migration.plugins.module_utils.resources.nat_sessions import gather_sessions
    full = os.path.join(workdir, "precopy.json.gz")
    t0 = time.perf_counter()
    gather_sessions({}, "nat", dest=full)
    t1 = time.perf_counter()
    profiler = cProfile.Profile()
    profiler.enable()
    gather_sessions({}, "nat", dest=os.path.join(workdir, "delta.json.gz"), since=full)
    profiler.disable()
    t2 = time.perf_counter()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(14)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print(json.dumps({"full_s": round(t1 - t0, 3), "delta_s": round(t2 - t1, 3),
                      "text": "\n".join(lines[start:start + 15])}))


def profile_gather(count, args):
    """In a scratch lab: the delta gather's own profile at `count` sessions (no traffic)."""
    lab = Lab("bnprof", source_impl=args.source_impl, target_impl=args.target_impl)
    try:
        lab.up()
        lab_sessions.populate(lab.ns("nat-a"), count)
        scratch = tempfile.mkdtemp(prefix="nfsbn-prof-")
        try:
            out = lab.run("nat-a", [HOST_PYTHON, os.path.abspath(__file__), "--profile-worker",
                                    lab_sessions.collections_root(), scratch], timeout=300).stdout
        finally:
            for name in os.listdir(scratch):
                os.unlink(os.path.join(scratch, name))
            os.rmdir(scratch)
        result = json.loads(out.strip().splitlines()[-1])
        result["sessions"] = count
        return result
    finally:
        lab.down()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--churn-size", type=int, default=10000, help="the size the churn cases run at")
    parser.add_argument("--churn", default="300",
                        help="comma-separated: sessions created and as many ended between pre-copy and freeze "
                             "(one extra run each; empty: none)")
    parser.add_argument("--source-impl", default="iptables-legacy")
    parser.add_argument("--target-impl", default="nftables")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between new-connection probes")
    parser.add_argument("--probe-timeout", type=float, default=0.5)
    parser.add_argument("--flow-seconds", type=float, default=900, help="upper bound; flows stop after the run")
    parser.add_argument("--profile-gather", type=int, default=0,
                        help="profile the nat_sessions module's own delta gather (gather with since=, not the "
                             "cutover's events) at this many sessions (0: skip)")
    parser.add_argument("--report", action="store_true", help="print the tables of the last run again")
    parser.add_argument("--profile-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_worker:
        profile_gather_worker(*args.profile_worker)
        return 0
    if args.report:
        last = bench_results.load("migration")
        print("machine: %s, measured %s" % (bench_results.machine_line(last["machine"]), last["measured_at"]))
        print_all(last["cases"], last.get("gather_profile"))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    plan = [(int(s), 0) for s in args.sizes.split(",") if s]
    plan += [(args.churn_size, int(c)) for c in args.churn.split(",") if c.strip() and int(c)]
    os.makedirs(bench_results.RESULTS, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="migration-", dir=bench_results.RESULTS)
    print("machine: %s" % bench_results.machine_line(), flush=True)
    cases = []
    for count, churn in plan:
        print("== %d sessions%s" % (count, ", churn %d" % churn if churn else ""), flush=True)
        case = run_case(count, churn, args, workdir)
        cases.append(case)
        print("   playbook %.1f s, freeze window %.2f s (client), redirect gap %s ms" % (
            case["playbook"]["seconds"], case["freeze_window"]["seconds"], redirect_gap(case)[0]), flush=True)
        bench_results.save("migration", {"cases": cases, "workdir": workdir})
    gather = profile_gather(args.profile_gather, args) if args.profile_gather else None
    path = bench_results.save("migration", {"cases": cases, "workdir": workdir, "gather_profile": gather})
    print_all(cases, gather)
    print("\nresults: %s (ansible logs, task times and snapshots under %s)" % (path, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
