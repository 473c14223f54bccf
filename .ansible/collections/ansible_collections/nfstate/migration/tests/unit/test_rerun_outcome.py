# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A re-run of a migration that completed finds the pair moved already: the playbook only finishes
the source's cleanup then, and the fleet summary counts it as such."""

import os

import yaml

from ansible_collections.nfstate.migration.plugins.filter.migration_report import fleet_lines

PLAYBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks")


def test_the_summary_counts_pairs_that_had_moved_already():
    lines = fleet_lines([{"source": "a", "target": "b", "outcome": "already migrated"},
                         {"source": "c", "target": "d", "outcome": "migrated"}])
    assert lines[0] == "2 pair(s): 1 migrated, 1 already migrated"
    assert lines[1] == "a -> b: already migrated"


def test_a_moved_pair_skips_the_migration_and_its_rollback():
    with open(os.path.join(PLAYBOOKS, "migrate_nat.yml")) as handle:
        tasks = yaml.safe_load(handle)[1]["tasks"]
    names = [t["name"] for t in tasks]
    look = names.index("Know whether the pair has moved already (the target holds the service addresses, the source none)")
    move = next(t for t in tasks if t["name"].startswith("Move the state"))
    assert look < names.index(move["name"])
    assert move["when"] == "nfstate_outcome == 'migrated'"


def test_the_looks_change_nothing():
    with open(os.path.join(PLAYBOOKS, "tasks", "moved.yml")) as handle:
        tasks = yaml.safe_load(handle)
    looks = [t for t in tasks if "nfstate.migration.service_addresses" in t]
    assert len(looks) == 2 and all(t["check_mode"] is True for t in looks)
