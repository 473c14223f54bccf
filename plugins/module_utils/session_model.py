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

Every protocol the kernel tracks is carried, each as its tracker sees it: TCP, UDP and UDP-Lite with
ports, ICMP and ICMPv6 with their query, GRE with its keys (translated by address), and every
protocol of the generic tracker (ESP, AH, ...) by its addresses alone. What cannot be re-created
elsewhere (see unsupported_reason) is never emitted: entries_to_mappings() lists it instead.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gc
import operator
import socket

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    PROTOCOL_NAMES,
    ConntrackEntry,
    FlowTuple,
    ICMP_REPLY_TYPE,
    ICMPV6_REPLY_TYPE,
    IPPROTO_DCCP,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_EXPECTED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    TCP_STATES,
    describe,
    gre_keys_translated,
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
GRE = NS + "gre"
REMOVED = NS + "removed"
# An untranslated session forwarded through the host: the firewall's (yang/nfstate-firewall.yang).
FORWARDED = "nfstate-firewall:forwarded"

INTERNAL = "internal"
EXTERNAL = "external"
SESSION_TYPE = "dynamic-implicit"

# Bit names of typedef tcp-tracking-flags, by bit position (IP_CT_TCP_FLAG_*).
TCP_FLAG_NAMES = (
    "window-scale", "sack-permitted", "close-init", "be-liberal",
    "data-unacknowledged", "maxack-set", "challenge-ack", "simultaneous-open",
)

# Sessions with ports in the model (the four port containers): the port trackers we carry.
PORT_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE)
_PORTS = frozenset(PORT_PROTOCOLS)
_ICMPS = frozenset((IPPROTO_ICMP, IPPROTO_ICMPV6))
# Trackers that keep a state machine of their own which the model does not carry: a session
# re-created without it would be dropped by the target's tracker as invalid (or, for a kernel
# without the tracker, DCCP is generic there and not here). Listed by the gather, never emitted.
UNCARRIED_PROTOCOLS = {
    IPPROTO_SCTP: "SCTP is tracked with its association state and verification tags, which the model does not carry",
    IPPROTO_DCCP: "DCCP is tracked with its own state and roles on most kernels, which the model does not carry",
}
# Protocols whose entries need a closer look before they are emitted (see unsupported_reason).
_CHECKED = frozenset(UNCARRIED_PROTOCOLS) | frozenset((IPPROTO_GRE,))
_PROTOCOL_OF = operator.attrgetter("orig.proto")

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
    "lifetime", INITIATOR, SEEN_REPLY, ASSURED, MARK, ZONE, LABELS, TCP, ICMP, GRE, REMOVED,
    # The ALG augment's members (yang/nfstate-nat-alg.yang): checked by alg_model, not here.
    "nfstate-nat-alg:helper", "nfstate-nat-alg:sequence-adjustment", "nfstate-nat-alg:master",
    FORWARDED,
))
_PORT_MEMBERS = frozenset(("start-port-number", "end-port-number"))
_TCP_MEMBERS = frozenset(("state", "original", "reply"))
_TCP_SIDE_MEMBERS = frozenset(("window-scale", "flags"))
_ICMP_MEMBERS = frozenset(("type", "code"))
_GRE_MEMBERS = frozenset(("source-key", "destination-key"))
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


def unsupported_reason(entry):
    """Why an entry cannot be re-created elsewhere (a sentence), or None when it can.

    SCTP and DCCP keep tracker state the model does not carry. A GRE session whose keys were
    translated, or that the PPTP helper made from its control connection's expectation
    (IPS_EXPECTED), depends on that helper: only it translates keys, and only its keymap gives
    the target's tracker the key a packet is looked up by. A re-created entry has no such parent.
    """
    proto = entry.orig.proto
    if proto not in _CHECKED:
        return None
    if proto == IPPROTO_GRE:
        if gre_keys_translated(entry):
            return "its GRE keys were translated, which only the PPTP helper of its control connection does"
        if entry.status & IPS_EXPECTED:
            return ("the PPTP helper made it from its control connection's expectation; its keys are looked up"
                    " through that helper's keymap, which a re-created session does not have")
        return None
    return UNCARRIED_PROTOCOLS[proto]


def entry_to_mapping(entry, index):
    """One mapping-entry (a dict ready for RFC 7951 JSON) for a kernel conntrack entry.

    The caller keeps out the entries unsupported_reason() refuses (entries_to_mappings does)."""
    orig, reply = entry.orig, entry.reply
    proto = orig.proto
    suffix = _PREFIX_SUFFIX[orig.family]
    ports = proto in _PORTS
    icmp = not ports and (proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6)
    # The original tuple is the packet as the initiator sent it; the reply tuple read backwards
    # is the packet as it left the NAT. ICMP: the query identifier is the source "port" of both
    # tuples and there is no destination port. GRE and the generic tracker: no ports at all.
    near_src, near_dst = orig.src + suffix, orig.dst + suffix
    far_src, far_dst = reply.dst + suffix, reply.src + suffix
    # initiator(), inlined: this runs once per session of a table of 100k.
    if reply.src != orig.dst or (ports and reply.sport != orig.dport):
        side = EXTERNAL
    elif entry.status & IPS_DST_NAT and not entry.status & IPS_SRC_NAT and far_src == near_src \
            and (reply.sport if icmp else reply.dport) == orig.sport:
        side = EXTERNAL
    else:
        side = INTERNAL
    # The side that opened the session is the "near" one; the other sees the translated tuple.
    if side == INTERNAL:
        in_src, ex_src, in_dst, ex_dst = near_src, far_src, near_dst, far_dst
    else:
        in_src, ex_src, in_dst, ex_dst = far_src, near_src, far_dst, near_dst
    mapping = {"index": index, "type": SESSION_TYPE, "transport-protocol": proto,
               "internal-src-address": in_src}
    if ports or icmp:
        near_sport = {"start-port-number": orig.sport}
        far_sport = {"start-port-number": reply.sport if icmp else reply.dport}
        mapping["internal-src-port"] = near_sport if side == INTERNAL else far_sport
        mapping["external-src-address"] = ex_src
        mapping["external-src-port"] = far_sport if side == INTERNAL else near_sport
    else:
        mapping["external-src-address"] = ex_src
    mapping["internal-dst-address"] = in_dst
    if ports:
        near_dport, far_dport = orig.dport, reply.sport
        mapping["internal-dst-port"] = {"start-port-number": near_dport if side == INTERNAL else far_dport}
    mapping["external-dst-address"] = ex_dst
    if ports:
        mapping["external-dst-port"] = {"start-port-number": far_dport if side == INTERNAL else near_dport}
    if entry.timeout is not None:
        mapping["lifetime"] = entry.timeout
    status = entry.status
    mapping[INITIATOR] = side
    mapping[SEEN_REPLY] = bool(status & IPS_SEEN_REPLY)
    mapping[ASSURED] = bool(status & IPS_ASSURED)
    mapping[MARK] = entry.mark or 0
    mapping[ZONE] = entry.zone or 0
    if entry.labels is not None:
        mapping[LABELS] = bytes(entry.labels).hex()
    if proto == IPPROTO_TCP:
        tcp = {}
        if entry.tcp_state is not None:
            tcp["state"] = TCP_STATES[entry.tcp_state]
        if entry.tcp_wscale_orig is not None or entry.tcp_flags_orig is not None:
            tcp["original"] = _tcp_side(entry.tcp_wscale_orig, entry.tcp_flags_orig)
        if entry.tcp_wscale_reply is not None or entry.tcp_flags_reply is not None:
            tcp["reply"] = _tcp_side(entry.tcp_wscale_reply, entry.tcp_flags_reply)
        mapping[TCP] = tcp
    elif icmp:
        mapping[ICMP] = {"type": orig.icmp_type, "code": orig.icmp_code or 0}
    elif proto == IPPROTO_GRE:
        mapping[GRE] = {"source-key": orig.sport or 0, "destination-key": orig.dport or 0}
    if translation(entry) == (None, None):
        # Only the firewall carries such a session (the selector `forwarded` lets it in); the flag
        # says it is untranslated on purpose.
        mapping[FORWARDED] = True
    return mapping


class GcPaused(object):
    """Pause the cyclic garbage collector while a big list of small objects is built.

    Building 100k mapping entries allocates a million dicts; the collector would walk them all
    again and again (it doubled the time here) although none of them can form a cycle.
    """

    def __enter__(self):
        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.enabled:
            gc.enable()


def entries_to_mappings(entries, first_index=1, unsupported=None):
    """Mapping entries for kernel entries, indexed from first_index in the given order.

    An entry that cannot be re-created elsewhere (unsupported_reason) is left out, never emitted
    to fail on the target: "<session>: <reason>" is appended to the list `unsupported` if given.
    """
    with GcPaused():
        if _CHECKED.isdisjoint(map(_PROTOCOL_OF, entries)):  # C-level scan: the common case
            return [entry_to_mapping(entry, index) for index, entry in enumerate(entries, first_index)]
        mappings = []
        for entry in entries:
            reason = unsupported_reason(entry)
            if reason is None:
                mappings.append(entry_to_mapping(entry, first_index + len(mappings)))
            elif unsupported is not None:
                unsupported.append("%s: %s" % (describe(entry), reason))
        return mappings


def split_supported(entries):
    """(entries that can be re-created elsewhere, ["<session>: <reason>"] for the others)."""
    supported, unsupported = [], []
    for entry in entries:
        reason = unsupported_reason(entry)
        if reason is None:
            supported.append(entry)
        else:
            unsupported.append("%s: %s" % (describe(entry), reason))
    return supported, unsupported


def mappings_to_entries(mappings):
    """Kernel entries for mapping entries; raises ModelError (path relative to the entry) at the
    first bad one. document_entries() in nat_document reports all of them with full paths."""
    with GcPaused():
        return [mapping_to_entry(mapping) for mapping in mappings]


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
    if container.__class__ is dict and len(container) == 1:
        start = container.get("start-port-number")
        if start.__class__ is int and 0 <= start <= 0xFFFF:
            return start
    if container is None:
        raise ModelError(name, "missing (required for this protocol)")
    _object(container, name, _PORT_MEMBERS)
    if "start-port-number" not in container:
        raise ModelError(name + "/start-port-number", "missing")
    start = _uint(container["start-port-number"], name + "/start-port-number", 0xFFFF)
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


_flags_cache = {}


def _flags_value(text, path):
    try:
        return _flags_cache[text]
    except (KeyError, TypeError):
        pass
    if not isinstance(text, str):
        raise ModelError(path, "expected a space-separated list of flag names, got %r" % (text,))
    value = 0
    for name in text.split():
        try:
            value |= _FLAG_BIT[name]
        except KeyError:
            raise ModelError(path, "unknown TCP tracking flag %r" % name)
    if len(_flags_cache) < 4096:
        _flags_cache[text] = value
    return value


def _address(mapping, name):
    value = mapping.get(name)
    if value is None:
        raise ModelError(name, "missing")
    return _parse_prefix(value, name)


def _tcp_info(mapping):
    tcp = mapping.get(TCP)
    if tcp is None:
        raise ModelError(TCP, "missing: the TCP state of the session")
    _object(tcp, TCP, _TCP_MEMBERS)
    state = tcp.get("state")
    if state is None:
        raise ModelError(TCP + "/state", "missing")
    try:
        number = _TCP_STATE_NUMBER[state]
    except (KeyError, TypeError):
        raise ModelError(TCP + "/state", "unknown TCP state %r" % (state,))
    wscale_orig, flags_orig = _tcp_side_state(tcp, "original")
    wscale_reply, flags_reply = _tcp_side_state(tcp, "reply")
    return number, wscale_orig, wscale_reply, flags_orig, flags_reply


def _icmp_info(mapping):
    info = mapping.get(ICMP)
    if info is None:
        raise ModelError(ICMP, "missing: the ICMP type of the query")
    _object(info, ICMP, _ICMP_MEMBERS)
    if "type" not in info:
        raise ModelError(ICMP + "/type", "missing")
    return _uint(info["type"], ICMP + "/type", 0xFF), _uint(info.get("code", 0), ICMP + "/code", 0xFF)


def _gre_keys(mapping):
    keys = mapping.get(GRE)
    if keys is None:
        raise ModelError(GRE, "missing: the GRE keys of the session")
    _object(keys, GRE, _GRE_MEMBERS)
    for name in ("source-key", "destination-key"):
        if name not in keys:
            raise ModelError(GRE + "/" + name, "missing")
    return (_uint(keys["source-key"], GRE + "/source-key", 0xFFFF),
            _uint(keys["destination-key"], GRE + "/destination-key", 0xFFFF))


_new_tuple = tuple.__new__
_NO_TCP = (None, None, None, None, None)
_NO_ALG = (None,)  # ConntrackEntry.alg: nat_document attaches the ALG members' state


def mapping_to_entry(mapping):
    """The kernel entry (as the kernel would dump it) that a mapping entry describes.

    The reply tuple is the translated one; status carries CONFIRMED, SEEN_REPLY/ASSURED as given
    and the NAT bits the tuples imply. Raises ModelError on anything malformed.
    """
    if mapping.__class__ is not dict:
        raise ModelError("", "expected an object, got %r" % (mapping,))
    if not _ENTRY_MEMBERS.issuperset(mapping):
        _object(mapping, "", _ENTRY_MEMBERS)
    index = mapping.get("index")
    if index.__class__ is not int or not 0 <= index <= _UINT32_MAX:
        if index is None:
            raise ModelError("index", "missing (the list key)")
        _uint(index, "index", _UINT32_MAX)
    kind = mapping.get("type", SESSION_TYPE)
    if kind != SESSION_TYPE and kind != "dynamic-explicit":
        if kind == "static":
            raise ModelError("type", "a static mapping is configuration, not a session")
        raise ModelError("type", "unknown mapping type %r" % (kind,))
    proto = mapping.get("transport-protocol")
    if proto.__class__ is not int or not 0 <= proto <= 0xFF or proto in UNCARRIED_PROTOCOLS:
        if proto is None:
            raise ModelError("transport-protocol", "missing")
        _uint(proto, "transport-protocol", 0xFF)
        raise ModelError("transport-protocol", "protocol %d is not carried: %s" % (proto, UNCARRIED_PROTOCOLS[proto]))
    ports = proto in _PORTS
    icmp = proto in _ICMPS

    side = mapping.get(INITIATOR)
    if side != INTERNAL and side != EXTERNAL:
        if side is None:
            raise ModelError(INITIATOR, "missing: which side opened the session")
        raise ModelError(INITIATOR, "expected 'internal' or 'external', got %r" % (side,))

    family, internal_src = _address(mapping, "internal-src-address")
    fam1, external_src = _address(mapping, "external-src-address")
    fam2, internal_dst = _address(mapping, "internal-dst-address")
    fam3, external_dst = _address(mapping, "external-dst-address")
    if not family == fam1 == fam2 == fam3:
        name = ("external-src-address" if fam1 != family else
                "internal-dst-address" if fam2 != family else "external-dst-address")
        raise ModelError(name, "mixes IPv4 and IPv6 in one session")
    if icmp and (proto == IPPROTO_ICMP) != (family == socket.AF_INET):
        raise ModelError("transport-protocol", "ICMP is protocol 1 with IPv4, 58 (ICMPv6) with IPv6")

    if ports:
        internal_sport = _port(mapping, "internal-src-port")
        external_sport = _port(mapping, "external-src-port")
        internal_dport = _port(mapping, "internal-dst-port")
        external_dport = _port(mapping, "external-dst-port")
    elif icmp:
        internal_sport = _port(mapping, "internal-src-port")
        external_sport = _port(mapping, "external-src-port")
        for name in ("internal-dst-port", "external-dst-port"):
            if name in mapping:
                raise ModelError(name, "an ICMP session has no destination port (its identifier is in the src ports)")
        internal_dport = external_dport = 0
    else:
        for name in ("internal-src-port", "external-src-port", "internal-dst-port", "external-dst-port"):
            if name in mapping:
                raise ModelError(name, "a %s session has no ports: it is translated by its addresses alone"
                                 % PROTOCOL_NAMES.get(proto, "protocol %d" % proto))
        internal_sport = external_sport = internal_dport = external_dport = 0

    timeout = mapping.get("lifetime")
    if timeout.__class__ is not int or not 0 <= timeout <= _UINT32_MAX:
        if timeout is None:
            raise ModelError("lifetime", "missing: the remaining timeout is needed to re-create the session")
        _uint(timeout, "lifetime", _UINT32_MAX)

    status = IPS_CONFIRMED
    if _boolean(mapping.get(SEEN_REPLY, False), SEEN_REPLY):
        status |= IPS_SEEN_REPLY
    if _boolean(mapping.get(ASSURED, False), ASSURED):
        status |= IPS_ASSURED
    mark = mapping.get(MARK, 0)
    if mark.__class__ is not int or not 0 <= mark <= _UINT32_MAX:
        _uint(mark, MARK, _UINT32_MAX)
    zone = mapping.get(ZONE, 0)
    if zone.__class__ is not int or not 0 <= zone <= 0xFFFF:
        _uint(zone, ZONE, 0xFFFF)
    labels = mapping.get(LABELS)
    if labels is not None:
        if not isinstance(labels, str) or len(labels) != 32 or not _HEX_DIGITS.issuperset(labels):
            raise ModelError(LABELS, "expected 32 hexadecimal digits, got %r" % (labels,))
        labels = bytes.fromhex(labels)

    if TCP in mapping and proto != IPPROTO_TCP:
        raise ModelError(TCP, "TCP state on a protocol %d session" % proto)
    if ICMP in mapping and not icmp:
        raise ModelError(ICMP, "ICMP state on a protocol %d session" % proto)
    if GRE in mapping and proto != IPPROTO_GRE:
        raise ModelError(GRE, "GRE keys on a protocol %d session" % proto)

    # Back from the roles to the kernel's two tuples (see the module docstring).
    if side == INTERNAL:
        o_src, o_sport, o_dst, o_dport = internal_src, internal_sport, internal_dst, internal_dport
        r_src, r_sport, r_dst, r_dport = external_dst, external_dport, external_src, external_sport
    else:
        o_src, o_sport, o_dst, o_dport = external_src, external_sport, external_dst, external_dport
        r_src, r_sport, r_dst, r_dport = internal_dst, internal_dport, internal_src, internal_sport

    if icmp:
        icmp_type, icmp_code = _icmp_info(mapping)
        replies = ICMP_REPLY_TYPE if proto == IPPROTO_ICMP else ICMPV6_REPLY_TYPE
        # The translated identifier stands in the reply tuple's source field.
        orig = _new_tuple(FlowTuple, (family, proto, o_src, o_dst, o_sport, 0, icmp_type, icmp_code))
        reply = _new_tuple(FlowTuple, (family, proto, r_src, r_dst, r_dport, 0,
                                       replies.get(icmp_type, icmp_type), icmp_code))
        if r_dst != o_src or r_dport != o_sport:
            status |= IPS_SRC_NAT
        if r_src != o_dst:
            status |= IPS_DST_NAT
        tcp = _NO_TCP
    elif not ports:
        # GRE: its keys, the same on both sides (only the PPTP helper translates them); the
        # generic tracker: no ports. Translated by address alone.
        src_key, dst_key = _gre_keys(mapping) if proto == IPPROTO_GRE else (0, 0)
        orig = _new_tuple(FlowTuple, (family, proto, o_src, o_dst, src_key, dst_key, None, None))
        reply = _new_tuple(FlowTuple, (family, proto, r_src, r_dst, dst_key, src_key, None, None))
        if r_dst != o_src:
            status |= IPS_SRC_NAT
        if r_src != o_dst:
            status |= IPS_DST_NAT
        tcp = _NO_TCP
    else:
        orig = _new_tuple(FlowTuple, (family, proto, o_src, o_dst, o_sport, o_dport, None, None))
        reply = _new_tuple(FlowTuple, (family, proto, r_src, r_dst, r_sport, r_dport, None, None))
        if r_dst != o_src or r_dport != o_sport:
            status |= IPS_SRC_NAT
        if r_src != o_dst or r_sport != o_dport:
            status |= IPS_DST_NAT
        tcp = _tcp_info(mapping) if proto == IPPROTO_TCP else _NO_TCP
    return _new_tuple(ConntrackEntry, (orig, reply, status, timeout, mark, zone, labels) + tcp + _NO_ALG)


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


_SELECTOR_KEYS = frozenset(("addresses", "zone", "mark", "mark_mask", "forwarded"))


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


def never_forwarded(address):
    """Whether a packet to `address` is always delivered to the host rather than forwarded: a
    multicast group (224.0.0.0/4, ff00::/8) or the limited broadcast. A router forwards neither
    (multicast routing aside, which this collection does not model), so an entry with such an
    end is the host's own, like one with an address of the host. Text tests, not ipaddress: this
    runs for every entry of a dump."""
    if ":" in address:
        head = address.split(":", 1)[0]
        return len(head) == 4 and head[:2].lower() == "ff"
    if address == "255.255.255.255":
        return True
    first = address.split(".", 1)[0]
    return first.isdigit() and 224 <= int(first) <= 239


def forwarded_ends(orig, local_addresses):
    """Whether an untranslated entry's original tuple can be a flow forwarded through the host:
    neither end an address of the host (`local_addresses`, its directed broadcasts included),
    nor a destination that is never forwarded. The reply tuple of an untranslated entry is the
    original's inverse, so the original alone decides."""
    return (orig.src not in local_addresses and orig.dst not in local_addresses
            and not never_forwarded(orig.dst) and not never_forwarded(orig.src))


def wants_forwarded(selectors):
    """Whether the selectors take the firewall's untranslated forwarded sessions too (then the
    caller reads every entry, not only translated ones, and gives select the host's addresses)."""
    return bool((selectors or {}).get("forwarded"))


def select(entries, selectors, local_addresses=()):
    """The entries that belong to the network function, as the operator's selectors say.

    selectors: {addresses: [prefixes], zone: int, mark: int, mark_mask: int, forwarded: bool},
    each optional. `addresses` matches the addresses the NAT owns in a session (see
    owned_addresses), so an untranslated entry never matches it. An empty selector keeps every
    entry. With `forwarded`, an untranslated entry is kept when its ends are those of a flow
    forwarded through the host (forwarded_ends: the host's own connections stay) and its zone
    and mark match.
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
        owned = owned_match
    else:
        owned = None
    forwarded = selectors.get("forwarded")
    if forwarded is not None and not isinstance(forwarded, bool):
        raise ModelError("forwarded", "expected a boolean")
    if forwarded:
        local = frozenset(local_addresses)

        def keep(entry):
            if translation(entry) == (None, None):
                return forwarded_ends(entry.orig, local) and all(test(entry) for test in tests)
            return all(test(entry) for test in tests) and (owned is None or owned(entry))
        return [entry for entry in entries if keep(entry)]
    if owned is not None:
        tests.append(owned)
    if not tests:
        return list(entries)
    return [entry for entry in entries if all(test(entry) for test in tests)]
