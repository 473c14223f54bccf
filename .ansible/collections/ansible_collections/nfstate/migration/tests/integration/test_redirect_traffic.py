"""nfstate.migration.service_addresses moving service addresses between two hosts on one link.

Lab (namespaces created and removed here, by conftest.py's netns_lab):

    client (eth0) ---+
    A (in0, out0) ---+--- br0 in the switch namespace
    B (lan1, wan1) --+

The service addresses 192.0.2.254/24 and 2001:db8:1::fe/64 (role inside) and 198.51.100.254/24
(role outside, on a link of its own) start on A. The module, run by `ansible` inside each host's
namespace, claims them on B, whose devices are named differently, then releases them on A. The
client must follow from the announcements alone: its neighbour entries hold B's hardware address
right after the claim, without the client having asked.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from labs import collection_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")

V4, V6, OUT = "192.0.2.254", "2001:db8:1::fe", "198.51.100.254"
SERVICE = [{"address": V4 + "/24", "role": "inside"}, {"address": V6 + "/64", "role": "inside"},
           {"address": OUT + "/24", "role": "outside"}]
MAC = {"cli": "02:00:00:00:0c:01", "a": "02:00:00:00:0a:01", "b": "02:00:00:00:0b:01"}
DEVICES = {"a": {"inside": "in0", "outside": "out0"}, "b": {"inside": "lan1", "outside": "wan1"}}
OWN = {"cli": ("192.0.2.2/24", "2001:db8:1::2/64"), "a": ("192.0.2.11/24", "2001:db8:1::11/64"),
       "b": ("192.0.2.12/24", "2001:db8:1::12/64")}

# Records every ARP and neighbour discovery frame seen on the client's device as JSON lines.
CAPTURE = r'''
import json, socket, struct, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sock.bind((sys.argv[1], 0))
out = open(sys.argv[2], "w", buffering=1)
out.write("ready\n")
while True:
    frame, meta = sock.recvfrom(65535)
    now = time.time()
    record = {"t": now, "src": frame[6:12].hex(":"), "outgoing": meta[2] == socket.PACKET_OUTGOING}
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806:
        record.update(kind="arp", oper=struct.unpack("!H", frame[20:22])[0],
                      sender=socket.inet_ntoa(frame[28:32]), target=socket.inet_ntoa(frame[38:42]))
    elif ethertype == 0x86DD and frame[20] == 58 and frame[54] in (135, 136):
        record.update(kind="na" if frame[54] == 136 else "ns", hop_limit=frame[21],
                      override=bool(frame[58] & 0x20), solicited=bool(frame[58] & 0x40),
                      target=socket.inet_ntop(socket.AF_INET6, frame[62:78]),
                      lladdr=frame[80:86].hex(":") if len(frame) >= 86 else None)
    else:
        continue
    out.write(json.dumps(record) + "\n")
'''


def sh(*args, check=True, **kwargs):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kwargs)


class Lab:
    def __init__(self, spaces, tmp):
        self.spaces, self.tmp = spaces, tmp
        self.env = collection_env(tmp)
        self.capture_script = os.path.join(tmp, "capture.py")
        with open(self.capture_script, "w") as out:
            out.write(CAPTURE)

    def build(self):
        self.ns = {role: self.spaces.add(role) for role in ("sw", "cli", "a", "b")}
        sw = self.ns["sw"]
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        ports = {"cli": ["eth0"], "a": list(DEVICES["a"].values()), "b": list(DEVICES["b"].values())}
        for host, devices in ports.items():
            ns = self.ns[host]
            for number, device in enumerate(devices):
                port = "p%s%d" % (host, number)
                sh("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", device, "netns", ns)
                sh("ip", "-n", sw, "link", "set", port, "up")
                if number == 0:  # the inside link is shared; each outside device gets a link of its own
                    sh("ip", "-n", sw, "link", "set", port, "master", "br0")
                if device in ("eth0", "in0", "lan1"):
                    sh("ip", "-n", ns, "link", "set", device, "address", MAC[host])
                sh("ip", "-n", ns, "link", "set", device, "up")
            inside = devices[0]
            sh("ip", "-n", ns, "addr", "add", OWN[host][0], "dev", inside)
            sh("ip", "-n", ns, "addr", "add", OWN[host][1], "dev", inside, "nodad")
        for host in ("a", "b"):  # NAT hosts route
            self.in_ns(host, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

    def in_ns(self, host, *args, **kwargs):
        return sh("ip", "netns", "exec", self.ns[host], *args, **kwargs)

    def spawn(self, host, *args, **kwargs):
        return self.spaces.spawn(self.ns[host], *args, **kwargs)

    # -- the module
    def module(self, host, check=False, expect_failure=False, **args):
        """Run nfstate.migration.service_addresses on a host with its own device names; returns the result."""
        args = dict({"addresses": SERVICE, "interfaces": DEVICES[host]}, **args)
        cmd = ["ip", "netns", "exec", self.ns[host], ANSIBLE, "localhost", "-m", "nfstate.migration.service_addresses",
               "-a", json.dumps(args), "-e", "ansible_python_interpreter=/usr/bin/python3", "--diff"]
        result = sh(*(cmd + (["--check"] if check else [])), check=False, env=self.env, cwd=self.tmp)
        match = re.search(r"^localhost \| (CHANGED|SUCCESS|FAILED!) => (\{.*)", result.stdout, re.M | re.S)
        assert match, result.stdout + result.stderr
        assert (match.group(1) == "FAILED!") == expect_failure, result.stdout + result.stderr
        data = json.loads(match.group(2))
        data["_diff"] = result.stdout[:match.start()]  # ansible prints the diff before the result
        return data

    # -- observing
    def service_addresses(self, host):
        """The service addresses the host holds, as 'device address/prefix'."""
        data = json.loads(self.in_ns(host, "ip", "-j", "addr", "show").stdout)
        return sorted("%s %s/%d" % (link["ifname"], info["local"], info["prefixlen"])
                      for link in data for info in link.get("addr_info", [])
                      if info["local"] in (V4, V6, OUT))

    def neighbour(self, address):
        """(hardware address, state) of the client's neighbour entry for address, or None."""
        entries = json.loads(self.in_ns("cli", "ip", "-j", "neigh", "show", address, "dev", "eth0").stdout)
        return (entries[0].get("lladdr"), entries[0]["state"][0]) if entries else None

    def start_capture(self):
        path = os.path.join(self.tmp, "capture-%d.jsonl" % len(self.spaces.procs))
        proc = self.spawn("cli", "/usr/bin/python3", self.capture_script, "eth0", path, stdout=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(path) and open(path).readline() == "ready\n", "the capture to start")
        return proc, path

    def stop_capture(self, capture):
        proc, path = capture
        time.sleep(0.1)  # frames already sent are read before the capture ends
        proc.kill()
        proc.wait()
        with open(path) as lines:
            return [json.loads(line) for line in lines if line.startswith("{")]

    def ping(self, address):
        """A fresh echo exchange from the client (fills its neighbour entry)."""
        self.in_ns("cli", "ping", "-c", "1", "-W", "1", address)


def wait_for(condition, what, seconds=10):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


@pytest.fixture
def lab(netns_lab, tmp_path):
    lab = Lab(netns_lab, str(tmp_path))
    lab.build()
    return lab


def addresses_on(host):
    inside, outside = DEVICES[host]["inside"], DEVICES[host]["outside"]
    return sorted(["%s %s/24" % (inside, V4), "%s %s/64" % (inside, V6), "%s %s/24" % (outside, OUT)])


def test_claim_announces_so_neighbours_follow_without_asking_then_release(lab):
    first = lab.module("a")
    assert first["changed"] and lab.service_addresses("a") == addresses_on("a")
    lab.ping(V4)
    lab.ping(V6)
    assert lab.neighbour(V4)[0] == MAC["a"] and lab.neighbour(V6)[0] == MAC["a"]

    capture = lab.start_capture()
    # check mode: reports the claim, touches nothing, sends nothing
    checked = lab.module("b", check=True)
    assert checked["changed"] is True
    assert [a["address"] for a in checked["added"]] == [a["address"] for a in SERVICE]
    assert [a["device"] for a in checked["added"]] == ["lan1", "lan1", "wan1"]
    assert lab.service_addresses("b") == []
    assert checked["timings"] == {"change_ms": None, "redirect_ms": None, "announce_ms": None}

    claimed = lab.module("b")
    # read at once, before the client sends anything: the entries moved by the announcements alone
    v4_after, v6_after = lab.neighbour(V4), lab.neighbour(V6)
    frames = lab.stop_capture(capture)

    assert claimed["changed"] is True and lab.service_addresses("b") == addresses_on("b")
    assert claimed["addresses"] == [{"address": a["address"], "role": a["role"], "device": DEVICES["b"][a["role"]]}
                                    for a in SERVICE]
    assert "\n+192.0.2.254/24 inside lan1\n+2001:db8:1::fe/64 inside lan1\n+198.51.100.254/24 outside wan1\n" \
        in claimed["_diff"], claimed["_diff"]
    assert {(a["address"], a["device"], a["method"]) for a in claimed["announced"]} == {
        (V4, "lan1", "gratuitous-arp"), (V6, "lan1", "unsolicited-na"), (OUT, "wan1", "gratuitous-arp")}
    assert v4_after == (MAC["b"], "STALE"), v4_after
    assert v6_after == (MAC["b"], "STALE"), v6_after

    # on the wire: B's announcements, three rounds (the default count); nothing asked by the client,
    # and nothing at all from B's check-mode run (every frame from B belongs to the real claim)
    from_client = [f for f in frames if f["src"] == MAC["cli"] and f.get("target") in (V4, V6)]
    assert from_client == [], from_client
    arp = [f for f in frames if f["src"] == MAC["b"] and f["kind"] == "arp"]
    na = [f for f in frames if f["src"] == MAC["b"] and f["kind"] == "na"]
    assert len(arp) == 3 and all(f["oper"] == 1 and f["sender"] == f["target"] == V4 for f in arp), arp
    assert len(na) == 3 and all(f["target"] == V6 and f["override"] and not f["solicited"]
                                and f["hop_limit"] == 255 and f["lladdr"] == MAC["b"] for f in na), na
    # one round is back to back: its two frames reach the client within a few milliseconds
    assert abs(na[0]["t"] - arp[0]["t"]) < 0.02, (arp[0], na[0])
    assert 0.05 < arp[1]["t"] - arp[0]["t"] < 0.5

    timings = claimed["timings"]
    print("claim timings on B (ms): %s; first round on the wire: %.3f ms"
          % (timings, abs(na[0]["t"] - arp[0]["t"]) * 1000))
    assert 0 < timings["change_ms"] <= timings["redirect_ms"] < 50, timings
    assert timings["announce_ms"] >= 200  # two repeats, 0.1 s apart

    # idempotent: nothing added, nothing announced
    capture = lab.start_capture()
    again = lab.module("b")
    frames = lab.stop_capture(capture)
    assert again["changed"] is False and again["added"] == [] and again["announced"] == []
    assert [f for f in frames if f["src"] == MAC["b"]] == []
    # unless asked to announce always: same addresses, no change, fresh announcements
    capture = lab.start_capture()
    forced = lab.module("b", announce="always", count=1)
    frames = lab.stop_capture(capture)
    assert forced["changed"] is False and len(forced["announced"]) == 3
    assert sorted(f["kind"] for f in frames if f["src"] == MAC["b"]) == ["arp", "na"]

    # release on A: a primary address whose removal would take another address with it is refused
    lab.in_ns("a", "ip", "addr", "add", "198.51.100.11/24", "dev", "out0")
    refused = lab.module("a", state="absent", expect_failure=True)
    assert "would make the kernel delete 198.51.100.11/24" in refused["msg"]
    assert lab.service_addresses("a") == addresses_on("a")
    lab.in_ns("a", "ip", "addr", "del", "198.51.100.11/24", "dev", "out0")

    checked = lab.module("a", state="absent", check=True)
    assert checked["changed"] is True and len(checked["removed"]) == 3 and checked["addresses"] == []
    assert lab.service_addresses("a") == addresses_on("a")

    released = lab.module("a", state="absent")
    assert released["changed"] is True and released["addresses"] == [] and released["announced"] == []
    assert sorted(r["address"] for r in released["removed"]) == sorted(a["address"] for a in SERVICE)
    assert "@@ -1,3 +0,0 @@\n-192.0.2.254/24 inside in0\n" in released["_diff"], released["_diff"]
    assert lab.service_addresses("a") == []
    assert "192.0.2.11/24" in lab.in_ns("a", "ip", "-4", "addr", "show", "in0").stdout  # A's own address stays
    assert lab.module("a", state="absent")["changed"] is False

    # the client reaches the addresses on B
    lab.ping(V4)
    lab.ping(V6)
    assert lab.neighbour(V4)[0] == MAC["b"] and lab.neighbour(V6)[0] == MAC["b"]


def ping_stats(proc):
    out = proc.communicate(timeout=30)[0]
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


def test_continuous_ping_across_moves_loses_at_most_one_packet(lab):
    lab.module("a", announce="false")
    lab.ping(V4)
    lab.ping(V6)
    # 10 ms apart until the moves to B and back to A are done, however long the machine takes for them
    # (stopped with SIGINT, on which ping prints its statistics); 120 s at most.
    pings = [lab.spawn("cli", "ping", "-n", "-q", "-i", "0.01", "-W", "1", "-w", "120", address,
                       stdout=subprocess.PIPE, text=True) for address in (V4, V6)]
    time.sleep(0.3)
    assert lab.module("b")["changed"]
    assert lab.module("a", state="absent")["changed"]
    assert lab.neighbour(V4)[0] == MAC["b"] and lab.neighbour(V6)[0] == MAC["b"]
    assert lab.module("a")["changed"]
    assert lab.module("b", state="absent")["changed"]
    assert lab.neighbour(V4)[0] == MAC["a"] and lab.neighbour(V6)[0] == MAC["a"]
    time.sleep(0.3)
    assert all(proc.poll() is None for proc in pings), "the moves took longer than the pings"
    for proc in pings:
        proc.send_signal(signal.SIGINT)
    for address, proc in zip((V4, V6), pings):
        sent, received = ping_stats(proc)
        print("ping %s across two moves: %d sent, %d received" % (address, sent, received))
        assert sent >= 50 and sent - received <= 1, (address, sent, received)


PLAYBOOK = """
- name: Redirect with the role, the collection's variables only
  hosts: localhost
  gather_facts: false
  vars:
    nfstate_addresses: %s
  tasks:
    - name: Claim or release
      ansible.builtin.include_role:
        name: nfstate.migration.redirect_addresses
        tasks_from: "{{ entry_point }}"
    - name: Keep the result for the test
      ansible.builtin.copy:
        content: "{{ (redirect_addresses_claimed if entry_point == 'claim' else redirect_addresses_released) | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
""" % json.dumps(SERVICE)


def test_role_claims_on_the_target_and_releases_on_the_source(lab):
    lab.module("a", announce="false")
    playbook = os.path.join(lab.tmp, "redirect.yml")
    with open(playbook, "w") as out:
        out.write(PLAYBOOK)

    def play(host, entry_point):
        cmd = ["ip", "netns", "exec", lab.ns[host], os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
               "-i", "localhost,", "-c", "local", playbook, "-e", "ansible_python_interpreter=/usr/bin/python3",
               "-e", json.dumps({"entry_point": entry_point, "nfstate_interfaces": DEVICES[host],
                                 "result_file": os.path.join(lab.tmp, "result.json")})]
        result = sh(*cmd, check=False, env=lab.env, cwd=lab.tmp)
        assert result.returncode == 0, result.stdout + result.stderr
        with open(os.path.join(lab.tmp, "result.json")) as data:
            return json.load(data)

    claimed = play("b", "claim")
    assert claimed["changed"] and len(claimed["announced"]) == 3
    assert lab.service_addresses("b") == addresses_on("b")
    released = play("a", "release")
    assert released["changed"] and len(released["removed"]) == 3
    assert lab.service_addresses("a") == []
