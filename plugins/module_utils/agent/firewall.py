# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The firewall's learned state in the cutover: what the packet path wrote after the pre-copy.

The pre-copy carried the firewall as it was then; blocklists, knocks and quotas go on changing
while the source serves. So each delta of the cutover carries it again, as the sessions:

    catch-up  (before the freeze) the source reads its whole firewall; when anything but the
              passage of time differs from what the target holds (members, lifetimes started
              again, quota use, counters), the target is given it whole (overridden)
    window    (frozen: no new connection reaches the rules any more) the source reads only its
              sets' members and recent lists (one `ipset save` or one nft text listing); when
              members changed, the target gets element commands for them alone (one `ipset
              -exist restore` or one `nft -f`). Quota use and counters stay as the catch-up
              carried them: the bytes of the last milliseconds are not worth a table rewrite
              inside the window. Without a catch-up before it the window carries everything.

The firewall travels inside the delta document as its ietf-access-control-list part, with the
moment it was read (`taken-at`), so that lifetimes count down from then on the target.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible_collections.nfstate.migration.plugins.module_utils.agent.protocol import AgentError
from ansible_collections.nfstate.migration.plugins.module_utils.firewall_learned import (
    learned_changes,
    members_changed,
    summary,
)
from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import ROOT
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import date_and_time
from ansible_collections.nfstate.migration.plugins.module_utils.resources.firewall import (
    EMPTY,
    document_of,
    for_implementation,
    wanted_firewall,
)


class Beside(object):
    """A call run in a thread of its own; result() waits for it and raises what it raised."""

    def __init__(self, call, *args):
        self._outcome = None
        self._thread = threading.Thread(target=self._run, args=(call,) + args, name="firewall")
        self._thread.daemon = True
        self._thread.start()

    def _run(self, call, *args):
        try:
            self._outcome = (True, call(*args))
        except Exception as exc:  # pylint: disable=broad-except
            self._outcome = (False, exc)

    def result(self, timeout=60.0):
        self._thread.join(timeout)
        if self._outcome is None:
            raise AgentError("the firewall's learned state: no answer within %ss" % timeout)
        done, value = self._outcome
        if not done:
            raise AgentError("the firewall's learned state: %s" % value)
        return value


class SourceFirewall(object):
    """The source's reads: what the target holds (the pre-copy's firewall, then each carried read)."""

    def __init__(self, provider, interfaces, document):
        self.provider = provider
        self.interfaces = interfaces or {}
        # The pre-copy's firewall, counted down to now by its taken-at.
        self.held = wanted_firewall(document, None) if ROOT in document else EMPTY
        self.held_at = time.monotonic()
        self.base = self.held          # rules, quotas, counters as last read whole
        self.caught_up = False         # a whole read crossed after the pre-copy
        self.document = None           # the last firewall document that crossed
        # Recent lists stamp hits in jiffies: measure HZ now (it takes a moment), not in the window.
        self.hz = None
        if self.held.recent_lists and hasattr(provider, "kernel_clock"):
            self.hz = provider.kernel_clock()[1]

    def delta(self, frozen):
        """(the firewall's document if it must cross, else None; counts for the report)."""
        started = time.monotonic()
        whole = not frozen or not self.caught_up
        if whole:
            current = self.provider.read_firewall(self.interfaces, True).firewall
            self.base = current
        else:
            current = self.provider.read_members(self.base, self.hz)
        now = time.monotonic()
        changes = learned_changes(self.held, current, now - self.held_at)
        counts = summary(changes)
        counts.update(read="whole" if whole else "members", ms=round((now - started) * 1000, 2))
        # A whole read compared with what the target holds: the target is caught up, sent or not.
        self.caught_up = self.caught_up or whole
        if not (members_changed(changes) or (whole and changes.counts)):
            return None, counts
        document = document_of(current, date_and_time())
        if not document:
            return None, counts     # our firewall is gone from the source: nothing to carry
        self.document = document
        self.held, self.held_at = current, now
        return self.document, counts


class TargetFirewall(object):
    """The target's writes: what it holds, as last read or written."""

    def __init__(self, provider, interfaces, recent_as_sets=True):
        self.provider = provider
        self.interfaces = interfaces or {}
        self.recent_as_sets = bool(recent_as_sets)
        self.held = provider.read_firewall(self.interfaces, True).firewall
        self.held_at = time.monotonic()

    def apply(self, document, frozen):
        """Apply the firewall part of a delta document, if it has one: whole before the freeze,
        its changed members alone inside the window."""
        if ROOT not in document:
            return None
        started = time.monotonic()
        wanted = for_implementation(self.provider, wanted_firewall(document, None), {"recent_as_sets": self.recent_as_sets})
        now = time.monotonic()
        changes = learned_changes(self.held, wanted, now - self.held_at)
        if frozen:
            steps = self.provider.write_members(wanted, changes)
        else:
            current = self.provider.read_firewall(self.interfaces, True)
            steps = self.provider.write_firewall(wanted, self.interfaces, current)
        self.held, self.held_at = wanted, time.monotonic()
        result = summary(changes)
        result.update(written="members" if frozen else "whole", steps=len(steps),
                      ms=round((self.held_at - started) * 1000, 2))
        return result
