# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NAT state document (RFC 7951 JSON): one ietf-nat instance with its rules and sessions.

    {"ietf-nat:nat": {"instances": {"instance": [{
        "id": 1, "name": "...", "nfstate-nat:snapshot": {...},
        "policy": [...], "mapping-table": {"mapping-entry": [...]}}]}}}

Documents travel as files (100k sessions are tens of megabytes of JSON): gzip when the name ends
in .gz, written atomically and readable by the owner only (they describe who talks to whom).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import datetime
import gzip
import json
import os
import socket
import tempfile
from collections import namedtuple

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model, bounded_json
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import describe, is_translated
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_helper import has_helper_state
from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import refreshed_at_risk
from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    FORWARDED,
    REMOVED,
    GcPaused,
    ModelError,
    entries_to_mappings,
    entry_to_mapping,
    mapping_to_entry,
    session_key,
    unsupported_reason,
)

NAT = "ietf-nat:nat"
SNAPSHOT = "nfstate-nat:snapshot"
SNAPSHOT_KINDS = ("full", "delta")
_SNAPSHOT_LEAVES = {
    "taken_at": "taken-at",
    "source_host": "source-host",
    "implementation": "implementation",
    "kind": "kind",
    "session_count": "session-count",
    "sessions": "session-count",
}


class DocumentError(ModelError):
    """A document that cannot be used; `errors` lists every problem as (path, message).

    A ModelError whose path is the first problem's, so callers that catch ModelError see it."""

    def __init__(self, errors):
        self.errors = list(errors)
        shown = "; ".join("%s: %s" % error for error in self.errors[:5])
        more = len(self.errors) - 5
        ModelError.__init__(self, self.errors[0][0], self.errors[0][1])
        self.args = ("%d error(s) in the NAT document: %s%s"
                     % (len(self.errors), shown, " (and %d more)" % more if more > 0 else ""),)

    def __str__(self):
        return self.args[0]


class DocumentFileError(DocumentError):
    """A file that cannot be read as a state document: too big, too deep, not JSON, ...

    Its message names the file and the problem (bounded_json.DocumentReadError's)."""

    def __init__(self, read_error):
        DocumentError.__init__(self, [("/", read_error.problem)])
        self.path = read_error.path
        self.problem = read_error.problem
        self.args = (str(read_error),)


def date_and_time(moment=None):
    """yang:date-and-time text for a datetime (now, UTC, when None)."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def new_document(name, instance_id=1, **snapshot):
    """An empty document for the NAT instance `name`.

    snapshot: optional metadata, taken_at (datetime or date-and-time text), source_host,
    implementation, kind ('full' or 'delta'), session_count (or sessions). Given any, the
    instance carries an nfstate-nat:snapshot container.
    """
    inst = {"id": instance_id, "name": name}
    if snapshot:
        meta = {}
        for key, value in snapshot.items():
            if key not in _SNAPSHOT_LEAVES:
                raise TypeError("unknown snapshot metadata %r (known: %s)" % (key, ", ".join(sorted(_SNAPSHOT_LEAVES))))
            if value is None:
                continue
            if key == "taken_at" and isinstance(value, datetime.datetime):
                value = date_and_time(value)
            if key == "kind" and value not in SNAPSHOT_KINDS:
                raise ValueError("snapshot kind must be one of %s, not %r" % (", ".join(SNAPSHOT_KINDS), value))
            meta[_SNAPSHOT_LEAVES[key]] = value
        inst[SNAPSHOT] = meta
    inst["mapping-table"] = {"mapping-entry": []}
    return {NAT: {"instances": {"instance": [inst]}}}


def instance_path(inst):
    key = inst.get("id") if isinstance(inst, dict) else None
    return "/%s/instances/instance[id=\"%s\"]" % (NAT, key)


def instance(doc):
    """The document's one NAT instance (a dict, shared: changes go into the document)."""
    try:
        instances = doc[NAT]["instances"]["instance"]
    except (KeyError, TypeError):
        raise DocumentError([("/" + NAT + "/instances/instance", "missing: not a NAT state document")])
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        count = len(instances) if isinstance(instances, list) else "no list of"
        raise DocumentError([("/" + NAT + "/instances/instance", "expected exactly one NAT instance, found %s" % count)])
    return instances[0]


def mapping_entries(doc):
    """The instance's mapping entries (the list itself; empty when the table is absent)."""
    table = instance(doc).get("mapping-table") or {}
    entries = table.get("mapping-entry", []) if isinstance(table, dict) else None
    if not isinstance(entries, list):
        raise DocumentError([(instance_path(instance(doc)) + "/mapping-table/mapping-entry", "expected a list")])
    return entries


def set_mapping_entries(doc, entries):
    """Replace the instance's mapping entries; keeps the snapshot's session-count in step."""
    inst = instance(doc)
    inst["mapping-table"] = {"mapping-entry": list(entries)}
    if isinstance(inst.get(SNAPSHOT), dict):
        inst[SNAPSHOT]["session-count"] = len(inst["mapping-table"]["mapping-entry"])
    return doc


def set_sessions(doc, conntrack_entries):
    """Replace the instance's mapping entries by those of kernel entries (indexed 1..n)."""
    return set_mapping_entries(doc, entries_to_mappings(conntrack_entries))


def entry_path(base, mapping, position):
    """Path of a mapping entry: by its key when it has a usable one, else by position (1-based)."""
    index = mapping.get("index") if isinstance(mapping, dict) else None
    if isinstance(index, int) and not isinstance(index, bool):
        return '%s/mapping-table/mapping-entry[index="%d"]' % (base, index)
    return "%s/mapping-table/mapping-entry[%d]" % (base, position)


# expectations: the instance's ALG expectations (conntrack_expect.Expectation), their masters
# resolved to the original tuples of the document's sessions.
Sessions = namedtuple("Sessions", ["present", "removed", "expectations"], defaults=((),))


def document_sessions(doc):
    """The document's sessions as ConntrackEntry objects, in document order: Sessions(present, removed).

    `removed` holds the entries a delta snapshot flags nfstate-nat:removed. The document holds
    exactly one instance; see instance_sessions for what is checked. Raises DocumentError listing
    every problem with its full path.
    """
    return instance_sessions(instance(doc))


def instance_sessions(inst):
    """Sessions(present, removed) of one NAT instance (a dict), every mapping entry checked.

    Each entry goes through the strict checker (mapping_to_entry); on top of it, an index or a
    session (zone and original tuple) may appear only once, and a session must be translated:
    an entry whose reply is the plain inverse of its original tuple is a connection of the host
    itself (its SSH session with the controller, say), never one of the NAT's, and applying it
    would capture that connection on the target. Raises DocumentError listing every problem.
    """
    base = instance_path(inst)
    table = inst.get("mapping-table") or {}
    mappings = table.get("mapping-entry", []) if isinstance(table, dict) else None
    if not isinstance(mappings, list):
        raise DocumentError([(base + ("/mapping-table/mapping-entry" if isinstance(table, dict) else "/mapping-table"),
                              "expected a list of mapping entries" if isinstance(table, dict) else "expected an object")])
    errors = []
    present, removed = [], []
    seen_index = set()
    seen_session = ({}, {})
    # The entries' indexes, for an ALG data connection's reference to its master.
    indexes = dict((m["index"], True) for m in mappings
                   if isinstance(m, dict) and isinstance(m.get("index"), int) and not isinstance(m.get("index"), bool))
    masters = {}      # mapping-entry index -> original tuple, of the present sessions
    alg_pending = []  # (position in present, mapping, path) of sessions with ALG members
    with GcPaused():
        for position, mapping in enumerate(mappings, 1):
            index = mapping.get("index") if isinstance(mapping, dict) else None
            if isinstance(index, int) and not isinstance(index, bool):
                if index in seen_index:
                    errors.append(("%s/mapping-table/mapping-entry[%d]" % (base, position),
                                   "duplicate index %d" % index))
                    continue
                seen_index.add(index)
            try:
                entry = mapping_to_entry(mapping)
                _check_alg_members(mapping, indexes)
                gone = _removed_flag(mapping)
                null = _null_member(mapping)
                if null is not None:
                    raise ModelError(null, "null is not a value (RFC 7951 writes null only inside [null], an empty leaf)")
            except ModelError as exc:
                path = entry_path(base, mapping, position)
                errors.append((path + ("/" + exc.path if exc.path else ""), _bounded(exc.message)))
                continue
            forwarded = mapping.get(FORWARDED)
            if forwarded not in (None, True, False):
                errors.append((entry_path(base, mapping, position) + "/" + FORWARDED, "expected a boolean"))
                continue
            if not is_translated(entry) and forwarded is not True:
                errors.append((entry_path(base, mapping, position),
                               "untranslated: the session translates nothing, so it is not the NAT's but a "
                               "connection of the host itself, and applying it would capture that connection "
                               "(a firewall's forwarded session says %s: true)" % FORWARDED))
                continue
            if is_translated(entry) and forwarded:
                errors.append((entry_path(base, mapping, position) + "/" + FORWARDED,
                               "a translated session is the NAT's, not an untranslated forwarded one"))
                continue
            key = session_key(entry)
            if key in seen_session[gone]:
                errors.append((entry_path(base, mapping, position),
                               "the same session as mapping-entry index %d (zone and original tuple)"
                               % seen_session[gone][key]))
                continue
            seen_session[gone][key] = index
            if not gone:
                masters[index] = entry.orig
                if _has_alg_members(mapping):
                    alg_pending.append((len(present), mapping, entry_path(base, mapping, position)))
            (removed if gone else present).append(entry)
    for where, mapping, path in alg_pending if not errors else ():
        # Checked already (_check_alg_members); now with the masters' tuples.
        try:
            present[where] = present[where]._replace(alg=alg_model.helper_state(mapping, masters))
        except alg_model.AlgModelError as exc:  # a master flagged removed
            errors.append((path + "/" + exc.path, _bounded(str(exc).split(": ", 1)[-1])))
    expectations = _instance_expectations(inst, masters, base, errors)
    if errors:
        raise DocumentError(errors)
    return Sessions(present, removed, expectations)


def _instance_expectations(inst, masters, base, errors):
    """The kernel Expectations of the instance's ALG expectation list; problems go to errors."""
    container = inst.get(alg_model.EXPECTATIONS)
    if container is None:
        return []
    where = base + "/" + alg_model.EXPECTATIONS
    items = container.get("expectation", []) if isinstance(container, dict) else None
    if not isinstance(items, list):
        errors.append((where, "expected a container with an expectation list"))
        return []
    found = []
    for position, item in enumerate(items, 1):
        index = item.get("index") if isinstance(item, dict) else None
        path = '%s/expectation[index="%s"]' % (where, index) if index is not None else "%s/expectation[%d]" % (where, position)
        try:
            if not isinstance(item, dict):
                raise alg_model.AlgModelError("", "expected an object")
            found.append(alg_model.expectation_of_item(item, masters))
        except alg_model.AlgModelError as exc:
            errors.append((path + ("/" + exc.path if exc.path else ""), _bounded(str(exc).split(": ", 1)[-1] if exc.path else str(exc))))
    return found


MESSAGE_LENGTH = 300
_ALG_PREFIX = alg_model.NS


def _has_alg_members(mapping):
    return any(name.startswith(_ALG_PREFIX) for name in mapping)


def _check_alg_members(mapping, indexes):
    """The ALG augment's members of an entry (helper, sequence adjustment, master), strictly, as the
    other members are: the master must be an entry of the document."""
    if not _has_alg_members(mapping):
        return
    try:
        alg_model.helper_state(mapping, indexes)
    except alg_model.AlgModelError as exc:
        raise ModelError(exc.path, str(exc).split(": ", 1)[-1] if exc.path else str(exc))


def _null_member(value):
    """The path of the first member whose value is JSON null, or None. The strict checker reads
    optional members with a default, so it would take a null one for an absent one."""
    for name, member in value.items():
        if member is None:
            return name
        if member.__class__ is dict:
            found = _null_member(member)
            if found is not None:
                return name + "/" + found
    return None


def _bounded(message):
    """A message of at most about MESSAGE_LENGTH characters: it may quote a value as long as the
    reader allows. Its start and its end (the reason, after the value) are kept."""
    if len(message) <= MESSAGE_LENGTH:
        return message
    keep = MESSAGE_LENGTH // 2
    return "%s ... (%d characters cut) ... %s" % (message[:keep], len(message) - 2 * keep, message[-keep:])


def document_entries(doc):
    """The sessions a document holds (a delta's removed ones left out); see document_sessions."""
    return document_sessions(doc).present


def _removed_flag(mapping):
    value = mapping.get(REMOVED)
    if value is None:
        return False
    if value != [None]:
        raise ModelError(REMOVED, "an empty leaf is written [null] in JSON, got %r" % (value,))
    return True


def removed_mapping(entry, index):
    """The mapping entry of a delta snapshot that tells the target to delete `entry`."""
    mapping = entry_to_mapping(entry, index)
    mapping[REMOVED] = [None]
    return mapping


def _is_gzip_path(path):
    return str(path).endswith(".gz")


def read_document_file(path, max_sessions=None, measure_compressed=False):
    """bounded_json.JsonFile of a state document file (.json, or gzip: .json.gz or by its magic).

    Every bound of bounded_json is enforced before parsing, and a document may hold at most
    max_sessions mapping entries (default: bounded_json.max_sessions_default()). Raises
    DocumentFileError (a DocumentError, so a ValueError) naming the file and the problem.
    """
    try:
        found = bounded_json.read(path, max_sessions, measure_compressed=measure_compressed)
    except bounded_json.DocumentReadError as error:
        raise DocumentFileError(error)
    limit = bounded_json.limits(max_sessions).max_sessions
    count = _session_count(found.document)
    if count > limit:
        raise DocumentFileError(bounded_json.DocumentReadError(
            os.fspath(path), "holds %d sessions, more than the limit of %d (raise max_sessions or %s)"
            % (count, limit, bounded_json.MAX_SESSIONS_VARIABLE)))
    return found


def read_document(path, max_sessions=None):
    """A state document from a file; see read_document_file."""
    return read_document_file(path, max_sessions).document


def _session_count(doc):
    """Mapping entries in every instance of a document of any shape (0 where there are none)."""
    count = 0
    instances = (doc.get(NAT) or {}).get("instances") if isinstance(doc.get(NAT), dict) else None
    instances = instances.get("instance") if isinstance(instances, dict) else None
    for inst in instances if isinstance(instances, list) else ():
        table = inst.get("mapping-table") if isinstance(inst, dict) else None
        entries = table.get("mapping-entry") if isinstance(table, dict) else None
        count += len(entries) if isinstance(entries, list) else 0
    return count


def write_document(doc, path, indent=None):
    """Write a document atomically (temporary file + rename), mode 0600, gzip for *.gz."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    text = json.dumps(doc, indent=indent, separators=(",", ": ") if indent else (",", ":"))
    data = text.encode("utf-8")
    if _is_gzip_path(path):
        # mtime=0: the same document gives the same bytes (stable checksums, no false changes).
        data = gzip.compress(data, compresslevel=6, mtime=0)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# ---------------------------------------------------------------- building snapshots

def build_document(entries, instance_name, base=None, kind="full", expectations=None, not_carried=None):
    """A snapshot document of `entries`; into a copy of `base` (e.g. the rules) when given.

    expectations: the ALG expectations (conntrack_expect.Expectation) to carry with their masters,
    which must be among `entries`. What of the ALG state cannot be carried is appended to the list
    not_carried (when given) as "<what>: <why>".
    """
    snapshot = dict(taken_at=date_and_time(), source_host=socket.gethostname(), kind=kind)
    if base is None:
        document = new_document(instance_name, **snapshot)
    else:
        document = copy.deepcopy(base)
        meta = instance(document).setdefault(SNAPSHOT, {})
        meta.update(new_document(instance_name, **snapshot)["ietf-nat:nat"]["instances"]["instance"][0][SNAPSHOT])
        instance(document).pop(alg_model.EXPECTATIONS, None)
    if expectations or any(entry.alg is not None for entry in entries):
        # Indexes must match positions: keep out here what entries_to_mappings would.
        entries = [entry for entry in entries if unsupported_reason(entry) is None]
        mappings = entries_to_mappings(entries)
        refused = add_alg_state(instance(document), mappings, entries, expectations or ())
        if not_carried is not None:
            not_carried.extend(refused)
        set_mapping_entries(document, mappings)
    else:
        set_mapping_entries(document, entries_to_mappings(entries))
    return document


def masters_to_carry(expectations, entries, carried):
    """The sessions of `entries` that are masters of `expectations` and not in `carried` yet: a
    delta carries them so that its expectations can name them."""
    if not expectations:
        return []
    wanted = set(alg_model.master_key(exp.master) for exp in expectations)
    have = set(alg_model.master_key(e.orig) for e in carried)
    return [e for e in entries if alg_model.master_key(e.orig) in wanted - have]


def add_alg_state(inst, mappings, entries, expectations):
    """Write the ALG state into mapping entries (mappings[i] is entries[i]'s) and the instance.

    Returns ["<what>: <why>"] of what cannot be carried: a data connection whose master is not in
    the snapshot (it moves as a plain session), an expectation without its master, or one the
    model cannot say. Never dropped silently.
    """
    index_of = alg_model.master_index_of((mapping["index"], entry.orig) for mapping, entry in zip(mappings, entries))
    refused = []
    for mapping, entry in zip(mappings, entries):
        state = entry.alg
        if state is None or not has_helper_state(state):
            continue
        master_index = index_of.get(alg_model.master_key(state.master)) if state.master is not None else None
        if state.master is not None and master_index is None:
            refused.append("%s: its master (the ALG's control session) is not in the snapshot: it moves as a plain "
                           "session" % describe(entry))
            state = state._replace(master=None)
        mapping.update(alg_model.helper_members(state, master_index))
    container, not_moved = alg_model.expectations_container(expectations, index_of)
    inst.update(container)
    refused.extend("%s: %s" % (item["expectation"], item["reason"]) for item in not_moved)
    return refused


def delta_document(entries, previous, instance_name, base=None, elapsed=0, expectations=(), not_carried=None):
    """What changed since `previous` (a full snapshot's sessions, taken `elapsed` seconds before
    `entries` were read): new or re-bound sessions, refreshed ones at risk (see refreshed_at_risk),
    and the ended or re-bound ones flagged removed. Any other session whose binding is the same is
    left out: its timeout and TCP state move on by themselves on the target.
    expectations: the ALG expectation table at the time of `entries`; it crosses whole (an
    expectation lives minutes and nothing refreshes it), with its masters as refreshed sessions.
    Returns (document, added, removed, refreshed)."""
    before = dict((session_key(e), e) for e in previous)
    now = dict((session_key(e), e) for e in entries)
    added = [e for key, e in now.items() if key not in before or before[key].reply != e.reply]
    refreshed = [e for key, e in now.items()
                 if key in before and before[key].reply == e.reply and refreshed_at_risk(before[key], e, elapsed)]
    refreshed += masters_to_carry(expectations, entries, added + refreshed)
    removed = [e for key, e in before.items() if key not in now or now[key].reply != e.reply]
    document = build_document(added + refreshed, instance_name, base, kind="delta", expectations=expectations,
                              not_carried=not_carried)
    first = len(added) + len(refreshed) + 1
    mappings = instance(document)["mapping-table"]["mapping-entry"]
    mappings.extend(removed_mapping(e, i) for i, e in enumerate(removed, first))
    set_mapping_entries(document, mappings)
    return document, len(added), len(removed), len(refreshed)


def snapshot_age(document, now):
    """Seconds since the document's snapshot was taken (0 when it does not say)."""
    taken_at = instance(document).get(SNAPSHOT, {}).get("taken-at")
    if not taken_at:
        return 0
    # A document read on the host has not been through the YANG validator: a time that is not
    # date-and-time text must not end the module with a traceback.
    try:
        moment = datetime.datetime.fromisoformat(taken_at.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return 0
    if moment.tzinfo is None:
        return 0
    return max(0, int((now - moment).total_seconds()))
