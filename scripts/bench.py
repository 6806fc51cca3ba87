#!/usr/bin/env python3
"""Latency of the common debugfs operations on khofs, beside the same on tmpfs, in one run.

Prints a table of medians and p99 (microseconds) and the khofs/tmpfs ratio, plus the time
from `khofs mount` to a live mount. Targets belong here, never in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

KHOFS = [sys.executable, "-m", "khofs"]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))]


def read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        out = b""
        while chunk := os.read(fd, 65536):
            out += chunk
        return out
    finally:
        os.close(fd)


def write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def cycle(path: str) -> None:
    write(path, b"1\n")
    write(path, b"0\n")


def operations(out: Path) -> dict[str, Callable[[], object]]:
    fin, fdt = str(out / "finalize"), str(out / "fdt")
    return {
        "stat finalize": lambda: os.stat(fin),
        "open+read+close finalize": lambda: read_all(fin),
        "echo 1 / echo 0 cycle": lambda: cycle(fin),
        "read fdt (finalized)": lambda: read_all(fdt),
    }


def tmpfs_twin(base: Path, fdt: bytes) -> Path:
    out = base / "kho" / "out"
    out.mkdir(parents=True)
    (out / "finalize").write_bytes(b"0\n")
    (out / "fdt").write_bytes(fdt)
    return out


def mount_time(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter_ns()
            subprocess.run([*KHOFS, "mount", d], check=True)
            samples.append((time.perf_counter_ns() - t0) / 1000)
            subprocess.run([*KHOFS, "umount", d], check=True)
    return samples


BIG_MACHINE = """# bench: 4 NUMA nodes of 2 TiB each
name = "big-4n-8t"
arch = "x86_64"
cpus = 256
[[node]]
size = "2T"
[[node]]
size = "2T"
[[node]]
size = "2T"
[[node]]
size = "2T"
"""


def boot_times(runs: int) -> dict[str, list[float]]:
    """Booting each preset's emulated kernel in this process (parse, memblock, scratch,
    kho_init), in microseconds."""
    from khofs.engine.kernel import Kernel
    from khofs.engine.machine import MACHINES

    out = {}
    for name, machine in MACHINES.items():
        out[name] = timed(lambda m=machine: Kernel(m), runs)  # type: ignore[misc]
    return out


def daemon_peak_rss(machine: str) -> int:
    """VmHWM of a mounted daemon after a finalize cycle, in KiB."""
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run([*KHOFS, "mount", mnt, "--machine", machine], check=True)
        try:
            out = Path(mnt) / "kho" / "out"
            cycle(str(out / "finalize"))
            pid = subprocess.run(["pgrep", "-f", f"khofs mount {mnt}"], capture_output=True,
                                 text=True, check=True).stdout.split()[0]
            status = Path(f"/proc/{pid}/status").read_text()
            return int(next(ln.split()[1] for ln in status.splitlines()
                            if ln.startswith("VmHWM:")))
        finally:
            subprocess.run([*KHOFS, "umount", mnt], check=True)


def machine_rows(runs: int) -> list[str]:
    lines = [f"{'boot (engine, in process)':28} {'median ms':>10} {'p99':>9}   target < 200 ms"]
    for name, samples in boot_times(runs).items():
        lines.append(f"  {name:26} {statistics.median(samples) / 1000:10.2f} "
                     f"{p99(samples) / 1000:9.2f}")
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "big-4n-8t.toml"
        big.write_text(BIG_MACHINE)
        lines.append(f"{'daemon peak RSS (VmHWM)':28} {'MiB':>10}   target < 60 MiB")
        for name in ("server-2s", str(big)):
            lines.append(f"  {Path(name).stem:26} {daemon_peak_rss(name) / 1024:10.1f}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=500, help="samples per operation")
    ap.add_argument("--json", default="bench-results.json")
    args = ap.parse_args()
    rows = []
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory() as mnt, tempfile.TemporaryDirectory(dir=shm) as tmp:
        subprocess.run([*KHOFS, "mount", mnt], check=True)
        try:
            out = Path(mnt) / "kho" / "out"
            write(str(out / "finalize"), b"1\n")
            twin = tmpfs_twin(Path(tmp), read_all(str(out / "fdt")))
            write(str(out / "finalize"), b"0\n")
            ours, theirs = operations(out), operations(twin)
            for name in ours:
                if name.startswith("read fdt"):
                    write(str(out / "finalize"), b"1\n")
                a, b = timed(ours[name], args.n), timed(theirs[name], args.n)
                rows.append((name, a, b))
        finally:
            subprocess.run([*KHOFS, "umount", mnt], check=True)
    mounts = mount_time(10)
    print(f"{'operation':28} {'khofs med':>10} {'p99':>9} {'tmpfs med':>10} {'p99':>9} "
          f"{'ratio':>7}   (microseconds, {args.n} samples)")
    results = {}
    for name, a, b in rows:
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:28} {ma:10.1f} {p99(a):9.1f} {mb:10.1f} {p99(b):9.1f} {ma / mb:7.1f}x")
        results[name] = {"khofs_median_us": ma, "khofs_p99_us": p99(a),
                         "tmpfs_median_us": mb, "tmpfs_p99_us": p99(b)}
    mm = statistics.median(mounts)
    print(f"{'khofs mount to live mount':28} {mm:10.1f} {p99(mounts):9.1f}"
          f"   (median of {len(mounts)})")
    results["mount"] = {"median_us": mm, "p99_us": p99(mounts)}
    print()
    print("\n".join(machine_rows(20)))
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
