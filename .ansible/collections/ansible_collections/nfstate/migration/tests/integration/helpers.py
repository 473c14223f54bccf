"""What several integration test files check or run the same way: kept here, so that no test file
imports another."""

import os
import sys

from ansible_collections.nfstate.migration.lab.flows import FlowSet, format_results

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

# Fills the namespace's table up to `leave` free places with untranslated UDP entries: run it with
# the host's python3 -c FILL COLLECTIONS_ROOT LEAVE; it prints refused, count and max.
FILL = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack, conntrack_count, conntrack_max
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import ConntrackEntry, FlowTuple, inverse
count = conntrack_max() - conntrack_count() - int(sys.argv[2])
def entries():
    for i in range(count):
        orig = FlowTuple(socket.AF_INET, 17, "192.0.2.%d" % (100 + i // 60000), "198.51.100.53", 1024 + i % 60000, 53)
        yield ConntrackEntry(orig, inverse(orig), 14, 3600)
with Conntrack() as table:
    refused = table.create(entries())
print(len(refused), conntrack_count(), conntrack_max())
"""


def assert_flows_whole(results):
    """Every flow of a lab/flows.py FlowSet healthy, and each saw one peer address only."""
    assert FlowSet.healthy(results), format_results(results)[:4000]
    for name, result in results.items():
        assert len(result["peers"]) == 1, (name, result["peers"])


def source_frozen(lab):
    """Whether the source (nat-a) of a lab/nfstate_lab.py Lab holds a freeze of ours, read in its namespace."""
    if lab.implementation("nat-a") == "nftables":
        return "nfstate_freeze" in lab.run("nat-a", ["nft", "list", "tables"]).stdout
    save = "iptables-legacy-save" if lab.implementation("nat-a") == "iptables-legacy" else "iptables-nft-save"
    return "NFSTATE-FREEZE" in lab.run("nat-a", [save, "-t", "filter"]).stdout
