# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nftables provider: NAT rules and the freeze in tables of our own, over libnftables JSON.

One runner speaks to libnftables: Debian's python3-nftables binding when the host's Python can
import it (no process per command), else `nft -j -f -`. Rendering and parsing are pure
(templates/nat_nftables.py, templates/freeze_nftables.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import (
    AlgRuleState,
    Provider,
    ProviderError,
    RuleState,
    program,
)
from ansible_collections.nfstate.migration.plugins.module_utils.providers.nftables_filter import NftablesFilter
from ansible_collections.nfstate.migration.plugins.module_utils.templates import alg_nftables as alg_t
from ansible_collections.nfstate.migration.plugins.module_utils.templates import freeze_nftables as freeze_t
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_nftables as nat_t

METAINFO = {"metainfo": {"json_schema_version": 1}}


def load_binding():
    """Debian's python3-nftables module, or None when it is not importable."""
    try:
        import nftables  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return nftables


class NftRunner(object):
    """Runs libnftables JSON commands; raises ProviderError with libnftables' own message."""

    def __init__(self, host):
        self.host = host
        self._context = None
        self._nft = None
        binding = load_binding()
        if binding is not None:
            try:
                self._context = binding.Nftables()
                self._context.set_json_output(True)
            except OSError:  # the binding is there but libnftables.so is not
                self._context = None
        if self._context is None:
            self._nft = program(host, "nft")

    @property
    def via(self):
        return "python3-nftables" if self._context is not None else "%s -j" % self._nft

    def run(self, commands, dry_run=False):
        """The JSON output of the commands ({} when there is none)."""
        if self._context is not None:
            self._context.set_dry_run(dry_run)
            rc, output, error = self._context.cmd(json.dumps(commands))
            self._context.set_dry_run(False)
        else:
            argv = [self._nft, "-j"] + (["-c"] if dry_run else []) + ["-f", "-"]
            rc, output, error = self.host.run_command(argv, data=json.dumps(commands), binary_data=True)
        if rc != 0:
            raise ProviderError("nftables (%s) refused: %s" % (self.via, (error or "").strip() or "status %s" % rc))
        return json.loads(output) if output and output.strip() else {}

    def list_or_empty(self, commands):
        """A listing, or an empty one when the object listed does not exist."""
        try:
            return self.run(commands)
        except ProviderError as exc:
            if "No such file or directory" in str(exc):
                return {"nftables": []}
            raise


class Nftables(NftablesFilter, Provider):
    """nftables: our NAT in `inet nfstate_nat`, our freeze in `inet nfstate_freeze`, the firewall
    (NftablesFilter) in `inet nfstate_filter`."""

    name = "nftables"

    def __init__(self, host):
        super(Nftables, self).__init__(host)
        self._runner = None

    @property
    def runner(self):
        if self._runner is None:
            self._runner = NftRunner(self.host)
        return self._runner

    def required_programs(self):
        # The Python binding is used when there, but nft is what the nftables package brings and
        # what the runner falls back to.
        return ["nft"]

    def settings(self):
        return {"nftables_binding": load_binding() is not None}

    # -- NAT rules ------------------------------------------------------------------------------

    @staticmethod
    def _rule_state(table):
        return RuleState(table.rules, table.unsupported, nat_t.installed(table), table.exists, table)

    def parse_nat_rules(self, text, interfaces, include_foreign=False):
        try:
            listing = json.loads(text) if isinstance(text, str) else text
        except ValueError as exc:
            raise ProviderError("running_config is not libnftables JSON: %s" % exc)
        if not isinstance(listing, dict):
            raise ProviderError("running_config must be the libnftables JSON listing for implementation=nftables")
        return self._rule_state(nat_t.parse_ruleset(listing, interfaces, include_foreign))

    def read_nat_rules(self, interfaces, include_foreign=False):
        # Only our table is listed unless the other nat tables are wanted too.
        if include_foreign:
            listing = self.runner.run(nat_t.list_ruleset_command())
        else:
            listing = self.runner.list_or_empty(nat_t.list_command())
        return self._rule_state(nat_t.parse_ruleset(listing, interfaces, include_foreign))

    def render_nat_rules(self, rules, interfaces, current=None):
        return nat_t.render_commands(rules, interfaces)

    def write_nat_rules(self, rules, interfaces, current, check=False):
        commands = self.render_nat_rules(rules, interfaces, current)
        self.runner.run(commands, dry_run=check)
        return commands

    def remove_nat_rules(self, current, check=False):
        commands = nat_t.delete_commands(current.raw)
        if commands is None:
            return None
        self.runner.run(commands, dry_run=check)
        return commands

    @staticmethod
    def command_lines(payload):
        """One line per libnftables command (compact JSON)."""
        if not payload:
            return []
        return [json.dumps(command, sort_keys=True) for command in payload.get("nftables", [])
                if "metainfo" not in command]

    # -- ALG rules (`ct helper` objects in table inet nfstate_alg) -----------------------------

    def read_alg_rules(self):
        table = alg_t.parse_ruleset(self.runner.list_or_empty(alg_t.list_command()))
        return AlgRuleState(table.rules, table.unsupported, table.exists and table.chain, table.exists, table)

    def write_alg_rules(self, rules, current, check=False):
        commands = alg_t.render_commands(rules)
        self.runner.run(commands, dry_run=check)
        return commands

    def remove_alg_rules(self, current, check=False):
        commands = alg_t.delete_commands(current.raw) if current.raw is not None else None
        if commands is not None:
            self.runner.run(commands, dry_run=check)
        return commands

    # -- freeze ---------------------------------------------------------------------------------

    def read_freeze(self, now):
        if not freeze_t.nft_has_table(self.runner.run(freeze_t.nft_list_tables_commands())):
            return freeze_t.NOT_INSTALLED
        return freeze_t.parse_nft_table(self.runner.run(freeze_t.nft_list_table_commands()), now)

    def render_freeze(self, wanted, now):
        return freeze_t.nft_freeze_commands(wanted, now)

    def freeze(self, wanted, now):
        commands = self.render_freeze(wanted, now)
        self.runner.run(commands)
        return commands

    def unfreeze(self):
        commands = freeze_t.nft_unfreeze_commands()
        self.runner.run(commands)
        return commands
