# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the benchmarks keep their figures (bench/results/, ignored by git) and what machine made them."""

import json
import os
import platform
import subprocess
import tempfile
import time
import zlib

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine():
    """CPU model, cores, memory and kernel of this machine, from /proc."""
    model, cores = None, 0
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _sep, value = line.partition(":")
            if key.strip() == "model name":
                model = model or value.strip()
                cores += 1
    with open("/proc/meminfo") as handle:
        mem_kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    return {"cpu": model or platform.processor() or "unknown", "cores": cores or os.cpu_count(),
            "memory_gib": round(mem_kib / 1048576.0, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def checkout():
    """The commit measured, and the files that differed from it (read-only git calls)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        proc = subprocess.run(["git", "-C", repo] + list(args), capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "modified": status.splitlines() if status else []}


def machine_line(info=None):
    info = info or machine()
    return "%s, %d cores, %.1f GiB memory, Linux %s" % (info["cpu"], info["cores"], info["memory_gib"], info["kernel"])


def save(name, data):
    """Write bench/results/<name>.json (with the machine and the time); returns the path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name + ".json")
    data = dict(data, machine=machine(), checkout=checkout(),
                measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def load(name):
    with open(os.path.join(RESULTS, name + ".json")) as handle:
        return json.load(handle)


def print_table(header, rows, out=None, left_first=False):
    """Aligned columns, header first."""
    header = [str(cell) for cell in header]
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    # Numbers line up on the right, a leading text column (a task's name) on the left.
    lines = ["  ".join(cell.ljust(width) if i == 0 and left_first else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))) for row in [header] + rows]
    text = "\n".join(lines)
    print(text, file=out)
    return text


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collections_root():
    """A directory holding ansible_collections/nfstate/migration -> this checkout (one per
    checkout), for the benchmarks to import the collection's code by its collection name."""
    marker = os.sep + os.path.join("ansible_collections", "nfstate", "migration")
    if REPO.endswith(marker):
        return REPO[:-len(marker)]
    root = os.path.join(tempfile.gettempdir(), "nfstate-bench-%d-%08x" % (os.getuid(), zlib.crc32(REPO.encode())))
    link = os.path.join(root, "ansible_collections", "nfstate", "migration")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.realpath(link) != REPO:
        tmp = "%s.%d" % (link, os.getpid())
        os.symlink(REPO, tmp)
        os.replace(tmp, link)
    return root
