"""ansible-playbook --check --diff nfstate.migration.migrate_nat: a dry run changes nothing on either host,
succeeds when a real run would go through, and says what would move; when a real run would fail, it
fails for the same reason."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from ansible_collections.nfstate.migration.lab.flows import FlowSet, format_results
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def dry_run(lab, snapshots):
    argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "--check", "--diff", "-e", "nfstate_source=nat-a",
            "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % snapshots]
    return subprocess.run(argv, env=lab.env, capture_output=True, text=True, check=False, timeout=600)


def host_state(lab, host):
    """What a migration could change on a host: its rulesets, its translated sessions, its addresses."""
    nft = lab.run(host, ["nft", "list", "ruleset"]).stdout
    saved = "".join(lab.run(host, [tool], check=False).stdout.split("\n", 1)[-1]
                    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"))
    translated = [line for kind in ("--src-nat", "--dst-nat")
                  for line in lab.run(host, ["conntrack", "-L", kind], check=False).stdout.splitlines()]
    addresses = lab.run(host, ["ip", "-br", "addr"]).stdout
    # Chain counters ([packets:bytes]) move with the traffic: compared without them.
    saved = re.sub(r"\[\d+:\d+\]", "", saved)
    return {"nft": nft, "iptables": "\n".join(l for l in saved.splitlines() if not l.startswith("#")),
            # A session by its two tuples: its timeout, counters and flags (ASSURED) move with the traffic.
            "sessions": sorted(" ".join(re.findall(r"(?:src|dst|sport|dport)=\S+", line)) for line in translated),
            "addresses": addresses, "files": sorted(os.listdir(os.path.join(lab.workdir, "hosts")))
            if os.path.isdir(os.path.join(lab.workdir, "hosts")) else []}


def first_peer(flows, name, seconds=15):
    """The translated address and port the server sees for a flow, once it has seen one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peers = flows.results()[name]["peers"]
        if peers:
            return peers[0]
        time.sleep(0.2)
    raise AssertionError("the server never saw %s" % name)


@pytest.fixture(scope="module")
def lab():
    with Lab("dry", source_impl="iptables-legacy", target_impl="nftables") as built:
        yield built


def test_dry_run_changes_nothing_and_says_what_would_move(lab, tmp_path):
    with FlowSet(lab, kinds=("tcp", "udp"), families=(4,), duration=90) as flows:
        before = {host: host_state(lab, host) for host in ("nat-a", "nat-b")}
        run = dry_run(lab, tmp_path)
        after = {host: host_state(lab, host) for host in ("nat-a", "nat-b")}
        results = flows.stop()
    assert run.returncode == 0, run.stdout[-5000:]
    assert "Would migrate nat-a (iptables) to nat-b (nftables)" in run.stdout
    assert "addresses that would move: 192.0.2.254/24, 2001:db8:1::fe/64, 203.0.113.1/24, 2001:db8:2::1/64" in run.stdout
    assert "the rules as nat-b would load them:" in run.stdout and "nfstate_nat" in run.stdout
    assert after == before
    assert lab.service_holder() == "nat-a"
    assert FlowSet.healthy(results), format_results(results)
    (run_dir,) = os.listdir(tmp_path)
    found = json.load(open(os.path.join(tmp_path, run_dir, "nat-a", "dry-run.json")))
    assert found["dry_run"] and found["sessions"] >= 2 and found["rules"] >= 6
    assert 0 < found["bytes"]["compressed"] < found["bytes"]["raw"]
    fleet = json.load(open(os.path.join(tmp_path, run_dir, "fleet.json")))
    assert [(p["source"], p["target"], p["outcome"]) for p in fleet["pairs"]] == [("nat-a", "nat-b", "migrated")]


def test_dry_run_of_a_migration_that_would_fail_says_why(lab, tmp_path):
    """A session on the target holds the translated address and port of a live flow: the dry run fails
    as a real run would, naming it, and still changes nothing."""
    with FlowSet(lab, kinds=("tcp",), families=(4,), duration=90) as flows:
        address, port = first_peer(flows, "tcp4").rsplit(":", 1)
        lab.run("nat-b", ["nft", "add", "table", "ip", "probe"])
        lab.run("nat-b", ["nft", "add", "chain", "ip", "probe", "post", "{ type nat hook postrouting priority 100 ; }"])
        lab.run("nat-b", ["conntrack", "-I", "-p", "tcp", "-s", "192.0.2.99", "-d", lab.addresses["server"][4],
                          "--sport", "41000", "--dport", "5001", "--src-nat", "%s:%s" % (address, port),
                          "--state", "ESTABLISHED", "-t", "600", "-u", "SEEN_REPLY,ASSURED"])
        try:
            before = host_state(lab, "nat-b")
            run = dry_run(lab, tmp_path)
            after = host_state(lab, "nat-b")
        finally:
            lab.run("nat-b", ["conntrack", "-D", "-s", "192.0.2.99"], check=False)
            lab.run("nat-b", ["nft", "delete", "table", "ip", "probe"], check=False)
        results = flows.stop()
    assert run.returncode != 0
    assert "would fail" in run.stdout and "translated address and port are taken" in run.stdout
    assert after == before
    assert lab.service_holder() == "nat-a"
    assert FlowSet.healthy(results), format_results(results)
