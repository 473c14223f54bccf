# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The firewall resource: want/have logic of the firewall module, whatever the implementation.

States as the network resource modules speak them: gathered, parsed, rendered (no host touched
for the last two), merged (the document's chains, rules and named objects added to the host's),
overridden (exactly the document: rules and learned state), deleted (the document's rules and the
objects no rule uses any more, or everything of ours).

What the host must agree on is the configuration and the members of its sets and recent lists
(`settled`). Lifetimes, counters and quota use are carried whenever the task writes, but they
change with every packet and second, so a difference in them alone is no reason to write: a
second identical run reports nothing changed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

from ansible_collections.nfstate.migration.plugins.module_utils.firewall_model import (
    NS,
    ROOT,
    Firewall,
    ModelError,
    Unsupported,
    canonical,
    from_document,
    recent_as_sets,
    to_document,
    without_state,
)
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import date_and_time, read_document
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import ProviderError
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import ResourceError, diff_text
from ansible_collections.nfstate.migration.plugins.module_utils.resources.nat_rules import check_interfaces

STATES = ("gathered", "parsed", "rendered", "merged", "overridden", "deleted")
APPLYING = ("merged", "overridden")
EMPTY = Firewall()
TAKEN_AT = NS + "taken-at"


def document_of(firewall, taken_at=None):
    """The firewall as its document; an empty firewall is an empty document. `taken_at`
    (date-and-time text) says when its state was read."""
    if firewall is None or is_empty(firewall):
        return {}
    doc = to_document(firewall)
    if taken_at:
        doc[ROOT][TAKEN_AT] = taken_at
    return doc


def age_of(taken_at, now=None):
    """Seconds since `taken_at` (0 when it is not date-and-time text with a zone)."""
    try:
        moment = datetime.datetime.fromisoformat(taken_at.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return 0.0
    if moment.tzinfo is None:
        return 0.0
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return max(0.0, (now - moment).total_seconds())


def aged(firewall, seconds):
    """The firewall's state `seconds` later: lifetimes shorter (an element whose lifetime ran
    out is gone), recent hits older."""
    if seconds <= 0:
        return firewall
    sets = []
    for fwset in firewall.sets:
        elements = []
        for element in fwset.elements:
            if element.remaining is None:
                elements.append(element)
            elif element.remaining - seconds > 0:
                elements.append(element._replace(remaining=round(element.remaining - seconds, 3)))
        sets.append(fwset._replace(elements=tuple(elements)))
    recents = tuple(r._replace(entries=tuple(e._replace(ages=tuple(round(a + seconds, 3) for a in e.ages))
                                             for e in r.entries)) for r in firewall.recent_lists)
    return firewall._replace(sets=tuple(sets), recent_lists=recents)


def wanted_firewall(config, src):
    """The firewall of `config` (a document, its acls alone allowed) or of the document at `src`;
    None if neither. A state document that also holds the NAT (ietf-nat:nat) gives its firewall."""
    if config is None and src is None:
        return None
    try:
        doc = config if config is not None else read_document(src)
    except (IOError, OSError, ValueError) as exc:
        raise ResourceError("cannot read the document %s: %s" % (src, exc))
    if not isinstance(doc, dict):
        raise ResourceError("config must be a firewall document (%s)" % ROOT)
    if ROOT not in doc and "acls" in doc:
        doc = {ROOT: doc["acls"]}
    if ROOT not in doc:
        return EMPTY
    body = dict(doc[ROOT]) if isinstance(doc[ROOT], dict) else doc[ROOT]
    taken_at = body.pop(TAKEN_AT, None) if isinstance(body, dict) else None
    try:
        firewall = from_document({ROOT: body})
    except ModelError as exc:
        raise ResourceError("config is not a firewall document: %s" % exc, path=exc.path)
    # Lifetimes count from the moment the state was read, wherever and whenever it is applied.
    return aged(firewall, age_of(taken_at)) if taken_at else firewall


def members(firewall):
    """Who is in each set and recent list: the learned state that must agree exactly."""
    return (tuple((s.name, tuple(sorted(e.address for e in s.elements))) for s in firewall.sets),
            tuple((r.name, tuple(sorted(e.address for e in r.entries))) for r in firewall.recent_lists))


def settled(firewall):
    return without_state(firewall), members(firewall)


def _by_name(old, new):
    """Named items of `old` with those of `new` in their place, and the new ones after them."""
    names = set(item.name for item in new)
    return tuple(item for item in old if item.name not in names) + tuple(new)


def _merge_sets(old, new):
    by_name = dict((s.name, s) for s in old)
    merged = []
    for fwset in new:
        held = by_name.get(fwset.name)
        if held is not None:
            addresses = set(e.address for e in fwset.elements)
            fwset = fwset._replace(elements=tuple(e for e in held.elements if e.address not in addresses) + fwset.elements)
        merged.append(fwset)
    return _by_name(old, merged)


def merge(before, wanted):
    """The host's firewall with the document's added: its chains (their policy), the rules the
    host lacks after the host's own in each chain, its sets (members joined, the document's
    lifetimes win), counters, quotas and recent lists."""
    rules = list(before.rules) + [rule for rule in wanted.rules if rule not in before.rules]
    return canonical(before._replace(
        chains=_by_name(before.chains, wanted.chains), rules=tuple(rules), sets=_merge_sets(before.sets, wanted.sets),
        counters=_by_name(before.counters, wanted.counters), quotas=_by_name(before.quotas, wanted.quotas),
        recent_lists=_by_name(before.recent_lists, wanted.recent_lists),
        not_carried=before.not_carried + tuple(n for n in wanted.not_carried if n not in before.not_carried)))


def remove(before, wanted):
    """The host's firewall without the document's rules, and without those of the document's
    named objects that no remaining rule uses; a chain goes when it has no rule left."""
    rules = tuple(rule for rule in before.rules if rule not in wanted.rules)
    used_sets = set(name for r in rules for name in [r.src_set, r.dst_set] + [u.set for u in r.set_updates] if name)
    used = dict(counters=set(r.counter for r in rules), quotas=set(r.quota for r in rules),
                recent_lists=set(r.recent.name for r in rules if r.recent), sets=used_sets)
    changes = {}
    for field in ("sets", "counters", "quotas", "recent_lists"):
        named = set(item.name for item in getattr(wanted, field))
        changes[field] = tuple(item for item in getattr(before, field) if item.name not in named or item.name in used[field])
    chains_with_rules = set(r.chain for r in rules)
    named_chains = set(c.name for c in wanted.chains)
    changes["chains"] = tuple(c for c in before.chains if c.name not in named_chains or c.name in chains_with_rules)
    return canonical(before._replace(rules=rules, **changes))


def target_firewall(state, before, wanted):
    """What the host must hold after the task (None: nothing of ours at all)."""
    if state == "deleted":
        return None if wanted is None else remove(before, wanted)
    if state == "merged":
        return merge(before, wanted)
    return wanted


def _unsupported(listing, result, warn):
    result["unsupported"] = listing
    if listing:
        warn("skipped what the firewall model cannot express: %s"
             % "; ".join("%s (%s)" % (item["item"], item["reason"]) for item in listing))


def for_implementation(provider, firewall, params):
    """Recent lists become sets for nftables when the operator allows it (docs/firewall.md)."""
    if provider.name == "nftables" and firewall.recent_lists and params.get("recent_as_sets"):
        try:
            return recent_as_sets(firewall)
        except Unsupported as exc:
            raise ResourceError("recent lists cannot become nftables sets: %s" % exc)
    return firewall


def is_empty(firewall):
    return not (firewall.chains or firewall.sets or firewall.counters or firewall.quotas or firewall.recent_lists)


def run(provider, params, check_mode=False, diff=False, warn=None):
    """Carry out one firewall task; the result dict, or ResourceError."""
    warn = warn or (lambda message: None)
    state = params["state"]
    interfaces = check_interfaces(params.get("interfaces"))
    skip = bool(params.get("skip_unsupported"))
    wanted = wanted_firewall(params.get("config"), params.get("src"))
    if state in APPLYING + ("rendered",) and wanted is None:
        raise ResourceError("state %s needs config or src" % state)
    result = dict(changed=False, unsupported=[])
    try:
        if state == "parsed":
            parsed = provider.parse_firewall(params["running_config"], interfaces, skip)
            _unsupported(parsed.unsupported, result, warn)
            result["parsed"] = document_of(parsed.firewall)
            return result
        if state == "rendered":
            wanted = for_implementation(provider, wanted, params)
            result["rendered"] = provider.firewall_command_lines(provider.render_firewall(wanted, interfaces))
            return result

        # Removing everything of ours removes what the model cannot express too.
        before = provider.read_firewall(interfaces, skip or (state == "deleted" and wanted is None))
        read_at = date_and_time()
        _unsupported(before.unsupported, result, warn)
        if state == "gathered":
            result["gathered"] = document_of(before.firewall, read_at)
            result.update(provider.settings())
            return result
        target = target_firewall(state, before.firewall, wanted)
        if target is not None:
            target = for_implementation(provider, target, params)
        steps = None
        if target is None or is_empty(target):
            if before.present:
                steps = provider.remove_firewall(before, check=check_mode)
            target = EMPTY
        elif settled(before.firewall) != settled(target) or before.unsupported or not before.present:
            steps = provider.write_firewall(target, interfaces, before, check=check_mode)
    except ProviderError as exc:
        raise ResourceError(str(exc), **result)
    except (Unsupported, ModelError) as exc:
        raise ResourceError(str(exc), **result)
    except ValueError as exc:  # a template's RenderError: something this host cannot be given
        raise ResourceError(str(exc), **result)

    after = target if check_mode or not steps else provider.read_firewall(interfaces, True).firewall
    commands = provider.firewall_command_lines(steps)
    result.update(before=document_of(before.firewall), after=document_of(after), commands=commands)
    if not check_mode and steps and without_state(after) != without_state(target):
        raise ResourceError("the host does not hold the firewall that was applied", **result)
    # Steps are made only when the host differs from what it must hold.
    result["changed"] = bool(steps)
    if diff:
        result["diff"] = diff_text("firewall", result["before"], result["after"])
    result.update(provider.settings())
    return result
