# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollback's order (the fault matrix found the old one broke every flow when the cutover
failed after the target's claim): the source claims the addresses, then the target releases
them, and only then does the target lose its rules and sessions."""

import os

import yaml

ROLLBACK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "playbooks", "tasks", "rollback.yml")


def test_the_addresses_move_back_before_the_target_is_emptied():
    with open(ROLLBACK) as handle:
        tasks = yaml.safe_load(handle)
    names = [t["name"] for t in tasks]
    addresses = next(i for i, t in enumerate(tasks) if "block" in t)
    unapply = next(i for i, t in enumerate(tasks) if t.get("vars", {}).get("nfstate_step") == "unapply")
    assert addresses < unapply < names.index("Unfreeze the source")
    block = tasks[addresses]["block"]
    steps = [(t["ansible.builtin.include_role"]["tasks_from"], t["ansible.builtin.include_role"]["apply"]["delegate_to"])
             if "ansible.builtin.include_role" in t else (t["vars"]["nfstate_step"], t["vars"]["nfstate_host"])
             for t in block]
    # The target drains (keeps its rules while its neighbours still send to it) before it is emptied.
    assert steps == [("claim", "{{ nfstate_source }}"), ("release", "{{ nfstate_target }}"),
                     ("drain", "{{ nfstate_target }}")]
