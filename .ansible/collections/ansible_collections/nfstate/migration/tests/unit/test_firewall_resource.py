"""The firewall resource and module: want/have over a provider, the providers' steps over a fake
host, and the module's offline states run as Ansible runs them (a separate process)."""

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    Chain, FilterRule, Firewall, FirewallSet, Quota, SetElement, SetUpdate, canonical, from_document, to_document,
    without_state,
)
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import FirewallState
from ansible_collections.nfstate.migration.plugins.module_utils.providers.iptables import Iptables
from ansible_collections.nfstate.migration.plugins.module_utils.providers.nftables import Nftables
from ansible_collections.nfstate.migration.plugins.module_utils.resources import firewall as resource
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import ResourceError
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import filter_nftables as nft

IFACES = {"inside": "in0", "outside": "out0"}
MODULE = "ansible_collections.nfstate.migration.plugins.modules.firewall"

BLOCKLIST = FirewallSet("blocklist", "ipv4", 3600, True, (SetElement("198.51.100.66", None, 3500.25, 2, 120),))
FIREWALL = canonical(Firewall(
    chains=(Chain("forward", "drop"),),
    rules=(FilterRule(ct_states=("established", "related"), action="accept"),
           FilterRule(family="ipv4", src_set="blocklist", action="drop"),
           FilterRule(family="ipv4", in_role="outside", proto=6, dport=(23, 23), set_updates=(SetUpdate("blocklist"),),
                      action="drop"),
           FilterRule(family="ipv4", in_role="inside", out_role="outside", src="192.0.2.0/24", quota="guest",
                      action="accept")),
    sets=(BLOCKLIST,),
    quotas=(Quota("guest", 200000, 92520),),
))
WEB = FilterRule(family="ipv4", in_role="outside", proto=6, dport=(80, 80), ct_states=("new",), action="accept")


class MemoryProvider(object):
    """A provider whose host is a variable: what the resource does, without a kernel."""

    name = "nftables"

    def __init__(self, firewall=None):
        self.firewall = firewall
        self.writes = 0

    def settings(self):
        return {}

    def read_firewall(self, interfaces, skip_unsupported=False):
        return FirewallState(self.firewall or Firewall(), [], self.firewall is not None, None)

    def render_firewall(self, firewall, interfaces, current=None):
        return [("json", None, {"nftables": [{"add": {"table": {"name": "x"}}}]})]

    def write_firewall(self, firewall, interfaces, current, check=False):
        if not check:
            self.firewall = firewall
            self.writes += 1
        return self.render_firewall(firewall, interfaces)

    def remove_firewall(self, current, check=False):
        if not check:
            self.firewall = None
        return [("json", None, {"nftables": [{"delete": {"table": {"name": "x"}}}]})]

    @staticmethod
    def firewall_command_lines(steps):
        return [json.dumps(s[2]) for s in steps or ()]


def params(state, config=None, **extra):
    return dict(dict(state=state, config=config, src=None, interfaces=IFACES, skip_unsupported=False,
                     recent_as_sets=False), **extra)


def test_overridden_writes_once_then_reports_nothing_changed():
    provider = MemoryProvider()
    first = resource.run(provider, params("overridden", to_document(FIREWALL)), diff=True)
    assert first["changed"] is True and provider.writes == 1
    assert from_document(first["after"]) == FIREWALL
    assert "diff" in first and first["before"] == {}
    # The same members, other lifetimes and quota use: no reason to write.
    aged = FIREWALL._replace(sets=(BLOCKLIST._replace(elements=(BLOCKLIST.elements[0]._replace(remaining=3400.0),)),),
                             quotas=(Quota("guest", 200000, 100000),))
    second = resource.run(provider, params("overridden", to_document(aged)))
    assert second["changed"] is False and second["commands"] == [] and provider.writes == 1
    # A new member is.
    grown = FIREWALL._replace(sets=(BLOCKLIST._replace(elements=BLOCKLIST.elements + (SetElement("198.51.100.67", None, 10.0, 0, 0),)),))
    assert resource.run(provider, params("overridden", to_document(grown)))["changed"] is True


def test_check_mode_predicts_and_touches_nothing():
    provider = MemoryProvider()
    result = resource.run(provider, params("overridden", to_document(FIREWALL)), check_mode=True)
    assert result["changed"] is True and provider.firewall is None and provider.writes == 0
    assert from_document(result["after"]) == FIREWALL and result["commands"]


def test_merged_keeps_the_hosts_rules_and_joins_set_members():
    held = FIREWALL._replace(rules=FIREWALL.rules + (WEB,),
                             sets=(BLOCKLIST._replace(elements=(SetElement("203.0.113.9", None, 100.0, 0, 0),)),))
    provider = MemoryProvider(canonical(held))
    wanted = to_document(FIREWALL)
    result = resource.run(provider, params("merged", wanted))
    assert result["changed"] is True
    after = from_document(result["after"])
    assert WEB in after.rules and set(FIREWALL.rules) <= set(after.rules)
    assert sorted(e.address for e in after.sets[0].elements) == ["198.51.100.66", "203.0.113.9"]


def test_deleted_with_a_document_removes_its_rules_and_what_no_rule_uses():
    provider = MemoryProvider(canonical(FIREWALL._replace(rules=FIREWALL.rules + (WEB,))))
    only_trap = Firewall(chains=(Chain("forward", "drop"),), rules=FIREWALL.rules[1:3], sets=(BLOCKLIST,))
    after = from_document(resource.run(provider, params("deleted", to_document(only_trap)))["after"])
    assert after.sets == () and WEB in after.rules
    assert all(rule.src_set is None and not rule.set_updates for rule in after.rules)
    gone = resource.run(provider, params("deleted"))
    assert gone["changed"] is True and provider.firewall is None and gone["after"] == {}
    assert resource.run(provider, params("deleted"))["changed"] is False


def test_config_may_be_a_state_document_that_holds_the_nat_too():
    doc = dict(to_document(FIREWALL), **{"ietf-nat:nat": {"instances": {"instance": [{"id": 1, "name": "nat"}]}}})
    assert resource.wanted_firewall(doc, None) == FIREWALL
    assert resource.wanted_firewall({"ietf-nat:nat": {}}, None) == Firewall()
    with pytest.raises(ResourceError, match="not a firewall document"):
        resource.wanted_firewall({"ietf-access-control-list:acls": {"acl": [{"name": "sideways"}]}}, None)


def test_recent_lists_become_sets_only_for_nftables_and_when_asked():
    save = ("*filter\n:NFSTATE-FORWARD - [0:0]\n-A FORWARD -j NFSTATE-FORWARD\n"
            "-A NFSTATE-FORWARD -p tcp --dport 7201 -m recent --set --name opener -j DROP\n"
            "-A NFSTATE-FORWARD -p tcp --dport 2222 -m recent --rcheck --seconds 60 --name opener -j ACCEPT\n"
            "COMMIT\n")
    source = ipt.parse_save({"ipv4": save}, "", {}, IFACES).firewall
    assert source.recent_lists
    provider = MemoryProvider()
    assert resource.for_implementation(provider, source, {"recent_as_sets": False}) == source
    turned = resource.for_implementation(provider, source, {"recent_as_sets": True})
    assert turned.recent_lists == () and [s.name for s in turned.sets] == ["opener"]
    provider.name = "iptables"
    assert resource.for_implementation(provider, source, {"recent_as_sets": True}) == source


# -- the providers' steps, over a host that answers from canned texts ------------------------

class FakeHost(object):
    """get_bin_path/run_command as an AnsibleModule has them; answers by program name."""

    def __init__(self, outputs=None):
        self.outputs = outputs or {}
        self.calls = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return "/usr/sbin/" + name

    def run_command(self, argv, data=None, binary_data=False):
        name = os.path.basename(argv[0])
        self.calls.append((name, argv[1:], data))
        return 0, self.outputs.get(name, ""), ""


def held_by_iptables(firewall):
    """What iptables-nft-save and ipset save show once `firewall` was loaded (by our templates)."""
    saves = {}
    for family in ("ipv4", "ipv6"):
        body = ipt.restore_payload(firewall, family, IFACES).replace("-I FORWARD 1 ", "-A FORWARD ")
        saves[family] = "# Generated by %stables-save\n" % ("ip6" if family == "ipv6" else "ip") + body
    ipset_text = "".join(line + "\n" for line in ipt.render_ipset(firewall).splitlines()
                         if line.startswith(("create", "add"))).replace(" -exist", "")
    return saves, ipset_text


def test_iptables_steps_sets_first_then_rules_then_stale_sets():
    saves, ipset_text = held_by_iptables(FIREWALL)
    host = FakeHost({"iptables-nft-save": saves["ipv4"], "ip6tables-nft-save": saves["ipv6"], "ipset": ipset_text})
    provider = Iptables(host, "nft")
    current = provider.read_firewall(IFACES)
    assert current.present and without_state(current.firewall) == without_state(FIREWALL)
    assert current.firewall.sets[0].elements[0].address == "198.51.100.66"
    smaller = FIREWALL._replace(rules=FIREWALL.rules[:1] + FIREWALL.rules[3:], sets=())
    steps = provider.render_firewall(smaller, IFACES, current)
    assert [(kind, where) for kind, where, dummy in steps] == [("restore", "ipv4"), ("restore", "ipv6"), ("ipset", None)]
    assert steps[-1][2] == "destroy nfs-blocklist\n"
    assert "-I FORWARD" not in steps[0][2]        # the jump is there already
    host.calls.clear()
    provider.write_firewall(smaller, IFACES, current)
    programs = [(name, args) for name, args, dummy in host.calls]
    assert programs == [("iptables-nft-restore", ["--wait", "--noflush", "--counters"]),
                        ("ip6tables-nft-restore", ["--wait", "--noflush", "--counters"]),
                        ("ipset", ["restore"])]


def test_iptables_set_with_other_options_is_made_again_after_the_rules_let_go():
    saves, ipset_text = held_by_iptables(FIREWALL)
    host = FakeHost({"iptables-nft-save": saves["ipv4"], "ip6tables-nft-save": saves["ipv6"], "ipset": ipset_text})
    provider = Iptables(host, "nft")
    current = provider.read_firewall(IFACES)
    longer = FIREWALL._replace(sets=(BLOCKLIST._replace(timeout=7200),))
    kinds = [(kind, where, text.splitlines()[1] if kind == "restore" else text.splitlines()[0])
             for kind, where, text in provider.render_firewall(longer, IFACES, current)]
    assert kinds[:3] == [("restore", "ipv4", "-D FORWARD -j NFSTATE-FORWARD"), ("restore", "ipv6", "-D FORWARD -j NFSTATE-FORWARD"),
                         ("ipset", None, "destroy nfs-blocklist")]
    assert kinds[3][:2] == ("ipset", None) and "timeout 7200" in kinds[3][2]
    assert [k[:2] for k in kinds[4:]] == [("restore", "ipv4"), ("restore", "ipv6")]


def test_iptables_command_lines_name_the_programs():
    lines = Iptables(FakeHost(), "legacy").firewall_command_lines(Iptables(FakeHost(), "legacy").render_firewall(FIREWALL, IFACES))
    assert lines[0] == "# ipset restore"
    assert "# iptables-legacy-restore --noflush --counters" in lines
    assert "add nfs-blocklist 198.51.100.66 timeout 3500 packets 2 bytes 120" in lines


def test_nftables_steps_are_the_table_then_its_elements():
    provider = Nftables(FakeHost())
    steps = provider.render_firewall(FIREWALL, IFACES)
    assert [kind for kind, dummy, dummy2 in steps] == ["json", "text"]
    lines = provider.firewall_command_lines(steps)
    assert "# nft -f -" in lines
    assert any("198.51.100.66 counter packets 2 bytes 120" in line and "expires" in line for line in lines)


# -- the module, offline ---------------------------------------------------------------------

def run_module(tmp_path, **args):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), LANG="C")
    proc = subprocess.run([sys.executable, "-m", MODULE, str(path)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    return json.loads(proc.stdout)


def nft_listing(firewall):
    """The JSON listing nft gives of our table holding `firewall` (elements as nft lists them)."""
    items = [{"table": {"family": "inet", "name": nft.TABLE_NAME}}]
    for command in nft.render_commands(firewall, IFACES)["nftables"][4:]:
        ((kind, obj),) = command["add"].items()
        obj = dict(obj)
        if kind == "set":
            obj["elem"] = [{"elem": {"val": e.address, "expires": int(e.remaining), "timeout": 3600,
                                     "counter": {"packets": e.packets, "bytes": e.bytes}}} for e in BLOCKLIST.elements]
        if kind == "chain":
            obj["prio"] = obj.pop("prio")
        items.append({kind: obj})
    return {"nftables": items}


def test_module_an_nftables_set_parsed_becomes_an_ipset_rendered(tmp_path):
    parsed = run_module(tmp_path, implementation="nftables", state="parsed", interfaces=IFACES,
                        running_config=nft_listing(FIREWALL))
    assert "failed" not in parsed, parsed
    firewall = from_document(parsed["parsed"])
    assert without_state(firewall) == without_state(FIREWALL)
    assert [(e.address, e.remaining) for e in firewall.sets[0].elements] == [("198.51.100.66", 3500.0)]
    rendered = run_module(tmp_path, implementation="iptables", state="rendered", interfaces=IFACES,
                          config=parsed["parsed"])
    assert "failed" not in rendered, rendered
    assert "add nfs-blocklist 198.51.100.66 timeout 3500 packets 2 bytes 120" in rendered["rendered"]
    assert "-A NFSTATE-FORWARD -m comment --comment nfstate-policy -j DROP" in rendered["rendered"]


def test_module_an_ipset_parsed_becomes_an_nftables_element_rendered(tmp_path):
    saves, ipset_text = held_by_iptables(FIREWALL)
    parsed = run_module(tmp_path, implementation="iptables", state="parsed", interfaces=IFACES,
                        running_config=saves["ipv4"] + saves["ipv6"] + ipset_text)
    assert "failed" not in parsed, parsed
    assert without_state(from_document(parsed["parsed"])) == without_state(FIREWALL)
    rendered = run_module(tmp_path, implementation="nftables", state="rendered", interfaces=IFACES, config=parsed["parsed"])
    script = [line for line in rendered["rendered"] if line.startswith("add element")]
    assert script and "198.51.100.66 counter packets 2 bytes 120 expires 3500s" in script[0]


def test_module_needs_an_implementation_offline_and_a_document_to_render(tmp_path):
    failed = run_module(tmp_path, state="rendered", config=to_document(FIREWALL))
    assert failed["failed"] is True and "implementation must be given" in failed["msg"]
    failed = run_module(tmp_path, implementation="nftables", state="rendered")
    assert failed["failed"] is True and "config" in failed["msg"]


def test_lifetimes_count_from_when_the_state_was_read():
    import datetime
    short = FIREWALL._replace(sets=(BLOCKLIST._replace(elements=BLOCKLIST.elements + (SetElement("198.51.100.67", None, 50.0, 0, 0),)),))
    taken = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=100)
    doc = resource.document_of(short, taken.isoformat())
    assert doc["ietf-access-control-list:acls"][resource.TAKEN_AT]
    yang_model = pytest.importorskip("ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model")
    assert yang_model.validate(doc) == []
    wanted = resource.wanted_firewall(doc, None)
    (element,) = wanted.sets[0].elements      # the one with 50 s left ran out meanwhile
    assert element.address == "198.51.100.66" and 3300 < element.remaining <= 3400.25   # 100 s and the time this test took
    assert resource.wanted_firewall(to_document(short), None) == short
