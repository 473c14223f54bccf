# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measure (not a test): time and peak memory of reading and validating state documents.

    python tests/hostile/measure.py [--sessions 100000] [--bomb-gib 3]

Each figure comes from a fresh interpreter, so that its peak resident set size (ru_maxrss) is
that step's own: reading a legitimate document of N sessions (.json.gz) on the controller and
on the host, validating it, and reading a gzip bomb (one instance name of --bomb-gib GiB).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

PRELUDE = """
import resource, sys, time
sys.path.insert(0, %r)
import conftest  # noqa: F401  (makes the checkout importable as ansible_collections.nfstate.migration)
""" % os.path.join(REPO, "tests")

STEPS = {
    "controller read": """
from ansible_collections.nfstate.migration.plugins.plugin_utils.validation import read_controller_document
start, cpu = time.perf_counter(), time.process_time()
try:
    read_controller_document(PATH)
    outcome = "read"
except ValueError as error:
    outcome = "refused: %s" % str(error)[:160]
""",
    "host read": """
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import read_document
start, cpu = time.perf_counter(), time.process_time()
try:
    read_document(PATH)
    outcome = "read"
except ValueError as error:
    outcome = "refused: %s" % str(error)[:160]
""",
    "validate": """
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import read_document
from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import data_model, validate
doc = read_document(PATH)
data_model()
base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 1024.0
start, cpu = time.perf_counter(), time.process_time()
errors = validate(doc)
outcome = "%d error(s)" % len(errors)
""",
}

REPORT = """
spent, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
figures = {"seconds": round(spent, 2), "cpu_seconds": round(cpu, 2), "peak_mib": round(peak / 1024.0, 1), "outcome": outcome}
if base:
    figures["rss_before_mib"] = round(base / 1024.0, 1)
print(json.dumps(figures))
"""


def run(step, path):
    code = PRELUDE + "import json\nPATH = %r\nbase = 0\n" % path + STEPS[step] + REPORT
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_sessions(path, count):
    code = PRELUDE + """
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import write_document
from ansible_collections.nfstate.migration.tests.unit.builders import many_tcp_sessions, snapshot_document
write_document(snapshot_document(many_tcp_sessions(%d)), %r)
""" % (count, path)
    subprocess.run([sys.executable, "-c", code], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100000)
    parser.add_argument("--bomb-gib", type=float, default=3.0)
    parser.add_argument("--skip-bomb", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(REPO, "tests"))
    # The checkout, importable as ansible_collections.nfstate.migration:
    import conftest  # noqa: F401  pylint: disable=unused-import
    from ansible_collections.nfstate.migration.tests.hostile import generate
    with tempfile.TemporaryDirectory(prefix="nfstate-measure-") as tmp:
        legit = os.path.join(tmp, "sessions.json.gz")
        write_sessions(legit, args.sessions)
        print("%d sessions: %.1f MiB gzip" % (args.sessions, os.path.getsize(legit) / 2.0 ** 20))
        for step in ("controller read", "host read", "validate"):
            print("  %-16s %s" % (step, run(step, legit)))
        if not args.skip_bomb:
            bomb = os.path.join(tmp, "bomb.json.gz")
            generate.write_bomb(bomb, int(args.bomb_gib * 2 ** 30))
            print("bomb: %.1f MiB gzip, %.1f GiB expanded" % (os.path.getsize(bomb) / 2.0 ** 20, args.bomb_gib))
            for step in ("controller read", "host read"):
                print("  %-16s %s" % (step, run(step, bomb)))


if __name__ == "__main__":
    main()
