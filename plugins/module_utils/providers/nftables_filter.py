# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The stateful firewall's part of the nftables provider: our table `inet nfstate_filter`.

Mixed into Nftables, which gives `host` and `runner`. Parsing and rendering are pure
(templates/filter_nftables.py). A change is two steps: the table in one libnftables JSON
transaction, then its set elements as an `nft -f` text script, since JSON input drops an
element's counter values (measured on nft 1.0.6). Elements are read from the text listing, which
gives their expiry to the millisecond.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_learned import with_members
from ansible_collections.nfstate.migration.plugins.module_utils import nft_elements
from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import Unsupported
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import NetlinkError
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import (
    FirewallState,
    ProviderError,
    program,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_nftables as filter_t


class NftablesFilter(object):
    """read/write/remove of the firewall, for the Nftables provider."""

    def _nft_text(self, args, script=None, check=False):
        argv = [program(self.host, "nft")] + (["-c"] if check else []) + args
        rc, out, err = self.host.run_command(argv, data=script, binary_data=True) if script is not None \
            else self.host.run_command(argv)
        if rc != 0:
            raise ProviderError("%s refused: %s" % (" ".join(argv), (err or out).strip()))
        return out

    @staticmethod
    def _state(listing, interfaces, text, skip_unsupported):
        try:
            parsed = filter_t.parse_ruleset(listing, interfaces, text, skip_unsupported)
        except Unsupported as exc:
            raise ProviderError("the firewall holds what the model cannot express: %s" % exc)
        return FirewallState(parsed.firewall, parsed.unsupported, parsed.exists, parsed)

    def parse_firewall(self, text, interfaces, skip_unsupported=False):
        """`running_config`: the JSON listing of our table (text or data); elements are then read
        from it, to the second."""
        try:
            listing = json.loads(text) if isinstance(text, str) else text
        except ValueError as exc:
            raise ProviderError("running_config is not libnftables JSON: %s" % exc)
        if not isinstance(listing, dict):
            raise ProviderError("running_config must be the libnftables JSON listing for implementation=nftables")
        return self._state(listing, interfaces, None, skip_unsupported)

    def read_firewall(self, interfaces, skip_unsupported=False):
        listing = self.runner.list_or_empty(filter_t.list_command())
        exists = any("table" in item for item in listing.get("nftables", []))
        text = self._nft_text(filter_t.list_text_args()) if exists else None
        return self._state(listing, interfaces, text, skip_unsupported)

    def read_members(self, firewall, hz=None):
        """`firewall` (as read_firewall gave it) with its sets' elements read again from one text
        listing of our table, rules and named objects left as they were (the cutover's window)."""
        elements = filter_t.parse_elements_text(self._nft_text(filter_t.list_text_args()))
        return with_members(firewall, dict((name, tuple(found.values())) for name, found in elements.items()), {})

    def write_members(self, firewall, changes, check=False):
        """Only the members that changed (firewall_learned.LearnedChanges), `firewall` holding
        them, in one transaction: over nfnetlink (nft_elements: no program run, no cache read),
        else as an `nft -f` script. The steps are the script either way (what `commands` shows)."""
        script = filter_t.render_members(firewall, changes.elements)
        steps = [("text", None, script)] if script else []
        if script and not check:
            try:
                nft_elements.send_batch(nft_elements.member_batch(firewall, changes.elements, filter_t.TABLE_NAME))
            except (NetlinkError, OSError):
                # A kernel that refuses our batch (an older one, say) gets it from nft itself.
                self._nft_text(["-f", "-"], script)
        return steps

    def render_firewall(self, firewall, interfaces, current=None):
        """The steps [(kind, where, payload)]: the table's JSON transaction, then the elements."""
        steps = [("json", None, filter_t.render_commands(firewall, interfaces))]
        elements = filter_t.render_elements(firewall)
        if elements:
            steps.append(("text", None, elements))
        return steps

    def write_firewall(self, firewall, interfaces, current, check=False):
        steps = self.render_firewall(firewall, interfaces, current)
        if check:
            # Elements need the table: only the transaction can be checked without committing.
            self.runner.run(steps[0][2], dry_run=True)
            return steps
        for kind, dummy, payload in steps:
            if kind == "json":
                self.runner.run(payload)
            else:
                self._nft_text(["-f", "-"], payload)
        return steps

    def remove_firewall(self, current, check=False):
        if current is None or not current.present:
            return []
        steps = [("json", None, filter_t.delete_commands())]
        self.runner.run(steps[0][2], dry_run=check)
        return steps

    @staticmethod
    def firewall_command_lines(steps):
        """JSON commands one per line, then the element script after a comment line."""
        lines = []
        for kind, dummy, payload in steps or ():
            if kind == "json":
                lines.extend(json.dumps(command, sort_keys=True) for command in payload.get("nftables", [])
                             if "metainfo" not in command)
            else:
                lines.append("# nft -f -")
                lines.extend(payload.splitlines())
        return lines
