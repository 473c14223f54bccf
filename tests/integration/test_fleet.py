"""A fleet in one run: several labs (one NAT pair each, lab/fleet.py) in one inventory, migrated by one
ansible-playbook run with -e nfstate_sources=GROUP while their flows run. One pair is made to fail (a
session on its target already holds a translated address and port its source uses): it is rolled
back on its own and keeps serving, the others finish; and with a canary batch first, a failed
canary stops the run before the other pairs are touched.
"""

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

import helpers

from ansible_collections.nfstate.migration.lab.fleet import Fleet
from ansible_collections.nfstate.migration.lab.flows import FlowSet, new_connection_ok
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
FLOW_SECONDS = 900  # an upper bound: the flows are stopped as soon as the run is over


def migrate_fleet(fleet, snapshots, *extra, timeout=1200):
    argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_sources=%s" % fleet.SOURCES,
            "-e", "nfstate_snapshot_dir=%s" % snapshots] + list(extra)
    env = dict(fleet.env, ANSIBLE_SHOW_CUSTOM_STATS="True", ANSIBLE_NOCOLOR="1")
    run = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    with open(os.path.join(os.path.dirname(snapshots), "run.log"), "w") as handle:  # kept with the test's files
        handle.write(run.stdout + run.stderr)
    return run


def run_dir(snapshots):
    runs = os.listdir(snapshots)
    assert len(runs) == 1, runs
    return os.path.join(snapshots, runs[0])


def fleet_summary(snapshots):
    with open(os.path.join(run_dir(snapshots), "fleet.json")) as handle:
        return {pair["source"]: pair for pair in json.load(handle)["pairs"]}


def run_stats(stdout):
    """The run's set_stats (the job's artifacts), as ansible-playbook prints them at the end."""
    lines = [line for line in stdout.splitlines() if line.startswith("\tRUN: ")]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0][len("\tRUN: "):])


def take_translated_port(lab, flows):
    """A session on the lab's target that holds the translated address and port of the live TCP flow."""
    taken = flows.results()["tcp4"]["peers"][0]  # 203.0.113.1:PORT, as the server sees it
    address, port = taken.rsplit(":", 1)
    lab.run("nat-b", ["nft", "add", "table", "ip", "probe"])
    lab.run("nat-b", ["nft", "add", "chain", "ip", "probe", "post", "{ type nat hook postrouting priority 100 ; }"])
    lab.run("nat-b", ["conntrack", "-I", "-p", "tcp", "-s", "192.0.2.99", "-d", lab.addresses["server"][4],
                      "--sport", "41000", "--dport", "5001", "--src-nat", "%s:%s" % (address, port),
                      "--state", "ESTABLISHED", "-t", "600", "-u", "SEEN_REPLY,ASSURED"])


def assert_flows_whole(lab, results):
    helpers.assert_flows_whole(results, lab.name)


def udp_lifetime(lab, seconds):
    """The UDP stream lifetime on the lab's source: a pre-copied session carries what is left of it."""
    lab.run("nat-a", ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_udp_timeout_stream=%d" % seconds])


@contextlib.contextmanager
def flows_in(labs):
    """One flow set per lab, all running; stopped (and ended) on the way out."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(FlowSet(lab, duration=FLOW_SECONDS)) for lab in labs]


def test_three_pairs_in_one_run_one_fails_and_is_rolled_back(tmp_path):
    snapshots = tmp_path / "snapshots"
    with Fleet("qf", 3) as fleet:
        failing = fleet.labs[1]
        with flows_in(fleet.labs) as flowsets:
            time.sleep(1.0)
            take_translated_port(failing, flowsets[1])
            run = migrate_fleet(fleet, snapshots)
            time.sleep(1.0)
            results = [flows.stop() for flows in flowsets]
        holders = {lab.name: lab.service_holder() for lab in fleet.labs}
        failing_serves = new_connection_ok(failing)

    assert run.returncode != 0, run.stdout[-4000:]
    assert "translated address and port are taken" in run.stdout
    for lab, lab_results in zip(fleet.labs, results):
        assert_flows_whole(lab, lab_results)
    assert holders == {"qf1": "nat-b", "qf2": "nat-a", "qf3": "nat-b"}
    assert failing_serves

    summary = fleet_summary(snapshots)
    assert sorted(summary) == sorted(fleet.sources)
    outcomes = {source: pair["outcome"] for source, pair in summary.items()}
    assert outcomes == {"qf1-nat-a": "migrated", "qf2-nat-a": "rolled back", "qf3-nat-a": "migrated"}
    assert {source: pair["target"] for source, pair in summary.items()} == {
        "qf%d-nat-a" % i: "qf%d-nat-b" % i for i in range(1, 4)}
    assert "translated address and port are taken" in summary["qf2-nat-a"]["failure"]

    # Each pair's report: in the artifacts for all three, and beside the snapshots for those that moved.
    reports = run_stats(run.stdout)["nfstate_report"]
    assert {source: report["outcome"] for source, report in reports.items()} == outcomes
    for source, pair in summary.items():
        assert pair["snapshots"] == os.path.join(run_dir(snapshots), source)
        if pair["outcome"] == "migrated":
            with open(os.path.join(pair["snapshots"], "report.json")) as handle:
                report = json.load(handle)
            assert (report["source"], report["target"]) == (source, pair["target"])
            assert report["cutover"]["window_ms"] > 0
            assert pair["freeze_window_ms"] == report["cutover"]["window_ms"]
            assert report["sessions"] >= len(results[0])
        else:
            assert not os.path.exists(os.path.join(pair["snapshots"], "report.json"))


def test_a_failed_canary_stops_the_run_before_the_other_pairs(tmp_path):
    snapshots = tmp_path / "snapshots"
    with Fleet("qc", 2) as fleet:
        canary, rest = fleet.labs
        with flows_in(fleet.labs) as flowsets:
            time.sleep(1.0)
            take_translated_port(canary, flowsets[0])
            rest_target_before = rest.run("nat-b", ["conntrack", "-L"]).stdout
            run = migrate_fleet(fleet, snapshots, "-e", json.dumps(
                {"nfstate_serial": [1, "100%"], "nfstate_max_fail_percentage": 0}))
            rest_target_after = rest.run("nat-b", ["conntrack", "-L"]).stdout
            time.sleep(1.0)
            results = [flows.stop() for flows in flowsets]
        holders = {lab.name: lab.service_holder() for lab in fleet.labs}
        serving = [new_connection_ok(lab) for lab in fleet.labs]

    assert run.returncode != 0, run.stdout[-4000:]
    for lab, lab_results in zip(fleet.labs, results):
        assert_flows_whole(lab, lab_results)
    assert holders == {"qc1": "nat-a", "qc2": "nat-a"} and serving == [True, True]
    # The rest was never attempted: no task ran for its source, its target got nothing.
    assert "[qc2-nat-a]" not in run.stdout
    assert rest_target_after == rest_target_before
    assert not os.path.exists(os.path.join(run_dir(snapshots), "qc2-nat-a"))

    summary = fleet_summary(snapshots)
    assert {source: pair["outcome"] for source, pair in summary.items()} == {
        "qc1-nat-a": "rolled back", "qc2-nat-a": "not attempted"}
    assert summary["qc2-nat-a"]["target"] == "qc2-nat-b"
    assert "qc2-nat-a -> qc2-nat-b: not attempted" in run.stdout


def test_a_udp_session_whose_copy_expired_on_the_target_keeps_its_port(tmp_path):
    """The UDP flow's session lives 5 s on the source: its copy on the target expires before the
    cutover, whose delta carries it refreshed. It must reach the target all the same."""
    with Lab("qu") as lab:
        udp_lifetime(lab, 5)
        with FlowSet(lab, kinds=("udp",), families=(4,), duration=FLOW_SECONDS) as flows:
            time.sleep(1.0)
            run = subprocess.run([ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=nat-a",
                                  "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % tmp_path],
                                 env=lab.env, capture_output=True, text=True, check=False, timeout=600)
            time.sleep(1.0)
            results = flows.stop()
        holder = lab.service_holder()
    assert run.returncode == 0 and holder == "nat-b", run.stdout[-4000:]
    assert_flows_whole(lab, results)
