"""The nat role moves a NAT both ways between implementations, and freezes, unfreezes and cleans up.

A lab of network namespaces: nat-a runs iptables-legacy with hand-written rules in the built-in
chains, nat-b runs nftables and starts empty. Everything goes through ansible-playbook over SSH and
the role's entry points, the implementation and backend detected on each host:

1. iptables -> nftables: the role gathers nat-a's rules and sessions (live TCP streams and
   port forwards) into one document, which is fetched, validated and applied on nat-b. The
   service addresses move: the live flows keep going, and a NEW connection is translated by
   nat-b as nat-a did (203.0.113.1, a port of the pool 20000-29999).
2. freeze / unfreeze of nat-b: a new connection fails while frozen, works after.
3. nftables -> iptables: nat-b's rules now live in our own nftables table; nat-a is made a
   fresh target (its hand-written rules and sessions flushed). The role gathers a pre-copy
   and a delta on nat-b and applies both on nat-a, the addresses move back: flows keep going
   and new connections are translated by nat-a's rules, written by the role.
4. cleanup on both hosts leaves no nfstate table or chain, no work directory, no service session.
A role missing its programs says which, and the package to install.
"""

import gzip
import json
import os
import re
import subprocess
import time

import pytest

from ansible_collections.nfstate.migration.lab.flows import FlowSet, format_results, new_connection_ok
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOKS = os.path.join(HERE, "playbooks")
ANSIBLE_PLAYBOOK = "/tmp/venv/bin/ansible-playbook"
SELECTORS = {"nfstate_selectors": {"addresses": ["203.0.113.1/32", "2001:db8:2::1/128"]}}
# The lab's rules: per family a port forward, SNAT of TCP and of UDP to the pool, SNAT of the rest.
LAB_RULES = 8
POOL = range(20000, 30000)
TRANSLATED_PEER = {4: re.compile(r"^203\.0\.113\.1:(\d+)$"), 6: re.compile(r"^\[2001:db8:2::1\]:(\d+)$")}


def playbook(lab, name, check=True, **extra):
    command = [ANSIBLE_PLAYBOOK if os.path.exists(ANSIBLE_PLAYBOOK) else "ansible-playbook",
               os.path.join(PLAYBOOKS, name), "-e", json.dumps(dict(SELECTORS, **extra))]
    run = subprocess.run(command, env=lab.env, capture_output=True, text=True, check=False, timeout=240)
    if check:
        assert run.returncode == 0, "%s failed:\n%s\n%s" % (name, run.stdout[-6000:], run.stderr[-2000:])
    return run


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def instance(path):
    with gzip.open(path, "rt") as handle:
        return json.load(handle)["ietf-nat:nat"]["instances"]["instance"][0]


def assert_translated_like_the_source(results):
    """The server saw each new TCP stream from the service's address, with a port of the pool;
    the port forward carried its stream to the client."""
    assert FlowSet.healthy(results), format_results(results)
    for family in (4, 6):
        (peer,) = results["tcp%d" % family]["peers"]
        match = TRANSLATED_PEER[family].match(peer)
        assert match and int(match.group(1)) in POOL, format_results(results)
        assert results["fwd%d" % family]["bytes_received"] > 0, format_results(results)


def new_streams(lab):
    """Brand-new TCP streams and port-forwarded streams through whichever NAT holds the service."""
    with FlowSet(lab, kinds=("tcp", "fwd"), duration=20) as flows:
        time.sleep(0.5)
        return flows.stop()


def nfstate_objects(lab):
    """Every table or chain of ours left on either NAT host, whatever the backend."""
    left = []
    for host in ("nat-a", "nat-b"):
        tables = json.loads(lab.run(host, ["nft", "-j", "list", "tables"]).stdout)["nftables"]
        left += ["%s: table %s %s" % (host, t["table"]["family"], t["table"]["name"])
                 for t in tables if "table" in t and t["table"]["name"].startswith("nfstate")]
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"):
            saved = lab.run(host, [tool], check=False).stdout
            left += ["%s: %s %s" % (host, tool, line) for line in saved.splitlines() if "NFSTATE" in line]
    return left


def translated_sessions(lab):
    """The NAT sessions (source or destination translated) left on either host."""
    left = []
    for host in ("nat-a", "nat-b"):
        for family in ("ipv4", "ipv6"):
            for kind in ("--src-nat", "--dst-nat"):
                listed = lab.run(host, ["conntrack", "-L", "-f", family, kind], check=False).stdout
                left += ["%s: %s" % (host, line) for line in listed.splitlines() if line.strip()]
    return left


@pytest.fixture(scope="module")
def lab():
    with Lab("r6", source_impl="iptables-legacy", target_impl="nftables", target_rules=False) as built:
        yield built


def test_roles_move_freeze_and_clean_up_both_ways(lab, tmp_path):
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    work_root = str(tmp_path / "hosts")
    common = {"snapshot_dir": str(snapshots), "work_root": work_root}

    # 0. A role that misses its programs says which, and the package to install.
    run = playbook(lab, "roles_entry.yml", check=False, nodes="nat-a:nat-b", entry="main",
                   nat_tool_paths=["/nonexistent"], report_dir=str(snapshots), **common)
    assert run.returncode != 0
    assert re.search(r"Missing on nat-a for iptables: iptables-legacy-save, iptables-legacy-restore, .*"
                     r"Install the package\(s\) iptables", run.stdout), run.stdout[-3000:]
    assert re.search(r"Missing on nat-b for nftables: nft\. Install the package\(s\) nftables", run.stdout), run.stdout[-3000:]

    # 1. iptables (legacy) -> nftables, with live streams whose sessions move.
    with FlowSet(lab, kinds=("tcp", "fwd"), duration=60) as flows:
        time.sleep(0.5)
        playbook(lab, "roles_transfer.yml", source="nat-a", target="nat-b", snapshot="forward", **common)
        lab.move_addresses("nat-a", "nat-b")
        time.sleep(1.5)
        results = flows.stop()
    assert FlowSet.healthy(results), format_results(results)

    gathered = read_json(snapshots / "forward-gathered.json")
    # detected: the legacy nat table holds the rules
    assert (gathered["implementation"], gathered["backend"]) == ("iptables", "legacy")
    applied = read_json(snapshots / "forward-applied.json")
    assert gathered["gathered"]["rules"] == LAB_RULES == applied["received"]["rules"]
    assert gathered["gathered"]["sessions"] == applied["received"]["sessions"] >= 4
    assert gathered["gathered"]["path"] == os.path.join(work_root, "nat-a", "forward.json.gz")
    forward = instance(snapshots / "forward.json.gz")
    assert len(forward["policy"]) == LAB_RULES and forward["mapping-table"]["mapping-entry"]
    assert applied["rules"] == LAB_RULES
    assert applied["created"] + applied["unchanged"] + applied["expired"] == gathered["gathered"]["sessions"]
    assert applied["created"] >= 4
    assert not applied["conflicts"] and not applied["failed_sessions"]

    assert_translated_like_the_source(new_streams(lab))

    # 2. Freeze and unfreeze nat-b through its role.
    playbook(lab, "roles_entry.yml", nodes="nat-b", entry="freeze", report_dir=str(snapshots), **common)
    frozen = read_json(snapshots / "nat-b-freeze.json")
    assert frozen["frozen"] and 0 < frozen["remaining"] <= 60 and sorted(frozen["interfaces"]) == ["in0", "out0"]
    assert not new_connection_ok(lab, timeout=2)
    playbook(lab, "roles_entry.yml", nodes="nat-b", entry="unfreeze", report_dir=str(snapshots), **common)
    assert not read_json(snapshots / "nat-b-unfreeze.json")["frozen"]
    assert new_connection_ok(lab, timeout=2)

    # 3. nftables -> iptables (legacy): nat-a becomes a fresh target, rules and sessions flushed.
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        lab.run("nat-a", [tool, "-t", "nat", "-F"])
    lab.run("nat-a", ["conntrack", "-F"], check=False)
    with FlowSet(lab, kinds=("tcp", "fwd"), duration=60) as flows:
        time.sleep(0.5)
        playbook(lab, "roles_transfer.yml", source="nat-b", target="nat-a", snapshot="precopy", **common)
        playbook(lab, "roles_transfer.yml", source="nat-b", target="nat-a", snapshot="delta", since="precopy",
                 **common)
        lab.move_addresses("nat-b", "nat-a")
        time.sleep(1.5)
        results = flows.stop()
    assert FlowSet.healthy(results), format_results(results)

    precopy = read_json(snapshots / "precopy-gathered.json")
    delta = read_json(snapshots / "delta-gathered.json")
    assert precopy["gathered"]["rules"] == LAB_RULES and not precopy["gathered"]["delta"]
    delta_applied = read_json(snapshots / "delta-applied.json")
    assert delta["gathered"]["delta"] and delta["gathered"]["rules"] == LAB_RULES == delta_applied["received"]["rules"]
    assert delta["gathered"]["sessions"] + delta["gathered"]["removed"] == delta_applied["received"]["sessions"]
    assert delta["gathered"]["host_sessions"] >= 4
    assert read_json(snapshots / "precopy-applied.json")["rules"] == LAB_RULES
    saved = lab.run("nat-a", ["iptables-legacy-save", "-t", "nat"]).stdout
    assert "-A NFSTATE-POST" in saved and "-A NFSTATE-PRE" in saved

    assert_translated_like_the_source(new_streams(lab))

    # 4. cleanup on both hosts.
    playbook(lab, "roles_entry.yml", nodes="nat-a:nat-b", entry="cleanup", report_dir=str(snapshots), **common)
    assert read_json(snapshots / "nat-a-cleanup.json")["rules"] == LAB_RULES
    assert read_json(snapshots / "nat-b-cleanup.json")["rules"] == LAB_RULES
    assert nfstate_objects(lab) == []
    assert not os.path.exists(os.path.join(work_root, "nat-a")) and not os.path.exists(os.path.join(work_root, "nat-b"))
    assert translated_sessions(lab) == []
