"""The ctnetlink driver against the real kernel, inside network namespaces made here (labs.py, through conftest.py)."""

import errno
import json
import os
import shutil
import socket

import pytest

import ansible_collections.nfstate.migration.plugins.module_utils.conntrack as conntrack_module
from labs import ECHO_SERVER, HOLDING_CLIENT, NAT_CHAINS, PYTHON, driver, in_ns, load_rules, read_line
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_NAT_MASK,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    ConntrackEntry,
    FlowTuple,
    translation,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "nft", "conntrack")), reason="needs ip, nft, conntrack"),
]

A4, A6 = socket.AF_INET, socket.AF_INET6
SEEN = IPS_ASSURED | IPS_SEEN_REPLY | IPS_CONFIRMED
LIBERAL = conntrack_module.IP_CT_TCP_FLAG_BE_LIBERAL

# Labels are kept only once the namespace uses them: a rule that sets one (and never matches).
LABEL_RULE = """
table inet labels {
    chain pre { type filter hook prerouting priority 0; ip daddr 203.0.113.254 ct label set 1; }
}
"""


@pytest.fixture(scope="module")
def nat_ns(module_netns_lab):
    """One NAT namespace with IPv4 and IPv6 nat chains and a label rule, for synthetic entries."""
    ns = module_netns_lab.add("nat")
    load_rules(ns, NAT_CHAINS + LABEL_RULE)
    return ns


@pytest.fixture
def table(nat_ns):
    in_ns(nat_ns, "conntrack", "-F")
    return nat_ns


def tcp(family, orig, reply, status=SEEN | IPS_SRC_NAT, **extra):
    fields = dict(tcp_state=3, tcp_wscale_orig=7, tcp_wscale_reply=9, tcp_flags_orig=0x23, tcp_flags_reply=0x33)
    fields.update(extra)
    return ConntrackEntry(FlowTuple(family, 6, *orig), FlowTuple(family, 6, *reply), status, 3600, **fields)


# Entries as a source NAT would have dumped them: the reply tuple is the translated one.
KINDS = {
    "tcp4-snat": tcp(A4, ("192.0.2.2", "198.51.100.2", 40000, 80), ("198.51.100.2", "198.51.100.1", 80, 20001)),
    "udp4-snat": ConntrackEntry(FlowTuple(A4, 17, "192.0.2.2", "198.51.100.2", 5353, 53),
                                FlowTuple(A4, 17, "198.51.100.2", "198.51.100.1", 53, 20002), SEEN | IPS_SRC_NAT, 170,
                                mark=0x2a),
    "icmp4-snat": ConntrackEntry(FlowTuple(A4, 1, "192.0.2.2", "198.51.100.2", 1234, 0, 8, 0),
                                 FlowTuple(A4, 1, "198.51.100.2", "198.51.100.1", 20003, 0, 0, 0), SEEN | IPS_SRC_NAT, 29),
    "udp4-dnat": ConntrackEntry(FlowTuple(A4, 17, "198.51.100.2", "198.51.100.1", 5555, 8080),
                                FlowTuple(A4, 17, "192.0.2.2", "198.51.100.2", 80, 5555), SEEN | IPS_DST_NAT, 170, zone=7),
    "tcp4-dnat": tcp(A4, ("198.51.100.2", "198.51.100.1", 41000, 8443), ("192.0.2.2", "198.51.100.2", 443, 41000),
                     status=SEEN | IPS_DST_NAT, tcp_state=5, mark=7, zone=9),
    "icmp4-dnat": ConntrackEntry(FlowTuple(A4, 1, "198.51.100.2", "198.51.100.1", 77, 0, 8, 0),
                                 FlowTuple(A4, 1, "192.0.2.2", "198.51.100.2", 77, 0, 0, 0), SEEN | IPS_DST_NAT, 29),
    "tcp4-both": tcp(A4, ("192.0.2.2", "198.51.100.1", 40001, 8080), ("192.0.2.3", "198.51.100.1", 80, 20004),
                     status=SEEN | IPS_SRC_NAT | IPS_DST_NAT, labels=bytes(range(16))),
    "tcp6-snat": tcp(A6, ("2001:db8:1::2", "2001:db8:2::2", 40000, 80), ("2001:db8:2::2", "2001:db8:2::1", 80, 20001),
                     tcp_state=7, tcp_wscale_orig=2, tcp_wscale_reply=14),
    "udp6-snat": ConntrackEntry(FlowTuple(A6, 17, "2001:db8:1::2", "2001:db8:2::2", 5353, 53),
                                FlowTuple(A6, 17, "2001:db8:2::2", "2001:db8:2::1", 53, 20002), SEEN | IPS_SRC_NAT, 170),
    "icmp6-snat": ConntrackEntry(FlowTuple(A6, 58, "2001:db8:1::2", "2001:db8:2::2", 99, 0, 128, 0),
                                 FlowTuple(A6, 58, "2001:db8:2::2", "2001:db8:2::1", 20005, 0, 129, 0), SEEN | IPS_SRC_NAT, 29),
    "udp6-dnat": ConntrackEntry(FlowTuple(A6, 17, "2001:db8:2::2", "2001:db8:2::1", 5555, 8080),
                                FlowTuple(A6, 17, "2001:db8:1::2", "2001:db8:2::2", 80, 5555), SEEN | IPS_DST_NAT, 170,
                                mark=0xffffffff, zone=3, labels=b"\x80" + b"\x00" * 14 + b"\x01"),
    "tcp6-both": tcp(A6, ("2001:db8:1::2", "2001:db8:2::1", 40001, 8080), ("2001:db8:1::3", "2001:db8:2::1", 80, 20006),
                     status=SEEN | IPS_SRC_NAT | IPS_DST_NAT),
}


def by_orig(entries):
    return {(e.orig, e.zone): e for e in entries}


def expected_status(entry):
    nat_src, nat_dst = translation(entry)
    return SEEN | (IPS_SRC_NAT if nat_src else 0) | (IPS_DST_NAT if nat_dst else 0)


@pytest.mark.parametrize("liberal", [True, False])
def test_round_trip_create_dump_all_kinds(table, liberal):
    created = list(KINDS.values())
    assert driver(table, "create", created, liberal=liberal) == []
    dumped = by_orig(driver(table, "dump"))
    assert set(dumped) == set(by_orig(created))
    lib = LIBERAL if liberal else 0
    for entry in created:
        got = dumped[(entry.orig, entry.zone)]
        # The kernel computed the translated reply tuple from our plain inverse and NAT binding.
        assert got.reply == entry.reply, entry
        assert got.status & (SEEN | IPS_NAT_MASK) == expected_status(entry), entry
        assert entry.timeout - 5 <= got.timeout <= entry.timeout
        assert (got.mark, got.zone, got.labels) == (entry.mark, entry.zone, entry.labels)
        assert (got.tcp_state, got.tcp_wscale_orig, got.tcp_wscale_reply) == \
            (entry.tcp_state, entry.tcp_wscale_orig, entry.tcp_wscale_reply)
        if entry.orig.proto == 6:
            assert (got.tcp_flags_orig, got.tcp_flags_reply) == (entry.tcp_flags_orig | lib, entry.tcp_flags_reply | lib)
        # Dumped again and re-created, it gives the same entry back: the round trip is closed.
        assert got._replace(timeout=0) == entry._replace(
            status=got.status, timeout=0, tcp_flags_orig=got.tcp_flags_orig, tcp_flags_reply=got.tcp_flags_reply)
    assert driver(table, "conntrack_count") == len(created)


def test_dump_by_family(table):
    assert driver(table, "create", list(KINDS.values())) == []
    v6 = driver(table, "dump", family=A6)
    assert v6 and all(e.orig.family == A6 for e in v6)
    assert len(v6) == sum(1 for e in KINDS.values() if e.orig.family == A6)


def test_existing_entries_are_eexist_mapped_to_their_entry(table):
    first = [KINDS["tcp4-snat"], KINDS["udp6-dnat"]]
    assert driver(table, "create", first) == []
    moved_binding = KINDS["tcp4-snat"]._replace(reply=KINDS["tcp4-snat"].reply._replace(dport=20999))
    batch = [KINDS["icmp4-snat"], KINDS["tcp4-snat"], KINDS["udp4-snat"], KINDS["udp6-dnat"], moved_binding, KINDS["tcp6-snat"]]
    for options in ({"batch_size": 2}, {"ack_each": True}):
        in_ns(table, "conntrack", "-F")
        assert driver(table, "create", first) == []
        failures = driver(table, "create", batch, options=options)
        assert failures == [(KINDS["tcp4-snat"], errno.EEXIST), (KINDS["udp6-dnat"], errno.EEXIST),
                            (moved_binding, errno.EEXIST)]
        assert len(driver(table, "dump")) == 5


def test_translated_tuple_taken_by_another_entry_is_refused(table):
    taken = KINDS["tcp4-snat"]
    # Another inside host mapped to the very same outside address and port.
    rival = taken._replace(orig=taken.orig._replace(src="192.0.2.9"))
    assert driver(table, "create", [taken]) == []
    assert driver(table, "create", [rival]) == [(rival, errno.EEXIST)]


def test_errors_of_every_kind_map_back_across_batches(table):
    good = [KINDS["udp4-snat"], KINDS["tcp6-snat"], KINDS["icmp4-dnat"]]
    bad_state = KINDS["tcp4-snat"]._replace(tcp_state=99)
    bad_family = KINDS["udp4-snat"]._replace(orig=KINDS["udp4-snat"].orig._replace(family=99))
    batch = [good[0], bad_state, good[1], bad_family, good[2]]
    failures = driver(table, "create", batch, options={"batch_size": 2})
    assert failures == [(bad_family, errno.EINVAL), (bad_state, errno.ERANGE)]
    assert set(by_orig(driver(table, "dump"))) == set(by_orig(good))

    missing = KINDS["tcp4-both"]
    failures = driver(table, "delete", [good[0], missing, good[2]], options={"batch_size": 1})
    assert failures == [(missing, errno.ENOENT)]
    assert list(by_orig(driver(table, "dump"))) == [(good[1].orig, 0)]


def test_update_raises_timeouts_and_keeps_the_binding(table):
    short = [KINDS[k]._replace(timeout=20) for k in ("udp4-snat", "icmp4-snat", "tcp4-dnat", "udp6-dnat", "tcp6-both")]
    assert driver(table, "create", short) == []
    created = by_orig(driver(table, "dump"))
    # What a later snapshot says of the same sessions: refreshed by traffic, another mark and labels,
    # and (ignored: NAT is given on creation only) a reply tuple naming another binding.
    refreshed = [e._replace(timeout=500 + n, mark=(e.mark or 0) ^ 1, reply=e.reply._replace(dst=e.reply.src))
                 for n, e in enumerate(short)]
    refreshed[3] = refreshed[3]._replace(labels=b"\x00" * 15 + b"\x02")
    missing = KINDS["tcp4-snat"]._replace(timeout=500)
    failures = driver(table, "update", refreshed[:2] + [missing] + refreshed[2:], options={"batch_size": 2})
    assert failures == [(missing, errno.ENOENT)]  # never created by an update

    dumped = by_orig(driver(table, "dump"))
    assert set(dumped) == set(created)
    for before, wanted in zip(short, refreshed):
        got = dumped[(before.orig, before.zone)]
        was = created[(before.orig, before.zone)]
        assert wanted.timeout - 5 <= got.timeout <= wanted.timeout, before
        assert got.reply == before.reply == was.reply, before  # the binding stays
        assert got.status & IPS_NAT_MASK == was.status & IPS_NAT_MASK
        assert (got.mark, got.labels) == (wanted.mark, wanted.labels), before
        if before.orig.proto == 6:
            # liberal by default, as on creation: the flags are written whole and keep the bit
            assert (got.tcp_state, got.tcp_wscale_orig, got.tcp_wscale_reply) == \
                (before.tcp_state, before.tcp_wscale_orig, before.tcp_wscale_reply)
            assert got.tcp_flags_orig == before.tcp_flags_orig | LIBERAL
    assert driver(table, "conntrack_count") == len(short)


def test_update_can_lower_a_timeout_and_set_a_tcp_state(table):
    entry = KINDS["tcp4-snat"]._replace(tcp_state=2, timeout=3600)  # syn-recv
    assert driver(table, "create", [entry]) == []
    assert driver(table, "update", [entry._replace(tcp_state=3, timeout=90)], liberal=False) == []
    [got] = driver(table, "dump")
    assert 85 <= got.timeout <= 90 and got.tcp_state == 3
    assert got.tcp_flags_orig == entry.tcp_flags_orig  # liberal=False: the bit is cleared


def test_table_limits_are_readable_in_a_namespace(table):
    assert driver(table, "conntrack_count") == 0
    assert driver(table, "conntrack_max") > 0
    # A full table answers ENOMEM like any refusal: mapped to its entry with its meaning.
    assert "table is full" in conntrack_module.strerror(errno.ENOMEM)


# -- real traffic -------------------------------------------------------------------------------

# Waits for one TCP segment to the given port on the given device; prints its source address/port.
SNIFFER = """
import json, socket, struct, sys
dev, port = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
sock.bind((dev, 0)); sock.settimeout(5)
print("ready", flush=True)
while True:
    pkt = sock.recv(2048)
    ihl = (pkt[0] & 15) * 4
    if pkt[9] == 6 and struct.unpack_from(">H", pkt, ihl + 2)[0] == port:
        print(json.dumps([socket.inet_ntoa(pkt[12:16]), struct.unpack_from(">H", pkt, ihl)[0]]), flush=True)
        break
"""

# Sends one mid-stream TCP segment (ACK, no SYN) of the given connection, as the client would.
RAW_SEGMENT = """
import socket, struct, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def checksum(data):
    data += b"\\0" * (len(data) % 2)
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xffff); total += total >> 16
    return ~total & 0xffff
payload = b"again"
header = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, 0x18, 500, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header) + len(payload))
header = header[:16] + struct.pack("!H", checksum(pseudo + header + payload)) + header[18:]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
sock.sendto(header + payload, (dst, 0))
"""


def sniff(spaces, ns, dev, port, send):
    sniffer = spaces.start(ns, SNIFFER, dev, str(port))
    assert read_line(sniffer) == "ready"
    send()
    return tuple(json.loads(read_line(sniffer)))


def test_recreated_snat_entry_translates_real_traffic(netns_lab, nat_site):
    spaces = netns_lab
    client1, nat1, server1 = nat_site("1", "20000-20099")
    # The target NAT hands out other ports: a packet it did not know would leave on 300xx.
    client2, nat2, server2 = nat_site("2", "30000-30099")

    server = spaces.start(server1, ECHO_SERVER, "198.51.100.2", "8080")
    assert read_line(server) == "ready"
    own = spaces.start(nat1, ECHO_SERVER, "192.0.2.1", "2222")  # a service of the NAT host itself
    assert read_line(own) == "ready"
    flow = spaces.start(client1, HOLDING_CLIENT, "198.51.100.2", "8080")
    sport = int(read_line(flow))
    host_conn = spaces.start(client1, HOLDING_CLIENT, "192.0.2.1", "2222")
    read_line(host_conn)

    sessions = driver(nat1, "dump")
    everything = driver(nat1, "dump", translated_only=False)
    [entry] = sessions  # the host's own connection (to port 2222) is not a NAT session
    assert any(e.orig.dport == 2222 and not e.status & IPS_NAT_MASK for e in everything)
    assert entry.orig == FlowTuple(A4, 6, "192.0.2.2", "198.51.100.2", sport, 8080)
    assert entry.reply.dst == "198.51.100.1" and 20000 <= entry.reply.dport <= 20099
    assert entry.tcp_state == 3 and entry.status & IPS_SRC_NAT

    assert driver(nat2, "create", sessions) == []
    [recreated] = driver(nat2, "dump")
    assert recreated.reply == entry.reply
    assert (recreated.tcp_wscale_orig, recreated.tcp_wscale_reply) == (entry.tcp_wscale_orig, entry.tcp_wscale_reply)

    def send(port):
        return lambda: in_ns(client2, PYTHON, "-c", RAW_SEGMENT, "192.0.2.2", str(port), "198.51.100.2", "8080")

    assert sniff(spaces, server2, "eth0", 8080, send(sport)) == ("198.51.100.1", entry.reply.dport)
    # Control: a connection the target was not given gets the target's own mapping.
    other = sniff(spaces, server2, "eth0", 8080, send(sport + 1 if sport < 65535 else sport - 1))
    assert other[0] == "198.51.100.1" and 30000 <= other[1] <= 30099
