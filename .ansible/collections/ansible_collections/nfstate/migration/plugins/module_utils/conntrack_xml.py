# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parse the text of `conntrack -L -o xml` into ConntrackEntry objects (the module's `parsed` state).

What the XML of conntrack-tools 1.4 carries, and what it does not (seen on this kernel):
- both tuples (addresses, TCP/UDP/UDP-Lite ports, GRE keys as <srckey>/<dstkey> in hex, nothing
  more for the generic tracker's protocols), the TCP state by name, timeout, mark, zone,
  <assured/> and <unreplied/>; labels only by name when a connlabel.conf is installed;
- no NAT status bits: the NAT is derived from the tuples (the reply differs from the inverse of
  the original), as the driver does;
- no TCP window scale or flags: left None;
- nothing about ICMP: type, code and identifier are missing, so an ICMP flow cannot be
  re-created from it and is skipped (reported through `skipped`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket
import xml.etree.ElementTree as ET

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    ConntrackEntry,
    FlowTuple,
    PORT_PROTOCOLS,
    IPPROTO_DCCP,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    TCP_STATES,
    translation,
)

# conntrack-tools prints the kernel's TCP state names in capitals; its table calls state 9
# (SYN_SENT2, simultaneous open) "LISTEN".
TCP_STATE_BY_XML_NAME = dict((name.upper().replace("-", "_"), number) for number, name in enumerate(TCP_STATES))
TCP_STATE_BY_XML_NAME["LISTEN"] = TCP_STATES.index("syn-sent2")

_FAMILY_BY_NAME = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_FAMILY_BY_NUMBER = {"2": socket.AF_INET, "10": socket.AF_INET6}


class ConntrackXmlError(ValueError):
    """Text that is not conntrack XML output, or a flow in it that is malformed."""


def _int(text, what, flow, maximum):
    try:
        value = int((text or "").strip())
    except ValueError:
        raise ConntrackXmlError("flow %d: %s %r is not a number" % (flow, what, text))
    if not 0 <= value <= maximum:
        raise ConntrackXmlError("flow %d: %s %d is out of range" % (flow, what, value))
    return value


def _address(family, text, what, flow):
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, (text or "").strip()))
    except (OSError, ValueError):
        raise ConntrackXmlError("flow %d: %s %r is not an address" % (flow, what, text))


def _gre_keys(layer4, direction, flow):
    keys = []
    for name in ("srckey", "dstkey"):
        text = (layer4.findtext(name) or "").strip()
        try:
            keys.append(int(text, 16))
        except ValueError:
            raise ConntrackXmlError("flow %d: %s GRE %s %r is not a hexadecimal key" % (flow, direction, name, text))
        if not 0 <= keys[-1] <= 0xFFFF:
            raise ConntrackXmlError("flow %d: %s GRE %s %r is out of range" % (flow, direction, name, text))
    return keys


def _tuple(meta, flow):
    """(family, proto, src, dst, sport, dport, has_ports) of a <meta direction=original|reply>."""
    direction = meta.get("direction")
    layer3 = meta.find("layer3")
    layer4 = meta.find("layer4")
    if layer3 is None or layer4 is None:
        raise ConntrackXmlError("flow %d: %s direction without layer3/layer4" % (flow, direction))
    family = _FAMILY_BY_NAME.get((layer3.get("protoname") or "").lower()) or _FAMILY_BY_NUMBER.get(layer3.get("protonum"))
    if family is None:
        raise ConntrackXmlError("flow %d: unknown layer 3 protocol %r" % (flow, layer3.get("protoname")))
    src = _address(family, layer3.findtext("src"), direction + " src", flow)
    dst = _address(family, layer3.findtext("dst"), direction + " dst", flow)
    proto = _int(layer4.get("protonum"), direction + " protocol number", flow, 255)
    sport_text, dport_text = layer4.findtext("sport"), layer4.findtext("dport")
    if sport_text is None or dport_text is None:
        return family, proto, src, dst, None, None, layer4
    sport = _int(sport_text, direction + " sport", flow, 0xFFFF)
    dport = _int(dport_text, direction + " dport", flow, 0xFFFF)
    return family, proto, src, dst, sport, dport, layer4


def _icmp_fields(layer4, direction, flow):
    """(type, code, id) when the XML has them (newer conntrack-tools), else None."""
    texts = [layer4.findtext(name) for name in ("type", "code", "id")]
    if any(text is None for text in texts):
        return None
    return (_int(texts[0], direction + " icmp type", flow, 255),
            _int(texts[1], direction + " icmp code", flow, 255),
            _int(texts[2], direction + " icmp id", flow, 0xFFFF))


def _labels(element, label_names, flow):
    """16 bytes of label bits: label n is bit n % 8 of byte n // 8."""
    bits = bytearray(16)
    for label in element.findall("label"):
        text = (label.text or "").strip()
        if text.isdigit():
            number = int(text)
        elif label_names and text in label_names:
            number = label_names[text]
        else:
            raise ConntrackXmlError("flow %d: label %r is not a number and not in label_names" % (flow, text))
        if not 0 <= number < 128:
            raise ConntrackXmlError("flow %d: label %d is out of range 0..127" % (flow, number))
        bits[number // 8] |= 1 << (number % 8)
    return bytes(bits)


def _flow_entry(flow_element, position, label_names):
    """A ConntrackEntry, or a string saying why the flow cannot be one."""
    metas = dict((meta.get("direction"), meta) for meta in flow_element.findall("meta"))
    if "original" not in metas or "reply" not in metas:
        raise ConntrackXmlError("flow %d: needs an original and a reply direction" % position)
    ofam, oproto, osrc, odst, osport, odport, olayer4 = _tuple(metas["original"], position)
    rfam, rproto, rsrc, rdst, rsport, rdport, rlayer4 = _tuple(metas["reply"], position)
    if (ofam, oproto) != (rfam, rproto):
        raise ConntrackXmlError("flow %d: the directions disagree on the protocol" % position)
    independent = metas.get("independent")
    if independent is None:
        independent = ET.Element("meta")
    if oproto in PORT_PROTOCOLS and (osport is not None or oproto != IPPROTO_DCCP):
        # (a DCCP flow without ports: a kernel that tracks DCCP generically)
        if osport is None or rsport is None:
            raise ConntrackXmlError("flow %d: a protocol %d flow without ports" % (position, oproto))
        orig = FlowTuple(ofam, oproto, osrc, odst, osport, odport)
        reply = FlowTuple(rfam, rproto, rsrc, rdst, rsport, rdport)
    elif oproto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        ofields = _icmp_fields(olayer4, "original", position)
        rfields = _icmp_fields(rlayer4, "reply", position)
        if ofields is None or rfields is None:
            return "ICMP flow %s -> %s: this conntrack's XML has no ICMP type, code and identifier" % (osrc, odst)
        orig = FlowTuple(ofam, oproto, osrc, odst, ofields[2], 0, ofields[0], ofields[1])
        reply = FlowTuple(rfam, rproto, rsrc, rdst, rfields[2], 0, rfields[0], rfields[1])
    elif oproto == IPPROTO_GRE:
        okeys, rkeys = _gre_keys(olayer4, "original", position), _gre_keys(rlayer4, "reply", position)
        orig = FlowTuple(ofam, oproto, osrc, odst, okeys[0], okeys[1])
        reply = FlowTuple(rfam, rproto, rsrc, rdst, rkeys[0], rkeys[1])
    else:
        # The generic tracker: addresses and the protocol number.
        orig = FlowTuple(ofam, oproto, osrc, odst, 0, 0)
        reply = FlowTuple(rfam, rproto, rsrc, rdst, 0, 0)

    status = IPS_CONFIRMED
    if independent.find("assured") is not None:
        status |= IPS_ASSURED
    if independent.find("unreplied") is None:
        status |= IPS_SEEN_REPLY
    timeout_text = independent.findtext("timeout")
    timeout = _int(timeout_text, "timeout", position, 0xFFFFFFFF) if timeout_text is not None else None
    mark_text = independent.findtext("mark")
    mark = _int(mark_text, "mark", position, 0xFFFFFFFF) if mark_text is not None else 0
    zone_text = independent.findtext("zone")
    if zone_text is None:
        zone_text = metas["original"].findtext("zone")
    zone = _int(zone_text, "zone", position, 0xFFFF) if zone_text is not None else 0
    labels_element = independent.find("labels")
    labels = _labels(labels_element, label_names, position) if labels_element is not None else None
    tcp_state = None
    if oproto == IPPROTO_TCP:
        state_text = (independent.findtext("state") or "").strip().upper()
        if state_text:
            if state_text not in TCP_STATE_BY_XML_NAME:
                raise ConntrackXmlError("flow %d: unknown TCP state %r" % (position, state_text))
            tcp_state = TCP_STATE_BY_XML_NAME[state_text]
    entry = ConntrackEntry(orig, reply, status, timeout, mark, zone, labels, tcp_state)
    nat_src, nat_dst = translation(entry)
    if nat_src is not None:
        status |= IPS_SRC_NAT
    if nat_dst is not None:
        status |= IPS_DST_NAT
    return entry._replace(status=status)


def parse_conntrack_xml(text, skipped=None, label_names=None):
    """ConntrackEntry objects for the flows of `conntrack -L -o xml` output, in their order.

    Flows that cannot become sessions (ICMP without its fields, other protocols) are left out;
    pass a list as `skipped` to receive (flow position, reason) for each. `label_names` maps
    label names (from connlabel.conf) to bit numbers. Raises ConntrackXmlError on bad input.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # Keep only the document: a trailing "N flow entries have been shown." may be pasted along.
    end = text.rfind("</conntrack>")
    if end >= 0:
        text = text[:end + len("</conntrack>")]
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise ConntrackXmlError("not conntrack XML output: %s" % exc)
    if root.tag != "conntrack":
        raise ConntrackXmlError("not conntrack XML output: the root element is <%s>, not <conntrack>" % root.tag)
    entries = []
    for position, flow in enumerate(root.findall("flow"), 1):
        result = _flow_entry(flow, position, label_names)
        if isinstance(result, str):
            if skipped is not None:
                skipped.append((position, result))
            continue
        entries.append(result)
    return entries
