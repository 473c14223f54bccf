"""The migration as AWX runs it: through ansible-runner, from a private data dir laid out as AWX lays
it out (project/, inventory/, env/extravars, env/envvars), whose project playbook only imports
nfstate.migration.migrate_nat, with the collection installed from its built tarball as an execution
environment holds it. The job's status, and its artifacts: what AWX stores from the run's
set_stats and hands to the next node of a workflow.

The lab test needs root (network namespaces, sshd); the aggregation test runs the playbook's real
report tasks for two pairs over a local connection and needs neither.
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

from ansible_collections.nfstate.migration.lab.flows import FlowSet, new_connection_ok
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
PROJECT_PLAYBOOK = os.path.join(REPO, "docs", "awx", "project", "migrate_nat.yml")  # the one docs/awx.md gives


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def read(path):
    with open(path) as handle:
        return handle.read()


def install_collection(where):
    """The collection as an execution environment holds it: built, then installed from the tarball."""
    build = os.path.join(where, "build")
    collections = os.path.join(where, "collections")
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path", build, REPO],
                   check=True, capture_output=True, timeout=120)
    tarball = [name for name in os.listdir(build) if name.endswith(".tar.gz")]
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--force", "-p", collections,
                    os.path.join(build, tarball[0])], check=True, capture_output=True, timeout=120,
                   env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections))
    return collections


def private_data_dir(root, inventory, extravars, envvars, playbook_name, playbook):
    """project/, inventory/ and env/ as AWX writes them for a job."""
    write(os.path.join(root, "project", playbook_name), playbook)
    write(os.path.join(root, "inventory", "hosts.yml"), inventory)
    write(os.path.join(root, "env", "extravars"), yaml.safe_dump(extravars))
    # ansible-runner starts ansible-playbook by name: this interpreter's, as in an execution environment.
    envvars = dict(envvars, PATH=os.pathsep.join([BIN, os.environ.get("PATH", os.defpath)]))
    write(os.path.join(root, "env", "envvars"), yaml.safe_dump(envvars))
    return root


def job_artifacts(runner):
    """What AWX stores as the job's artifacts: the stats event's artifact_data (set_stats, per_host false)."""
    stats = [event for event in runner.events if event.get("event") == "playbook_on_stats"]
    assert len(stats) == 1, [event.get("event") for event in runner.events][-10:]
    return stats[0]["event_data"]["artifact_data"]


def stdout_tail(runner, size=6000):
    return read(runner.stdout.name)[-size:]


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
def test_migration_through_ansible_runner(tmp_path):
    """One pair, iptables to nftables, live flows through it, the job run as AWX runs it."""
    collections = install_collection(str(tmp_path))
    snapshots = tmp_path / "snapshots"  # outside the job's directory, as a persistent volume would be
    with Lab("wrun", source_impl="iptables-legacy", target_impl="nftables") as lab:
        inventory = read(lab.inventory_path)
        # AWX passes no ansible.cfg of ours: only the environment, and the connection details in the inventory.
        envvars = {key: value for key, value in lab.env_overrides().items()
                   if key not in ("ANSIBLE_CONFIG", "ANSIBLE_INVENTORY")}
        envvars.update(ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1")
        pdd = private_data_dir(str(tmp_path / "job"), inventory,
                               # The survey's answers (docs/awx/survey.json), and the template's snapshot place.
                               {"nfstate_source": "nat-a", "nfstate_target": "nat-b", "nfstate_freeze_deadline": 120,
                                "nfstate_snapshot_dir": str(snapshots)},
                               envvars, "migrate_nat.yml", read(PROJECT_PLAYBOOK))
        with FlowSet(lab, duration=150) as flows:
            time.sleep(1.0)
            runner = ansible_runner.run(private_data_dir=pdd, playbook="migrate_nat.yml",
                                        quiet=True, timeout=600)
            time.sleep(2.0)
            results = flows.stop()
        assert runner.status == "successful" and runner.rc == 0, stdout_tail(runner)
        assert lab.service_holder() == "nat-b"
        assert_flows_whole(results)
        assert new_connection_ok(lab)

    with open(os.path.join(runner.config.artifact_dir, "status")) as handle:
        assert handle.read().strip() == "successful"
    artifacts = job_artifacts(runner)
    assert set(artifacts) == {"nfstate_report", "nfstate_fleet"}
    assert [(p["source"], p["outcome"]) for p in artifacts["nfstate_fleet"]] == [("nat-a", "migrated")]
    assert set(artifacts["nfstate_report"]) == {"nat-a"}
    report = artifacts["nfstate_report"]["nat-a"]
    assert report["outcome"] == "migrated"
    assert (report["source"], report["target"]) == ("nat-a", "nat-b")
    assert (report["source_implementation"], report["target_implementation"]) == ("iptables", "nftables")
    assert report["sessions"] >= len(results) and report["rules"] >= 6
    assert 0 < report["bytes"]["compressed"] < report["bytes"]["raw"]
    assert report["freeze_window_seconds"] > 0
    # The same report as the one kept with the snapshots, where the job's directory does not matter.
    with open(os.path.join(report["snapshots"], "report.json")) as handle:
        kept = json.load(handle)
    assert report["snapshots"].startswith(str(snapshots))
    assert dict(kept, outcome="migrated") == report


FLEET_PLAYBOOK = """---
- name: Report as the migration does, for each source of a fleet
  hosts: sources
  gather_facts: false
  tasks:
    - name: What a migration of this pair left for its report
      ansible.builtin.set_fact:
        nfstate_redirect: addresses
        nfstate_run: "20260101T000000Z"
        nfstate_run_dir: "{{ snapshot_dir }}/{{ inventory_hostname }}"
        nfstate_marks:
          - {phase: start, at: 100.0}
          - {phase: pre-copy, at: 101.0}
          - {phase: redirect, at: 101.5}
        nfstate_transfers:
          precopy: {sessions: "{{ sessions }}", rules: 6, bytes_raw: 9000, bytes_compressed: 900}
        nfstate_delta: {sessions: 1, removed: 0}

    - name: Make its snapshot directory
      ansible.builtin.file:
        path: "{{ nfstate_run_dir }}"
        state: directory
        mode: "0700"
      delegate_to: localhost

    - name: The playbook's own report tasks
      ansible.builtin.include_tasks: "{{ report_tasks }}"
"""


def test_several_pairs_give_one_artifact_with_every_report(tmp_path):
    """Two sources in one run: the job's artifacts hold one nfstate_report with both pairs' reports."""
    collections = install_collection(str(tmp_path))
    hosts = {"nat-a": {"nfstate_source": "nat-a", "nfstate_target": "nat-b", "sessions": 10},
             "nat-c": {"nfstate_source": "nat-c", "nfstate_target": "nat-d", "sessions": 20}}
    targets = {"nat-b": {}, "nat-d": {}}
    for name, host in list(hosts.items()) + list(targets.items()):
        host.update(ansible_connection="local", ansible_python_interpreter=sys.executable,
                    nfstate_implementation="iptables" if name in ("nat-a", "nat-d") else "nftables")
    inventory = {"all": {"children": {"sources": {"hosts": hosts}, "targets": {"hosts": targets}}}}
    pdd = private_data_dir(str(tmp_path / "job"), yaml.safe_dump(inventory),
                           {"snapshot_dir": str(tmp_path / "snapshots"),
                            "report_tasks": os.path.join(collections, "ansible_collections", "nfstate", "migration",
                                                         "playbooks", "tasks", "report.yml")},
                           {"ANSIBLE_COLLECTIONS_PATH": collections, "ANSIBLE_NOCOLOR": "1"},
                           "fleet.yml", FLEET_PLAYBOOK)
    runner = ansible_runner.run(private_data_dir=pdd, playbook="fleet.yml",
                                quiet=True, timeout=300)
    assert runner.status == "successful", stdout_tail(runner)
    reports = job_artifacts(runner)["nfstate_report"]
    assert sorted(reports) == ["nat-a", "nat-c"]
    assert (reports["nat-a"]["target"], reports["nat-a"]["sessions"]) == ("nat-b", 10)
    assert (reports["nat-c"]["target"], reports["nat-c"]["sessions"]) == ("nat-d", 20)
    assert (reports["nat-c"]["source_implementation"], reports["nat-c"]["target_implementation"]) == ("nftables", "iptables")
    assert all(r["outcome"] == "migrated" and r["bytes"]["compressed"] == 900 for r in reports.values())


def test_a_migration_after_another_in_a_workflow_reports_its_own_pair(tmp_path):
    """In a workflow, a node's job gets its ancestors' artifacts as extra vars: a second migration
    node receives the first one's nfstate_report, and must still report its own pair."""
    collections = install_collection(str(tmp_path))
    hosts = {"nat-a": {"nfstate_source": "nat-a", "nfstate_target": "nat-b", "sessions": 10}, "nat-b": {}}
    for host in hosts.values():
        host.update(ansible_connection="local", ansible_python_interpreter=sys.executable,
                    nfstate_implementation="nftables")
    inventory = {"all": {"children": {"sources": {"hosts": {"nat-a": hosts["nat-a"]}},
                                      "targets": {"hosts": {"nat-b": hosts["nat-b"]}}}}}
    upstream = {"nat-x": {"source": "nat-x", "target": "nat-y", "sessions": 99, "outcome": "migrated"}}
    pdd = private_data_dir(str(tmp_path / "job"), yaml.safe_dump(inventory),
                           {"snapshot_dir": str(tmp_path / "snapshots"), "nfstate_report": upstream,
                            "report_tasks": os.path.join(collections, "ansible_collections", "nfstate", "migration",
                                                         "playbooks", "tasks", "report.yml")},
                           {"ANSIBLE_COLLECTIONS_PATH": collections, "ANSIBLE_NOCOLOR": "1"},
                           "fleet.yml", FLEET_PLAYBOOK)
    runner = ansible_runner.run(private_data_dir=pdd, playbook="fleet.yml", quiet=True, timeout=300)
    assert runner.status == "successful", stdout_tail(runner)
    report = job_artifacts(runner)["nfstate_report"]["nat-a"]
    assert (report.get("source"), report.get("sessions")) == ("nat-a", 10)
    with open(tmp_path / "snapshots" / "nat-a" / "report.json") as handle:
        assert json.load(handle).get("source") == "nat-a"
