"""Parsing `conntrack -L -o xml` output (fixtures/conntrack.xml is real output of a NAT namespace)."""

import os
import socket

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    ConntrackEntry,
    FlowTuple,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    TCP_STATES,
    translation,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_xml import (
    ConntrackXmlError,
    parse_conntrack_xml,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "conntrack.xml")
V4, V6 = socket.AF_INET, socket.AF_INET6


@pytest.fixture(scope="module")
def parsed():
    skipped = []
    entries = parse_conntrack_xml(open(FIXTURE).read(), skipped)
    return entries, skipped


def _find(entries, proto, src, dport):
    found = [e for e in entries if (e.orig.proto, e.orig.src, e.orig.dport) == (proto, src, dport)]
    assert len(found) == 1, found
    return found[0]


def test_fixture_flows(parsed):
    entries, skipped = parsed
    assert len(entries) == 6
    assert sorted({(e.orig.family, e.orig.proto) for e in entries}) == [(V4, 6), (V4, 17), (V6, 17)]
    # Every flow of the fixture is a NAT session; the XML has no NAT bits, the tuples tell.
    assert all(translation(e) != (None, None) for e in entries)
    assert all(e.tcp_wscale_orig is None and e.tcp_flags_reply is None for e in entries)


def test_fixture_icmp_is_skipped_with_reason(parsed):
    skipped = parsed[1]
    assert [item[0] for item in skipped] == [1, 4, 6]
    assert all("no ICMP type, code and identifier" in item[1] for item in skipped)


def test_source_nat_tcp(parsed):
    entry = _find(parsed[0], 6, "192.0.2.2", 80)
    assert entry == ConntrackEntry(
        FlowTuple(V4, 6, "192.0.2.2", "198.51.100.2", 49914, 80),
        FlowTuple(V4, 6, "198.51.100.2", "198.51.100.1", 80, 29214),
        IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT, 431995,
        mark=0, zone=0, labels=None, tcp_state=TCP_STATES.index("established"))


def test_port_forward_tcp(parsed):
    entry = _find(parsed[0], 6, "198.51.100.2", 8080)
    assert entry.reply == FlowTuple(V4, 6, "192.0.2.2", "198.51.100.2", 80, 38972)
    assert entry.status == IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED | IPS_DST_NAT
    assert translation(entry) == (None, ("192.0.2.2", 80))


def test_mark_zone_and_flags(parsed):
    entries = parsed[0]
    injected = _find(entries, 6, "192.0.2.7", 443)
    assert (injected.mark, injected.zone, injected.timeout) == (7, 5, 298)
    marked_udp = _find(entries, 17, "192.0.2.2", 53)
    assert (marked_udp.mark, marked_udp.tcp_state) == (42, None)
    assert marked_udp.status & IPS_ASSURED == 0 and marked_udp.status & IPS_SEEN_REPLY


def test_ipv6_source_and_destination_nat(parsed):
    entries = parsed[0]
    snat = _find(entries, 17, "2001:db8:1::2", 53)
    assert translation(snat) == (("2001:db8:2::1", 25623), None)
    dnat = _find(entries, 17, "2001:db8:2::2", 5353)
    assert translation(dnat) == (None, ("2001:db8:1::2", 53))


def _flow(l4, independent, proto=6, name="tcp", family="ipv4", src="192.0.2.2", dst="198.51.100.2",
          rsrc="198.51.100.2", rdst="198.51.100.1", reply_l4=None):
    num = 2 if family == "ipv4" else 10

    def meta(direction, s, d, layer4):
        return ('<meta direction="%s"><layer3 protonum="%d" protoname="%s"><src>%s</src><dst>%s</dst></layer3>'
                '<layer4 protonum="%d" protoname="%s">%s</layer4></meta>' % (direction, num, family, s, d, proto, name, layer4))
    return "<flow>%s%s<meta direction=\"independent\">%s</meta></flow>" % (
        meta("original", src, dst, l4), meta("reply", rsrc, rdst, reply_l4 if reply_l4 is not None else l4), independent)


def _doc(*flows):
    return '<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n%s\n</conntrack>\n' % "\n".join(flows)


def test_unreplied_labels_and_trailer():
    text = _doc(_flow("<sport>1</sport><dport>2</dport>",
                      "<state>SYN_SENT</state><timeout>120</timeout><mark>3</mark><zone>9</zone>"
                      "<labels><label>0</label><label>9</label><label>127</label></labels><unreplied/>",
                      reply_l4="<sport>2</sport><dport>60000</dport>"))
    text += "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n"
    [entry] = parse_conntrack_xml(text)
    assert entry.status == IPS_CONFIRMED | IPS_SRC_NAT
    assert (entry.tcp_state, entry.mark, entry.zone, entry.timeout) == (1, 3, 9, 120)
    assert entry.labels == bytes([0x01, 0x02] + [0] * 13 + [0x80])


def test_listen_is_syn_sent2_and_label_names():
    text = _doc(_flow("<sport>1</sport><dport>2</dport>",
                      "<state>LISTEN</state><timeout>5</timeout><labels><label>blue</label></labels>",
                      reply_l4="<sport>2</sport><dport>60000</dport>"))
    [entry] = parse_conntrack_xml(text, label_names={"blue": 8})
    assert TCP_STATES[entry.tcp_state] == "syn-sent2"
    assert entry.labels[1] == 1


def test_icmp_with_fields_is_parsed():
    text = _doc(_flow("<type>8</type><code>0</code><id>77</id>", "<timeout>30</timeout>", proto=1, name="icmp",
                      reply_l4="<type>0</type><code>0</code><id>1077</id>"))
    [entry] = parse_conntrack_xml(text)
    assert entry.orig == FlowTuple(V4, 1, "192.0.2.2", "198.51.100.2", 77, 0, 8, 0)
    assert entry.reply == FlowTuple(V4, 1, "198.51.100.2", "198.51.100.1", 1077, 0, 0, 0)
    assert entry.status & IPS_SRC_NAT


def test_gre_keys_and_generic_protocols_are_parsed():
    # As conntrack-tools 1.4.7 prints them on Linux 6.18: GRE keys in hex, ESP with no fields.
    gre = _flow("<srckey>0x0</srckey><dstkey>0x1234</dstkey>", "<timeout>29</timeout><unreplied/>", proto=47,
                name="gre", reply_l4="<srckey>0x1234</srckey><dstkey>0x0</dstkey>")
    esp = _flow("", "<timeout>599</timeout><unreplied/>", proto=50, name="unknown", reply_l4="")
    skipped = []
    first, second = parse_conntrack_xml(_doc(gre, esp), skipped)
    assert skipped == []
    assert first.orig == FlowTuple(V4, 47, "192.0.2.2", "198.51.100.2", 0, 0x1234)
    assert first.reply == FlowTuple(V4, 47, "198.51.100.2", "198.51.100.1", 0x1234, 0)
    assert second.orig == FlowTuple(V4, 50, "192.0.2.2", "198.51.100.2", 0, 0)
    assert first.status & IPS_SRC_NAT and second.status & IPS_SRC_NAT and second.timeout == 599


def test_bad_gre_keys_are_refused():
    text = _doc(_flow("<srckey>zz</srckey><dstkey>0x1</dstkey>", "", proto=47, name="gre",
                      reply_l4="<srckey>0x1</srckey><dstkey>0x0</dstkey>"))
    with pytest.raises(ConntrackXmlError, match="not a hexadecimal key"):
        parse_conntrack_xml(text)


@pytest.mark.parametrize("text,message", [
    ("not xml at all", "not conntrack XML"),
    ("<flows></flows>", "root element is <flows>"),
    (_doc(_flow("<sport>x</sport><dport>2</dport>", "")), "sport 'x' is not a number"),
    (_doc(_flow("<sport>1</sport><dport>70000</dport>", "")), "out of range"),
    (_doc(_flow("<sport>1</sport><dport>2</dport>", "", src="192.0.2.999")), "is not an address"),
    (_doc(_flow("<sport>1</sport><dport>2</dport>", "<state>OPEN</state>")), "unknown TCP state"),
    (_doc(_flow("", "", proto=17, name="udp")), "without ports"),
    (_doc(_flow("<sport>1</sport><dport>2</dport>", "<labels><label>red</label></labels>")), "label 'red'"),
    (_doc(_flow("<sport>1</sport><dport>2</dport>", "", family="ipv6")), "is not an address"),
])
def test_malformed_input(text, message):
    with pytest.raises(ConntrackXmlError) as raised:
        parse_conntrack_xml(text)
    assert message in str(raised.value)


def test_empty_table():
    assert parse_conntrack_xml('<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n</conntrack>\n') == []
    assert parse_conntrack_xml(b'<conntrack></conntrack>') == []
