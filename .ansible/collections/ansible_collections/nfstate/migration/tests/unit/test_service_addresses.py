"""Service addresses without touching a host: options, planning, netlink messages, announcement frames."""

import errno
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import service_addresses as sa
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import NLMSGHDR, NetlinkError, iter_attrs
from ansible_collections.nfstate.migration.plugins.module_utils.service_addresses import (
    AddressError,
    HeldAddress,
    Link,
    ServiceAddress,
)

IFACES = {"inside": "in0", "outside": "out0"}
INDEX = {"in0": 3, "out0": 5}
MAC = bytes.fromhex("02005e0000aa")
V4 = socket.AF_INET
V6 = socket.AF_INET6
MODULE = "ansible_collections.nfstate.migration.plugins.modules.service_addresses"


def wanted(*items):
    return sa.service_addresses([{"address": a, "role": r} for a, r in items], IFACES)


# ---------------------------------------------------------------- options

def test_service_addresses_in_order_with_their_role_device_and_normal_text():
    result = wanted(("192.0.2.254/24", "inside"), ("2001:DB8:1:0::FE/64", "inside"), ("203.0.113.10", "outside"))
    assert result == [
        ServiceAddress("192.0.2.254", 24, "inside", "in0"),
        ServiceAddress("2001:db8:1::fe", 64, "inside", "in0"),
        ServiceAddress("203.0.113.10", 32, "outside", "out0"),
    ]
    assert [sa.text(a) for a in result] == ["192.0.2.254/24", "2001:db8:1::fe/64", "203.0.113.10/32"]
    assert sa.service_addresses([{"address": "2001:db8::1", "role": "inside"}], IFACES)[0].prefixlen == 128


@pytest.mark.parametrize("items, interfaces, message", [
    ([{"address": "192.0.2.254/24", "role": "middle"}], IFACES, "addresses[0]: role must be one of inside, outside"),
    ([{"address": "192.0.2.254/24", "role": "outside"}], {"inside": "in0"}, "no device given for role outside"),
    ([{"address": "192.0.2.300/24", "role": "inside"}], IFACES, "addresses[0]: "),
    ([{"address": "192.0.2.254/33", "role": "inside"}], IFACES, "addresses[0]: "),
    ([{"address": "", "role": "inside"}], IFACES, "addresses[0]: "),
    ([{"address": "ff02::1/64", "role": "inside"}], IFACES, "cannot be a service address"),
    ([{"address": "fe80::1/64", "role": "inside"}], IFACES, "cannot be a service address"),
    ([{"address": "127.0.0.2/8", "role": "inside"}], IFACES, "cannot be a service address"),
    ([{"address": "192.0.2.254/24", "role": "inside"}, {"address": "192.0.2.254/25", "role": "outside"}], IFACES,
     "addresses[1]: 192.0.2.254 is given twice"),
])
def test_service_addresses_rejects(items, interfaces, message):
    with pytest.raises(AddressError) as error:
        sa.service_addresses(items, interfaces)
    assert message in str(error.value)


# ---------------------------------------------------------------- planning

def held(address, ifindex, flags=0):
    interface = ipaddress.ip_interface(address)
    return HeldAddress(V6 if interface.version == 6 else V4, str(interface.ip), interface.network.prefixlen,
                       ifindex, flags)


def test_plan_present_adds_what_is_missing_and_keeps_what_is_in_place():
    addresses = wanted(("192.0.2.254/24", "inside"), ("2001:db8:1::fe/64", "inside"), ("203.0.113.10/24", "outside"))
    host = [held("192.0.2.11/24", 3), held("192.0.2.254/24", 3, sa.IFA_F_SECONDARY), held("203.0.113.1/24", 5)]
    plan = sa.plan(addresses, host, INDEX, "present")
    assert plan.add == [addresses[1], addresses[2]]
    assert plan.keep == [addresses[0]]
    assert plan.remove == []


@pytest.mark.parametrize("holder, where", [
    (held("192.0.2.254/24", 5), "192.0.2.254/24 on ifindex 5"),
    (held("192.0.2.254/25", 3), "192.0.2.254/25 on ifindex 3"),
])
def test_plan_present_refuses_an_address_held_elsewhere_or_with_another_prefix(holder, where):
    with pytest.raises(AddressError) as error:
        sa.plan(wanted(("192.0.2.254/24", "inside")), [holder], INDEX, "present")
    assert "192.0.2.254/24 (inside) is already held here as " + where in str(error.value)


def test_plan_present_replaces_an_ipv6_address_whose_detection_failed():
    addresses = wanted(("2001:db8:1::fe/64", "inside"))
    broken = held("2001:db8:1::fe/64", 3, sa.IFA_F_DADFAILED)
    plan = sa.plan(addresses, [broken], INDEX, "present")
    assert plan.remove == [broken] and plan.add == addresses and plan.keep == []


def test_plan_absent_removes_from_the_role_device_whatever_the_prefix_only():
    addresses = wanted(("192.0.2.254/24", "inside"), ("2001:db8:1::fe/64", "inside"), ("203.0.113.10/24", "outside"))
    on_device = held("192.0.2.254/25", 3)
    elsewhere = held("203.0.113.10/24", 9)
    v6 = held("2001:db8:1::fe/64", 3)
    plan = sa.plan(addresses, [held("192.0.2.11/24", 3), on_device, v6, elsewhere], INDEX, "absent")
    assert plan.remove == [on_device, v6]
    assert plan.add == [] and plan.keep == []


def test_collateral_removals_of_a_primary_without_promotion():
    primary = held("192.0.2.254/24", 3)
    own = held("192.0.2.11/24", 3, sa.IFA_F_SECONDARY)
    other_subnet = held("198.51.100.1/24", 3, sa.IFA_F_SECONDARY)
    other_device = held("192.0.2.12/24", 5, sa.IFA_F_SECONDARY)
    host = [primary, own, other_subnet, other_device]
    assert sa.collateral_removals([primary], host, lambda index: False) == [own]
    assert sa.collateral_removals([primary], host, lambda index: True) == []
    assert sa.collateral_removals([primary, own], host, lambda index: False) == []
    # removing a secondary never takes anything with it
    assert sa.collateral_removals([own], host, lambda index: False) == []


# ---------------------------------------------------------------- netlink messages

def decode(message):
    length, mtype, flags, _seq, _pid = NLMSGHDR.unpack_from(message, 0)
    assert length == len(message)
    family, prefixlen, ifa_flags, scope, index = sa.IFADDRMSG.unpack_from(message, NLMSGHDR.size)
    attrs = {atype: bytes(message[start:start + size])
             for atype, start, size in iter_attrs(message, NLMSGHDR.size + sa.IFADDRMSG.size, length)}
    return mtype, flags, (family, prefixlen, ifa_flags, scope, index), attrs


def test_new_ipv4_address_message_sets_broadcast_like_brd_plus():
    mtype, flags, header, attrs = decode(sa.new_address_message(ServiceAddress("192.0.2.254", 24, "inside", "in0"), 3))
    assert mtype == sa.RTM_NEWADDR
    assert flags == sa.NLM_F_REQUEST | sa.NLM_F_ACK | sa.NLM_F_CREATE | sa.NLM_F_EXCL
    assert header == (V4, 24, 0, 0, 3)
    assert attrs == {sa.IFA_LOCAL: bytes([192, 0, 2, 254]), sa.IFA_ADDRESS: bytes([192, 0, 2, 254]),
                     sa.IFA_BROADCAST: bytes([192, 0, 2, 255])}
    _m, _f, _h, attrs = decode(sa.new_address_message(ServiceAddress("192.0.2.254", 31, "inside", "in0"), 3))
    assert sa.IFA_BROADCAST not in attrs


def test_new_ipv6_address_message_is_nodad():
    _m, _f, header, attrs = decode(sa.new_address_message(ServiceAddress("2001:db8:1::fe", 64, "inside", "in0"), 7))
    assert header == (V6, 64, sa.IFA_F_NODAD, 0, 7)
    assert attrs[sa.IFA_ADDRESS] == socket.inet_pton(V6, "2001:db8:1::fe")
    assert struct.unpack("=I", attrs[sa.IFA_FLAGS])[0] == sa.IFA_F_NODAD


def test_del_address_message_names_address_and_prefix():
    mtype, flags, header, attrs = decode(sa.del_address_message(held("192.0.2.254/25", 3)))
    assert mtype == sa.RTM_DELADDR and flags == sa.NLM_F_REQUEST | sa.NLM_F_ACK
    assert header == (V4, 25, 0, 0, 3)
    assert attrs == {sa.IFA_LOCAL: bytes([192, 0, 2, 254]), sa.IFA_ADDRESS: bytes([192, 0, 2, 254])}


def test_parse_address_message_reads_back_what_the_kernel_sends():
    message = sa.new_address_message(ServiceAddress("2001:db8:1::fe", 64, "inside", "in0"), 7)
    assert sa.parse_address_message(message, 0, len(message)) == HeldAddress(V6, "2001:db8:1::fe", 64, 7, sa.IFA_F_NODAD)
    # point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL the host's own address
    peer = sa._address_message(sa.RTM_NEWADDR, 0, V4, 32, sa.IFA_F_SECONDARY, 4, [
        sa.pack_nla(sa.IFA_ADDRESS, bytes([198, 51, 100, 9])), sa.pack_nla(sa.IFA_LOCAL, bytes([198, 51, 100, 1]))])
    assert sa.parse_address_message(peer, 0, len(peer)) == HeldAddress(V4, "198.51.100.1", 32, 4, sa.IFA_F_SECONDARY)


class ScriptedRoute(object):
    """Stands in for the NetlinkSocket under Rtnetlink: dumps given as lists of chunks (an
    errno in place of a dump raises NetlinkError), refusals as (index, errno)."""

    def __init__(self, dumps=(), refused=()):
        self.dumps = list(dumps)
        self.refused = list(refused)
        self.sent = []

    def dump(self, request):
        self.sent.append(request)
        answer = self.dumps.pop(0)
        if isinstance(answer, int):
            raise NetlinkError(answer, "scripted")
        for chunk in answer:
            yield chunk, 0, len(chunk)

    def transact(self, messages, ack_each=False):
        assert ack_each  # every address change has its own errno
        self.sent.extend(messages)
        return self.refused


def _rtnetlink(route):
    netlink = sa.Rtnetlink.__new__(sa.Rtnetlink)
    netlink._nl = route
    return netlink


def test_rtnetlink_reads_addresses_again_when_the_dump_was_interrupted():
    one = sa.new_address_message(ServiceAddress("192.0.2.254", 24, "inside", "in0"), 3)
    two = sa.new_address_message(ServiceAddress("2001:db8:1::fe", 64, "inside", "in0"), 3)
    route = ScriptedRoute(dumps=[errno.EINTR, [one + two]])
    assert _rtnetlink(route).addresses() == [HeldAddress(V4, "192.0.2.254", 24, 3, 0),
                                             HeldAddress(V6, "2001:db8:1::fe", 64, 3, sa.IFA_F_NODAD)]
    assert len(route.sent) == 2
    with pytest.raises(AddressError, match="kept changing"):
        _rtnetlink(ScriptedRoute(dumps=[errno.EINTR] * 3)).addresses()
    with pytest.raises(AddressError, match="reading the addresses"):
        _rtnetlink(ScriptedRoute(dumps=[errno.EPERM])).addresses()


def test_rtnetlink_transact_gives_one_errno_per_request_in_order():
    messages = [sa.del_address_message(held("192.0.2.%d/24" % i, 3)) for i in (1, 2, 3)]
    route = ScriptedRoute(refused=[(1, errno.EADDRNOTAVAIL)])
    assert _rtnetlink(route).transact(messages) == [0, errno.EADDRNOTAVAIL, 0]
    assert route.sent == messages


# ---------------------------------------------------------------- announcements

def test_gratuitous_arp_is_a_broadcast_announcement():
    frame = sa.gratuitous_arp(MAC, "192.0.2.254")
    assert len(frame) == 60 and frame[42:] == b"\0" * 18
    dst, src, ethertype = frame[0:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    assert (dst, src, ethertype) == (b"\xff" * 6, MAC, 0x0806)
    htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, 1)
    sha, spa, tha, tpa = frame[22:28], frame[28:32], frame[32:38], frame[38:42]
    assert sha == MAC and tha == b"\0" * 6
    assert spa == tpa == bytes([192, 0, 2, 254])


@pytest.mark.parametrize("router, flags", [(False, 0x20000000), (True, 0xA0000000)])
def test_neighbour_advertisement_unsolicited_with_override(router, flags):
    message = sa.neighbour_advertisement(MAC, "2001:db8:1::fe", router)
    assert len(message) == 32
    assert struct.unpack("!BBHI", message[:8]) == (136, 0, 0, flags)
    assert message[8:24] == socket.inet_pton(V6, "2001:db8:1::fe")
    assert message[24:26] == b"\x02\x01" and message[26:] == MAC


def test_can_announce_only_ethernet_with_arp():
    assert sa.can_announce(Link("in0", 3, MAC, 1, False, False))
    assert not sa.can_announce(Link("dummy0", 4, MAC, 1, True, False))
    assert not sa.can_announce(Link("lo", 1, b"\0" * 6, 772, False, False))
    assert not sa.can_announce(Link("wg0", 6, b"", 65534, True, False))


# ---------------------------------------------------------------- the module's input checks

def run_module(tmp_path, **args):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), LANG="C")
    proc = subprocess.run([sys.executable, "-m", MODULE, str(path)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("args, message", [
    ({"addresses": [{"address": "192.0.2.254/24", "role": "outside"}], "interfaces": {"inside": "lo"}},
     "no device given for role outside"),
    ({"addresses": [{"address": "192.0.2.254/24", "role": "inside"}], "interfaces": {"inside": "nfsh8-none0"}},
     "there is no network device nfsh8-none0 on this host"),
    ({"addresses": [{"address": "192.0.2.254/24", "role": "inside"}], "interfaces": {"inside": "lo"}, "count": 0},
     "count must be at least 1"),
    ({"addresses": [{"address": "192.0.2.254/24", "role": "inside"}], "interfaces": {"inside": "lo"},
      "announce": "sometimes"}, "value of announce must be one of"),
])
def test_module_rejects_bad_input_before_touching_anything(tmp_path, args, message):
    result = run_module(tmp_path, **args)
    assert result.get("failed") is True and message in result["msg"], result


@pytest.mark.parametrize("announce", [True, False, "always"])
def test_module_announce_takes_booleans_and_always(tmp_path, announce):
    # a device that does not exist on a release: nothing to do, a warning, no failure
    result = run_module(tmp_path, addresses=[{"address": "192.0.2.254/24", "role": "inside"}],
                        interfaces={"inside": "nfsh8-none0"}, state="absent", announce=announce)
    assert "failed" not in result, result
    assert result["changed"] is False and result["removed"] == [] and result["announced"] == []
    assert "there is no network device nfsh8-none0 on this host" in json.dumps(result["warnings"])
