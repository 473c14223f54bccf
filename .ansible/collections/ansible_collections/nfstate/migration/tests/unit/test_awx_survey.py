"""The job template's survey (docs/awx/survey.json) and project playbook (docs/awx/project/) fit the
playbook: every survey variable is one that nfstate.migration.migrate_nat reads, in AWX's survey
format, and the project playbook only imports the collection's."""

import json
import os
import re

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWX = os.path.join(REPO, "docs", "awx")
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


def playbook_text():
    with open(os.path.join(REPO, "playbooks", "migrate_nat.yml")) as handle:
        return handle.read()


def test_survey_asks_source_target_and_deadline():
    with open(os.path.join(AWX, "survey.json")) as handle:
        survey = json.load(handle)
    assert set(survey) >= {"name", "description", "spec"}
    variables = [question["variable"] for question in survey["spec"]]
    assert variables == ["nfstate_source", "nfstate_target", "nfstate_freeze_deadline"]
    text = playbook_text()
    for question in survey["spec"]:
        assert question["type"] in SURVEY_TYPES
        assert question["question_name"] and isinstance(question["required"], bool)
        # The playbook reads the variable (its header documents it, its tasks use it).
        assert re.search(r"\b%s\b" % question["variable"], text), question["variable"]
    deadline = survey["spec"][2]
    assert deadline["type"] == "integer" and deadline["min"] <= deadline["default"] <= deadline["max"]


def test_project_playbook_only_imports_the_collection_playbook():
    with open(os.path.join(AWX, "project", "migrate_nat.yml")) as handle:
        plays = yaml.safe_load(handle)
    assert [list(play) for play in plays] == [["name", "ansible.builtin.import_playbook"]]
    assert plays[0]["ansible.builtin.import_playbook"] == "nfstate.migration.migrate_nat"
