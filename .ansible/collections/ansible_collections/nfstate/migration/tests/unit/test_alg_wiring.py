"""The ALG state through the session driver, the state document, the delta and the NAT rules."""

import socket
import struct

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model as am
from ansible_collections.nfstate.migration.plugins.module_utils import alg_state
from ansible_collections.nfstate.migration.plugins.module_utils import conntrack as ct
from ansible_collections.nfstate.migration.plugins.module_utils import netlink as nl
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    IPS_ASSURED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    ConntrackEntry,
    FlowTuple,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_expect import Expectation, exact_mask, pack_tuple
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_helper import (
    CTA_HELP,
    CTA_SEQ_ADJ_ORIG,
    CTA_TUPLE_MASTER,
    HelperState,
    SeqAdjust,
    pack_helper_attrs,
    parse_helper_attrs,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    DocumentError,
    build_document,
    delta_document,
    document_sessions,
    instance,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import (
    ModelError,
    alg_policy,
    algs_of,
    is_alg_policy,
    rules_of,
)
from ansible_collections.nfstate.migration.plugins.module_utils.resources.nat_rules import target_algs
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import validate

A4 = socket.AF_INET
SEEN = IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT


def tcp(sport, dport, nat_port, alg=None):
    """A client's TCP session to the server, source-NATed to 203.0.113.1:nat_port."""
    return ConntrackEntry(FlowTuple(A4, 6, "192.0.2.10", "203.0.113.20", sport, dport),
                          FlowTuple(A4, 6, "203.0.113.20", "203.0.113.1", dport, nat_port), SEEN, 3600,
                          tcp_state=3, tcp_wscale_orig=7, tcp_wscale_reply=7, tcp_flags_orig=0x23, tcp_flags_reply=0x23,
                          alg=alg)


CONTROL = tcp(40000, 21, 20001, HelperState("ftp", SeqAdjust(1000, 0, 1), SeqAdjust(0, 0, 0)))
DATA = tcp(40002, 50000, 20002, HelperState(master=CONTROL.orig))
PLAIN = tcp(40004, 80, 20003)


def passive(master=CONTROL.orig, dport=50010, timeout=280):
    tup = FlowTuple(A4, 6, "192.0.2.10", "203.0.113.20", 0, dport)
    return Expectation(master, tup, exact_mask(tup)._replace(sport=0), timeout, "ftp", 0, 0, 1,
                       FlowTuple(A4, 6, "0.0.0.0", "0.0.0.0", dport, 0), "nat-follow-master")


# --- the driver ---------------------------------------------------------------------------------

def test_creation_carries_helper_and_sequence_adjustment_beside_the_nat_binding():
    failures, order = [], []
    message, = ct._MessageBuilder().create_messages([CONTROL], True, failures, order)
    assert failures == [] and struct.unpack_from("=I", message)[0] == len(message)
    assert parse_helper_attrs(message, 0, len(message)) == CONTROL.alg
    plain, = ct._MessageBuilder().create_messages([PLAIN], True, [], [])
    assert parse_helper_attrs(plain, 0, len(plain)) == HelperState()


def test_children_are_created_after_their_masters():
    sent = []

    class Recorder(object):
        def transact(self, messages, **kwargs):
            sent.extend(parse_helper_attrs(m, 0, len(m)) for m in messages)
            return []

    table = ct.Conntrack.__new__(ct.Conntrack)
    table._nl, table._builder, table.ack_each, table.batch_size = Recorder(), ct._MessageBuilder(), False, None
    assert table.create([DATA, PLAIN, CONTROL]) == []
    assert [state.master is not None for state in sent] == [False, False, True]


class ScriptedDump(object):
    def __init__(self, messages):
        self.messages = messages

    def dump(self, request):
        chunk = bytearray(b"".join(self.messages))
        yield chunk, 0, len(chunk)


def _dumped_message(entry, extra=b""):
    attrs = [ct_tuple(ct.CTA_TUPLE_ORIG, entry.orig), ct_tuple(ct.CTA_TUPLE_REPLY, entry.reply),
             nl.pack_nla(ct.CTA_STATUS, struct.pack(">I", entry.status)),
             nl.pack_nla(ct.CTA_TIMEOUT, struct.pack(">I", entry.timeout)), extra]
    return nl.pack_message(ct.CT_NEW, nl.NLM_F_MULTI, b"".join(attrs), family=A4)


def ct_tuple(atype, tup):
    return pack_tuple(atype, tup)


def bare(entry):
    """An entry as _dumped_message writes it: no TCP protoinfo, no mark attribute."""
    return entry._replace(tcp_state=None, tcp_wscale_orig=None, tcp_wscale_reply=None,
                          tcp_flags_orig=None, tcp_flags_reply=None, mark=0)


def test_dump_reads_the_alg_state_of_the_few_entries_that_have_it():
    messages = [_dumped_message(PLAIN), _dumped_message(CONTROL, pack_helper_attrs(CONTROL.alg)),
                _dumped_message(DATA, pack_helper_attrs(DATA.alg)), _dumped_message(PLAIN)]
    table = ct.Conntrack.__new__(ct.Conntrack)
    table._nl, table._reader = ScriptedDump(messages), ct.EntryReader()
    assert table.dump() == [bare(PLAIN), bare(CONTROL), bare(DATA), bare(PLAIN)]
    layout = ct.DumpLayout(messages[1], 0, len(messages[1]))
    assert layout.alg and not ct.DumpLayout(messages[0], 0, len(messages[0])).alg
    assert set((CTA_HELP, CTA_SEQ_ADJ_ORIG, CTA_TUPLE_MASTER)) <= ct._ALG_ATTRS


# --- the document -------------------------------------------------------------------------------

def test_snapshot_carries_masters_children_and_expectations_and_reads_them_back():
    not_carried = []
    document = build_document([PLAIN, DATA, CONTROL], "nat", expectations=[passive()], not_carried=not_carried)
    assert not_carried == [] and validate(document) == []
    entries = instance(document)["mapping-table"]["mapping-entry"]
    assert entries[1][am.MASTER] == 3 and entries[2][am.HELPER] == "ftp"
    assert instance(document)[am.EXPECTATIONS]["expectation"][0]["master"] == 3
    sessions = document_sessions(document)
    assert [e.alg for e in sessions.present] == [None, DATA.alg, CONTROL.alg]
    assert sessions.expectations == [passive()._replace(id=None)]


def test_what_cannot_be_carried_is_listed_never_dropped():
    not_carried = []
    orphan = passive(master=FlowTuple(A4, 6, "192.0.2.10", "203.0.113.20", 40009, 21))
    document = build_document([DATA], "nat", expectations=[orphan], not_carried=not_carried)
    assert len(not_carried) == 2, not_carried
    assert "master" in not_carried[0] and "moves as a plain session" in not_carried[0]
    assert "its master session is not in the snapshot" in not_carried[1]
    assert am.MASTER not in instance(document)["mapping-table"]["mapping-entry"][0]
    assert am.EXPECTATIONS not in instance(document) and validate(document) == []


def test_helper_private_state_is_named_per_session():
    sip = tcp(5060, 5060, 20005, HelperState("sip"))
    notes = alg_state.not_moved_notes([sip, CONTROL, PLAIN, tcp(1, 2, 3, HelperState("ftp", private=True))])
    assert len(notes) == 2 and "sip helper, without SIP dialogue state" in notes[0]
    assert "CTA_HELP_INFO" in notes[1]


def test_an_expectation_whose_master_is_flagged_removed_fails_with_its_path():
    document = build_document([CONTROL], "nat", expectations=[passive()])
    instance(document)["mapping-table"]["mapping-entry"][0]["nfstate-nat:removed"] = [None]
    with pytest.raises(DocumentError) as caught:
        document_sessions(document)
    assert any("expectation" in path and "master" in path for path, _message in caught.value.errors)


def test_a_delta_carries_the_expectation_table_with_its_masters():
    previous = [PLAIN, CONTROL]
    document, added, removed, refreshed = delta_document(previous, previous, "nat", expectations=[passive()])
    assert (added, removed, refreshed) == (0, 0, 1)
    sessions = document_sessions(document)
    assert [e.orig for e in sessions.present] == [CONTROL.orig] and len(sessions.expectations) == 1
    # Without expectations nothing unchanged crosses.
    assert delta_document(previous, previous, "nat")[1:] == (0, 0, 0)


def test_expectations_count_down_and_run_out():
    kept, = alg_state.counted_down([passive(timeout=100), passive(dport=50011, timeout=3)], 10)
    assert kept.timeout == 90 and kept.tuple.dport == 50010


def test_without_alg_state_the_sessions_move_alone():
    entries, expectations = alg_state.gathered([CONTROL, PLAIN], alg=False)
    assert expectations == [] and [e.alg for e in entries] == [None, None]


# --- the rules ----------------------------------------------------------------------------------

def test_alg_policy_travels_beside_the_nat_rules():
    rules, refused = am.algs_to_rules([{"name": "ftp"}, {"name": "tftp"}])
    assert refused == []
    policy = alg_policy(rules, 7)
    assert is_alg_policy(policy) and not is_alg_policy({"id": 1, "algs": [], "dst-nat-enable": True})
    assert algs_of([policy]) == (rules, [])
    assert rules_of([policy]) == []  # not a NAT rule, and not refused as one
    with pytest.raises(ModelError):
        rules_of([dict(policy, **{"dst-nat-enable": True})])  # mixed with another member: not ours


def test_alg_targets_by_state():
    ftp, tftp, ftp2121 = am.algs_to_rules([{"name": "ftp"}, {"name": "tftp"},
                                           {"name": "ftp", "dst-transport-port": {"start-port-number": 2121}}])[0]
    assert target_algs("merged", [ftp, tftp], [ftp2121]) == [tftp, ftp2121]
    assert target_algs("overridden", [ftp, tftp], []) == []
    assert target_algs("deleted", [ftp, tftp], None) is None
    assert target_algs("deleted", [ftp, tftp], [tftp]) == [ftp]
