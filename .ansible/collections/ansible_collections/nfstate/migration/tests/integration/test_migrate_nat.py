"""The main job end to end: ansible-playbook nfstate.migration.migrate_nat over SSH in the lab, with
live flows (TCP, UDP, ping, a port forward; IPv4 and IPv6) that must not lose a byte nor see their
translated address or port change; and the faults that must leave the source serving."""

import json
import os
import signal
import subprocess
import time

import pytest

from ansible_collections.nfstate.migration.lab.flows import FlowSet, format_results, new_connection_ok
from helpers import ANSIBLE_PLAYBOOK, FILL, assert_flows_whole, source_frozen

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


def migrate(lab, source, target, snapshots, *extra, timeout=600):
    argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=%s" % source,
            "-e", "nfstate_target=%s" % target, "-e", "nfstate_snapshot_dir=%s" % snapshots] + list(extra)
    return subprocess.run(argv, env=lab.env, capture_output=True, text=True, check=False, timeout=timeout)


def only_report(snapshots, source="nat-a"):
    """The report of the last run's pair whose source is `source` (SNAPSHOTS/RUN/SOURCE/report.json)."""
    runs = sorted(os.listdir(snapshots))
    with open(os.path.join(snapshots, runs[-1], source, "report.json")) as handle:
        return json.load(handle)


@pytest.fixture()
def lab(two_host_lab):
    return two_host_lab


def ours_on(lab, host):
    """What of ours is active on a host: service addresses, tables or chains, translated sessions."""
    found = []
    if lab.service_holder() in (host, "split"):
        found.append("service addresses")
    tables = lab.run(host, ["nft", "list", "tables"]).stdout
    found += [line for line in tables.splitlines() if "nfstate" in line]
    for save in ("iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"):
        found += [line for line in lab.run(host, [save], check=False).stdout.splitlines() if "NFSTATE" in line]
    external = [a.split("/")[0] for a in (lab.addresses["external"][4], lab.addresses["external"][6])]
    for family in ("ipv4", "ipv6"):
        listing = lab.run(host, ["conntrack", "-L", "-f", family, "-n"], check=False).stdout
        found += [line for line in listing.splitlines() if any("dst=%s " % e in line for e in external)]
    return found


@pytest.mark.parametrize("two_host_lab", [dict(source_impl="iptables-legacy", target_impl="nftables",
                                               target_devices="lan1,wan1")], indirect=True)
def test_iptables_to_nftables_and_back(lab, tmp_path):
    """iptables (legacy) -> nftables on a target whose devices are named differently, then back."""
    assert lab.devices["nat-b"] != lab.devices["nat-a"]
    with FlowSet(lab, duration=240) as flows:
        time.sleep(1.0)
        run = migrate(lab, "nat-a", "nat-b", tmp_path / "there")
        assert run.returncode == 0, run.stdout[-5000:]
        assert lab.service_holder() == "nat-b"
        time.sleep(2.0)
        there = flows.results()
        assert all(r["ok"] is not False for r in there.values()), format_results(there)[:4000]

        # A second run, the way back, converges: the flows keep going through nat-a again.
        back = migrate(lab, "nat-b", "nat-a", tmp_path / "back")
        assert back.returncode == 0, back.stdout[-5000:]
        assert lab.service_holder() == "nat-a"
        time.sleep(2.0)
        results = flows.stop()
    assert_flows_whole(results)
    # One-way streams (never answered: their entries stay NEW) crossed twice without a lost datagram.
    assert results["udpo4"]["packets_sent"] > 0 and results["udpo6"]["packets_sent"] > 0
    assert new_connection_ok(lab)

    report = only_report(tmp_path / "there")
    assert report["sessions"] >= 8 and report["rules"] >= 6
    assert [p["phase"] for p in report["phases"]] == ["preflight", "pre-copy", "freeze", "delta", "redirect", "release", "cleanup"]
    assert 0 < report["bytes"]["compressed"] < report["bytes"]["raw"]
    assert report["freeze_window_seconds"] > 0
    assert "Migrated nat-a (iptables) to nat-b (nftables)" in run.stdout


@pytest.mark.parametrize("two_host_lab", [dict(source_impl="nftables", target_impl="iptables-legacy")], indirect=True)
def test_nftables_to_iptables(lab, tmp_path):
    with FlowSet(lab, duration=120) as flows:
        time.sleep(1.0)
        run = migrate(lab, "nat-a", "nat-b", tmp_path)
        assert run.returncode == 0, run.stdout[-5000:]
        time.sleep(2.0)
        results = flows.stop()
    assert_flows_whole(results)
    assert lab.service_holder() == "nat-b"
    assert new_connection_ok(lab)

    # Someone empties the target that serves: new connections fail, and a plain re-run of the same
    # command finds the pair moved and puts the last run's NAT rules back.
    lab.wipe("nat-b")
    assert not new_connection_ok(lab)
    again = migrate(lab, "nat-a", "nat-b", tmp_path)
    assert again.returncode == 0, again.stdout[-5000:]
    assert "NAT rules of ours: " in again.stdout and "put back from " + str(tmp_path) in again.stdout, again.stdout[-3000:]
    assert lab.service_holder() == "nat-b"
    assert new_connection_ok(lab)


@pytest.mark.parametrize("two_host_lab", [dict(source_impl="iptables-legacy", target_impl="nftables")], indirect=True)
def test_port_collision_on_target_rolls_back(lab, tmp_path):
    """A session on the target already holds a translated address and port the source uses: the
    playbook fails naming it, touches nothing, and every flow continues through the source."""
    with FlowSet(lab, duration=120) as flows:
        time.sleep(1.0)
        taken = flows.results()["tcp4"]["peers"][0]  # 203.0.113.1:PORT, as the server sees it
        address, port = taken.rsplit(":", 1)
        server = lab.addresses["server"][4]
        lab.run("nat-b", ["nft", "add", "table", "ip", "probe"])
        lab.run("nat-b", ["nft", "add", "chain", "ip", "probe", "post",
                          "{ type nat hook postrouting priority 100 ; }"])
        # Another client's session, translated to the very address and port of the live TCP flow.
        lab.run("nat-b", ["conntrack", "-I", "-p", "tcp", "-s", "192.0.2.99", "-d", server,
                          "--sport", "41000", "--dport", "5001", "--src-nat", "%s:%s" % (address, port),
                          "--state", "ESTABLISHED", "-t", "600", "-u", "SEEN_REPLY,ASSURED"])
        before = lab.run("nat-b", ["conntrack", "-L"]).stdout
        run = migrate(lab, "nat-a", "nat-b", tmp_path)
        after = lab.run("nat-b", ["conntrack", "-L"]).stdout
        time.sleep(1.0)
        results = flows.stop()
    assert run.returncode != 0
    assert "translated address and port are taken" in run.stdout
    assert "rolled back" in run.stdout
    assert sorted(before.splitlines()) == sorted(after.splitlines()) or "192.0.2.99" in after
    assert lab.service_holder() == "nat-a"
    assert_flows_whole(results)
    assert new_connection_ok(lab)


@pytest.mark.parametrize("two_host_lab", [dict(source_impl="iptables-legacy", target_impl="nftables")], indirect=True)
def test_controller_killed_after_freeze_source_unfreezes_itself(lab, tmp_path):
    """SIGKILL to the whole playbook inside the cutover window: the relays see ansible-playbook gone
    and close the agents' input, the source's agent lifts the freeze long before the kernel would
    (its deadline is 60 s), the target's removes what the pre-copy put there."""
    deadline = 60
    argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=nat-a",
            "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % tmp_path,
            "-e", "nfstate_freeze_deadline=%d" % deadline]
    # The window lasts milliseconds: a narrow link to the target (the controller's side of its
    # management veth) holds it open long enough to kill the controller inside it for sure.
    throttle = ["tc", "qdisc", "replace", "dev", lab.root_veth("nat-b"), "root", "tbf", "rate", "4kbit",
                "burst", "1600", "latency", "30s"]
    with FlowSet(lab, kinds=("tcp", "udpo"), families=(4,), duration=120) as flows:
        controller = subprocess.Popen(argv, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True)
        killed_at = None
        frozen_seen = False
        output = []
        try:
            for line in controller.stdout:
                output.append(line)
                if "TASK [Cut over" in line:
                    subprocess.run(throttle, check=True)
                    limit = time.monotonic() + 20
                    while not frozen_seen and time.monotonic() < limit:
                        frozen_seen = source_frozen(lab)
                    killed_at = time.monotonic()
                    os.killpg(controller.pid, signal.SIGKILL)
                    break
        finally:
            if controller.poll() is None:
                os.killpg(controller.pid, signal.SIGKILL)
            controller.wait()
            subprocess.run(["tc", "qdisc", "del", "dev", lab.root_veth("nat-b"), "root"], check=False)
        assert killed_at is not None, "the playbook never reached the cutover: " + "".join(output)[-3000:]
        assert frozen_seen, "the source never froze: " + "".join(output)[-3000:]
        # The source serves again on its own within a few seconds (its agent undid the freeze).
        limit = killed_at + 8
        while source_frozen(lab) and time.monotonic() < limit:
            time.sleep(0.1)
        unfrozen_after = time.monotonic() - killed_at
        assert not source_frozen(lab), "the source was still frozen 8 s after the controller died"
        assert new_connection_ok(lab, timeout=2.0)
        # The target keeps nothing of ours active.
        left = ours_on(lab, "nat-b")
        while left and time.monotonic() < limit + 8:
            time.sleep(0.2)
            left = ours_on(lab, "nat-b")
        results = flows.stop()
    assert lab.service_holder() == "nat-a"
    assert left == [], left
    assert_flows_whole(results)
    print("source unfrozen %.1f s after the kill" % unfrozen_after)


@pytest.mark.parametrize("two_host_lab", [dict(source_impl="iptables-legacy", target_impl="nftables")], indirect=True)
def test_target_table_too_small_fails_before_touching_anything(lab, tmp_path):
    """nat-b's conntrack table is all but full: the preflight refuses, nothing moves, flows go on."""
    with FlowSet(lab, duration=120) as flows:
        time.sleep(1.0)
        # Untranslated entries of nobody's, leaving 3 places: fewer than the live flows need.
        filled = lab.run("nat-b", ["/usr/bin/python3", "-c", FILL, os.path.join(lab.workdir, "collections"), "3"],
                         timeout=120)
        assert filled.stdout.split()[0] == "0", filled.stdout
        run = migrate(lab, "nat-a", "nat-b", tmp_path)
        time.sleep(1.0)
        results = flows.stop()
        translated_on_target = lab.run("nat-b", ["conntrack", "-L", "-n"], check=False).stdout
    assert run.returncode != 0
    assert "the conntrack table is too small" in run.stdout
    assert "rolled back" in run.stdout
    assert translated_on_target.strip() == ""
    assert lab.service_holder() == "nat-a"
    assert_flows_whole(results)
    lab.run("nat-b", ["conntrack", "-F"])
    assert new_connection_ok(lab)
