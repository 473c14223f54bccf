# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stateful firewall's part of the iptables provider: our filter chains, our ipsets, the recent
lists our rules name.

Mixed into Iptables, which gives `host` and `backend`. Parsing and rendering are pure
(templates/filter_iptables.py); this runs the programs and reads /proc. A change is a list of
steps, run in order:
  ipset restore          the sets first (rules cannot name a set that does not exist)
  *-restore --counters   each family's chains, with their counters (named counters and quotas
                         live in a rule's counters)
  /proc/net/xt_recent    one write per hit, once the rules that create the lists are loaded
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import time

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_learned import with_members
from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import FAMILIES, Unsupported
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import (
    FirewallState,
    ProviderError,
    has_program,
    program,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_iptables as filter_t

RECENT_DIR = "/proc/net/xt_recent"
TIMER_LIST = "/proc/timer_list"
# Two readings of the kernel's jiffies this far apart give its HZ.
CLOCK_SAMPLE = 0.2
_LEGACY_TABLES = {"ipv4": "/proc/net/ip_tables_names", "ipv6": "/proc/net/ip6_tables_names"}
_RECENT_NAME = re.compile(r"-m recent\b.*?--name (\S+)")
_OWN_RULE = re.compile(r"^(\[\d+:\d+\]\s+)?-A NFSTATE-")


def recent_names(saves):
    """The recent lists that rules of our chains name, in `iptables-save` texts by family."""
    names = set()
    for text in saves.values():
        for line in text.splitlines():
            if _OWN_RULE.match(line):
                names.update(_RECENT_NAME.findall(line))
    return sorted(names)


def set_options(fwset):
    """What an ipset is created with: a set of ours with other options must be destroyed first."""
    return (fwset.family, fwset.timeout, bool(fwset.counters), fwset.size)


def _read(path):
    with open(path) as handle:
        return handle.read()


class IptablesFilter(object):
    """read/write/remove of the firewall, for the Iptables provider."""

    # -- reading --------------------------------------------------------------------------------

    def _filter_save(self, family):
        # Naming the table would load it on legacy (a read that changes the host): read it only
        # when the kernel holds it already.
        if self.backend == "legacy":
            try:
                if "filter" not in _read(_LEGACY_TABLES[family]).split():
                    return ""
            except OSError:
                return ""
        save = program(self.host, filter_t.PROGRAMS[(self.backend, family)][0])
        rc, out, err = self.host.run_command([save, "-c", "-t", "filter"])
        if rc != 0:
            if "does not exist" in (err or out):
                return ""
            raise ProviderError("%s -c -t filter failed: %s" % (save, (err or out).strip()))
        return out

    def _ipset_save(self):
        if not has_program(self.host, "ipset"):
            return ""
        rc, out, err = self.host.run_command([program(self.host, "ipset"), "save"])
        if rc != 0:
            raise ProviderError("ipset save failed: %s" % (err or out).strip())
        return out

    @staticmethod
    def _recent_files(names):
        files = {}
        for name in names:
            try:
                files[name] = _read(os.path.join(RECENT_DIR, name))
            except OSError:
                files[name] = ""
        return files

    @staticmethod
    def kernel_clock():
        """(jiffies now, HZ): recent lists stamp their hits in jiffies."""
        first = (filter_t.parse_jiffies(_read(TIMER_LIST)), time.monotonic())
        time.sleep(CLOCK_SAMPLE)
        second = (filter_t.parse_jiffies(_read(TIMER_LIST)), time.monotonic())
        return second[0], filter_t.hz_from_samples(first, second)

    def _state(self, saves, ipset_text, recent_files, interfaces, clock, skip_unsupported):
        try:
            parsed = filter_t.parse_save(saves, ipset_text, recent_files, interfaces, clock, skip_unsupported)
        except Unsupported as exc:
            raise ProviderError("the firewall holds what the model cannot express: %s" % exc)
        present = bool(parsed.firewall.sets) or any(
            parsed.chains.get(family) or any(parsed.jumps.get(family, {}).values()) for family in FAMILIES)
        return FirewallState(parsed.firewall, parsed.unsupported, present, parsed)

    def parse_firewall(self, text, interfaces, skip_unsupported=False):
        """`running_config`: {ipv4, ipv6, ipset} texts, or `iptables-save` and `ip6tables-save`
        output (with -c) followed by `ipset save` output."""
        if isinstance(text, dict):
            saves = dict((family, text.get(family, "")) for family in FAMILIES)
            ipset_text = text.get("ipset", "")
        elif isinstance(text, str):
            ipset_lines = [line for line in text.splitlines() if line.startswith(("create ", "add "))]
            ipset_text = "".join(line + "\n" for line in ipset_lines)
            saves = filter_t.split_families(text)
            if not saves:
                saves = {"ipv4": text}
        else:
            raise ProviderError("running_config must be iptables-save text, or {ipv4, ipv6, ipset} texts")
        return self._state(saves, ipset_text, {}, interfaces, None, skip_unsupported)

    def read_firewall(self, interfaces, skip_unsupported=False):
        saves = dict((family, self._filter_save(family)) for family in FAMILIES)
        recent_files = self._recent_files(recent_names(saves))
        clock = self.kernel_clock() if any(recent_files.values()) else None
        return self._state(saves, self._ipset_save(), recent_files, interfaces, clock, skip_unsupported)

    def read_members(self, firewall, hz=None):
        """`firewall` (as read_firewall gave it) with its sets' elements and its recent lists'
        entries read again, rules and counters left as they were: one `ipset save` and the lists'
        files, what the cutover's window can afford. `hz`: the kernel's, measured before."""
        sets, dummy = filter_t.parse_ipset_save(self._ipset_save())
        files = self._recent_files([r.name for r in firewall.recent_lists])
        recents = {}
        if any(files.values()):
            now = filter_t.parse_jiffies(_read(TIMER_LIST))
            hz = hz or self.kernel_clock()[1]
            recents = dict((name, filter_t.parse_recent(name, text, now, hz)) for name, text in files.items() if text)
        return with_members(firewall, dict((s.name, s.elements) for s in sets), recents)

    # -- writing --------------------------------------------------------------------------------

    def write_members(self, firewall, changes, check=False):
        """Only the members that changed (firewall_learned.LearnedChanges), `firewall` holding
        them: one `ipset -exist restore`, and the recent lists that differ written again."""
        steps = []
        text = filter_t.render_ipset_members(firewall, changes.elements)
        if text:
            steps.append(("ipset", "exist", text))
        lists = tuple(r for r in firewall.recent_lists if r.name in changes.recent_lists)
        for name, lines in sorted(filter_t.render_recent(firewall._replace(recent_lists=lists)).items()):
            steps.append(("recent", name, "\n".join(lines) + "\n"))
        if not check:
            self._run_steps(steps)
        return steps

    def render_firewall(self, firewall, interfaces, current=None):
        """The steps [(kind, where, text)] that make the host hold exactly `firewall`."""
        raw = current.raw if current is not None and current.present else None
        steps = []
        held = dict((s.name, s) for s in raw.firewall.sets) if raw is not None else {}
        rebuilt = [s.name for s in firewall.sets if s.name in held and set_options(held[s.name]) != set_options(s)]
        if rebuilt:
            # ipset cannot change a set's options: our chains let go of it, it is made again.
            steps.extend(("restore", family, text) for family, text in self._removal(raw) if text)
            steps.append(("ipset", None, filter_t.ipset_destroy_lines([filter_t.SET_PREFIX + n for n in rebuilt])))
            raw = None
        if firewall.sets:
            steps.append(("ipset", None, filter_t.render_ipset(firewall)))
        wanted_chains = set(filter_t.OWN_CHAINS[c.name] for c in firewall.chains)
        for family in FAMILIES:
            if firewall.chains:
                steps.append(("restore", family, filter_t.restore_payload(firewall, family, interfaces, raw)))
            if raw is not None:
                stale = set(raw.chains.get(family, ())) - wanted_chains
                text = filter_t.remove_payload(self._only(raw, family, stale), family) if stale else None
                if text:
                    steps.append(("restore", family, text))
        gone = [filter_t.SET_PREFIX + name for name in held if name not in set(s.name for s in firewall.sets)]
        if gone:
            steps.append(("ipset", None, filter_t.ipset_destroy_lines(gone)))
        for name, lines in sorted(filter_t.render_recent(firewall).items()):
            steps.append(("recent", name, "\n".join(lines) + "\n"))
        return steps

    @staticmethod
    def _only(raw, family, chains):
        """The host's view reduced to some of our chains of one family (to remove them alone)."""
        jumps = dict((hook, count) for hook, count in raw.jumps.get(family, {}).items()
                     if filter_t.OWN_CHAINS[hook] in chains)
        return raw._replace(chains={family: sorted(chains)}, jumps={family: jumps})

    @staticmethod
    def _removal(raw):
        return [(family, filter_t.remove_payload(raw, family)) for family in FAMILIES]

    def write_firewall(self, firewall, interfaces, current, check=False):
        steps = self.render_firewall(firewall, interfaces, current)
        if not check:
            self._run_steps(steps)
        return steps

    def remove_firewall(self, current, check=False):
        if current is None or not current.present:
            return []
        raw = current.raw
        steps = [("restore", family, text) for family, text in self._removal(raw) if text]
        names = [filter_t.SET_PREFIX + s.name for s in raw.firewall.sets]
        if names:
            steps.append(("ipset", None, filter_t.ipset_destroy_lines(names)))
        if not check:
            self._run_steps(steps)
        return steps

    def _run_steps(self, steps):
        for kind, where, text in steps:
            if kind == "ipset":
                self._run([program(self.host, "ipset")] + (["-exist"] if where == "exist" else []) + ["restore"], text)
            elif kind == "restore":
                restore = program(self.host, filter_t.PROGRAMS[(self.backend, where)][1])
                self._run([restore, "--wait", "--noflush", "--counters"], text)
            else:
                self._write_recent(where, text.splitlines())

    def _run(self, argv, text):
        rc, out, err = self.host.run_command(argv, data=text, binary_data=True)
        if rc != 0:
            raise ProviderError("%s refused: %s\ninput was:\n%s" % (" ".join(argv), (err or out).strip(), text))

    @staticmethod
    def _write_recent(name, lines):
        # xt_recent takes one command per write(): `/` clears the list, `+ADDRESS` records a hit.
        path = os.path.join(RECENT_DIR, name)
        try:
            handle = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise ProviderError("cannot open %s (is a rule naming the list loaded?): %s" % (path, exc))
        try:
            for line in lines:
                os.write(handle, line.encode("ascii"))
        except OSError as exc:
            raise ProviderError("writing %r to %s: %s" % (line, path, exc))
        finally:
            os.close(handle)

    def firewall_command_lines(self, steps):
        """The steps as lines, each after a comment line naming the program or file that takes it."""
        lines = []
        for kind, where, text in steps or ():
            if kind == "ipset":
                lines.append("# ipset -exist restore" if where == "exist" else "# ipset restore")
            elif kind == "restore":
                # Rendering without a host does not detect the backend: name the family's tool only.
                name = filter_t.PROGRAMS[(self._backend, where)][1] if self._backend else \
                    "%s-restore" % ("ip6tables" if where == "ipv6" else "iptables")
                lines.append("# %s --noflush --counters" % name)
            else:
                lines.append("# %s/%s (one write per line)" % (RECENT_DIR, where))
            lines.extend(text.splitlines())
        return lines
