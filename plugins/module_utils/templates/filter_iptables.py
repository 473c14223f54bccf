# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stateful firewall in iptables (legacy or nft backend), ipset and xt_recent, and the model.

Our rules live in filter chains of our own (NFSTATE-FORWARD, NFSTATE-INPUT, NFSTATE-OUTPUT), each
entered from its built-in chain by one unconditional jump; a chain whose policy is drop ends with
a rule `-m comment --comment nfstate-policy -j DROP`, so the built-in chains' own policies stay the
host's. Named sets are ipsets called `nfs-<name>` (hash:ip, with timeout and counters when the
set has them). Where iptables has no named object, the rule is the object:
  - a named counter is the packet and byte counters of the one rule that names it in its comment
    `nfstate-counter NAME` (a rule for both families: the sum of its IPv4 and IPv6 twins);
  - a quota is the rule `-m quota` (its counters are the bytes used, its comment
    `nfstate-quota NAME LIMIT` the limit): the kernel does not show a quota's remaining bytes, so
    a quota is written as `--quota LIMIT-USED` with the rule's byte counter set to USED.
So payloads carry counters: load them with `iptables-restore --noflush --counters`.
An nftables rule that adds to a set and then decides (`add @s { ip saddr } drop`) is two
iptables rules with the same matches, `-j SET` then the verdict; they are read back as one.
Recent lists are read from and written to /proc/net/xt_recent/NAME: a write records a hit *now*,
so a restored address keeps its number of hits but its hit times start again at the write.

Everything here is pure text in, data out; the caller runs the programs and reads /proc.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re
import shlex
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    CHAINS, CT_STATES, DEFAULT_SET_SIZES, ICMP_OF_FAMILY, NOT_CARRIED_HASHLIMIT, NOT_CARRIED_LIMIT, PORT_PROTOCOLS, Chain, Counter,
    FAMILIES, Firewall, FilterRule, FirewallSet, Limit, NotCarried, Quota, Recent, RecentEntry, RecentList, SetElement,
    SetUpdate, Unsupported, canonical, firewall_problems, normalize_address, normalize_prefix, refuse_unsupported,
    merge_families, rule_problems, set_size, summary,
)

OWN_CHAINS = {"forward": "NFSTATE-FORWARD", "input": "NFSTATE-INPUT", "output": "NFSTATE-OUTPUT"}
CHAIN_OF_OWN = dict((own, chain) for chain, own in OWN_CHAINS.items())
BUILTIN_CHAINS = {"forward": "FORWARD", "input": "INPUT", "output": "OUTPUT"}
SET_PREFIX = "nfs-"
POLICY_COMMENT = "nfstate-policy"
COUNTER_COMMENT = "nfstate-counter"
QUOTA_COMMENT = "nfstate-quota"
IPSET_FAMILY = {"ipv4": "inet", "ipv6": "inet6"}
FAMILY_OF_IPSET = dict((v, k) for k, v in IPSET_FAMILY.items())
PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "gre": 47, "esp": 50, "ah": 51,
                    "sctp": 132, "udplite": 136, "dccp": 33}
LIMIT_UNITS = {"sec": "second", "second": "second", "s": "second", "min": "minute", "minute": "minute", "m": "minute",
               "hour": "hour", "h": "hour", "day": "day", "d": "day"}
UNIT_OF_PER = {"second": "sec", "minute": "min", "hour": "hour", "day": "day"}
VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject"}
DEFAULT_REJECT = {"ipv4": "icmp-port-unreachable", "ipv6": "icmp6-port-unreachable"}
HZ_CANDIDATES = (100, 250, 300, 1000)

# Programs per (backend, family).
PROGRAMS = {
    ("legacy", "ipv4"): ("iptables-legacy-save", "iptables-legacy-restore"),
    ("legacy", "ipv6"): ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
    ("nft", "ipv4"): ("iptables-nft-save", "iptables-nft-restore"),
    ("nft", "ipv6"): ("ip6tables-nft-save", "ip6tables-nft-restore"),
}

# What the host holds of ours.
#   firewall     Firewall (canonical)
#   unsupported  [{"item": text, "reason": text}]
#   chains       {family: our chain names that exist}
#   jumps        {family: {chain: number of jumps from the built-in chain into ours}}
IptFilter = namedtuple("IptFilter", ["firewall", "unsupported", "chains", "jumps"])


class RenderError(ValueError):
    """The firewall holds something iptables cannot be given; the message names it."""


# ---------------------------------------------------------------------------------------------
# ipset


def parse_ipset_save(text):
    """Our sets (named nfs-*) in `ipset save` output -> ([FirewallSet], unsupported)."""
    sets, order, unsupported = {}, [], []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].startswith(SET_PREFIX):
            continue
        name = words[1][len(SET_PREFIX):]
        if words[0] == "create":
            opts = _options(words[3:])
            family = FAMILY_OF_IPSET.get(opts.get("family", "inet"))
            if words[2] != "hash:ip" or family is None:
                unsupported.append({"item": "ipset %s" % words[1], "reason": "only hash:ip sets of inet or inet6 are modelled"})
                continue
            timeout = int(opts["timeout"]) if "timeout" in opts else None
            size = int(opts.get("maxelem", DEFAULT_SET_SIZES[1]))
            sets[name] = FirewallSet(name, family, timeout or None, "counters" in opts, [], None if size in DEFAULT_SET_SIZES else size)
            order.append(name)
        elif words[0] == "add" and name in sets:
            opts = _options(words[3:])
            remaining = int(opts["timeout"]) if "timeout" in opts else None
            packets = int(opts["packets"]) if "packets" in opts else None
            octets = int(opts["bytes"]) if "bytes" in opts else None
            address = normalize_address(words[2].split("/")[0] if words[2].endswith(("/32", "/128")) else words[2])
            # ipset's timeout 0 means "never expires"
            sets[name].elements.append(SetElement(address, None, float(remaining) if remaining else None, packets, octets))
    return [sets[n]._replace(elements=tuple(sets[n].elements)) for n in order], unsupported


def _options(words):
    """ipset options: flags stand alone, the others take one value."""
    out, i = {}, 0
    flags = ("counters", "comment", "skbinfo", "forceadd", "nomatch")
    while i < len(words):
        if words[i] in flags:
            out[words[i]] = True
            i += 1
        else:
            out[words[i]] = words[i + 1] if i + 1 < len(words) else ""
            i += 2
    return out


def render_ipset(firewall):
    """`ipset restore` input giving our sets exactly these elements: each set is created when
    missing, then flushed and filled.

    A set of ours that exists with other options (family, timeout, counters) makes ipset fail:
    destroy it first (ipset_destroy_lines), once no rule uses it (remove_payload).
    """
    lines = []
    for fwset in firewall.sets:
        name = SET_PREFIX + fwset.name
        opts = ["family", IPSET_FAMILY[fwset.family]]
        if fwset.timeout is not None or any(e.remaining is not None for e in fwset.elements):
            opts += ["timeout", str(fwset.timeout or 0)]
        if fwset.counters:
            opts.append("counters")
        if set_size(fwset) is not None:
            opts += ["maxelem", str(set_size(fwset))]
        lines.append("create %s hash:ip %s -exist" % (name, " ".join(opts)))
        lines.append("flush %s" % name)
        lines.extend(line for line in (_add_line(fwset, e) for e in fwset.elements) if line)
    return "\n".join(lines) + ("\n" if lines else "")


def _add_line(fwset, element):
    """The `add` line of one element ("" for one whose lifetime ran out)."""
    words = ["add", SET_PREFIX + fwset.name, element.address]
    if element.remaining is not None:
        if element.remaining < 1:
            return ""      # ipset counts whole seconds, and 0 would mean "never expires"
        words += ["timeout", str(int(round(element.remaining)))]
    elif fwset.timeout is not None:
        words += ["timeout", "0"]
    if fwset.counters and element.packets is not None:
        words += ["packets", str(element.packets), "bytes", str(element.bytes)]
    return " ".join(words)


def render_ipset_members(firewall, elements):
    """`ipset -exist restore` input changing only members: `elements` is {set name: SetChange}
    (firewall_learned). An element added again gets its new lifetime (-exist updates it); a
    removed one that is gone already is no error (-exist)."""
    lines = []
    for fwset in firewall.sets:
        change = elements.get(fwset.name)
        if change is None:
            continue
        lines.extend("del %s%s %s" % (SET_PREFIX, fwset.name, address) for address in change.removed)
        lines.extend(line for line in (_add_line(fwset, e) for e in change.added + change.refreshed) if line)
    return "\n".join(lines) + ("\n" if lines else "")


def ipset_destroy_lines(set_names):
    """`ipset restore` input destroying the given ipsets of ours (full names)."""
    return "".join("destroy %s\n" % name for name in set_names if name.startswith(SET_PREFIX))


# ---------------------------------------------------------------------------------------------
# xt_recent


def parse_jiffies(timer_list):
    """The kernel's current jiffies from /proc/timer_list."""
    found = re.search(r"^jiffies: (\d+)", timer_list, re.M)
    if not found:
        raise ValueError("no jiffies in /proc/timer_list")
    return int(found.group(1))


def hz_from_samples(first, second):
    """The kernel's HZ from two (jiffies, monotonic seconds) samples, as the nearest usual value."""
    rate = (second[0] - first[0]) / float(second[1] - first[1])
    return min(HZ_CANDIDATES, key=lambda hz: abs(hz - rate))


def parse_recent(name, text, now_jiffies, hz):
    """One /proc/net/xt_recent/NAME file -> RecentList, hit ages in seconds newest first."""
    entries = []
    for line in text.splitlines():
        found = re.match(r"src=(\S+) ttl: (\d+) last_seen: (\d+) oldest_pkt: (\d+)(.*)$", line.strip())
        if not found:
            continue
        stamps = [int(s) for s in re.findall(r"\d+", found.group(5))]
        ages = sorted(max(0.0, (now_jiffies - s) / float(hz)) for s in stamps)
        entries.append(RecentEntry(normalize_address(found.group(1)), int(found.group(2)), tuple(ages)))
    return RecentList(name, tuple(entries))


def render_recent(firewall):
    """{list name: [lines]}: write each line with its own write() to /proc/net/xt_recent/NAME
    (after the rules that create the lists are loaded). One line per hit: the hit count is kept,
    the hit times become the time of the write."""
    out = {}
    for recent in firewall.recent_lists:
        lines = ["/"]       # clear the list first
        for entry in recent.entries:
            lines.extend(["+%s" % entry.address] * max(1, len(entry.ages)))
        out[recent.name] = lines
    return out


# ---------------------------------------------------------------------------------------------
# Parsing rules


def split_families(text):
    """{family: text} of `iptables-save` and `ip6tables-save` output concatenated, by header."""
    out = {}
    family = None
    for line in text.splitlines():
        found = re.match(r"#\s*Generated by (ip6?)tables", line.strip())
        if found:
            family = "ipv6" if found.group(1) == "ip6" else "ipv4"
        if family is not None:
            out[family] = out.get(family, "") + line + "\n"
    return out


def _filter_lines(text):
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            inside = line == "*filter"
        elif line == "COMMIT":
            inside = False
        elif inside and line and not line.startswith("#"):
            yield line


def parse_save(saves, ipset_save, recent_files, interfaces, clock=None, skip_unsupported=False):
    """Our firewall from the host's text -> IptFilter.

    saves         {family: `iptables-save -c` / `ip6tables-save -c` output (the filter table)}
    ipset_save    `ipset save` output
    recent_files  {list name: content of /proc/net/xt_recent/NAME}
    clock         (now_jiffies, hz) to turn recent stamps into ages; needed when recent_files are given
    A rule or object the model cannot express raises Unsupported naming it; with
    skip_unsupported it is left out and listed in `unsupported` instead.
    """
    roles = dict((dev, role) for role, dev in (interfaces or {}).items())
    unsupported = []
    sets, problems = parse_ipset_save(ipset_save or "")
    unsupported.extend(problems)
    known_sets = dict((s.name, s) for s in sets)
    per_family, chains, jumps, policies, counters, quotas = {}, {}, {}, {}, {}, {}
    not_carried = []
    for family in FAMILIES:
        found = _parse_family((saves or {}).get(family, ""), family, roles, known_sets, unsupported)
        per_family[family], chains[family], jumps[family], family_policies, family_counters, family_quotas, family_nc = found
        for chain, policy in family_policies.items():
            if policies.setdefault(chain, policy) != policy:
                unsupported.append({"item": "chain %s" % OWN_CHAINS[chain], "reason": "policies differ between IPv4 and IPv6"})
        for name, (packets, octets) in family_counters.items():
            old = counters.get(name, (0, 0))
            counters[name] = (old[0] + packets, old[1] + octets)
        for name, quota in family_quotas.items():
            if name in quotas:
                unsupported.append({"item": "quota %s" % name, "reason": "used by more than one rule"})
            quotas[name] = quota
        not_carried.extend(family_nc)
    rules = []
    for chain in CHAINS:
        rules.extend(merge_families([r for r in per_family["ipv4"] if r.chain == chain],
                                    [r for r in per_family["ipv6"] if r.chain == chain]))
    recent_names = sorted(set(r.recent.name for r in rules if r.recent is not None) | set(recent_files or {}))
    recents = []
    for name in recent_names:
        text = (recent_files or {}).get(name, "")
        if text and clock is None:
            raise ValueError("recent lists need the clock (now_jiffies, hz)")
        recents.append(parse_recent(name, text, clock[0], clock[1]) if text else RecentList(name))
    chain_list = tuple(Chain(c, policies.get(c, "accept")) for c in CHAINS
                       if any(OWN_CHAINS[c] in chains[f] for f in FAMILIES))
    firewall = canonical(Firewall(
        chain_list, tuple(rules), tuple(sets), tuple(Counter(n, p, b) for n, (p, b) in sorted(counters.items())),
        tuple(quotas[n] for n in sorted(quotas)), tuple(recents), tuple(not_carried)))
    for problem in firewall_problems(firewall):
        unsupported.append({"item": "filter table", "reason": problem})
    return IptFilter(firewall, refuse_unsupported(unsupported, skip_unsupported), chains, jumps)


def _parse_family(text, family, roles, known_sets, unsupported):
    chains, jumps, bodies = set(), dict((c, 0) for c in CHAINS), dict((c, []) for c in CHAINS)
    for line in _filter_lines(text):
        if line.startswith(":"):
            chains.add(line[1:].split()[0])
            continue
        packets, octets = None, None
        found = re.match(r"\[(\d+):(\d+)\]\s+(.*)$", line)
        if found:
            packets, octets, line = int(found.group(1)), int(found.group(2)), found.group(3)
        args = shlex.split(line)
        if len(args) < 2 or args[0] != "-A":
            continue
        chain = args[1]
        if chain in BUILTIN_CHAINS.values() and args[2:] in (["-j", c] for c in OWN_CHAINS.values()):
            own = CHAIN_OF_OWN[args[3]]
            if BUILTIN_CHAINS[own] == chain:
                jumps[own] += 1
            continue
        if chain in CHAIN_OF_OWN:
            bodies[CHAIN_OF_OWN[chain]].append((args[2:], line, packets, octets))
    rules, policies, counters, quotas, not_carried = [], {}, {}, {}, []
    for chain in CHAINS:
        if OWN_CHAINS[chain] not in chains:
            continue
        body = bodies[chain]
        if body and _comment(body[-1][0]) == POLICY_COMMENT and body[-1][0][-2:] == ["-j", "DROP"]:
            policies[chain] = "drop"
            body = body[:-1]
        else:
            policies[chain] = "accept"
        pending = None
        for args, line, packets, octets in body:
            try:
                rule, comment = parse_rule_args(args, chain, family, roles)
                for name in [rule.src_set, rule.dst_set] + [u.set for u in rule.set_updates]:
                    if name is not None and (name not in known_sets or known_sets[name].family != family):
                        raise Unsupported("rule", "ipset %s%s is not one of our %s sets" % (SET_PREFIX, name, family))
                if comment and comment.startswith(QUOTA_COMMENT + " "):
                    name, limit = _quota_comment(comment)
                    rule = rule._replace(quota=name)
                    quotas[name] = Quota(name, limit, min(octets or 0, limit))
                elif rule.quota is not None:
                    # A quota written by hand: its limit is what it was loaded with, its use the counter since.
                    quotas[rule.quota] = Quota(rule.quota, _hand_quota(args), octets or 0)
                if comment and comment.startswith(COUNTER_COMMENT + " "):
                    name = comment[len(COUNTER_COMMENT) + 1:]
                    rule = rule._replace(counter=name)
                    counters[name] = (packets or 0, octets or 0)
                problems = rule_problems(rule)
                if problems:
                    raise Unsupported("rule", "; ".join(problems))
            except Unsupported as exc:
                unsupported.append({"item": "%s: %s" % (family, line), "reason": exc.reason})
                continue
            if pending is not None and _same_matches(pending, rule):
                rule = rule._replace(set_updates=pending.set_updates + rule.set_updates)
                rules.pop()
            rules.append(rule)
            pending = rule if rule.action == "continue" and rule.set_updates and _splittable(rule) else None
            if rule.limit is not None:
                not_carried.append(NotCarried("%s %s rule %d: -m limit --limit %d/%s --limit-burst %d" % (
                    family, OWN_CHAINS[chain], sum(1 for r in rules if r.chain == chain), rule.limit.rate,
                    UNIT_OF_PER[rule.limit.per], rule.limit.burst), NOT_CARRIED_LIMIT))
    return rules, chains, jumps, policies, counters, quotas, not_carried


def _quota_comment(comment):
    words = comment.split()
    if len(words) != 3 or not words[2].isdigit():
        raise Unsupported("rule", "quota comment %r is not `%s NAME LIMIT`" % (comment, QUOTA_COMMENT))
    return words[1], int(words[2])


def _hand_quota(args):
    return int(args[args.index("--quota") + 1])


def _comment(args):
    if "--comment" in args:
        return args[args.index("--comment") + 1]
    return None


def _same_matches(first, second):
    keep = ("set_updates", "action", "counter")
    return first._replace(**dict((k, getattr(FilterRule(), k)) for k in keep)) == \
        second._replace(**dict((k, getattr(FilterRule(), k)) for k in keep))


def _splittable(rule):
    """A rule whose matches can be evaluated twice without changing anything."""
    return rule.limit is None and rule.quota is None and rule.counter is None and (
        rule.recent is None or rule.recent.mode == "check")


def _put(fields, key, value):
    # Options given twice (two -m recent, two --match-set src) would silently lose one.
    if key in fields and key not in ("limit", "family", "chain"):
        raise Unsupported("rule", "%s is given twice" % key.replace("_", " "))
    fields[key] = value


def _take(args, i, what):
    if i + 1 >= len(args):
        raise Unsupported("rule", "%s without a value" % what)
    return args[i + 1]


def _ports(text):
    first, dummy, last = text.partition(":")
    return (int(first), int(last or first))


def parse_rule_args(args, chain, family, roles):
    """One rule's arguments (after `-A CHAIN`) -> (FilterRule, our comment or None)."""
    fields = {"chain": chain, "family": family}
    comment = None
    updates = []
    action = "continue"
    i = 0
    negate = False
    while i < len(args):
        arg = args[i]
        if arg == "!":
            negate = True
            i += 1
            continue
        if negate:
            raise Unsupported("rule", "negated %s is not modelled" % arg)
        if arg in ("-s", "-d"):
            _put(fields, ("src" if arg == "-s" else "dst"), _prefix(_take(args, i, arg), family))
            i += 2
        elif arg in ("-i", "-o"):
            dev = _take(args, i, arg)
            if dev not in roles:
                raise Unsupported("rule", "interface %r has no role" % dev)
            _put(fields, ("in_role" if arg == "-i" else "out_role"), roles[dev])
            i += 2
        elif arg == "-p":
            name = _take(args, i, arg)
            number = int(name) if name.isdigit() else PROTOCOL_NUMBERS.get(name)
            if number is None:
                raise Unsupported("rule", "protocol %r" % name)
            _put(fields, "proto", number)
            i += 2
        elif arg == "-m":
            module = _take(args, i, arg)
            if module == "hashlimit":
                raise Unsupported("rule", "hashlimit is not modelled: " + NOT_CARRIED_HASHLIMIT)
            if module not in ("tcp", "udp", "icmp", "icmp6", "conntrack", "state", "set", "limit", "quota", "comment", "recent"):
                raise Unsupported("rule", "match -m %s is not modelled" % module)
            i += 2
        elif arg in ("--sport", "--source-port", "--dport", "--destination-port"):
            _put(fields, ("sport" if arg in ("--sport", "--source-port") else "dport"), _ports(_take(args, i, arg)))
            i += 2
        elif arg in ("--icmp-type", "--icmpv6-type"):
            kind, dummy, code = _take(args, i, arg).partition("/")
            if not kind.isdigit() or (code and not code.isdigit()):
                raise Unsupported("rule", "icmp type %r (numbers are modelled)" % kind)
            _put(fields, "icmp_type", int(kind))
            if code:
                _put(fields, "icmp_code", int(code))
            i += 2
        elif arg in ("--ctstate", "--state"):
            values = [v.lower() for v in _take(args, i, arg).split(",")]
            if any(v not in CT_STATES for v in values):
                raise Unsupported("rule", "connection state %s" % ",".join(values))
            _put(fields, "ct_states", tuple(s for s in CT_STATES if s in values))
            i += 2
        elif arg == "--match-set":
            name, side = _take(args, i, arg), args[i + 2] if i + 2 < len(args) else ""
            if not name.startswith(SET_PREFIX) or side not in ("src", "dst"):
                raise Unsupported("rule", "set match %s %s (our sets, one address side)" % (name, side))
            _put(fields, ("src_set" if side == "src" else "dst_set"), name[len(SET_PREFIX):])
            i += 3
        elif arg == "--limit":
            rate, dummy, unit = _take(args, i, arg).partition("/")
            if unit not in LIMIT_UNITS:
                raise Unsupported("rule", "limit %s" % args[i + 1])
            _put(fields, "limit", Limit(int(rate), LIMIT_UNITS[unit], fields.get("limit", Limit(1)).burst))
            i += 2
        elif arg == "--limit-burst":
            _put(fields, "limit", fields.get("limit", Limit(1))._replace(burst=int(_take(args, i, arg))))
            i += 2
        elif arg == "--quota":
            _put(fields, "quota", "rule-quota")     # named from its comment, or after its chain and family
            i += 2
        elif arg == "--comment":
            text = _take(args, i, arg)
            if text.startswith((COUNTER_COMMENT + " ", QUOTA_COMMENT + " ", POLICY_COMMENT)):
                comment = text
            i += 2
        elif arg in ("--set", "--rcheck", "--update", "--remove"):
            _put(fields, "recent_mode", {"--set": "set", "--rcheck": "check", "--update": "update", "--remove": "remove"}[arg])
            i += 1
        elif arg in ("--seconds", "--hitcount", "--name"):
            _put(fields, ("recent_" + arg[2:]), _take(args, i, arg))
            i += 2
        elif arg in ("--rsource", "--rdest"):
            _put(fields, "recent_side", "source" if arg == "--rsource" else "destination")
            i += 1
        elif arg == "--mask":
            if _take(args, i, arg) not in ("255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
                raise Unsupported("rule", "recent with a mask is not modelled")
            i += 2
        elif arg == "-j":
            target = _take(args, i, arg)
            if target in VERDICTS:
                action = VERDICTS[target]
                rest = args[i + 2:]
                if target == "REJECT" and rest not in ([], ["--reject-with", DEFAULT_REJECT[family]]):
                    raise Unsupported("rule", "REJECT %s (only the default reject is modelled)" % " ".join(rest))
                if target != "REJECT" and rest:
                    raise Unsupported("rule", "arguments after -j %s" % target)
                break
            if target == "SET":
                updates.append(_parse_set_target(args[i + 2:]))
                break
            raise Unsupported("rule", "target %s is not modelled" % target)
        else:
            raise Unsupported("rule", "option %s is not modelled" % arg)
    if "recent_mode" in fields or "recent_name" in fields:
        seconds, hitcount = fields.pop("recent_seconds", None), fields.pop("recent_hitcount", None)
        fields["recent"] = Recent(fields.pop("recent_name", "DEFAULT"), fields.pop("recent_mode", "check"),
                                  fields.pop("recent_side", "source"), int(seconds) if seconds else None,
                                  int(hitcount) if hitcount else None)
    if fields.get("proto") in (1, 58) and fields.get("proto") != ICMP_OF_FAMILY[family]:
        raise Unsupported("rule", "an ICMP protocol of the other family")
    if comment and comment.startswith(QUOTA_COMMENT + " "):
        fields["quota"] = comment.split()[1] if len(comment.split()) > 1 else None
    elif fields.get("quota") == "rule-quota":
        fields["quota"] = "%s-%s" % (chain, family)
    fields["set_updates"] = tuple(updates)
    fields["action"] = action
    return FilterRule(**fields), comment


def _parse_set_target(rest):
    if len(rest) < 2 or rest[0] != "--add-set" or not rest[1].startswith(SET_PREFIX):
        raise Unsupported("rule", "SET %s (adding to our sets is modelled)" % " ".join(rest))
    side = rest[2] if len(rest) > 2 else ""
    if side not in ("src", "dst"):
        raise Unsupported("rule", "SET with the address side %r" % side)
    op, timeout, i = "add", None, 3
    while i < len(rest):
        if rest[i] == "--exist":
            op = "update"
            i += 1
        elif rest[i] == "--timeout" and i + 1 < len(rest):
            timeout = int(rest[i + 1])
            i += 2
        else:
            raise Unsupported("rule", "SET option %s" % rest[i])
    return SetUpdate(rest[1][len(SET_PREFIX):], op, "source" if side == "src" else "destination", timeout)


def _prefix(text, family):
    try:
        return normalize_prefix(text if "/" in text else str(ipaddress.ip_network(text)), family)
    except ValueError as exc:
        raise Unsupported("rule", str(exc))


# ---------------------------------------------------------------------------------------------
# Rendering

def _match_args(rule, family, interfaces, quotas):
    args = []
    if rule.src is not None:
        args += ["-s", rule.src]
    if rule.dst is not None:
        args += ["-d", rule.dst]
    for opt, role in (("-i", rule.in_role), ("-o", rule.out_role)):
        if role is not None:
            dev = (interfaces or {}).get(role)
            if not dev:
                raise RenderError("the %s role has no device in `interfaces`" % role)
            args += [opt, dev]
    if rule.proto is not None:
        name = PROTOCOL_NAMES.get(rule.proto, str(rule.proto))
        args += ["-p", name]
        if rule.proto in PORT_PROTOCOLS and (rule.sport or rule.dport):
            args += ["-m", name]
            for opt, ports in (("--sport", rule.sport), ("--dport", rule.dport)):
                if ports is not None:
                    args += [opt, str(ports[0]) if ports[0] == ports[1] else "%d:%d" % ports]
    if rule.icmp_type is not None:
        code = "" if rule.icmp_code is None else "/%d" % rule.icmp_code
        if family == "ipv4":
            args += ["-m", "icmp", "--icmp-type", "%d%s" % (rule.icmp_type, code)]
        else:
            args += ["-m", "icmp6", "--icmpv6-type", "%d%s" % (rule.icmp_type, code)]
    if rule.ct_states:
        args += ["-m", "conntrack", "--ctstate", ",".join(s.upper() for s in rule.ct_states)]
    for side, name in (("src", rule.src_set), ("dst", rule.dst_set)):
        if name is not None:
            args += ["-m", "set", "--match-set", SET_PREFIX + name, side]
    if rule.recent is not None:
        recent = rule.recent
        args += ["-m", "recent", {"set": "--set", "check": "--rcheck", "update": "--update", "remove": "--remove"}[recent.mode]]
        if recent.seconds is not None:
            args += ["--seconds", str(recent.seconds)]
        if recent.hitcount is not None:
            args += ["--hitcount", str(recent.hitcount)]
        args += ["--name", recent.name, "--rsource" if recent.side == "source" else "--rdest"]
    if rule.limit is not None:
        args += ["-m", "limit", "--limit", "%d/%s" % (rule.limit.rate, UNIT_OF_PER[rule.limit.per]),
                 "--limit-burst", str(rule.limit.burst)]
    if rule.quota is not None:
        # Last of the matches: then the rule's byte counter is exactly what the quota used.
        quota = quotas[rule.quota]
        args += ["-m", "quota", "--quota", str(max(quota.limit - quota.used, 0)),
                 "-m", "comment", "--comment", "%s %s %d" % (QUOTA_COMMENT, quota.name, quota.limit)]
    return args


def rule_lines(rule, family, interfaces, quotas, counters, with_counts=True):
    """`iptables-restore --counters` lines of one rule in one family (a rule that adds to sets and
    then decides is two or more lines, the verdict last). `with_counts`: this line carries the
    named counter's values (only one twin of a rule for both families does)."""
    problems = rule_problems(rule)
    if problems:
        raise RenderError("; ".join(problems))
    if rule.quota is not None:
        if rule.family is None:
            raise RenderError("quota %s in a rule for both families: iptables keeps a quota per rule and per family"
                              % rule.quota)
        if quotas[rule.quota].mode == "over":
            raise RenderError("quota %s counts `over` its limit: iptables does not show what such a quota used"
                              % rule.quota)
        if rule.counter is not None:
            raise RenderError("a rule with both a quota and a named counter: iptables has one counter per rule")
    verdict = [] if rule.action == "continue" else ["-j", rule.action.upper()]
    if rule.set_updates and verdict and not _splittable(rule._replace(counter=None)):
        raise RenderError("a rule that adds to a set and then decides becomes two iptables rules, and its "
                          "rate limit, quota or recent update would run twice")
    matches = _match_args(rule, family, interfaces, quotas)
    targets = []
    for update in rule.set_updates:
        target = ["-j", "SET", "--add-set", SET_PREFIX + update.set, "src" if update.side == "source" else "dst"]
        if update.op == "update":
            target.append("--exist")
        if update.timeout is not None:
            target += ["--timeout", str(update.timeout)]
        targets.append(target)
    if verdict or not targets:
        targets.append(verdict)
    out = []
    for index, target in enumerate(targets):
        last = index == len(targets) - 1
        line_matches = matches
        prefix = ""
        if last and rule.quota is not None:
            prefix = "[0:%d] " % quotas[rule.quota].used
        elif rule.counter is not None:
            if last:
                line_matches = matches + ["-m", "comment", "--comment", "%s %s" % (COUNTER_COMMENT, rule.counter)]
                packets, octets = counters.get(rule.counter, (0, 0)) if with_counts else (0, 0)
                prefix = "[%d:%d] " % (packets, octets)
        out.append(prefix + " ".join(["-A", OWN_CHAINS[rule.chain]] + [_quote(a) for a in line_matches + target]))
    return out


def restore_payload(firewall, family, interfaces, current=None):
    """`iptables-restore --noflush --counters` input making our chains of `family` hold exactly
    the firewall's rules. `current`: IptFilter of the host (None: an empty host) for the jumps."""
    problems = firewall_problems(firewall)
    if problems:
        raise RenderError(summary(problems))
    quotas = dict((q.name, q) for q in firewall.quotas)
    counters = dict((c.name, (c.packets, c.bytes)) for c in firewall.counters)
    _check_single_use(firewall)
    jumps = current.jumps.get(family, {}) if current is not None else {}
    lines = ["*filter"]
    for chain in firewall.chains:
        lines.append(":%s - [0:0]" % OWN_CHAINS[chain.name])
    for chain in firewall.chains:
        count = jumps.get(chain.name, 0)
        if count == 0:
            lines.append("-I %s 1 -j %s" % (BUILTIN_CHAINS[chain.name], OWN_CHAINS[chain.name]))
        lines.extend(["-D %s -j %s" % (BUILTIN_CHAINS[chain.name], OWN_CHAINS[chain.name])] * max(count - 1, 0))
    declared = set(c.name for c in firewall.chains)
    for index, rule in enumerate(firewall.rules, 1):
        if rule.chain not in declared:
            raise RenderError("rule %d: chain %s is not declared" % (index, rule.chain))
        if rule.family not in (None, family):
            continue
        try:
            lines.extend(rule_lines(rule, family, interfaces, quotas, counters,
                                    with_counts=rule.family is not None or family == "ipv4"))
        except RenderError as exc:
            raise RenderError("rule %d (%s): %s" % (index, rule.chain, exc))
    for chain in firewall.chains:
        if chain.policy == "drop":
            lines.append("-A %s -m comment --comment %s -j DROP" % (OWN_CHAINS[chain.name], POLICY_COMMENT))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _check_single_use(firewall):
    for kind, used, names in (("quota", [r.quota for r in firewall.rules if r.quota], [q.name for q in firewall.quotas]),
                              ("counter", [r.counter for r in firewall.rules if r.counter], [c.name for c in firewall.counters])):
        for name in names:
            count = used.count(name)
            if count != 1:
                raise RenderError("%s %s is named by %d rules: in iptables a %s lives in exactly one rule"
                                  % (kind, name, count, kind))


def remove_payload(current, family):
    """`iptables-restore --noflush` input removing our jumps and chains of `family` (None: nothing)."""
    lines = []
    for chain, count in sorted(current.jumps.get(family, {}).items()):
        lines.extend(["-D %s -j %s" % (BUILTIN_CHAINS[chain], OWN_CHAINS[chain])] * count)
    ours = sorted(c for c in current.chains.get(family, ()) if c in CHAIN_OF_OWN)
    lines.extend("-F %s" % c for c in ours)
    lines.extend("-X %s" % c for c in ours)
    if not lines:
        return None
    return "\n".join(["*filter"] + lines + ["COMMIT"]) + "\n"


def _quote(arg):
    if not arg:
        raise RenderError("an empty argument")
    if re.search(r'["\'\\]', arg):
        raise RenderError("cannot pass %r to iptables-restore" % arg)
    return '"%s"' % arg if " " in arg else arg
