# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hypothesis strategies shared by the property-based tests: kernel conntrack entries of every
protocol the model maps, and mutations of mapping entries drawn from the YANG model itself.

Entries are built as the kernel dumps them: the original tuple, the translated reply tuple, and
the status bits the tuples imply (the NAT bits cannot be set by hand), so that a round trip
through the model must give back exactly the same entry.
"""

import copy
import ipaddress
import socket

from hypothesis import strategies as st

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    ConntrackEntry,
    FlowTuple,
    ICMP_REPLY_TYPE,
    ICMPV6_REPLY_TYPE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    TCP_STATES,
)

V4, V6 = socket.AF_INET, socket.AF_INET6
UINT32 = 0xFFFFFFFF

# Documentation ranges only (RFC 5737, RFC 3849).
_V4_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
_V6_NET = ipaddress.ip_network("2001:db8::/32")


def addresses(family):
    """Addresses in canonical text (as socket.inet_ntop writes them)."""
    if family == V4:
        return st.builds(lambda net, host: str(net[host]), st.sampled_from(_V4_NETS), st.integers(0, 255))
    return st.integers(0, (1 << 96) - 1).map(lambda host: str(_V6_NET[host]))


ports = st.integers(0, 0xFFFF)


def _another_address(family, address):
    """A documentation address of `family` other than `address`."""
    choices = ("192.0.2.254", "192.0.2.253") if family == V4 else ("2001:db8::fe", "2001:db8::fd")
    return choices[0] if address != choices[0] else choices[1]


@st.composite
def _translated(draw, family, proto):
    """(orig, reply, nat status bits): a session through a NAT, source, destination or both."""
    icmp = proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)
    ported = proto in (IPPROTO_TCP, IPPROTO_UDP)
    src, dst = draw(addresses(family)), draw(addresses(family))
    sport = draw(ports) if ported or icmp else 0
    dport = draw(ports) if ported else 0
    kind = draw(st.sampled_from(("snat", "dnat", "both")))
    nat_src, nat_sport, nat_dst, nat_dport = src, sport, dst, dport
    status = 0
    if kind in ("snat", "both"):
        nat_src, nat_sport = draw(addresses(family)), (draw(ports) if ported or icmp else 0)
        if (nat_src, nat_sport) != (src, sport):
            status |= IPS_SRC_NAT
    if kind in ("dnat", "both"):
        nat_dst = draw(addresses(family))
        nat_dport = draw(ports) if ported else 0
        if (nat_dst, nat_dport) != (dst, dport):
            status |= IPS_DST_NAT
    if not status:
        # Drawn the same by chance: translate the source, as a masquerade would.
        if ported or icmp:
            nat_sport = (sport + 1) & 0xFFFF
        else:
            nat_src = _another_address(family, src)
        status |= IPS_SRC_NAT
    if icmp:
        icmp_type, code = draw(st.integers(0, 255)), draw(st.integers(0, 255))
        replies = ICMP_REPLY_TYPE if proto == IPPROTO_ICMP else ICMPV6_REPLY_TYPE
        # The identifier stands in the source field of both tuples, the translated one in the reply.
        orig = FlowTuple(family, proto, src, dst, sport, 0, icmp_type, code)
        reply = FlowTuple(family, proto, nat_dst, nat_src, nat_sport, 0, replies.get(icmp_type, icmp_type), code)
    else:
        orig = FlowTuple(family, proto, src, dst, sport, dport)
        reply = FlowTuple(family, proto, nat_dst, nat_src, nat_dport, nat_sport)
    return orig, reply, status


# The protocols drawn: those with ports or an ICMP identifier, and two the kernel tracks by address
# only (ESP, AH). GRE, whose sessions carry keys, has tests of its own (test_session_model).
SUPPORTED_PROTOCOLS = (IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, 50, 51)

# The families each protocol runs over; any other protocol the model maps is drawn as an
# address-only session (no ports), over either family.
_FAMILIES = {IPPROTO_TCP: (V4, V6), IPPROTO_UDP: (V4, V6), IPPROTO_ICMP: (V4,), IPPROTO_ICMPV6: (V6,)}


@st.composite
def conntrack_entries(draw, protocols=SUPPORTED_PROTOCOLS):
    """A kernel entry of one of `protocols` (default: every one the model maps), translated, with
    everything the model carries."""
    proto = draw(st.sampled_from(protocols))
    family = draw(st.sampled_from(_FAMILIES.get(proto, (V4, V6))))
    orig, reply, status = draw(_translated(family, proto))
    status |= IPS_CONFIRMED
    if draw(st.booleans()):
        status |= IPS_SEEN_REPLY
    if draw(st.booleans()):
        status |= IPS_ASSURED
    fields = dict(
        timeout=draw(st.integers(0, UINT32)),
        mark=draw(st.integers(0, UINT32)),
        zone=draw(st.integers(0, 0xFFFF)),
        labels=draw(st.none() | st.binary(min_size=16, max_size=16)),
    )
    if proto == IPPROTO_TCP:
        optional_wscale = st.none() | st.integers(0, 14)
        optional_flags = st.none() | st.integers(0, 255)
        fields.update(
            tcp_state=draw(st.integers(0, len(TCP_STATES) - 1)),
            tcp_wscale_orig=draw(optional_wscale), tcp_wscale_reply=draw(optional_wscale),
            tcp_flags_orig=draw(optional_flags), tcp_flags_reply=draw(optional_flags),
        )
    return ConntrackEntry(orig, reply, status, **fields)


# ---------------------------------------------------------------- mutations from the YANG model

def leaf_paths(schema_node):
    """[(member path as a tuple of JSON member names, yangson type)] of every leaf under a schema node."""
    from yangson.schemanode import InternalNode, LeafNode
    found = []

    def walk(node, path):
        for child in node.data_children():
            name = path + (child.iname(),)
            if isinstance(child, LeafNode):
                found.append((name, child.type))
            elif isinstance(child, InternalNode):
                walk(child, name)
    walk(schema_node, ())
    return found


_INTEGRAL_BOUNDS = {"Int8Type": (-128, 127), "Int16Type": (-32768, 32767), "Int32Type": (-(1 << 31), (1 << 31) - 1),
                    "Uint8Type": (0, 255), "Uint16Type": (0, 0xFFFF), "Uint32Type": (0, UINT32)}
# Containers are built afresh each time: one object in two places of an entry is not JSON.
_ODD = st.one_of(st.sampled_from([None, True, False, 1.5, "", "x", -1, 1 << 64]),
                 st.builds(list), st.builds(dict), st.builds(lambda: [None]))


def values_for(dtype):
    """Values for a leaf of type `dtype`: near its bounds, of its kind but anything, or of another JSON type."""
    kind = type(dtype).__name__
    if kind in _INTEGRAL_BOUNDS:
        low, high = _INTEGRAL_BOUNDS[kind]
        ranges = getattr(dtype, "range", None)
        if ranges is not None:
            low, high = ranges.intervals[0][0], ranges.intervals[-1][-1]
        edges = st.sampled_from([low - 1, low, high, high + 1])
        return st.one_of(edges, st.integers(low - 5, high + 5), st.integers().map(str), _ODD)
    if kind == "EnumerationType":
        return st.one_of(st.sampled_from(sorted(dtype.enum)), st.text(max_size=12), _ODD)
    if kind == "BitsType":
        names = sorted(dtype.bit)
        return st.one_of(st.lists(st.sampled_from(names + ["bogus"]), max_size=4).map(" ".join), _ODD)
    if kind == "BooleanType":
        return st.one_of(st.booleans(), st.sampled_from(["true", 0, 1]), _ODD)
    if kind == "EmptyType":
        return st.one_of(st.just([None]), _ODD)
    prefixes = st.one_of(
        st.builds(lambda a, n: "%s/%d" % (a, n), addresses(V4), st.integers(0, 33)),
        st.builds(lambda a, n: "%s/%d" % (a, n), addresses(V6), st.integers(0, 129)),
        addresses(V4), addresses(V6),
    )
    return st.one_of(prefixes, st.text(alphabet="0123456789abcdef:./%g", max_size=48), _ODD)


def _member_paths(mapping, prefix=()):
    paths = []
    for name, value in mapping.items():
        paths.append(prefix + (name,))
        if isinstance(value, dict):
            paths.extend(_member_paths(value, prefix + (name,)))
    return paths


def _container(mapping, path):
    node = mapping
    for name in path[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    return node


@st.composite
def mutations(draw, mapping, leaves):
    """A copy of a mapping entry with 1 to 3 changes: a leaf of the model set to a drawn value,
    a member removed, an unknown member added, or a container made a scalar."""
    changed = copy.deepcopy(mapping)
    for dummy in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(("set", "set", "set", "drop", "add", "flatten")))
        if action == "set":
            path, dtype = draw(st.sampled_from(leaves))
            _container(changed, path)[path[-1]] = draw(values_for(dtype))
        elif action == "drop":
            present = _member_paths(changed)
            if present:
                path = draw(st.sampled_from(present))
                _container(changed, path).pop(path[-1], None)
        elif action == "add":
            targets = [()] + [p for p in _member_paths(changed) if isinstance(_container(changed, p).get(p[-1]), dict)]
            where = draw(st.sampled_from(targets))
            node = changed
            for name in where:
                node = node[name]
            node[draw(st.sampled_from(["bogus", "nfstate-nat:bogus", "ietf-nat:index", "tcp"]))] = draw(_ODD)
        else:
            containers = [p for p in _member_paths(changed) if isinstance(_container(changed, p).get(p[-1]), dict)]
            if containers:
                path = draw(st.sampled_from(containers))
                _container(changed, path)[path[-1]] = draw(_ODD)
    return changed


# ---------------------------------------------------------------- documents and their bytes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 40), 1 << 40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _containers(value, path=()):
    """Paths of every object in a document, outside the mapping entries."""
    found = [path] if isinstance(value, dict) else []
    if isinstance(value, dict):
        for name, member in value.items():
            if name != "mapping-entry":
                found.extend(_containers(member, path + (name,)))
    elif isinstance(value, list):
        for position, member in enumerate(value):
            found.extend(_containers(member, path + (position,)))
    return found


@st.composite
def document_mutations(draw, doc):
    """A copy of a document with a member of one of its objects (outside the sessions) set to a
    drawn JSON value, a known or an unknown member name."""
    changed = copy.deepcopy(doc)
    path = draw(st.sampled_from(_containers(changed)))
    node = changed
    for step in path:
        node = node[step]
    name = draw(st.sampled_from(sorted(node) + ["bogus", "nfstate-nat:bogus", "ietf-nat:nat", "id", "name"]))
    node[name] = draw(json_values)
    return changed


@st.composite
def damaged_bytes(draw, data):
    """`data` with a few bytes inserted, deleted or replaced."""
    data = bytearray(data)
    for dummy in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(("insert", "delete", "replace")))
        byte = draw(st.sampled_from(b'{}[]",:\\ 0aN\xff\x00'))
        if action == "insert":
            data[position:position] = bytes([byte])
        elif position < len(data):
            data[position:position + 1] = b"" if action == "delete" else bytes([byte])
    return bytes(data)
