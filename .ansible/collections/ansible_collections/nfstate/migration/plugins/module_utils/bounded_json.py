# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a JSON state document (plain or gzip) with bounds checked before anything can grow.

Runs on the controller and on managed hosts: standard library only. A document is refused, with
the file's name and what is wrong, when

- it expands beyond `max_bytes` (default: BYTES_PER_SESSION per session of `max_sessions`, plus
  room for the rules); gzip is decompressed as a stream and reading stops at the ceiling, so a
  small file that would expand to gigabytes costs no more than the ceiling;
- it holds a run of more than MAX_STRING bytes without a string delimiter: a huge string, number
  or padding; found while decompressing, so a bomb made of one long string stops at once;
- it holds a string whose JSON text is longer than MAX_STRING bytes (escapes and all);
- it holds more than VALUES_PER_SESSION values per session (found while decompressing too), or
  nests deeper than MAX_DEPTH;
- it is not JSON, not UTF-8, uses NaN or Infinity, repeats a member name in an object, or is not
  a JSON object at the top.

Every check before parsing runs over the bytes at C speed (find, count, translate); json.loads
then parses what is known to be bounded. The session limit is the caller's, or the environment's
NFSTATE_MAX_SESSIONS, or DEFAULT_MAX_SESSIONS.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gc
import json
import os
import re
import zlib
from collections import namedtuple
from itertools import accumulate

# The nf_conntrack_max a Linux host with 4 GiB of memory or more starts with: a document holds
# at most the sessions of one table. Raise it with max_sessions or NFSTATE_MAX_SESSIONS.
DEFAULT_MAX_SESSIONS = 262144
MAX_SESSIONS_VARIABLE = "NFSTATE_MAX_SESSIONS"
# A session takes 700 to 1,100 bytes of compact JSON (the largest: IPv6, twice NAT, labels, every
# TCP flag) and up to about 1.7 KiB indented as json.dumps(indent=2) writes it.
BYTES_PER_SESSION = 2048
# Room for what is not a session: the instance, its metadata and its rules.
BYTES_BESIDES_SESSIONS = 16 << 20
# The model's longest strings are host names (inet:host, 255 octets) and instance names; 64 KiB
# leaves room for any name and stops a string that would grow without bound.
MAX_STRING = 65536
# Documents nest 9 levels deep (nat, instances, instance, mapping-table, mapping-entry, entry,
# tcp, original, ...); rules a few more.
MAX_DEPTH = 32
# A session holds 20 to 26 JSON values (counted by their commas); rules and metadata are counted
# in the margin.
VALUES_PER_SESSION = 48
VALUES_BESIDES_SESSIONS = 1 << 20

CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_QUOTE = b'"'
# Everything but brackets and backslashes: deleted by translate() to count those fast.
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b"[]{}\\")))
_SIGNED_DEPTH = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)

JsonFile = namedtuple("JsonFile", ["document", "bytes_raw", "bytes_stored", "compressed"])


class DocumentReadError(ValueError):
    """The file cannot be read as a bounded JSON document; the message names the file and why."""

    def __init__(self, path, problem):
        self.path = path
        self.problem = problem
        ValueError.__init__(self, "%s: %s" % (path, problem))


class Limits(namedtuple("Limits", ["max_sessions", "max_bytes", "max_string", "max_depth", "max_values"])):
    """The bounds one read enforces (see the module's docstring)."""

    __slots__ = ()


def max_sessions_default():
    """NFSTATE_MAX_SESSIONS when set to a positive integer, else DEFAULT_MAX_SESSIONS."""
    value = os.environ.get(MAX_SESSIONS_VARIABLE, "").strip()
    if value:
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number <= 0:
            raise ValueError("%s must be a positive integer, not %r" % (MAX_SESSIONS_VARIABLE, value))
        return number
    return DEFAULT_MAX_SESSIONS


def limits(max_sessions=None, max_bytes=None):
    """The bounds for documents of at most `max_sessions` sessions (default: max_sessions_default)."""
    sessions = max_sessions_default() if max_sessions is None else int(max_sessions)
    if sessions <= 0:
        raise ValueError("max_sessions must be positive, not %r" % (max_sessions,))
    return Limits(
        max_sessions=sessions,
        max_bytes=int(max_bytes) if max_bytes else sessions * BYTES_PER_SESSION + BYTES_BESIDES_SESSIONS,
        max_string=MAX_STRING,
        max_depth=MAX_DEPTH,
        max_values=sessions * VALUES_PER_SESSION + VALUES_BESIDES_SESSIONS,
    )


def _size(count):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return "%.1f %s" % (count / float(1 << shift), unit)
    return "%d bytes" % count


class _StreamWatch(object):
    """Bounds checked on the bytes as they stream in, chunk by chunk.

    Values: counted by their commas. Runs: the bytes since the last quote; a run longer than a
    chunk always crosses a chunk boundary, so two finds per chunk bound every run to limit + CHUNK."""

    def __init__(self, bounds):
        self.limit = bounds.max_string
        self.bounds = bounds
        self.values = 0
        self.run = 0
        self.offset = 0

    def feed(self, chunk):
        self.values += chunk.count(b",")
        if self.values > self.bounds.max_values:
            raise _Refused("holds more than %d values, more than %d sessions could (%d per session)"
                           % (self.bounds.max_values, self.bounds.max_sessions, VALUES_PER_SESSION))
        first = chunk.find(_QUOTE)
        if first < 0:
            self.run += len(chunk)
            self._check(chunk, len(chunk))
        else:
            self.run += first
            self._check(chunk, first)
            self.run = len(chunk) - chunk.rfind(_QUOTE) - 1
            self._check(chunk, len(chunk))
        self.offset += len(chunk)

    def _check(self, chunk, end):
        if self.run <= self.limit:
            return
        where = self.offset + end
        if chunk.count(b"[") + chunk.count(b"{") > len(chunk) // 2:
            raise _Refused("nests deeper than the %d levels a state document may (a run of brackets before byte %d)"
                           % (MAX_DEPTH, where))
        raise _Refused("holds more than %s without a string delimiter before byte %d: a string, number or "
                       "padding longer than the model allows (%s)" % (_size(self.run), where, _size(self.limit)))


class _Refused(Exception):
    pass


class _CompressedSize(object):
    """The size the bytes would take as gzip (level 6), counted as they stream by."""

    def __init__(self):
        self.packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        self.size = 0

    def feed(self, chunk):
        self.size += len(self.packer.compress(chunk))

    def total(self):
        return self.size + len(self.packer.flush())


def _read_bytes(handle, bounds, gzipped, sizer=None):
    """The file's expanded bytes and its stored size, refused as soon as a bound is crossed."""
    data = bytearray()
    watch = _StreamWatch(bounds)
    inflater = zlib.decompressobj(wbits=31) if gzipped else None
    stored = 0

    def take(piece):
        if len(data) + len(piece) > bounds.max_bytes:
            raise _Refused("expands beyond %s, the ceiling for %d sessions (raise max_sessions or %s for a larger "
                           "table)" % (_size(bounds.max_bytes), bounds.max_sessions, MAX_SESSIONS_VARIABLE))
        watch.feed(piece)
        if sizer is not None:
            sizer.feed(piece)
        data.extend(piece)

    while True:
        block = handle.read(CHUNK)
        if not block:
            break
        stored += len(block)
        if inflater is None:
            take(block)
            continue
        while block:
            if inflater.eof:
                # A gzip file may hold several members, one after the other.
                inflater = zlib.decompressobj(wbits=31)
            # At most CHUNK expanded bytes at a time: reading stops within a chunk of the ceiling.
            take(inflater.decompress(block, CHUNK))
            block = inflater.unconsumed_tail or inflater.unused_data
    if inflater is not None:
        take(inflater.flush())
        if not inflater.eof:
            raise _Refused("is a truncated gzip stream")
    return data, stored


def _check_structure(data, bounds):
    """Depth and string lengths, over the bytes."""
    structure = data.translate(None, _NOT_STRUCTURE)
    brackets = structure.translate(None, b"\\").translate(_SIGNED_DEPTH)
    if brackets:
        # Brackets inside strings are counted too: a document of ours holds none.
        depth = max(accumulate(memoryview(brackets).cast("b")))
        if depth > bounds.max_depth:
            raise _Refused("nests %d levels deep, more than the %d a state document may" % (depth, bounds.max_depth))
    if b"\\" in structure:
        # Escaped characters hide quotes from the run watch: measure every string exactly.
        for match in _STRING.finditer(data):
            if match.end() - match.start() - 2 > bounds.max_string:
                raise _Refused("holds a string of %s at byte %d, longer than the model allows (%s)"
                               % (_size(match.end() - match.start() - 2), match.start(), _size(bounds.max_string)))


def _unique_members(pairs):
    document = dict(pairs)
    if len(document) != len(pairs):
        seen = set()
        for name, _value in pairs:
            if name in seen:
                raise _Refused("member %r appears twice in one object (JSON names must be unique)" % name)
            seen.add(name)
    return document


def _no_constant(name):
    raise _Refused("%s is not a JSON value" % name)


def _parse(data, bounds):
    """The document in `data` (a bytearray, emptied on the way to keep the peak low)."""
    _check_structure(data, bounds)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Refused("is not UTF-8 text: %s" % error)
    data.clear()
    # A million small objects are built, none of them in a cycle: the collector would walk them
    # again and again (it doubles the time of a 100k-session document).
    collecting = gc.isenabled()
    gc.disable()
    try:
        document = json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_constant)
    except RecursionError:
        raise _Refused("nests too deeply to parse (more than %d levels)" % bounds.max_depth)
    except ValueError as error:
        raise _Refused("is not JSON: %s" % error)
    finally:
        if collecting:
            gc.enable()
    if not isinstance(document, dict):
        raise _Refused("is not a JSON object but %s" % type(document).__name__)
    return document


def loads(data, max_sessions=None, what="the document"):
    """A document from JSON bytes already in memory, under the same bounds as read(); `what`
    names it in a DocumentReadError."""
    bounds = limits(max_sessions)
    try:
        if len(data) > bounds.max_bytes:
            raise _Refused("is %s, beyond the ceiling of %s for %d sessions"
                           % (_size(len(data)), _size(bounds.max_bytes), bounds.max_sessions))
        watch = _StreamWatch(bounds)
        buffer = bytearray(data)
        for start in range(0, len(buffer), CHUNK):
            watch.feed(bytes(buffer[start:start + CHUNK]))
        return _parse(buffer, bounds)
    except _Refused as refused:
        raise DocumentReadError(what, str(refused))


def read(path, max_sessions=None, max_bytes=None, measure_compressed=False):
    """JsonFile(document, bytes_raw, bytes_stored, compressed) of a .json or .json.gz file.

    gzip is recognised by its magic bytes or a name ending in .gz. bytes_raw is the expanded
    size; compressed is the gzip size (the file's for gzip, else measured when
    measure_compressed, else None). Raises DocumentReadError (a ValueError) naming the file and
    the problem; OSError when the file cannot be opened.
    """
    bounds = limits(max_sessions, max_bytes)
    path = os.fspath(path)
    with open(path, "rb") as handle:
        head = handle.read(2)
        handle.seek(0)
        gzipped = head == _GZIP_MAGIC or path.endswith(".gz")
        sizer = _CompressedSize() if measure_compressed and not gzipped else None
        try:
            data, stored = _read_bytes(handle, bounds, gzipped, sizer)
            raw = len(data)
            document = _parse(data, bounds)
        except zlib.error as error:
            raise DocumentReadError(path, "is not valid gzip: %s" % error)
        except _Refused as refused:
            raise DocumentReadError(path, str(refused))
    compressed = stored if gzipped else (sizer.total() if sizer is not None else None)
    return JsonFile(document, raw, stored, compressed)
