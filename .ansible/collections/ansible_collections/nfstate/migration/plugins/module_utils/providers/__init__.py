# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One provider per implementation; `provider_for` picks (or detects) the host's.

A new implementation is one provider module here (with its pure templates) and one entry in
PROVIDERS, plus its row in the nat role's provider table (packages and programs).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import (
    LocalHost,
    ProviderError,
    has_program,
)
from ansible_collections.nfstate.migration.plugins.module_utils.providers.iptables import (
    Iptables,
    available_backends,
    backends_with_rules,
)
from ansible_collections.nfstate.migration.plugins.module_utils.providers.nftables import Nftables
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_nftables as nat_nft

PROVIDERS = {"iptables": Iptables, "nftables": Nftables}
IMPLEMENTATIONS = tuple(sorted(PROVIDERS))

__all__ = ["IMPLEMENTATIONS", "PROVIDERS", "LocalHost", "ProviderError", "detect_implementation", "provider_for"]


def provider_for(host, implementation=None, iptables_backend=None):
    """The provider of `implementation` on `host` (detected when None or 'auto')."""
    if implementation in (None, "auto"):
        implementation = detect_implementation(host)
    if implementation == "iptables":
        return Iptables(host, iptables_backend)
    if implementation in PROVIDERS:
        return PROVIDERS[implementation](host)
    raise ProviderError("unknown implementation %r (known: %s)" % (implementation, ", ".join(IMPLEMENTATIONS)))


def native_nft_nat(listing):
    """Whether a libnftables listing holds nat chains that iptables-nft did not write (its tables
    are `ip nat` / `ip6 nat` with the built-in chain names in capitals)."""
    for item in listing.get("nftables", []):
        chain = item.get("chain")
        if not chain or chain.get("type") != "nat":
            continue
        by_iptables = chain.get("table") == "nat" and chain.get("family") in ("ip", "ip6") \
            and chain.get("name", "").isupper()
        if not by_iptables:
            return True
    return False


def detect_implementation(host):
    """Which implementation serves the NAT here: ours first, then whichever holds NAT rules, else
    nftables where `nft` is installed."""
    nft = Nftables(host) if has_program(host, "nft") else None
    listing = {"nftables": []}
    if nft is not None:
        listing = nft.runner.run({"nftables": [{"list": {"ruleset": None}}]})
        ours = [item for item in listing.get("nftables", []) if item.get("table", {}).get("name") == nat_nft.TABLE_NAME]
        if ours:
            return "nftables"
    available = available_backends(host)
    if available and backends_with_rules(host, available):
        return "iptables"
    if native_nft_nat(listing):
        return "nftables"
    if nft is not None:
        return "nftables"
    if available:
        return "iptables"
    raise ProviderError("neither nftables (nft) nor iptables is installed: install one of them")
