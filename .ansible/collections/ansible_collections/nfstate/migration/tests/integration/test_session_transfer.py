"""Live sessions move from an iptables-legacy NAT to an nftables NAT and keep flowing.

Real parts throughout: network namespaces with kernel NAT, an sshd per NAT host, ansible-playbook
over SSH running nat_sessions (gathered on the source, validated on the controller, merged on the
target), then the service addresses move with gratuitous ARP / unsolicited NA, and the live flows
(TCP, UDP, ping, a port forward; IPv4 and IPv6) must not lose a byte nor change translated port.
"""

import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.nfstate.migration.lab.flows import FlowSet, format_results
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOK = os.path.join(HERE, "playbooks", "transfer_sessions.yml")
BINDING_FIELDS = ("transport-protocol", "internal-src-address", "internal-src-port", "internal-dst-address",
                  "internal-dst-port", "external-src-address", "external-src-port", "external-dst-address",
                  "external-dst-port", "nfstate-nat:initiator")


def ansible_playbook(lab, *args):
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook")] + list(args)
    return subprocess.run(command, env=lab.env, capture_output=True, text=True, check=False, timeout=300)


def load(path):
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def bindings(document):
    """What a session is, independent of time: its tuples and translation, not its timeout."""
    entries = document["ietf-nat:nat"]["instances"]["instance"][0]["mapping-table"]["mapping-entry"]
    return sorted(json.dumps({k: e.get(k) for k in BINDING_FIELDS}, sort_keys=True) for e in entries)


@pytest.fixture(scope="module")
def lab():
    with Lab("sx", source_impl="iptables-legacy", target_impl="nftables", target_rules=True) as built:
        yield built


def test_live_sessions_move_and_keep_flowing(lab, tmp_path):
    snapshots = tmp_path / "snapshots"
    remote = tmp_path / "remote"
    with FlowSet(lab, duration=90) as flows:
        time.sleep(1.0)
        run = ansible_playbook(lab, PLAYBOOK, "-e", "source=nat-a", "-e", "target=nat-b",
                               "-e", "snapshot_dir=%s" % snapshots, "-e", "remote_dir=%s" % remote)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        moved = lab.move_addresses("nat-a", "nat-b")
        time.sleep(3.0)
        results = flows.stop()
    assert FlowSet.healthy(results), format_results(results)
    assert moved["total_ms"] < 2000

    source = load(snapshots / "sessions.json.gz")
    target = load(snapshots / "target.json.gz")
    # Every flow of the lab crossed: 2 TCP, 2 UDP, 2 ping, 2 port forwards, plus the flows' control
    # connections; and what the target's kernel computed is what the source had.
    assert len(bindings(source)) >= 8
    assert set(bindings(source)) <= set(bindings(target))
    protocols = {e["transport-protocol"] for e in
                 source["ietf-nat:nat"]["instances"]["instance"][0]["mapping-table"]["mapping-entry"]}
    assert {1, 6, 17, 58} <= protocols


def test_host_connections_are_not_gathered(lab, tmp_path):
    """The controller's SSH session lives in the same table, untranslated: it never leaves."""
    table = lab.run("nat-a", ["conntrack", "-L", "-p", "tcp", "--dport", "22"]).stdout
    management = lab.mgmt_address("nat-a")
    run = ansible_playbook(lab, PLAYBOOK, "-e", "source=nat-a", "-e", "target=nat-b",
                           "-e", "snapshot_dir=%s" % tmp_path, "-e", "remote_dir=%s" % tmp_path)
    assert run.returncode == 0, run.stdout[-4000:]
    table_during = lab.run("nat-a", ["conntrack", "-L", "-p", "tcp", "--dport", "22"]).stdout
    assert management in table + table_during
    gathered = json.dumps(load(tmp_path / "sessions.json.gz"))
    assert management not in gathered
    assert "198.18." not in gathered
