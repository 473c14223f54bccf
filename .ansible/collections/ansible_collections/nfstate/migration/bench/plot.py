# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chart of the benchmarks' figures: bytes moved, and the freeze window, against sessions (log axes).

    /path/to/venv/bin/python bench/plot.py [--out docs/benchmarks.png]

Reads bench/results/bytes.json (bench_bytes.py) and bench/results/migration.json
(bench_migration.py); needs matplotlib (bench/requirements.txt). The machine they were measured on
is written under the chart.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_results  # noqa: E402

MIB = 1048576.0


def bytes_panel(axes, data):
    state = [row for row in data["state"] if row["sessions"] > 0]
    machine = data["whole_machine"]
    sessions = [row["sessions"] for row in state]
    ram = machine["guest_ram_mib"] * MIB
    axes.plot(sessions, [row["raw"] / MIB for row in state], "o-", label="state, raw JSON")
    axes.plot(sessions, [row["gzip"] / MIB for row in state], "s-", label="state, gzip (as moved)")
    levels = [((machine["raw"] + ram) / MIB, "Debian minbase rootfs + %d MiB RAM" % machine["guest_ram_mib"], "k")]
    if machine.get("zstd3"):
        levels.append(((machine["zstd3"] + ram) / MIB, "same, rootfs zstd-compressed", "0.35"))
    levels.append((machine["cirros_qcow2_mib"] + ram / MIB, "CirrOS 0.6.3 qcow2 + RAM", "tab:red"))
    levels.append((machine["cirros_qcow2_mib"], "CirrOS 0.6.3 qcow2 alone", "tab:purple"))
    for value, label, colour in levels:
        axes.axhline(value, linestyle="--", color=colour, linewidth=1, label="%s (%.0f MiB)" % (label, value))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("NAT sessions")
    axes.set_ylabel("MiB moved")
    axes.set_title("Bytes moved: state vs whole machine")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")


def window_panel(axes, data):
    plain = sorted((c for c in data["cases"] if not c["churn"]), key=lambda c: c["sessions"])
    churned = [c for c in data["cases"] if c["churn"]]
    sessions = [c["sessions"] for c in plain]
    axes.plot(sessions, [c["freeze_window"]["seconds"] for c in plain], "o-",
              label="freeze window, client (no new connection)")
    axes.plot(sessions, [c["report"]["freeze_window_seconds"] for c in plain], "^:",
              label="freeze window, playbook's clock")
    # The report's preflight phase holds the pre-copy's gather and transfer, its pre-copy phase the apply.
    kept_out = [sum(p["seconds"] for p in c["report"]["phases"] if p["phase"] in ("preflight", "pre-copy"))
                for c in plain]
    axes.plot(sessions, kept_out, "x--", color="0.5", label="pre-copy work kept out of the window")
    gaps = [max(r.get("gap_ms", 0.0) for r in c["capture"]["flows"].values()) / 1000.0 for c in plain]
    axes.plot(sessions, gaps, "d-", color="tab:green", label="redirect gap, client capture")
    for case in churned:
        axes.plot([case["sessions"]], [case["freeze_window"]["seconds"]], "*", markersize=12,
                  label="freeze window, %d sessions changed after pre-copy" % case["churn"])
    axes.axhline(1.0, color="tab:red", linestyle="--", linewidth=1, label="aim: freeze window 1 s")
    axes.axhline(0.05, color="tab:green", linestyle="--", linewidth=1, label="aim: redirect gap 50 ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("NAT sessions")
    axes.set_ylabel("seconds")
    axes.set_title("Freeze window and redirect gap (migrate_nat in the lab)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 0.1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "benchmarks.png"))
    args = parser.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    size = bench_results.load("bytes")
    migration = bench_results.load("migration")
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5.4))
    bytes_panel(left, size)
    window_panel(right, migration)
    figure.text(0.5, 0.01, "Measured on: %s (bytes %s, migration %s)" % (
        bench_results.machine_line(migration["machine"]), size["measured_at"], migration["measured_at"]),
        ha="center", fontsize=8)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    figure.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
