"""Every hostile document (tests/hostile/generate.py) is refused, on the controller and on the host,
before the host's kernel is touched, with a message that says what and why."""

import os
import re

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.resources import nat_sessions as session_apply
from ansible_collections.nfstate.migration.plugins.module_utils.bounded_json import MAX_SESSIONS_VARIABLE
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import read_document, write_document
from ansible_collections.nfstate.migration.plugins.plugin_utils.validation import read_controller_document
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import validate
from ansible_collections.nfstate.migration.tests.hostile.generate import BOUNDARY, CORPUS, boundary_document, build


class KernelTouched(Exception):
    pass


class Tripwire(object):
    """Stands in for the conntrack driver: a document that gets this far would be applied."""

    def __init__(self, *args, **kwargs):
        raise KernelTouched()


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setattr(session_apply, "Conntrack", Tripwire)


def controller_verdict(path):
    """Every error the controller finds, as 'path: message' lines (empty: accepted)."""
    try:
        document = read_controller_document(path)[0]
    except ValueError as error:
        return ["/: %s" % error]
    return ["%s: %s" % error for error in validate(document)]


def host_verdict(path):
    """What nat_sessions (state merged, src on the host) says: its error lines, or [] when the
    document got as far as the kernel."""
    try:
        document = read_document(path)
    except (OSError, ValueError) as error:
        return ["/: cannot read state document %s: %s" % (path, error)]
    try:
        session_apply.apply_sessions([(document, path)], "merged", {})
    except session_apply.SessionApplyError as error:
        return ["/: %s" % error] + list(error.details.get("errors", []))
    except KernelTouched:
        return []
    raise AssertionError("apply_sessions returned without touching the kernel")


@pytest.mark.parametrize("position,item", list(enumerate(CORPUS, 1)), ids=[item.name for item in CORPUS])
def test_hostile_document_is_refused_on_both_sides(tmp_path, monkeypatch, host, position, item):
    if item.max_sessions is not None:
        monkeypatch.setenv(MAX_SESSIONS_VARIABLE, str(item.max_sessions))
    path = build(str(tmp_path), position, item)
    for side, lines in (("controller", controller_verdict(path)), ("host", host_verdict(path))):
        assert lines, "%s accepts %s" % (side, item.name)
        text = "\n".join(lines)
        assert re.search(item.reason, text), "%s: %r does not say %r" % (side, text[:2000], item.reason)
        if item.where is not None:
            assert any(line.startswith(item.where + ": ") for line in lines), (side, item.where, lines[:5])
        else:
            # A file refused as a whole: the message names it.
            assert os.path.basename(path) in text, (side, text[:500])
        assert max(len(line) for line in lines) < 2000, "%s quotes too much" % side


@pytest.mark.parametrize("name,members", BOUNDARY, ids=[b[0] for b in BOUNDARY])
def test_values_at_the_edges_of_their_ranges_are_accepted(tmp_path, host, name, members):
    path = str(tmp_path / "edge.json.gz")
    write_document(boundary_document(members), path)
    assert controller_verdict(path) == []
    assert host_verdict(path) == []


def test_corpus_covers_what_issue_11_lists():
    names = " ".join(item.name for item in CORPUS).lower()
    for kind in ("bomb", "nesting", "string", "as text", "duplicate member", "untranslated",
                 "other family", "port of 65536", "lifetime of 2^32", "duplicate index"):
        assert kind in names, kind
