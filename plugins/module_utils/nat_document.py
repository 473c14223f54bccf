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

from ansible_collections.nfstate.migration.plugins.module_utils.lifetimes import refreshed_at_risk

from ansible_collections.nfstate.migration.plugins.module_utils.session_model import (
    REMOVED,
    GcPaused,
    ModelError,
    entries_to_mappings,
    entry_to_mapping,
    mapping_to_entry,
    session_key,
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
_GZIP_MAGIC = b"\x1f\x8b"


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


Sessions = namedtuple("Sessions", ["present", "removed"])


def document_sessions(doc):
    """The document's sessions as ConntrackEntry objects, in document order: Sessions(present, removed).

    `removed` holds the entries a delta snapshot flags nfstate-nat:removed. Checks every mapping
    entry (mapping_to_entry), duplicate keys and duplicate sessions; raises DocumentError listing
    every problem with its full path.
    """
    inst = instance(doc)
    base = instance_path(inst)
    mappings = mapping_entries(doc)
    errors = []
    present, removed = [], []
    seen_index = set()
    seen_session = ({}, {})
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
                gone = _removed_flag(mapping)
            except ModelError as exc:
                path = entry_path(base, mapping, position)
                errors.append((path + ("/" + exc.path if exc.path else ""), exc.message))
                continue
            key = session_key(entry)
            if key in seen_session[gone]:
                errors.append((entry_path(base, mapping, position),
                               "the same session as mapping-entry index %d (zone and original tuple)"
                               % seen_session[gone][key]))
                continue
            seen_session[gone][key] = index
            (removed if gone else present).append(entry)
    if errors:
        raise DocumentError(errors)
    return Sessions(present, removed)


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


def read_document(path):
    """Load a document from a .json or .json.gz file (gzip is also recognised by its magic)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    opener = gzip.open if head == _GZIP_MAGIC or _is_gzip_path(path) else open
    with opener(path, "rb") as handle:
        try:
            return json.loads(handle.read())
        except ValueError as exc:
            raise DocumentError([("/", "%s is not JSON: %s" % (path, exc))])


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

def build_document(entries, instance_name, base=None, kind="full"):
    """A snapshot document of `entries`; into a copy of `base` (e.g. the rules) when given."""
    snapshot = dict(taken_at=date_and_time(), source_host=socket.gethostname(), kind=kind)
    if base is None:
        document = new_document(instance_name, **snapshot)
    else:
        document = copy.deepcopy(base)
        meta = instance(document).setdefault(SNAPSHOT, {})
        meta.update(new_document(instance_name, **snapshot)["ietf-nat:nat"]["instances"]["instance"][0][SNAPSHOT])
    set_mapping_entries(document, entries_to_mappings(entries))
    return document


def delta_document(entries, previous, instance_name, base=None, elapsed=0):
    """What changed since `previous` (a full snapshot's sessions, taken `elapsed` seconds before
    `entries` were read): new or re-bound sessions, refreshed ones at risk (see refreshed_at_risk),
    and the ended or re-bound ones flagged removed. Any other session whose binding is the same is
    left out: its timeout and TCP state move on by themselves on the target.
    Returns (document, added, removed, refreshed)."""
    before = dict((session_key(e), e) for e in previous)
    now = dict((session_key(e), e) for e in entries)
    added = [e for key, e in now.items() if key not in before or before[key].reply != e.reply]
    refreshed = [e for key, e in now.items()
                 if key in before and before[key].reply == e.reply and refreshed_at_risk(before[key], e, elapsed)]
    removed = [e for key, e in before.items() if key not in now or now[key].reply != e.reply]
    document = build_document(added + refreshed, instance_name, base, kind="delta")
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
