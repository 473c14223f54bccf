"""The controller-side validator: ietf-nat + yang/*.yang, every error with its path, and fast."""

import copy
import glob
import json
import os
import sys
import re
import socket
import time

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import (
    ConntrackEntry,
    FlowTuple,
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_xml import parse_conntrack_xml
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    instance,
    new_document,
    set_sessions,
    write_document,
)
from ansible_collections.nfstate.migration.plugins.plugin_utils import yang_model
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import (
    validate,
    validate_file,
    yangson_errors,
)
from ansible_collections.nfstate.migration.tests.unit.test_session_model import sample_entries

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "conntrack.xml")
INSTANCE = '/ietf-nat:nat/instances/instance[id="1"]'
ENTRY = INSTANCE + '/mapping-table/mapping-entry[index="%d"]'


def snapshot_document(entries):
    doc = new_document("edge-nat", taken_at="2026-11-26T08:00:00Z", source_host="nat-a",
                       implementation="iptables", kind="full")
    return set_sessions(doc, entries)


@pytest.fixture
def good():
    return snapshot_document(sample_entries())


def _entry(doc, position):
    return instance(doc)["mapping-table"]["mapping-entry"][position]


# ---------------------------------------------------------------- the YANG library

def test_library_holds_ietf_nat_and_every_module_of_the_collection():
    text, search = yang_model.yang_library()
    modules = dict((m["name"], m) for m in json.loads(text)["ietf-yang-library:modules-state"]["module"])
    assert modules["ietf-nat"]["revision"] == "2019-01-10"
    assert sorted(modules["ietf-nat"]["feature"]) == ["basic-nat44", "dst-nat", "napt44"]
    for name in ("ietf-inet-types", "ietf-yang-types", "ietf-interfaces"):
        assert name in modules
    own = [os.path.basename(p)[:-len(".yang")] for p in glob.glob(os.path.join(ROOT, "yang", "*.yang"))]
    assert "nfstate-nat" in own
    for name in own:
        assert modules[name]["conformance-type"] == "implement"
    # The standard modules come from the pyang distribution, never from the repository.
    assert glob.glob(os.path.join(ROOT, "**", "ietf-*.yang"), recursive=True) == []
    ietf = [d for d in search if os.path.exists(os.path.join(d, "ietf-nat.yang"))]
    # ... found where the installed pyang put them (under the interpreter's prefix, a virtual
    # environment perhaps kept inside the checkout).
    assert ietf and os.path.realpath(ietf[0]).startswith(os.path.realpath(sys.prefix))


def test_data_model_is_built_once():
    assert yang_model.data_model() is yang_model.data_model()


# ---------------------------------------------------------------- what we emit validates

def test_every_kind_of_session_validates(good):
    assert validate(good) == []


def test_parsed_xml_document_validates():
    assert validate(snapshot_document(parse_conntrack_xml(open(FIXTURE).read()))) == []


def test_minimal_documents_validate():
    assert validate(new_document("plain")) == []
    assert validate({}) == []


@pytest.mark.parametrize("name", ["state.json", "state.json.gz"])
def test_validate_file(tmp_path, good, name):
    path = str(tmp_path / name)
    write_document(good, path)
    assert validate_file(path) == []
    _entry(good, 0)["lifetime"] = -1
    write_document(good, path)
    assert [error[0] for error in validate_file(path)] == [ENTRY % 1 + "/lifetime"]


def test_validate_file_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    [(where, message)] = validate_file(str(path))
    assert where == "/" and "cannot read" in message


# ---------------------------------------------------------------- every error, with its path

def test_a_bad_document_yields_every_error_with_its_path(good):
    doc = copy.deepcopy(good)
    _entry(doc, 0)["internal-src-port"]["start-port-number"] = 70000      # type range
    _entry(doc, 1)["nfstate-nat:tcp"]["state"] = "open"                   # enumeration
    _entry(doc, 3)["transport-protocol"] = 6                              # UDP entry gets TCP...
    _entry(doc, 4)["nfstate-nat:tcp"] = {"state": "established"}          # ...when on a UDP entry
    _entry(doc, 5)["internal-src-port"]["end-port-number"] = 1           # must: end >= start
    _entry(doc, 6)["nfstate-nat:labels"] = "xyz"                          # pattern
    _entry(doc, 7)["bogus"] = True                                        # unknown member
    _entry(doc, 8)["index"] = 1                                           # duplicate key
    instance(doc)["nfstate-nat:snapshot"]["kind"] = "partial"             # outside the sessions
    errors = validate(doc)
    paths = [error[0] for error in errors]
    assert paths == [
        INSTANCE + "/nfstate-nat:snapshot/kind",
        ENTRY % 1 + "/internal-src-port/start-port-number",
        ENTRY % 2 + "/nfstate-nat:tcp/state",
        ENTRY % 5 + "/nfstate-nat:tcp",
        ENTRY % 6 + "/internal-src-port/end-port-number",
        ENTRY % 7 + "/nfstate-nat:labels",
        ENTRY % 8 + "/bogus",
        INSTANCE + "/mapping-table/mapping-entry[9]",
    ]
    messages = dict(errors)
    assert "not in range, got 70000" in messages[paths[1]]
    assert "when condition" in messages[paths[3]]
    assert "must-violation: The end-port-number must be greater than or equal" in messages[paths[4]]
    assert "non-unique-key" in messages[paths[7]]


def _normalise(path, message):
    """yangson's path for an error, in the form our validator reports it."""
    path = re.sub(r'\[[\w:-]+="([^"]*)"\]', r'[\1]', path)
    path = re.sub(r'=([^/]+)', lambda m: '[%s]' % m.group(1), path)
    found = re.search(r"member-not-allowed: (\S+)", message)
    if found and not path.endswith("/" + found.group(1)):
        path += "/" + found.group(1)
    return path


MUTATIONS = {
    "port out of range": lambda d: _entry(d, 0)["internal-src-port"].update({"start-port-number": 70000}),
    "end before start": lambda d: _entry(d, 0)["internal-src-port"].update({"end-port-number": 10}),
    "tcp on udp": lambda d: _entry(d, 0).update({"transport-protocol": 17}),
    "icmp on tcp": lambda d: _entry(d, 0).update({"nfstate-nat:icmp": {"type": 8}}),
    "address without length": lambda d: _entry(d, 0).update({"internal-src-address": "192.0.2.1"}),
    "ipv6 garbage": lambda d: _entry(d, 1).update({"internal-src-address": "2001:db8::zz/128"}),
    "unknown member": lambda d: _entry(d, 0).update({"foo": 1}),
    "unqualified augment": lambda d: _entry(d, 0).update({"tcp": {}}),
    "boolean as number": lambda d: _entry(d, 0).update({"nfstate-nat:seen-reply": 1}),
    "number as boolean": lambda d: _entry(d, 0).update({"lifetime": True}),
    "key as text": lambda d: _entry(d, 0).update({"index": "1"}),
    "key missing": lambda d: _entry(d, 0).pop("index"),
    "duplicate key": lambda d: _entry(d, 1).update({"index": 1}),
    "unknown flag": lambda d: _entry(d, 0)["nfstate-nat:tcp"]["original"].update({"flags": "window-scale x"}),
    "window scale": lambda d: _entry(d, 0)["nfstate-nat:tcp"]["original"].update({"window-scale": 15}),
    "zone range": lambda d: _entry(d, 0).update({"nfstate-nat:zone": 70000}),
    "instance id 0": lambda d: instance(d).update({"id": 0}),
    "taken-at": lambda d: instance(d)["nfstate-nat:snapshot"].update({"taken-at": "yesterday"}),
    "state data": lambda d: instance(d).update({"capabilities": {}}),
    "ports not an object": lambda d: _entry(d, 0).update({"internal-src-port": 5}),
    "policy without key": lambda d: instance(d).update({"policy": [{}]}),
    "top level unknown": lambda d: d.update({"foo:bar": {}}),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_agrees_with_yangson(good, name):
    doc = copy.deepcopy(good)
    MUTATIONS[name](doc)
    ours = validate(doc)
    theirs = yangson_errors(doc, limit=1)
    assert theirs and ours, (ours, theirs)
    expected = _normalise(*theirs[0])
    assert any(_normalise(error[0], "").startswith(expected) for error in ours), (ours, theirs)


def test_rfc7951_member_names_are_strict(good):
    # Inside an augment's own container names are not qualified again (RFC 7951, section 4).
    _entry(good, 0)["nfstate-nat:tcp"]["nfstate-nat:state"] = "close"
    assert [error[0] for error in validate(good)] == [ENTRY % 1 + "/nfstate-nat:tcp/nfstate-nat:state"]


def test_yangson_pass_reports_several_errors_outside_the_sessions():
    doc = new_document("x", kind="full")
    instance(doc)["policy"] = [{"id": 1}, {"id": 1}]
    instance(doc)["id"] = 0
    errors = yangson_errors(doc)
    assert len(errors) >= 2
    assert len(validate(doc)) >= 2


# ---------------------------------------------------------------- the compiled checks

def _mapping_entry_checker():
    root = yang_model._root_checker()
    nat = root.root.members["ietf-nat:nat"].checker
    inst = nat.members["instances"].checker.members["instance"].checker
    return inst.entry.members["mapping-table"].checker.members["mapping-entry"].checker


def _conditions(checker, seen=None):
    seen = set() if seen is None else seen
    if id(checker) in seen:
        return []
    seen.add(id(checker))
    if isinstance(checker, yang_model._List):
        return _conditions(checker.entry, seen)
    found = list(getattr(checker, "musts", []))
    for member in getattr(checker, "members", {}).values():
        found += member.whens + _conditions(member.checker, seen)
    return found


def test_every_session_constraint_is_compiled():
    conditions = _conditions(_mapping_entry_checker())
    assert len(conditions) >= 6       # 4 port musts and the tcp and icmp whens
    assert [c.text for c in conditions if c.fn is None] == []


def test_uncompiled_constraints_fall_back_to_yangson(good, monkeypatch):
    entry = _mapping_entry_checker().entry
    when = entry.members["nfstate-nat:tcp"].whens[0]
    monkeypatch.setattr(when, "fn", None)
    assert validate(good) == []
    _entry(good, 3)["nfstate-nat:tcp"] = {"state": "established"}     # a UDP session
    errors = validate(good)
    assert len(errors) == 1
    assert errors[0][0] == ENTRY % 4 and "member-not-allowed: nfstate-nat:tcp" in errors[0][1]


# ---------------------------------------------------------------- speed

def test_hundred_thousand_sessions_validate_in_seconds():
    entries = []
    for i in range(100000):
        orig = FlowTuple(socket.AF_INET, 6, "192.0.2.%d" % (i // 60000 + 1), "203.0.113.%d" % (i % 200 + 1),
                         1024 + i % 60000, 443)
        reply = FlowTuple(socket.AF_INET, 6, orig.dst, "198.51.100.%d" % (i // 60000 + 1), 443, 1024 + i % 60000)
        entries.append(ConntrackEntry(orig, reply, IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT,
                                      300, 0, 0, None, 3, 7, 7, 0x23, 0x23))
    doc = snapshot_document(entries)
    yang_model.data_model()
    start = time.process_time()
    errors = validate(doc)
    spent = time.process_time() - start
    assert errors == []
    # About 1.5 s here; yangson alone needs about 150 s for the same document.
    assert spent < 8, spent
