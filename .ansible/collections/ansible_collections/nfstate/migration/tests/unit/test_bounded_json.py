"""The bounded JSON reader (module_utils/bounded_json.py): what it reads, and where its bounds lie.
The hostile corpus (test_hostile_corpus.py) has the documents it refuses."""

import gc
import gzip
import json

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import bounded_json
from ansible_collections.nfstate.migration.plugins.module_utils.bounded_json import DocumentReadError, limits, read

DOC = {"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "edge-nat", "x": [None, [1, 2.5], True]}]}}}
TEXT = json.dumps(DOC).encode()


@pytest.mark.parametrize("name,data,compressed", [
    ("state.json", TEXT, False),
    ("state.json.gz", gzip.compress(TEXT), True),
    ("state.bin", gzip.compress(TEXT), True),                           # gzip known by its magic
    ("state.json.gz", gzip.compress(TEXT[:20]) + gzip.compress(TEXT[20:]), True),   # two members
])
def test_reads_plain_and_gzip(tmp_path, name, data, compressed):
    path = tmp_path / name
    path.write_bytes(data)
    found = read(str(path))
    assert found.document == DOC
    assert found.bytes_raw == len(TEXT) and found.bytes_stored == len(data)
    assert found.compressed == (len(data) if compressed else None)


def test_measures_the_gzip_size_of_a_plain_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(json.dumps(DOC, indent=2).encode())
    found = read(str(path), measure_compressed=True)
    assert 0 < found.compressed < found.bytes_raw


def test_ceiling_is_exact(tmp_path):
    path = tmp_path / "state.json.gz"
    path.write_bytes(gzip.compress(TEXT))
    assert read(str(path), max_bytes=len(TEXT)).document == DOC
    with pytest.raises(DocumentReadError, match="expands beyond"):
        read(str(path), max_bytes=len(TEXT) - 1)


def test_limits_follow_the_session_count(monkeypatch):
    monkeypatch.delenv(bounded_json.MAX_SESSIONS_VARIABLE, raising=False)
    default = limits()
    assert default.max_sessions == bounded_json.DEFAULT_MAX_SESSIONS == 262144
    assert default.max_bytes == 262144 * 2048 + (16 << 20)
    assert limits(1000).max_values == 1000 * 48 + (1 << 20)
    monkeypatch.setenv(bounded_json.MAX_SESSIONS_VARIABLE, "5000")
    assert limits().max_sessions == 5000
    assert limits(7).max_sessions == 7
    for bad in ("many", "0", "-3"):
        monkeypatch.setenv(bounded_json.MAX_SESSIONS_VARIABLE, bad)
        with pytest.raises(ValueError, match="NFSTATE_MAX_SESSIONS must be a positive integer"):
            limits()


def test_string_bound_is_exact_with_escapes(tmp_path):
    # Escaped characters hide quotes from the stream check: strings are then measured one by one.
    path = tmp_path / "state.json"
    longest = '\\"' * (bounded_json.MAX_STRING // 2)
    path.write_text('{"a": "%s"}' % longest)
    assert len(read(str(path)).document["a"]) == bounded_json.MAX_STRING // 2
    path.write_text('{"a": "%s"}' % (longest + "xyz"))
    with pytest.raises(DocumentReadError, match="holds a string of"):
        read(str(path))


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"a": 1, "a": 2}')
    with pytest.raises(DocumentReadError) as raised:
        read(str(path))
    assert raised.value.path == str(path) and str(raised.value).startswith(str(path) + ": ")
    assert raised.value.problem == "member 'a' appears twice in one object (JSON names must be unique)"
    with pytest.raises(OSError):
        read(str(tmp_path / "missing.json"))


def test_the_collector_is_left_as_it_was(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"[1]")
    assert gc.isenabled()
    with pytest.raises(DocumentReadError):
        read(str(path))
    assert gc.isenabled()


def test_loads_applies_the_same_bounds_to_bytes():
    assert bounded_json.loads(TEXT) == DOC
    with pytest.raises(DocumentReadError) as raised:
        bounded_json.loads(b'{"a": "' + b"x" * (1 << 18) + b'"}', what="config")
    assert str(raised.value).startswith("config: holds more than")
    with pytest.raises(DocumentReadError, match="beyond the ceiling"):
        bounded_json.loads(b" " * ((16 << 20) + 2049) + TEXT, max_sessions=1)
