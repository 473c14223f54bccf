# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iptables provider: NAT rules and the freeze in chains of our own, for either backend.

`iptables-legacy` (x_tables) and `iptables-nft` (nf_tables underneath) are separate programs that
may even serve different network namespaces of one machine; the backend is detected (the one whose
nat table holds rules, else the host's default `iptables`) unless given. Every change is one
`*-restore --noflush` commit per address family, never rule by rule. Rendering and parsing are pure
(templates/nat_iptables.py, templates/freeze_iptables.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.nfstate.migration.plugins.module_utils.freeze import combine_states
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import FAMILIES, canonical
from ansible_collections.nfstate.migration.plugins.module_utils.providers.iptables_filter import IptablesFilter
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import (
    AlgRuleState,
    Provider,
    ProviderError,
    RuleState,
    has_program,
    program,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates import alg_iptables as alg_t
from ansible_collections.nfstate.migration.plugins.module_utils.templates import freeze_iptables as freeze_t
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_iptables as nat_t

BACKENDS = ("legacy", "nft")
_TOOL = {"ipv4": "iptables", "ipv6": "ip6tables"}
# Legacy tables the kernel holds, per family: reading a legacy table that does not exist would
# create it (and so change the host), so it is only read when listed here.
_LEGACY_TABLES = {"ipv4": "/proc/net/ip_tables_names", "ipv6": "/proc/net/ip6_tables_names"}
_HAS_RULES = re.compile(r"(?m)^-A ")


def programs(backend, family):
    """(save, restore) program names of a backend and family."""
    tool = _TOOL[family]
    return "%s-%s-save" % (tool, backend), "%s-%s-restore" % (tool, backend)


def backend_programs(backend):
    return [name for family in FAMILIES for name in programs(backend, family)]


def available_backends(host):
    """The backends whose four programs are all on the host."""
    return [backend for backend in BACKENDS if all(has_program(host, name) for name in backend_programs(backend))]


def legacy_table_loaded(family, table):
    """Whether the kernel already holds this legacy table (reading it is then side-effect free)."""
    try:
        with open(_LEGACY_TABLES[family]) as handle:
            return table in handle.read().split()
    except OSError:
        return False


def default_backend(version_text, available):
    """The backend `iptables --version` names ('v1.8.9 (nf_tables)'), else the first available."""
    if "(nf_tables)" in version_text and "nft" in available:
        return "nft"
    if "(legacy)" in version_text and "legacy" in available:
        return "legacy"
    return available[0] if available else None


def choose_backend(with_rules, default):
    """The backend that holds the NAT rules; with none, the host's default."""
    if len(with_rules) > 1:
        raise ProviderError("both iptables-legacy and iptables-nft hold NAT rules on this host: "
                            "say which one serves the NAT with iptables_backend")
    return with_rules[0] if with_rules else default


def backends_with_rules(host, available):
    """The available backends whose nat table (IPv4 or IPv6) holds rules."""
    found = []
    for backend in available:
        for family in FAMILIES:
            if backend == "legacy" and not legacy_table_loaded(family, "nat"):
                continue
            save = program(host, programs(backend, family)[0])
            rc, out, dummy = host.run_command([save, "-t", "nat"])
            if rc == 0 and _HAS_RULES.search(out):
                found.append(backend)
                break
    return found


def detect_backend(host):
    available = available_backends(host)
    if not available:
        raise ProviderError("no iptables backend has all its programs (%s, or the -nft ones): install iptables"
                            % ", ".join(backend_programs("legacy")))
    version = ""
    iptables = host.get_bin_path("iptables")
    if iptables:
        rc, out, dummy = host.run_command([iptables, "--version"])
        version = out if rc == 0 else ""
    return choose_backend(backends_with_rules(host, available), default_backend(version, available))


def ipv6_enabled():
    return os.path.isdir("/proc/sys/net/ipv6")


class IptablesRunner(object):
    """<family>-<backend>-save / -restore, each found once."""

    def __init__(self, host, backend):
        if backend not in BACKENDS:
            raise ProviderError("iptables_backend must be legacy or nft, got %r" % (backend,))
        self.host = host
        self.backend = backend
        self._paths = {}

    def _path(self, family, which):
        key = (family, which)
        if key not in self._paths:
            self._paths[key] = program(self.host, programs(self.backend, family)[which])
        return self._paths[key]

    def save(self, family, table=None):
        argv = [self._path(family, 0)] + (["-t", table] if table else [])
        rc, out, err = self.host.run_command(argv)
        if rc != 0:
            raise ProviderError("%s failed: %s" % (" ".join(argv), (err or out).strip()))
        return out

    def restore(self, family, text, test=False):
        argv = [self._path(family, 1), "--wait", "--noflush"] + (["--test"] if test else [])
        rc, out, err = self.host.run_command(argv, data=text, binary_data=True)
        if rc != 0:
            raise ProviderError("%s refused: %s\ninput was:\n%s" % (" ".join(argv), (err or out).strip(), text))


class Iptables(IptablesFilter, Provider):
    """iptables: our NAT in NFSTATE-PRE/NFSTATE-POST of the nat table, our freeze in
    NFSTATE-FREEZE of the filter table, IPv4 and IPv6; the firewall (IptablesFilter) in our
    filter chains and ipsets."""

    name = "iptables"

    def __init__(self, host, backend=None):
        super(Iptables, self).__init__(host)
        self._backend = None if backend in (None, "auto") else backend
        if self._backend is not None and self._backend not in BACKENDS:
            raise ProviderError("iptables_backend must be legacy, nft or auto, got %r" % (backend,))
        self._runner = None

    @classmethod
    def detect(cls, host):
        return {"iptables_backend": detect_backend(host)}

    @property
    def backend(self):
        if self._backend is None:
            self._backend = detect_backend(self.host)
        return self._backend

    def settings(self):
        return {"iptables_backend": self.backend}

    def required_programs(self):
        return backend_programs(self.backend)

    @property
    def runner(self):
        if self._runner is None:
            self._runner = IptablesRunner(self.host, self.backend)
        return self._runner

    # -- NAT rules ------------------------------------------------------------------------------

    @staticmethod
    def _rule_state(tables):
        rules = canonical([rule for family in FAMILIES for rule in tables[family].rules])
        unsupported = [item for family in FAMILIES for item in tables[family].unsupported]
        installed = all(nat_t.installed(tables[family]) for family in FAMILIES)
        present = any(tables[family].chains or any(tables[family].jumps.values()) for family in FAMILIES)
        return RuleState(rules, unsupported, installed, present, tables)

    def parse_nat_rules(self, text, interfaces, include_foreign=False):
        if not isinstance(text, str):
            raise ProviderError("running_config must be iptables-save text for implementation=iptables")
        parts = nat_t.split_families(text)
        return self._rule_state(dict(
            (family, nat_t.parse_save(parts.get(family, ""), family, interfaces, include_foreign))
            for family in FAMILIES))

    def read_nat_rules(self, interfaces, include_foreign=False):
        return self._rule_state(dict(
            (family, nat_t.parse_save(self.runner.save(family, "nat"), family, interfaces, include_foreign))
            for family in FAMILIES))

    def render_nat_rules(self, rules, interfaces, current=None):
        """{family: restore input} for the families that must change (all of them for an empty host)."""
        payload = {}
        for family in FAMILIES:
            table = current.raw[family] if current is not None and current.raw else None
            if table is not None and self._family_done(table, rules, family):
                continue
            payload[family] = nat_t.restore_payload(rules, family, interfaces, table)
        return payload

    @staticmethod
    def _family_done(table, rules, family):
        """Nothing to change in this family: same rules, chains entered once, nothing unsupported."""
        wanted = [rule for rule in rules if rule.family == family]
        return table.rules == wanted and not table.unsupported and nat_t.installed(table)

    def write_nat_rules(self, rules, interfaces, current, check=False):
        payload = self.render_nat_rules(rules, interfaces, current)
        self._restore(payload, check)
        return payload

    def remove_nat_rules(self, current, check=False):
        payload = {}
        for family in FAMILIES:
            text = nat_t.remove_payload(current.raw[family])
            if text:
                payload[family] = text
        self._restore(payload, check)
        return payload or None

    def _restore(self, payload, check):
        for family, text in sorted(payload.items()):
            self.runner.restore(family, text, test=check)

    def command_lines(self, payload):
        """The restore input of each family, after a line naming the program that takes it."""
        lines = []
        for family, text in sorted((payload or {}).items()):
            # Rendering without a host does not detect the backend: name the family's tool only.
            restore = programs(self._backend, family)[1] if self._backend else "%s-restore" % _TOOL[family]
            lines.append("# %s --noflush" % restore)
            lines.extend(text.splitlines())
        return lines

    # -- ALG rules (raw table) -----------------------------------------------------------------

    def _saved_if_loaded(self, family, table):
        """A table's save, or "" for a legacy table the kernel does not hold: reading would create
        it, and a gather (or a dry run) must change nothing."""
        if self.backend == "legacy" and not legacy_table_loaded(family, table):
            return ""
        return self.runner.save(family, table)

    def read_alg_rules(self):
        tables = dict((family, alg_t.parse_save(self._saved_if_loaded(family, alg_t.TABLE))) for family in FAMILIES)
        rules = []
        for family in FAMILIES:  # written the same into both families
            rules.extend(rule for rule in tables[family].rules if rule not in rules)
        unsupported = [item for family in FAMILIES for item in tables[family].unsupported]
        installed = all(table.chain and table.jumps == 1 for table in tables.values())
        present = any(table.chain or table.jumps for table in tables.values())
        return AlgRuleState(rules, unsupported, installed, present, tables)

    def write_alg_rules(self, rules, current, check=False):
        payload = dict((family, alg_t.restore_payload(rules, current.raw[family] if current.raw else None))
                       for family in FAMILIES
                       if not current.raw or current.raw[family].rules != rules or current.raw[family].jumps != 1)
        self._restore(payload, check)
        return payload

    def remove_alg_rules(self, current, check=False):
        payload = {}
        for family in FAMILIES:
            text = alg_t.remove_payload(current.raw[family]) if current.raw else None
            if text:
                payload[family] = text
        self._restore(payload, check)
        return payload or None

    # -- freeze ---------------------------------------------------------------------------------

    def _freeze_families(self):
        # Forwarded IPv6 connections would otherwise still open sessions during the freeze.
        return FAMILIES if ipv6_enabled() else FAMILIES[:1]

    def _freeze_views(self):
        # No `-t filter`: naming the table would load it (legacy) and so change the host on a mere
        # read; without it, save lists only the tables that exist.
        return [(family, freeze_t.parse_iptables_save(self.runner.save(family)))
                for family in self._freeze_families()]

    def read_freeze(self, now):
        return combine_states([freeze_t.iptables_state(view, now) for dummy, view in self._freeze_views()])

    def render_freeze(self, wanted, now):
        return dict((family, freeze_t.ipt_freeze_restore(wanted, view)) for family, view in self._freeze_views())

    def freeze(self, wanted, now):
        payload = self.render_freeze(wanted, now)
        self._restore(payload, False)
        return payload

    def unfreeze(self):
        payload = dict((family, freeze_t.ipt_unfreeze_restore(view)) for family, view in self._freeze_views()
                       if view.chain_exists or view.jumps)
        self._restore(payload, False)
        return payload
