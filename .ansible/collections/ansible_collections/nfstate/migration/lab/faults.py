# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults injected into a migration in a lab, one phase x one fault per cell, and what they left.

    cell = run_cell(Lab("fm1"), "freeze", "target-link", workdir)   # a dict; format_table([cell, ...])

A cell builds nothing itself: the caller gives it a Lab (built or not; it is brought up and torn
down here). It starts the lab's flows, runs migrate_nat nat-a -> nat-b with the snapshot directory
on a small tmpfs of its own, and injects the fault when the run reaches the phase:
  - a task's start, seen in ansible-playbook's output (preflight, pre-copy, cleanup);
  - a step of the cutover, held there by the cutover's test hook NFSTATE_CUTOVER_HOLD (freeze:
    frozen, delta: applied on the target, redirect: claimed, release: released, before the commit).
Then it waits for the run to end and the agents to be gone, looks at both hosts, removes the fault
(link back, space freed) and runs the same command again. The flows run through all of it.
Used by bench/fault_matrix.py (the whole matrix) and tests/integration/test_fault_matrix.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

if __package__:  # ansible_collections.nfstate.migration.lab, as the tests import it
    from .flows import FlowSet, new_connection_ok
else:
    from flows import FlowSet, new_connection_ok

PHASES = ("preflight", "pre-copy", "freeze", "delta", "redirect", "release", "cleanup")
FAULTS = ("source-link", "target-link", "controller-kill", "target-state", "snapshots-full")
# Where each phase is hit: ("task", the start of a task of the playbook) or ("hold", a cutover mark).
TRIGGERS = {
    "preflight": ("task", "TASK [Preflight on the target"),
    "pre-copy": ("task", "TASK [Verify the target holds exactly the pre-copy"),
    "freeze": ("hold", "frozen"),
    "delta": ("hold", "applied"),
    "redirect": ("hold", "claimed"),
    "release": ("hold", "released"),
    "cleanup": ("task", "TASK [Clean the source now"),
}
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
CUT_TABLE = "fmcut"
SNAPSHOT_FS_BYTES = 4 << 20
RUN_TIMEOUT = 600
SETTLE_TIMEOUT = 30


def cut_script(table):
    """nft commands that drop everything on a NAT host's management interface (both ways)."""
    return ("add table inet {t}; add chain inet {t} in {{ type filter hook input priority -300 ; }};"
            " add chain inet {t} out {{ type filter hook output priority -300 ; }};"
            " add rule inet {t} in iifname mgmt0 drop; add rule inet {t} out oifname mgmt0 drop").format(t=table)


def migrate_argv(snapshots, *extra):
    return [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=nat-a",
            "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % snapshots] + list(extra)


# ---- what is on a host ---------------------------------------------------------------------------

def agent_pids(lab, host):
    """The cutover agents running in a NAT host's namespace (ours: started with --role)."""
    found = []
    res = subprocess.run(["ip", "netns", "pids", lab.ns(host)], capture_output=True, text=True, check=False)
    for pid in res.stdout.split():
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if b"--role" in argv and any(a.endswith(b".zip") for a in argv):
            found.append(int(pid))
    return found


def ours_on(lab, host):
    """What of ours is active on a host: agents, service addresses, our tables or chains (freeze,
    NAT), translated sessions of the NAT (their reply goes to the external addresses)."""
    found = []
    if agent_pids(lab, host):
        found.append("agent")
    holder = lab.service_holder()
    if holder in (host, "split"):
        found.append("addresses")
    tables = lab.run(host, ["nft", "list", "tables"]).stdout
    if "nfstate_freeze" in tables:
        found.append("freeze")
    if "nfstate_nat" in tables:
        found.append("nat rules")
    for save in ("iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"):
        text = lab.run(host, [save], check=False).stdout
        if "NFSTATE-FREEZE" in text and "freeze" not in found:
            found.append("freeze")
        if any(line.startswith(":NFSTATE") and "FREEZE" not in line for line in text.splitlines()) \
                and "nat rules" not in found:
            found.append("nat rules")
    external = [lab.addresses["external"][4], lab.addresses["external"][6]]
    sessions = 0
    for family in ("ipv4", "ipv6"):
        listing = lab.run(host, ["conntrack", "-L", "-f", family, "-n"], check=False).stdout
        sessions += sum(1 for line in listing.splitlines() if any("dst=%s " % e in line for e in external))
    if sessions:
        found.append("%d sessions" % sessions)
    return found


def host_state(lab):
    holder = lab.service_holder()
    state = {"holder": holder, "ours": {}}
    for host in ("nat-a", "nat-b"):
        if host != holder:
            state["ours"][host] = ours_on(lab, host)
    return state


class Sampler(threading.Thread):
    """Calls take() every `interval` seconds and keeps (clock(), value...) tuples; a sample that
    fails is skipped (a namespace going away at the end)."""

    def __init__(self, take, interval, clock=time.monotonic):
        threading.Thread.__init__(self, daemon=True)
        self.take, self.interval, self.clock = take, interval, clock
        self.samples = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                value = self.take()
                self.samples.append((self.clock(),) + (value if isinstance(value, tuple) else (value,)))
            except Exception:  # pylint: disable=broad-except
                pass
            self.stopping.wait(self.interval)

    def finish(self):
        self.stopping.set()
        self.join(5)


class HolderTimeline(Sampler):
    """Samples which host holds the service addresses, to tell how long none (or both) did."""

    def __init__(self, lab, interval=0.25):
        Sampler.__init__(self, lab.service_holder, interval)

    def stop(self):
        self.finish()
        return self.summary()

    def summary(self):
        """Seconds with no holder and with two holders (between samples)."""
        none = split = 0.0
        for (at, holder), (after, dummy) in zip(self.samples, self.samples[1:]):
            if holder is None:
                none += after - at
            elif holder == "split":
                split += after - at
        return {"none_s": round(none, 1), "split_s": round(split, 1)}


# ---- the faults ----------------------------------------------------------------------------------

class Fault:
    """One fault: inject() at the phase, undo() before the re-run (a link comes back after
    cut_seconds by itself; space is freed)."""

    def __init__(self, kind, lab, snapshots, cut_seconds):
        self.kind, self.lab, self.snapshots, self.cut_seconds = kind, lab, snapshots, cut_seconds
        self.timer = None
        self.cut_host = {"source-link": "nat-a", "target-link": "nat-b"}.get(kind)
        self.filler = os.path.join(snapshots, "filler")
        self.note = ""

    def inject(self, run):
        if self.cut_host:
            self.lab.run(self.cut_host, ["nft", cut_script(CUT_TABLE)])
            self.timer = threading.Timer(self.cut_seconds, self._uncut)
            self.timer.start()
        elif self.kind == "controller-kill":
            # Ansible's workers run each task in a session of their own (setsid): the whole
            # controller dies only with them too, else a worker finishes the task it was running.
            workers = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True,
                                     check=False).stdout.split()
            os.killpg(run.pid, signal.SIGKILL)
            for pid in workers:
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        elif self.kind == "target-state":
            # The lab's own reset of a NAT host: every table, whoever made it.
            self.lab.wipe("nat-b")
        elif self.kind == "snapshots-full":
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while os.write(fd, b"\0" * 65536):
                    pass
            except OSError:  # ENOSPC: full
                pass
            finally:
                os.close(fd)

    def _uncut(self):
        self.lab.run(self.cut_host, ["nft", "delete table inet %s" % CUT_TABLE], check=False)

    def undo(self):
        if self.timer is not None:
            self.timer.join()
        if os.path.exists(self.filler):
            os.unlink(self.filler)


class SnapshotFs:
    """A small tmpfs for the run's snapshot directory (the controller's disk that fills up)."""

    def __init__(self, path, size=SNAPSHOT_FS_BYTES):
        self.path, self.size = path, size

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0700" % self.size, "fmsnap", self.path],
                       check=True)
        return self.path

    def __exit__(self, *exc):
        if subprocess.run(["umount", self.path], check=False).returncode:
            subprocess.run(["umount", "-l", self.path], check=False)  # a process still in it: detach now
        return False


# ---- one cell ------------------------------------------------------------------------------------

class Run:
    """ansible-playbook in its own process group; its output read by a thread."""

    def __init__(self, argv, env, log_path):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            self.log.write(line)
        self.log.flush()

    def seen(self, text):
        return any(text in line for line in list(self.lines))

    def wait(self, timeout=RUN_TIMEOUT):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.reader.join(10)
        self.log.close()
        return self.proc.returncode

    @property
    def text(self):
        return "".join(self.lines)


def outcome_of(run_text, code, killed):
    if code == 0:
        return "migrated"
    if "failed and was rolled back" in run_text:
        return "rolled back"
    return "interrupted" if not killed else "interrupted (killed)"


def failure_of(run_text):
    """The first error the run printed, short."""
    for line in run_text.splitlines():
        if line.startswith(("fatal:", "failed:")) or "UNREACHABLE" in line or "What failed" in line:
            return line.strip()[:300]
    return ""


def wait_settled(lab, timeout=SETTLE_TIMEOUT):
    """Until no agent runs on either host (they end on their own once the controller is gone)."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if not agent_pids(lab, "nat-a") and not agent_pids(lab, "nat-b"):
            return True
        time.sleep(0.5)
    return False


def wait_trigger(run, phase, hold_path, timeout=RUN_TIMEOUT):
    """Until the run reaches the phase; False if it ended first."""
    kind, what = TRIGGERS[phase]
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if (run.seen(what) if kind == "task" else os.path.exists(hold_path)):
            return True
        if run.proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def broken_flows(results, timeline):
    """[(flow, why)] for the flows that were not whole."""
    broken = []
    for name, result in sorted(results.items()):
        if result["ok"]:
            continue
        why = []
        if result.get("lost"):
            why.append("%s %s lost" % (result["lost"], result["lost_unit"]))
        if len(result.get("peers") or []) > 1:
            why.append("translated port changed (%s)" % ", ".join(result["peers"]))
        why += result.get("errors", [])[:2]
        if timeline["none_s"] and result["kind"] in ("udp", "udpo", "ping"):
            why.append("no host served for %.1f s" % timeline["none_s"])
        broken.append((name, "; ".join(why) or "incomplete"))
    return broken


def run_cell(lab, phase, fault, workdir, cut_seconds=20.0, flow_kinds=None, families=(4,), interval=0.02,
             keep_logs=True):
    """One phase x fault: returns the cell (outcome, holder, flows, leftovers, re-run)."""
    cell = {"phase": phase, "fault": fault, "lab": lab.name}
    os.makedirs(workdir, exist_ok=True)
    snapshots = os.path.join(workdir, "snapshots")
    hold_path = os.path.join(workdir, "hold")
    started = time.monotonic()
    with lab, SnapshotFs(snapshots):
        env = dict(lab.env)
        trigger = TRIGGERS[phase]
        if trigger[0] == "hold":
            env["NFSTATE_CUTOVER_HOLD"] = "%s:%s" % (trigger[1], hold_path)
        injected = Fault(fault, lab, snapshots, cut_seconds)
        kwargs = {"kinds": flow_kinds} if flow_kinds else {}
        flows = FlowSet(lab, duration=900, families=families, interval=interval, **kwargs).start()
        timeline = HolderTimeline(lab)
        timeline.start()
        try:
            run = Run(migrate_argv(snapshots), env, os.path.join(workdir, "run.log"))
            hit = wait_trigger(run, phase, hold_path)
            if hit:
                injected.inject(run.proc)
            cell["injected"] = hit
            if os.path.exists(hold_path):
                os.unlink(hold_path)
            code = run.wait()
            cell["run"] = {"exit": code, "outcome": outcome_of(run.text, code, fault == "controller-kill" and hit),
                           "failure": failure_of(run.text) if code else ""}
            injected.undo()
            cell["settled"] = wait_settled(lab)
            cell["after"] = host_state(lab)
            rerun = Run(migrate_argv(snapshots), dict(lab.env), os.path.join(workdir, "rerun.log"))
            code = rerun.wait()
            wait_settled(lab)
            after = host_state(lab)
            cell["rerun"] = {"exit": code, "outcome": outcome_of(rerun.text, code, False),
                             "failure": failure_of(rerun.text) if code else "", "after": after,
                             "new_connection": new_connection_ok(lab)}
            time.sleep(1.0)
        finally:
            cell["timeline"] = timeline.stop()
            results = flows.stop()
        kept = ("ok", "kind", "lost", "lost_unit", "max_gap_ms", "peers", "errors")
        cell["flows"] = {name: {k: r.get(k) for k in kept} for name, r in results.items()}
        cell["broken"] = broken_flows(results, cell["timeline"])
        # The run's snapshots, reports and agent logs outlive the tmpfs (the filler stays behind).
        shutil.copytree(snapshots, os.path.join(workdir, "kept"), ignore=shutil.ignore_patterns("filler"),
                        dirs_exist_ok=True)
        if not keep_logs:
            for name in ("run.log", "rerun.log"):
                if os.path.exists(os.path.join(workdir, name)):
                    os.unlink(os.path.join(workdir, name))
    cell["seconds"] = round(time.monotonic() - started, 1)
    return cell


def converged(cell):
    rerun = cell["rerun"]
    return (rerun["exit"] == 0 and rerun["after"]["holder"] == "nat-b" and not rerun["after"]["ours"].get("nat-a")
            and rerun["new_connection"])


def one_holder(cell):
    return cell["after"]["holder"] in ("nat-a", "nat-b")


# ---- the table -----------------------------------------------------------------------------------

COLUMNS = ("phase", "fault", "outcome", "serves", "flows", "ours left on the other host", "re-run")


def row(cell):
    after = cell["after"]
    holder = after["holder"]
    serves = holder if one_holder(cell) else "NO (%s)" % (holder or "none")
    flows = "whole" if not cell["broken"] else "; ".join("%s: %s" % tuple(b) for b in cell["broken"])
    other = [h for h in ("nat-a", "nat-b") if h != holder]
    left = "; ".join("%s: %s" % (h, ", ".join(after["ours"].get(h) or [])) for h in other if after["ours"].get(h))
    rerun = cell["rerun"]
    again = "converges" if converged(cell) else "NO (exit %d, %s, left %s)" % (
        rerun["exit"], rerun["after"]["holder"], rerun["after"]["ours"].get("nat-a"))
    outcome = cell["run"]["outcome"] + ("" if cell.get("injected") else " (fault not reached)")
    return [cell["phase"], cell["fault"], outcome, serves, flows, left or "nothing", again]


def format_table(cells):
    """A Markdown table, one line per cell."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for cell in cells:
        lines.append("| " + " | ".join(str(v).replace("|", "/") for v in row(cell)) + " |")
    return "\n".join(lines)


def summary(cells):
    return {"cells": len(cells), "one_holder": sum(1 for c in cells if one_holder(c)),
            "flows_whole": sum(1 for c in cells if not c["broken"]),
            "nothing_left": sum(1 for c in cells if not any(c["after"]["ours"].values())),
            "converged": sum(1 for c in cells if converged(c))}


def dumps(cells):
    return json.dumps(cells, indent=1, sort_keys=True)
