"""Expectation and helper-state messages: what is packed is what a dump reads back."""

import random
import socket
import struct

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import conntrack_expect as ce
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack_helper as ch
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import FlowTuple
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NFNL_HDRLEN,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLMSGHDR,
    iter_attrs,
    pack_message,
    pack_nla,
)

A4, A6 = socket.AF_INET, socket.AF_INET6
MASTER = FlowTuple(A4, 6, "192.0.2.2", "198.51.100.9", 44610, 21)
PASSIVE = ce.Expectation(
    master=MASTER,
    tuple=FlowTuple(A4, 6, "192.0.2.2", "198.51.100.9", 0, 53491),
    mask=FlowTuple(A4, 6, "255.255.255.255", "255.255.255.255", 0, 0xFFFF),
    timeout=299, helper="ftp", flags=0, expect_class=0, nat_dir=ce.IP_CT_DIR_ORIGINAL,
    nat_tuple=FlowTuple(A4, 6, "0.0.0.0", "0.0.0.0", 53491, 0), fn="nat-follow-master", zone=0)


def as_dumped(message):
    """A request turned into what a dump would carry: the kernel answers with EXP_NEW messages."""
    data = bytearray(message)
    struct.pack_into("=H", data, 4, ce.EXP_NEW)
    return data


def top_attrs(message):
    return [atype for atype, _o, _l in iter_attrs(message, NFNL_HDRLEN, len(message))]


def test_create_message_carries_every_member_and_reads_back():
    message = ce.create_message(PASSIVE)
    length, mtype, flags = NLMSGHDR.unpack_from(message, 0)[:3]
    assert length == len(message) and mtype == ce.EXP_NEW
    assert flags & NLM_F_CREATE and flags & NLM_F_EXCL
    assert top_attrs(message) == [ce.CTA_EXPECT_MASTER, ce.CTA_EXPECT_TUPLE, ce.CTA_EXPECT_MASK,
                                  ce.CTA_EXPECT_TIMEOUT, ce.CTA_EXPECT_HELP_NAME, ce.CTA_EXPECT_FLAGS,
                                  ce.CTA_EXPECT_NAT, ce.CTA_EXPECT_FN]
    assert ce.parse_expect_message(as_dumped(message), 0, len(message)) == PASSIVE


def test_the_mask_is_a_complete_tuple_with_the_expected_protocol():
    # Debian's conntrack -I expect gets this wrong; the kernel wants the protocol number itself.
    exp = PASSIVE._replace(mask=PASSIVE.mask._replace(proto=0))
    parsed = ce.parse_expect_message(as_dumped(ce.create_message(exp)), 0, len(ce.create_message(exp)))
    assert parsed.mask.proto == 6 and parsed.mask.sport == 0 and parsed.mask.dport == 0xFFFF


def test_timeout_update_is_not_a_creation_and_keeps_the_identity():
    message = ce.timeout_message(PASSIVE)
    flags = NLMSGHDR.unpack_from(message, 0)[2]
    assert not flags & NLM_F_CREATE
    assert top_attrs(message) == [ce.CTA_EXPECT_MASTER, ce.CTA_EXPECT_TUPLE, ce.CTA_EXPECT_MASK, ce.CTA_EXPECT_TIMEOUT]


def test_delete_message_names_the_expected_tuple_and_zone():
    message = ce.delete_message(PASSIVE._replace(zone=7))
    assert NLMSGHDR.unpack_from(message, 0)[1] == ce.EXP_DELETE
    assert top_attrs(message) == [ce.CTA_EXPECT_TUPLE, ce.CTA_EXPECT_ZONE]


def test_userspace_flag_is_never_given_back():
    exp = PASSIVE._replace(flags=ce.NF_CT_EXPECT_PERMANENT | ce.NF_CT_EXPECT_USERSPACE)
    message = ce.create_message(exp)
    assert ce.parse_expect_message(as_dumped(message), 0, len(message)).flags == ce.NF_CT_EXPECT_PERMANENT


def test_missing_mask_means_exact_source():
    exp = PASSIVE._replace(mask=None)
    parsed = ce.parse_expect_message(as_dumped(ce.create_message(exp)), 0, len(ce.create_message(exp)))
    assert parsed.mask == ce.exact_mask(PASSIVE.tuple)


def test_names_longer_than_the_kernel_takes_are_refused():
    with pytest.raises(ValueError):
        ce.create_message(PASSIVE._replace(helper="a-very-long-helper"))
    ce.create_message(PASSIVE._replace(fn="nat-follow-master"))  # 17 characters: fine for a function


def _random_tuple(rng, family, proto, any_source=False):
    if family == A4:
        src, dst = "192.0.2.%d" % rng.randrange(1, 255), "198.51.100.%d" % rng.randrange(1, 255)
    else:
        src, dst = "2001:db8::%x" % rng.randrange(1, 0xFFFF), "2001:db8:1::%x" % rng.randrange(1, 0xFFFF)
    if any_source:
        src = "0.0.0.0" if family == A4 else "::"
    return FlowTuple(family, proto, src, dst, 0 if any_source else rng.randrange(1, 65536), rng.randrange(1, 65536))


@pytest.mark.parametrize("seed", range(40))
def test_random_expectations_round_trip_through_a_dump_chunk(seed):
    rng = random.Random(seed)
    chunk = bytearray()
    made = []
    for _count in range(rng.randrange(1, 5)):
        family = rng.choice((A4, A6))
        proto = rng.choice((6, 17))
        any_source = rng.random() < 0.3
        tup = _random_tuple(rng, family, proto, any_source)
        ones = ce.exact_mask(tup)
        mask = ones._replace(src=("0.0.0.0" if family == A4 else "::") if any_source else ones.src,
                             sport=0 if any_source or rng.random() < 0.5 else 0xFFFF)
        nat = rng.random() < 0.6
        exp = ce.Expectation(
            master=_random_tuple(rng, family, rng.choice((6, 17))), tuple=tup, mask=mask,
            timeout=rng.randrange(0, 3600), helper=rng.choice((None, "ftp", "sip", "tftp", "Q.931")),
            flags=rng.choice((0, 1, 2, 3)), expect_class=rng.choice((0, 1, 2)),
            nat_dir=rng.choice((0, 1)) if nat else None,
            nat_tuple=_random_tuple(rng, family, 17)._replace(dst="0.0.0.0" if family == A4 else "::", dport=0) if nat else None,
            fn=rng.choice((None, "nat-follow-master", "sip")) if nat else None, zone=rng.choice((0, 0, 3)))
        made.append(exp)
        chunk += as_dumped(ce.create_message(exp))
    assert ce.parse_dump(chunk, 0, len(chunk)) == made


def test_a_dump_chunk_skips_messages_of_other_kinds():
    other = pack_message(ce.EXP_DELETE, 0, pack_nla(99, b"\0\0\0\0"))
    chunk = as_dumped(ce.create_message(PASSIVE)) + bytearray(other)
    assert ce.parse_dump(chunk, 0, len(chunk)) == [PASSIVE]


# --- the master's helper state -------------------------------------------------------------------

def ct_new(payload, family=A4):
    return bytearray(pack_message(0x100, 0, payload, family=family))


@pytest.mark.parametrize("state", [
    ch.HelperState("ftp", ch.SeqAdjust(2750089217, 0, 3), ch.SeqAdjust(0, 0, 0)),
    ch.HelperState("sip"),
    ch.HelperState(None, None, ch.SeqAdjust(10, 0xFFFFFFFE, 0xFFFFFFFE)),
    ch.HelperState(None, master=MASTER),
    ch.HelperState("Q.931", ch.SeqAdjust(1, 2, 3), None, FlowTuple(A6, 6, "2001:db8::1", "2001:db8::2", 1, 1720)),
])
def test_helper_state_round_trips_through_a_ct_new(state):
    payload = b"".join([ce.pack_tuple(1, MASTER), pack_nla(3, b"\0\0\0\x08"), ch.pack_helper_attrs(state)])
    message = ct_new(payload)
    assert ch.parse_helper_attrs(message, 0, len(message)) == state
    assert ch.has_helper_state(state)


def test_entry_without_helper_state_reads_as_empty():
    message = ct_new(ce.pack_tuple(1, MASTER))
    state = ch.parse_helper_attrs(message, 0, len(message))
    assert state == ch.HelperState() and not ch.has_helper_state(state)


def test_helper_private_data_is_flagged_not_carried():
    nested = bytearray(ch.pack_helper("ftp"))  # "ftp\0": no padding, the nest can grow in place
    # Append a CTA_HELP_INFO child to the CTA_HELP nest, as a user-space helper's entry has.
    child = pack_nla(ch.CTA_HELP_INFO, b"\x01\x02\x03\x04")
    nested += child
    struct.pack_into("=H", nested, 0, len(nested))
    message = ct_new(bytes(nested))
    state = ch.parse_helper_attrs(message, 0, len(message))
    assert state.helper == "ftp" and state.private is True


def test_seq_adj_nest_holds_the_three_members_in_kernel_order():
    packed = ch.pack_seq_adj(ch.CTA_SEQ_ADJ_ORIG, ch.SeqAdjust(5, 6, 7))
    children = [(atype, struct.unpack_from(">I", packed, off)[0]) for atype, off, _l in iter_attrs(packed, 4, len(packed))]
    assert children == list(zip(ch.seq_adj_node_fields(), (5, 6, 7)))


@pytest.mark.parametrize("name", ["", "a-name-that-is-too-long"])
def test_bad_helper_names_are_refused(name):
    with pytest.raises(ValueError):
        ch.pack_helper(name)
