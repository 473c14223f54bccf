# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turn the moments a migration noted into its report, as data and as lines a person reads."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: migration_report
short_description: Build the report of a NAT migration from its phase marks and transfers
version_added: 0.1.0
author: nfstate.migration contributors (!UNKNOWN)
description:
  - Used by the C(nfstate.migration.migrate_nat) playbook. Computes each phase's duration, the freeze
    window (from the moment the source stopped taking new sessions to the end of the redirect) and the
    bytes moved, raw and compressed.
positional: transfers, extra
options:
  _input:
    description: The phase marks, a list of C({phase, at}) with C(at) in seconds since the epoch, in order.
    type: list
    elements: dict
    required: true
  transfers:
    description: Per snapshot (C(precopy), C(delta)), its C(sessions), C(rules), C(bytes_raw) and C(bytes_compressed).
    type: dict
    required: true
  extra:
    description: Anything else to carry into the report (hosts, counts, the redirect gap).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Build the report
  ansible.builtin.set_fact:
    report: "{{ nfstate_marks | nfstate.migration.migration_report(nfstate_transfers, {'source': 'nat-a'}) }}"
"""

RETURN = r"""
_value:
  description: The report, with C(phases) (name and seconds), C(total_seconds), C(freeze_window_seconds), C(bytes) and C(transfers).
  type: dict
"""


def migration_report(marks, transfers, extra=None):
    phases = []
    for before, after in zip(marks, marks[1:]):
        phases.append({"phase": after["phase"], "seconds": round(float(after["at"]) - float(before["at"]), 3)})
    moments = dict((m["phase"], float(m["at"])) for m in marks)
    report = dict(extra or {})
    report["phases"] = phases
    report["total_seconds"] = round(float(marks[-1]["at"]) - float(marks[0]["at"]), 3) if marks else 0.0
    if "pre-copy" in moments and "redirect" in moments:
        # New connections wait from the freeze, which follows the pre-copy, until the target serves.
        report["freeze_window_seconds"] = round(moments["redirect"] - moments["pre-copy"], 3)
    report["transfers"] = transfers
    report["bytes"] = {
        "raw": sum(int(t.get("bytes_raw", 0)) for t in transfers.values()),
        "compressed": sum(int(t.get("bytes_compressed", 0)) for t in transfers.values()),
    }
    return report


def migration_report_lines(report):
    """The report as short lines: one per phase, then what moved."""
    lines = ["%-10s %8.3f s" % (p["phase"], p["seconds"]) for p in report.get("phases", [])]
    lines.append("%-10s %8.3f s" % ("total", report.get("total_seconds", 0.0)))
    for name, moved in sorted(report.get("transfers", {}).items()):
        lines.append("%-10s %d sessions, %d rules, %s raw, %s compressed" % (
            name, moved.get("sessions", 0), moved.get("rules", 0),
            _size(moved.get("bytes_raw", 0)), _size(moved.get("bytes_compressed", 0))))
    for key, label in (("delta_removed", "ended during the migration"),):
        if key in report:
            lines.append("%-10s %d sessions %s" % ("", report[key], label))
    expectations = report.get("expectations")
    if expectations and any(expectations.values()):
        lines.append("ALG expectations: %s" % ", ".join(
            "%d in the %s" % (count, name) for name, count in sorted(expectations.items())))
    if report.get("unsupported_sessions"):
        lines.append("not carried: %d session(s) that cannot be re-created elsewhere, e.g. %s" % (
            len(report["unsupported_sessions"]), report["unsupported_sessions"][0]))
    if "freeze_window_seconds" in report:
        lines.append("freeze window (new connections wait): %.3f s" % report["freeze_window_seconds"])
    cutover = report.get("cutover")
    if cutover:
        lines.append("freeze window by the cutover's clock: %.1f ms (%s)" % (cutover["window_ms"], ", ".join(
            "%s %.1f" % (name, ms) for name, ms in sorted(cutover["parts_ms"].items(), key=lambda item: item[1]))))
    if report.get("redirect_gap_ms") is not None:
        lines.append("redirect gap (address move and announcement): %.1f ms" % float(report["redirect_gap_ms"]))
    return lines


def _size(count):
    count = int(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return ("%d %s" % (count, unit)) if unit == "B" else ("%.1f %s" % (count, unit))
        count /= 1024.0
    return str(count)


def fleet_pairs(sources, hostvars):
    """The pairs of a fleet: each source with the target its host variable nfstate_migrate_to names."""
    return [{"source": source, "target": (hostvars.get(source) or {}).get("nfstate_migrate_to", "")}
            for source in sources]


def fleet_entry(hostvars):
    """One pair's line of a fleet summary, from its source's host variables."""
    report = hostvars.get("nfstate_pair_report") or {}
    entry = {
        "source": hostvars.get("nfstate_source"),
        "target": hostvars.get("nfstate_target"),
        "outcome": hostvars.get("nfstate_outcome"),
        "snapshots": hostvars.get("nfstate_run_dir"),
    }
    if entry["outcome"] == "rolled back":
        entry["failure"] = hostvars.get("nfstate_failure")
    if report:
        cutover = report.get("cutover") or {}
        entry.update(sessions=report.get("sessions"), bytes=report.get("bytes"),
                     freeze_window_ms=cutover.get("window_ms"), total_seconds=report.get("total_seconds"))
    return entry


def fleet_lines(entries):
    """The fleet summary as lines a person reads: one per pair."""
    counts = {}
    for entry in entries:
        counts[entry.get("outcome")] = counts.get(entry.get("outcome"), 0) + 1
    lines = ["%d pair(s): %s" % (len(entries), ", ".join(
        "%d %s" % (counts[outcome], outcome) for outcome in ("migrated", "already migrated", "rolled back", "not attempted")
        if outcome in counts))]
    for entry in entries:
        line = "%s -> %s: %s" % (entry.get("source"), entry.get("target"), entry.get("outcome"))
        if entry.get("freeze_window_ms") is not None:
            line += ", window %.1f ms, %s sessions, %s compressed" % (
                entry["freeze_window_ms"], entry.get("sessions"), _size((entry.get("bytes") or {}).get("compressed", 0)))
        if entry.get("failure"):
            line += " (%s)" % entry["failure"][:300]
        lines.append(line)
    return lines


class FilterModule(object):

    def filters(self):
        return {
            "migration_report": migration_report,
            "migration_report_lines": migration_report_lines,
            "fleet_pairs": fleet_pairs,
            "fleet_entry": fleet_entry,
            "fleet_lines": fleet_lines,
        }
