"""Document helpers: building, reading and writing NAT state documents, and their sessions."""

import datetime
import gzip
import json
import os
import stat

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    DocumentError,
    date_and_time,
    document_entries,
    instance,
    mapping_entries,
    new_document,
    read_document,
    set_mapping_entries,
    set_sessions,
    write_document,
)
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    ModelError,
    entries_to_mappings,
)

from ansible_collections.nfstate.migration.tests.unit.builders import sample_entries

BASE = '/ietf-nat:nat/instances/instance[id="1"]/mapping-table/mapping-entry'


def test_new_document_shape():
    doc = new_document("edge-nat", taken_at=datetime.datetime(2026, 11, 26, 8, 0, tzinfo=datetime.timezone.utc),
                       source_host="nat-a", implementation="iptables", kind="full")
    assert doc == {"ietf-nat:nat": {"instances": {"instance": [{
        "id": 1, "name": "edge-nat",
        "nfstate-nat:snapshot": {"taken-at": "2026-11-26T08:00:00Z", "source-host": "nat-a",
                                 "implementation": "iptables", "kind": "full"},
        "mapping-table": {"mapping-entry": []}}]}}}
    assert "nfstate-nat:snapshot" not in instance(new_document("plain"))


def test_new_document_refuses_unknown_metadata():
    with pytest.raises(TypeError):
        new_document("x", source="nat-a")
    with pytest.raises(ValueError):
        new_document("x", kind="partial")


def test_date_and_time():
    assert date_and_time(datetime.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert date_and_time(moment) == "2026-01-02T03:04:05+02:00"


def test_set_sessions_counts_and_indexes():
    doc = new_document("edge-nat", kind="full", sessions=0)
    set_sessions(doc, sample_entries())
    entries = mapping_entries(doc)
    assert [m["index"] for m in entries] == list(range(1, len(sample_entries()) + 1))
    assert instance(doc)["nfstate-nat:snapshot"]["session-count"] == len(entries)
    set_mapping_entries(doc, entries[:2])
    assert instance(doc)["nfstate-nat:snapshot"]["session-count"] == 2


def test_document_entries_round_trip():
    doc = set_sessions(new_document("edge-nat"), sample_entries())
    assert document_entries(doc) == sample_entries()


def test_document_entries_reports_every_bad_entry():
    mappings = entries_to_mappings(sample_entries())
    mappings[0]["lifetime"] = -5
    del mappings[2]["nfstate-nat:initiator"]
    mappings[3]["index"] = "four"
    mappings[5]["index"] = 1                                 # duplicate key
    mappings.append(dict(mappings[1], index=99))             # the same session again
    doc = set_mapping_entries(new_document("edge-nat"), mappings)
    with pytest.raises(DocumentError) as raised:
        document_entries(doc)
    assert raised.value.errors == [
        (BASE + '[index="1"]/lifetime', "-5 is out of range 0..4294967295"),
        (BASE + '[index="3"]/nfstate-nat:initiator', "missing: which side opened the session"),
        (BASE + "[4]/index", "expected an integer 0..4294967295, got 'four'"),
        (BASE + "[6]", "duplicate index 1"),
        (BASE + '[index="99"]', "the same session as mapping-entry index 2 (zone and original tuple)"),
    ]
    # Callers that only know ModelError still see it, with the first path.
    assert isinstance(raised.value, ModelError)
    assert raised.value.path == BASE + '[index="1"]/lifetime'
    assert "5 error(s)" in str(raised.value)


@pytest.mark.parametrize("doc,message", [
    ({}, "missing"),
    ({"ietf-nat:nat": {"instances": {"instance": []}}}, "exactly one NAT instance, found 0"),
    ({"ietf-nat:nat": {"instances": {"instance": [{"id": 1}, {"id": 2}]}}}, "found 2"),
])
def test_instance_errors(doc, message):
    with pytest.raises(DocumentError) as raised:
        instance(doc)
    assert message in raised.value.errors[0][1]


def test_mapping_entries_not_a_list():
    doc = new_document("x")
    instance(doc)["mapping-table"]["mapping-entry"] = {"index": 1}
    with pytest.raises(DocumentError) as raised:
        mapping_entries(doc)
    assert raised.value.errors[0][0] == BASE


@pytest.mark.parametrize("name", ["state.json", "state.json.gz"])
def test_write_and_read(tmp_path, name):
    doc = set_sessions(new_document("edge-nat", kind="full"), sample_entries())
    path = tmp_path / name
    write_document(doc, str(path))
    assert read_document(str(path)) == doc
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == [name]            # no temporary file left behind
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    if name.endswith(".gz"):
        assert json.loads(gzip.decompress(raw)) == doc


def test_write_replaces_atomically_and_is_reproducible(tmp_path):
    path = str(tmp_path / "state.json.gz")
    write_document(new_document("old"), path)
    doc = set_sessions(new_document("new"), sample_entries())
    write_document(doc, path)
    first = open(path, "rb").read()
    write_document(doc, path)
    assert open(path, "rb").read() == first
    assert instance(read_document(path))["name"] == "new"


def test_write_failure_leaves_old_file(tmp_path):
    path = str(tmp_path / "state.json")
    write_document(new_document("old"), path)
    with pytest.raises(TypeError):
        write_document({"not json": object()}, path)
    assert instance(read_document(path))["name"] == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_read_recognises_gzip_by_content_and_reports_bad_json(tmp_path):
    path = tmp_path / "state.bin"
    path.write_bytes(gzip.compress(b'{"ietf-nat:nat": {}}'))
    assert read_document(str(path)) == {"ietf-nat:nat": {}}
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(DocumentError):
        read_document(str(bad))
