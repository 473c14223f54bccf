"""The migration report: phase durations, the freeze window, bytes moved, and its readable lines."""

from ansible_collections.nfstate.migration.plugins.filter.migration_report import (
    migration_report,
    migration_report_lines,
)

MARKS = [
    {"phase": "start", "at": 100.0},
    {"phase": "preflight", "at": 103.5},
    {"phase": "pre-copy", "at": 110.0},
    {"phase": "freeze", "at": 110.4},
    {"phase": "delta", "at": 112.0},
    {"phase": "redirect", "at": 112.5},
    {"phase": "release", "at": 113.0},
    {"phase": "cleanup", "at": 115.0},
]
TRANSFERS = {
    "precopy": {"sessions": 1000, "rules": 8, "bytes_raw": 800000, "bytes_compressed": 20000},
    "delta": {"sessions": 12, "rules": 0, "bytes_raw": 9000, "bytes_compressed": 700},
}


def test_phases_last_from_one_mark_to_the_next():
    report = migration_report(MARKS, TRANSFERS)
    assert [p["phase"] for p in report["phases"]] == [m["phase"] for m in MARKS[1:]]
    assert report["phases"][0]["seconds"] == 3.5
    assert report["total_seconds"] == 15.0


def test_freeze_window_runs_from_the_end_of_the_pre_copy_to_the_redirect():
    assert migration_report(MARKS, TRANSFERS)["freeze_window_seconds"] == 2.5


def test_no_freeze_window_without_a_redirect():
    report = migration_report(MARKS[:5], TRANSFERS)
    assert "freeze_window_seconds" not in report


def test_bytes_add_up_over_the_snapshots():
    report = migration_report(MARKS, TRANSFERS, {"source": "nat-a"})
    assert report["bytes"] == {"raw": 809000, "compressed": 20700}
    assert report["source"] == "nat-a"


def test_lines_name_each_phase_and_what_moved():
    report = migration_report(MARKS, TRANSFERS, {"redirect_gap_ms": 0.4, "delta_removed": 3})
    lines = migration_report_lines(report)
    assert lines[0].startswith("preflight") and "3.500 s" in lines[0]
    assert any(line.startswith("precopy") and "1000 sessions" in line and "781.2 KiB raw" in line for line in lines)
    assert any("3 sessions ended" in line for line in lines)
    assert "freeze window (new connections wait): 2.500 s" in lines
    assert any("redirect gap" in line and "0.4 ms" in line for line in lines)
