# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A source's agent undoing on its own (the controller gone): it serves again, and it announces the
service addresses whenever the target may have claimed them, released here or not (the fault
matrix's redirect x controller-kill: killed between the target's claim and the source's release,
the neighbours stayed on the undoing target)."""

from unittest.mock import MagicMock

from ansible_collections.nfstate.migration.plugins.module_utils.agent.source import SourceSide

ADDRESSES = [{"address": "203.0.113.1/24", "role": "outside"}]
INTERFACES = {"outside": "out0"}


def bare_source(frozen=None, service=None, released=None):
    """A SourceSide without its event subscription (which needs the kernel): only what undo reads."""
    side = SourceSide.__new__(SourceSide)
    side.provider = MagicMock()
    side.frozen, side.service, side.released = frozen, service, released
    return side


def undo(side):
    calls = []
    side.undo(calls.append)
    return calls


def test_frozen_and_never_released_it_announces_the_service_addresses_and_unfreezes():
    side = bare_source(frozen=object(), service=(ADDRESSES, INTERFACES))
    calls = undo(side)
    assert [(c["addresses"], c["interfaces"], c["state"], c["announce"]) for c in calls] == [
        (ADDRESSES, INTERFACES, "present", "always")]
    side.provider.unfreeze.assert_called_once_with()


def test_released_it_takes_the_addresses_back():
    side = bare_source(frozen=object(), service=(ADDRESSES, INTERFACES), released=(ADDRESSES, INTERFACES))
    assert [c["state"] for c in undo(side)] == ["present"]


def test_before_the_freeze_nothing_is_announced():
    side = bare_source(service=(ADDRESSES, INTERFACES))
    assert undo(side) == []
    side.provider.unfreeze.assert_not_called()
