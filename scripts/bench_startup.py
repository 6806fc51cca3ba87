"""Start-up rows for scripts/bench.py: what a user waits for before and after the work.

`khofs mount` until the mount is live, `khofs umount`, `khofs run -- true`, `khofs reboot`
(the command, and the request the pytest plugin sends without a new interpreter), each on the
default machine, and the pytest plugin's `kho` fixture per test: a session of TESTS tests that
take it (each finalizes and reads `finalize` back, as the issue's user did) against the same
session without it, the difference divided by TESTS. Times are wall-clock milliseconds of the
commands as a shell runs them; the backend is the KHOFS_FUSE in the environment.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from procs import is_mounted, run

KHOFS = [sys.executable, "-m", "khofs"]
TESTS = 50

# The same TESTS tests, with the fixture and without it.
WITH_FIXTURE = f'''
import pytest

@pytest.mark.parametrize("i", range({TESTS}))
def test_finalize(kho, i):
    kho.finalize()
    assert kho.read("kho/out/finalize") == b"1\\n"
'''
WITHOUT_FIXTURE = f'''
import pytest

@pytest.mark.parametrize("i", range({TESTS}))
def test_finalize(tmp_path, i):
    (tmp_path / "finalize").write_bytes(b"1\\n")
    assert (tmp_path / "finalize").read_bytes() == b"1\\n"
'''


def clock(fn: Callable[[], object]) -> float:
    """fn's wall time in milliseconds."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def checked(argv: list[str]) -> None:
    r = run(argv, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")


def mount_and_umount(runs: int) -> dict[str, list[float]]:
    """`khofs mount` (it returns once the mount is live) and `khofs umount` (it returns once
    the daemon has exited)."""
    out: dict[str, list[float]] = {"khofs mount (live)": [], "khofs umount": []}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            try:
                out["khofs mount (live)"].append(clock(lambda: checked([*KHOFS, "mount", d])))
                if not is_mounted(d):
                    raise RuntimeError(f"khofs mount {d} returned before the mount was live")
                out["khofs umount"].append(clock(lambda: checked([*KHOFS, "umount", d])))
            finally:
                if is_mounted(d):
                    run(["umount", "-l", d])
    return out


def run_true(runs: int) -> list[float]:
    return [clock(lambda: checked([*KHOFS, "run", "--", "true"])) for _ in range(runs)]


def has_reboot() -> bool:
    return run([*KHOFS, "reboot", "--help"]).returncode == 0


def reboots(runs: int) -> dict[str, list[float]]:
    """`khofs reboot MNT` as a command, and the same request from this process (what the
    pytest plugin pays per test), on one mount of the default machine."""
    out: dict[str, list[float]] = {"khofs reboot (command)": [], "reboot request": []}
    with tempfile.TemporaryDirectory() as d:
        try:
            checked([*KHOFS, "mount", d])
            for _ in range(runs):
                out["khofs reboot (command)"].append(
                    clock(lambda: checked([*KHOFS, "reboot", d])))
            from khofs.cli.requests import reboot_request  # the plugin's own call

            for _ in range(runs):
                out["reboot request"].append(clock(lambda: reboot_request(d)))
        finally:
            if is_mounted(d):
                run([*KHOFS, "umount", d])
            if is_mounted(d):
                run(["umount", "-l", d])
    return out


def pytest_session(source: str, workdir: Path) -> float:
    """One `pytest -q` run of source, in a directory of its own: milliseconds."""
    test = workdir / "test_bench.py"
    test.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"--basetemp={workdir / 'tmp'}", str(test)]
    t0 = time.perf_counter_ns()
    r = subprocess.run(argv, capture_output=True, text=True, cwd=workdir, env=env,
                       timeout=600, check=False)
    ms = (time.perf_counter_ns() - t0) / 1e6
    if r.returncode != 0:
        raise RuntimeError(f"pytest session failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return ms


def fixture_per_test(repeats: int) -> dict[str, list[float]]:
    """The session with the fixture and without it, alternately: per-test difference."""
    out: dict[str, list[float]] = {"with kho": [], "without": [], "kho fixture per test": []}
    with tempfile.TemporaryDirectory(prefix="khofs-bench-pytest.") as d:
        for i in range(repeats):
            w = Path(d) / f"with{i}"
            wo = Path(d) / f"without{i}"
            w.mkdir()
            wo.mkdir()
            with_ms = pytest_session(WITH_FIXTURE, w)
            without_ms = pytest_session(WITHOUT_FIXTURE, wo)
            out["with kho"].append(with_ms)
            out["without"].append(without_ms)
            out["kho fixture per test"].append((with_ms - without_ms) / TESTS)
    return out


def startup_rows(runs: int, repeats: int) -> dict[str, list[float]]:
    """Every start-up row, in milliseconds."""
    rows = mount_and_umount(runs)
    rows["khofs run -- true"] = run_true(runs)
    if has_reboot():
        rows.update(reboots(runs * 5))
    rows.update(fixture_per_test(repeats))
    return rows


def median(xs: list[float]) -> float:
    return statistics.median(xs)
