"""What the hardening tests share: mounts on either FUSE backend (with tests.helpers' khofs,
as a user runs it), and checking what a command left behind (mounts, daemons).

Every mount made here is unmounted when the `with` ends, passed or failed; a stopped daemon
is continued and killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from khofs.daemon.mountinfo import find
from khofs.daemon.probe import is_running, is_stopped
from khofs.daemon.state import pid_path
from tests.helpers import khofs

BACKENDS = ("2", "3")


def daemon_pid(mnt: Path) -> int | None:
    try:
        return int(pid_path(mnt).read_text())
    except (OSError, ValueError):
        return None


def daemons_of(mnt: Path) -> list[int]:
    """Processes whose command line names mnt as the mount point of `khofs mount`."""
    want = os.fsencode(mnt)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and want in argv and is_running(int(entry)):
            found.append(int(entry))
    return found


def nothing_left(mnt: Path, timeout: float = 10) -> None:
    """No mount at mnt and no daemon serving it (a daemon may take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while daemons_of(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert find(mnt) is None, f"{mnt} is still mounted"
    assert daemons_of(mnt) == [], f"a daemon of {mnt} is still running"


def force_cleanup(mnt: Path) -> None:
    """Whatever a failed test left: continue and kill its daemons, detach the mount."""
    for pid in daemons_of(mnt):
        with contextlib.suppress(ProcessLookupError):
            if is_stopped(pid):
                os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    if find(mnt) is not None:
        subprocess.run(["umount", "-l", os.fspath(mnt)], capture_output=True, check=False)


@contextlib.contextmanager
def mounted(mnt: Path, *options: str, backend: str | None = None) -> Iterator[Path]:
    """`khofs mount MNT OPTIONS` (on the backend given), unmounted at the end."""
    mnt.mkdir(parents=True, exist_ok=True)
    r = khofs("mount", mnt, *options, backend=backend)
    assert r.returncode == 0, r.stderr
    try:
        yield mnt
    finally:
        try:
            if find(mnt) is not None:
                khofs("umount", mnt, backend=backend, timeout=30)
        finally:
            force_cleanup(mnt)
