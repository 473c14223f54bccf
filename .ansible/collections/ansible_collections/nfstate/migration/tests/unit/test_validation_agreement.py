"""The strict checker (the hosts') refuses every mapping entry that yangson (the YANG model) refuses.

The controller validates mapping entries with the strict checker alone, so it must be at least as
strict as the model: for every single-entry mutation the validator's tests use, applied to every
kind of sample session, a document holding that one entry is refused by the strict checker
whenever yangson refuses it. Where only the strict checker refuses, the mutation must be one of
the documented cases (builders.STRICTER_ON_PURPOSE, docs/model.md "Validation").
"""

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.session_model import entries_to_mappings
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import (
    session_errors,
    validate,
    yangson_errors,
)
from ansible_collections.nfstate.migration.tests.unit.builders import (
    ENTRY_MUTATIONS,
    MAY_BECOME_VALID,
    STRICTER_ON_PURPOSE,
    mutated_entry,
    one_entry_document,
    sample_entries,
)

SAMPLE_MAPPINGS = entries_to_mappings(sample_entries())


def verdicts(mapping):
    """(yangson's errors, the strict checker's errors) for a document holding `mapping` alone."""
    doc = one_entry_document(mapping)
    return yangson_errors(doc, limit=1), session_errors(doc)


def test_every_sample_is_accepted_by_both():
    for mapping in SAMPLE_MAPPINGS:
        assert verdicts(mapping) == ([], [])


@pytest.mark.parametrize("name", sorted(ENTRY_MUTATIONS))
def test_strict_checker_refuses_whatever_yangson_refuses(name):
    tried, refused = 0, 0
    for mapping in SAMPLE_MAPPINGS:
        changed = mutated_entry(mapping, name)
        if changed is None:
            continue
        tried += 1
        theirs, ours = verdicts(changed)
        if theirs:
            assert ours, "yangson refuses %s (%s) but the strict checker accepts it: %r" % (name, theirs, changed)
        elif ours:
            assert name in STRICTER_ON_PURPOSE, (
                "only the strict checker refuses %s (%s): document it in docs/model.md and "
                "builders.STRICTER_ON_PURPOSE, or accept it" % (name, ours))
        refused += bool(ours)
        # The full validator reports it too, under the entry's path.
        errors = validate(one_entry_document(changed))
        assert bool(errors) == bool(ours or theirs)
        assert all(path.startswith("/ietf-nat:nat/instances/instance") for path, _message in errors)
    assert tried, "the mutation fits no sample entry"
    assert refused or name in MAY_BECOME_VALID, "no sample entry mutated this way is refused"


def test_stricter_cases_are_documented():
    text = open(__file__.replace("tests/unit/test_validation_agreement.py", "docs/model.md")).read()
    section = text.split("## Validation", 1)[1].split("\n## ", 1)[0]
    for phrase in ("host prefix", "one port", "other family", "untranslated", "exactly one instance",
                   "initiator", "static", "not supported", "destination port"):
        assert phrase in section, phrase
    assert STRICTER_ON_PURPOSE <= set(ENTRY_MUTATIONS)
