# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Regenerate the YANG tree diagrams in docs/model.md from the modules (never typed by hand).

    python docs/generate.py          rewrite the generated section of docs/model.md
    python docs/generate.py --check  exit 1 when docs/model.md is out of date

The trees are `pyang -f tree` of ietf-nat (from the installed pyang distribution) with
yang/nfstate-nat.yang: the session (mapping-entry) and the snapshot metadata.
"""

import argparse
import os
import subprocess
import sys

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/model.md is out of date")
    args = parser.parse_args(argv)
    with open(MODEL_DOC, encoding="utf-8") as handle:
        current = handle.read()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("docs/model.md is out of date: run python docs/generate.py", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        with open(MODEL_DOC, "w", encoding="utf-8") as handle:
            handle.write(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
