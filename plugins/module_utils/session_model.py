# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Map kernel conntrack entries to ietf-nat mapping entries (RFC 7951 JSON) and back.

This runs on managed hosts, where no YANG library is installed, so the way back
(`mapping_to_entry`) is a strict checker of its own: every type, range, address and required
leaf is checked, and the first problem of an entry is raised as ModelError with the path of the
offending member relative to the entry ("internal-src-port/start-port-number").

The rule (docs/model.md): `nfstate-nat:initiator` says which side opened the session.
  internal: internal-src/dst = original src/dst, external-src = reply dst, external-dst = reply src
  external: external-src/dst = original src/dst, internal-src = reply dst, internal-dst = reply src
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket

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
    translation,
)

NS = "nfstate-nat:"
INITIATOR = NS + "initiator"
SEEN_REPLY = NS + "seen-reply"
ASSURED = NS + "assured"
MARK = NS + "mark"
ZONE = NS + "zone"
LABELS = NS + "labels"
TCP = NS + "tcp"
ICMP = NS + "icmp"

INTERNAL = "internal"
EXTERNAL = "external"
SESSION_TYPE = "dynamic-implicit"

# Bit names of typedef tcp-tracking-flags, by bit position (IP_CT_TCP_FLAG_*).
TCP_FLAG_NAMES = (
    "window-scale", "sack-permitted", "close-init", "be-liberal",
    "data-unacknowledged", "maxack-set", "challenge-ack", "simultaneous-open",
)

SUPPORTED_PROTOCOLS = (IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6)

_TCP_STATE_NUMBER = dict((name, number) for number, name in enumerate(TCP_STATES))
_FLAGS_TEXT = tuple(
    " ".join(name for bit, name in enumerate(TCP_FLAG_NAMES) if value & (1 << bit))
    for value in range(256)
)
_FLAG_BIT = dict((name, 1 << bit) for bit, name in enumerate(TCP_FLAG_NAMES))
_PREFIX_SUFFIX = {socket.AF_INET: "/32", socket.AF_INET6: "/128"}
_UINT32_MAX = 0xFFFFFFFF

_ENTRY_MEMBERS = frozenset((
    "index", "type", "transport-protocol",
    "internal-src-address", "internal-src-port", "external-src-address", "external-src-port",
    "internal-dst-address", "internal-dst-port", "external-dst-address", "external-dst-port",
    "lifetime", INITIATOR, SEEN_REPLY, ASSURED, MARK, ZONE, LABELS, TCP, ICMP,
))
_PORT_MEMBERS = frozenset(("start-port-number", "end-port-number"))
_TCP_MEMBERS = frozenset(("state", "original", "reply"))
_TCP_SIDE_MEMBERS = frozenset(("window-scale", "flags"))
_ICMP_MEMBERS = frozenset(("type", "code"))
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class ModelError(ValueError):
    """A mapping entry (or a selector) that does not describe a session we can re-create."""

    def __init__(self, path, message):
        self.path = path
        self.message = message
        super(ModelError, self).__init__("%s: %s" % (path or ".", message))


# ---------------------------------------------------------------- kernel entry -> mapping entry

def initiator(entry):
    """Which side opened the session: 'external' when the entry carries destination NAT."""
    nat_src, nat_dst = translation(entry)
    if nat_dst is not None:
        return EXTERNAL
    if nat_src is None and entry.status & IPS_DST_NAT and not entry.status & IPS_SRC_NAT:
        return EXTERNAL
    return INTERNAL


def _flags_text(flags):
    return _FLAGS_TEXT[flags & 0xFF]


def _tcp_side(wscale, flags):
    side = {}
    if wscale is not None:
        side["window-scale"] = wscale
    if flags is not None:
        side["flags"] = _flags_text(flags)
    return side


def entry_to_mapping(entry, index):
    """One mapping-entry (a dict ready for RFC 7951 JSON) for a kernel conntrack entry."""
    orig, reply = entry.orig, entry.reply
    proto = orig.proto
    suffix = _PREFIX_SUFFIX[orig.family]
    icmp = proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6
    # "near" is the packet as the initiator sent it, "far" as it left the NAT (the reply read
    # backwards). For ICMP the query identifier is the source port of both tuples, no dst port.
    near_src = {"start-port-number": orig.sport}
    far_src = {"start-port-number": reply.sport if icmp else reply.dport}
    side = initiator(entry)
    if side == INTERNAL:
        first, second = "internal", "external"
    else:
        first, second = "external", "internal"
    mapping = {
        "index": index,
        "type": SESSION_TYPE,
        "transport-protocol": proto,
    }
    src_addr = {first: orig.src + suffix, second: reply.dst + suffix}
    dst_addr = {first: orig.dst + suffix, second: reply.src + suffix}
    src_port = {first: near_src, second: far_src}
    mapping["internal-src-address"] = src_addr["internal"]
    mapping["internal-src-port"] = src_port["internal"]
    mapping["external-src-address"] = src_addr["external"]
    mapping["external-src-port"] = src_port["external"]
    if icmp:
        mapping["internal-dst-address"] = dst_addr["internal"]
        mapping["external-dst-address"] = dst_addr["external"]
    else:
        dst_port = {first: {"start-port-number": orig.dport},
                    second: {"start-port-number": reply.sport}}
        mapping["internal-dst-address"] = dst_addr["internal"]
        mapping["internal-dst-port"] = dst_port["internal"]
        mapping["external-dst-address"] = dst_addr["external"]
        mapping["external-dst-port"] = dst_port["external"]
    if entry.timeout is not None:
        mapping["lifetime"] = entry.timeout
    mapping[INITIATOR] = side
    mapping[SEEN_REPLY] = bool(entry.status & IPS_SEEN_REPLY)
    mapping[ASSURED] = bool(entry.status & IPS_ASSURED)
    mapping[MARK] = entry.mark or 0
    mapping[ZONE] = entry.zone or 0
    if entry.labels is not None:
        mapping[LABELS] = bytes(entry.labels).hex()
    if proto == IPPROTO_TCP:
        tcp = {}
        if entry.tcp_state is not None:
            tcp["state"] = TCP_STATES[entry.tcp_state]
        original = _tcp_side(entry.tcp_wscale_orig, entry.tcp_flags_orig)
        if original:
            tcp["original"] = original
        reply_side = _tcp_side(entry.tcp_wscale_reply, entry.tcp_flags_reply)
        if reply_side:
            tcp["reply"] = reply_side
        mapping[TCP] = tcp
    elif icmp:
        mapping[ICMP] = {"type": orig.icmp_type, "code": orig.icmp_code or 0}
    return mapping


def entries_to_mappings(entries, first_index=1):
    """Mapping entries for a list of kernel entries, indexed from first_index in the given order."""
    return [entry_to_mapping(entry, index) for index, entry in enumerate(entries, first_index)]


# ---------------------------------------------------------------- mapping entry -> kernel entry

_address_cache = {}


def _parse_prefix(value, path):
    """(family, address text as inet_ntop writes it) of a host prefix 'a.b.c.d/32' or 'x::y/128'."""
    try:
        return _address_cache[value]
    except (KeyError, TypeError):
        pass
    if not isinstance(value, str):
        raise ModelError(path, "expected an ip-prefix string, got %r" % (value,))
    address, slash, length = value.partition("/")
    if not slash:
        raise ModelError(path, "%r is not a prefix: add /32 or /128" % value)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        packed = socket.inet_pton(family, address)
    except (OSError, ValueError):
        raise ModelError(path, "%r is not a valid IP address" % address)
    if length != ("128" if family == socket.AF_INET6 else "32"):
        raise ModelError(path, "%r: a session address must be a host prefix (/32 or /128)" % value)
    result = (family, socket.inet_ntop(family, packed))
    if len(_address_cache) > 200000:
        _address_cache.clear()
    _address_cache[value] = result
    return result


def _uint(value, path, maximum):
    if value.__class__ is not int or value < 0 or value > maximum:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ModelError(path, "%d is out of range 0..%d" % (value, maximum))
        raise ModelError(path, "expected an integer 0..%d, got %r" % (maximum, value))
    return value


def _boolean(value, path):
    if value is not True and value is not False:
        raise ModelError(path, "expected true or false, got %r" % (value,))
    return value


def _object(value, path, members):
    if value.__class__ is not dict:
        raise ModelError(path, "expected an object, got %r" % (value,))
    for name in value:
        if name not in members:
            raise ModelError((path + "/" if path else "") + str(name), "unknown member")
    return value


def _port(mapping, name):
    container = mapping.get(name)
    if container is None:
        raise ModelError(name, "missing (required for this protocol)")
    _object(container, name, _PORT_MEMBERS)
    try:
        start = container["start-port-number"]
    except KeyError:
        raise ModelError(name + "/start-port-number", "missing")
    _uint(start, name + "/start-port-number", 0xFFFF)
    end = container.get("end-port-number")
    if end is not None and _uint(end, name + "/end-port-number", 0xFFFF) != start:
        raise ModelError(name + "/end-port-number", "a session has one port, not a range (%r..%r)" % (start, end))
    return start


def _tcp_side_state(tcp, name):
    side = tcp.get(name)
    if side is None:
        return None, None
    path = TCP + "/" + name
    _object(side, path, _TCP_SIDE_MEMBERS)
    wscale = side.get("window-scale")
    if wscale is not None:
        _uint(wscale, path + "/window-scale", 14)
    flags = side.get("flags")
    if flags is not None:
        flags = _flags_value(flags, path + "/flags")
    return wscale, flags


def _flags_value(text, path):
    if not isinstance(text, str):
        raise ModelError(path, "expected a space-separated list of flag names, got %r" % (text,))
    value = 0
    for name in text.split():
        try:
            value |= _FLAG_BIT[name]
        except KeyError:
            raise ModelError(path, "unknown TCP tracking flag %r" % name)
    return value


def mapping_to_entry(mapping):
    """The kernel entry (as the kernel would dump it) that a mapping entry describes.

    The reply tuple is the translated one, status carries CONFIRMED, SEEN_REPLY/ASSURED as
    given and the NAT bits the tuples imply. Raises ModelError on anything malformed.
    """
    _object(mapping, "", _ENTRY_MEMBERS)
    if "index" not in mapping:
        raise ModelError("index", "missing (the list key)")
    _uint(mapping["index"], "index", _UINT32_MAX)
    kind = mapping.get("type", SESSION_TYPE)
    if kind not in ("dynamic-implicit", "dynamic-explicit"):
        if kind == "static":
            raise ModelError("type", "a static mapping is configuration, not a session")
        raise ModelError("type", "unknown mapping type %r" % (kind,))
    proto = mapping.get("transport-protocol")
    if proto is None:
        raise ModelError("transport-protocol", "missing")
    _uint(proto, "transport-protocol", 0xFF)
    if proto not in SUPPORTED_PROTOCOLS:
        raise ModelError("transport-protocol", "protocol %d is not supported (TCP, UDP, ICMP, ICMPv6)" % proto)
    icmp = proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6

    side = mapping.get(INITIATOR)
    if side is None:
        raise ModelError(INITIATOR, "missing: which side opened the session")
    if side != INTERNAL and side != EXTERNAL:
        raise ModelError(INITIATOR, "expected 'internal' or 'external', got %r" % (side,))

    family = None
    addresses = {}
    for name in ("internal-src-address", "external-src-address", "internal-dst-address", "external-dst-address"):
        value = mapping.get(name)
        if value is None:
            raise ModelError(name, "missing")
        fam, address = _parse_prefix(value, name)
        if family is None:
            family = fam
        elif fam != family:
            raise ModelError(name, "mixes IPv4 and IPv6 in one session")
        addresses[name] = address
    if proto == IPPROTO_ICMP and family != socket.AF_INET:
        raise ModelError("transport-protocol", "ICMP (1) with IPv6 addresses: use 58 (ICMPv6)")
    if proto == IPPROTO_ICMPV6 and family != socket.AF_INET6:
        raise ModelError("transport-protocol", "ICMPv6 (58) with IPv4 addresses: use 1 (ICMP)")

    internal_sport = _port(mapping, "internal-src-port")
    external_sport = _port(mapping, "external-src-port")
    if icmp:
        for name in ("internal-dst-port", "external-dst-port"):
            if name in mapping:
                raise ModelError(name, "an ICMP session has no destination port (its identifier is in the src ports)")
        internal_dport = external_dport = 0
    else:
        internal_dport = _port(mapping, "internal-dst-port")
        external_dport = _port(mapping, "external-dst-port")

    if "lifetime" not in mapping:
        raise ModelError("lifetime", "missing: the remaining timeout is needed to re-create the session")
    timeout = _uint(mapping["lifetime"], "lifetime", _UINT32_MAX)

    status = IPS_CONFIRMED
    if _boolean(mapping.get(SEEN_REPLY, False), SEEN_REPLY):
        status |= IPS_SEEN_REPLY
    if _boolean(mapping.get(ASSURED, False), ASSURED):
        status |= IPS_ASSURED
    mark = _uint(mapping.get(MARK, 0), MARK, _UINT32_MAX)
    zone = _uint(mapping.get(ZONE, 0), ZONE, 0xFFFF)
    labels = mapping.get(LABELS)
    if labels is not None:
        if not isinstance(labels, str) or len(labels) != 32 or not _HEX_DIGITS.issuperset(labels):
            raise ModelError(LABELS, "expected 32 hexadecimal digits, got %r" % (labels,))
        labels = bytes.fromhex(labels)

    if side == INTERNAL:
        near, far = "internal", "external"
        near_sport, near_dport, far_sport, far_dport = internal_sport, internal_dport, external_sport, external_dport
    else:
        near, far = "external", "internal"
        near_sport, near_dport, far_sport, far_dport = external_sport, external_dport, internal_sport, internal_dport
    o_src, o_dst = addresses[near + "-src-address"], addresses[near + "-dst-address"]
    r_src, r_dst = addresses[far + "-dst-address"], addresses[far + "-src-address"]

    tcp_state = wscale_orig = wscale_reply = flags_orig = flags_reply = None
    if TCP in mapping and proto != IPPROTO_TCP:
        raise ModelError(TCP, "TCP state on a protocol %d session" % proto)
    if ICMP in mapping and not icmp:
        raise ModelError(ICMP, "ICMP state on a protocol %d session" % proto)
    if icmp:
        info = mapping.get(ICMP)
        if info is None:
            raise ModelError(ICMP, "missing: the ICMP type of the query")
        _object(info, ICMP, _ICMP_MEMBERS)
        if "type" not in info:
            raise ModelError(ICMP + "/type", "missing")
        icmp_type = _uint(info["type"], ICMP + "/type", 0xFF)
        icmp_code = _uint(info.get("code", 0), ICMP + "/code", 0xFF)
        replies = ICMP_REPLY_TYPE if proto == IPPROTO_ICMP else ICMPV6_REPLY_TYPE
        orig = FlowTuple(family, proto, o_src, o_dst, near_sport, 0, icmp_type, icmp_code)
        reply = FlowTuple(family, proto, r_src, r_dst, far_sport, 0, replies.get(icmp_type, icmp_type), icmp_code)
    else:
        orig = FlowTuple(family, proto, o_src, o_dst, near_sport, near_dport)
        reply = FlowTuple(family, proto, r_src, r_dst, far_dport, far_sport)
        if proto == IPPROTO_TCP:
            tcp = mapping.get(TCP)
            if tcp is None:
                raise ModelError(TCP, "missing: the TCP state of the session")
            _object(tcp, TCP, _TCP_MEMBERS)
            state = tcp.get("state")
            if state is None:
                raise ModelError(TCP + "/state", "missing")
            try:
                tcp_state = _TCP_STATE_NUMBER[state]
            except (KeyError, TypeError):
                raise ModelError(TCP + "/state", "unknown TCP state %r" % (state,))
            wscale_orig, flags_orig = _tcp_side_state(tcp, "original")
            wscale_reply, flags_reply = _tcp_side_state(tcp, "reply")

    entry = ConntrackEntry(
        orig, reply, status, timeout, mark, zone, labels,
        tcp_state, wscale_orig, wscale_reply, flags_orig, flags_reply,
    )
    nat_src, nat_dst = translation(entry)
    if nat_src is not None:
        status |= IPS_SRC_NAT
    if nat_dst is not None:
        status |= IPS_DST_NAT
    return entry._replace(status=status)


# ---------------------------------------------------------------- identity and selection

def session_key(entry):
    """What identifies a session in a conntrack table: its zone and its original tuple."""
    return (entry.zone, entry.orig)


def owned_addresses(entry):
    """The addresses the NAT owns in this session: the translated source (source NAT) and the
    original destination (destination NAT)."""
    nat_src, nat_dst = translation(entry)
    owned = []
    if nat_src is not None:
        owned.append(nat_src[0])
    if nat_dst is not None:
        owned.append(entry.orig.dst)
    return owned


_SELECTOR_KEYS = frozenset(("addresses", "zone", "mark", "mark_mask"))


def _networks(prefixes):
    """Parse prefixes into {family: [(network int, mask int)]}."""
    result = {socket.AF_INET: [], socket.AF_INET6: []}
    for position, prefix in enumerate(prefixes):
        path = "addresses/%d" % position
        if not isinstance(prefix, str):
            raise ModelError(path, "expected an address or prefix string, got %r" % (prefix,))
        address, slash, length = prefix.partition("/")
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        bits = 128 if family == socket.AF_INET6 else 32
        try:
            value = int.from_bytes(socket.inet_pton(family, address), "big")
        except (OSError, ValueError):
            raise ModelError(path, "%r is not a valid IP address or prefix" % prefix)
        if slash:
            if not length.isdigit() or int(length) > bits:
                raise ModelError(path, "%r has an invalid prefix length" % prefix)
            plen = int(length)
        else:
            plen = bits
        mask = ((1 << plen) - 1) << (bits - plen)
        result[family].append((value & mask, mask))
    return result


def _address_matcher(prefixes):
    networks = _networks(prefixes)
    cache = {}

    def matches(address):
        try:
            return cache[address]
        except KeyError:
            pass
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        value = int.from_bytes(socket.inet_pton(family, address), "big")
        found = any(value & mask == net for net, mask in networks[family])
        cache[address] = found
        return found
    return matches


def select(entries, selectors):
    """The entries that belong to the network function, as the operator's selectors say.

    selectors: {addresses: [prefixes], zone: int, mark: int, mark_mask: int}, each optional.
    `addresses` matches the addresses the NAT owns in a session (see owned_addresses), so an
    untranslated entry never matches it. An empty selector keeps every entry.
    """
    selectors = selectors or {}
    if not isinstance(selectors, dict):
        raise ModelError("", "selectors must be a mapping")
    unknown = set(selectors) - _SELECTOR_KEYS
    if unknown:
        raise ModelError(sorted(unknown)[0], "unknown selector (known: %s)" % ", ".join(sorted(_SELECTOR_KEYS)))
    tests = []
    zone = selectors.get("zone")
    if zone is not None:
        _uint(zone, "zone", 0xFFFF)
        tests.append(lambda entry: entry.zone == zone)
    mark = selectors.get("mark")
    mask = selectors.get("mark_mask")
    if mask is not None:
        _uint(mask, "mark_mask", _UINT32_MAX)
    if mark is not None:
        _uint(mark, "mark", _UINT32_MAX)
        mask = _UINT32_MAX if mask is None else mask
        wanted = mark & mask
        tests.append(lambda entry: (entry.mark or 0) & mask == wanted)
    elif mask is not None:
        raise ModelError("mark_mask", "given without mark")
    prefixes = selectors.get("addresses")
    if prefixes is not None:
        if isinstance(prefixes, str) or not isinstance(prefixes, (list, tuple)):
            raise ModelError("addresses", "expected a list of addresses or prefixes")
        matches = _address_matcher(prefixes)

        def owned_match(entry):
            orig, reply = entry.orig, entry.reply
            nat_src, nat_dst = translation(entry)
            return ((nat_src is not None and matches(reply.dst))
                    or (nat_dst is not None and matches(orig.dst)))
        tests.append(owned_match)
    if not tests:
        return list(entries)
    return [entry for entry in entries if all(test(entry) for test in tests)]
