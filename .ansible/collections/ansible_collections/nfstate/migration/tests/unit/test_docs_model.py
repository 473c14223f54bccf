"""docs/model.md: its YANG tree is generated from the modules and up to date, its table complete."""

import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", os.path.join(ROOT, "docs", "generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_doc():
    with open(os.path.join(ROOT, "docs", "model.md"), encoding="utf-8") as handle:
        return handle.read()


def test_tree_section_is_up_to_date():
    generate = _generator()
    assert generate.main(["--check"]) == 0, "docs/model.md is out of date: run python docs/generate.py"


def test_tree_is_generated_from_our_module():
    section = _generator().generated_section()
    assert "+--rw mapping-entry* [index]" in section
    assert "+--rw nfs:initiator?" in section and "+--rw nfs:snapshot" in section


def test_table_covers_every_augmented_leaf():
    text = _model_doc()
    section = text[text.index("<!-- BEGIN GENERATED TREE"):]
    leaves = set(re.findall(r"nfs:([\w-]+)", section))
    assert {"initiator", "state", "window-scale", "flags", "labels", "taken-at"} <= leaves
    described = text[:text.index("<!-- BEGIN GENERATED TREE")]
    missing = [leaf for leaf in sorted(leaves) if not re.search(r"[`/:]%s\b" % re.escape(leaf), described)]
    assert missing == []
