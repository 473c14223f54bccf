# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cells of the fault matrix (bench/fault_matrix.py runs all of them), through the same code
(lab/faults.py): a fault at one phase of a real migrate_nat run in a lab, with the lab's flows
running through the run and through a plain re-run of the same command. After each: exactly one
host serves, nothing of ours is active on the other, every flow is whole, the re-run converges."""

import os

import pytest

from ansible_collections.nfstate.migration.lab import faults
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

# (phase, fault, the outcome of the faulty run)
CELLS = [
    # Someone empties the target inside the window, after its delta: it must refuse the claim.
    ("delta", "target-state", "rolled back"),
    # (The controller killed inside the window is test_migrate_nat's; the script runs it here too.)
    # The target's link breaks after its claim, for a while: the cutover waits and completes.
    ("redirect", "target-link", "migrated"),
]


@pytest.mark.parametrize("phase,fault,outcome", CELLS, ids=["%s-%s" % c[:2] for c in CELLS])
def test_fault_cell(tmp_path, phase, fault, outcome):
    cell = faults.run_cell(Lab("fmt"), phase, fault, str(tmp_path), cut_seconds=5.0,
                           flow_kinds=("tcp", "udp", "fwd"))
    log = (tmp_path / "run.log").read_text()[-3000:] + "\n--- re-run ---\n" + (tmp_path / "rerun.log").read_text()[-3000:]
    assert cell["injected"], log
    assert cell["run"]["outcome"] == outcome, (cell["run"], log)
    assert faults.one_holder(cell), cell["after"]
    assert not any(cell["after"]["ours"].values()), cell["after"]
    assert not cell["broken"], (cell["broken"], cell["timeline"], log)
    assert faults.converged(cell), (cell["rerun"], log)
