# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The target's side of a cutover: apply a delta against the pre-copy it holds, then claim.

The target plans against the pre-copy it verified (loaded before the window), never against a
fresh dump of its table. Every session of a delta goes through the collection's strict model
checker before the kernel is touched. The claim is refused unless it comes soon enough after the
delta was applied: the driver says for how long the source's freeze is known to hold, measured
from the source's check, and that is compared with this host's own clock.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import heapq
import ipaddress
import time

from ansible_collections.nfstate.migration.plugins.module_utils import alg_state, drain
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack, strerror
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import describe
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    DocumentError,
    document_sessions,
    read_document,
    snapshot_age,
)
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import EXPIRY_MARGIN
from ansible_collections.nfstate.migration.plugins.module_utils.agent.firewall import Beside, TargetFirewall
from ansible_collections.nfstate.migration.plugins.module_utils.agent.protocol import AgentError
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    ModelError,
    owned_addresses,
    session_key,
)

# An undoing target keeps its rules after giving up the addresses until it has forwarded nothing
# for UNDO_QUIET seconds (the neighbours follow the source's announcement; a source slow to take
# them back, a loaded host, makes that later), UNDO_GRACE seconds at most.
UNDO_QUIET = 1.0
UNDO_GRACE = 15.0
# How many entries this namespace's table holds: a cheap sign that someone removed sessions.
COUNT_PATH = "/proc/sys/net/netfilter/nf_conntrack_count"


def table_count(path=COUNT_PATH):
    try:
        with open(path) as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def held_copies(document):
    """session key -> entry: the sessions a document puts on this host."""
    return dict((session_key(e), e) for e in document_sessions(document).present)


class TargetSide(object):
    """Requests the driver sends the target's agent."""

    def __init__(self, provider, precopy=None, keep_rules=False):
        self.provider = provider
        # Started before the pre-copy is applied, the agent knows the document and whether the host
        # had rules of ours: an undo before the cutover's prepare removes what the apply created.
        self.precopy = precopy
        self.held = None          # session key -> entry: what the pre-copy put here, then each delta
        self.expiry = {}          # session key -> when its copy here runs out (monotonic seconds)
        self._expiring = []       # heap of (expiry, key): the copies that run out, soonest first
        self.created = []         # sessions this agent created (an undo deletes them)
        self.applied_at = None    # monotonic time the last delta was applied
        self.claimed = None       # (addresses, interfaces) claimed
        self.keep_rules = bool(keep_rules)
        self.rules = None         # our NAT rules as verified before the window
        self.firewall = None      # TargetFirewall: the firewall's learned state crosses too

    def prepare(self, precopy, keep_rules=False, firewall=None):
        """firewall: {interfaces, recent_as_sets} when the firewall's learned state crosses too."""
        document = self._read(precopy)
        self.held = held_copies(document)
        # The copies were made with the snapshot's lifetimes less its age: they run out from there.
        taken = time.monotonic() - snapshot_age(document, datetime.datetime.now(datetime.timezone.utc))
        self.expiry = dict((key, taken + e.timeout) for key, e in self.held.items())
        self._expiring = [(at, key) for key, at in self.expiry.items()]
        heapq.heapify(self._expiring)
        self.keep_rules = bool(keep_rules)
        self.rules = self._rules_now()
        if firewall is not None:
            self.firewall = TargetFirewall(self.provider, firewall.get("interfaces"), firewall.get("recent_as_sets", True))
        return {"sessions": len(self.held)}

    @staticmethod
    def _read(precopy):
        try:
            return read_document(precopy)
        except (OSError, ValueError) as exc:
            raise AgentError("cannot read the pre-copy %s: %s" % (precopy, exc))

    def _rules_now(self):
        """Our NAT table or chains as read without the interfaces (their rules then may all be
        listed as unsupported): what is compared is the whole reading, not only the rules."""
        state = self.provider.read_nat_rules({})
        return (state.rules, state.unsupported, state.installed, state.present)

    def _check_rules(self):
        """Someone may have removed our NAT rules since the pre-copy was verified: a target without
        them would claim the addresses and translate nothing."""
        current = self._rules_now()
        if current != self.rules:
            raise AgentError("the NAT rules on this host are not those verified before the window (%d rule(s), "
                             "table or chains %s now; %d, %s then): not applied, not claimed" % (
                                 len(current[0]) + len(current[1]), "present" if current[3] else "absent",
                                 len(self.rules[0]) + len(self.rules[1]), "present" if self.rules[3] else "absent"))

    def _missing(self, table):
        """The held sessions no longer in the table though their copy should still live (removed
        by someone else), with the lifetime they have left; found by a dump only when the table
        holds fewer entries than that. A copy that ran out by itself stays gone: it ended on the
        source too, or the next delta refreshes it, and bringing it back would take a tuple that a
        newer session may need."""
        now = time.monotonic()
        self._forget_expired(now)
        count = table_count()
        if count is None or count >= self._surely_alive(now):
            return []
        present = set(session_key(e) for e in table.dump())
        return [e._replace(timeout=int(self.expiry[key] - now)) for key, e in self.held.items()
                if key not in present and self.expiry[key] - now > EXPIRY_MARGIN]

    def _over_stale_copies(self, table, failures, delete):
        """Creates refused because a copy held here still has the new session's translated tuple:
        on the source that session ended and the NAT gave its port to the newer one at once (a
        pool in use to the last port), while its copy here lives a moment longer (lifetimes cross
        in whole seconds) and its end is not in the delta yet. Those copies go (added to `delete`),
        the refused creates are tried again, and what is refused then stays refused."""
        taken = dict((e.reply, e) for e, code in failures if code == errno.EEXIST)
        if not taken:
            return failures
        wanted = set(session_key(e) for e in taken.values())
        stale = [e for key, e in self.held.items() if key not in wanted and e.reply in taken]
        if stale:
            table.delete(stale)
            delete.extend(stale)
        # An entry that ran out here but is not reaped yet (the kernel's collector goes through a
        # big table slowly) still blocks a create, and no dump shows it; a lookup of its tuple,
        # either direction's, reaps it.
        refused = list(taken.values())
        table.get(refused + [e._replace(orig=e.reply) for e in refused])
        return table.create([e for e, dummy in failures])

    def _surely_alive(self, now):
        """How many held copies the kernel must still have: all but those within EXPIRY_MARGIN of
        their end (still known, so that a delta can end them, but maybe gone). The heap's smallest
        items are walked, not the whole heap: a few thousand under churn, whatever the table."""
        heap, expiry, held, limit = self._expiring, self.expiry, self.held, now + EXPIRY_MARGIN
        ending, stack = 0, [0]
        while stack:
            i = stack.pop()
            if i < len(heap) and heap[i][0] <= limit:
                at, key = heap[i]
                if expiry.get(key) == at and key in held:
                    ending += 1
                stack.extend((2 * i + 1, 2 * i + 2))
        return len(held) - ending

    def _forget_expired(self, now):
        """Let go of the copies whose lifetime here ran out EXPIRY_MARGIN seconds ago or more. Not
        sooner: a copy the kernel still holds must stay known, so that a delta that ends it, or
        that brings a newer session with its tuple, deletes it before creating (under churn a
        client's port and the NAT's translated port come round again within seconds)."""
        heap, expiry = self._expiring, self.expiry
        while heap and now - heap[0][0] >= EXPIRY_MARGIN:
            at, key = heapq.heappop(heap)
            if expiry.get(key) == at:  # else a later delta gave the copy a new lifetime
                del expiry[key]
                self.held.pop(key, None)

    def apply(self, document, frozen=False):
        """Apply a delta document (already parsed JSON); all or nothing for its sessions, and its
        firewall part (whole before the freeze, after the sessions; only the members that changed
        once `frozen`, beside them)."""
        if self.held is None:
            raise AgentError("no pre-copy loaded: send prepare first")
        try:
            sessions = document_sessions(document)
        except (DocumentError, ModelError) as exc:
            raise AgentError("the delta is not a valid state document, nothing was applied: %s" % exc)
        if self.firewall is None:
            return dict(self._apply_sessions(sessions), firewall=None)
        if not frozen:
            result = self._apply_sessions(sessions)
            result["firewall"] = Beside(self.firewall.apply, document, False).result()
            return result
        # In the window the members are written beside the sessions (one program run while they are
        # created; it shares nothing with them, not even a libnftables context).
        firewall = Beside(self.firewall.apply, document, True)
        try:
            result = self._apply_sessions(sessions)
        except Exception:
            try:
                firewall.result()
            except AgentError:
                pass
            raise
        result["firewall"] = firewall.result()
        return result

    def _apply_sessions(self, sessions):
        self._check_rules()
        held = self.held
        create, delete, refresh = [], [], []
        for gone in sessions.removed:
            current = held.get(session_key(gone))
            if current is not None and current.reply == gone.reply:
                delete.append(current)
        deleted_keys = set(session_key(e) for e in delete)
        for wanted in sessions.present:
            key = session_key(wanted)
            current = held.get(key)
            if current is not None and key not in deleted_keys:
                if current.reply == wanted.reply:
                    refresh.append(wanted)
                    continue
                delete.append(current)
            create.append(wanted)
        with Conntrack() as table:
            # Held sessions someone removed are created again from our copy (the delta has only what changed).
            planned = set(session_key(e) for e in create + refresh + delete)
            missing = [e for e in self._missing(table) if session_key(e) not in planned]
            updated = table.update(refresh)
            refused = [(e, code) for e, code in updated if code != errno.ENOENT]
            refused += [(e, code) for e, code in table.delete(delete) if code != errno.ENOENT]
            if refused:
                raise AgentError(self._refusal("refresh or delete", refused))
            # A copy that ran out here meanwhile (a one-way stream's entry lives 30 s unanswered)
            # is created again from the source's current one, never dropped.
            create.extend(e for e, code in updated if code == errno.ENOENT)
            failures = table.create(create)
            if failures:
                failures = self._over_stale_copies(table, failures, delete)
            if failures:
                done = [e for e in create if e not in set(f[0] for f in failures)]
                table.delete(done)
                raise AgentError(self._refusal("create", failures) + self._holders(table, failures)
                                 + " (those created were deleted again)")
            # Best effort, after the delta: a copy whose tuple a newer session holds has ended anyway.
            taken = set(id(e) for e, dummy in table.create(missing))
            recreated = [e for e in missing if id(e) not in taken]
        for entry in delete:
            held.pop(session_key(entry), None)
            self.expiry.pop(session_key(entry), None)
        for entry in missing:
            if id(entry) in taken:
                held.pop(session_key(entry), None)
        now = time.monotonic()
        for entry in create + refresh + recreated:
            key = session_key(entry)
            held[key] = entry
            self.expiry[key] = now + entry.timeout
            heapq.heappush(self._expiring, (self.expiry[key], key))
        self.created.extend(create + recreated)
        # After the masters, their expectations: the delta carries the source's whole table, so the
        # target's expectations of the masters it holds become exactly those.
        expected = {}
        masters = [e.orig for e in held.values() if e.alg is not None and e.alg.helper]
        if sessions.expectations or masters:
            expected = alg_state.apply_expectations(sessions.expectations, held_masters=masters)
        self.applied_at = time.monotonic()
        result = {"created": len(create), "deleted": len(delete), "refreshed": len(refresh),
                  "sessions": len(sessions.present), "removed": len(sessions.removed), "recreated": len(recreated)}
        result.update(expected)
        return result

    @staticmethod
    def _refusal(verb, failures):
        shown = "; ".join("%s: %s" % (describe(e), strerror(code)) for e, code in failures[:10])
        return "the kernel refused to %s %d session(s): %s" % (verb, len(failures), shown)

    def _holders(self, table, failures):
        """For creates refused with EEXIST: which entries here hold their tuples, and whether they
        are copies of ours (one dump, on the way to a failure only)."""
        taken = [e for e, code in failures if code == errno.EEXIST][:10]
        if not taken:
            return ""
        by_tuple = {}
        for entry in table.dump():
            by_tuple[entry.orig] = by_tuple[entry.reply] = entry
        held = self.held or {}
        found = []
        for wanted in taken:
            holder = by_tuple.get(wanted.orig) or by_tuple.get(wanted.reply)
            if holder is not None:
                whose = "a copy of ours" if held.get(session_key(holder)) is not None else "not a copy of ours"
                found.append("%s is held here by %s (%s)" % (describe(wanted), describe(holder), whose))
        return ("; " + "; ".join(found)) if found else ""

    def claim(self, addresses, interfaces, valid_ms, run_addresses):
        """Take the addresses, unless the source's freeze may have lapsed since the delta."""
        if self.applied_at is None:
            raise AgentError("claim before any delta was applied")
        # Our rules again (a few milliseconds: one read of our own table or chains), then the
        # sessions (a count, then a dump if some are missing): a target emptied since the apply must
        # not take the addresses, or the flows would cross it untranslated until the verify.
        self._check_rules()
        self._restore_missing()
        since = (time.monotonic() - self.applied_at) * 1000
        if since >= valid_ms:
            raise AgentError("the claim came %d ms after the delta was applied, and the source's freeze was "
                             "known to hold for %d ms only: not claimed" % (since, valid_ms))
        result = run_addresses(dict(addresses=addresses, interfaces=interfaces, state="present", announce="true",
                                    count=1, interval=0.0))
        self.claimed = (addresses, interfaces)
        return {"added": len(result["added"]), "timings": result["timings"], "since_delta_ms": int(since)}

    def verify(self):
        """Before the claim and before the commit: our rules still loaded, the held sessions still
        here (created again if someone removed them), so that this host never serves, nor stays
        serving, without the state it took over."""
        self._check_rules()
        return self._restore_missing()

    def _restore_missing(self):
        with Conntrack() as table:
            missing = self._missing(table)
            taken = set(id(e) for e, dummy in table.create(missing)) if missing else set()
        for entry in missing:
            if id(entry) in taken:
                self.held.pop(session_key(entry), None)
        recreated = [e for e in missing if id(e) not in taken]
        self.created.extend(recreated)
        return {"recreated": len(recreated)}

    def announce(self, addresses, interfaces, count, interval, run_addresses):
        """More rounds of announcements, after the window (a neighbour that missed the first)."""
        run_addresses(dict(addresses=addresses, interfaces=interfaces, state="present", announce="always",
                           count=count, interval=interval))
        return {}

    def undo(self, run_addresses, quiet=UNDO_QUIET, grace=UNDO_GRACE, forwarded=drain.forwarded_packets):
        """The controller is gone before the end: leave nothing of ours active here.

        The source's agent takes the addresses back and announces them; until the neighbours
        follow, packets still arrive here, and without our NAT rules (the kernel's NAT hooks go
        with them) they would cross untranslated: a port forward's answer reaches its peer from
        the inside address and is reset. So the rules stay until forwarding has stopped, and go
        before the sessions: a packet arriving meanwhile must not create a translated session that
        a re-run would then find in its way."""
        if self.held is None and self.precopy:
            # Before the cutover's prepare (the controller died between the apply and the window):
            # the pre-copy's sessions, if the apply got that far, and our rules unless we kept some.
            try:
                self.held = held_copies(self._read(self.precopy))
            except AgentError:
                self.held = {}  # never uploaded: nothing was applied from it
        if self.claimed is not None:
            addresses, interfaces = self.claimed
            run_addresses(dict(addresses=addresses, interfaces=interfaces, state="absent", announce="false",
                               count=1, interval=0.0))
            if grace > 0:
                drain.wait_quiet(forwarded, quiet, grace)
        if not self.keep_rules:
            current = self.provider.read_nat_rules({})
            if current.present:
                self.provider.remove_nat_rules(current)
            algs = self.provider.read_alg_rules()
            if algs.present:
                self.provider.remove_alg_rules(algs)
        with Conntrack() as table:
            stale = list(self.held.values()) if self.held else []
            if self.claimed is not None:
                # And those that packets arriving after the claim made with the service's addresses.
                owned = set(ipaddress.ip_interface(a["address"]).ip for a in self.claimed[0])
                known = set(session_key(e) for e in stale)
                stale += [e for e in table.dump() if session_key(e) not in known
                          and any(ipaddress.ip_address(a) in owned for a in owned_addresses(e))]
            if stale:
                table.delete(stale)

    def close(self):
        pass
