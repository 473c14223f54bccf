# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting for a released source to go quiet before its sessions are deleted.

After the addresses moved, packets may still reach the source for a while: neighbours whose cache
still points at its MAC address (an entry that is not yet stale, a static one) keep sending there.
As long as the source holds the sessions it forwards them, translated as before; once it deleted
them, such a packet meets no session and is forwarded untranslated or answered with a reset. So the
cleanup waits until the kernel's own count of forwarded packets (the IP-MIB ForwDatagrams counters
of IPv4 and IPv6, kept per network namespace) has not moved for a quiet interval, or until a grace
period has passed, whichever comes first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

SNMP = "/proc/net/snmp"
SNMP6 = "/proc/net/snmp6"


def parse_snmp_forwarded(text):
    """ForwDatagrams from /proc/net/snmp (a header line and a value line per protocol)."""
    lines = [line.split() for line in text.splitlines() if line.startswith("Ip:")]
    if len(lines) < 2 or "ForwDatagrams" not in lines[0]:
        raise ValueError("no Ip ForwDatagrams in %s" % SNMP)
    return int(lines[1][lines[0].index("ForwDatagrams")])


def parse_snmp6_forwarded(text):
    """Ip6OutForwDatagrams from /proc/net/snmp6 (one name and value per line)."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "Ip6OutForwDatagrams":
            return int(fields[1])
    raise ValueError("no Ip6OutForwDatagrams in %s" % SNMP6)


def forwarded_packets(snmp=SNMP, snmp6=SNMP6):
    """Packets this host has forwarded so far, IPv4 and IPv6 (IPv6 counts only if it is enabled)."""
    with open(snmp) as handle:
        total = parse_snmp_forwarded(handle.read())
    try:
        with open(snmp6) as handle:
            total += parse_snmp6_forwarded(handle.read())
    except (IOError, OSError):
        pass
    return total


def wait_quiet(read, quiet, grace, interval=0.1, clock=time.monotonic, sleep=time.sleep):
    """Poll read() until its value has not changed for `quiet` seconds, at most `grace` seconds.

    Returns a dict: quiet (True when the interval was reached), waited (seconds), forwarded (how far
    the counter moved meanwhile), last_packet (seconds after the start the counter last moved, or
    None if it never did)."""
    start = clock()
    first = last = read()
    changed_at = start
    moved = False
    while True:
        now = clock()
        if now - changed_at >= quiet:
            reached = True
            break
        if now - start >= grace:
            reached = False
            break
        sleep(interval)
        value = read()
        if value != last:
            last = value
            changed_at = clock()
            moved = True
    return {"quiet": reached, "waited": round(clock() - start, 3), "forwarded": last - first,
            "last_packet": round(changed_at - start, 3) if moved else None}
