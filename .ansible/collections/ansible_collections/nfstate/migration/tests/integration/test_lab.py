"""The lab itself: namespaces, real sshd reachable by Ansible, NAT on the source, live flows, moving
the service addresses, idempotent build, complete teardown.

Needs root, iproute2, sshd, arping and the NAT tools; builds its own lab and always removes it.
"""

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.nfstate.migration.lab import flows as lab_flows
from ansible_collections.nfstate.migration.lab import nfstate_lab

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "arping", "nft")) or not os.path.exists("/usr/sbin/sshd"),
    reason="needs root, iproute2, arping, nftables and openssh-server")

NAME = "h3t%d" % (os.getpid() % 100000)
ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")


@pytest.fixture(scope="module")
def lab():
    lab = nfstate_lab.Lab(NAME, source_impl="iptables-legacy", target_impl="nftables", target_rules=True,
                          target_devices=("lan1", "wan1"))
    try:
        lab.timings = {"up": lab.up()["seconds"]}
        yield lab
    finally:
        lab.down()


def _addresses(lab, role):
    out = lab.run(role, ["ip", "-j", "addr", "show"]).stdout
    return {link["ifname"]: {"%s/%s" % (a["local"], a["prefixlen"]) for a in link.get("addr_info", [])}
            for link in json.loads(out)}


def _mac(lab, role, dev):
    return json.loads(lab.run(role, ["ip", "-j", "link", "show", "dev", dev]).stdout)[0]["address"]


def _neighbour(lab, role, address):
    entries = json.loads(lab.run(role, ["ip", "-j", "neigh", "show", "to", address]).stdout)
    return entries[0].get("lladdr") if entries else None


def _service(lab):
    return [a["address"] for a in nfstate_lab.SERVICE_ADDRESSES]


def test_up_builds_the_topology(lab):
    names = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split())
    for role in nfstate_lab.ROLES:
        assert lab.ns(role) in names
    source, target = _addresses(lab, "nat-a"), _addresses(lab, "nat-b")
    assert set(_service(lab)) <= source["in0"] | source["out0"]
    assert not set(_service(lab)) & (target["lan1"] | target["wan1"])
    assert {"192.0.2.3/24", "2001:db8:1::3/64"} <= target["lan1"]
    for host in nfstate_lab.NAT_HOSTS:
        assert ipaddress.ip_address(lab.mgmt_address(host)) in ipaddress.ip_network("198.18.0.0/15")
        assert "%s/30" % lab.mgmt_address(host) in _addresses(lab, host)["mgmt0"]
    with open(lab.inventory_path) as handle:
        inventory = yaml.safe_load(handle)["all"]["children"]["nfstate_nat"]
    assert inventory["hosts"]["nat-b"]["nfstate_interfaces"] == {"inside": "lan1", "outside": "wan1"}
    assert inventory["hosts"]["nat-a"]["nfstate_implementation"] == "iptables"
    assert inventory["hosts"]["nat-a"]["nfstate_iptables_backend"] == "legacy"
    assert inventory["hosts"]["nat-b"]["nfstate_implementation"] == "nftables"
    assert [a["address"] for a in inventory["vars"]["nfstate_addresses"]] == _service(lab)
    assert lab.env["ANSIBLE_SSH_CONTROL_PATH_DIR"].startswith(lab.workdir)


def test_ansible_reaches_both_hosts_over_ssh(lab):
    ping = subprocess.run([ANSIBLE, "-i", lab.inventory_path, "all", "-m", "ansible.builtin.ping"],
                          env=lab.env, capture_output=True, text=True, timeout=60, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count('"ping": "pong"') == 2
    # The SSH session lands inside each host's own namespace: it sees that host's devices.
    links = subprocess.run([ANSIBLE, "-i", lab.inventory_path, "all", "-m", "ansible.builtin.command",
                            "-a", "ip -o link show"], env=lab.env, capture_output=True, text=True, timeout=60,
                           check=False)
    assert links.returncode == 0, links.stdout + links.stderr
    parts = dict(re.findall(r"^(nat-[ab]) \| CHANGED \| rc=0 >>\n(.*?)(?=^nat-[ab] \||\Z)", links.stdout, re.M | re.S))
    assert " in0@" in parts["nat-a"] and " lan1@" not in parts["nat-a"]
    assert " lan1@" in parts["nat-b"] and " wan1@" in parts["nat-b"]


def test_flows_through_the_source_lose_nothing(lab):
    started = time.monotonic()
    with lab_flows.FlowSet(lab, duration=30) as flows:
        time.sleep(3)
        live = flows.results()
        results = flows.stop()
    lab.timings["flows"] = round(time.monotonic() - started, 2)
    assert all(r["running"] for r in live.values())
    assert sorted(results) == ["fwd4", "fwd6", "ping4", "ping6", "tcp4", "tcp6", "udp4", "udp6", "udpo4", "udpo6"]
    for name, result in results.items():
        assert result["ok"], (name, result)
        assert result["lost"] == 0 and len(result["peers"]) == 1, (name, result)
        assert result["bytes_received"] == result["bytes_sent"] > 0, (name, result)
    low, high = nfstate_lab.SNAT_PORTS
    for family in (4, 6):
        for kind in ("tcp", "udp"):
            result = results["%s%d" % (kind, family)]
            host, port = lab_flows.peer_address(result["peers"][0])
            assert host == nfstate_lab.EXTERNAL[family]
            assert low <= port <= high and port != lab_flows.peer_address(result["local"])[1]
        # The port forward keeps the server's own address and port: the listener sees exactly it.
        forward = results["fwd%d" % family]
        assert forward["peers"] == [forward["local"]]
        assert lab_flows.peer_address(forward["local"])[0] == nfstate_lab.SERVER[family]
    assert not [f for f in os.listdir(os.path.join(lab.workdir, "pids")) if f.startswith("flow-")]


def test_new_connection_check_sees_a_blocked_nat(lab):
    assert lab_flows.new_connection_ok(lab, timeout=2)
    assert lab_flows.new_connection_ok(lab, timeout=2, family=6)
    lab.run("nat-a", ["nft", "-f", "-"], input_text=(
        "table inet h3block {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n"
        "  ct state new drop\n }\n}\n"))
    try:
        assert not lab_flows.new_connection_ok(lab, timeout=1)
    finally:
        lab.run("nat-a", ["nft", "delete", "table", "inet", "h3block"])
    assert lab_flows.new_connection_ok(lab, timeout=2)


def test_move_addresses_to_the_target_and_announce(lab):
    for role, addresses in (("client", ("192.0.2.254", "2001:db8:1::fe")), ("server", ("203.0.113.1", "2001:db8:2::1"))):
        for address in addresses:
            lab.run(role, ["ping", "-c", "1", "-W", "2", address])
    source_mac = _mac(lab, "nat-a", "in0")
    assert _neighbour(lab, "client", "192.0.2.254") == source_mac

    moved = lab.move_addresses("nat-a", "nat-b")
    lab.timings["move_ms"] = moved["total_ms"]
    assert moved["total_ms"] < 1000, moved
    assert [a.split()[0] for a in moved["announcements"]][:2] == ["arping", "arping"]

    source, target = _addresses(lab, "nat-a"), _addresses(lab, "nat-b")
    assert set(_service(lab)) <= target["lan1"] | target["wan1"]
    assert not set(_service(lab)) & (source["in0"] | source["out0"])
    assert lab.service_holder() == "nat-b"
    # The neighbours learnt the new owner from the announcements alone (nobody sent them traffic).
    inside_mac, outside_mac = _mac(lab, "nat-b", "lan1"), _mac(lab, "nat-b", "wan1")
    assert _neighbour(lab, "client", "192.0.2.254") == inside_mac
    assert _neighbour(lab, "client", "2001:db8:1::fe") == inside_mac
    assert _neighbour(lab, "server", "203.0.113.1") == outside_mac
    assert _neighbour(lab, "server", "2001:db8:2::1") == outside_mac

    # The target translates new connections with its own (nftables) rules now.
    assert lab_flows.new_connection_ok(lab, timeout=2)
    entries = lab.run("nat-b", ["conntrack", "-L", "-p", "tcp", "--dport", str(lab_flows.PORTS["probe"])]).stdout
    assert "dst=203.0.113.1" in entries


def _link_names(lab):
    return {role: sorted(link["ifname"] for link in json.loads(lab.run(role, ["ip", "-j", "link", "show"]).stdout))
            for role in nfstate_lab.ROLES}


def test_up_again_converges(lab):
    before = _link_names(lab)
    sshd = lab.status()["sshd"]
    lab.timings["up_again"] = lab.up()["seconds"]
    status = lab.status()
    assert status["built"] and status["service_on"] == "nat-a"
    assert status["sshd"] == sshd  # unchanged config: the same daemons keep serving
    assert _link_names(lab) == before
    rules = lab.run("nat-a", ["iptables-legacy-save", "-t", "nat"]).stdout
    assert rules.count("-A POSTROUTING") == 3 and rules.count("-A PREROUTING") == 1
    assert lab.run("nat-b", ["nft", "list", "tables"]).stdout.split("\n").count("table ip nat") == 1
    assert lab_flows.new_connection_ok(lab, timeout=2)


def _ssh_master_pids(lab):
    pids = []
    for sock in os.listdir(lab.control_path_dir):
        res = subprocess.run(["ssh", "-o", "ControlPath=%s" % os.path.join(lab.control_path_dir, sock), "-O", "check",
                              "x"], capture_output=True, text=True, timeout=5, check=False)
        pids += [int(p) for p in re.findall(r"pid=(\d+)", res.stderr + res.stdout)]
    return pids


def test_down_leaves_nothing(lab):
    masters = _ssh_master_pids(lab)
    assert masters, "ansible left no connection-sharing master to end"
    sshd = [pid for pid in lab.status()["sshd"].values() if pid]
    assert len(sshd) == 2
    lab.timings["down"] = lab.down()["seconds"]
    sys.stderr.write("lab timings: %s\n" % lab.timings)
    time.sleep(0.1)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "nfs%s-" % lab.name not in names
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert "nfs%s-m" % lab.name not in links
    for pid in sshd + masters:
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split(") ")[1][0] == "Z"
    assert not os.path.exists(lab.workdir)


def test_down_removes_a_half_built_lab():
    name = "h3h%d" % (os.getpid() % 100000)
    half = nfstate_lab.Lab(name)
    subprocess.run(["ip", "netns", "add", half.ns("client")], check=True)
    subprocess.run(["ip", "netns", "add", half.ns("nat-a")], check=True)
    try:
        subprocess.run(["ip", "link", "add", half.root_veth("nat-a"), "type", "veth", "peer", "name", "mgmt0",
                        "netns", half.ns("nat-a")], check=True)
        # A process nobody recorded, still inside one of the lab's namespaces.
        stray = half.popen("nat-a", ["sleep", "60"])
    finally:
        half.down()
    assert stray.wait(timeout=5) != 0
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "nfs%s-" % name not in names
    assert half.root_veth("nat-a") not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
