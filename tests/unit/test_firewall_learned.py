# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The firewall's learned state in the cutover: what changed since the target was given it, the
element commands for the window, and the agents' two sides over scripted providers."""

import time

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.agent import firewall as agent_firewall
from ansible_collections.nfstate.migration.plugins.module_utils.firewall_learned import (
    LearnedChanges, SetChange, learned_changes, members_changed, set_changes, summary, with_members,
)
from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    Chain, Counter, FilterRule, Firewall, FirewallSet, Quota, RecentEntry, RecentList, SetElement, SetUpdate,
)
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import FirewallState
from ansible_collections.nfstate.migration.plugins.module_utils.resources.firewall import document_of
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_nftables as nft


def element(address, remaining=3000.0, packets=None, octets=None):
    return SetElement(address, None, remaining, packets, octets)


def blocklist(*elements, **kw):
    return FirewallSet("blocklist", kw.get("family", "ipv4"), 3600, kw.get("counters", False), tuple(elements))


def firewall(*sets, **kw):
    rules = (FilterRule(chain="forward", family="ipv4", src_set="blocklist", action="drop"),
             FilterRule(chain="forward", family="ipv4", in_role="outside", proto=6, dport=(23, 23),
                        set_updates=(SetUpdate("blocklist"),), action="drop"))
    return Firewall(chains=(Chain("forward", "drop"),), rules=rules, sets=tuple(sets),
                    quotas=kw.get("quotas", ()), counters=kw.get("counters", ()), recent_lists=kw.get("recent", ()))


HELD = blocklist(element("203.0.113.66", 3000.0), element("203.0.113.67", 100.0), element("203.0.113.68", 0.5))


def test_the_passage_of_time_alone_is_no_change():
    # Ten seconds later: lifetimes ten seconds shorter, .68 ran out by itself on both hosts.
    later = blocklist(element("203.0.113.66", 2990.0), element("203.0.113.67", 90.0))
    assert set_changes(HELD, later, elapsed=10.0) is None
    # Within the tolerance, two reads of one lifetime agree.
    assert set_changes(blocklist(*HELD.elements[:2]), blocklist(element("203.0.113.66", 2999.0), element("203.0.113.67", 101.5)),
                       elapsed=0.0) is None


def test_added_removed_and_refreshed_members():
    now = blocklist(element("203.0.113.66", 2999.0), element("203.0.113.67", 3600.0), element("203.0.113.88", 3599.0))
    change = set_changes(HELD, now, elapsed=1.0)
    # .88 is new; .67's lifetime started again (an `update` rule); .68 ran out by itself, so it is
    # not deleted (nft refuses to delete a missing element) and .66 is as it was.
    assert change == SetChange((now.elements[2],), (), (now.elements[1],))


def test_a_member_that_left_the_source_is_removed_unless_it_runs_out_by_itself():
    now = blocklist(element("203.0.113.66", 2999.0))
    assert set_changes(HELD, now, elapsed=1.0) == SetChange((), ("203.0.113.67",), ())


def test_a_member_about_to_run_out_on_the_target_is_added_again_not_refreshed():
    now = blocklist(element("203.0.113.68", 3600.0))
    change = set_changes(blocklist(element("203.0.113.68", 1.2)), now, elapsed=0.5)
    assert change.added == now.elements and change.refreshed == ()


def test_an_element_that_no_longer_expires_is_refreshed():
    change = set_changes(blocklist(element("203.0.113.66", 100.0)), blocklist(element("203.0.113.66", None)), 0.0)
    assert change.refreshed == (element("203.0.113.66", None),)


def test_learned_changes_tell_members_from_counts():
    held = firewall(blocklist(element("203.0.113.66")), quotas=(Quota("q", 1000, 10),))
    assert learned_changes(held, held, 0.0) == LearnedChanges({}, (), False)
    used = held._replace(quotas=(Quota("q", 1000, 500),))
    changes = learned_changes(held, used, 0.0)
    assert not members_changed(changes) and changes.counts
    grown = held._replace(sets=(blocklist(element("203.0.113.66"), element("203.0.113.88")),))
    changes = learned_changes(held, grown, 0.0)
    assert members_changed(changes) and not changes.counts
    assert summary(changes) == {"added": 1, "removed": 0, "refreshed": 0, "recent_lists": 0, "counts": False}
    counted = firewall(blocklist(element("203.0.113.66", packets=1, octets=60), counters=True))
    more = firewall(blocklist(element("203.0.113.66", packets=2, octets=120), counters=True))
    assert learned_changes(counted, more, 0.0).counts
    assert learned_changes(held, held._replace(counters=(Counter("c", 1, 2),)), 0.0).counts


def test_a_set_the_target_lacks_is_all_added_and_recent_lists_compare_by_hits():
    knock = FirewallSet("knock", "ipv4", 60, False, (element("203.0.113.77", 30.0),))
    changes = learned_changes(firewall(), firewall(knock), 0.0)
    assert changes.elements == {"knock": SetChange(knock.elements, (), ())}
    one = RecentList("opener", (RecentEntry("203.0.113.77", 0, (5.0,)),))
    two = RecentList("opener", (RecentEntry("203.0.113.77", 0, (1.0, 5.0)),))
    assert learned_changes(firewall(recent=(one,)), firewall(recent=(one._replace(entries=(one.entries[0]._replace(ages=(9.0,)),)),)),
                           4.0).recent_lists == ()
    assert learned_changes(firewall(recent=(one,)), firewall(recent=(two,)), 0.0).recent_lists == ("opener",)


def test_with_members_keeps_the_rest_of_what_was_read():
    base = firewall(blocklist(element("203.0.113.66")), quotas=(Quota("q", 1000, 10),),
                    recent=(RecentList("opener", (RecentEntry("203.0.113.77", 0, (5.0,)),)),))
    fresh = with_members(base, {"blocklist": (element("203.0.113.88"),)}, {})
    assert fresh.sets[0].elements == (element("203.0.113.88"),)
    assert fresh.recent_lists == (RecentList("opener", ()),)
    assert fresh.rules == base.rules and fresh.quotas == base.quotas
    assert with_members(base, {}, {}).sets[0].elements == ()


def test_ipset_member_commands_update_lifetimes_and_forgive_what_is_gone():
    fw = firewall(blocklist(element("203.0.113.88", 3599.4), element("203.0.113.67", 3600.0, 3, 180), counters=True),
                  FirewallSet("block6", "ipv6", 3600, False, (element("2001:db8:2::88", 3500.0),)))
    changes = {"blocklist": SetChange((fw.sets[0].elements[0],), ("203.0.113.70",), (fw.sets[0].elements[1],)),
               "block6": SetChange((fw.sets[1].elements[0],), (), ())}
    assert ipt.render_ipset_members(fw, changes).splitlines() == [
        "del nfs-blocklist 203.0.113.70",
        "add nfs-blocklist 203.0.113.88 timeout 3599",
        "add nfs-blocklist 203.0.113.67 timeout 3600 packets 3 bytes 180",
        "add nfs-block6 2001:db8:2::88 timeout 3500",
    ]
    assert ipt.render_ipset_members(fw, {}) == ""


def test_nft_member_commands_delete_and_add_in_one_script():
    fw = firewall(blocklist(element("203.0.113.88", 3599.25), element("203.0.113.67", 3600.0)))
    changes = {"blocklist": SetChange((fw.sets[0].elements[0],), ("203.0.113.70",), (fw.sets[0].elements[1],))}
    assert nft.render_members(fw, changes).splitlines() == [
        "delete element inet nfstate_filter blocklist { 203.0.113.70, 203.0.113.67 }",
        "add element inet nfstate_filter blocklist { 203.0.113.88 expires 3599s250ms, 203.0.113.67 expires 3600s }",
    ]
    only_added = {"blocklist": SetChange((fw.sets[0].elements[0],), (), ())}
    assert nft.render_members(fw, only_added) == \
        "add element inet nfstate_filter blocklist { 203.0.113.88 expires 3599s250ms }\n"
    assert nft.render_members(fw, {}) == ""


class ScriptedProvider(object):
    """read_firewall / read_members / write_firewall / write_members, recorded."""

    name = "nftables"

    def __init__(self, reads, members=()):
        self.reads = list(reads)
        self.members = list(members)
        self.calls = []

    def read_firewall(self, interfaces, skip=False):
        self.calls.append("read_firewall")
        return FirewallState(self.reads.pop(0), [], True, None)

    def read_members(self, base, hz=None):
        self.calls.append("read_members")
        return self.members.pop(0)

    def write_firewall(self, wanted, interfaces, current):
        self.calls.append(("write_firewall", wanted))
        return [("json", None, {}), ("text", None, "")]

    def write_members(self, wanted, changes):
        self.calls.append(("write_members", changes))
        return [("text", None, "")] if members_changed(changes) else []


def precopy_document(fw):
    return document_of(fw, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def test_the_source_carries_everything_at_the_catch_up_and_only_members_once_frozen():
    held = firewall(blocklist(element("203.0.113.66", 3000.0)), quotas=(Quota("q", 200000, 100),))
    used = held._replace(quotas=(Quota("q", 200000, 5000),))
    late = used._replace(sets=(blocklist(element("203.0.113.66", 2999.0), element("203.0.113.88", 3599.0)),))
    provider = ScriptedProvider([used], [used, late])
    source = agent_firewall.SourceFirewall(provider, {"inside": "in0"}, precopy_document(held))
    document, counts = source.delta(frozen=False)        # the catch-up: the quota moved
    assert document and counts["counts"] and counts["read"] == "whole"
    document, counts = source.delta(frozen=True)         # nothing new in the window: nothing crosses
    assert document is None and counts["read"] == "members"
    document, counts = source.delta(frozen=True)         # an address blocklisted after the catch-up
    assert counts["added"] == 1
    assert "203.0.113.88" in str(document)
    assert provider.calls == ["read_firewall", "read_members", "read_members"]
    assert source.document is document


def test_a_catch_up_that_found_nothing_new_still_leaves_the_window_the_members_alone():
    held = firewall(blocklist(element("203.0.113.66", 3000.0)))
    provider = ScriptedProvider([held], [held])
    source = agent_firewall.SourceFirewall(provider, {}, precopy_document(held))
    assert source.delta(frozen=False)[0] is None
    document, counts = source.delta(frozen=True)
    assert document is None and counts["read"] == "members"


def test_without_a_catch_up_the_window_reads_everything():
    held = firewall(blocklist(element("203.0.113.66", 3000.0)), quotas=(Quota("q", 200000, 100),))
    used = held._replace(quotas=(Quota("q", 200000, 5000),))
    provider = ScriptedProvider([used])
    source = agent_firewall.SourceFirewall(provider, {}, precopy_document(held))
    document, counts = source.delta(frozen=True)
    assert document and counts["read"] == "whole"


def test_the_target_writes_whole_before_the_freeze_and_members_inside_it():
    held = firewall(blocklist(element("203.0.113.66", 3000.0)))
    late = firewall(blocklist(element("203.0.113.66", 2999.0), element("203.0.113.88", 3599.0)))
    provider = ScriptedProvider([held, held])
    target = agent_firewall.TargetFirewall(provider, {"inside": "lan1"})
    assert target.apply({"ietf-nat:nat": {}}, frozen=False) is None
    result = target.apply(precopy_document(held), frozen=False)
    assert result["written"] == "whole" and provider.calls[-1][0] == "write_firewall"
    result = target.apply(precopy_document(late), frozen=True)
    assert result["written"] == "members" and result["added"] == 1
    (kind, changes) = provider.calls[-1]
    assert kind == "write_members" and [e.address for e in changes.elements["blocklist"].added] == ["203.0.113.88"]


@pytest.mark.parametrize("address, prefixlen, broadcast", [
    ("192.0.2.2", 24, "192.0.2.255"), ("198.18.0.2", 30, "198.18.0.3"), ("198.18.0.2", 31, None),
    ("2001:db8:1::2", 64, None)])
def test_directed_broadcast(address, prefixlen, broadcast):
    from ansible_collections.nfstate.migration.plugins.module_utils.forwarded import directed_broadcast
    assert directed_broadcast(address, prefixlen) == broadcast


def test_the_nftables_member_batch_is_one_transaction():
    from ansible_collections.nfstate.migration.plugins.module_utils import nft_elements as ne
    from ansible_collections.nfstate.migration.plugins.module_utils.netlink import NLMSGHDR, iter_attrs
    fw = firewall(blocklist(element("203.0.113.88", 3599.25, 3, 180), element("203.0.113.67", 3600.0), counters=True),
                  FirewallSet("block6", "ipv6", None, False, (element("2001:db8:2::88", None),)))
    changes = {"blocklist": SetChange((fw.sets[0].elements[0],), ("203.0.113.70",), (fw.sets[0].elements[1],)),
               "block6": SetChange((fw.sets[1].elements[0],), (), ())}
    messages = ne.member_batch(fw, changes, "nfstate_filter")
    types = [NLMSGHDR.unpack_from(m)[1] for m in messages]
    sub = ne.NFNL_SUBSYS_NFTABLES << 8
    # Deletes before adds in each set, all between one batch's begin and end.
    assert types == [ne.NFNL_MSG_BATCH_BEGIN, sub | ne.NFT_MSG_DELSETELEM, sub | ne.NFT_MSG_NEWSETELEM,
                     sub | ne.NFT_MSG_NEWSETELEM, ne.NFNL_MSG_BATCH_END]

    def elements(message):
        attrs = dict((t, message[o:o + n]) for t, o, n in iter_attrs(message, 20, len(message)))
        assert attrs[ne.NFTA_SET_ELEM_LIST_TABLE] == b"nfstate_filter\0"
        found = []
        items = attrs[ne.NFTA_SET_ELEM_LIST_ELEMENTS]
        for dummy, o, n in iter_attrs(items, 0, len(items)):
            elem = dict((t, items[eo:eo + en]) for t, eo, en in iter_attrs(items, o, o + n))
            key = elem[ne.NFTA_SET_ELEM_KEY][4:]
            found.append((key, ne._BE64.unpack(elem[ne.NFTA_SET_ELEM_EXPIRATION])[0] if ne.NFTA_SET_ELEM_EXPIRATION in elem else None,
                          ne.NFTA_SET_ELEM_EXPR in elem))
        return attrs[ne.NFTA_SET_ELEM_LIST_SET], found

    assert elements(messages[1]) == (b"blocklist\0", [(bytes([203, 0, 113, 70]), None, False), (bytes([203, 0, 113, 67]), None, False)])
    assert elements(messages[2]) == (b"blocklist\0", [(bytes([203, 0, 113, 88]), 3599250, True), (bytes([203, 0, 113, 67]), 3600000, False)])
    name, found = elements(messages[3])
    assert name == b"block6\0" and len(found[0][0]) == 16 and found[0][1:] == (None, False)
    assert ne.member_batch(fw, {}, "nfstate_filter") == []
