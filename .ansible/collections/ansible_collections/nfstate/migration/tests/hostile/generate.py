# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostile-documents corpus: state documents that must be refused, each with the reason.

    python tests/hostile/generate.py DIR      # write every item into DIR and list them

Nothing here is committed as a file: every item is built when needed (the bombs in a fraction of a
second, as repeated gzip members). tests/unit/test_hostile_corpus.py runs each one through the
controller's validation (validation.read_controller_document, then yang_model.validate) and through
the host's reading and checking (resources/nat_sessions: read_document, then document_sessions, before the
kernel is touched) and asserts that both refuse it with a message matching `reason`, and where
the item names one, at `where`.

BOUNDARY holds the values at the very edges of their ranges (ports 0 and 65535, lifetimes 0 and
2^32-1, ...): they are legitimate, both sides accept them, and the test says so, so that the
bounds are exact rather than off by one. A lifetime of 0 is a session about to expire: it is
accepted and let go (counted as expired) when applied; the kernel caps a longer timeout itself.
"""

import copy
import gzip
import json
import os
import sys
import zlib
from collections import namedtuple

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    # The checkout, importable as ansible_collections.nfstate.migration:
    import conftest  # noqa: F401  pylint: disable=unused-import

from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import instance  # noqa: E402
from ansible_collections.nfstate.migration.tests.unit.builders import (  # noqa: E402
    ENTRY,
    INSTANCE,
    mapping_entries_of,
    mutated_entry,
    sample_entries,
    snapshot_document,
)

# name: what the item is; build(path) writes it; reason: a regular expression both refusals match;
# where: the path of the refused node, when there is one; max_sessions: the limit the item is
# read with (None: the default).
Item = namedtuple("Item", ["name", "build", "reason", "where", "max_sessions"])

GIB = 1 << 30
MIB = 1 << 20


def _good():
    return snapshot_document(sample_entries())


def _text(doc):
    return json.dumps(doc, separators=(",", ":"))


def _write(path, data):
    with open(path, "wb") as handle:
        handle.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _repeated_gzip(path, head, unit, size, tail):
    """gzip of head + unit * (size / len(unit)) + tail, as repeated members: a bomb in a moment."""
    block = unit * max(1, (4 * MIB) // len(unit))
    member = gzip.compress(block, 9, mtime=0)
    with open(path, "wb") as out:
        out.write(gzip.compress(head, mtime=0))
        for dummy in range(max(1, size // len(block))):
            out.write(member)
        out.write(gzip.compress(tail, mtime=0))
    return path


def write_bomb(path, size):
    """One gzip member (level 1, as `gzip -1` makes it) expanding to an instance name of `size`
    bytes: the bomb of issue 11 (14 MB of gzip, 3 GB of JSON) for size=3 GiB."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"A" * (16 * MIB)
    with open(path, "wb") as out:
        out.write(packer.compress(b'{"ietf-nat:nat":{"instances":{"instance":[{"id":1,"name":"'))
        left = size
        while left > 0:
            out.write(packer.compress(chunk[:left]))
            left -= len(chunk)
        out.write(packer.compress(b'"}]}}}') + packer.flush())
    return path


def _file(text_of):
    def build(path):
        return _write(path, text_of())
    return build


def _document(change):
    """A file of the sample document changed by change(doc)."""
    def text():
        doc = _good()
        change(doc)
        return _text(doc)
    return _file(text)


def _entry(name, position=0):
    """A file of the sample document whose entry at `position` has ENTRY_MUTATIONS[name]."""
    def change(doc):
        entries = mapping_entries_of(doc)
        changed = mutated_entry(entries[position], name)
        assert changed is not None, (name, position)
        entries[position] = changed
    return _document(change)


def _set_entry(position, **members):
    def change(doc):
        mapping_entries_of(doc)[position].update(dict((k.replace("_", "-"), v) for k, v in members.items()))
    return _document(change)


def _duplicate_session(doc):
    entries = mapping_entries_of(doc)
    twin = copy.deepcopy(entries[0])
    twin["index"] = 99
    twin["lifetime"] = 5
    entries.append(twin)


def _second_instance(doc):
    second = copy.deepcopy(instance(doc))
    second["id"] = 2
    doc["ietf-nat:nat"]["instances"]["instance"].append(second)


def _replace_in_text(old, new, count=1):
    def text():
        result = _text(_good())
        assert old in result
        return result.replace(old, new, count)
    return _file(text)


def _hidden_depth():
    # Closing brackets inside a string cancel the opening ones of the nesting for the byte count;
    # the parser's own limit still refuses it, with our message.
    levels = 50000
    return '{"ietf-nat:nat":{"x":"%s","y":%s1%s}}' % ("]" * levels, '["",' * levels, "]" * levels)


def _values():
    return '{"ietf-nat:nat":{"x":[%s]}}' % ",".join(['""'] * 1200000)


E1 = ENTRY % 1
OUT_OF_RANGE = r"out of range|expected an integer"

CORPUS = [
    # Bombs and bounds: refused by the reader, the same on both sides, before parsing.
    Item("gzip bomb: 14 MB of gzip, a 3 GiB instance name", lambda p: write_bomb(p, 3 * GIB),
         r"without a string delimiter.*longer than the model allows", None, None),
    Item("gzip bomb: repeated members, 3 GiB of one string",
         lambda p: _repeated_gzip(p, b'{"ietf-nat:nat":{"instances":{"instance":[{"id":1,"name":"', b"A" * 4096,
                                  3 * GIB, b'"}]}}}'),
         r"without a string delimiter", None, None),
    Item("gzip bomb: 1 GiB of small valid-looking objects",
         lambda p: _repeated_gzip(p, b'{"ietf-nat:nat":{"x":[', b'{"index":1},', GIB, b'{}]}}'),
         r"holds more than \d+ values, more than 1000 sessions could", None, 1000),
    Item("gzip bomb: 1 GiB of strings each within bounds",
         lambda p: _repeated_gzip(p, b'{"ietf-nat:nat":{"x":[', b'"' + b"a" * 60000 + b'",', GIB, b'""]}}'),
         r"expands beyond .* the ceiling for 1000 sessions", None, 1000),
    Item("more sessions than the limit", _file(lambda: _text(_good())),
         r"holds 10 sessions, more than the limit of 5", None, 5),
    Item("a 1 MiB instance name", _document(lambda d: instance(d).update({"name": "n" * MIB})),
         r"without a string delimiter", None, None),
    Item("a 100k-character string of escaped quotes", _document(lambda d: instance(d).update({"name": '"' * 100000})),
         r"holds a string of .* longer than the model allows", None, None),
    Item("a number of 100,000 digits", _replace_in_text('"lifetime":431999', '"lifetime":1' + "0" * 100000),
         r"without a string delimiter", None, None),
    Item("1 MiB of padding", _file(lambda: "{" + " " * MIB + '"ietf-nat:nat":{}}'),
         r"without a string delimiter", None, None),
    Item("nesting 100 levels deep", _file(lambda: '{"ietf-nat:nat":' + '{"a":' * 100 + "1" + "}" * 101),
         r"nests 10\d levels deep, more than the 32", None, None),
    Item("nesting 100,000 brackets deep", _file(lambda: '{"ietf-nat:nat":' + "[" * 100000 + "]" * 100000 + "}"),
         r"nests deeper than the 32 levels", None, None),
    Item("nesting hidden by brackets in a string", _file(_hidden_depth),
         r"nests too deeply to parse", None, None),
    Item("more values than sessions could hold", _file(_values),
         r"holds more than \d+ values, more than 1 sessions could", None, 1),
    Item("a duplicate member at the top", _file(lambda: _text(_good())[:-1] + ',"ietf-nat:nat":{}}'),
         r"member 'ietf-nat:nat' appears twice", None, None),
    Item("a duplicate member in a session", _replace_in_text('"lifetime":431999', '"lifetime":431999,"lifetime":5'),
         r"member 'lifetime' appears twice", None, None),
    Item("truncated JSON", _file(lambda: _text(_good())[:-7]), r"is not JSON", None, None),
    Item("truncated gzip", lambda p: _write(p, gzip.compress(_text(_good()).encode())[:-40]),
         r"truncated gzip|not valid gzip", None, None),
    Item("not gzip although named .gz", lambda p: _write(p[:-len(".json")] + ".json.gz", b"\x1f\x8bnot gzip at all"),
         r"not valid gzip", None, None),
    Item("NaN as a lifetime", _replace_in_text('"lifetime":431999', '"lifetime":NaN'),
         r"NaN is not a JSON value", None, None),
    Item("bytes that are not UTF-8", lambda p: _write(p, _text(_good()).encode().replace(b"edge-nat", b"edge-\xff\xfe")),
         r"is not UTF-8", None, None),
    Item("an array at the top", _file(lambda: "[" + _text(_good()) + "]"), r"is not a JSON object", None, None),
    Item("an empty file", _file(lambda: ""), r"is not JSON", None, None),
    # Shape and types: refused by the model on the controller and by the strict checker on the host.
    Item("two instances", _document(_second_instance), r"expected exactly one NAT instance, found 2",
         "/ietf-nat:nat/instances/instance", None),
    Item("instances as a string", _document(lambda d: d["ietf-nat:nat"].update({"instances": "all"})),
         r"not a NAT state document", "/ietf-nat:nat/instances/instance", None),
    Item("mapping entries as an object", _document(lambda d: instance(d)["mapping-table"].update({"mapping-entry": {}})),
         r"expected a list", INSTANCE + "/mapping-table/mapping-entry", None),
    Item("a lifetime as text", _entry("number as text"), r"expected an integer", E1 + "/lifetime", None),
    Item("a lifetime as a boolean", _entry("number as boolean"), r"expected an integer", E1 + "/lifetime", None),
    Item("a session as a list", _entry("entry not an object"), r"expected an object",
         INSTANCE + "/mapping-table/mapping-entry[1]", None),
    Item("ports as a number", _entry("ports not an object"), r"expected an object", E1 + "/internal-src-port", None),
    Item("an unknown member in a session", _entry("unknown member"), r"unknown member", E1 + "/foo", None),
    Item("a 60 KB address", _set_entry(0, internal_src_address="1" * 60000), r"characters cut.*is not a prefix",
         E1 + "/internal-src-address", None),
    # Sessions that must not be applied.
    Item("an untranslated session: the host's own connection", _entry("untranslated"),
         r"untranslated: .*connection of the host itself", E1, None),
    Item("an address of the other family", _entry("address of the other family"), r"mixes IPv4 and IPv6",
         E1 + "/external-dst-address", None),
    Item("ICMP (1) with IPv6 addresses", _entry("icmp protocol of the other family", 7), r"ICMP is protocol 1 with IPv4",
         ENTRY % 8 + "/transport-protocol", None),
    Item("a network prefix as a session address", _entry("network prefix"), r"host prefix", E1 + "/internal-dst-address", None),
    Item("a port range", _entry("port range"), r"one port, not a range", E1 + "/internal-src-port/end-port-number", None),
    Item("a static mapping", _entry("static mapping"), r"static mapping is configuration", E1 + "/type", None),
    Item("a protocol beyond uint8 (256)", _entry("protocol out of range"), r"256 is out of range 0..255",
         E1 + "/transport-protocol", None),
    Item("a port of 65536", _set_entry(0, internal_src_port={"start-port-number": 65536}), r"65536 is out of range 0..65535",
         E1 + "/internal-src-port/start-port-number", None),
    Item("a port of -1", _entry("port negative"), r"-1 is out of range 0..65535",
         E1 + "/external-src-port/start-port-number", None),
    Item("a lifetime of 2^32", _entry("lifetime beyond uint32"), r"4294967296 is out of range 0..4294967295",
         E1 + "/lifetime", None),
    Item("a lifetime of -1", _entry("lifetime negative"), r"-1 is out of range", E1 + "/lifetime", None),
    Item("no lifetime", _entry("lifetime missing"), r"missing: the remaining timeout", E1 + "/lifetime", None),
    Item("a mark of 2^32", _entry("mark beyond uint32"), OUT_OF_RANGE, E1 + "/nfstate-nat:mark", None),
    Item("a zone of 65536", _set_entry(0, **{"nfstate-nat:zone": 65536}), r"65536 is out of range 0..65535",
         E1 + "/nfstate-nat:zone", None),
    Item("a window scale of 15", _entry("window scale beyond 14"), r"15 is out of range 0..14",
         E1 + "/nfstate-nat:tcp/original/window-scale", None),
    Item("removed as true", _entry("removed not empty"), r"an empty leaf is written \[null\]", E1 + "/nfstate-nat:removed", None),
    Item("a duplicate index", _document(lambda d: mapping_entries_of(d)[1].update({"index": 1})), r"duplicate index 1",
         INSTANCE + "/mapping-table/mapping-entry[2]", None),
    Item("a duplicate session under another index", _document(_duplicate_session),
         r"the same session as mapping-entry index 1", ENTRY % 99, None),
]

# (name, member updates of the first sample entry, a TCP source NAT): legitimate edges, accepted.
BOUNDARY = [
    ("ports 0 and 65535", {"internal-src-port": {"start-port-number": 0}, "external-dst-port": {"start-port-number": 65535},
                           "internal-dst-port": {"start-port-number": 65535}}),
    ("lifetime 0 (about to expire)", {"lifetime": 0}),
    ("lifetime 2^32-1", {"lifetime": 4294967295}),
    ("mark 2^32-1 and zone 65535", {"nfstate-nat:mark": 4294967295, "nfstate-nat:zone": 65535}),
    ("index 0 and window scales 0 and 14", {"index": 0, "nfstate-nat:tcp": {
        "state": "established", "original": {"window-scale": 0}, "reply": {"window-scale": 14}}}),
]


def boundary_document(members):
    doc = _good()
    mapping_entries_of(doc)[0].update(copy.deepcopy(members))
    return doc


def file_name(position, item):
    slug = "".join(c if c.isalnum() else "-" for c in item.name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return "%02d-%s.json" % (position, slug[:48])


def build(directory, position, item):
    """Write the item into `directory`; the path of the file written."""
    return item.build(os.path.join(directory, file_name(position, item)))


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus"
    os.makedirs(directory, exist_ok=True)
    for position, item in enumerate(CORPUS, 1):
        path = build(directory, position, item)
        sys.stdout.write("%-60s %10d  %s\n" % (os.path.basename(path), os.path.getsize(path), item.reason))


if __name__ == "__main__":
    main()
