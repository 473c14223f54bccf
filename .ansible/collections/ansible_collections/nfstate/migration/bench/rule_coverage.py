# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measurement (not a test): how much of a corpus of real-world NAT rule shapes the rules model carries.

    python bench/rule_coverage.py                 the table, per implementation
    python bench/rule_coverage.py --json          the same figures as JSON
    sudo python bench/rule_coverage.py --regenerate
                                                  rewrite the corpus' .json listings from its .nft
                                                  files (nft in a scratch namespace, r-cov-PID)

The corpus is tests/unit/fixtures/rule_corpus/ (its README says what is in it). Every rule of a
file's nat tables is counted once, found here independently of the parsers: for iptables every
`-A` line of a `*nat` table; for nftables every rule of a nat chain of tables ip, ip6 and inet and
of the chains those reach by jump, goto or verdict map. Each rule is then, as the gatherer
(include_builtin_chains) sees it:
- listed: named in `unsupported` with a reason (in any place it is reached from);
- carried: read into the model;
- followed: a jump or goto whose chain was read in its place (structure, not a NAT decision);
- lost: none of these (the aim is none).
Carried rules are also rendered for the other implementation: how many it takes is reported too.
"""

from __future__ import print_function

import argparse
import collections
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "tests", "unit", "fixtures", "rule_corpus")
FAMILIES = ("ipv4", "ipv6")
NAT_FAMILIES = ("ip", "ip6", "inet")


try:
    from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_iptables as ipt
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_results  # pylint: disable=import-error
    sys.path.insert(0, bench_results.collections_root())
    from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_iptables as ipt
from ansible_collections.nfstate.migration.plugins.module_utils.templates import nat_nftables as nftr  # noqa: E402


def header(text):
    """(writer, {role: device}) from a corpus file's leading comments."""
    writer, roles = "", {}
    for line in text.splitlines():
        found = re.match(r"#\s*(writer|roles):\s*(.*)", line)
        if found and found.group(1) == "writer":
            writer = found.group(2).strip()
        elif found:
            roles = dict(item.split("=", 1) for item in found.group(2).split())
    return writer, roles


# ---------------------------------------------------------------------------------------------
# The rules of a file, counted independently of the parsers


def iptables_rules(text):
    """[(family, line)] of every rule of the nat tables of an iptables-save text."""
    out = []
    for family, part in sorted(ipt.split_families(text).items()):
        inside = False
        for raw in part.splitlines():
            line = raw.strip()
            if line.startswith("*"):
                inside = line == "*nat"
            elif inside and line.startswith("-A "):
                out.append((family, ipt.COUNTERS.sub("", line)))
    return out


def _walk(value, keys):
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in keys and isinstance(inner, dict) and "target" in inner:
                yield inner["target"]
            else:
                yield from _walk(inner, keys)
    elif isinstance(value, list):
        for inner in value:
            yield from _walk(inner, keys)


def nftables_rules(listing):
    """[((family, table, chain), rule object)] of every rule a nat chain runs."""
    chains, rules, maps = {}, collections.OrderedDict(), {}
    for item in listing.get("nftables", []):
        for kind, obj in item.items():
            if kind == "chain":
                chains[(obj["family"], obj["table"], obj["name"])] = obj
            elif kind == "rule":
                rules.setdefault((obj["family"], obj["table"], obj["chain"]), []).append(obj)
            elif kind == "map":
                maps[(obj["family"], obj["table"], obj["name"])] = obj
    todo = [key for key, chain in chains.items() if key[0] in NAT_FAMILIES and chain.get("type") == "nat"]
    reached = []
    while todo:
        key = todo.pop(0)
        if key in reached:
            continue
        reached.append(key)
        for obj in rules.get(key, []):
            text = json.dumps(obj["expr"])
            names = list(_walk(obj["expr"], ("jump", "goto")))
            for name in re.findall(r'"@([^"]+)"', text):
                names.extend(_walk(maps.get((key[0], key[1], name), {}).get("elem", []), ("jump", "goto")))
            todo.extend((key[0], key[1], name) for name in names)
    return [(key, obj) for key in reached for obj in rules.get(key, [])]


def _nft_identity(text):
    """(family, table, chain, statements) of a rule as the nftables parser names it."""
    head, dummy, exprs = text.partition(": ")
    parts = head.split(" ", 2)
    if len(parts) < 3:
        return (nftr.TABLE_FAMILY, nftr.TABLE_NAME, head, exprs)
    return (parts[0], parts[1], parts[2].split(" > ")[-1], exprs)


# ---------------------------------------------------------------------------------------------
# Measuring


def _fates(universe, carried, followed, listed):
    """{identity: fate} for every rule of the universe (listed wins: it blocks a migration)."""
    out = {}
    for identity in universe:
        if identity in listed:
            out[identity] = "listed"
        elif identity in carried:
            out[identity] = "carried"
        elif identity in followed:
            out[identity] = "followed"
        else:
            out[identity] = "lost"
    return out


def _renders(render, rules):
    ok, refused = 0, collections.Counter()
    for rule in rules:
        try:
            render(rule)
            ok += 1
        except (ipt.RenderError, nftr.RenderError) as exc:
            refused[_reason_group(str(exc))] += 1
    return ok, refused


def _reason_group(reason):
    """A reason without its particulars (devices, chains, sets, numbers), to group by."""
    reason = re.sub(r"interface ('[^']*'|\S+) has", "interface X has", reason)
    reason = re.sub(r"chain '[^']*'", "chain X", reason)
    reason = re.sub(r"of chain [A-Za-z0-9_.-]+", "of chain X", reason)
    reason = re.sub(r"@\S+", "@X", reason)
    reason = re.sub(r"\): -A .*", ")", reason)
    reason = re.sub(r"\b\d+(\.\d+)*(/\d+)?\b", "N", reason)
    return reason


def measure_file(path):
    """Figures of one corpus file: implementation, rules by fate, reasons, renderable rules."""
    name = os.path.basename(path)
    with open(path) as handle:
        text = handle.read()
    writer, roles = header(text)
    if name.endswith(".iptables"):
        implementation = "iptables"
        universe = iptables_rules(text)
        parts = ipt.split_families(text)
        rules, carried, followed, listed, reasons = [], set(), set(), set(), []
        for family in FAMILIES:
            table = ipt.parse_save(parts.get(family, ""), family, roles, include_builtin=True)
            rules += table.rules
            carried |= set((family, line) for line in table.carried)
            followed |= set((family, line) for line in table.followed)
            listed |= set((family, item["rule"]) for item in table.unsupported)
            reasons += [item["reason"] for item in table.unsupported]

        def other(rule):
            return nftr.rule_exprs(rule, roles)
    else:
        implementation = "nftables"
        with open(path[:-len(".nft")] + ".json") as handle:
            listing = json.load(handle)
        universe = [(key[0], key[1], key[2], json.dumps(obj.get("expr", []), sort_keys=True))
                    for key, obj in nftables_rules(listing)]
        table = nftr.parse_ruleset(listing, roles, include_foreign=True)
        rules = table.rules
        carried = set(_nft_identity(text) for text in table.carried)
        followed = set(_nft_identity(text) for text in table.followed)
        listed = set(_nft_identity(item["rule"]) for item in table.unsupported)
        reasons = [item["reason"] for item in table.unsupported]

        def other(rule):
            return ipt.rule_args(rule, roles)
    fates = _fates(universe, carried, followed, listed)
    counts = collections.Counter(fates.values())
    # Listed reasons per rule of the file (a rule reached twice is listed once).
    reason_of = {}
    if implementation == "iptables":
        for family in FAMILIES:
            for item in ipt.parse_save(parts.get(family, ""), family, roles, include_builtin=True).unsupported:
                reason_of.setdefault((family, item["rule"]), item["reason"])
    else:
        for item in table.unsupported:
            reason_of.setdefault(_nft_identity(item["rule"]), item["reason"])
    grouped = collections.Counter(_reason_group(reason_of[identity]) for identity, fate in fates.items()
                                  if fate == "listed")
    renders, refused = _renders(other, rules)
    return {"file": name, "writer": writer, "implementation": implementation, "rules": len(fates),
            "carried": counts["carried"], "listed": counts["listed"], "followed": counts["followed"],
            "lost": counts["lost"], "lost_rules": [identity for identity, fate in fates.items() if fate == "lost"],
            "model_rules": len(rules), "renders_on_other": renders, "refused_on_other": dict(refused),
            "reasons": dict(grouped), "all_reasons": reasons}


def measure(corpus=CORPUS):
    """Figures of every corpus file, and the totals per implementation."""
    files = sorted(os.path.join(corpus, name) for name in os.listdir(corpus)
                   if name.endswith(".iptables") or name.endswith(".nft"))
    per_file = [measure_file(path) for path in files]
    totals = {}
    for figures in per_file:
        total = totals.setdefault(figures["implementation"], {
            "files": 0, "rules": 0, "carried": 0, "listed": 0, "followed": 0, "lost": 0, "model_rules": 0,
            "renders_on_other": 0, "refused_on_other": collections.Counter(), "reasons": collections.Counter()})
        total["files"] += 1
        for key in ("rules", "carried", "listed", "followed", "lost", "model_rules", "renders_on_other"):
            total[key] += figures[key]
        total["refused_on_other"].update(figures["refused_on_other"])
        total["reasons"].update(figures["reasons"])
    for total in totals.values():
        total["refused_on_other"] = dict(total["refused_on_other"])
        total["reasons"] = dict(total["reasons"])
    return {"files": per_file, "totals": totals}


def _share(part, whole):
    return "%d (%.0f%%)" % (part, 100.0 * part / whole) if whole else "0"


def report(figures):
    lines = []
    other = {"iptables": "nftables", "nftables": "iptables"}
    for implementation, total in sorted(figures["totals"].items()):
        decisions = total["rules"] - total["followed"]
        lines.append("%s: %d files, %d rules (%d jumps followed, %d NAT rules)" % (
            implementation, total["files"], total["rules"], total["followed"], decisions))
        lines.append("  carried %s, listed %s, lost %s" % (
            _share(total["carried"], decisions), _share(total["listed"], decisions), _share(total["lost"], decisions)))
        lines.append("  model rules %d, of which %s render for %s" % (
            total["model_rules"], _share(total["renders_on_other"], total["model_rules"]), other[implementation]))
        for reason, count in sorted(total["refused_on_other"].items(), key=lambda item: (-item[1], item[0])):
            lines.append("    refused there %3d  %s" % (count, reason))
        lines.append("  listed, by reason:")
        for reason, count in sorted(total["reasons"].items(), key=lambda item: (-item[1], item[0])):
            lines.append("    %3d  %s" % (count, reason))
        lines.append("")
    lines.append("%-26s %-9s %5s %7s %6s %8s %4s" % ("file", "impl", "rules", "carried", "listed", "followed", "lost"))
    for item in figures["files"]:
        lines.append("%-26s %-9s %5d %7d %6d %8d %4d" % (item["file"], item["implementation"], item["rules"],
                                                         item["carried"], item["listed"], item["followed"], item["lost"]))
    return "\n".join(lines)


def regenerate(corpus=CORPUS):
    """Rewrite each .nft file's .json listing, as nft lists it once loaded (needs root and nft)."""
    ns = "r-cov-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for name in sorted(os.listdir(corpus)):
            if not name.endswith(".nft"):
                continue
            path = os.path.join(corpus, name)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=True)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", path], check=True)
            out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], check=True,
                                 capture_output=True, text=True).stdout
            with open(path[:-len(".nft")] + ".json", "w") as handle:
                json.dump(json.loads(out), handle, indent=1, sort_keys=True)
                handle.write("\n")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the .json listings of the .nft files")
    parser.add_argument("--corpus", default=CORPUS)
    args = parser.parse_args(argv)
    if args.regenerate:
        regenerate(args.corpus)
    figures = measure(args.corpus)
    print(json.dumps(figures, indent=1, sort_keys=True) if args.json else report(figures))
    return 1 if any(total["lost"] for total in figures["totals"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
