"""The two action plugins (validate_state, nat_sessions) with ActionBase mocked: what they read,
refuse, upload and run, without a connection or a host."""

import gzip
import os
from unittest.mock import MagicMock, patch

import pytest
from ansible.errors import AnsibleActionFail
from ansible.playbook.task import Task

from ansible_collections.nfstate.migration.plugins.action import nat_sessions as nat_sessions_action
from ansible_collections.nfstate.migration.plugins.action import validate_state as validate_state_action
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import write_document
from ansible_collections.nfstate.migration.tests.unit.builders import (
    ENTRY,
    mapping_entries_of,
    sample_entries,
    snapshot_document,
)


def plugin(module, args):
    """The plugin's ActionModule for a task with `args`, its ActionBase parts mocked."""
    task = MagicMock(Task)
    task.args = args
    task.async_val = 0
    play_context = MagicMock()
    play_context.check_mode = False
    action = module.ActionModule(task, MagicMock(), play_context, loader=None, templar=None, shared_loader_obj=None)
    action._execute_module = MagicMock(return_value={"changed": True, "sessions": 10})
    action._transfer_file = MagicMock()
    return action


@pytest.fixture(autouse=True)
def base_run():
    # ActionBase.run checks the task against the connection and returns the result to fill in.
    with patch("ansible.plugins.action.ActionBase.run", return_value={}) as run:
        yield run


@pytest.fixture
def good():
    return snapshot_document(sample_entries())


@pytest.fixture
def bad(good):
    mapping_entries_of(good)[0]["lifetime"] = -1
    mapping_entries_of(good)[2]["nfstate-nat:initiator"] = "both"
    return good


def _file(tmp_path, doc, name="state.json.gz"):
    path = str(tmp_path / name)
    write_document(doc, path)
    return path


# ---------------------------------------------------------------- validate_state

def test_validate_state_reads_a_gzip_snapshot(tmp_path, good):
    path = _file(tmp_path, good)
    result = plugin(validate_state_action, {"path": path}).run(task_vars={})
    assert result["valid"] is True and result["changed"] is False
    assert (result["sessions"], result["rules"]) == (10, 0)
    assert result["bytes_compressed"] == os.path.getsize(path)
    assert result["bytes_raw"] == len(gzip.decompress(open(path, "rb").read()))


def test_validate_state_measures_a_plain_file_compressed(tmp_path, good):
    path = _file(tmp_path, good, "state.json")
    result = plugin(validate_state_action, {"path": path}).run(task_vars={})
    assert result["bytes_raw"] == os.path.getsize(path)
    assert 0 < result["bytes_compressed"] < result["bytes_raw"]


def test_validate_state_checks_a_document_given_as_data(good):
    result = plugin(validate_state_action, {"document": good}).run(task_vars={})
    assert result["valid"] is True and result["sessions"] == 10
    assert 0 < result["bytes_compressed"] < result["bytes_raw"]


def test_validate_state_fails_with_every_error(tmp_path, bad):
    result = plugin(validate_state_action, {"path": _file(tmp_path, bad)}).run(task_vars={})
    assert result["failed"] is True
    assert [e.split(": ")[0] for e in result["errors"]] == [ENTRY % 1 + "/lifetime", ENTRY % 3 + "/nfstate-nat:initiator"]
    assert "(2 error(s))" in result["msg"] and "state.json.gz" in result["msg"]
    assert "valid" not in result


def test_validate_state_refuses_a_bomb_before_parsing_it(tmp_path):
    path = str(tmp_path / "bomb.json.gz")
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(b'{"ietf-nat:nat":{"instances":{"instance":[{"id":1,"name":"')
        for dummy in range(16):
            handle.write(b"A" * (1 << 20))
        handle.write(b'"}]}}}')
    with pytest.raises(AnsibleActionFail) as raised:
        plugin(validate_state_action, {"path": path}).run(task_vars={})
    assert path in str(raised.value) and "without a string delimiter" in str(raised.value)


def test_validate_state_bounds_sessions_by_max_sessions(tmp_path, good):
    path = _file(tmp_path, good)
    with pytest.raises(AnsibleActionFail, match="holds 10 sessions, more than the limit of 3"):
        plugin(validate_state_action, {"path": path, "max_sessions": 3}).run(task_vars={})
    assert plugin(validate_state_action, {"path": path, "max_sessions": 10}).run(task_vars={})["valid"]


@pytest.mark.parametrize("args", [{}, {"path": "x", "document": {}}])
def test_validate_state_wants_exactly_one_source(args):
    with pytest.raises(AnsibleActionFail, match="exactly one of path and document"):
        plugin(validate_state_action, args).run(task_vars={})


def test_validate_state_missing_file(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(AnsibleActionFail, match="does not exist on the controller"):
        plugin(validate_state_action, {"path": missing}).run(task_vars={})


# ---------------------------------------------------------------- nat_sessions

def test_nat_sessions_validates_config_then_runs_the_module(good):
    action = plugin(nat_sessions_action, {"state": "merged", "config": good})
    result = action.run(task_vars={"x": 1})
    assert result == {"changed": True, "sessions": 10}
    action._execute_module.assert_called_once_with(
        module_name="nfstate.migration.nat_sessions", module_args={"state": "merged", "config": good}, task_vars={"x": 1})
    action._transfer_file.assert_not_called()


def test_nat_sessions_refuses_invalid_config_without_running_the_module(bad):
    action = plugin(nat_sessions_action, {"state": "merged", "config": bad})
    result = action.run(task_vars={})
    assert result["failed"] is True and len(result["errors"]) == 2
    assert result["msg"].startswith("config is not a valid nfstate document")
    action._execute_module.assert_not_called()


def test_nat_sessions_uploads_a_validated_controller_file(tmp_path, good):
    path = _file(tmp_path, good)
    action = plugin(nat_sessions_action, {"state": "merged", "controller_src": path, "src": ["/var/tmp/delta.json.gz"]})
    result = action.run(task_vars={})
    action._transfer_file.assert_called_once_with(path, "/var/tmp/delta.json.gz")
    # controller_src stays on the controller: the module never sees it.
    assert action._execute_module.call_args.kwargs["module_args"] == {"state": "merged", "src": ["/var/tmp/delta.json.gz"]}
    assert result["uploaded"] == dict(path="/var/tmp/delta.json.gz", sessions=10, rules=0,
                                      bytes_raw=len(gzip.decompress(open(path, "rb").read())),
                                      bytes_compressed=os.path.getsize(path))
    assert result["changed"] is True


@pytest.mark.parametrize("src", [None, [], ["/a", "/b"]])
def test_nat_sessions_controller_src_needs_one_host_path(tmp_path, good, src):
    args = {"state": "merged", "controller_src": _file(tmp_path, good)}
    if src is not None:
        args["src"] = src
    action = plugin(nat_sessions_action, args)
    result = action.run(task_vars={})
    assert result["failed"] is True and "controller_src needs src" in result["msg"]
    action._transfer_file.assert_not_called()
    action._execute_module.assert_not_called()


def test_nat_sessions_uploads_nothing_invalid(tmp_path, bad):
    path = _file(tmp_path, bad)
    action = plugin(nat_sessions_action, {"state": "merged", "controller_src": path, "src": ["/var/tmp/d.json.gz"]})
    result = action.run(task_vars={})
    assert result["failed"] is True and len(result["errors"]) == 2 and path in result["msg"]
    action._transfer_file.assert_not_called()
    action._execute_module.assert_not_called()


def test_nat_sessions_refuses_an_unreadable_controller_file(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"ietf-nat:nat": {}, "ietf-nat:nat": {}}')
    action = plugin(nat_sessions_action, {"state": "merged", "controller_src": str(path), "src": ["/var/tmp/d.json"]})
    result = action.run(task_vars={})
    assert result["failed"] is True
    assert str(path) in result["msg"] and "appears twice" in result["msg"]
    action._transfer_file.assert_not_called()
    action._execute_module.assert_not_called()


def test_nat_sessions_passes_other_states_through():
    action = plugin(nat_sessions_action, {"state": "gathered", "dest": "/var/tmp/x.json.gz"})
    assert action.run(task_vars={}) == {"changed": True, "sessions": 10}
    assert action._execute_module.call_args.kwargs["module_args"] == {"state": "gathered", "dest": "/var/tmp/x.json.gz"}


def test_inline_documents_are_bounded_like_files(good):
    deep = good
    for dummy in range(40):
        deep = {"x": deep}
    result = plugin(nat_sessions_action, {"state": "merged", "config": {"ietf-nat:nat": deep}}).run(task_vars={})
    assert result["failed"] is True
    assert result["msg"].startswith("config is not a JSON document: nests ")
    assert result["msg"].endswith(" levels deep, more than the 32 a state document may")
