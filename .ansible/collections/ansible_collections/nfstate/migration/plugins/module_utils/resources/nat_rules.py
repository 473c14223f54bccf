# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NAT rules resource: want/have logic of the nat_rules module, whatever the implementation.

States as the network resource modules speak them: gathered, parsed, rendered (no host touched
for the last two), merged (add what is missing), replaced (per rule: a document rule replaces the
host's rule with the same match, others stay), overridden (exactly the document's rules), deleted
(the document's rules, or everything of ours). `changed` compares what the host holds before and
after, read back, so that a second run reports nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import read_document
from ansible_collections.nfstate.migration.plugins.module_utils.nat_rules_model import (
    HOOK_OF_KIND,
    ROLES,
    ModelError,
    alg_policy,
    algs_of,
    canonical,
    rules_of,
    to_policy,
)
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import ProviderError, RuleState
from ansible_collections.nfstate.migration.plugins.module_utils.resources.common import ResourceError, diff_text

STATES = ("gathered", "parsed", "rendered", "merged", "replaced", "overridden", "deleted")
APPLYING = ("merged", "replaced", "overridden")
# What a rule translates to; everything else is what it matches, its key for `replaced`.
TRANSLATION_FIELDS = frozenset(("kind", "to_addresses", "to_ports", "flags", "comment"))


def rule_key(rule):
    """What a rule matches (its hook included): two rules with the same key select the same packets."""
    return (HOOK_OF_KIND[rule.kind],) + tuple(
        getattr(rule, name) for name in rule._fields if name not in TRANSLATION_FIELDS)


def check_interfaces(interfaces):
    interfaces = dict(interfaces or {})
    for role, dev in interfaces.items():
        if role not in ROLES:
            raise ResourceError("interfaces: unknown role %r, the roles are %s" % (role, ", ".join(ROLES)))
        if not isinstance(dev, str) or not dev:
            raise ResourceError("interfaces: the %s device must be a non-empty name" % role)
    devices = list(interfaces.values())
    if len(set(devices)) != len(devices):
        raise ResourceError("interfaces: one device cannot have two roles")
    return interfaces


def wanted_rules(config, src):
    """The rules of `config` (a document or a policy list) or of the document at `src`; None if neither."""
    if config is None and src is None:
        return None
    try:
        return rules_of(config if config is not None else read_document(src))
    except ModelError as exc:
        raise ResourceError("config is not a NAT rules document: %s" % exc, path=exc.path)
    except (IOError, OSError, ValueError) as exc:
        raise ResourceError("cannot read the document %s: %s" % (src, exc))


def target_rules(state, before, wanted):
    """The rules the host must hold after the task (None: nothing of ours at all)."""
    if state == "deleted":
        return None if wanted is None else [rule for rule in before if rule not in wanted]
    if state == "merged":
        return canonical(before + [rule for rule in wanted if rule not in before])
    if state == "overridden":
        return list(wanted)
    # replaced: a document rule takes the place of the host's rule with its key; new keys are added.
    by_key = dict((rule_key(rule), rule) for rule in wanted)
    result, used = [], set()
    for rule in before:
        key = rule_key(rule)
        if key in by_key:
            if key not in used:
                result.append(by_key[key])
                used.add(key)
        else:
            result.append(rule)
    result.extend(rule for rule in wanted if rule_key(rule) not in used)
    return canonical(result)


def wanted_algs(config, src):
    """The ALG rules of `config` or of the document at `src` ([] when it has none); None if neither."""
    if config is None and src is None:
        return None
    try:
        rules, refused = algs_of(config if config is not None else read_document(src))
    except ModelError as exc:
        raise ResourceError("config is not a NAT rules document: %s" % exc, path=exc.path)
    except (IOError, OSError, ValueError) as exc:
        raise ResourceError("cannot read the document %s: %s" % (src, exc))
    if refused:
        raise ResourceError("ALGs this host has no helper for: %s" % "; ".join(
            "%s (%s)" % (item["alg"], item["reason"]) for item in refused))
    return rules


def target_algs(state, before, wanted):
    """The ALG rules the host must hold (None: nothing of ours). An ALG is known by its name."""
    if state == "deleted":
        return None if wanted is None else [rule for rule in before if rule not in wanted]
    if state == "overridden":
        return list(wanted)
    names = set(rule.name for rule in wanted)
    kept = [rule for rule in before if rule.name not in names]
    return kept + list(wanted)


def _alg_step(provider, state, wanted, check_mode):
    """(before, after, payload) of our ALG rules for one task; the kernel helper names are the same
    in every implementation, so a document's ALGs load anywhere."""
    before = provider.read_alg_rules()
    if state in ("gathered", "parsed", "rendered"):
        return before, before, None
    target = target_algs(state, before.rules, wanted or [])
    payload = None
    if target is None or (not target and state != "overridden"):
        if target is None and before.present:
            payload = provider.remove_alg_rules(before, check=check_mode)
        after = before._replace(rules=[], installed=False, present=False) if target is None else before
    elif target != before.rules or not before.installed or before.unsupported:
        if target:
            payload = provider.write_alg_rules(target, before, check=check_mode)
        elif before.present:
            payload = provider.remove_alg_rules(before, check=check_mode)
        after = before._replace(rules=list(target), unsupported=[], installed=bool(target), present=bool(target))
        if payload and not check_mode:
            after = provider.read_alg_rules()
    else:
        after = before
    return before, after, payload


def _with_algs(policies, alg_rules):
    """A policy list with the ALG policy after the rules' (when there are ALG rules)."""
    if not alg_rules:
        return policies
    return policies + [alg_policy(alg_rules, max([p["id"] for p in policies] + [0]) + 1)]


def _unsupported(listing, skip, result, warn):
    result["unsupported"] = listing
    if not listing:
        return
    text = "; ".join("%s (%s)" % (item["rule"], item["reason"]) for item in listing)
    if not skip:
        raise ResourceError("rules the NAT model cannot express: %s" % text, **result)
    warn("skipped rules the NAT model cannot express: %s" % text)


def run(provider, params, check_mode=False, diff=False, warn=None):
    """Carry out one nat_rules task; the result dict, or ResourceError."""
    warn = warn or (lambda message: None)
    state = params["state"]
    interfaces = check_interfaces(params.get("interfaces"))
    include_foreign = bool(params.get("include_builtin_chains")) and state in ("gathered", "parsed")
    wanted = wanted_rules(params.get("config"), params.get("src"))
    if state in APPLYING + ("rendered",) and wanted is None:
        raise ResourceError("state %s needs config or src" % state)
    result = dict(changed=False, unsupported=[])
    try:
        if state == "parsed":
            parsed = provider.parse_nat_rules(params["running_config"], interfaces, include_foreign)
            _unsupported(parsed.unsupported, params.get("skip_unsupported"), result, warn)
            result["parsed"] = to_policy(parsed.rules)
            return result
        if state == "rendered":
            result["rendered"] = provider.command_lines(provider.render_nat_rules(wanted, interfaces))
            return result

        before = provider.read_nat_rules(interfaces, include_foreign)
        if state == "gathered":
            algs = provider.read_alg_rules()
            _unsupported(before.unsupported + algs.unsupported, params.get("skip_unsupported"), result, warn)
            result["gathered"] = _with_algs(to_policy(before.rules), algs.rules)
            result.update(provider.settings())
            return result
        target = target_rules(state, before.rules, wanted)
        if target is None:
            result["unsupported"] = before.unsupported  # everything of ours goes, expressible or not
        else:
            _unsupported(before.unsupported, params.get("skip_unsupported"), result, warn)

        payload = None
        if target is None:
            if before.present:
                payload = provider.remove_nat_rules(before, check=check_mode)
            predicted = RuleState([], [], False, False, None)
        else:
            if before.rules != target or before.unsupported or not before.installed:
                payload = provider.write_nat_rules(target, interfaces, before, check=check_mode)
            predicted = RuleState(target, [], True, True, None)
        # The helper rules go with the NAT rules: the target's sessions need them before they exist.
        algs_before, algs_after, alg_payload = _alg_step(
            provider, state, wanted_algs(params.get("config"), params.get("src")), check_mode)
    except ProviderError as exc:
        raise ResourceError(str(exc), **result)
    except ValueError as exc:  # a template's RenderError: a rule or ALG this host cannot be given
        raise ResourceError(str(exc), **result)

    after = predicted if check_mode or not payload else provider.read_nat_rules(interfaces)
    commands = provider.command_lines(payload) + provider.command_lines(alg_payload)
    if not check_mode and payload and after.rules != predicted.rules:
        raise ResourceError("the host does not hold the rules that were applied",
                            before=to_policy(before.rules), after=to_policy(after.rules), commands=commands, **result)
    result["changed"] = (before.rules, before.unsupported, before.installed, before.present) != (
        after.rules, after.unsupported, after.installed, after.present) or (
        algs_before.rules, algs_before.installed, algs_before.present) != (
        algs_after.rules, algs_after.installed, algs_after.present)
    result.update(before=_with_algs(to_policy(before.rules), algs_before.rules),
                  after=_with_algs(to_policy(after.rules), algs_after.rules), commands=commands,
                  alg_rules=len(algs_after.rules))
    if diff:
        result["diff"] = diff_text("NAT rules", result["before"], result["after"])
    result.update(provider.settings())
    return result
