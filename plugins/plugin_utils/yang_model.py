# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate NAT state documents (RFC 7951 JSON) against ietf-nat and the collection's YANG modules.

Controller side only (yangson). The YANG library is built here, in code: ietf-nat (features
napt44, dst-nat, basic-nat44), ietf-interfaces, every module in the collection's yang/ directory,
and whatever they import, found in the directories of the installed pyang distribution.

yangson validates a whole instance tree in one pass and stops at the first error; it also needs
about 1.4 ms per mapping entry (its schema-pattern matching), two minutes for 100k sessions. So:

1. A checker compiled from the yangson schema walks the whole document once and reports every
   error it finds with its path: unknown or misplaced members, types (yangson's own type objects,
   memoised per value), list keys and their uniqueness, mandatory nodes, choices, and the `when`
   and `must` expressions, evaluated by a small XPath evaluator over the raw JSON (paths along
   the child/parent/self axes, comparisons, and/or/not, count, current, arithmetic).
2. yangson itself then validates the document without its mapping entries (rules, snapshot
   metadata: small), catching what the checker leaves to it (leafref and instance-identifier
   targets, XPath it cannot evaluate); after each error the offending node is removed and
   validation repeats, so several errors come out of this pass too.
3. A mapping entry that touches a constraint the checker cannot evaluate is validated by yangson
   on its own (inside its instance). None of ietf-nat's or our constraints need this today.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gc
import gzip
import json
import math
import os
import sys
import threading

try:
    from yangson import DataModel
    from yangson import xpathast as xp
    from yangson.datatype import (
        EmptyType,
        InstanceIdentifierType,
        Int64Type,
        IntegralType,
        LeafrefType,
        Uint64Type,
        UnionType,
    )
    from yangson.enumerations import Axis, ContentType, NodeStatus, ValidationScope
    from yangson.exceptions import (
        ModuleRevisionMismatch,
        ParserException,
        RawDataError,
        ValidationError,
        YangsonException,
    )
    from yangson.instance import ArrayEntry, ObjectMember
    from yangson.schemanode import (
        AnydataNode,
        CaseNode,
        ChoiceNode,
        ContainerNode,
        GroupNode,
        InternalNode,
        LeafListNode,
        LeafNode,
        ListNode,
        NotificationNode,
        RpcActionNode,
    )
    from yangson.statement import ModuleParser
    YANGSON_IMPORT_ERROR = None
except ImportError as import_error:  # the controller lacks the collection's requirements
    YANGSON_IMPORT_ERROR = import_error

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YANG_DIR = os.path.join(COLLECTION_ROOT, "yang")

# What the validator's YANG library implements, and the ietf-nat features our documents use.
IMPLEMENTED_STANDARD = ("ietf-nat", "ietf-interfaces", "ietf-access-control-list")
FEATURES = {"ietf-nat": ("napt44", "dst-nat", "basic-nat44"),
            "ietf-access-control-list": ("match-on-eth", "match-on-ipv4", "match-on-ipv6", "match-on-tcp", "match-on-udp",
                                         "match-on-icmp", "eth", "ipv4", "ipv6", "mixed-eth-ipv4-ipv6")}
NAT_REVISION = "2019-01-10"

# Lists that hold one entry per session: validated entry by entry by the compiled checker only.
BULK_LISTS = ("/ietf-nat:nat/instances/instance/mapping-table/mapping-entry",)

MAX_YANGSON_ROUNDS = 25
CACHED_VALUES = 200000      # per leaf and JSON type: verdicts on values already seen


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


# ---------------------------------------------------------------------------- raw tree nodes

class _Node(object):
    """A node of the raw JSON tree, as the checker and its XPath evaluator see it."""
    __slots__ = ("schema", "value", "parent", "position")

    def __init__(self, schema, value, parent, position=None):
        self.schema = schema
        self.value = value
        self.parent = parent
        self.position = position   # 1-based, for list entries


def _key_text(value):
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    quote = "'" if '"' in text else '"'
    return quote + text + quote


def node_path(node):
    """Instance path in yangson's form: /ietf-nat:nat/instances/instance[id="1"]/..."""
    parts = []
    while node is not None and node.parent is not None:
        schema = node.schema
        part = schema.iname()
        if isinstance(schema, ListNode) and node.position is not None:
            keys = schema._key_members
            value = node.value
            if keys and isinstance(value, dict) and all(_scalar(value.get(k)) for k in keys):
                part += "".join("[%s=%s]" % (k, _key_text(value[k])) for k in keys)
            else:
                part += "[%d]" % node.position
        elif isinstance(schema, LeafListNode) and node.position is not None:
            part += "[%d]" % node.position
        parts.append(part)
        node = node.parent
    return "/" + "/".join(reversed(parts))


def _scalar(value):
    return value is not None and not isinstance(value, (dict, list))


# ---------------------------------------------------------------------------- XPath over raw JSON

class _Unsupported(Exception):
    """An XPath construct (or a value) the compiled evaluator leaves to yangson."""


def _is_nodeset(value):
    return isinstance(value, list)


def _leaf_string(node):
    value = node.value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list):     # the empty type: [null]
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _number(value):
    if _is_nodeset(value):
        if not value:
            return float("nan")
        value = _node_scalar(value[0])
    if value is True or value is False:
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _node_scalar(node):
    if isinstance(node.schema, (LeafNode, LeafListNode)):
        return node.value if not isinstance(node.value, list) else ""
    raise _Unsupported("value of an inner node")


def _string(value):
    if _is_nodeset(value):
        if not value:
            return ""
        if not isinstance(value[0].schema, (LeafNode, LeafListNode)):
            raise _Unsupported("string value of an inner node")
        return _leaf_string(value[0])
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def _boolean(value):
    if _is_nodeset(value):
        return bool(value)
    if isinstance(value, float):
        return value != 0 and not math.isnan(value)
    return bool(value)


def _leaves(nodeset):
    return [n for n in nodeset if isinstance(n.schema, (LeafNode, LeafListNode))]


def _compare(op, left, right, relational):
    """XPath 1.0 comparison (section 3.4), with yangson's treatment of inner nodes (skipped)."""
    if _is_nodeset(left) and _is_nodeset(right):
        if relational:
            return any(op(_number([a]), _number([b])) for a in _leaves(left) for b in _leaves(right))
        return any(op(_leaf_string(a), _leaf_string(b)) for a in _leaves(left) for b in _leaves(right))
    if _is_nodeset(left) or _is_nodeset(right):
        swap = not _is_nodeset(left)
        nodes, other = (right, left) if swap else (left, right)

        def apply(a, b):
            return op(b, a) if swap else op(a, b)
        if other is True or other is False:
            return apply(bool(nodes), other)
        if relational or isinstance(other, float):
            number = _number(other)
            return any(apply(_number([n]), number) for n in _leaves(nodes))
        return any(apply(_leaf_string(n), str(other)) for n in _leaves(nodes))
    if relational:
        return op(_number(left), _number(right))
    if left is True or left is False or right is True or right is False:
        return op(_boolean(left), _boolean(right))
    if isinstance(left, float) or isinstance(right, float):
        return op(_number(left), _number(right))
    return op(_string(left), _string(right))


def _child_nodes(node, qname):
    """Children of `node` named qname (name, module) in the raw tree; defaults stand in for
    absent leaves, as yangson adds them before evaluating."""
    schema = node.schema
    if not isinstance(schema, InternalNode) or not isinstance(node.value, dict):
        return []
    child = schema.get_data_child(*qname)
    if child is None:
        return []
    raw = node.value.get(child.iname())
    if raw is None:
        if isinstance(child, LeafNode) and child.default is not None:
            return [_Node(child, child.type.to_raw(child.default), node)]
        return []
    if isinstance(child, (ListNode, LeafListNode)):
        if not isinstance(raw, list):
            return []
        return [_Node(child, item, node, position) for position, item in enumerate(raw, 1)]
    return [_Node(child, raw, node)]


def _step(expr):
    if expr.predicates:
        raise _Unsupported("predicates")
    axis, qname = expr.axis, expr.qname
    if axis == Axis.self:
        if qname:
            return lambda node: [node] if (node.schema.name, node.schema.ns) == qname else []
        return lambda node: [node]
    if axis == Axis.parent:
        def parent(node):
            up = node.parent
            if up is None or up.parent is None and qname:
                return []
            if qname and (up.schema.name, up.schema.ns) != qname:
                return []
            return [up]
        return parent
    if axis == Axis.child and qname and qname[0] != "*":
        return lambda node: _child_nodes(node, qname)
    raise _Unsupported("axis %s" % axis.name)


def _identity(node):
    """What makes two _Node objects the same node of the document (they are made on demand)."""
    parent = node.parent
    return (id(node.schema), id(parent.value) if parent is not None else 0, node.position)


def _nodes_of(fn):
    """A step applied to every node of a node-set, each resulting node once."""
    def run(nodes):
        if len(nodes) == 1:
            return fn(nodes[0])
        seen, result = set(), []
        for n in nodes:
            for m in fn(n):
                key = _identity(m)
                if key not in seen:
                    seen.add(key)
                    result.append(m)
        return result
    return run


def _compile_path(expr):
    """A function (context node, origin) -> list of nodes."""
    if isinstance(expr, xp.FilterExpr) and not expr.predicates:
        return _compile_path(expr.primary)
    if isinstance(expr, xp.Step):
        step = _step(expr)
        return lambda node, origin: step(node)
    if isinstance(expr, xp.Root):
        def root(node, origin):
            while node.parent is not None:
                node = node.parent
            return [node]
        return root
    if isinstance(expr, (xp.LocationPath, xp.PathExpr)):
        left = _compile_path(expr.left)
        if not isinstance(expr.right, xp.Step):
            raise _Unsupported("path step %s" % type(expr.right).__name__)
        right = _nodes_of(_step(expr.right))
        return lambda node, origin: right(left(node, origin))
    if isinstance(expr, xp.FuncCurrent):
        return lambda node, origin: [origin]
    raise _Unsupported(type(expr).__name__)


_OPS = {
    ("eq", False): lambda a, b: a == b,
    ("eq", True): lambda a, b: a != b,
    ("rel", True, True): lambda a, b: a <= b,
    ("rel", True, False): lambda a, b: a < b,
    ("rel", False, True): lambda a, b: a >= b,
    ("rel", False, False): lambda a, b: a > b,
}


def compile_xpath(expr):
    """A function (context node, origin node) -> XPath value, for the supported subset of
    yangson's XPath AST; raises _Unsupported for the rest."""
    kind = type(expr)
    if kind is xp.FilterExpr and not expr.predicates:
        return compile_xpath(expr.primary)
    if kind is xp.OrExpr:
        left, right = compile_xpath(expr.left), compile_xpath(expr.right)
        return lambda n, o: _boolean(left(n, o)) or _boolean(right(n, o))
    if kind is xp.AndExpr:
        left, right = compile_xpath(expr.left), compile_xpath(expr.right)
        return lambda n, o: _boolean(left(n, o)) and _boolean(right(n, o))
    if kind is xp.EqualityExpr:
        left, right, op = compile_xpath(expr.left), compile_xpath(expr.right), _OPS[("eq", expr.negate)]
        return lambda n, o: _compare(op, left(n, o), right(n, o), False)
    if kind is xp.RelationalExpr:
        left, right = compile_xpath(expr.left), compile_xpath(expr.right)
        op = _OPS[("rel", expr.less, expr.equal)]
        return lambda n, o: _compare(op, left(n, o), right(n, o), True)
    if kind is xp.AdditiveExpr:
        left, right = compile_xpath(expr.left), compile_xpath(expr.right)
        if expr.plus:
            return lambda n, o: _number(left(n, o)) + _number(right(n, o))
        return lambda n, o: _number(left(n, o)) - _number(right(n, o))
    if kind is xp.UnaryMinusExpr:
        inner = compile_xpath(expr.expr)
        return (lambda n, o: -_number(inner(n, o))) if expr.negate else (lambda n, o: _number(inner(n, o)))
    if kind is xp.Literal:
        value = expr.value
        return lambda n, o: value
    if kind is xp.Number:
        value = float(expr.value)
        return lambda n, o: value
    if kind is xp.FuncNot:
        inner = compile_xpath(expr.expr)
        return lambda n, o: not _boolean(inner(n, o))
    if kind is xp.FuncBoolean:
        inner = compile_xpath(expr.expr)
        return lambda n, o: _boolean(inner(n, o))
    if kind is xp.FuncTrue:
        return lambda n, o: True
    if kind is xp.FuncFalse:
        return lambda n, o: False
    if kind is xp.FuncCount:
        inner = _compile_path(expr.expr)
        return lambda n, o: float(len(inner(n, o)))
    if kind in (xp.Step, xp.LocationPath, xp.Root, xp.PathExpr, xp.FuncCurrent):
        return _compile_path(expr)
    raise _Unsupported(kind.__name__)


# ---------------------------------------------------------------------------- the compiled checker

class _Condition(object):
    """A compiled `when` or `must`; `fn` is None when yangson has to evaluate it."""
    __slots__ = ("fn", "on_self", "tag", "message", "text", "siblings", "memo")

    def __init__(self, expr, on_self, tag=None, message=None):
        self.on_self = on_self      # when: evaluated on a dummy node of the child itself
        self.tag = tag
        self.message = message
        self.text = str(expr)
        try:
            self.fn = compile_xpath(expr)
        except _Unsupported:
            self.fn = None
        # A condition that reads only leaves beside the node (the usual "../protocol = 6")
        # has one verdict per combination of their values: remember it.
        self.siblings = _sibling_leaves(expr, on_self) if self.fn is not None else None
        self.memo = {}


def _sibling_leaves(expr, on_self):
    """Sorted qualified names (name, module) of the sibling leaves a `when` reads, or None when
    it reads anything else (or is not a `when` on a data node's siblings)."""
    found = set()

    def visit(e):
        if isinstance(e, (xp.Literal, xp.Number, xp.FuncTrue, xp.FuncFalse)):
            return True
        if isinstance(e, (xp.OrExpr, xp.AndExpr, xp.EqualityExpr, xp.RelationalExpr, xp.AdditiveExpr)):
            return visit(e.left) and visit(e.right)
        if isinstance(e, (xp.FuncNot, xp.FuncBoolean, xp.UnaryMinusExpr)):
            return visit(e.expr)
        steps = []
        while isinstance(e, xp.LocationPath):
            steps.append(e.right)
            e = e.left
        steps.append(e)
        steps.reverse()
        if not all(isinstance(step, xp.Step) and not step.predicates for step in steps):
            return False
        if on_self:
            if len(steps) != 2 or steps[0].axis != Axis.parent or steps[0].qname:
                return False
            steps = steps[1:]
        if len(steps) != 1 or steps[0].axis != Axis.child or not steps[0].qname:
            return False
        found.add(steps[0].qname)
        return True
    return tuple(sorted(found)) if visit(expr) else None


class _Walk(object):
    """State of one validation pass."""

    def __init__(self):
        self.errors = []
        self.deferred = False       # hit something only yangson can check
        self.bulk_deferred = []     # (parent node, position, entry) of such bulk list entries
        self.bulk_errors = 0        # errors found inside bulk list entries

    def error(self, node_or_path, message):
        path = node_or_path if isinstance(node_or_path, str) else node_path(node_or_path)
        self.errors.append((path, message))

    def holds(self, condition, node, origin=None):
        """Truth of a condition; None (and the walk is marked deferred) when unknown."""
        if condition.fn is None:
            self.deferred = True
            return None
        key = None
        if condition.siblings is not None:
            owner = node.parent if condition.on_self else node
            if owner is not None and isinstance(owner.value, dict):
                key = _sibling_values(owner, condition.siblings)
                if key is not None:
                    verdict = condition.memo.get(key)
                    if verdict is not None:
                        return verdict
        try:
            verdict = _boolean(condition.fn(node, origin or node))
        except _Unsupported:
            self.deferred = True
            return None
        if key is not None and len(condition.memo) < 10000:
            condition.memo[key] = verdict
        return verdict


_sibling_names = {}


def _sibling_values(owner, qnames):
    """Hashable key of the values of the sibling leaves qnames under owner, or None."""
    schema, raw = owner.schema, owner.value
    names = _sibling_names.get((id(schema), qnames))
    if names is None:
        children = [schema.get_data_child(*qname) for qname in qnames]
        if any(child is None for child in children):
            return None
        names = _sibling_names[(id(schema), qnames)] = tuple(child.iname() for child in children)
    values = [id(schema)]
    for name in names:
        value = raw.get(name)
        if value.__class__ is dict or value.__class__ is list:
            return None
        values.append(value.__class__)
        values.append(value)
    return tuple(values)


def _type_problem(dtype, raw):
    """None when raw is a valid RFC 7951 value of the yangson type, else the error text."""
    if isinstance(dtype, EmptyType):
        return None if raw == [None] else "invalid-type: expected empty value [null]"
    if isinstance(raw, (dict, list)):
        return "invalid-type: expected a %s value, got %s" % (_type_name(dtype), "an object" if isinstance(raw, dict) else "an array")
    if isinstance(dtype, UnionType):
        return None if dtype.from_raw(raw) is not None else \
            "invalid-type: %r is not a valid %s" % (raw, _type_name(dtype))
    value = dtype.from_raw(raw)
    if value is None:
        return "invalid-type: expected %s value, got %r" % (_type_name(dtype), raw)
    if value not in dtype:
        message = _one_line(dtype.error_message or "invalid value")
        if str(raw) not in message:
            message += ", got %r" % (raw,)
        return "%s: %s" % (dtype.error_tag or "invalid-type", message)
    return None


def _one_line(text):
    return " ".join(str(text).split())


def _must_message(must):
    return "must-violation: " + (_one_line(must.message) if must.message else "%s is false" % must.text)


def _type_name(dtype):
    return getattr(dtype, "name", None) or dtype.yang_type()


class _Leaf(object):
    kind = "leaf"

    def __init__(self, schema):
        self.schema = schema
        self.dtype = schema.type
        self.caches = {}
        self.musts = [_Condition(m.expression, False, m.error_tag, m.error_message) for m in schema.must]
        # Only yangson can tell whether a leafref or instance-identifier points at something.
        self.needs_yangson = _needs_instance(self.dtype)
        self.simple = not self.musts and not self.needs_yangson
        self.int_ranges = _int_ranges(self.dtype)

    def problem(self, raw):
        """None when raw is a valid value of the leaf's type, else the error text."""
        cls = raw.__class__
        if cls is int and self.int_ranges is not None:
            for low, high in self.int_ranges:
                if low <= raw <= high:
                    return None
            return _type_problem(self.dtype, raw)
        if cls is list or cls is dict:   # unhashable (an empty leaf is [null]): not cached
            return _type_problem(self.dtype, raw)
        try:
            return self.caches[cls][raw]
        except KeyError:
            pass
        problem = _type_problem(self.dtype, raw)
        cache = self.caches.setdefault(cls, {})
        if len(cache) >= CACHED_VALUES:
            cache.clear()   # bounded: the checker lives as long as the controller process
        cache[raw] = problem
        return problem

    def check(self, walk, raw, parent, position=None):
        problem = self.problem(raw)
        if problem is not None:
            walk.error(_Node(self.schema, raw, parent, position), problem)
            return
        if self.needs_yangson:
            walk.deferred = True
        if self.musts:
            node = _Node(self.schema, raw, parent, position)
            for must in self.musts:
                if walk.holds(must, node) is False:
                    walk.error(node, _must_message(must))


def _int_ranges(dtype):
    """[(low, high)] of an integer type that RFC 7951 writes as a JSON number (not the 64-bit
    ones, written as strings), from yangson's own range data; None for other types."""
    if not isinstance(dtype, IntegralType) or isinstance(dtype, (Int64Type, Uint64Type)):
        return None
    if dtype.range is None:
        low, high = dtype._range
        return [(low, high)]
    return [(r[0], r[-1]) for r in dtype.range.intervals]


def _needs_instance(dtype):
    if isinstance(dtype, UnionType):
        return any(_needs_instance(t) for t in dtype.types)
    return isinstance(dtype, (LeafrefType, InstanceIdentifierType)) and getattr(dtype, "require_instance", True)


class _LeafList(_Leaf):
    kind = "leaf-list"

    def __init__(self, schema):
        super(_LeafList, self).__init__(schema)
        self.min_elements = schema.min_elements
        self.max_elements = schema.max_elements

    def check(self, walk, raw, parent, position=None):
        node = _Node(self.schema, raw, parent)
        if not isinstance(raw, list):
            walk.error(node, "invalid-type: expected an array")
            return
        seen = set()
        for index, item in enumerate(raw, 1):
            _Leaf.check(self, walk, item, parent, index)
            if _scalar(item):
                if item in seen:
                    walk.error(_Node(self.schema, item, parent, index), "repeated-leaf-list-value")
                seen.add(item)
        _check_cardinality(walk, node, len(raw), self.min_elements, self.max_elements)


def _check_cardinality(walk, node, count, minimum, maximum):
    if count < minimum:
        walk.error(node, "too-few-elements: %d, at least %d" % (count, minimum))
    if maximum is not None and count > maximum:
        walk.error(node, "too-many-elements: %d, at most %d" % (count, maximum))


class _Member(object):
    """A data child as its parent sees it: the checker and the conditions to exist."""
    __slots__ = ("name", "checker", "whens", "chain", "schema")

    def __init__(self, name, checker, whens, chain, schema):
        self.name = name
        self.checker = checker
        self.whens = whens          # _Condition list: own `when` and those of enclosing groups
        self.chain = chain          # ((choice schema, case schema), ...) from outer to inner
        self.schema = schema


class _Object(object):
    """Checker of an object: the root, a container, or a list entry."""
    kind = "object"

    def __init__(self, schema, compiler):
        self.schema = schema
        self.members = {}
        self.required = []          # _Member whose absence is an error (when its whens hold)
        self.choices = {}           # choice schema -> _Choice
        self.musts = [_Condition(m.expression, False, m.error_tag, m.error_message) for m in schema.must]
        self.compiler = compiler
        self._collect(schema, [], ())
        self.simple_members = dict((name, m.checker) for name, m in self.members.items()
                                   if _plain(m) and isinstance(m.checker, _Leaf)
                                   and not isinstance(m.checker, _LeafList) and m.checker.simple)
        self.flat_members = dict((name, m.checker) for name, m in self.members.items()
                                 if _plain(m) and isinstance(m.checker, _Object) and m.checker.flat)

    @property
    def flat(self):
        """Only leaves inside and nothing to evaluate on the container itself: when just its
        simple leaves are present (the usual case) it is checked without building nodes."""
        return (not self.musts and not self.required and not self.choices
                and all(_plain(m) and isinstance(m.checker, _Leaf) and not isinstance(m.checker, _LeafList)
                        for m in self.members.values()))

    def _collect(self, schema, whens, chain):
        for child in schema.children:
            if isinstance(child, (RpcActionNode, NotificationNode)) or child._status == NodeStatus.obsolete:
                continue
            if child.content_type() == ContentType.nonconfig:
                continue    # documents are configuration data (like yangson's ContentType.config)
            if isinstance(child, ChoiceNode):
                choice_whens = whens + ([_Condition(child.when, False)] if child.when else [])
                choice = self.choices.setdefault(child, _Choice(child, chain, choice_whens))
                for case in child.children:
                    case_whens = choice_whens + ([_Condition(case.when, False)] if case.when else [])
                    choice.cases.append(case)
                    self._collect(case, case_whens, chain + ((child, case),))
                continue
            if isinstance(child, (GroupNode, CaseNode)) and not isinstance(child, ContainerNode):
                group_whens = whens + ([_Condition(child.when, False)] if child.when else [])
                self._collect(child, group_whens, chain)
                continue
            own = [_Condition(child.when, True)] if child.when else []
            member = _Member(child.iname(), self.compiler.checker(child), whens + own, chain, child)
            self.members[member.name] = member
            if _is_required(child):
                self.required.append(member)

    def check(self, walk, raw, parent, position=None):
        node = _Node(self.schema, raw, parent, position)
        if raw.__class__ is not dict:
            walk.error(node, "invalid-type: expected an object")
            return
        simple = self.simple_members
        flat = self.flat_members
        members = self.members
        for name, value in raw.items():
            checker = simple.get(name)
            if checker is not None:
                problem = checker.problem(value)
                if problem is not None:
                    walk.error(_Node(checker.schema, value, node), problem)
                continue
            checker = flat.get(name)
            if checker is not None:
                # Inline check of a container of plain leaves (the port containers); anything
                # odd goes through the full check, which reports it.
                if value.__class__ is dict:
                    inner = checker.simple_members
                    for inner_name, inner_value in value.items():
                        leaf = inner.get(inner_name)
                        if leaf is None or leaf.problem(inner_value) is not None:
                            checker.check(walk, value, node)
                            break
                else:
                    checker.check(walk, value, node)
                continue
            member = members.get(name)
            if member is None:
                walk.error(node_path(node).rstrip("/") + "/" + name, "member-not-allowed: no such member here")
                continue
            if member.whens and not self._whens_hold(walk, member, node, present=True):
                walk.error(node_path(node).rstrip("/") + "/" + name,
                           "member-not-allowed: its when condition (%s) is false"
                           % " and ".join(w.text for w in member.whens))
                continue
            if value is None:
                walk.error(_Node(member.schema, value, node), "invalid-type: null is not a value")
                continue
            member.checker.check(walk, value, node)
        for member in self.required:
            if member.chain or member.name in raw:
                continue
            if self._whens_hold(walk, member, node, present=False):
                walk.error(node, "missing-data: expected '%s'" % member.name)
        if self.choices:
            self._check_choices(walk, raw, node)
        for must in self.musts:
            if walk.holds(must, node) is False:
                walk.error(node, _must_message(must))

    def _whens_hold(self, walk, member, node, present):
        for when in member.whens:
            context = _Node(member.schema, None, node) if when.on_self else node
            verdict = walk.holds(when, context)
            if verdict is False:
                return False
            if verdict is None:
                # Unknown here (yangson decides): neither refuse a present member nor demand
                # an absent one.
                return present
        return True

    def _check_choices(self, walk, raw, node):
        for choice in self.choices.values():
            if choice.chain:
                continue    # nested: checked when its enclosing case is active
            choice.check(self, walk, raw, node)


class _Choice(object):
    def __init__(self, schema, chain, whens):
        self.schema = schema
        self.chain = chain
        self.whens = whens
        self.cases = []

    def check(self, owner, walk, raw, node):
        depth = len(self.chain)
        active = {}
        for name in raw:
            member = owner.members.get(name)
            if member is not None and len(member.chain) > depth and member.chain[depth][0] is self.schema:
                active.setdefault(member.chain[depth][1], name)
        if len(active) > 1:
            names = sorted(active.values())
            walk.error(node, "member-not-allowed: %s belong to different cases of choice '%s'"
                       % (" and ".join(names), self.schema.name))
            return
        if not active:
            if self.schema.mandatory and all(walk.holds(w, node) is not False for w in self.whens):
                walk.error(node, "missing-data: expected one case of choice '%s'" % self.schema.name)
            return
        case = next(iter(active))
        for member in owner.required:
            chain = member.chain
            if len(chain) == depth + 1 and chain[depth][1] is case and member.name not in raw:
                if owner._whens_hold(walk, member, node, present=False):
                    walk.error(node, "missing-data: expected '%s'" % member.name)
        for nested in owner.choices.values():
            if len(nested.chain) == depth + 1 and nested.chain[depth][1] is case:
                nested.check(owner, walk, raw, node)


def _plain(member):
    return not member.whens and not member.chain


def _is_required(schema):
    if isinstance(schema, LeafNode):
        return bool(schema.mandatory)
    if isinstance(schema, ContainerNode):
        return bool(schema.mandatory)
    if isinstance(schema, (ListNode, LeafListNode)):
        return schema.min_elements > 0
    return False


class _List(object):
    kind = "list"

    def __init__(self, schema, compiler):
        self.schema = schema
        self.entry = _Object(schema, compiler)
        self.keys = list(schema._key_members)
        # A missing key is reported once, as list-key-missing, not also as missing-data.
        self.entry.required = [m for m in self.entry.required if m.name not in self.keys]
        self.key_checkers = [self.entry.members[k].checker for k in self.keys]
        self.unique = []
        for spec in schema.unique:
            try:
                self.unique.append([_compile_path(path) for path in spec])
            except _Unsupported:
                self.unique.append(None)
        self.min_elements = schema.min_elements
        self.max_elements = schema.max_elements
        self.bulk = False

    def check(self, walk, raw, parent, position=None):
        list_node = _Node(self.schema, raw, parent)
        if not isinstance(raw, list):
            walk.error(list_node, "invalid-type: expected an array")
            return
        seen = {}
        keys = self.keys
        entry_checker = self.entry
        uniques = [dict() for spec in self.unique]
        for position, item in enumerate(raw, 1):
            before_errors = len(walk.errors)
            before_deferred = walk.deferred
            if self.bulk:
                walk.deferred = False
            entry_checker.check(walk, item, parent, position)
            if item.__class__ is not dict:
                continue
            if keys:
                missing = [k for k in keys if k not in item]
                if missing:
                    walk.error(_Node(self.schema, item, parent, position), "list-key-missing: %s" % missing[0])
                else:
                    key = tuple(item[k] for k in keys)
                    try:
                        first = seen.setdefault(key, position)
                    except TypeError:
                        first = position     # an unhashable key: its type error is reported
                    if first != position:
                        walk.error("%s[%d]" % (node_path(list_node), position),
                                   "non-unique-key: the same %s as entry %d" % (
                                       ", ".join("%s=%s" % (k, _key_text(item[k])) for k in keys), first))
            for spec, seen_values in zip(self.unique, uniques):
                if spec is None:
                    walk.deferred = True
                    continue
                node = _Node(self.schema, item, parent, position)
                values = []
                for fn in spec:
                    found = _leaves(fn(node, node))
                    if not found:
                        break
                    values.append(_leaf_string(found[0]))
                else:
                    value = tuple(values)
                    if value in seen_values:
                        walk.error(node, "data-not-unique: same values as entry %d" % seen_values[value])
                    else:
                        seen_values[value] = position
            if self.bulk:
                if walk.deferred and len(walk.errors) == before_errors:
                    walk.bulk_deferred.append((parent, position, item))
                walk.bulk_errors += len(walk.errors) - before_errors
                walk.deferred = before_deferred
        _check_cardinality(walk, list_node, len(raw), self.min_elements, self.max_elements)


class _Any(object):
    """anydata and anyxml: any JSON value; yangson checks nothing inside either."""
    kind = "any"

    def __init__(self, schema):
        self.schema = schema

    def check(self, walk, raw, parent, position=None):
        if isinstance(self.schema, AnydataNode) and not isinstance(raw, dict):
            walk.error(_Node(self.schema, raw, parent), "invalid-type: anydata must be an object")


class _Compiler(object):
    def __init__(self, model):
        self.model = model
        self.bulk_schemas = set()
        for path in BULK_LISTS:
            node = model.get_data_node(path)
            if node is not None:
                self.bulk_schemas.add(node)
        self.root = _Object(model.schema, self)

    def checker(self, schema):
        if isinstance(schema, ListNode):
            checker = _List(schema, self)
            checker.bulk = schema in self.bulk_schemas
            return checker
        if isinstance(schema, ContainerNode):
            return _Object(schema, self)
        if isinstance(schema, LeafListNode):
            return _LeafList(schema)
        if isinstance(schema, LeafNode):
            return _Leaf(schema)
        return _Any(schema)


_checker_cache = {}


def _root_checker(yang_dir=YANG_DIR):
    model = data_model(yang_dir)
    with _model_lock:
        if yang_dir not in _checker_cache:
            _checker_cache[yang_dir] = _Compiler(model)
        return _checker_cache[yang_dir]


# ---------------------------------------------------------------------------- yangson passes

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


def _strip_bulk(value, holders, keep=None):
    """A copy of the document's containers without the bulk lists (or with just `keep` there)."""
    if isinstance(value, dict):
        result = {}
        for name, item in value.items():
            if id(value) in holders and name == holders[id(value)]:
                if keep is not None and keep[0] is value:
                    result[name] = [keep[1]]
                continue
            result[name] = _strip_bulk(item, holders, keep)
        return result
    if isinstance(value, list):
        return [_strip_bulk(item, holders, keep) for item in value]
    return value


def _bulk_holders(doc, checker):
    """{id(container dict): member name} for every bulk list in the document."""
    holders = {}

    def visit(value, shape):
        if not isinstance(value, dict) or not isinstance(shape, _Object):
            return
        for name, item in value.items():
            member = shape.members.get(name)
            if member is None:
                continue
            sub = member.checker
            if isinstance(sub, _List):
                if sub.bulk:
                    holders[id(value)] = name
                    continue
                if isinstance(item, list):
                    for entry in item:
                        visit(entry, sub.entry)
            elif isinstance(sub, _Object):
                visit(item, sub)
    visit(doc, checker.root)
    return holders


# ---------------------------------------------------------------------------- API

def validate(doc, yang_dir=YANG_DIR):
    """Every error of an RFC 7951 JSON document, as a list of (path, message); [] when valid."""
    compiler = _root_checker(yang_dir)
    walk = _Walk()
    enabled = gc.isenabled()
    gc.disable()    # a million small objects are walked, none of them in a cycle
    try:
        if not isinstance(doc, dict):
            return [("/", "invalid-type: a document is a JSON object")]
        compiler.root.check(walk, doc, None)
    finally:
        if enabled:
            gc.enable()
    errors = list(walk.errors)
    skeleton_errors = len(errors) - walk.bulk_errors
    holders = _bulk_holders(doc, compiler)
    if skeleton_errors == 0:
        # yangson on everything but the sessions: what the compiled checks leave to it.
        seen = set(errors)
        for error in yangson_errors(_strip_bulk(doc, holders), yang_dir):
            if error not in seen:
                errors.append(error)
                seen.add(error)
        for parent, position, item in walk.bulk_deferred:
            holder = parent.value
            for error in yangson_errors(_strip_bulk(doc, holders, (holder, item)), yang_dir):
                if error not in seen:
                    errors.append(error)
                    seen.add(error)
    return errors


def read_json(path):
    """A JSON document from a .json or .json.gz file."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as handle:
        return json.loads(handle.read())


def validate_file(path, yang_dir=YANG_DIR):
    """validate() for a .json or .json.gz file; a file that is not JSON is one error."""
    try:
        doc = read_json(path)
    except (OSError, ValueError) as exc:
        return [("/", "cannot read %s: %s" % (path, exc))]
    return validate(doc, yang_dir)
