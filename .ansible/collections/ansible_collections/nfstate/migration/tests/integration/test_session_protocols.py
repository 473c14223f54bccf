"""Sessions of every protocol the kernel tracks, moved between two NAT implementations and back.

Real packets of TCP, ICMP, UDP, UDP-Lite, GRE (plain and enhanced, with a key), ESP (IPv4 and
IPv6), AH and SCTP go from a client through an iptables-legacy NAT. Its sessions are gathered
(driver dump and session_model), validated (the YANG validator and the strict checker), deleted,
and re-created on a second site whose NAT is nftables and would translate to another address.
Gathered there again they give the same document, and the same packets sent on the second site
keep the first site's translation. Then the same way back. SCTP is listed with its reason, never
emitted. (TCP entries are re-created without the be-liberal flag the driver adds by default, so
that the documents are equal to the bit.)
"""

import json
import os
import shutil
import socket
import struct

import pytest

from labs import PYTHON, add_ipv6, driver, in_ns, load_rules, nat_topology, read_line
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import IPS_FIXED_TIMEOUT
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import new_document, set_mapping_entries
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    entries_to_mappings,
    mappings_to_entries,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "nft", "iptables-legacy", "ip6tables-legacy")),
                       reason="needs ip, nft, iptables-legacy, ip6tables-legacy"),
]

# One packet of a protocol from the client, by a raw socket (the kernel adds the IP header).
SEND = """
import socket, struct, sys
proto, src, dst, payload = int(sys.argv[1]), sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
sock = socket.socket(family, socket.SOCK_RAW, proto)
sock.bind((src, 0))
sock.sendto(payload, (dst, 0))
"""

# Prints source address and the first 8 bytes of the payload of the first packet of a protocol
# (IPv4, or IPv6 without extension headers).
SNIFFER = """
import json, socket, sys
dev, proto, v6 = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "6"
sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86dd if v6 else 0x0800))
sock.bind((dev, 0)); sock.settimeout(5)
print("ready", flush=True)
while True:
    pkt = sock.recv(2048)
    if v6 and pkt[6] == proto:
        print(json.dumps([socket.inet_ntop(socket.AF_INET6, pkt[8:24]), pkt[40:48].hex()]), flush=True)
        break
    ihl = (pkt[0] & 15) * 4
    if not v6 and pkt[9] == proto:
        print(json.dumps([socket.inet_ntoa(pkt[12:16]), pkt[ihl:ihl + 8].hex()]), flush=True)
        break
"""


def _checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data + b"\0" * (len(data) % 2)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_request(ident, data):
    """An ICMP echo request with its checksum."""
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + data
    return (body[:2] + struct.pack("!H", _checksum(body)) + body[4:]).hex()


def _udplite(sport, dport, data):
    """A UDP-Lite datagram whose checksum covers its header (RFC 3828)."""
    header = struct.pack("!HHHH", sport, dport, 8, 0)
    pseudo = socket.inet_aton("192.0.2.2") + socket.inet_aton("198.51.100.2") + struct.pack("!BBH", 0, 136, 8 + len(data))
    return (header[:6] + struct.pack("!H", _checksum(pseudo + header) or 0xFFFF) + data).hex()


# (name, protocol, payload). The NAT namespaces do not verify checksums (nf_conntrack_checksum=0):
# this kernel's UDP-Lite tracker checks them with UDP's pseudo-header and refuses correct ones,
# and the SCTP INIT below leaves its CRC32c at 0.
PACKETS = [
    ("tcp", 6, "0f9f138700000001000000005002ffff00000000"),  # a SYN, 3999 -> 4999
    ("icmp", 1, _echo_request(0x777, b"ping")),
    ("udp", 17, "0fa0138800100000" + "68656c6c6f212121"),  # 4000 -> 5000, no checksum (IPv4 allows it)
    ("udplite", 136, _udplite(4001, 5001, b"hello!!!")),  # 4001 -> 5001, coverage: the header
    ("gre", 47, "00000800" + "4500001400000000400100000000000000000000"),  # plain GRE (version 0)
    ("gre-pptp", 47, "2001880b00001234"),  # enhanced GRE (version 1, PPTP), call ID 0x1234
    ("esp", 50, "0000100100000001" + "00" * 16),  # SPI 0x1001, sequence 1
    ("ah", 51, "3201000000002002" + "0000000100" + "00" * 11),  # SPI 0x2002
    ("esp6", 50, "0000400400000001" + "00" * 16),  # over IPv6: the generic tracker too
]
V6 = ("esp6",)
# The source address a packet leaves with, per family: the first site's translation, the second's own.
SOURCE_SNAT = {4: "198.51.100.1", 6: "2001:db8:2::1"}
TARGET_SNAT = {4: "198.51.100.3", 6: "2001:db8:2::3"}
# An SCTP INIT (verification tag 0), which the kernel tracks with its own state machine.
SCTP_INIT = "0fa2138a000000000000000001000014" + "0000abcd0001000000010001" + "00000001"

SOURCE_RULES = [  # iptables-legacy: every protocol leaves as 198.51.100.1 (2001:db8:2::1)
    ["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-s", "192.0.2.0/24", "-j", "SNAT",
     "--to-source", "198.51.100.1"],
    ["ip6tables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "out0", "-s", "2001:db8:1::/64", "-j", "SNAT",
     "--to-source", "2001:db8:2::1"],
]
# nftables: a packet it does not know leaves as 198.51.100.3, so the first site's translation
# can only come from the re-created session.
TARGET_RULES = """
table ip nat {
    chain post {
        type nat hook postrouting priority 100;
        oifname "out0" ip saddr 192.0.2.0/24 snat to 198.51.100.3
    }
}
table ip6 nat {
    chain post {
        type nat hook postrouting priority 100;
        oifname "out0" ip6 saddr 2001:db8:1::/64 snat to 2001:db8:2::3
    }
}
"""


def site(spaces, tag):
    """labs.nat_topology in IPv4 and IPv6, with a second outside address per family for the target's
    own translation, and no checksum verification (see PACKETS)."""
    client, nat, server = nat_topology(spaces, tag)
    add_ipv6((client, nat, server))
    in_ns(nat, "ip", "addr", "add", "198.51.100.3/24", "dev", "out0")
    in_ns(nat, "ip", "addr", "add", "2001:db8:2::3/64", "dev", "out0", "nodad")
    in_ns(nat, "sysctl", "-qw", "net.netfilter.nf_conntrack_checksum=0")
    return client, nat, server


def send(client, proto, payload, family=4):
    src, dst = ("2001:db8:1::2", "2001:db8:2::2") if family == 6 else ("192.0.2.2", "198.51.100.2")
    in_ns(client, PYTHON, "-c", SEND, str(proto), src, dst, payload)


def sniffed(spaces, server, client, proto, payload, family=4):
    """(source address, first 8 payload bytes) of the packet as it reaches the server."""
    sniffer = spaces.start(server, SNIFFER, "eth0", str(proto), str(family))
    assert read_line(sniffer) == "ready"
    send(client, proto, payload, family)
    return json.loads(read_line(sniffer))


def family_of(name):
    return 6 if name in V6 else 4


def gathered(nat):
    """The NAT's sessions as the gather builds them: (mapping entries, listed unsupported)."""
    unsupported = []
    mappings = entries_to_mappings(driver(nat, "dump"), unsupported=unsupported)
    return mappings, unsupported


def comparable(mappings):
    """The mapping entries without what differs between two reads: order, index, lifetime."""
    return sorted(json.dumps(dict((k, v) for k, v in m.items() if k not in ("index", "lifetime")), sort_keys=True)
                  for m in mappings)


@pytest.fixture
def sites(netns_lab):
    source = site(netns_lab, "ps")
    target = site(netns_lab, "pt")
    for rule in SOURCE_RULES:
        in_ns(source[1], *rule)
    load_rules(target[1], TARGET_RULES)
    return netns_lab, source, target


def test_every_protocol_moves_between_iptables_legacy_and_nftables_and_keeps_its_translation(sites):
    from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import validate

    spaces, (client_a, nat_a, server_a), (client_b, nat_b, server_b) = sites
    for name, proto, payload in PACKETS:
        assert sniffed(spaces, server_a, client_a, proto, payload, family_of(name))[0] == SOURCE_SNAT[family_of(name)]
    send(client_a, 132, SCTP_INIT)

    mappings, unsupported = gathered(nat_a)
    protocols = sorted(m["transport-protocol"] for m in mappings)
    assert protocols == [1, 6, 17, 47, 47, 50, 50, 51, 136]
    assert len(unsupported) == 1 and unsupported[0].startswith("sctp 192.0.2.2:4002 -> 198.51.100.2:5002")
    assert "association state" in unsupported[0]
    by_proto = dict((m["transport-protocol"], m) for m in mappings
                    if m["transport-protocol"] != 47 and m["internal-src-address"] != "2001:db8:1::2/128")
    assert by_proto[50]["external-src-address"] == "198.51.100.1/32"
    assert not [k for k in by_proto[50] if k.endswith("-port")]
    [esp6] = [m for m in mappings if m["internal-src-address"] == "2001:db8:1::2/128"]
    assert (esp6["transport-protocol"], esp6["external-src-address"]) == (50, "2001:db8:2::1/128")
    assert by_proto[136]["internal-src-port"] == {"start-port-number": 4001}
    keys = sorted(m["nfstate-nat:gre"]["destination-key"] for m in mappings if m["transport-protocol"] == 47)
    assert keys == [0, 0x1234]

    document = new_document("edge-nat", taken_at="2026-12-01T00:00:00Z", source_host="nat-a", kind="full")
    set_mapping_entries(document, mappings)
    assert validate(document) == []
    entries = mappings_to_entries(mappings)  # the strict checker of the hosts

    # Moved: deleted on the source, re-created on the target.
    assert driver(nat_a, "delete", entries) == []
    assert [e for e in driver(nat_a, "dump") if e.orig.proto != 132] == []
    assert driver(nat_b, "create", entries, liberal=False) == []
    again, unsupported_b = gathered(nat_b)
    assert unsupported_b == []
    assert comparable(again) == comparable(mappings)

    # The same packets on the target leave with the source's translation, not the target's own.
    for name, proto, payload in PACKETS:
        address, head = sniffed(spaces, server_b, client_b, proto, payload, family_of(name))
        assert address == SOURCE_SNAT[family_of(name)], name
        if proto in (6, 17, 136):
            assert head[:8] == payload[:8], name  # the ports as the source had them
    # GRE entries made through ctnetlink outlive their first packets (the driver fixed their timeout).
    gre = [e for e in driver(nat_b, "dump") if e.orig.proto == 47]
    assert len(gre) == 2 and all(e.reply.dst == "198.51.100.1" and e.status & IPS_FIXED_TIMEOUT for e in gre)
    # Control: a session the target was not given gets the target's own mapping.
    assert sniffed(spaces, server_b, client_b, 99, "00" * 16)[0] == TARGET_SNAT[4]
    assert sniffed(spaces, server_b, client_b, 99, "00" * 16, 6)[0] == TARGET_SNAT[6]

    # And back, from nftables to iptables-legacy, whose own rule now translates to 198.51.100.3 too.
    in_ns(nat_a, "iptables-legacy", "-t", "nat", "-R", "POSTROUTING", "1", "-o", "out0", "-s", "192.0.2.0/24",
          "-j", "SNAT", "--to-source", TARGET_SNAT[4])
    in_ns(nat_a, "ip6tables-legacy", "-t", "nat", "-R", "POSTROUTING", "1", "-o", "out0", "-s", "2001:db8:1::/64",
          "-j", "SNAT", "--to-source", TARGET_SNAT[6])
    mappings, _unsupported = gathered(nat_b)
    carried = [m for m in mappings if m["transport-protocol"] != 99]  # the controls are the target's own
    assert sorted(m["transport-protocol"] for m in carried) == protocols
    entries = mappings_to_entries(carried)
    assert driver(nat_b, "delete", entries) == []
    assert driver(nat_a, "create", entries, liberal=False) == []
    back, _unsupported = gathered(nat_a)
    assert comparable(back) == comparable(carried)
    for name, proto, payload in PACKETS:
        assert sniffed(spaces, server_a, client_a, proto, payload, family_of(name))[0] == SOURCE_SNAT[family_of(name)], name
    assert sniffed(spaces, server_a, client_a, 99, "00" * 16)[0] == TARGET_SNAT[4]
