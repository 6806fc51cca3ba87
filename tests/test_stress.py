"""scripts/stress.py, short: every invariant holds under load, and a dead daemon is caught.

`make stress` runs it for real (8 processes, 60 s); this is the version `make test` runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from khofs.daemon.probe import process_state
from tests.helpers import is_mounted, khofs

pytestmark = pytest.mark.mount

STRESS = str(Path(__file__).resolve().parent.parent / "scripts" / "stress.py")
MOUNTED = re.compile(r"^stress: mounted (\S+) \(daemon (\d+)\)", re.M)
ROW = re.compile(r"^  (\w+) +(\d+)  (.*)$", re.M)
WRITES = re.compile(r"successful writes: 1 x (\d+), 0 x (\d+); finalize reads (\d) at the end")


def gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z", "X")


def test_short_run_holds_every_invariant() -> None:
    r = subprocess.run([sys.executable, STRESS, "--procs", "4", "--seconds", "5", "--seed", "7"],
                       capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("stress: OK, every invariant held"), r.stdout
    m = MOUNTED.search(r.stdout)
    assert m, r.stdout
    assert not is_mounted(Path(m[1])) and gone(int(m[2]))
    rows = {name: (int(count), detail) for name, count, detail in ROW.findall(r.stdout)}
    assert set(rows) == {"toggle", "write_junk", "read_fdt", "read_sub", "read_finalize",
                         "read_scratch", "stat", "readdir", "consistency"}
    assert all(count > 0 for count, _ in rows.values()), rows
    # both directions succeeded, and refused writes were refused for the kernel's reasons
    assert "ok" in rows["toggle"][1] and "EINVAL" in rows["write_junk"][1]
    assert set(re.findall(r"([A-Z]+|ok) \d+", rows["write_junk"][1])) <= {"EINVAL", "ERANGE"}
    assert "ok" in rows["read_fdt"][1] and "ok" in rows["consistency"][1]
    w = WRITES.search(r.stdout)
    assert w, r.stdout
    ones, zeros, final = (int(x) for x in w.groups())
    assert ones > 0 and ones - zeros == final


def test_a_killed_daemon_is_a_violation_and_still_unmounted() -> None:
    proc = subprocess.Popen([sys.executable, STRESS, "--procs", "2", "--seconds", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mnt: Path | None = None
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = MOUNTED.search(first)
        assert m, first
        mnt, pid = Path(m[1]), int(m[2])
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out + err
        violation = out.strip().splitlines()[-1]
        assert violation.startswith("stress: VIOLATION: worker "), out
        assert ("is gone" in violation or "Transport endpoint is not connected" in violation
                or "Connection aborted" in violation), violation
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if mnt is not None and is_mounted(mnt):
            khofs("umount", str(mnt))
