# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Regenerate what the docs show of the code (never typed by hand): the YANG tree diagrams in
docs/model.md, from the modules, and the tables of variables in docs/migration.md and the roles'
READMEs, from the roles' argument specs (their one source).

    python docs/generate.py          rewrite the generated sections
    python docs/generate.py --check  exit 1 when one is out of date

The trees are `pyang -f tree` of ietf-nat (from the installed pyang distribution) with
yang/nfstate-nat.yang: the session (mapping-entry) and the snapshot metadata.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys

import yaml

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
MODEL_DOC = os.path.join(DOCS, "model.md")
OUR_MODULE = os.path.join(ROOT, "yang", "nfstate-nat.yang")
BEGIN = "<!-- BEGIN GENERATED TREE: docs/generate.py -->"
END = "<!-- END GENERATED TREE -->"
TREE_PATHS = (
    ("Sessions", "/nat/instances/instance/mapping-table"),
    ("Snapshot metadata", "/nat/instances/instance/snapshot"),
)


def ietf_dir():
    """share/yang/modules/ietf of the installed pyang distribution."""
    from importlib import metadata
    for path in metadata.files("pyang") or ():
        if path.name == "ietf-nat.yang":
            return os.path.dirname(os.path.normpath(str(path.locate())))
    candidate = os.path.join(sys.prefix, "share", "yang", "modules", "ietf")
    if os.path.exists(os.path.join(candidate, "ietf-nat.yang")):
        return candidate
    raise SystemExit("ietf-nat.yang not found: install pyang")


def tree(tree_path):
    ietf = ietf_dir()
    command = [sys.executable, "-m", "pyang", "-p", ietf, "-f", "tree", "--tree-path", tree_path,
               os.path.join(ietf, "ietf-nat.yang"), OUR_MODULE]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit("pyang failed: %s" % (result.stderr or result.stdout))
    return result.stdout.rstrip() + "\n"


def generated_section():
    parts = [BEGIN, ""]
    for title, path in TREE_PATHS:
        parts += ["%s (`pyang -f tree --tree-path %s ietf-nat.yang yang/nfstate-nat.yang`):" % (title, path),
                  "", "```text", tree(path).rstrip("\n"), "```", ""]
    parts.append(END)
    return "\n".join(parts)


def render(text):
    """The document text with its generated section replaced."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit("%s: markers %r ... %r not found" % (MODEL_DOC, BEGIN, END))
    return text[:start] + generated_section() + text[end + len(END):]


# <!-- BEGIN GENERATED VARIABLES: ROLE ENTRY_POINT --> ... <!-- END GENERATED VARIABLES -->
VARIABLES = re.compile(r"(<!-- BEGIN GENERATED VARIABLES: (\S+) (\S+) -->\n).*?(<!-- END GENERATED VARIABLES -->)", re.S)
VARIABLE_DOCS = ("docs/migration.md", "roles/*/README.md")


def _cell(text):
    text = " ".join(text) if isinstance(text, list) else str(text)
    text = re.sub(r"[OVRMC]\(([^)]*)\)", r"`\1`", text)  # Ansible's semantic markup, as code
    return text.replace("|", "\\|").replace("\n", " ")


def variables_table(role, entry_point):
    """The options of a role's entry point as a markdown table: variable, default, meaning."""
    with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        options = yaml.safe_load(handle)["argument_specs"][entry_point].get("options", {})
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, spec in options.items():
        if spec.get("required"):
            default = "(required)"
        elif "default" in spec:
            value = spec["default"]
            default = "`%s`" % (json.dumps(value) if isinstance(value, (list, dict, bool)) else _cell(value))
        else:
            default = ""
        rows.append("| `%s` | %s | %s |" % (name, default, _cell(spec.get("description", ""))))
    return "\n".join(rows) + "\n"


def render_variables(text):
    return VARIABLES.sub(lambda m: m.group(1) + variables_table(m.group(2), m.group(3)) + m.group(4), text)


def documents():
    """(path, current text, wanted text) of every generated document."""
    with open(MODEL_DOC, encoding="utf-8") as handle:
        current = handle.read()
    found = [(MODEL_DOC, current, render(current))]
    for pattern in VARIABLE_DOCS:
        for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            if VARIABLES.search(text):
                found.append((path, text, render_variables(text)))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated section is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, current, wanted in documents():
        if wanted == current:
            continue
        stale.append(os.path.relpath(path, ROOT))
        if not args.check:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(wanted)
    if args.check and stale:
        print("out of date: %s: run python docs/generate.py" % ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
