#!/usr/bin/env python
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lab of network namespaces in which a NAT service moves from one host to another.

    client (192.0.2.10) --[br-in]-- nat-a / nat-b --[br-out]-- server (203.0.113.20)

Both bridges live in the switch namespace. nat-a (the source) and nat-b (the target) are real SSH
hosts for Ansible: each runs its own sshd on a management veth from the root namespace (the
controller), addressed from 198.18.0.0/15 per lab name. The service addresses (the client's gateway
and the NAT's external address) start on nat-a, which also holds the NAT rules.

Used as a module (`Lab`) by the tests, the demo and molecule, and as a command:

    python3 lab/nfstate_lab.py up NAME [--source-impl ...] [--target-impl ...] [--target-rules yes|no]
                                       [--target-devices lan1,wan1]
    python3 lab/nfstate_lab.py status|down|env NAME
    python3 lab/nfstate_lab.py move-addresses NAME [--from nat-a] [--to nat-b]

Everything a lab creates carries its name, so several labs live side by side; only the lab's own
namespaces, its two root-side veths and its work directory are ever touched.
"""

import argparse
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROLES = ("client", "server", "nat-a", "nat-b", "sw")
NAT_HOSTS = ("nat-a", "nat-b")
IMPLEMENTATIONS = ("iptables-legacy", "iptables-nft", "nftables")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # keeps "nfs<name>-ma" within IFNAMSIZ

CLIENT = {4: "192.0.2.10", 6: "2001:db8:1::10"}
SERVER = {4: "203.0.113.20", 6: "2001:db8:2::20"}
INSIDE_NETWORK = {4: "192.0.2.0/24", 6: "2001:db8:1::/64"}
# Fixed per-host addresses: what stays on a NAT host when the service leaves it.
HOST_ADDRESSES = {
    "nat-a": {"inside": ("192.0.2.2/24", "2001:db8:1::2/64"), "outside": ("203.0.113.2/24", "2001:db8:2::2/64")},
    "nat-b": {"inside": ("192.0.2.3/24", "2001:db8:1::3/64"), "outside": ("203.0.113.3/24", "2001:db8:2::3/64")},
}
# The addresses that move with the service (nfstate_addresses).
SERVICE_ADDRESSES = (
    {"address": "192.0.2.254/24", "role": "inside"},
    {"address": "2001:db8:1::fe/64", "role": "inside"},
    {"address": "203.0.113.1/24", "role": "outside"},
    {"address": "2001:db8:2::1/64", "role": "outside"},
)
GATEWAY = {4: "192.0.2.254", 6: "2001:db8:1::fe"}
EXTERNAL = {4: "203.0.113.1", 6: "2001:db8:2::1"}
SNAT_PORTS = (20000, 29999)
FORWARD_PORT = 8080

MGMT_NETWORK = ipaddress.ip_network("198.18.0.0/15")
MGMT_BLOCK = 8  # a /29 per lab: one /30 per NAT host
DEFAULT_DEVICES = {"nat-a": ("in0", "out0"), "nat-b": ("in0", "out0")}
SWITCH_PORTS = {"client": ("c-in", "br-in"), "server": ("s-out", "br-out")}
NAT_SWITCH_PORTS = {"nat-a": ("a-in", "a-out"), "nat-b": ("b-in", "b-out")}
SSHD = "/usr/sbin/sshd"
HOST_PYTHON = "/usr/bin/python3"
TOOLS = ("ip", "ssh", "ssh-keygen", "arping", "nft", "iptables-legacy-restore", "iptables-nft-restore")


class LabError(Exception):
    """A lab step failed; the message names the command and what it printed."""


def _cmd(argv, input_text=None, check=True, timeout=30):
    try:
        res = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(argv)))
    if check and res.returncode != 0:
        raise LabError("failed (%d): %s\n%s%s" % (res.returncode, " ".join(argv), res.stderr, input_text or ""))
    return res


def _netns_list():
    res = _cmd(["ip", "-j", "netns", "list"], check=False)
    try:
        return {entry["name"] for entry in json.loads(res.stdout or "[]")}
    except ValueError:
        return set()


def _links(ns=None):
    argv = ["ip", "-j", "link", "show"] if ns is None else ["ip", "-n", ns, "-j", "link", "show"]
    res = _cmd(argv, check=False)
    if res.returncode != 0:
        return {}
    return {link["ifname"]: link for link in json.loads(res.stdout or "[]")}


def _addresses(ns):
    """{device: set of 'address/prefixlen'} in a namespace."""
    res = _cmd(["ip", "-n", ns, "-j", "addr", "show"], check=False)
    found = {}
    for link in json.loads(res.stdout or "[]") if res.returncode == 0 else []:
        found[link["ifname"]] = {"%s/%s" % (a["local"], a["prefixlen"]) for a in link.get("addr_info", [])}
    return found


def _ns_inode(ns):
    try:
        return os.stat(os.path.join("/run/netns", ns)).st_ino
    except OSError:
        return None


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_pid(path):
    try:
        with open(path) as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _kill(pids, grace=2.0):
    """SIGTERM, then SIGKILL whatever is still there after the grace time."""
    pids = [pid for pid in pids if _alive(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = [pid for pid in pids if _alive(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _write(path, text, mode=0o600):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _yaml(value, indent=0):
    """Block-style YAML for dicts, lists and scalars; strings as JSON strings (valid YAML)."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append("%s%s:" % (pad, key))
                lines.append(_yaml(item, indent + 1))
            else:
                lines.append("%s%s: %s" % (pad, key, json.dumps(item)))
    else:
        for item in value:
            if isinstance(item, dict) and item:
                body = _yaml(item, indent + 1).split("\n")
                lines.append("%s- %s" % (pad, body[0].lstrip()))
                lines.extend(body[1:])
            else:
                lines.append("%s- %s" % (pad, json.dumps(item)))
    return "\n".join(lines)


def _arping_argv(dev, address):
    """The unsolicited-ARP command line of whichever arping is installed."""
    if _arping_argv.flavour is None:
        res = _cmd(["arping", "-h"], check=False)
        _arping_argv.flavour = "habets" if "habets" in (res.stdout + res.stderr).lower() else "iputils"
    if _arping_argv.flavour == "habets":
        # -w 0: send and leave, nobody answers an announcement; -S: sender IP = target IP (a GARP).
        return ["arping", "-q", "-U", "-c", "1", "-w", "0", "-i", dev, "-S", address, address]
    return ["arping", "-q", "-U", "-c", "1", "-I", dev, address]


_arping_argv.flavour = None


def send_unsolicited_na(dev, addresses):
    """Announce IPv6 addresses on dev: unsolicited neighbour advertisements to all nodes.

    Override set so that neighbours replace the old link-layer address; Router set because the
    NAT host forwards. The kernel fills in the ICMPv6 checksum of a raw socket.
    """
    with open("/sys/class/net/%s/address" % dev) as handle:
        mac = bytes.fromhex(handle.read().strip().replace(":", ""))
    ifindex = socket.if_nametoindex(dev)
    for address in addresses:
        target = socket.inet_pton(socket.AF_INET6, address)
        message = struct.pack("!BBHI", 136, 0, 0, 0xA0000000) + target + struct.pack("!BB", 2, 1) + mac
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.bind((address, 0, 0, ifindex))
            sock.sendto(message, ("ff02::1", 0, 0, ifindex))
        finally:
            sock.close()


def nat_ruleset(implementation, outside):
    """The source's NAT rules as [(argv, stdin)]: SNAT of the inside network to the service's
    external address with a port range (v4 and v6), and a TCP port forward to the client. The
    rules match the outside device only, as a NAT in front of a single LAN does."""
    low, high = SNAT_PORTS
    if implementation == "nftables":
        tables = []
        for family, table in ((4, "ip"), (6, "ip6")):
            ext = EXTERNAL[family] if family == 4 else "[%s]" % EXTERNAL[family]
            client = CLIENT[family] if family == 4 else "[%s]" % CLIENT[family]
            tables.append(
                "table %(t)s nat {\n"
                "  chain prerouting {\n"
                "    type nat hook prerouting priority dstnat; policy accept;\n"
                "    iifname \"%(out)s\" %(t)s daddr %(extaddr)s tcp dport %(fwd)d dnat to %(client)s:%(fwd)d\n"
                "  }\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                "    oifname \"%(out)s\" %(t)s saddr %(net)s meta l4proto tcp snat to %(ext)s:%(low)d-%(high)d\n"
                "    oifname \"%(out)s\" %(t)s saddr %(net)s meta l4proto udp snat to %(ext)s:%(low)d-%(high)d\n"
                "    oifname \"%(out)s\" %(t)s saddr %(net)s snat to %(extaddr)s\n"
                "  }\n"
                "}\n" % {"t": table, "out": outside, "extaddr": EXTERNAL[family], "ext": ext, "client": client,
                         "fwd": FORWARD_PORT, "net": INSIDE_NETWORK[family], "low": low, "high": high})
        return [(["nft", "-f", "-"], "".join(tables))]
    backend = {"iptables-legacy": "legacy", "iptables-nft": "nft"}[implementation]
    steps = []
    for family, tool in ((4, "iptables"), (6, "ip6tables")):
        ext = EXTERNAL[family] if family == 4 else "[%s]" % EXTERNAL[family]
        client = CLIENT[family] if family == 4 else "[%s]" % CLIENT[family]
        plen = 32 if family == 4 else 128
        rules = [
            "*nat",
            ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
            "-A PREROUTING -d %s/%d -i %s -p tcp -m tcp --dport %d -j DNAT --to-destination %s:%d"
            % (EXTERNAL[family], plen, outside, FORWARD_PORT, client, FORWARD_PORT),
            "-A POSTROUTING -s %s -o %s -p tcp -j SNAT --to-source %s:%d-%d" % (INSIDE_NETWORK[family], outside, ext, low, high),
            "-A POSTROUTING -s %s -o %s -p udp -j SNAT --to-source %s:%d-%d" % (INSIDE_NETWORK[family], outside, ext, low, high),
            "-A POSTROUTING -s %s -o %s -j SNAT --to-source %s" % (INSIDE_NETWORK[family], outside, EXTERNAL[family]),
            "COMMIT", "",
        ]
        steps.append((["%s-%s-restore" % (tool, backend)], "\n".join(rules)))
    return steps


def ansible_cfg(inventory_path, control_path_dir, forks=None):
    """The ansible.cfg of a lab (or of a fleet of labs): its inventory, its own SSH control paths."""
    lines = ["[defaults]", "inventory = %s" % inventory_path, "host_key_checking = False",
             "interpreter_python = %s" % HOST_PYTHON, "retry_files_enabled = False"]
    if forks:
        lines.append("forks = %d" % forks)
    lines += ["", "[ssh_connection]", "control_path_dir = %s" % control_path_dir, "pipelining = True", ""]
    return "\n".join(lines)


class Lab:
    """One lab, by name. Constructor options left at None keep what the lab was built with
    (recorded in its work directory), else the defaults."""

    def __init__(self, name, source_impl=None, target_impl=None, target_rules=None,
                 source_devices=None, target_devices=None, workdir=None, use_checkout=True):
        if not NAME_PATTERN.match(name):
            raise LabError("lab name %r: 1-8 characters, a-z then a-z0-9" % name)
        self.name = name
        self.workdir = workdir or os.path.join(tempfile.gettempdir(), "nfstate-lab-%s" % name)
        recorded = self._load_state()
        self.source_impl = source_impl or recorded.get("source_impl", "iptables-legacy")
        self.target_impl = target_impl or recorded.get("target_impl", "nftables")
        for impl in (self.source_impl, self.target_impl):
            if impl not in IMPLEMENTATIONS:
                raise LabError("implementation %r: one of %s" % (impl, ", ".join(IMPLEMENTATIONS)))
        self.target_rules = bool(recorded.get("target_rules", False) if target_rules is None else target_rules)
        devices = recorded.get("devices", {})
        self.devices = {
            "nat-a": _device_pair(source_devices or devices.get("nat-a") or DEFAULT_DEVICES["nat-a"]),
            "nat-b": _device_pair(target_devices or devices.get("nat-b") or DEFAULT_DEVICES["nat-b"]),
        }
        self.mgmt_block = recorded.get("mgmt_block")
        self.use_checkout = use_checkout
        self.addresses = {"client": CLIENT, "server": SERVER, "gateway": GATEWAY, "external": EXTERNAL,
                          "service": [dict(a) for a in SERVICE_ADDRESSES], "forward_port": FORWARD_PORT,
                          "snat_ports": SNAT_PORTS}

    # ---- naming -------------------------------------------------------------------------------
    def ns(self, role):
        if role not in ROLES:
            raise LabError("role %r: one of %s" % (role, ", ".join(ROLES)))
        return "nfs%s-%s" % (self.name, role)

    def root_veth(self, host):
        return "nfs%s-m%s" % (self.name, host[-1])

    def implementation(self, host):
        return self.source_impl if host == "nat-a" else self.target_impl

    @property
    def inventory_path(self):
        return os.path.join(self.workdir, "inventory.yml")

    @property
    def ansible_cfg_path(self):
        return os.path.join(self.workdir, "ansible.cfg")

    @property
    def control_path_dir(self):
        return os.path.join(self.workdir, "cp")

    @property
    def private_key(self):
        return os.path.join(self.workdir, "ssh", "id_ed25519")

    def _path(self, *parts):
        return os.path.join(self.workdir, *parts)

    @property
    def env(self):
        """The environment for ansible / ansible-playbook against this lab."""
        env = dict(os.environ)
        env.update(self.env_overrides())
        return env

    def env_overrides(self):
        over = {
            "ANSIBLE_CONFIG": self.ansible_cfg_path,
            "ANSIBLE_INVENTORY": self.inventory_path,
            "ANSIBLE_SSH_CONTROL_PATH_DIR": self.control_path_dir,
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
        }
        if self.use_checkout:
            paths = [self._path("collections")]
            if os.environ.get("ANSIBLE_COLLECTIONS_PATH"):
                paths.append(os.environ["ANSIBLE_COLLECTIONS_PATH"])
            over["ANSIBLE_COLLECTIONS_PATH"] = ":".join(paths)
        return over

    def mgmt_address(self, host, side="ns"):
        """The management address of a NAT host ("ns") or of its controller-side veth ("root")."""
        if self.mgmt_block is None:
            raise LabError("lab %s has no management block yet (not built)" % self.name)
        base = MGMT_NETWORK.network_address + self.mgmt_block * MGMT_BLOCK + (0 if host == "nat-a" else 4)
        return str(base + (2 if side == "ns" else 1))

    # ---- running things in the namespaces ---------------------------------------------------
    def run(self, role, argv, check=True, timeout=30, input_text=None):
        """Run argv inside the role's namespace; CompletedProcess with text output."""
        return _cmd(["ip", "netns", "exec", self.ns(role)] + list(argv), input_text=input_text,
                    check=check, timeout=timeout)

    def popen(self, role, argv, **kwargs):
        return subprocess.Popen(["ip", "netns", "exec", self.ns(role)] + list(argv), **kwargs)

    def _ip_batch(self, role, commands):
        if commands:
            _cmd(["ip", "-n", self.ns(role), "-batch", "-"], input_text="\n".join(commands) + "\n")

    # ---- state ------------------------------------------------------------------------------
    def _load_state(self):
        try:
            with open(os.path.join(self.workdir, "state.json")) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def _save_state(self, built):
        state = {"name": self.name, "source_impl": self.source_impl, "target_impl": self.target_impl,
                 "target_rules": self.target_rules, "mgmt_block": self.mgmt_block, "built": built,
                 "devices": {host: list(self.devices[host]) for host in NAT_HOSTS}}
        _write(self._path("state.json"), json.dumps(state, indent=2) + "\n")

    # ---- up ---------------------------------------------------------------------------------
    def up(self):
        """Build or converge the lab; returns {"seconds": ...}. Safe to run again."""
        started = time.monotonic()
        missing = [tool for tool in TOOLS if shutil.which(tool) is None] + [
            path for path in (SSHD, HOST_PYTHON) if not os.path.exists(path)]
        if missing:
            raise LabError("missing on this machine: %s" % ", ".join(missing))
        for sub in ("", "pids", "ssh", "logs", "cp", "flows"):
            os.makedirs(self._path(sub), mode=0o700, exist_ok=True)
        self._choose_mgmt_block()
        self._save_state(built=False)
        self._namespaces()
        self._build_links()
        self._mgmt_links()
        self._configure_addresses()
        self._place_service("nat-a", "nat-b")
        self._install_rules()
        self._ssh_files()
        for host in NAT_HOSTS:
            self._start_sshd(host)
        self._write_ansible_files()
        for host in NAT_HOSTS:
            self._wait_ssh(host)
        self._save_state(built=True)
        return {"seconds": round(time.monotonic() - started, 3)}

    def _choose_mgmt_block(self):
        """A /29 of 198.18.0.0/15 for this lab: from a hash of the name, skipping blocks that any
        address or route of the root namespace (not ours) already overlaps."""
        if self.mgmt_block is not None:
            return
        ours = {self.root_veth(host) for host in NAT_HOSTS}
        used = []
        res = _cmd(["ip", "-j", "-4", "addr", "show"], check=False)
        for link in json.loads(res.stdout or "[]"):
            if link["ifname"] not in ours:
                for addr in link.get("addr_info", []):
                    used.append(ipaddress.ip_network("%s/%s" % (addr["local"], addr["prefixlen"]), strict=False))
        res = _cmd(["ip", "-j", "-4", "route", "show", "table", "all"], check=False)
        for route in json.loads(res.stdout or "[]"):
            if route.get("dst", "default") != "default" and route.get("dev") not in ours:
                try:
                    used.append(ipaddress.ip_network(route["dst"], strict=False))
                except ValueError:
                    pass
        blocks = MGMT_NETWORK.num_addresses // MGMT_BLOCK
        start = zlib.crc32(self.name.encode()) % blocks
        for step in range(blocks):
            index = (start + step) % blocks
            net = ipaddress.ip_network((int(MGMT_NETWORK.network_address) + index * MGMT_BLOCK, 29))
            if not any(net.overlaps(other) for other in used if other.version == 4):
                self.mgmt_block = index
                return
        raise LabError("no free management block in %s" % MGMT_NETWORK)

    def _namespaces(self):
        existing = _netns_list()
        for role in ROLES:
            if self.ns(role) not in existing:
                _cmd(["ip", "netns", "add", self.ns(role)])
        # Addresses are usable at once (no DAD): the service addresses move and must work immediately.
        common = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
        extra = {
            "nat-a": ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            "nat-b": ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            # The switch only bridges: no addresses of its own, no IPv6 chatter.
            "sw": ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        }
        for role in ROLES:
            self.run(role, ["sysctl", "-qw"] + common + extra.get(role, []))
            self._ip_batch(role, ["link set lo up"])

    def _build_links(self):
        sw = self.ns("sw")
        sw_links = _links(sw)
        batch = []
        for bridge in ("br-in", "br-out"):
            if bridge not in sw_links:
                batch.append("link add %s type bridge" % bridge)
            # No snooping: unsolicited neighbour advertisements and ND must flood like ARP.
            batch += ["link set %s type bridge mcast_snooping 0" % bridge, "link set %s up" % bridge]
        self._ip_batch("sw", batch)
        wanted = {
            "client": [("eth0", "c-in", "br-in")],
            "server": [("eth0", "s-out", "br-out")],
        }
        for host in NAT_HOSTS:
            inside, outside = self.devices[host]
            port_in, port_out = NAT_SWITCH_PORTS[host]
            wanted[host] = [(inside, port_in, "br-in"), (outside, port_out, "br-out")]
        for role, pairs in wanted.items():
            links = _links(self.ns(role))
            names = {dev for dev, _port, _bridge in pairs}
            batch = ["link del %s" % dev for dev in links if dev not in names | {"lo", "mgmt0"}]
            self._ip_batch(role, batch)
            sw_links = _links(sw)
            batch = []
            for dev, port, _bridge in pairs:
                if dev not in links or port not in sw_links:
                    if dev in links:
                        batch.append("link del %s" % dev)
                    batch.append("link add %s type veth peer name %s netns %s" % (dev, port, sw))
            self._ip_batch(role, batch)
            self._ip_batch("sw", ["link set %s master %s up" % (port, bridge) for _dev, port, bridge in pairs])

    def _mgmt_links(self):
        root = _links()
        for host in NAT_HOSTS:
            veth = self.root_veth(host)
            if veth in root and "mgmt0" not in _links(self.ns(host)):
                _cmd(["ip", "link", "del", veth])
                root.pop(veth)
            if veth not in root:
                _cmd(["ip", "link", "add", veth, "type", "veth", "peer", "name", "mgmt0", "netns", self.ns(host)])
            # The controller's side carries IPv4 only: nothing leaks into the root namespace's IPv6.
            _cmd(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % veth])
            _cmd(["ip", "addr", "replace", "%s/30" % self.mgmt_address(host, "root"), "dev", veth])
            _cmd(["ip", "link", "set", veth, "up"])

    def _configure_addresses(self):
        self._ip_batch("client", [
            "link set eth0 up",
            "addr replace %s/24 dev eth0" % CLIENT[4],
            "addr replace %s/64 dev eth0 nodad" % CLIENT[6],
            "route replace default via %s dev eth0" % GATEWAY[4],
            "route replace ::/0 via %s dev eth0" % GATEWAY[6],
        ])
        self._ip_batch("server", [
            "link set eth0 up",
            "addr replace %s/24 dev eth0" % SERVER[4],
            "addr replace %s/64 dev eth0 nodad" % SERVER[6],
        ])
        for host in NAT_HOSTS:
            batch = ["addr replace %s/30 dev mgmt0" % self.mgmt_address(host), "link set mgmt0 up"]
            for role, dev in zip(("inside", "outside"), self.devices[host]):
                v4, v6 = HOST_ADDRESSES[host][role]
                batch += ["link set %s up" % dev, "addr replace %s dev %s" % (v4, dev),
                          "addr replace %s dev %s nodad" % (v6, dev)]
            self._ip_batch(host, batch)

    def _service_device(self, host, role):
        return self.devices[host][0 if role == "inside" else 1]

    def _place_service(self, holder, other):
        """Service addresses on holder only; announced when they came back from the other host,
        so that neighbours do not keep sending to the other host's MAC address."""
        present = _addresses(self.ns(other))
        removed = [a for a in SERVICE_ADDRESSES
                   if a["address"] in present.get(self._service_device(other, a["role"]), ())]
        self._ip_batch(other, ["addr del %s dev %s" % (a["address"], self._service_device(other, a["role"]))
                               for a in removed])
        self._ip_batch(holder, [
            "addr replace %s dev %s%s" % (a["address"], self._service_device(holder, a["role"]),
                                          " nodad" if ":" in a["address"] else "")
            for a in SERVICE_ADDRESSES])
        if removed:
            self.announce(holder)

    def service_holder(self):
        """Which NAT host holds the service addresses: a host name, None, or "split"."""
        holders = set()
        for host in NAT_HOSTS:
            present = _addresses(self.ns(host))
            for a in SERVICE_ADDRESSES:
                if a["address"] in present.get(self._service_device(host, a["role"]), ()):
                    holders.add(host)
        return holders.pop() if len(holders) == 1 else ("split" if holders else None)

    def _clear_nat(self, host):
        """Remove every firewall/NAT table of a NAT namespace, whatever put it there, so that
        `up` converges to exactly the lab's rules even after a migration ran."""
        res = self.run(host, ["nft", "-j", "list", "tables"], check=False)
        tables = [item["table"] for item in json.loads(res.stdout or "{}").get("nftables", []) if "table" in item]
        if tables:
            self.run(host, ["nft", "-f", "-"], input_text="".join(
                "delete table %s %s\n" % (t["family"], t["name"]) for t in tables))
        for names, tool in (("ip_tables_names", "iptables-legacy"), ("ip6_tables_names", "ip6tables-legacy")):
            loaded = self.run(host, ["cat", "/proc/net/%s" % names], check=False).stdout.split()
            for table in loaded:
                self.run(host, [tool, "-t", table, "-F"])
                self.run(host, [tool, "-t", table, "-X"])
        if shutil.which("ipset") and self.run(host, ["ipset", "list", "-n"], check=False).stdout.strip():
            self.run(host, ["ipset", "destroy"], check=False)

    def wipe(self, host):
        """Someone else empties a NAT host: every firewall/NAT table and both conntrack tables."""
        self._clear_nat(host)
        for family in ("ipv4", "ipv6"):
            self.run(host, ["conntrack", "-F", "-f", family], check=False)

    def _install_rules(self):
        for host in NAT_HOSTS:
            self._clear_nat(host)
            if host == "nat-a" or self.target_rules:
                for argv, text in nat_ruleset(self.implementation(host), self.devices[host][1]):
                    self.run(host, argv, input_text=text)

    # ---- ssh --------------------------------------------------------------------------------
    def _ssh_files(self):
        keys = [("id_ed25519", "controller")] + [("host_%s" % host, host) for host in NAT_HOSTS]
        for filename, comment in keys:
            path = self._path("ssh", filename)
            if not os.path.exists(path):
                _cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nfstate-lab-%s-%s" % (self.name, comment),
                      "-f", path])
        with open(self.private_key + ".pub") as handle:
            _write(self._path("ssh", "authorized_keys"), handle.read(), 0o600)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def _sshd_config(self, host):
        return "\n".join([
            "ListenAddress %s:22" % self.mgmt_address(host),
            "HostKey %s" % self._path("ssh", "host_%s" % host),
            "PidFile %s" % self._path("pids", "sshd-%s.pid" % host),
            "AuthorizedKeysFile %s" % self._path("ssh", "authorized_keys"),
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # The lab's files live under /tmp, which StrictModes would refuse.
            "StrictModes no",
            "UseDNS no",
            "MaxStartups 64",
            "MaxSessions 64",
            "Subsystem sftp internal-sftp",
            "",
        ])

    def _process_is_ours(self, pid):
        """True when pid lives in one of this lab's namespaces or names its work directory."""
        try:
            netns = os.readlink("/proc/%d/ns/net" % pid)
        except OSError:
            return False
        inodes = {_ns_inode(self.ns(role)) for role in ROLES} - {None}
        if any(netns == "net:[%d]" % inode for inode in inodes):
            return True
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                return self.workdir.encode() in handle.read()
        except OSError:
            return False

    def _sshd_pid(self, host):
        pid = _read_pid(self._path("pids", "sshd-%s.pid" % host))
        return pid if pid and _alive(pid) and self._process_is_ours(pid) else None

    def _start_sshd(self, host):
        config = self._path("ssh", "sshd_%s.conf" % host)
        text = self._sshd_config(host)
        try:
            with open(config) as handle:
                same = handle.read() == text
        except OSError:
            same = False
        pid = self._sshd_pid(host)
        if pid and same and _alive(pid):
            return
        if pid:
            _kill([pid])
        _write(config, text)
        self.run(host, [SSHD, "-f", config, "-E", self._path("logs", "sshd-%s.log" % host)])

    def _wait_ssh(self, host, timeout=10.0):
        deadline = time.monotonic() + timeout
        address = self.mgmt_address(host)
        while True:
            try:
                with socket.create_connection((address, 22), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError("sshd of %s (%s) did not answer within %ss; see %s" % (
                    host, address, timeout, self._path("logs", "sshd-%s.log" % host)))
            time.sleep(0.05)

    def _write_ansible_files(self):
        hosts = {}
        for host in NAT_HOSTS:
            impl = self.implementation(host)
            hostvars = {"ansible_host": self.mgmt_address(host),
                        "nfstate_implementation": "nftables" if impl == "nftables" else "iptables"}
            if impl != "nftables":
                hostvars["nfstate_iptables_backend"] = impl.split("-", 1)[1]
            inside, outside = self.devices[host]
            hostvars["nfstate_interfaces"] = {"inside": inside, "outside": outside}
            hosts[host] = hostvars
        group_vars = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": self.private_key,
            "ansible_python_interpreter": HOST_PYTHON,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                       "-o IdentitiesOnly=yes -o LogLevel=ERROR -o ConnectTimeout=5",
            "nfstate_addresses": [dict(a) for a in SERVICE_ADDRESSES],
            "nfstate_lab_name": self.name,
            # The NAT hosts share this machine's file system: each lab keeps its hosts' files apart.
            "nfstate_remote_dir": os.path.join(self.workdir, "hosts"),
        }
        inventory = {"all": {"children": {"nfstate_nat": {"hosts": hosts, "vars": group_vars}}}}
        _write(self.inventory_path, "# nfstate lab %s (written by lab/nfstate_lab.py up)\n%s\n" % (
            self.name, _yaml(inventory)), 0o644)
        _write(self.ansible_cfg_path, ansible_cfg(self.inventory_path, self.control_path_dir), 0o644)
        if self.use_checkout:
            link = self._path("collections", "ansible_collections", "nfstate", "migration")
            os.makedirs(os.path.dirname(link), exist_ok=True)
            checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            if os.path.realpath(link) != checkout:
                if os.path.lexists(link):
                    os.unlink(link)
                os.symlink(checkout, link)
        _write(self._path("env.sh"), "".join(
            "export %s=%s\n" % (key, _shell_quote(value)) for key, value in sorted(self.env_overrides().items())),
            0o644)

    # ---- moving the service -----------------------------------------------------------------
    def move_addresses(self, src_host="nat-a", dst_host="nat-b"):
        """Delete the service addresses on src_host, add them on dst_host, announce them there
        (unsolicited ARP for IPv4, unsolicited neighbour advertisement for IPv6). Returns timings
        in ms and what was announced."""
        if {src_host, dst_host} != set(NAT_HOSTS):
            raise LabError("move between %s only" % " and ".join(NAT_HOSTS))
        started = time.monotonic()
        present = _addresses(self.ns(src_host))
        self._ip_batch(src_host, [
            "addr del %s dev %s" % (a["address"], self._service_device(src_host, a["role"]))
            for a in SERVICE_ADDRESSES if a["address"] in present.get(self._service_device(src_host, a["role"]), ())])
        deleted = time.monotonic()
        self._ip_batch(dst_host, [
            "addr replace %s dev %s%s" % (a["address"], self._service_device(dst_host, a["role"]),
                                          " nodad" if ":" in a["address"] else "")
            for a in SERVICE_ADDRESSES])
        added = time.monotonic()
        announcements = self.announce(dst_host)
        done = time.monotonic()
        return {"deleted_ms": round((deleted - started) * 1000, 1), "added_ms": round((added - deleted) * 1000, 1),
                "announced_ms": round((done - added) * 1000, 1), "total_ms": round((done - started) * 1000, 1),
                "announcements": announcements}

    def announce(self, host):
        """Announce the service addresses from host, all at once; returns the commands run."""
        procs = []
        v6 = []
        for a in SERVICE_ADDRESSES:
            dev = self._service_device(host, a["role"])
            address = a["address"].split("/", maxsplit=1)[0]
            if ":" in address:
                v6 += [dev, address]
            else:
                procs.append(self.popen(host, _arping_argv(dev, address), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        procs.append(self.popen(host, [sys.executable, "-S", os.path.abspath(__file__), "_announce-na"] + v6,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        report = []
        for proc in procs:
            out, err = proc.communicate(timeout=10)
            argv = proc.args[4:]
            # arping exits 1 when nobody answers, which an announcement never expects.
            ok = proc.returncode == 0 or (argv[0] == "arping" and proc.returncode == 1 and not err.strip())
            if not ok:
                raise LabError("announcement failed (%d): %s\n%s%s" % (proc.returncode, " ".join(argv), out, err))
            report.append(" ".join(argv))
        return report

    # ---- status / down ------------------------------------------------------------------------
    def status(self):
        existing = _netns_list()
        root = _links()
        built = self._load_state().get("built", False)
        status = {
            "name": self.name, "workdir": self.workdir, "built": built and all(self.ns(r) in existing for r in ROLES),
            "namespaces": {role: {"name": self.ns(role), "exists": self.ns(role) in existing} for role in ROLES},
            "root_veths": {host: {"name": self.root_veth(host), "exists": self.root_veth(host) in root}
                           for host in NAT_HOSTS},
            "source_impl": self.source_impl, "target_impl": self.target_impl, "target_rules": self.target_rules,
            "devices": {host: {"inside": d[0], "outside": d[1]} for host, d in self.devices.items()},
            "inventory": self.inventory_path, "ansible_cfg": self.ansible_cfg_path,
        }
        if self.mgmt_block is not None:
            status["mgmt"] = {host: {"controller": self.mgmt_address(host, "root"), "host": self.mgmt_address(host)}
                              for host in NAT_HOSTS}
        status["sshd"] = {host: self._sshd_pid(host) for host in NAT_HOSTS}
        if all(self.ns(host) in existing for host in NAT_HOSTS):
            status["service_on"] = self.service_holder()
        return status

    def _ssh_masters_exit(self):
        """End the SSH connection-sharing masters of this lab's control path directory: a master
        that outlives its namespace hangs the next run that reuses its socket."""
        ended = []
        try:
            sockets = [os.path.join(self.control_path_dir, f) for f in os.listdir(self.control_path_dir)]
        except OSError:
            return ended
        for path in sockets:
            _cmd(["ssh", "-o", "ControlPath=%s" % path, "-O", "exit", "nfstate-lab-%s" % self.name],
                 check=False, timeout=5)
            ended.append(path)
        return ended

    def down(self):
        """Remove everything of this lab, also a half-built one; returns {"seconds": ...}."""
        started = time.monotonic()
        pids = []
        for filename in os.listdir(self._path("pids")) if os.path.isdir(self._path("pids")) else []:
            pid = _read_pid(self._path("pids", filename))
            if pid and _alive(pid) and self._process_is_ours(pid):
                pids.append(pid)
        self._ssh_masters_exit()
        _kill(pids)
        existing = _netns_list()
        rest = []
        for role in ROLES:
            if self.ns(role) in existing:
                res = _cmd(["ip", "netns", "pids", self.ns(role)], check=False)
                rest += [int(p) for p in res.stdout.split()]
        _kill(rest)
        for role in ROLES:
            if self.ns(role) in existing:
                _cmd(["ip", "netns", "del", self.ns(role)], check=False)
        root = _links()
        for host in NAT_HOSTS:
            if self.root_veth(host) in root:
                _cmd(["ip", "link", "del", self.root_veth(host)], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        left = [self.ns(r) for r in ROLES if self.ns(r) in _netns_list()]
        left += [self.root_veth(h) for h in NAT_HOSTS if self.root_veth(h) in _links()]
        if left:
            raise LabError("lab %s: could not remove %s" % (self.name, ", ".join(left)))
        return {"seconds": round(time.monotonic() - started, 3)}

    # ---- context manager: always torn down ----------------------------------------------------
    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()
        return False


def _device_pair(value):
    if isinstance(value, str):
        value = value.split(",")
    value = tuple(v.strip() for v in value)
    if len(value) != 2 or not all(re.match(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$", v) for v in value) \
            or value[0] == value[1] or "mgmt0" in value or "lo" in value:
        raise LabError("devices %r: two different names (inside,outside), at most 15 characters" % (value,))
    return value


def _shell_quote(value):
    return "'%s'" % value.replace("'", "'\\''")


def main(argv=None):
    parser = argparse.ArgumentParser(description="A lab of network namespaces for nfstate.migration.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build or converge a lab")
    up.add_argument("name")
    up.add_argument("--source-impl", choices=IMPLEMENTATIONS)
    up.add_argument("--target-impl", choices=IMPLEMENTATIONS)
    up.add_argument("--target-rules", choices=("yes", "no"))
    up.add_argument("--source-devices", help="inside,outside on nat-a (default in0,out0)")
    up.add_argument("--target-devices", help="inside,outside on nat-b (default in0,out0)")
    for command, text in (("down", "remove a lab entirely"), ("status", "print a lab's state as JSON"),
                          ("env", "print the shell exports for ansible against a lab")):
        sub.add_parser(command, help=text).add_argument("name")
    move = sub.add_parser("move-addresses", help="move the service addresses and announce them")
    move.add_argument("name")
    move.add_argument("--from", dest="src", default="nat-a", choices=NAT_HOSTS)
    move.add_argument("--to", dest="dst", default="nat-b", choices=NAT_HOSTS)
    na = sub.add_parser("_announce-na")  # runs inside a namespace: DEV ADDR [DEV ADDR ...]
    na.add_argument("pairs", nargs="*")
    args = parser.parse_args(argv)

    if args.command == "_announce-na":
        for dev, address in zip(args.pairs[0::2], args.pairs[1::2]):
            send_unsolicited_na(dev, [address])
        return 0
    try:
        if args.command == "up":
            lab = Lab(args.name, source_impl=args.source_impl, target_impl=args.target_impl,
                      target_rules=None if args.target_rules is None else args.target_rules == "yes",
                      source_devices=args.source_devices, target_devices=args.target_devices)
            result = lab.up()
            result.update(lab.status())
        elif args.command == "down":
            result = Lab(args.name).down()
        elif args.command == "status":
            result = Lab(args.name).status()
        elif args.command == "env":
            sys.stdout.write("".join("export %s=%s\n" % (k, _shell_quote(v))
                                     for k, v in sorted(Lab(args.name).env_overrides().items())))
            return 0
        else:
            result = Lab(args.name).move_addresses(args.src, args.dst)
    except LabError as err:
        sys.stderr.write("nfstate_lab: %s\n" % err)
        return 1
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
