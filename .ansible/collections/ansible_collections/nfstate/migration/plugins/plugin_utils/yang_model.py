# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate NAT state documents (RFC 7951 JSON) against ietf-nat and the collection's YANG modules.

Controller side only (yangson). The YANG library is built here, in code: ietf-nat (features
napt44, dst-nat, basic-nat44), ietf-interfaces, every module in the collection's yang/ directory,
and whatever they import, found in the directories of the installed pyang distribution.

A document is checked in two parts, every error reported with its path:

1. yangson validates its skeleton: everything but the mapping entries (the instance, its
   snapshot metadata, its rules). That part is small; after each error the offending node is
   removed and validation repeats, so several errors come out.
2. The mapping entries, one per session and 100k of them in a big table, go through the strict
   checker the managed hosts run before they apply a document (nat_document.instance_sessions,
   built on session_model.mapping_to_entry). It is stricter than the YANG model (docs/model.md,
   "Validation"): whatever yangson would refuse in an entry, it refuses too
   (tests/unit/test_validation_agreement.py), and it reports every bad entry.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys
import threading

try:
    from yangson import DataModel
    from yangson.enumerations import ContentType, ValidationScope
    from yangson.exceptions import (
        ModuleRevisionMismatch,
        ParserException,
        RawDataError,
        ValidationError,
        YangsonException,
    )
    from yangson.instance import ArrayEntry, ObjectMember
    from yangson.statement import ModuleParser
    YANGSON_IMPORT_ERROR = None
except ImportError as import_error:  # the controller lacks the collection's requirements
    YANGSON_IMPORT_ERROR = import_error

from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import (
    NAT,
    DocumentError,
    instance,
    instance_sessions,
    read_document,
)

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YANG_DIR = os.path.join(COLLECTION_ROOT, "yang")

# What the validator's YANG library implements, and the ietf-nat features our documents use.
IMPLEMENTED_STANDARD = ("ietf-nat", "ietf-interfaces", "ietf-access-control-list")
FEATURES = {"ietf-nat": ("napt44", "dst-nat", "basic-nat44"),
            "ietf-access-control-list": ("match-on-eth", "match-on-ipv4", "match-on-ipv6", "match-on-tcp", "match-on-udp",
                                         "match-on-icmp", "eth", "ipv4", "ipv6", "mixed-eth-ipv4-ipv6")}
NAT_REVISION = "2019-01-10"

# yangson stops at its first error: how many times the skeleton is validated again without it.
MAX_YANGSON_ROUNDS = 25


class YangModelError(Exception):
    """The data model itself cannot be built (a module missing or broken)."""


# ---------------------------------------------------------------------------- finding modules

def pyang_module_dirs():
    """Directories holding the YANG modules shipped with the installed pyang distribution."""
    roots = []
    try:
        from importlib import metadata
        for path in metadata.files("pyang") or ():
            if path.name == "ietf-nat.yang":
                roots.append(os.path.dirname(os.path.dirname(os.path.normpath(str(path.locate())))))
    except Exception:  # an odd installation: fall back to the interpreter's prefix
        pass
    for prefix in (sys.prefix, getattr(sys, "base_prefix", sys.prefix)):
        roots.append(os.path.join(prefix, "share", "yang", "modules"))
    dirs = []
    for root in roots:
        if os.path.isdir(root):
            for sub in sorted(os.listdir(root)):
                path = os.path.join(root, sub)
                if os.path.isdir(path) and path not in dirs:
                    dirs.append(path)
    if not any(os.path.exists(os.path.join(d, "ietf-nat.yang")) for d in dirs):
        raise YangModelError("ietf-nat.yang not found: is pyang installed (pip install pyang)?")
    return dirs


def _read_module(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return ModuleParser(text).parse()
    except ModuleRevisionMismatch as exc:
        # The parser insists on being told the revision; it reports the one it found.
        return ModuleParser(text, rev=exc.args[0]).parse()


def _revision(stmt):
    """The module's revision as yangson reads it: the first revision statement."""
    first = stmt.find1("revision")
    return first.argument if first else None


def _find_module(name, revision, search):
    for directory in search:
        for candidate in ((name + "@" + revision + ".yang") if revision else None, name + ".yang"):
            if candidate is None:
                continue
            path = os.path.join(directory, candidate)
            if os.path.exists(path):
                stmt = _read_module(path)
                if revision is None or _revision(stmt) == revision:
                    return path, stmt
    raise YangModelError("YANG module %s%s not found in %s" % (name, "@" + revision if revision else "", ", ".join(search)))


def own_module_files(yang_dir=YANG_DIR):
    return sorted(os.path.join(yang_dir, f) for f in os.listdir(yang_dir) if f.endswith(".yang"))


def yang_library(yang_dir=YANG_DIR):
    """(YANG library JSON text in the RFC 7895 form yangson reads, module search path)."""
    search = [yang_dir] + pyang_module_dirs()
    modules = {}     # name -> [revision, statement, conformance type, features]
    todo = []
    for path in own_module_files(yang_dir):
        stmt = _read_module(path)
        if stmt.keyword != "module":
            continue    # submodules come in through their module's include
        features = [s.argument for s in stmt.find_all("feature")]
        modules[stmt.argument] = [_revision(stmt), stmt, "implement", features]
        todo.append(stmt)
    for name in IMPLEMENTED_STANDARD:
        revision = NAT_REVISION if name == "ietf-nat" else None
        stmt = _find_module(name, revision, search)[1]
        modules[name] = [_revision(stmt), stmt, "implement", list(FEATURES.get(name, ()))]
        todo.append(stmt)
    while todo:
        stmt = todo.pop()
        for imp in stmt.find_all("import"):
            rev_stmt = imp.find1("revision-date")
            wanted = rev_stmt.argument if rev_stmt else None
            if imp.argument in modules:
                if wanted and modules[imp.argument][0] != wanted:
                    raise YangModelError("%s imports %s revision %s, the library has %s"
                                         % (stmt.argument, imp.argument, wanted, modules[imp.argument][0]))
                continue
            imported = _find_module(imp.argument, wanted, search)[1]
            modules[imp.argument] = [_revision(imported), imported, "import", []]
            todo.append(imported)
    items = []
    for name in sorted(modules):
        revision, stmt, conformance, features = modules[name]
        item = {
            "name": name,
            "revision": revision or "",
            "namespace": stmt.find1("namespace").argument,
            "conformance-type": conformance,
        }
        if features:
            item["feature"] = sorted(features)
        subs = []
        for inc in stmt.find_all("include"):
            rev_stmt = inc.find1("revision-date")
            sub = _find_module(inc.argument, rev_stmt.argument if rev_stmt else None, search)[1]
            subs.append({"name": inc.argument, "revision": _revision(sub) or ""})
        if subs:
            item["submodule"] = subs
        items.append(item)
    library = {"ietf-yang-library:modules-state": {"module-set-id": "nfstate-migration", "module": items}}
    return json.dumps(library, indent=1), search


_model_lock = threading.Lock()
_model_cache = {}


def data_model(yang_dir=YANG_DIR):
    """The yangson DataModel (built once per yang directory, then cached)."""
    if YANGSON_IMPORT_ERROR is not None:
        raise YangModelError("validating NAT state documents needs yangson and pyang on the controller "
                             "(pip install -r requirements.txt): %s" % YANGSON_IMPORT_ERROR)
    with _model_lock:
        if yang_dir not in _model_cache:
            text, search = yang_library(yang_dir)
            try:
                _model_cache[yang_dir] = DataModel(text, search)
            except (YangsonException, ParserException) as exc:
                raise YangModelError("cannot build the YANG data model: %s" % exc)
        return _model_cache[yang_dir]


# ---------------------------------------------------------------------------- yangson

def _yangson_path(exc):
    if isinstance(exc, ValidationError):
        return str(exc.instance.instance_route())
    return str(getattr(exc, "path", "/"))


def _yangson_message(exc):
    if isinstance(exc, ValidationError):
        return "%s%s" % (exc.tag, ": " + _one_line(exc.message) if exc.message else "")
    if isinstance(exc, RawDataError):
        return getattr(exc, "message", None) or "member-not-allowed"
    return str(exc)


def _without_instance(inst):
    """The whole tree minus `inst` (so that validation can go on past it), or None."""
    try:
        parent = inst.up()
    except Exception:
        return None
    if isinstance(inst, ObjectMember):
        return parent.delete_item(inst.name).top()
    if isinstance(inst, ArrayEntry):
        return parent.delete_item(inst.index).top()
    return None


def _one_line(text):
    return " ".join(str(text).split())


def yangson_errors(raw, yang_dir=YANG_DIR, limit=MAX_YANGSON_ROUNDS):
    """Every error yangson finds in a (small) document: validate, drop the bad node, repeat."""
    model = data_model(yang_dir)
    try:
        tree = model.from_raw(raw)
    except RawDataError as exc:
        return [(_yangson_path(exc), _yangson_message(exc))]
    errors = []
    while tree is not None and len(errors) < limit:
        try:
            tree.validate(ValidationScope.all, ContentType.config)
            return errors
        except YangsonException as exc:
            errors.append((_yangson_path(exc), _yangson_message(exc)))
            tree = _without_instance(exc.instance) if isinstance(exc, ValidationError) else None
    return errors


# ---------------------------------------------------------------------------- the two parts

def skeleton(doc):
    """The document without its mapping entries: copies of the containers on the way to each
    instance's mapping-table, the rest shared. A part of an unexpected shape is kept as it is,
    for yangson to report."""
    nat = doc.get(NAT)
    instances = nat.get("instances") if isinstance(nat, dict) else None
    entries = instances.get("instance") if isinstance(instances, dict) else None
    if not isinstance(entries, list):
        return doc
    stripped = []
    for inst in entries:
        table = inst.get("mapping-table") if isinstance(inst, dict) else None
        if isinstance(table, dict) and "mapping-entry" in table:
            inst = dict(inst)
            inst["mapping-table"] = dict((k, v) for k, v in table.items() if k != "mapping-entry")
        stripped.append(inst)
    return dict(doc, **{NAT: dict(nat, instances=dict(instances, instance=stripped))})


def session_errors(doc):
    """The strict checker's errors for the document's mapping entries, each with its full path.

    A state document holds exactly one instance: the hosts refuse any other shape. A document of
    another function only (a firewall's ietf-access-control-list:acls) has no sessions here."""
    if NAT not in doc and doc:
        return []
    try:
        instance_sessions(instance(doc))
    except DocumentError as error:
        return list(error.errors)
    return []


# ---------------------------------------------------------------------------- API

def validate(doc, yang_dir=YANG_DIR):
    """Every error of an RFC 7951 JSON document, as a list of (path, message); [] when valid."""
    if not isinstance(doc, dict):
        return [("/", "invalid-type: a document is a JSON object")]
    try:
        errors = yangson_errors(skeleton(doc), yang_dir)
        seen = set(errors)
        errors.extend(error for error in session_errors(doc) if error not in seen)
    except RecursionError:
        # Files and task arguments are read within bounded_json's depth; a caller's own data may not be.
        return [("/", "too-deep: the document nests deeper than a state document may")]
    return errors


def validate_file(path, yang_dir=YANG_DIR, max_sessions=None):
    """validate() for a .json or .json.gz file, read within the bounds of bounded_json; a file
    that cannot be read is one error."""
    try:
        doc = read_document(path, max_sessions)
    except (OSError, ValueError) as exc:
        return [("/", "cannot read %s: %s" % (path, exc))]
    return validate(doc, yang_dir)
