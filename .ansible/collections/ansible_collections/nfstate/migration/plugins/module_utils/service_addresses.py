# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service addresses that move with a network function, and their announcement to the link.

Addresses are read and changed through rtnetlink (a NETLINK_ROUTE socket): one request per address,
all of them in one sendmsg, each acknowledged with its own errno. Announcements are frames built
here and written to raw sockets (AF_PACKET for a gratuitous ARP, ICMPv6 for an unsolicited neighbour
advertisement), opened and filled before the addresses change, so that announcing costs only the
send calls. Standard library only: this runs on the managed host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import ipaddress
import os
import socket
import struct
import threading
import time
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_HDRLEN,
    NetlinkError,
    NetlinkSocket,
    iter_attrs,
    iter_messages,
    pack_netlink,
    pack_nla,
)

ROLES = ("inside", "outside")

RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, ifindex
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_FLAGS = 8
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
RT_SCOPE_UNIVERSE = 0

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
IFF_NOARP = 0x80
BROADCAST_MAC = b"\xff" * 6
ETH_ZLEN = 60  # shortest Ethernet frame without its FCS; drivers pad, we do it for those that do not
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LINKADDR = 2
NA_FLAG_ROUTER = 0x80000000
NA_FLAG_OVERRIDE = 0x20000000
ICMP6_FILTER = 1
ALL_NODES = "ff02::1"

RECV_TIMEOUT = 10
# An address dump of a busy router is a few hundred kilobytes; requests are a handful.
_BUFFER = 4 << 20

ServiceAddress = namedtuple("ServiceAddress", "address prefixlen role device")
HeldAddress = namedtuple("HeldAddress", "family address prefixlen ifindex flags")
Link = namedtuple("Link", "name index mac hatype noarp router")
Plan = namedtuple("Plan", "add remove keep")


class AddressError(Exception):
    """A service address that cannot be claimed, released or announced; the message says which."""


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def text(address):
    """'192.0.2.254/24' for a ServiceAddress or a HeldAddress."""
    return "%s/%d" % (address.address, address.prefixlen)


# ---------------------------------------------------------------- what the options ask for

def service_addresses(addresses, interfaces):
    """The options as ServiceAddress tuples, in the given order, with the device of each role.

    addresses: [{address: '192.0.2.254/24', role: 'inside'}]; a bare address is a host address
    (/32 or /128). interfaces: {role: device}. Raises AddressError naming the bad entry.
    """
    interfaces = interfaces or {}
    result, seen = [], set()
    for position, item in enumerate(addresses or []):
        where = "addresses[%d]" % position
        role = item.get("role")
        if role not in ROLES:
            raise AddressError("%s: role must be one of %s, got %r" % (where, ", ".join(ROLES), role))
        device = interfaces.get(role)
        if not device:
            raise AddressError("%s: no device given for role %s in interfaces" % (where, role))
        try:
            interface = ipaddress.ip_interface(item.get("address") or "")
        except ValueError as error:
            raise AddressError("%s: %s" % (where, error))
        ip = interface.ip
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
            raise AddressError("%s: %s cannot be a service address" % (where, ip))
        if ip in seen:
            raise AddressError("%s: %s is given twice" % (where, ip))
        seen.add(ip)
        result.append(ServiceAddress(str(ip), interface.network.prefixlen, role, device))
    return result


def plan(wanted, held, ifindex_of, state):
    """What to change so that the host holds (present) or no longer holds (absent) the addresses.

    held: the HeldAddress list the kernel has; ifindex_of: {device: ifindex}. Returns
    Plan(add=[ServiceAddress], remove=[HeldAddress], keep=[ServiceAddress already in place]).
    Raises AddressError, before anything changes, when an address is held in a way this module must
    not silently undo: on another device or with another prefix length (state present).
    """
    by_address = {}
    for entry in held:
        by_address.setdefault(entry.address, []).append(entry)
    add, remove, keep = [], [], []
    for address in wanted:
        index = ifindex_of[address.device]
        holders = by_address.get(address.address, [])
        here = [h for h in holders if h.ifindex == index]
        if state == "absent":
            remove.extend(here)
            continue
        exact = [h for h in here if h.prefixlen == address.prefixlen]
        other = [h for h in holders if h not in exact]
        if other:
            raise AddressError("%s (%s) is already held here as %s: remove it first" % (
                text(address), address.role, ", ".join("%s on ifindex %d" % (text(h), h.ifindex) for h in other)))
        if exact and not exact[0].flags & IFA_F_DADFAILED:
            keep.append(address)
        else:
            # an IPv6 address whose duplicate address detection failed is never used: put it back
            remove.extend(exact)
            add.append(address)
    return Plan(add, remove, keep)


def collateral_removals(remove, held, promotes):
    """IPv4 addresses the kernel would delete along with a removed primary address.

    Deleting a primary address also deletes the secondaries of its subnet on that device, unless
    promote_secondaries is set (promotes(ifindex) -> bool). Returns those not being removed anyway.
    """
    removing = set(remove)
    lost = []
    for gone in remove:
        if gone.family != socket.AF_INET or gone.flags & IFA_F_SECONDARY or promotes(gone.ifindex):
            continue
        subnet = ipaddress.ip_network(text(gone), strict=False)
        for other in held:
            if other.family == socket.AF_INET and other.ifindex == gone.ifindex and other not in removing \
                    and other.flags & IFA_F_SECONDARY and other.prefixlen == gone.prefixlen \
                    and ipaddress.ip_address(other.address) in subnet:
                lost.append(other)
    return lost


# ---------------------------------------------------------------- rtnetlink messages

def _address_message(msg_type, flags, family, prefixlen, ifa_flags, ifindex, attrs):
    payload = IFADDRMSG.pack(family, prefixlen, ifa_flags & 0xFF, RT_SCOPE_UNIVERSE, ifindex) + b"".join(attrs)
    return pack_netlink(msg_type, flags, payload)


def new_address_message(address, ifindex):
    """RTM_NEWADDR for a ServiceAddress: IPv6 with nodad (usable at once, no detection delay), IPv4
    with its subnet's broadcast address as `ip address add ... brd +` would set it."""
    family = family_of(address.address)
    raw = socket.inet_pton(family, address.address)
    attrs = [pack_nla(IFA_LOCAL, raw), pack_nla(IFA_ADDRESS, raw)]
    flags = 0
    if family == socket.AF_INET6:
        flags = IFA_F_NODAD
        attrs.append(pack_nla(IFA_FLAGS, struct.pack("=I", flags)))
    elif address.prefixlen <= 30:
        broadcast = ipaddress.ip_network(text(address), strict=False).broadcast_address
        attrs.append(pack_nla(IFA_BROADCAST, broadcast.packed))
    return _address_message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                            family, address.prefixlen, flags, ifindex, attrs)


def del_address_message(held):
    """RTM_DELADDR for one HeldAddress. IFA_ADDRESS with the prefix length makes the kernel match
    exactly that address, not the first one with the same local address."""
    raw = socket.inet_pton(held.family, held.address)
    return _address_message(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, held.family, held.prefixlen, 0,
                            held.ifindex, [pack_nla(IFA_LOCAL, raw), pack_nla(IFA_ADDRESS, raw)])


def parse_address_message(buf, offset, length):
    """A RTM_NEWADDR message (as a dump returns them) as a HeldAddress, or None if it has none."""
    body = offset + NLMSG_HDRLEN
    family, prefixlen, flags, _scope, ifindex = IFADDRMSG.unpack_from(buf, body)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    values = {}
    for atype, start, size in iter_attrs(buf, body + IFADDRMSG.size, offset + length):
        if atype in (IFA_ADDRESS, IFA_LOCAL):
            values[atype] = bytes(buf[start:start + size])
        elif atype == IFA_FLAGS and size >= 4:
            flags = struct.unpack_from("=I", buf, start)[0]
    # IFA_LOCAL is the host's own address; IFA_ADDRESS is the peer's on point-to-point links
    raw = values.get(IFA_LOCAL) or values.get(IFA_ADDRESS)
    if raw is None:
        return None
    return HeldAddress(family, socket.inet_ntop(family, raw), prefixlen, ifindex, flags)


class Rtnetlink(object):
    """A NETLINK_ROUTE socket: read the host's addresses, change them with one errno per request."""

    def __init__(self):
        try:
            self._nl = NetlinkSocket(NETLINK_ROUTE, buffer_size=_BUFFER, timeout=RECV_TIMEOUT)
        except OSError as error:
            raise AddressError("cannot open a route netlink socket: %s" % os.strerror(error.errno or errno.EIO))

    def close(self):
        self._nl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def addresses(self):
        """Every IPv4 and IPv6 address of the host (this network namespace) as HeldAddress."""
        request = _address_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, socket.AF_UNSPEC, 0, 0, 0, [])
        for _attempt in range(3):
            held = []
            try:
                for buf, start, end in self._nl.dump(request):
                    for offset, length, mtype, _flags, _seq in iter_messages(buf, start, end):
                        if mtype == RTM_NEWADDR:
                            entry = parse_address_message(buf, offset, length)
                            if entry is not None:
                                held.append(entry)
            except NetlinkError as error:
                if error.errno == errno.EINTR:
                    continue  # the list changed while it was read: read it again
                raise AddressError("reading the addresses: %s" % os.strerror(error.errno or errno.EIO))
            return held
        raise AddressError("the address list kept changing while it was read")

    def transact(self, messages):
        """Send the requests (in as few sendmsg as fit); returns [errno or 0] in their order."""
        answers = [0] * len(messages)
        try:
            refused = self._nl.transact(messages, ack_each=True)
        except NetlinkError as error:
            raise AddressError("reading the kernel's answer to the address changes: %s"
                               % os.strerror(error.errno or errno.EIO))
        for index, code in refused:
            answers[index] = code
        return answers


# ---------------------------------------------------------------- devices

def read_link(name):
    """The device's index, hardware address and type, NOARP flag, and whether it routes IPv6."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        raise AddressError("there is no network device %s on this host" % name)
    # sysfs rather than a probing AF_PACKET socket: closing one waits for an RCU grace period
    # (several milliseconds), and the claim reads its links inside the freeze window
    try:
        hatype = int(_read_first_line("/sys/class/net/%s/type" % name, "0"))
        mac = bytes.fromhex(_read_first_line("/sys/class/net/%s/address" % name, "").replace(":", ""))
    except ValueError:
        hatype, mac = 0, b""
    flags = int(_read_first_line("/sys/class/net/%s/flags" % name, "0"), 16)
    router = _read_first_line("/proc/sys/net/ipv6/conf/%s/forwarding" % name, "0") == "1"
    return Link(name, index, mac, hatype, bool(flags & IFF_NOARP), router)


def promotes_secondaries(device):
    """The kernel promotes a secondary when either the device's or the 'all' switch is set."""
    return any(_read_first_line("/proc/sys/net/ipv4/conf/%s/promote_secondaries" % name, "0") == "1"
               for name in ("all", device))


def _read_first_line(path, default):
    try:
        with open(path) as source:
            return source.readline().strip()
    except (IOError, OSError):
        return default


def can_announce(link):
    """Announcements are Ethernet frames; a device without ARP has no neighbours to tell."""
    return link.hatype == ARPHRD_ETHER and not link.noarp and len(link.mac) == 6


# ---------------------------------------------------------------- announcements

def gratuitous_arp(mac, address):
    """An ARP announcement (RFC 5227): a broadcast request whose sender and target are the address.

    Linux neighbours take it as gratuitous (sender == target) and override their entry even within
    its locktime; the switches on the way learn the new port from the frame's source.
    """
    ip = socket.inet_aton(address)
    frame = (BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
             + struct.pack("!HHBBH", ARPHRD_ETHER, ETH_P_IP, 6, 4, ARPOP_REQUEST)
             + mac + ip + b"\0" * 6 + ip)
    return frame + b"\0" * (ETH_ZLEN - len(frame))


def neighbour_advertisement(mac, target, router):
    """An unsolicited neighbour advertisement (RFC 4861 7.2.6) with Override set and the target's
    link-layer address; the kernel fills in the checksum. Router mirrors the host's forwarding so
    that neighbours using it as their router keep it in their router list."""
    flags = NA_FLAG_OVERRIDE | (NA_FLAG_ROUTER if router else 0)
    return (struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, flags) + socket.inet_pton(socket.AF_INET6, target)
            + struct.pack("!BB", ND_OPT_TARGET_LINKADDR, 1) + mac)


def _close_all(sockets):
    for sock in sockets:
        sock.close()


class Announcer(object):
    """Sockets and frames for a list of (address, Link), ready before the addresses change."""

    def __init__(self, targets):
        self.frames = []  # (socket, frame, destination or None)
        self.announced = []
        self._sockets = []
        try:
            packet, icmp6 = {}, {}
            for address, link in targets:
                if family_of(address) == socket.AF_INET:
                    if link.name not in packet:
                        packet[link.name] = self._open_packet(link)
                    self.frames.append((packet[link.name], gratuitous_arp(link.mac, address), None))
                    method = "gratuitous-arp"
                else:
                    if link.name not in icmp6:
                        icmp6[link.name] = self._open_icmp6(link)
                    self.frames.append((icmp6[link.name], neighbour_advertisement(link.mac, address, link.router),
                                        (ALL_NODES, 0, 0, link.index)))
                    method = "unsolicited-na"
                self.announced.append({"address": address, "device": link.name, "method": method})
        except Exception:
            self.close()
            raise

    def _open_packet(self, link):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._sockets.append(sock)
        sock.bind((link.name, 0))
        return sock

    def _open_icmp6(self, link):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self._sockets.append(sock)
        # receivers drop neighbour discovery that did not arrive with hop limit 255 (RFC 4861 7.1.2)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, link.index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        # a send-only socket: block every ICMPv6 type so nothing queues up on it
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
        return sock

    def send_round(self):
        """Every frame once, back to back; returns the time (perf_counter) after the last one."""
        for sock, frame, destination in self.frames:
            try:
                if destination is None:
                    sock.send(frame)
                else:
                    sock.sendto(frame, destination)
            except OSError as error:
                raise AddressError("sending an announcement on %s: %s" % (
                    sock.getsockname()[0] if destination is None else destination[3], os.strerror(error.errno)))
        return time.perf_counter()

    def close(self):
        # Closing a packet socket waits for an RCU grace period (5-15 ms here): done by a thread,
        # so that the claim answers as soon as its frames are sent.
        closing, self._sockets = self._sockets, []
        if closing:
            closer = threading.Thread(target=_close_all, args=(closing,), name="announcer-close")
            closer.daemon = True
            closer.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- the whole change

def _ms(start, end):
    return None if start is None or end is None else round((end - start) * 1000.0, 3)


def claim(netlink, add, remove, announce_targets, count, interval):
    """Remove the stale holders, add the addresses, announce; returns (announced, timings).

    Everything that can be prepared is before the first address changes: the sockets are open and
    the frames built, so that the time from the first address added to the last announcement is
    spent in the kernel, not here. A refused address rolls back the ones added with it.
    """
    with Announcer(announce_targets) as announcer:
        if remove:
            _check_all(netlink.transact([del_address_message(h) for h in remove]), remove, "remove",
                       ignore=(errno.EADDRNOTAVAIL,))
        start = time.perf_counter()
        added_at = None
        if add:
            answers = netlink.transact([new_address_message(a, i) for a, i in add])
            added_at = time.perf_counter()
            if any(answers):
                done = [(a, i) for (a, i), code in zip(add, answers) if not code]
                netlink.transact([del_address_message(HeldAddress(family_of(a.address), a.address, a.prefixlen, i, 0))
                                  for a, i in done])
                _check_all(answers, [a for a, _i in add], "add",
                           suffix=" (the addresses added with it were removed again)" if done else "")
        first_round = last_round = None
        if announcer.frames:
            first_round = last_round = announcer.send_round()
            for _repeat in range(count - 1):
                time.sleep(interval)
                last_round = announcer.send_round()
        timings = {
            "change_ms": _ms(start, added_at),
            "redirect_ms": _ms(start, first_round),
            "announce_ms": _ms(added_at or start, last_round),
        }
        return announcer.announced, timings


def release(netlink, remove):
    """Remove the addresses (an address already gone counts as removed); returns the timings."""
    start = time.perf_counter()
    _check_all(netlink.transact([del_address_message(h) for h in remove]), remove, "remove",
               ignore=(errno.EADDRNOTAVAIL,))
    return {"change_ms": _ms(start, time.perf_counter()) if remove else None, "redirect_ms": None, "announce_ms": None}


def _check_all(answers, items, verb, ignore=(), suffix=""):
    failed = ["%s: %s" % (text(item), os.strerror(code)) for item, code in zip(items, answers)
              if code and code not in ignore]
    if failed:
        raise AddressError("the kernel refused to %s %s%s" % (verb, "; ".join(failed), suffix))
