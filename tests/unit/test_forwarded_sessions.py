"""The firewall's sessions: untranslated flows forwarded through the host, never its own connections."""

import socket

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, IPS_SRC_NAT, ConntrackEntry, FlowTuple,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    DocumentError, build_document, document_sessions, instance,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    FORWARDED, ModelError, forwarded_ends, never_forwarded, select, split_supported, wants_forwarded,
)

SEEN = IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED
HOST = frozenset(("198.51.100.1", "192.0.2.1"))


def udp(src, dst, sport, dport, rsrc, rdst, rsport, rdport, status=SEEN, zone=0):
    return ConntrackEntry(FlowTuple(socket.AF_INET, 17, src, dst, sport, dport),
                          FlowTuple(socket.AF_INET, 17, rsrc, rdst, rsport, rdport), status, 120, zone=zone)


THROUGH = udp("198.51.100.2", "192.0.2.2", 4000, 53, "192.0.2.2", "198.51.100.2", 53, 4000)
TRANSLATED = udp("192.0.2.2", "203.0.113.9", 5000, 53, "203.0.113.9", "198.51.100.1", 53, 25000, SEEN | IPS_SRC_NAT)
OWN_IN = udp("198.51.100.2", "198.51.100.1", 4001, 22, "198.51.100.1", "198.51.100.2", 22, 4001)
OWN_OUT = udp("192.0.2.1", "192.0.2.2", 4002, 123, "192.0.2.2", "192.0.2.1", 123, 4002)
ZONED = THROUGH._replace(zone=3)
ALL = [THROUGH, TRANSLATED, OWN_IN, OWN_OUT, ZONED]


def test_without_forwarded_nothing_changes():
    assert not wants_forwarded({}) and not wants_forwarded({"forwarded": None})
    assert select([TRANSLATED], {}) == [TRANSLATED]


def test_forwarded_keeps_flows_through_the_host_and_never_its_own():
    assert select(ALL, {"forwarded": True}, HOST) == [THROUGH, TRANSLATED, ZONED]
    assert select(ALL, {"forwarded": True, "zone": 3}, HOST) == [ZONED]
    # The NAT's address selector narrows the translated ones only.
    assert select(ALL, {"forwarded": True, "addresses": ["203.0.113.0/24"]}, HOST) == [THROUGH, ZONED]
    with pytest.raises(ModelError, match="forwarded"):
        select(ALL, {"forwarded": "yes"}, HOST)


@pytest.mark.parametrize("address, host_only", [
    ("224.0.0.1", True), ("239.255.255.250", True), ("255.255.255.255", True), ("ff02::fb", True), ("FF05::1:3", True),
    ("223.255.255.255", False), ("240.0.0.1", False), ("192.0.2.255", False), ("ff::1", False), ("2001:db8::ff", False),
    ("fe80::1", False)])
def test_multicast_and_the_limited_broadcast_are_never_forwarded(address, host_only):
    assert never_forwarded(address) is host_only


def test_what_the_host_takes_for_itself_is_its_own():
    # A directed broadcast is among the host's addresses (forwarded.local_addresses adds it).
    host = HOST | {"192.0.2.255"}
    mdns = udp("192.0.2.2", "224.0.0.251", 5353, 5353, "224.0.0.251", "192.0.2.2", 5353, 5353)
    broadcast = udp("192.0.2.2", "192.0.2.255", 4000, 5353, "192.0.2.255", "192.0.2.2", 5353, 4000)
    dhcp = udp("0.0.0.0", "255.255.255.255", 68, 67, "255.255.255.255", "0.0.0.0", 67, 68)
    assert select([THROUGH, mdns, broadcast, dhcp], {"forwarded": True}, host) == [THROUGH]
    assert forwarded_ends(THROUGH.orig, host) and not forwarded_ends(OWN_IN.orig, host)


def test_a_forwarded_session_travels_flagged_and_comes_back():
    kept, refused = split_supported([THROUGH, TRANSLATED])
    assert refused == []
    doc = build_document(kept, "edge")
    mappings = instance(doc)["mapping-table"]["mapping-entry"]
    assert [m.get(FORWARDED) for m in mappings] == [True, None]
    assert document_sessions(doc).present == [THROUGH, TRANSLATED]


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop(FORWARDED), "untranslated"),
    (lambda m: m.update({FORWARDED: "true"}), "expected a boolean"),
])
def test_an_untranslated_entry_needs_the_flag(change, message):
    doc = build_document([THROUGH], "edge")
    change(instance(doc)["mapping-table"]["mapping-entry"][0])
    with pytest.raises(DocumentError, match=message):
        document_sessions(doc)


def test_a_translated_entry_cannot_say_it_is_forwarded():
    doc = build_document([TRANSLATED], "edge")
    instance(doc)["mapping-table"]["mapping-entry"][0][FORWARDED] = True
    with pytest.raises(DocumentError, match="translated session is the NAT's"):
        document_sessions(doc)


def test_the_flag_is_in_the_yang_model():
    yang_model = pytest.importorskip("ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    doc = build_document([THROUGH, TRANSLATED], "edge")
    assert yang_model.validate(doc) == []
    instance(doc)["mapping-table"]["mapping-entry"][0][FORWARDED] = "sometimes"
    assert yang_model.validate(doc) != []
