"""AWX job slicing: a sliced job template runs as N jobs, each with a share of the inventory's hosts
(sorted by name, dealt round robin), the same extra vars, and nothing shared. The inventory lists
the sources only, each carrying its target's variables in nfstate_migrate_to_host: a slice that
holds a source adds its target (ansible.builtin.add_host) and migrates the whole pair. Two slices,
run side by side through ansible-runner from private data dirs laid out as AWX lays them out, with
the collection installed from its built tarball: each pair is migrated exactly once.
"""

import json
import os
import subprocess
import sys
import time

import ansible_runner
import pytest

from helpers import assert_flows_whole
import yaml

from ansible_collections.nfstate.migration.lab.fleet import Fleet
from ansible_collections.nfstate.migration.lab.flows import FlowSet, new_connection_ok

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
PROJECT_PLAYBOOK = os.path.join(REPO, "docs", "awx", "project", "migrate_nat.yml")  # the one docs/awx.md gives
CUTOVER_TASK = "Cut over (catch up, freeze, delta, apply, check, claim, release)"
SLICES = 2


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def read(path):
    with open(path) as handle:
        return handle.read()


def install_collection(where):
    """The collection as an execution environment holds it: built, then installed from the tarball."""
    build, collections = os.path.join(where, "build"), os.path.join(where, "collections")
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path", build, REPO],
                   check=True, capture_output=True, timeout=120)
    tarball = [name for name in os.listdir(build) if name.endswith(".tar.gz")][0]
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--force", "-p", collections,
                    os.path.join(build, tarball)], check=True, capture_output=True, timeout=120,
                   env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections))
    return collections


def slice_inventory(inventory, number, count):
    """Slice `number` (1-based) of `count`, as AWX deals it: the hosts sorted by name, round robin,
    each group keeping only the slice's hosts (and its variables)."""
    groups = inventory["all"]["children"]
    hosts = sorted(host for group in groups.values() for host in group.get("hosts", {}))
    share = set(hosts[number - 1::count])
    return {"all": {"children": {
        name: dict(group, hosts={host: hostvars for host, hostvars in group.get("hosts", {}).items() if host in share})
        for name, group in groups.items()}}}


def slice_job(root, number, inventory, extravars, envvars, control_path_dir):
    """The private data dir AWX writes for one slice's job (its own id, its share of the hosts).

    The SSH masters' sockets go to the fleet's own short directory (a Unix socket path has 108 bytes
    at most, and pytest's directories can be longer); the fleet ends them when it goes down."""
    write(os.path.join(root, "project", "migrate_nat.yml"), read(PROJECT_PLAYBOOK))
    write(os.path.join(root, "inventory", "hosts.yml"), yaml.safe_dump(inventory))
    write(os.path.join(root, "env", "extravars"), yaml.safe_dump(dict(
        extravars, awx_job_id=100 + number, awx_job_template_name="nfstate migrate (sliced)")))
    write(os.path.join(root, "env", "envvars"), yaml.safe_dump(dict(
        envvars, PATH=os.pathsep.join([BIN, os.environ.get("PATH", os.defpath)]),
        ANSIBLE_SSH_CONTROL_PATH_DIR=control_path_dir)))
    return root


def artifacts(runner):
    stats = [event for event in runner.events if event.get("event") == "playbook_on_stats"]
    assert len(stats) == 1
    return stats[0]["event_data"]["artifact_data"]


def cutovers(runner):
    """The sources whose cut-over task ran (and succeeded) in this job."""
    return [event["event_data"]["host"] for event in runner.events
            if event.get("event") == "runner_on_ok" and event["event_data"].get("task") == CUTOVER_TASK]


def test_two_slices_migrate_each_pair_exactly_once(tmp_path):
    collections = install_collection(str(tmp_path))
    snapshots = tmp_path / "snapshots"  # shared by the slices, as a persistent volume would be
    with Fleet("qs", 2, carry_targets=True) as fleet:
        inventory = fleet.inventory()
        assert set(inventory["all"]["children"]) == {fleet.SOURCES}  # no target in the inventory
        envvars = {key: value for key, value in fleet.env_overrides().items()
                   if key not in ("ANSIBLE_CONFIG", "ANSIBLE_INVENTORY", "ANSIBLE_SSH_CONTROL_PATH_DIR")}
        envvars.update(ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1")
        extravars = {"nfstate_sources": fleet.SOURCES, "nfstate_snapshot_dir": str(snapshots)}
        shares = [slice_inventory(inventory, number, SLICES) for number in range(1, SLICES + 1)]
        in_slice = [sorted(share["all"]["children"][fleet.SOURCES]["hosts"]) for share in shares]
        assert in_slice == [[source] for source in fleet.sources]

        for lab in fleet.labs:
            # Longer than the slowest pre-copy-to-cutover: see tests/integration/test_fleet.py's flows_in.
            lab.run("nat-a", ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_udp_timeout_stream=900"])
        flowsets = [FlowSet(lab, duration=900).start() for lab in fleet.labs]
        try:
            time.sleep(1.0)
            jobs = [ansible_runner.run_async(
                private_data_dir=slice_job(str(tmp_path / ("job%d" % number)), number, share, extravars, envvars,
                                           fleet.control_path_dir),
                playbook="migrate_nat.yml", quiet=True, timeout=1200)
                for number, share in enumerate(shares, 1)]
            for thread, _runner in jobs:
                thread.join(1300)
            time.sleep(1.0)
        finally:
            results = [flows.stop() for flows in flowsets]
        runners = [runner for _thread, runner in jobs]
        holders = [lab.service_holder() for lab in fleet.labs]
        serving = [new_connection_ok(lab) for lab in fleet.labs]

    for runner in runners:
        assert runner.status == "successful" and runner.rc == 0, read(runner.stdout.name)[-6000:]
    # Each slice migrated the pair of its own source, and only that one: every pair exactly once.
    assert [cutovers(runner) for runner in runners] == in_slice
    reports = [artifacts(runner)["nfstate_report"] for runner in runners]
    assert [sorted(report) for report in reports] == in_slice
    for report, (source,) in zip(reports, in_slice):
        assert report[source]["outcome"] == "migrated"
        assert report[source]["target"] == source.replace("nat-a", "nat-b")
        assert report[source]["target_implementation"] == "nftables"
    assert holders == ["nat-b", "nat-b"] and serving == [True, True]
    for lab, lab_results in zip(fleet.labs, results):
        assert_flows_whole(lab_results, lab.name)

    # One run per slice job (its id in the run's name), each with its own fleet.json.
    runs = sorted(os.listdir(snapshots), key=lambda run: run.rsplit("-job", 1)[-1])
    assert [run.rsplit("-job", 1)[1] for run in runs] == ["101", "102"], runs
    for run, (source,) in zip(runs, in_slice):
        with open(snapshots / run / "fleet.json") as handle:
            pairs = json.load(handle)["pairs"]
        assert [(pair["source"], pair["outcome"]) for pair in pairs] == [(source, "migrated")]
