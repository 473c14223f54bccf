"""ALG state in the model: kernel expectations and helper state <-> nfstate-nat-alg members."""

import copy
import random
import socket

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model as am
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import FlowTuple
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_expect import Expectation, exact_mask
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_helper import HelperState, SeqAdjust
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import instance, new_document, set_sessions
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import validate
from ansible_collections.nfstate.migration.tests.unit.builders import samples_of_every_protocol

A4, A6 = socket.AF_INET, socket.AF_INET6
FTP_MASTER = FlowTuple(A4, 6, "192.0.2.2", "198.51.100.9", 44610, 21)
SIP_MASTER = FlowTuple(A4, 17, "192.0.2.2", "198.51.100.9", 5060, 5060)
MASTERS = {1: FTP_MASTER, 2: SIP_MASTER}
# As dumped on this kernel: an FTP passive expectation (see tests/integration/test_alg_state.py).
FTP_PASSIVE = Expectation(
    FTP_MASTER, FlowTuple(A4, 6, "192.0.2.2", "198.51.100.9", 0, 53491),
    FlowTuple(A4, 6, "255.255.255.255", "255.255.255.255", 0, 0xFFFF), 299, "ftp", 0, 0, 0,
    FlowTuple(A4, 6, "0.0.0.0", "0.0.0.0", 53491, 0), "nat-follow-master", 0)
# A SIP RTP expectation: any source address and port, class audio, translated by the SIP helper.
SIP_RTP = Expectation(
    SIP_MASTER, FlowTuple(A4, 17, "0.0.0.0", "198.51.100.1", 0, 16384),
    FlowTuple(A4, 17, "0.0.0.0", "255.255.255.255", 0, 0xFFFF), 180, "sip", 0, 1, 1,
    FlowTuple(A4, 17, "192.0.2.2", "0.0.0.0", 16384, 0), "sip", 0)


def test_ftp_expectation_item_says_what_the_kernel_said():
    item = am.expectation_item(FTP_PASSIVE, 1, 1)
    assert item == {"index": 1, "master": 1, "transport-protocol": 6, "src-address": "192.0.2.2/32",
                    "dst-address": "198.51.100.9", "dst-port": 53491, "lifetime": 299, "helper": "ftp",
                    "nat": {"direction": "original", "port": 53491}, "expectfn": "nat-follow-master"}


def test_sip_expectation_item_with_any_source_class_and_saved_address():
    item = am.expectation_item(SIP_RTP, 3, 2)
    assert item["src-address"] == "0.0.0.0/0" and "src-port" not in item
    assert item["class"] == 1 and item["nat"] == {"direction": "reply", "address": "192.0.2.2", "port": 16384}


@pytest.mark.parametrize("exp", [FTP_PASSIVE, SIP_RTP])
def test_expectations_round_trip(exp):
    master = 1 if exp.master == FTP_MASTER else 2
    assert am.expectation_of_item(am.expectation_item(exp, 1, master), MASTERS) == exp._replace(id=None)


def _random_expectation(rng):
    family = rng.choice((A4, A6))
    anyaddr, ones = ("0.0.0.0", "255.255.255.255") if family == A4 else ("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    proto = rng.choice((6, 17))
    if family == A4:
        src, dst, saved = "192.0.2.%d" % rng.randrange(1, 255), "198.51.100.%d" % rng.randrange(1, 255), "203.0.113.7"
    else:
        src, dst, saved = "2001:db8::%x" % rng.randrange(1, 4096), "2001:db8:1::%x" % rng.randrange(1, 4096), "2001:db8:2::7"
    exact_source, exact_port = rng.random() < 0.7, rng.random() < 0.5
    tup = FlowTuple(family, proto, src if exact_source else anyaddr, dst, rng.randrange(1, 65536) if exact_port else 0,
                    rng.randrange(1, 65536))
    mask = exact_mask(tup)._replace(src=ones if exact_source else anyaddr, sport=0xFFFF if exact_port else 0)
    master = FlowTuple(family, rng.choice((6, 17)), src, dst, rng.randrange(1, 65536), rng.randrange(1, 65536))
    nat = rng.random() < 0.6
    nat_tuple = FlowTuple(family, master.proto, saved if rng.random() < 0.5 else anyaddr, anyaddr,
                          rng.randrange(0, 65536), 0) if nat else None
    return Expectation(master, tup, mask, rng.randrange(0, 1 << 20), rng.choice((None, "ftp", "sip", "Q.931")),
                       rng.choice((0, 1, 2, 3, 4)) & 3, rng.choice((0, 1, 2)), rng.choice((0, 1)) if nat else None,
                       nat_tuple, rng.choice((None, "nat-follow-master", "sip")), rng.choice((0, 5)))


@pytest.mark.parametrize("seed", range(60))
def test_random_expectations_round_trip_through_the_container(seed):
    rng = random.Random(seed)
    made = [_random_expectation(rng) for _count in range(rng.randrange(1, 6))]
    index_of = am.master_index_of((position, exp.master) for position, exp in enumerate(made, 10))
    container, refused = am.expectations_container(made, index_of)
    assert refused == []
    items = container[am.EXPECTATIONS]["expectation"]
    assert [item["index"] for item in items] == list(range(1, len(made) + 1))
    masters = dict((position, exp.master) for position, exp in enumerate(made, 10))
    assert [am.expectation_of_item(item, masters) for item in items] == [exp._replace(id=None) for exp in made]


def test_expectation_of_an_unknown_master_is_refused_with_a_reason():
    container, refused = am.expectations_container([FTP_PASSIVE, SIP_RTP], am.master_index_of([(1, FTP_MASTER)]))
    assert [item["master"] for item in container[am.EXPECTATIONS]["expectation"]] == [1]
    assert len(refused) == 1 and "not in the snapshot" in refused[0]["reason"]
    assert "sip expectation udp" in refused[0]["expectation"]


def test_no_expectations_no_container():
    assert am.expectations_container([], {}) == ({}, [])


def test_masks_a_prefix_cannot_say_are_refused():
    odd = FTP_PASSIVE._replace(mask=FTP_PASSIVE.mask._replace(src="255.0.255.0"))
    with pytest.raises(am.AlgModelError) as info:
        am.expectation_item(odd, 1, 1)
    assert info.value.path == "src-address"
    with pytest.raises(am.AlgModelError):
        am.expectation_item(FTP_PASSIVE._replace(mask=FTP_PASSIVE.mask._replace(sport=0xFF00)), 1, 1)


@pytest.mark.parametrize("change,path", [
    (lambda item: item.pop("dst-port"), "dst-port"),
    (lambda item: item.update(master=9), "master"),
    (lambda item: item.update({"transport-protocol": 1}), "transport-protocol"),
    (lambda item: item.update({"src-address": "192.0.2.2/24"}), "src-address"),
    (lambda item: item.update({"dst-address": "2001:db8::1"}), "dst-address"),
    (lambda item: item.update(flags="permanent sticky"), "flags"),
    (lambda item: item.update(nat={"direction": "sideways"}), "nat/direction"),
    (lambda item: item.update(nat={"direction": "reply", "port": 70000}), "nat/port"),
    (lambda item: item.update(lifetime=-1), "lifetime"),
    (lambda item: item.update(expectfn=""), "expectfn"),
])
def test_bad_items_are_refused_with_their_member(change, path):
    item = am.expectation_item(FTP_PASSIVE, 1, 1)
    change(item)
    with pytest.raises(am.AlgModelError) as info:
        am.expectation_of_item(item, MASTERS)
    assert info.value.path == path


# --- the master's members ------------------------------------------------------------------------

@pytest.mark.parametrize("state,master_index", [
    (HelperState("ftp", SeqAdjust(2750089217, 0, 3), SeqAdjust(0, 0, 0)), None),
    (HelperState("ftp", SeqAdjust(7, 0xFFFFFFFE, 0xFFFFFFFD)), None),
    (HelperState("sip"), None),
    (HelperState(None, master=FTP_MASTER), 1),
])
def test_helper_members_round_trip(state, master_index):
    members = am.helper_members(state, master_index)
    assert am.helper_state(members, MASTERS) == state


def test_negative_offsets_read_as_signed():
    members = am.helper_members(HelperState("ftp", SeqAdjust(7, 0xFFFFFFFE, 0xFFFFFFFD)))
    assert members[am.SEQUENCE_ADJUSTMENT]["original"] == {"correction-position": 7, "offset-before": -2, "offset-after": -3}


def test_no_helper_state_no_members():
    assert am.helper_members(HelperState()) == {}
    assert am.helper_state({}) == HelperState()


def test_a_child_whose_master_is_missing_is_refused():
    with pytest.raises(am.AlgModelError):
        am.helper_members(HelperState(master=FTP_MASTER))
    with pytest.raises(am.AlgModelError) as info:
        am.helper_state({am.MASTER: 4}, MASTERS)
    assert info.value.path == am.MASTER


def test_incomplete_sequence_adjustment_is_refused():
    with pytest.raises(am.AlgModelError) as info:
        am.helper_state({am.SEQUENCE_ADJUSTMENT: {"reply": {"correction-position": 1, "offset-before": 0}}})
    assert info.value.path.endswith("reply/offset-after")


def test_what_cannot_move_is_named_per_helper():
    assert "dialogue" in am.not_moved("sip") and "call identifiers" in am.not_moved("pptp")
    assert am.not_moved("ftp") is None


# --- a whole document validates against the YANG modules -----------------------------------------

def alg_document():
    doc = set_sessions(new_document("edge-nat", taken_at="2026-12-01T08:00:00Z", source_host="nat-a",
                                    implementation="iptables", kind="full"), samples_of_every_protocol())
    inst = instance(doc)
    entries = inst["mapping-table"]["mapping-entry"]
    entries[0].update(am.helper_members(HelperState("ftp", SeqAdjust(2750089217, 0, 3), SeqAdjust(0, 0, 0))))
    entries[1].update(am.helper_members(HelperState(None, master=FTP_MASTER), 1))
    container, refused = am.expectations_container([FTP_PASSIVE, SIP_RTP], am.master_index_of([(1, FTP_MASTER), (2, SIP_MASTER)]))
    assert refused == []
    inst.update(container)
    return doc


def test_a_document_with_alg_state_validates():
    assert validate(alg_document()) == []


@pytest.mark.parametrize("change,where", [
    (lambda inst: inst[am.EXPECTATIONS]["expectation"][0].pop("lifetime"), "expectation[index=\"1\"]"),
    (lambda inst: inst[am.EXPECTATIONS]["expectation"][1].update(flags="sticky"), "flags"),
    (lambda inst: inst["mapping-table"]["mapping-entry"][0].update({am.HELPER: "no such helper!"}), "nfstate-nat-alg:helper"),
    (lambda inst: inst["mapping-table"]["mapping-entry"][0][am.SEQUENCE_ADJUSTMENT]["original"].update(
        {"offset-after": 1 << 31}), "offset-after"),
])
def test_bad_alg_state_fails_validation_with_its_path(change, where):
    doc = copy.deepcopy(alg_document())
    change(instance(doc))
    errors = validate(doc)
    assert errors and any(where in path for path, _message in errors), errors


# --- configuration: policy/algs ------------------------------------------------------------------

def test_algs_map_to_kernel_helpers_with_their_standard_ports():
    rules, refused = am.algs_to_rules([
        {"name": "ftp"},
        {"name": "tftp", "status": True},
        {"name": "sip-tcp", "transport-protocol": 6},
        {"name": "h323"},
        {"name": "ftp-2121", "dst-transport-port": {"start-port-number": 2121, "end-port-number": 2122},
         "src-transport-port": {"start-port-number": 1024, "end-port-number": 65535}},
        {"name": "netbios-ns"},
        {"name": "irc", "status": False},
    ])
    assert refused == []
    assert rules == [am.AlgRule("ftp", "ftp", 6, (21, 21)), am.AlgRule("tftp", "tftp", 17, (69, 69)),
                     am.AlgRule("sip-tcp", "sip", 6, (5060, 5060)), am.AlgRule("h323", "Q.931", 6, (1720, 1720)),
                     am.AlgRule("ftp-2121", "ftp", 6, (2121, 2122), (1024, 65535)),
                     am.AlgRule("netbios-ns", "netbios-ns", 17, (137, 137))]


def test_all_algs_enable_overrides_each_status():
    algs = [{"name": "ftp", "status": False}, {"name": "sip"}]
    assert [r.name for r in am.algs_to_rules(algs, all_algs_enable=True)[0]] == ["ftp", "sip"]
    assert am.algs_to_rules(algs, all_algs_enable=False) == ([], [])


@pytest.mark.parametrize("alg,member", [
    ({"name": "dns"}, "name"),
    ({"name": "ftp", "transport-protocol": 132}, "transport-protocol"),
    ({"name": "ftp", "dst-transport-port": {"start-port-number": 30, "end-port-number": 20}}, "dst-transport-port"),
    ({"name": "ftp", "src-transport-port": {"start-port-number": 70000}}, "src-transport-port"),
])
def test_algs_the_kernel_cannot_run_are_refused_with_a_reason(alg, member):
    rules, refused = am.algs_to_rules([alg, {"name": "tftp"}])
    assert [r.name for r in rules] == ["tftp"]
    assert len(refused) == 1 and member in refused[0]["reason"]


def test_rules_to_algs_round_trips():
    algs = [{"name": "ftp"}, {"name": "sip", "dst-transport-port": {"start-port-number": 5060, "end-port-number": 5061},
                              "src-transport-port": {"start-port-number": 5060}}]
    rules = am.algs_to_rules(algs)[0]
    assert am.algs_to_rules(am.rules_to_algs(rules)) == (rules, [])
