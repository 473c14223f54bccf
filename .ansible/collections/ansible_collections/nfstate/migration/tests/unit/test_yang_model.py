"""The controller-side validator: yangson on the skeleton, the hosts' strict checker on the sessions,
every error with its path, and fast."""

import copy
import glob
import json
import os
import sys
import time

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_xml import parse_conntrack_xml
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    instance,
    new_document,
    write_document,
)
from ansible_collections.nfstate.migration.plugins.plugin_utils import yang_model
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import (
    skeleton,
    validate,
    validate_file,
    yangson_errors,
)
from ansible_collections.nfstate.migration.tests.unit.builders import (
    ENTRY,
    INSTANCE,
    many_tcp_sessions,
    mapping_entries_of,
    sample_entries,
    snapshot_document,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "conntrack.xml")


@pytest.fixture
def good():
    return snapshot_document(sample_entries())


def _entry(doc, position):
    return mapping_entries_of(doc)[position]


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
    assert yangson_errors(good) == []


def test_parsed_xml_document_validates():
    assert validate(snapshot_document(parse_conntrack_xml(open(FIXTURE).read()))) == []


def test_minimal_document_validates():
    assert validate(new_document("plain")) == []


def test_a_document_is_one_instance(good):
    # The YANG model allows any number of instances; the hosts apply documents of exactly one.
    assert yangson_errors({}) == []
    assert validate({}) == [("/ietf-nat:nat/instances/instance", "missing: not a NAT state document")]
    second = copy.deepcopy(instance(good))
    second["id"] = 2
    instance(good)  # the fixture's own
    good["ietf-nat:nat"]["instances"]["instance"].append(second)
    assert yangson_errors(good) == []
    assert validate(good) == [("/ietf-nat:nat/instances/instance", "expected exactly one NAT instance, found 2")]
    assert validate([]) == [("/", "invalid-type: a document is a JSON object")]


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
    assert where == "/" and "cannot read" in message and str(path) in message and "not JSON" in message


def test_validate_file_with_more_sessions_than_allowed(tmp_path, good):
    path = str(tmp_path / "state.json.gz")
    write_document(good, path)
    [(where, message)] = validate_file(path, max_sessions=3)
    assert where == "/" and "holds 10 sessions, more than the limit of 3" in message


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
    assert [error[0] for error in errors] == [
        INSTANCE + "/nfstate-nat:snapshot/kind",
        ENTRY % 1 + "/internal-src-port/start-port-number",
        ENTRY % 2 + "/nfstate-nat:tcp/state",
        ENTRY % 4 + "/nfstate-nat:tcp",
        ENTRY % 5 + "/nfstate-nat:tcp",
        ENTRY % 6 + "/internal-src-port/end-port-number",
        ENTRY % 7 + "/nfstate-nat:labels",
        ENTRY % 8 + "/bogus",
        INSTANCE + "/mapping-table/mapping-entry[9]",
    ]
    messages = [error[1] for error in errors]
    assert "enumeration" in messages[0]
    assert messages[1] == "70000 is out of range 0..65535"
    assert messages[2] == "unknown TCP state 'open'"
    assert messages[3] == "missing: the TCP state of the session"
    assert messages[4] == "TCP state on a protocol 17 session"
    assert "one port, not a range" in messages[5]
    assert messages[6] == "expected 32 hexadecimal digits, got 'xyz'"
    assert messages[7] == "unknown member"
    assert messages[8] == "duplicate index 1"


def test_skeleton_errors_come_from_yangson_several_at_once():
    doc = new_document("x", kind="full")
    instance(doc)["policy"] = [{"id": 1}, {"id": 1}]
    instance(doc)["id"] = 0
    errors = validate(doc)
    assert len(errors) >= 2
    assert errors == yangson_errors(skeleton(doc))


@pytest.mark.parametrize("mutate,path", [
    (lambda d: instance(d).update({"id": 0}), INSTANCE.replace("1", "0")),
    (lambda d: instance(d)["nfstate-nat:snapshot"].update({"taken-at": "yesterday"}), INSTANCE + "/nfstate-nat:snapshot"),
    (lambda d: instance(d).update({"capabilities": {}}), INSTANCE),
    (lambda d: instance(d).update({"policy": [{}]}), INSTANCE),
    (lambda d: d.update({"foo:bar": {}}), "/"),
    (lambda d: instance(d)["nfstate-nat:snapshot"].update({"implementation": "x" * 65}), INSTANCE + "/nfstate-nat:snapshot"),
    (lambda d: instance(d)["mapping-table"].update({"mapping-entry": {}}), INSTANCE + "/mapping-table/mapping-entry"),
], ids=["instance id 0", "taken-at", "state data", "policy without key", "top level unknown",
        "implementation too long", "entries not a list"])
def test_skeleton_mutations_are_refused_with_a_path(good, mutate, path):
    mutate(good)
    errors = validate(good)
    assert errors and all(isinstance(p, str) and isinstance(m, str) for p, m in errors)
    assert any(p.startswith(path) for p, m in errors), errors


def test_skeleton_shares_everything_but_the_entries(good):
    stripped = skeleton(good)
    inst = stripped["ietf-nat:nat"]["instances"]["instance"][0]
    assert inst["mapping-table"] == {}
    assert inst["nfstate-nat:snapshot"] is instance(good)["nfstate-nat:snapshot"]
    assert len(mapping_entries_of(good)) == 10      # the document itself is left alone


def test_long_values_are_quoted_short(good):
    _entry(good, 0)["internal-src-address"] = "x" * 50000
    [(path, message)] = validate(good)
    assert path == ENTRY % 1 + "/internal-src-address"
    assert len(message) < 400 and "characters cut" in message and message.endswith("is not a prefix: add /32 or /128")


def test_data_nested_past_any_bound_gives_errors_not_an_exception(monkeypatch):
    deep = {}
    for dummy in range(5000):
        deep = {"a": deep}
    assert validate({"ietf-nat:nat": deep})[0] == ("/ietf-nat:nat/a", "member-not-allowed")
    # Where a caller's own data would exhaust the stack, that is one error too.
    monkeypatch.setattr(yang_model, "session_errors", validate)
    assert validate({"ietf-nat:nat": {}}) == [("/", "too-deep: the document nests deeper than a state document may")]


# ---------------------------------------------------------------- speed

def test_hundred_thousand_sessions_validate_in_seconds():
    doc = snapshot_document(many_tcp_sessions(100000))
    yang_model.data_model()
    start = time.process_time()
    errors = validate(doc)
    spent = time.process_time() - start
    assert errors == []
    # About 0.9 s of CPU here (the strict checker); yangson alone needs about 150 s for the same document.
    assert spent < 8, spent
