#!/usr/bin/env python3
"""Stress a khofs mount: N processes toggle `finalize`, read `fdt` and `sub_fdts/*`, `stat`
and `readdir`, for a bounded time, checking every invariant after every step.

The mount is fresh: the default machine with a few small producers (DTS files written to a
temporary directory). Invariants:

- every system call succeeds or fails with an errno the kernel gives for it in that state
  (a write of 1: 0 or EEXIST; of 0: 0 or ENOENT; a malformed value: EINVAL or ERANGE; an
  open of `fdt` or `sub_fdts/*`: ENOENT while not finalized; a read of an open blob that an
  abort removed: EIO); never anything else (ENOTCONN, EINVAL from a crash, ...);
- every read of `fdt` is a complete valid FDT (libfdt's fdt_check_full, compatible "kho-v1",
  one node per producer) or fails as above; every `sub_fdts/NAME` is exactly the bytes of
  that producer's compiled DTS; `finalize` reads "0\\n" or "1\\n"; `scratch_*` never change;
- `fdt` is present exactly when `finalize` reads 1, and `sub_fdts/` then lists every producer
  (and nothing while it reads 0): checked under an exclusive lock that toggles respect
  (toggles hold it shared, so they still race each other);
- the daemon is alive after every step;
- at the end, the state is what the successful writes say: they alternate 1, 0, 1, ... from
  0, so it is 1 exactly when there was one more successful 1 than 0.

Prints a summary; exits 0 when every invariant held, 1 with the first violation. Whatever
happens, the mount is unmounted and the daemon gone before it exits.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import multiprocessing as mp
import os
import queue
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libfdt
from procs import alive, cmdline, is_mounted
from procs import run as run_any

KHOFS = [sys.executable, "-m", "khofs"]
FDT_MAGIC = b"\xd0\x0d\xfe\xed"

PRODUCERS = {
    "alpha": '/dts-v1/;\n/ {\n\tcompatible = "khofs-stress-v1";\n\tindex = <1>;\n};\n',
    "beta": '/dts-v1/;\n/ {\n\tcompatible = "khofs-stress-v1";\n\tlabel = "beta", "two";\n'
            '\tchild {\n\t\treg = <0x0 0x1000>;\n\t};\n};\n',
    "gamma": '/dts-v1/;\n/memreserve/ 0x100000 0x1000;\n/ {\n\tblob = [00 11 22 33 44];\n};\n',
    "delta": '/dts-v1/;\n/ {\n\tcompatible = "khofs-stress-v1";\n\tcells = <1 2 3 4 5 6 7 8>;'
             '\n};\n',
}

ONE = frozenset({0, errno.EEXIST})  # writing a non-zero value: finalized, or it already was
ZERO = frozenset({0, errno.ENOENT})  # writing 0: aborted, or it was not finalized
# Values written to finalize: the state they set on success, and the errnos they may get.
TOGGLES: list[tuple[bytes, int, frozenset[int]]] = [
    (b"1\n", 1, ONE), (b"0\n", 0, ZERO), (b"1", 1, ONE), (b"0", 0, ZERO), (b"0x10", 1, ONE),
    (b"000\n", 0, ZERO), (b"1\0junk", 1, ONE),
]
JUNK: list[tuple[bytes, int, frozenset[int]]] = [
    (b"x", -1, frozenset({errno.EINVAL})), (b"-1\n", -1, frozenset({errno.EINVAL})),
    (b" 1", -1, frozenset({errno.EINVAL})), (b"1\n\n", -1, frozenset({errno.EINVAL})),
    (b"99999999999999999999", -1, frozenset({errno.ERANGE})),
]

# (action, weight)
ACTIONS = [("toggle", 6), ("write_junk", 1), ("read_fdt", 5), ("read_sub", 5),
           ("read_finalize", 3), ("read_scratch", 1), ("stat", 4), ("readdir", 3),
           ("consistency", 1)]


class Violation(Exception):
    """An invariant did not hold; the message says which, where and what was seen."""


@dataclass
class Expected:
    out: Path
    subs: dict[str, bytes]
    scratch: dict[str, bytes]
    daemon: int
    lock: Path


def _size(exp: Expected, name: str, seen: int) -> int:
    """The st_size a file must have: debugfs's 0 for finalize and directories, the bytes a
    read gives for the seekable files (khofs reports those, so that sendfile loses nothing).
    The root fdt's size moves with every finalize: any that holds a header will do."""
    if name in exp.scratch:
        return len(exp.scratch[name])
    if name.startswith("sub_fdts/"):
        return len(exp.subs[name.removeprefix("sub_fdts/")])
    if name == "fdt":
        return seen if seen >= 40 else -1
    return 0


@dataclass
class Stats:
    steps: Counter[str] = field(default_factory=Counter)
    errnos: dict[str, Counter[str]] = field(default_factory=dict)
    ones: int = 0  # successful writes of a non-zero value
    zeros: int = 0

    def note(self, action: str, err: int) -> None:
        self.steps[action] += 1
        name = "ok" if err == 0 else errno.errorcode.get(err, str(err))
        self.errnos.setdefault(action, Counter())[name] += 1

    def merge(self, other: Stats) -> None:
        self.steps += other.steps
        for action, c in other.errnos.items():
            self.errnos.setdefault(action, Counter()).update(c)
        self.ones += other.ones
        self.zeros += other.zeros


# --- checks ----------------------------------------------------------------------------------

def check_root_fdt(data: bytes, names: set[str]) -> None:
    if data[:4] != FDT_MAGIC or len(data) < 40:
        raise Violation(f"fdt: {len(data)} bytes without an FDT header: {data[:16]!r}")
    total = struct.unpack_from(">I", data, 4)[0]
    if total != len(data):
        raise Violation(f"fdt: read {len(data)} bytes of a {total}-byte FDT")
    err = libfdt.fdt_check_full(bytearray(data), len(data))
    if err:
        raise Violation(f"fdt: fdt_check_full says {libfdt.fdt_strerror(err)}")
    fdt = libfdt.Fdt(data)
    if fdt.getprop(0, "compatible").as_str() != "kho-v1":
        raise Violation("fdt: compatible is not kho-v1")
    seen = set()
    node = fdt.first_subnode(0, [libfdt.NOTFOUND])
    while node >= 0:
        seen.add(fdt.get_name(node))
        if len(fdt.getprop(node, "fdt")) != 8:
            raise Violation(f"fdt: node {fdt.get_name(node)} has no 8-byte fdt property")
        node = fdt.next_subnode(node, [libfdt.NOTFOUND])
    if seen != names:
        raise Violation(f"fdt: sub-trees {sorted(seen)}, expected {sorted(names)}")


def errno_of(e: OSError) -> int:
    return e.errno or 0


def read_file(path: Path, open_errnos: frozenset[int],
              read_errnos: frozenset[int]) -> tuple[int, bytes]:
    """(0, bytes) or (errno, b""): open, read to EOF, close, each errno checked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        if errno_of(e) not in open_errnos:
            raise Violation(f"open {path.name}: unexpected errno {e!r}") from None
        return errno_of(e), b""
    try:
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        return 0, data
    except OSError as e:
        if errno_of(e) not in read_errnos:
            raise Violation(f"read {path.name}: unexpected errno {e!r}") from None
        return errno_of(e), b""
    finally:
        os.close(fd)


def write_finalize(exp: Expected, data: bytes, allowed: frozenset[int]) -> int:
    fd = os.open(exp.out / "finalize", os.O_WRONLY)
    try:
        n = os.write(fd, data)
        if n != len(data):
            raise Violation(f"write {data!r}: returned {n}, not {len(data)}")
        err = 0
    except OSError as e:
        err = errno_of(e)
    finally:
        os.close(fd)
    if err not in allowed:
        raise Violation(f"write {data!r} to finalize: errno {err} "
                        f"({os.strerror(err) if err else 'success'}), expected one of "
                        f"{sorted(errno.errorcode.get(a, 'success') for a in allowed)}")
    return err


def read_state(exp: Expected) -> int:
    err, data = read_file(exp.out / "finalize", frozenset(), frozenset())
    if data not in (b"0\n", b"1\n"):
        raise Violation(f"finalize reads {data!r}")
    return int(data[:1])


def consistency(exp: Expected) -> None:
    """Under the exclusive lock: no toggle is running, so the files agree with each other."""
    state = read_state(exp)
    listing = set(os.listdir(exp.out))
    base = {"finalize", "scratch_phys", "scratch_len", "sub_fdts"}
    if listing != base | ({"fdt"} if state else set()):
        raise Violation(f"finalize reads {state} but kho/out lists {sorted(listing)}")
    subs = set(os.listdir(exp.out / "sub_fdts"))
    if subs != (set(exp.subs) if state else set()):
        raise Violation(f"finalize reads {state} but sub_fdts lists {sorted(subs)}")
    try:
        os.stat(exp.out / "fdt")
        present = True
    except FileNotFoundError:
        present = False
    if present != bool(state):
        raise Violation(f"finalize reads {state} but fdt is {'' if present else 'not '}there")
    if state:
        err, data = read_file(exp.out / "fdt", frozenset(), frozenset())
        check_root_fdt(data, set(exp.subs))
        for name, blob in exp.subs.items():
            err, data = read_file(exp.out / "sub_fdts" / name, frozenset(), frozenset())
            if data != blob:
                raise Violation(f"sub_fdts/{name}: {len(data)} bytes differ from the DTS's")


# --- one step of a worker ----------------------------------------------------------------------

def step(exp: Expected, action: str, rng: random.Random, stats: Stats, lockfd: int) -> None:
    err = 0
    if action in ("toggle", "write_junk"):
        data, value, allowed = rng.choice(TOGGLES if action == "toggle" else JUNK)
        fcntl.flock(lockfd, fcntl.LOCK_SH)
        try:
            err = write_finalize(exp, data, allowed)
            if err == 0:
                stats.ones += value == 1
                stats.zeros += value == 0
        finally:
            fcntl.flock(lockfd, fcntl.LOCK_UN)
    elif action == "read_fdt":
        err, data = read_file(exp.out / "fdt", frozenset({errno.ENOENT}),
                              frozenset({errno.EIO}))
        if not err:
            check_root_fdt(data, set(exp.subs))
    elif action == "read_sub":
        name = rng.choice(sorted(exp.subs))
        err, data = read_file(exp.out / "sub_fdts" / name, frozenset({errno.ENOENT}),
                              frozenset({errno.EIO}))
        if not err and data != exp.subs[name]:
            raise Violation(f"sub_fdts/{name}: read {len(data)} bytes that differ from the "
                            f"producer's {len(exp.subs[name])}")
    elif action == "read_finalize":
        read_state(exp)
    elif action == "read_scratch":
        name = rng.choice(sorted(exp.scratch))
        err, data = read_file(exp.out / name, frozenset(), frozenset())
        if data != exp.scratch[name]:
            raise Violation(f"{name} changed: {data!r}")
    elif action == "stat":
        name = rng.choice(["finalize", "fdt", "scratch_phys", "sub_fdts",
                           f"sub_fdts/{rng.choice(sorted(exp.subs))}"])
        try:
            st = os.stat(exp.out / name)
        except FileNotFoundError:
            if name == "fdt" or name.startswith("sub_fdts/"):
                err = errno.ENOENT
            else:
                raise Violation(f"stat {name}: ENOENT") from None
        else:
            if st.st_size != _size(exp, name, st.st_size) or (
                    st.st_nlink != 1 and name != "sub_fdts"):
                raise Violation(f"stat {name}: size {st.st_size}, nlink {st.st_nlink}")
    elif action == "readdir":
        listing = set(os.listdir(exp.out))
        extra = listing - {"fdt", "finalize", "scratch_phys", "scratch_len", "sub_fdts"}
        if extra or "finalize" not in listing:
            raise Violation(f"kho/out lists {sorted(listing)}")
        subs = set(os.listdir(exp.out / "sub_fdts"))
        if not subs <= set(exp.subs):
            raise Violation(f"sub_fdts lists {sorted(subs)}")
    elif action == "consistency":
        fcntl.flock(lockfd, fcntl.LOCK_EX)
        try:
            consistency(exp)
        finally:
            fcntl.flock(lockfd, fcntl.LOCK_UN)
    stats.note(action, err)
    if not alive(exp.daemon):
        raise Violation(f"the daemon (pid {exp.daemon}) is gone after {action}")


def worker(exp: Expected, seed: int, deadline: float, results: Any) -> None:
    rng = random.Random(seed)
    stats = Stats()
    names = [a for a, _ in ACTIONS]
    weights = [w for _, w in ACTIONS]
    lockfd = os.open(exp.lock, os.O_RDWR)
    action = ""
    try:
        while time.monotonic() < deadline:
            action = rng.choices(names, weights)[0]
            step(exp, action, rng, stats, lockfd)
        results.put(("done", seed, stats, ""))
    except Violation as e:
        results.put(("violation", seed, stats, str(e)))
    except OSError as e:  # an errno no check expected (ENOTCONN after a crash, ...)
        results.put(("violation", seed, stats, f"{action}: unexpected {e!r}"))
    finally:
        os.close(lockfd)


# --- the run ---------------------------------------------------------------------------------

def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return run_any(argv, timeout=60)


def write_producers(d: Path) -> tuple[Path, dict[str, bytes]]:
    from khofs.producers.dts import compile_dts

    lines = []
    blobs = {}
    for name, dts in PRODUCERS.items():
        (d / f"{name}.dts").write_text(dts)
        lines.append(f'[[producer]]\nname = "{name}"\ndts = "{name}.dts"\n')
        blobs[name] = compile_dts(dts)
    toml = d / "producers.toml"
    toml.write_text("\n".join(lines))
    return toml, blobs


def daemon_pid(mnt: Path) -> int:
    out = run(["pgrep", "-f", f" mount {re.escape(str(mnt))}( |$)"]).stdout.split()
    if len(out) != 1:
        raise RuntimeError(f"expected one daemon for {mnt}, found {out}")
    return int(out[0])


def unmount(mnt: Path, pid: int | None) -> None:
    if is_mounted(mnt):
        run([*KHOFS, "umount", str(mnt)])
    if is_mounted(mnt):
        run(["umount", "-l", str(mnt)])
    if pid is not None and alive(pid) and str(mnt) in cmdline(pid):  # not a reused pid
        os.kill(pid, signal.SIGKILL)


def summary(stats: Stats, procs: int, seconds: float, final: int | None) -> str:
    total = sum(stats.steps.values())
    lines = [f"stress: {procs} processes, {seconds:.1f} s: {total} steps "
             f"({total / max(seconds, 1e-9):.0f}/s)"]
    for action, _ in ACTIONS:
        c = stats.errnos.get(action, Counter())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        lines.append(f"  {action:14} {stats.steps[action]:8}  {detail}")
    lines.append(f"  successful writes: 1 x {stats.ones}, 0 x {stats.zeros}; finalize reads "
                 f"{final if final is not None else '?'} at the end")
    return "\n".join(lines)


def stress(procs: int, seconds: float, seed: int, workdir: Path) -> int:
    mnt = workdir / "mnt"
    mnt.mkdir()
    toml, blobs = write_producers(workdir)
    pid: int | None = None
    workers: list[Any] = []
    try:
        r = run([*KHOFS, "mount", str(mnt), "--producers", str(toml),
                 "--log", str(workdir / "khofs.log")])
        if r.returncode != 0:
            print(f"stress: khofs mount failed: {r.stderr.strip()}", file=sys.stderr)
            return 1
        pid = daemon_pid(mnt)
        out = mnt / "kho" / "out"
        scratch = {n: (out / n).read_bytes() for n in ("scratch_phys", "scratch_len")}
        lock = workdir / "lock"
        lock.touch()
        exp = Expected(out, blobs, scratch, pid, lock)
        print(f"stress: mounted {mnt} (daemon {pid}); {procs} processes for {seconds:g} s, "
              f"seed {seed}", flush=True)
        ctx = mp.get_context("fork")
        results = ctx.Queue()
        t0 = time.monotonic()
        deadline = t0 + seconds
        workers = [ctx.Process(target=worker, args=(exp, seed + i, deadline, results))
                   for i in range(procs)]
        for w in workers:
            w.start()
        total = Stats()
        first = ""
        for _ in workers:
            try:
                kind, wseed, stats, msg = results.get(timeout=seconds + 60)
            except queue.Empty:
                first = first or "a worker did not finish 60 s after the deadline"
                break
            total.merge(stats)
            if kind == "violation" and not first:
                first = f"worker {wseed - seed}: {msg}"
                for w in workers:  # stop the others now: the run has failed
                    if w.pid is not None and w.is_alive():
                        os.kill(w.pid, signal.SIGTERM)
                break
        elapsed = time.monotonic() - t0
        for w in workers:
            w.join(10)
        final = None
        if not first:
            try:
                final = read_state(exp)
                expected = total.ones - total.zeros
                if expected not in (0, 1) or final != expected:
                    first = (f"end state: finalize reads {final}, but there were "
                             f"{total.ones} successful writes of 1 and {total.zeros} of 0")
                else:
                    consistency(exp)
            except (Violation, OSError) as e:
                first = f"end state: {e}"
            if not first and not alive(pid):
                first = "the daemon is gone at the end"
        print(summary(total, procs, elapsed, final))
        if first:
            print(f"stress: VIOLATION: {first}")
            return 1
        print("stress: OK, every invariant held")
        return 0
    finally:
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signal.SIGKILL)
                w.join(5)
        unmount(mnt, pid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=8, help="worker processes (default 8)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount on SIGTERM too
    with tempfile.TemporaryDirectory(prefix="khofs-stress.") as d:
        return stress(args.procs, args.seconds, seed, Path(d))


if __name__ == "__main__":
    raise SystemExit(main())
