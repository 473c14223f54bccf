# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): bytes a state migration moves, against a whole-machine migration.

    sudo /path/to/venv/bin/python bench/bench_bytes.py [--sizes 0,100,1000,10000,100000]
                                                      [--guest-ram-mib 512] [--rootfs DIR]

State: in a lab (bnb), nat-a holds the lab's NAT rules and N synthetic translated sessions
(bench/lab_sessions.py); the implementation role's own gather entry point (bench/gather_state.yml,
the step the migration's pre-copy runs, over SSH) writes the document; its size is measured as raw
JSON and as written (gzip), and with zstd -3 for comparison.

Whole machine: a minimal Debian root file system with the NAT's tools, made by
`debootstrap --variant=minbase --include=iptables,nftables,conntrack bookworm DIR MIRROR` (MIRROR:
the Debian archive this machine's apt uses, read from /etc/apt/sources.list(.d)), cached in --rootfs
between runs; measured as files (apparent size) and as a tar stream through gzip -1 and zstd -3.
Without a reachable mirror, the size of this machine's installed packages of the same set
(dpkg-query, Installed-Size) stands in, labelled as an estimate. To it a guest memory of
--guest-ram-mib is added (a stated figure: pre-copy live migration sends every page at least once).
CirrOS 0.6.3's qcow2 image, 20.7 MiB, is quoted as the smallest known VM image.
Figures go to bench/results/bytes.json and are printed as a table with the ratios.
"""

import argparse
import glob
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "lab"))
sys.path.insert(0, HERE)

import bench_results  # noqa: E402
import lab_sessions  # noqa: E402
from nfstate_lab import Lab  # noqa: E402

MIB = 1048576
CIRROS_QCOW2_MIB = 20.7  # CirrOS 0.6.3 x86_64 disk image (qcow2), the smallest known VM image
SUITE = "bookworm"
TOOLS = ("iptables", "nftables", "conntrack")
DEFAULT_ROOTFS = "/var/tmp/nfstate-bench/rootfs-%s-minbase" % SUITE
# Left out of the measured tree: the package cache and indexes a cleaned image would not ship.
NOT_IN_IMAGE = ("var/cache/apt/archives", "var/lib/apt/lists", "debootstrap")


# -- the state ------------------------------------------------------------------------------------

def count_sessions(doc):
    instance = doc["ietf-nat:nat"]["instances"]["instance"][0]
    return len(instance.get("mapping-table", {}).get("mapping-entry", [])), len(instance.get("policy", []))


def zstd_size(data):
    proc = subprocess.run(["zstd", "-3", "-q", "-c"], input=data, capture_output=True, check=True)
    return len(proc.stdout)


def gather_document(lab, dest):
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), os.path.join(HERE, "gather_state.yml"),
            "-e", "bench_dest=%s" % dest]
    proc = subprocess.run(argv, env=lab.env, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode:
        raise RuntimeError("gathering failed:\n%s" % proc.stdout[-3000:])


def measure_state(sizes, args):
    import json
    rows = []
    lab = Lab("bnb", source_impl=args.source_impl, target_impl=args.target_impl)
    scratch = tempfile.mkdtemp(prefix="nfsbn-bytes-")
    try:
        lab.up()
        have = 0
        for count in sorted(sizes):
            if count > have:
                lab_sessions.populate(lab.ns("nat-a"), count - have, first=have)
                have = count
            dest = os.path.join(scratch, "state-%d.json.gz" % count)
            started = time.monotonic()
            gather_document(lab, dest)
            seconds = time.monotonic() - started
            with open(dest, "rb") as handle:
                written = handle.read()
            raw = gzip.decompress(written)
            sessions, rules = count_sessions(json.loads(raw))
            if sessions != count:
                raise RuntimeError("the document holds %d sessions, nat-a %d" % (sessions, count))
            rows.append({"sessions": sessions, "rules": rules, "raw": len(raw), "gzip": len(written),
                         "zstd": zstd_size(raw), "gather_seconds": round(seconds, 2)})
            print("  state %6d sessions: %d B raw, %d B gzip" % (count, len(raw), len(written)), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        lab.down()
    return rows


# -- the whole machine ----------------------------------------------------------------------------

def apt_mirror():
    """The URI this machine's apt uses for Debian's main archive (one-line or deb822 sources)."""
    candidates = []
    paths = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")) + \
        sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    for path in paths:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict((k.strip().lower(), v.strip()) for k, _s, v in
                              (line.partition(":") for line in stanza.splitlines() if ":" in line and not line.startswith("#")))
                suites = fields.get("suites", "").split()
                if "main" in fields.get("components", "").split() and SUITE in suites:
                    candidates += fields.get("uris", "").split()
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 4 and parts[0] == "deb":
                    uri_at = 2 if parts[1].startswith("[") else 1
                    if parts[uri_at + 1] == SUITE and "main" in parts[uri_at + 2:]:
                        candidates.append(parts[uri_at])
    # The main archive, not the security one: its URI does not end in -security.
    for uri in candidates:
        if not uri.rstrip("/").endswith("-security"):
            return uri
    return None


def build_rootfs(path, mirror):
    """debootstrap minbase with the NAT's tools into path, once; returns (seconds, log tail)."""
    marker = os.path.join(path, ".nfstate-bench-complete")
    if os.path.exists(marker):
        return None, "cached"
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(["debootstrap", "--variant=minbase", "--include=%s" % ",".join(TOOLS), SUITE, path, mirror],
                          capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode:
        shutil.rmtree(path, ignore_errors=True)
        raise RuntimeError("debootstrap failed (%d): %s" % (proc.returncode, (proc.stdout + proc.stderr)[-1500:]))
    with open(marker, "w") as handle:
        handle.write("%s %s\n" % (SUITE, mirror))
    return time.monotonic() - started, proc.stdout[-300:]


def tree_bytes(path):
    """Apparent size of the files (symlinks as their own size), leaving out NOT_IN_IMAGE."""
    total = files = 0
    for root, dirs, names in os.walk(path):
        rel = os.path.relpath(root, path)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in NOT_IN_IMAGE]
        for name in names:
            if name == ".nfstate-bench-complete":
                continue
            total += os.lstat(os.path.join(root, name)).st_size
            files += 1
    return total, files


def tar_compressed(path, compressor):
    """Bytes of `tar -C path -cf - . | compressor`, leaving out NOT_IN_IMAGE."""
    excludes = ["--exclude=./%s" % e for e in NOT_IN_IMAGE] + ["--exclude=./.nfstate-bench-complete"]
    tar = subprocess.Popen(["tar", "-C", path, "--numeric-owner"] + excludes + ["-cf", "-", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    comp = subprocess.Popen(compressor, stdin=tar.stdout, stdout=subprocess.PIPE)
    tar.stdout.close()
    size = 0
    while True:
        chunk = comp.stdout.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
    comp.wait()
    tar.wait()
    if comp.returncode or tar.returncode not in (0, 1):  # tar: 1 = a file changed while read
        raise RuntimeError("tar | %s failed" % " ".join(compressor))
    return size


def installed_estimate():
    """Fallback: Installed-Size of this machine's required/essential packages plus the NAT's tools
    and everything they depend on (dpkg-query), in bytes."""
    out = subprocess.run(["dpkg-query", "-W", "-f",
                          "${Package}\t${Installed-Size}\t${Priority}\t${Essential}\t${Pre-Depends}, ${Depends}\n"],
                         capture_output=True, text=True, check=True).stdout
    packages = {}
    for line in out.splitlines():
        name, size, priority, essential, depends = (line.split("\t") + [""] * 5)[:5]
        deps = [re.split(r"[\s(:]", alt.strip())[0] for dep in depends.split(",") for alt in dep.split("|")[:1] if alt.strip()]
        packages[name] = (int(size or 0) * 1024, priority == "required" or essential == "yes", deps)
    wanted = [p for p, (_s, base, _d) in packages.items() if base] + [t for t in TOOLS if t in packages]
    seen = set()
    while wanted:
        name = wanted.pop()
        if name in seen or name not in packages:
            continue
        seen.add(name)
        wanted += packages[name][2]
    return sum(packages[p][0] for p in seen), len(seen)


def measure_machine(args):
    mirror = apt_mirror()
    result = {"suite": SUITE, "variant": "minbase", "include": list(TOOLS), "path": args.rootfs,
              "guest_ram_mib": args.guest_ram_mib, "cirros_qcow2_mib": CIRROS_QCOW2_MIB}
    try:
        if mirror is None:
            raise RuntimeError("no Debian %s main archive in this machine's apt sources" % SUITE)
        seconds, note = build_rootfs(args.rootfs, mirror)
        result.update(method="debootstrap", built_seconds=None if seconds is None else round(seconds, 1), note=note,
                      mirror_from="/etc/apt sources")
        result["raw"], result["files"] = tree_bytes(args.rootfs)
        result["gzip1"] = tar_compressed(args.rootfs, ["gzip", "-1"])
        result["zstd3"] = tar_compressed(args.rootfs, ["zstd", "-3", "-q", "-T0"])
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print("  rootfs: debootstrap not possible (%s); ESTIMATE from dpkg-query instead" % error, flush=True)
        size, count = installed_estimate()
        result.update(method="dpkg-query estimate (installed packages, no debootstrap)", error=str(error),
                      raw=size, packages=count, gzip1=None, zstd3=None)
    return result


# -- the table --------------------------------------------------------------------------------------

def human(count):
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1024)):
        if count >= size:
            return "%.1f %s" % (count / float(size), unit)
    return "%d B" % count


def ratio(big, small):
    return "%.0fx" % (big / float(small)) if big and small else "-"


def print_report(state, machine):
    ram = machine["guest_ram_mib"] * MIB
    rootfs_raw, rootfs_zstd = machine["raw"], machine.get("zstd3") or machine["raw"]
    cirros = int(machine["cirros_qcow2_mib"] * MIB)
    print("\nWHOLE MACHINE (%s)" % machine["method"])
    print("  Debian %s %s + %s: %s in %s files; tar|gzip -1 %s; tar|zstd -3 %s" % (
        machine["suite"], machine["variant"], ",".join(machine["include"]), human(machine["raw"]),
        machine.get("files", "?"), human(machine["gzip1"]) if machine.get("gzip1") else "-",
        human(machine["zstd3"]) if machine.get("zstd3") else "-"))
    print("  guest memory (stated): %d MiB; CirrOS 0.6.3 qcow2 (quoted): %.1f MiB" % (
        machine["guest_ram_mib"], machine["cirros_qcow2_mib"]))
    vm_raw, vm_small = rootfs_raw + ram, rootfs_zstd + ram
    print("  whole machine = rootfs + memory: %s raw, %s with the rootfs compressed; CirrOS + memory: %s" % (
        human(vm_raw), human(vm_small), human(cirros + ram)))
    header = ["sessions", "rules", "state raw", "state gzip", "state zstd", "B/session gz",
              "VM raw / state raw", "VM zstd / state gzip", "CirrOS+RAM / state gzip", "CirrOS alone / state gzip"]
    rows = []
    for row in state:
        rows.append([row["sessions"], row["rules"], human(row["raw"]), human(row["gzip"]), human(row["zstd"]),
                     "%.0f" % (row["gzip"] / float(row["sessions"])) if row["sessions"] else "-",
                     ratio(vm_raw, row["raw"]), ratio(vm_small, row["gzip"]), ratio(cirros + ram, row["gzip"]),
                     ratio(cirros, row["gzip"])])
    print("\nSTATE vs WHOLE MACHINE (VM = the Debian rootfs above + %d MiB memory)" % machine["guest_ram_mib"])
    bench_results.print_table(header, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,100,1000,10000,100000")
    parser.add_argument("--guest-ram-mib", type=int, default=512, help="the whole machine's memory (a stated figure)")
    parser.add_argument("--rootfs", default=DEFAULT_ROOTFS, help="where the debootstrap tree is made and kept")
    parser.add_argument("--source-impl", default="iptables-legacy")
    parser.add_argument("--target-impl", default="nftables")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, debootstrap)")
    print("machine: %s" % bench_results.machine_line(), flush=True)
    machine = measure_machine(args)
    state = measure_state([int(s) for s in args.sizes.split(",") if s], args)
    path = bench_results.save("bytes", {"state": state, "whole_machine": machine,
                                        "state_source": "lab nat-a (%s), gathered by bench/gather_state.yml" % args.source_impl})
    print_report(state, machine)
    print("\nresults: %s" % path)


if __name__ == "__main__":
    main()
