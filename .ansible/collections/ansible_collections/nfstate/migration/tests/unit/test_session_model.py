"""The mapping between kernel conntrack entries and ietf-nat mapping entries, both ways."""

import copy
import os
import time

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    ConntrackEntry,
    FlowTuple,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_EXPECTED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    TCP_STATES,
    describe,
    translation,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_xml import parse_conntrack_xml
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    ModelError,
    entries_to_mappings,
    entry_to_mapping,
    initiator,
    mapping_to_entry,
    mappings_to_entries,
    owned_addresses,
    select,
    session_key,
    split_supported,
    unsupported_reason,
)

from ansible_collections.nfstate.migration.tests.unit.builders import (
    SAMPLE_IDS,
    SAMPLES,
    SEEN,
    V4,
    bare,
    samples_of_every_protocol,
    tcp,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "conntrack.xml")


@pytest.mark.parametrize("name,entry,side", SAMPLES, ids=SAMPLE_IDS)
def test_entry_round_trip(name, entry, side):
    mapping = entry_to_mapping(entry, 3)
    assert mapping["nfstate-nat:initiator"] == side == initiator(entry)
    assert mapping_to_entry(mapping) == entry
    assert translation(mapping_to_entry(mapping)) == translation(entry)


@pytest.mark.parametrize("name,entry,side", SAMPLES, ids=SAMPLE_IDS)
def test_mapping_round_trip(name, entry, side):
    mapping = entry_to_mapping(entry, 1)
    assert entry_to_mapping(mapping_to_entry(copy.deepcopy(mapping)), 1) == mapping


def test_source_nat_follows_the_initiator_rule():
    entry = SAMPLES[0][1]
    mapping = entry_to_mapping(entry, 1)
    assert mapping == {
        "index": 1, "type": "dynamic-implicit", "transport-protocol": 6,
        "internal-src-address": "192.0.2.2/32", "internal-src-port": {"start-port-number": 41000},
        "external-src-address": "198.51.100.1/32", "external-src-port": {"start-port-number": 25001},
        "internal-dst-address": "203.0.113.9/32", "internal-dst-port": {"start-port-number": 443},
        "external-dst-address": "203.0.113.9/32", "external-dst-port": {"start-port-number": 443},
        "lifetime": 431999,
        "nfstate-nat:initiator": "internal", "nfstate-nat:seen-reply": True, "nfstate-nat:assured": True,
        "nfstate-nat:mark": 7, "nfstate-nat:zone": 5,
        "nfstate-nat:tcp": {"state": "established",
                            "original": {"window-scale": 7, "flags": "window-scale sack-permitted maxack-set"},
                            "reply": {"window-scale": 9, "flags": "window-scale sack-permitted"}},
    }


def test_port_forward_follows_the_initiator_rule():
    mapping = entry_to_mapping(SAMPLES[2][1], 1)
    # The outside client opened it: external-src/dst is the packet as it arrived.
    assert mapping["external-src-address"] == "198.51.100.2/32"
    assert mapping["external-src-port"] == {"start-port-number": 38972}
    assert mapping["external-dst-address"] == "198.51.100.1/32"
    assert mapping["external-dst-port"] == {"start-port-number": 8080}
    assert mapping["internal-dst-address"] == "192.0.2.2/32"
    assert mapping["internal-dst-port"] == {"start-port-number": 80}
    assert mapping["internal-src-address"] == "198.51.100.2/32"


def test_icmp_carries_identifiers_in_source_ports_only():
    mapping = entry_to_mapping(SAMPLES[6][1], 1)
    assert mapping["internal-src-port"] == {"start-port-number": 777}
    assert mapping["external-src-port"] == {"start-port-number": 2049}
    assert "internal-dst-port" not in mapping and "external-dst-port" not in mapping
    assert mapping["nfstate-nat:icmp"] == {"type": 8, "code": 0}
    assert "nfstate-nat:tcp" not in mapping
    back = mapping_to_entry(mapping)
    assert back.reply.icmp_type == 0 and back.reply.sport == 2049


def test_labels_are_hex():
    mapping = entry_to_mapping(SAMPLES[3][1], 1)
    assert mapping["nfstate-nat:labels"] == "000102030405060708090a0b0c0d0e0f"
    assert mapping["nfstate-nat:seen-reply"] is False


def test_status_is_rebuilt_from_flags_and_tuples():
    entry = mapping_to_entry(entry_to_mapping(SAMPLES[5][1], 1))
    assert entry.status == IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT | IPS_DST_NAT


def test_defaults_and_canonical_addresses_are_accepted():
    mapping = entry_to_mapping(SAMPLES[1][1], 1)
    for name in ("nfstate-nat:mark", "nfstate-nat:zone", "nfstate-nat:seen-reply", "nfstate-nat:assured"):
        del mapping[name]
    mapping["internal-src-address"] = "2001:DB8:1:0::2/128"
    entry = mapping_to_entry(mapping)
    assert entry.orig.src == "2001:db8:1::2"
    assert (entry.mark, entry.zone, entry.status & (IPS_SEEN_REPLY | IPS_ASSURED)) == (0, 0, 0)


def test_every_tcp_state_and_flag_survives():
    base = SAMPLES[0][1]
    for state in range(len(TCP_STATES)):
        for flags in (0, 0x08, 0xff):
            entry = base._replace(tcp_state=state, tcp_flags_orig=flags, tcp_flags_reply=flags ^ 0xff)
            assert mapping_to_entry(entry_to_mapping(entry, 1)) == entry


def test_conntrack_xml_fixture_round_trips():
    entries = parse_conntrack_xml(open(FIXTURE).read())
    assert entries
    assert mappings_to_entries(entries_to_mappings(entries)) == entries


# ---------------------------------------------------------------- malformed mapping entries

def _good(index=2):
    return entry_to_mapping(SAMPLES[0][1], 1), entry_to_mapping(SAMPLES[index][1], 1)


def _set(path, value):
    def change(mapping):
        *parents, leaf = path.split("/")
        target = mapping
        for part in parents:
            target = target[part]
        if value is KeyError:
            del target[leaf]
        else:
            target[leaf] = value
    return change


MALFORMED = [
    ("not an object", lambda m: None, "", "expected an object"),
    ("unknown member", _set("nfstate-nat:bogus", 1), "nfstate-nat:bogus", "unknown member"),
    ("no index", _set("index", KeyError), "index", "missing"),
    ("index negative", _set("index", -1), "index", "out of range"),
    ("index as text", _set("index", "1"), "index", "expected an integer"),
    ("static", _set("type", "static"), "type", "static mapping"),
    ("protocol missing", _set("transport-protocol", KeyError), "transport-protocol", "missing"),
    ("protocol sctp", _set("transport-protocol", 132), "transport-protocol", "not carried: SCTP"),
    ("protocol dccp", _set("transport-protocol", 33), "transport-protocol", "not carried: DCCP"),
    ("protocol 256", _set("transport-protocol", 256), "transport-protocol", "out of range"),
    ("protocol bool", _set("transport-protocol", True), "transport-protocol", "expected an integer"),
    ("initiator missing", _set("nfstate-nat:initiator", KeyError), "nfstate-nat:initiator", "missing"),
    ("initiator bad", _set("nfstate-nat:initiator", "inside"), "nfstate-nat:initiator", "expected 'internal'"),
    ("address missing", _set("external-src-address", KeyError), "external-src-address", "missing"),
    ("address without length", _set("internal-src-address", "192.0.2.2"), "internal-src-address", "not a prefix"),
    ("address not host", _set("internal-src-address", "192.0.2.0/24"), "internal-src-address", "host prefix"),
    ("address garbage", _set("internal-dst-address", "192.0.2.300/32"), "internal-dst-address", "not a valid IP"),
    ("address leading zero", _set("internal-dst-address", "192.0.2.01/32"), "internal-dst-address", "not a valid IP"),
    ("families mixed", _set("external-dst-address", "2001:db8::1/128"), "external-dst-address", "mixes IPv4 and IPv6"),
    ("port container missing", _set("external-dst-port", KeyError), "external-dst-port", "missing"),
    ("port too big", _set("internal-src-port/start-port-number", 65536), "internal-src-port/start-port-number",
     "out of range"),
    ("port range", _set("internal-src-port/end-port-number", 41010), "internal-src-port/end-port-number",
     "one port, not a range"),
    ("port start missing", _set("internal-src-port", {"end-port-number": 5}), "internal-src-port/start-port-number",
     "missing"),
    ("port unknown member", _set("internal-src-port/port", 5), "internal-src-port/port", "unknown member"),
    ("lifetime missing", _set("lifetime", KeyError), "lifetime", "missing"),
    ("lifetime float", _set("lifetime", 1.5), "lifetime", "expected an integer"),
    ("seen-reply as number", _set("nfstate-nat:seen-reply", 1), "nfstate-nat:seen-reply", "true or false"),
    ("mark too big", _set("nfstate-nat:mark", 1 << 32), "nfstate-nat:mark", "out of range"),
    ("zone too big", _set("nfstate-nat:zone", 65536), "nfstate-nat:zone", "out of range"),
    ("labels short", _set("nfstate-nat:labels", "ff"), "nfstate-nat:labels", "32 hexadecimal digits"),
    ("tcp missing", _set("nfstate-nat:tcp", KeyError), "nfstate-nat:tcp", "missing"),
    ("tcp state missing", _set("nfstate-nat:tcp/state", KeyError), "nfstate-nat:tcp/state", "missing"),
    ("tcp state unknown", _set("nfstate-nat:tcp/state", "ESTABLISHED"), "nfstate-nat:tcp/state", "unknown TCP state"),
    ("window scale 15", _set("nfstate-nat:tcp/original/window-scale", 15), "nfstate-nat:tcp/original/window-scale",
     "out of range"),
    ("flag unknown", _set("nfstate-nat:tcp/reply/flags", "window-scale urgent"), "nfstate-nat:tcp/reply/flags",
     "unknown TCP tracking flag"),
    ("icmp on tcp", _set("nfstate-nat:icmp", {"type": 8}), "nfstate-nat:icmp", "ICMP state on a protocol 6"),
    ("gre on tcp", _set("nfstate-nat:gre", {"source-key": 0, "destination-key": 0}), "nfstate-nat:gre",
     "GRE keys on a protocol 6"),
]


@pytest.mark.parametrize("name,change,path,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_mapping_names_the_member(name, change, path, message):
    mapping = _good()[0]
    if name == "not an object":
        mapping = ["not", "an", "object"]
    else:
        change(mapping)
    with pytest.raises(ModelError) as raised:
        mapping_to_entry(mapping)
    assert raised.value.path == path
    assert message in raised.value.message


def test_malformed_icmp_mappings():
    mapping = entry_to_mapping(SAMPLES[6][1], 1)
    for name, value, path, message in [
        ("internal-dst-port", {"start-port-number": 1}, "internal-dst-port", "no destination port"),
        ("nfstate-nat:icmp", KeyError, "nfstate-nat:icmp", "missing"),
        ("nfstate-nat:icmp", {"code": 0}, "nfstate-nat:icmp/type", "missing"),
        ("nfstate-nat:icmp", {"type": 256}, "nfstate-nat:icmp/type", "out of range"),
        ("nfstate-nat:tcp", {"state": "established"}, "nfstate-nat:tcp", "TCP state on a protocol 1"),
        ("transport-protocol", 58, "transport-protocol", "ICMP is protocol 1 with IPv4"),
    ]:
        bad = copy.deepcopy(mapping)
        if value is KeyError:
            del bad[name]
        else:
            bad[name] = value
        with pytest.raises(ModelError) as raised:
            mapping_to_entry(bad)
        assert (raised.value.path, message in raised.value.message) == (path, True), name


def test_address_only_sessions_carry_no_ports_and_gre_its_keys():
    by_name = dict((name, entry) for name, entry, _side in SAMPLES)
    esp = entry_to_mapping(by_name["esp snat v4"], 1)
    assert not [name for name in esp if name.endswith("-port")]
    assert (esp["external-src-address"], esp["transport-protocol"]) == ("198.51.100.1/32", 50)
    assert "nfstate-nat:gre" not in esp and "nfstate-nat:tcp" not in esp
    gre = entry_to_mapping(by_name["gre pptp snat v4"], 1)
    assert gre["nfstate-nat:gre"] == {"source-key": 0, "destination-key": 0x1234}
    assert not [name for name in gre if name.endswith("-port")]
    assert translation(by_name["esp snat v4"]) == (("198.51.100.1", None), None)


def test_malformed_address_only_mappings():
    by_name = dict((name, entry) for name, entry, _side in SAMPLES)
    esp = entry_to_mapping(by_name["esp snat v4"], 1)
    gre = entry_to_mapping(by_name["gre pptp snat v4"], 1)
    for mapping, name, value, path, message in [
        (esp, "internal-src-port", {"start-port-number": 1}, "internal-src-port", "esp session has no ports"),
        (esp, "external-dst-port", {"start-port-number": 1}, "external-dst-port", "esp session has no ports"),
        (esp, "nfstate-nat:gre", {"source-key": 0, "destination-key": 0}, "nfstate-nat:gre", "GRE keys on a protocol 50"),
        (gre, "nfstate-nat:gre", KeyError, "nfstate-nat:gre", "missing"),
        (gre, "nfstate-nat:gre", {"source-key": 1}, "nfstate-nat:gre/destination-key", "missing"),
        (gre, "nfstate-nat:gre", {"source-key": 1, "destination-key": 1 << 16}, "nfstate-nat:gre/destination-key",
         "out of range"),
        (gre, "nfstate-nat:gre", {"source-key": 1, "destination-key": 2, "version": 1}, "nfstate-nat:gre/version",
         "unknown member"),
        (gre, "internal-dst-port", {"start-port-number": 1}, "internal-dst-port", "gre session has no ports"),
    ]:
        bad = copy.deepcopy(mapping)
        if value is KeyError:
            del bad[name]
        else:
            bad[name] = value
        with pytest.raises(ModelError) as raised:
            mapping_to_entry(bad)
        assert (raised.value.path, message in raised.value.message) == (path, True), (name, raised.value)


UNSUPPORTED = [
    ("sctp", ConntrackEntry(FlowTuple(V4, 132, "192.0.2.2", "198.51.100.2", 5000, 36412),
                            FlowTuple(V4, 132, "198.51.100.2", "198.51.100.1", 36412, 5000), SEEN | IPS_SRC_NAT, 210),
     "SCTP is tracked with its association state"),
    ("dccp", bare(V4, 33, "192.0.2.2", "198.51.100.2", "198.51.100.2", "198.51.100.1", SEEN | IPS_SRC_NAT),
     "DCCP is tracked with its own state"),
    ("gre keys translated", ConntrackEntry(FlowTuple(V4, 47, "192.0.2.2", "198.51.100.2", 0x11, 0x1234),
                                           FlowTuple(V4, 47, "198.51.100.2", "198.51.100.1", 0x1234, 0x99),
                                           SEEN | IPS_SRC_NAT, 180),
     "its GRE keys were translated"),
    ("gre made by the pptp helper", bare(V4, 47, "192.0.2.2", "198.51.100.2", "198.51.100.2", "198.51.100.1",
                                         SEEN | IPS_SRC_NAT | IPS_EXPECTED, keys=(0x11, 0x1234)),
     "the PPTP helper made it"),
]


@pytest.mark.parametrize("name,entry,reason", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_sessions_that_cannot_be_recreated_are_listed_never_emitted(name, entry, reason):
    assert reason in unsupported_reason(entry)
    carried = samples_of_every_protocol()
    listed = []
    mappings = entries_to_mappings(carried[:3] + [entry] + carried[3:], unsupported=listed)
    # Left out, the others numbered 1..n without a gap, and named with the reason.
    assert [mapping_to_entry(m) for m in mappings] == carried
    assert [m["index"] for m in mappings] == list(range(1, len(carried) + 1))
    assert listed == ["%s: %s" % (describe(entry), unsupported_reason(entry))] and reason in listed[0]
    assert split_supported(carried + [entry]) == (carried, listed)
    assert entries_to_mappings([entry]) == []  # left out even when nobody asks why


def test_every_supported_sample_has_no_reason():
    assert [name for name, entry, _side in SAMPLES if unsupported_reason(entry) is not None] == []


# ---------------------------------------------------------------- identity and selection

def test_session_key_is_zone_and_original_tuple():
    entry = SAMPLES[0][1]
    assert session_key(entry) == (5, entry.orig)
    assert session_key(entry._replace(zone=6)) != session_key(entry)
    assert session_key(entry._replace(reply=entry.reply._replace(dport=1), timeout=1)) == session_key(entry)


def test_owned_addresses():
    assert owned_addresses(SAMPLES[0][1]) == ["198.51.100.1"]          # translated source
    assert owned_addresses(SAMPLES[2][1]) == ["198.51.100.1"]          # original destination
    assert owned_addresses(SAMPLES[5][1]) == ["192.0.2.1", "198.51.100.1"]


def _names(entries):
    by_entry = dict((sample[1], sample[0]) for sample in SAMPLES)
    return sorted(by_entry[e] for e in entries)


def test_select_by_owned_addresses():
    entries = samples_of_every_protocol()
    own_v4 = select(entries, {"addresses": ["198.51.100.1"]})
    assert _names(own_v4) == sorted([
        "ah dnat v4", "esp snat v4", "gre dnat v4", "gre pptp snat v4", "icmp dnat v4", "icmp snat v4 with id remap",
        "protocol 253 twice nat v4", "tcp port forward v4", "tcp snat v4", "tcp without window tracking",
        "udp snat v4 unreplied", "udp twice nat v4", "udplite snat v4"])
    own_v6 = select(entries, {"addresses": ["2001:db8:2::/64"]})
    assert _names(own_v6) == sorted(["esp snat v6", "icmpv6 snat", "tcp masquerade v6", "udp port forward v6"])
    # An inside server's address is not owned by the NAT: the port forward's reply source.
    assert select(entries, {"addresses": ["192.0.2.2/32"]}) == []


def test_untranslated_entries_never_match_addresses():
    host_own = tcp(V4, "198.18.0.1", "198.18.0.2", 22, 50000, "198.18.0.2", "198.18.0.1", 50000, 22, SEEN)
    assert select([host_own], {"addresses": ["198.18.0.0/15"]}) == []
    assert select([host_own], {}) == [host_own]


def test_select_by_zone_and_mark():
    entries = samples_of_every_protocol()
    assert _names(select(entries, {"zone": 5})) == ["icmp snat v4 with id remap", "tcp snat v4"]
    assert _names(select(entries, {"mark": 42})) == ["udp snat v4 unreplied"]
    assert _names(select(entries, {"mark": 0x102, "mark_mask": 0x2})) == ["gre dnat v4", "tcp snat v4",
                                                                          "udp snat v4 unreplied"]
    assert _names(select(entries, {"zone": 5, "addresses": ["198.51.100.1/32"], "mark": 7})) == ["tcp snat v4"]


@pytest.mark.parametrize("selectors,path", [
    ({"interface": "eth0"}, "interface"),
    ({"addresses": ["198.51.100.300"]}, "addresses/0"),
    ({"addresses": ["198.51.100.0/33"]}, "addresses/0"),
    ({"addresses": "198.51.100.1"}, "addresses"),
    ({"zone": -1}, "zone"),
    ({"mark_mask": 1}, "mark_mask"),
])
def test_bad_selectors(selectors, path):
    with pytest.raises(ModelError) as raised:
        select(samples_of_every_protocol(), selectors)
    assert raised.value.path == path


# ---------------------------------------------------------------- speed

def _many(count):
    entries = []
    for i in range(count):
        # Distinct sessions, as in a real table: no two share an original or a reply tuple.
        orig = FlowTuple(V4, 6, "192.0.2.%d" % (i // 60000 + 1), "203.0.113.%d" % (i % 200 + 1), 1024 + i % 60000, 443)
        reply = FlowTuple(V4, 6, orig.dst, "198.51.100.%d" % (i // 60000 + 1), 443, 1024 + i % 60000)
        entries.append(ConntrackEntry(orig, reply, SEEN | IPS_SRC_NAT, 300, 0, 0, None, 3, 7, 7, 0x23, 0x23))
    return entries


def test_hundred_thousand_each_way_is_fast():
    entries = _many(100000)
    start = time.process_time()
    mappings = entries_to_mappings(entries)
    to_model = time.process_time() - start
    start = time.process_time()
    back = mappings_to_entries(mappings)
    to_kernel = time.process_time() - start
    assert back == entries
    # About 0.5 s each way here; the bound leaves room for a busy CI machine.
    assert to_model < 3 and to_kernel < 3, (to_model, to_kernel)
