"""Rendering, parsing and deadline math of the NAT freeze (no host touched)."""

import calendar
import json

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import freeze as nf
from ansible_collections.nfstate.migration.plugins.module_utils.providers import iptables as iptables_provider
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import ProviderError
from ansible_collections.nfstate.migration.plugins.module_utils.providers.iptables import Iptables
from ansible_collections.nfstate.migration.plugins.module_utils.providers.nftables import Nftables
from ansible_collections.nfstate.migration.plugins.module_utils.templates import freeze_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import freeze_nftables as nft
from ansible_collections.nfstate.migration.plugins.module_utils.freeze import (
    NOT_INSTALLED,
    Freeze,
    FreezeError,
    FreezeState,
)

# 2026-11-26T08:16:09Z
T = calendar.timegm((2026, 11, 26, 8, 16, 9, 0, 0, 0))


# ---------------------------------------------------------------- options and deadline math

def test_interface_devices_sorted_and_deduplicated():
    assert nf.interface_devices({"inside": "eth1", "outside": "eth0"}) == ("eth0", "eth1")
    assert nf.interface_devices({"inside": "br0", "outside": "br0"}) == ("br0",)
    assert nf.interface_devices({"inside": None, "outside": "wan"}) == ("wan",)


@pytest.mark.parametrize("interfaces", [
    {}, None, {"inside": None, "outside": None},
    {"inside": "eth+"}, {"inside": "a" * 16}, {"inside": "x y"}, {"inside": "a/b"}, {"inside": ".."},
    {"middle": "eth0"},
])
def test_interface_devices_rejects(interfaces):
    with pytest.raises(FreezeError):
        nf.interface_devices(interfaces)


def test_expiry_rounds_up_to_the_next_whole_second():
    assert nf.expiry_for(120, T) == T + 120
    assert nf.expiry_for(120, T + 0.2) == T + 121
    assert nf.expiry_for(1, T + 0.999) == T + 2


@pytest.mark.parametrize("deadline", [None, 0, -5, nf.MAX_DEADLINE + 1])
def test_deadline_bounds(deadline):
    with pytest.raises(FreezeError):
        nf.expiry_for(deadline, T)


def test_remaining_and_iso():
    assert nf.remaining_seconds(T + 10, T + 0.5) == 9
    assert nf.remaining_seconds(T, T + 3) == 0
    assert nf.iso_utc(T) == "2026-11-26T08:16:09Z"
    assert nf.iso_utc(None) is None


def test_describe_frozen_and_lifted():
    state = FreezeState(True, True, Freeze(("eth0", "eth1"), T + 60))
    assert nf.describe(state, T) == {
        "frozen": True, "interfaces": ["eth0", "eth1"], "expires_at": "2026-11-26T08:17:09Z", "remaining": 60}
    assert nf.describe(state, T + 60) == {"frozen": False, "interfaces": [], "expires_at": None, "remaining": 0}
    assert nf.describe(NOT_INSTALLED, T)["frozen"] is False


def test_needs_freeze():
    wanted = Freeze(("eth0",), T + 60)
    assert nf.needs_freeze(NOT_INSTALLED, wanted)
    assert not nf.needs_freeze(FreezeState(True, True, wanted), wanted)
    # a refresh that moves the expiry, another scope, a lifted freeze, a damaged one: rewrite
    assert nf.needs_freeze(FreezeState(True, True, Freeze(("eth0",), T + 59)), wanted)
    assert nf.needs_freeze(FreezeState(True, True, Freeze(("eth0", "eth1"), T + 60)), wanted)
    assert nf.needs_freeze(FreezeState(True, True, None), wanted)
    assert nf.needs_freeze(FreezeState(True, False, wanted), wanted)


# ---------------------------------------------------------------- nftables

def test_nft_freeze_commands_replace_the_table_in_one_transaction():
    wanted = Freeze(("in0", "out0"), T + 120)
    batch = nft.nft_freeze_commands(wanted, T)["nftables"]
    table = {"family": "inet", "name": "nfstate_freeze"}
    assert batch[:3] == [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
    nft_set = batch[3]["add"]["set"]
    assert (nft_set["name"], nft_set["type"], nft_set["flags"], nft_set["timeout"]) == \
        ("frozen_iifs", "ifname", ["timeout"], 120)
    chain = batch[4]["add"]["chain"]
    assert (chain["hook"], chain["type"], chain["prio"], chain["policy"]) == ("forward", "filter", -10, "accept")
    assert batch[5]["add"]["rule"]["expr"] == nft.nft_rule_expr()
    elems = batch[6]["add"]["element"]["elem"]
    assert [e["elem"]["val"] for e in elems] == ["in0", "out0"]
    for elem in elems:
        # integer seconds: libnftables silently ignores a fractional or text timeout
        assert isinstance(elem["elem"]["timeout"], int) and not isinstance(elem["elem"]["timeout"], bool) and elem["elem"]["timeout"] == 120
        assert elem["elem"]["comment"] == "expires_at=%d" % (T + 120)
    json.dumps(batch)  # serialisable as is


def test_nft_rule_holds_only_new_forwarded_packets_of_frozen_interfaces():
    expr = nft.nft_rule_expr()
    assert expr[0]["match"]["left"] == {"ct": {"key": "state"}} and expr[0]["match"]["right"] == "new"
    # only the packet that would create an entry: one not yet confirmed (an entry that exists but
    # has seen no reply, a one-way stream's, is NEW too and must keep flowing)
    assert expr[1]["match"] == {"op": "!", "left": {"ct": {"key": "status"}}, "right": "confirmed"}
    assert expr[2]["match"]["left"] == {"meta": {"key": "iifname"}} and expr[2]["match"]["right"] == "@frozen_iifs"
    assert expr[3] == {"drop": None}


def test_nft_timeout_lifts_no_later_than_expires_at():
    assert nft.nft_timeout(Freeze(("a",), T + 120), T + 0.4) == 119
    assert nft.nft_timeout(Freeze(("a",), T + 120), T) == 120
    assert nft.nft_timeout(Freeze(("a",), T + 1), T + 0.9) == 1  # never 0: that would mean no timeout


def test_nft_unfreeze_deletes_only_our_table():
    assert nft.nft_unfreeze_commands() == {"nftables": [{"delete": {"table": {"family": "inet", "name": "nfstate_freeze"}}}]}


# What `nft -j list table inet nfstate_freeze` printed here (nft 1.0.6), after a freeze of 120 s.
def _listing(elems, expr=None, extra=()):
    return {"nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "nfstate_freeze", "handle": 2}},
        {"set": {"family": "inet", "name": "frozen_iifs", "table": "nfstate_freeze", "type": "ifname",
                 "handle": 1, "flags": ["timeout"], "timeout": 120, "elem": elems}},
        {"chain": {"family": "inet", "table": "nfstate_freeze", "name": "forward", "handle": 2,
                   "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "nfstate_freeze", "chain": "forward", "handle": 3,
                  "expr": expr if expr is not None else [
                      {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
                      {"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "confirmed"}},
                      {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@frozen_iifs"}},
                      {"drop": None}]}},
    ] + list(extra)}


def test_parse_nft_frozen():
    elems = [{"elem": {"val": "in0", "expires": 117, "comment": "expires_at=%d" % (T + 120)}},
             {"elem": {"val": "out0", "expires": 117, "comment": "expires_at=%d" % (T + 120)}}]
    state = nft.parse_nft_table(_listing(elems), T + 2.5)
    assert state == FreezeState(True, True, Freeze(("in0", "out0"), T + 120))


def test_parse_nft_without_note_uses_kernel_remaining():
    state = nft.parse_nft_table(_listing([{"elem": {"val": "in0", "timeout": 120, "expires": 100}}]), T + 0.5)
    assert state.active == Freeze(("in0",), T + 101)


def test_parse_nft_note_contradicted_by_the_kernel_is_ignored():
    elems = [{"elem": {"val": "in0", "expires": 10, "comment": "expires_at=%d" % (T + 500)}}]
    assert nft.parse_nft_table(_listing(elems), T).active == Freeze(("in0",), T + 10)


def test_parse_nft_expired_elements_are_gone():
    # the kernel no longer lists expired elements: the table stays, inert
    listing = _listing([])
    del listing["nftables"][2]["set"]["elem"]
    assert nft.parse_nft_table(listing, T) == FreezeState(True, True, None)


def test_parse_nft_damage_is_not_intact():
    elems = [{"elem": {"val": "in0", "expires": 100}}]
    assert not nft.parse_nft_table(_listing(elems, expr=[{"drop": None}]), T).intact
    extra = [{"rule": {"family": "inet", "table": "nfstate_freeze", "chain": "forward", "handle": 4,
                       "expr": [{"accept": None}]}}]
    assert not nft.parse_nft_table(_listing(elems, extra=extra), T).intact
    # an element without a timer (plain string in the listing) never expires: rewrite it
    state = nft.parse_nft_table(_listing(["in0", {"elem": {"val": "out0", "expires": 5}}]), T)
    assert not state.intact and state.active == Freeze(("in0", "out0"), T + 5)


def test_nft_has_table():
    tables = {"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "filter", "handle": 1}},
                           {"table": {"family": "inet", "name": "nfstate_freeze", "handle": 2}}]}
    assert nft.nft_has_table(tables)
    assert not nft.nft_has_table({"nftables": [{"table": {"family": "ip", "name": "nfstate_freeze"}}]})
    assert nft.parse_nft_table(None, T) == NOT_INSTALLED


# ---------------------------------------------------------------- iptables

def test_datestop_is_one_second_before_the_deadline_in_utc():
    # the kernel keeps matching through the stop second (measured on legacy and nft backends)
    assert ipt.ipt_datestop(T + 1) == "2026-11-26T08:16:09"
    assert ipt.ipt_rule_args("in0", T + 1) == [
        "-i", "in0", "-m", "conntrack", "--ctstate", "NEW", "!", "--ctstatus", "CONFIRMED",
        "-m", "time", "--datestop", "2026-11-26T08:16:09", "-j", "DROP"]


SAVE_FROZEN = """# Generated by iptables-save v1.8.9 on Thu Nov 26 08:15:09 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:NFSTATE-FREEZE - [0:0]
-A FORWARD -j NFSTATE-FREEZE
-A FORWARD -i in0 -o out0 -j ACCEPT
-A NFSTATE-FREEZE -i in0 -m conntrack --ctstate NEW ! --ctstatus CONFIRMED -m time --datestop 2026-11-26T08:16:09 -j DROP
-A NFSTATE-FREEZE -i out0 -m conntrack --ctstate NEW ! --ctstatus CONFIRMED -m time --datestop 2026-11-26T08:16:09 -j DROP
COMMIT
# Completed on Thu Nov 26 08:15:09 2026
"""

SAVE_EMPTY = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i in0 -o out0 -j ACCEPT
COMMIT
"""


def test_parse_iptables_frozen_then_lifted():
    view = ipt.parse_iptables_save(SAVE_FROZEN)
    assert view == ipt.IptablesView(True, 1, True, [("in0", T + 1), ("out0", T + 1)])
    assert ipt.iptables_state(view, T) == FreezeState(True, True, Freeze(("in0", "out0"), T + 1))
    # the same rules after the deadline: inert, nothing held
    assert ipt.iptables_state(view, T + 1) == FreezeState(True, True, None)


def test_parse_iptables_reads_only_the_filter_table():
    other = "*nat\n:NFSTATE-FREEZE - [0:0]\n-A FORWARD -j NFSTATE-FREEZE\nCOMMIT\n"
    assert ipt.parse_iptables_save(other + SAVE_EMPTY) == ipt.IptablesView(False, 0, False, [])
    assert ipt.parse_iptables_save("") == ipt.IptablesView(False, 0, False, [])


def test_parse_iptables_nothing_of_ours():
    view = ipt.parse_iptables_save(SAVE_EMPTY)
    assert view == ipt.IptablesView(False, 0, False, [])
    assert ipt.iptables_state(view, T) == NOT_INSTALLED


def test_parse_iptables_jump_not_on_top_or_foreign_rule():
    moved = SAVE_FROZEN.replace("-A FORWARD -j NFSTATE-FREEZE\n-A FORWARD -i in0 -o out0 -j ACCEPT\n",
                                "-A FORWARD -i in0 -o out0 -j ACCEPT\n-A FORWARD -j NFSTATE-FREEZE\n")
    state = ipt.iptables_state(ipt.parse_iptables_save(moved), T)
    assert not state.intact and state.active == Freeze(("in0", "out0"), T + 1)
    foreign = SAVE_FROZEN.replace("COMMIT", "-A NFSTATE-FREEZE -j ACCEPT\nCOMMIT")
    view = ipt.parse_iptables_save(foreign)
    assert (None, None) in view.rules
    assert ipt.iptables_state(view, T) == FreezeState(True, False, None)


def test_ipt_freeze_restore_fresh_and_refresh():
    wanted = Freeze(("in0", "out0"), T + 61)
    fresh = ipt.ipt_freeze_restore(wanted, ipt.parse_iptables_save(SAVE_EMPTY))
    assert fresh == (
        "*filter\n"
        ":NFSTATE-FREEZE - [0:0]\n"
        "-A NFSTATE-FREEZE -i in0 -m conntrack --ctstate NEW ! --ctstatus CONFIRMED -m time --datestop 2026-11-26T08:17:09 -j DROP\n"
        "-A NFSTATE-FREEZE -i out0 -m conntrack --ctstate NEW ! --ctstatus CONFIRMED -m time --datestop 2026-11-26T08:17:09 -j DROP\n"
        "-I FORWARD 1 -j NFSTATE-FREEZE\n"
        "COMMIT\n")
    # refresh: the chain declaration flushes it in the same commit; the jump is already in place
    refresh = ipt.ipt_freeze_restore(wanted, ipt.parse_iptables_save(SAVE_FROZEN))
    assert "FORWARD" not in refresh and refresh.count("-A NFSTATE-FREEZE") == 2


def test_ipt_freeze_restore_moves_the_jump_to_the_top():
    text = SAVE_FROZEN.replace("-A FORWARD -i in0 -o out0 -j ACCEPT\n",
                               "-A FORWARD -i in0 -o out0 -j ACCEPT\n-A FORWARD -j NFSTATE-FREEZE\n")
    restore = ipt.ipt_freeze_restore(Freeze(("in0",), T + 5), ipt.parse_iptables_save(text))
    assert restore.splitlines()[-4:] == [
        "-D FORWARD -j NFSTATE-FREEZE", "-D FORWARD -j NFSTATE-FREEZE", "-I FORWARD 1 -j NFSTATE-FREEZE", "COMMIT"]


def test_ipt_unfreeze_restore():
    assert ipt.ipt_unfreeze_restore(ipt.parse_iptables_save(SAVE_FROZEN)) == (
        "*filter\n-D FORWARD -j NFSTATE-FREEZE\n-F NFSTATE-FREEZE\n-X NFSTATE-FREEZE\nCOMMIT\n")


def test_round_trip_render_then_parse():
    wanted = Freeze(("eth0", "eth1"), T + 300)
    restore = ipt.ipt_freeze_restore(wanted, ipt.parse_iptables_save(SAVE_EMPTY))
    # what iptables-save prints after that restore: our lines, the jump first in FORWARD
    saved = restore.replace("-I FORWARD 1 -j NFSTATE-FREEZE\n", "-A FORWARD -j NFSTATE-FREEZE\n")
    assert ipt.iptables_state(ipt.parse_iptables_save(saved), T) == FreezeState(True, True, wanted)


def test_combine_states_over_families():
    v4 = FreezeState(True, True, Freeze(("in0",), T + 60))
    assert nf.combine_states([v4, v4]) == v4
    # IPv6 lost its rules: still reported frozen (IPv4 is), but a present rewrites both
    assert nf.combine_states([v4, NOT_INSTALLED]) == FreezeState(True, False, v4.active)
    assert nf.combine_states([NOT_INSTALLED, NOT_INSTALLED]) == NOT_INSTALLED


# ---------------------------------------------------------------- runners, with a recording module

class RecordingModule:
    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.calls = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return "/usr/sbin/" + name

    def run_command(self, args, data=None, binary_data=False):
        self.calls.append((args, data))
        return self.outputs.pop(0)


def test_iptables_provider_freezes_each_family_with_its_own_tools(monkeypatch):
    monkeypatch.setattr(iptables_provider, "ipv6_enabled", lambda: True)
    module = RecordingModule([(0, SAVE_EMPTY, ""), (0, SAVE_EMPTY, ""), (0, "", ""), (0, "", "")])
    Iptables(module, "legacy").freeze(Freeze(("in0",), T + 10), T)
    assert [call[0] for call in module.calls] == [
        ["/usr/sbin/iptables-legacy-save"],
        ["/usr/sbin/ip6tables-legacy-save"],
        ["/usr/sbin/iptables-legacy-restore", "--wait", "--noflush"],
        ["/usr/sbin/ip6tables-legacy-restore", "--wait", "--noflush"],
    ]
    assert "--datestop 2026-11-26T08:16:18" in module.calls[2][1]


def test_iptables_provider_rejects_unknown_backend():
    with pytest.raises(ProviderError):
        Iptables(RecordingModule([]), "nftables")


def test_nft_provider_falls_back_to_nft_json_on_stdin(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "nftables", None)  # binding not importable
    module = RecordingModule([(0, json.dumps({"nftables": [{"metainfo": {}}]}), ""), (1, "", "Error: busy")])
    provider = Nftables(module)
    assert provider.read_freeze(T) == NOT_INSTALLED
    args, data = module.calls[0]
    assert args == ["/usr/sbin/nft", "-j", "-f", "-"] and json.loads(data) == nft.nft_list_tables_commands()
    with pytest.raises(ProviderError, match="busy"):
        provider.unfreeze()
