"""Property-based tests (Hypothesis): the model mapping round-trips, and the validators never crash
and agree, on random entries and random mutations of them."""

import gzip
import json
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import DocumentFileError, read_document
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import entry_to_mapping, mapping_to_entry
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import (
    data_model,
    session_errors,
    validate,
    yangson_errors,
)
from ansible_collections.nfstate.migration.tests.unit.builders import one_entry_document, sample_entries, snapshot_document
from ansible_collections.nfstate.migration.tests.unit.strategies import (
    SUPPORTED_PROTOCOLS,
    UINT32,
    conntrack_entries,
    damaged_bytes,
    document_mutations,
    leaf_paths,
    mutations,
)

# Bounded, so that CI stays fast; no deadline: yangson's time per example varies with the machine.
BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAPPING_ENTRY = "/ietf-nat:nat/instances/instance/mapping-table/mapping-entry"
LEAVES = leaf_paths(data_model().get_data_node(MAPPING_ENTRY))


def test_mutations_reach_every_leaf_of_the_model():
    names = set("/".join(path) for path, _type in LEAVES)
    assert {"lifetime", "internal-src-port/start-port-number", "nfstate-nat:tcp/original/flags",
            "nfstate-nat:icmp/type", "nfstate-nat:labels"} <= names


@BOUNDED
@given(conntrack_entries(), st.integers(0, UINT32))
def test_kernel_entry_round_trips_through_the_model(entry, index):
    mapping = entry_to_mapping(entry, index)
    assert mapping_to_entry(mapping) == entry
    assert entry_to_mapping(mapping_to_entry(mapping), index) == mapping


@pytest.mark.parametrize("protocol", SUPPORTED_PROTOCOLS)
def test_every_supported_protocol_round_trips(protocol):
    @settings(max_examples=25, deadline=None)
    @given(conntrack_entries(protocols=(protocol,)))
    def round_trip(entry):
        assert entry.orig.proto == protocol
        assert mapping_to_entry(entry_to_mapping(entry, 1)) == entry
    round_trip()


@BOUNDED
@given(conntrack_entries())
def test_every_mapped_entry_is_valid_for_both_checkers(entry):
    doc = one_entry_document(entry_to_mapping(entry, 1))
    assert yangson_errors(doc) == []
    assert validate(doc) == []


@BOUNDED
@given(st.data())
def test_mutated_entries_give_errors_with_paths_and_the_checkers_agree(data):
    mapping = entry_to_mapping(data.draw(conntrack_entries()), 1)
    changed = data.draw(mutations(mapping, LEAVES))
    doc = one_entry_document(changed)
    errors = validate(doc)                       # never an exception
    assert isinstance(errors, list)
    for path, message in errors:
        assert isinstance(path, str) and path.startswith("/ietf-nat:nat/instances/instance")
        assert isinstance(message, str) and message
    if yangson_errors(doc, limit=1):
        assert session_errors(doc), changed


SAMPLE_DOCUMENT = snapshot_document(sample_entries())
SAMPLE_TEXT = json.dumps(SAMPLE_DOCUMENT).encode()


@BOUNDED
@given(st.data())
def test_mutated_documents_give_errors_with_paths(data):
    doc = data.draw(document_mutations(SAMPLE_DOCUMENT))
    errors = validate(doc)                       # never an exception
    for path, message in errors:
        assert isinstance(path, str) and path.startswith("/")
        assert isinstance(message, str) and message


@BOUNDED
@given(st.one_of(damaged_bytes(SAMPLE_TEXT), damaged_bytes(gzip.compress(SAMPLE_TEXT, mtime=0)), st.binary(max_size=300)))
def test_damaged_files_are_read_or_refused_never_crash(content):
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        handle.write(content)
        handle.flush()
        try:
            document = read_document(handle.name)
        except DocumentFileError as error:
            assert error.path == handle.name and error.problem and str(error).startswith(handle.name)
            return
        assert isinstance(document, dict)
        for path, message in validate(document):
            assert path.startswith("/") and message
