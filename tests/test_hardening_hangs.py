"""Issue 13, H1 U1: a daemon that is stopped (SIGSTOP, Ctrl-Z) or gone: every command that
touches its mount answers in bounded time with one line, and `khofs umount` still detaches
it (it aborts the FUSE connection of a daemon that does not answer)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.hardening import BACKENDS, daemon_pid, force_cleanup, mounted, nothing_left
from tests.helpers import KHOFS, khofs

BOUND = 15.0  # what "bounded" means here: far below the timeout that would kill the command


def timed(*args: str | os.PathLike[str], backend: str) -> tuple[subprocess.CompletedProcess[str],
                                                                 float]:
    start = time.monotonic()
    r = khofs(*args, backend=backend, timeout=60)
    return r, time.monotonic() - start


@pytest.mark.mount
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stopped_daemon(tmp_path: Path, backend: str) -> None:
    mnt = tmp_path / "m"
    with mounted(mnt, backend=backend):
        pid = daemon_pid(mnt)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        stopped = (f"khofs: {mnt}: its khofs daemon (pid {pid}) is stopped: continue it "
                   f"(kill -CONT {pid}) or `khofs umount {mnt}`\n")
        for args in (["log", mnt], ["log", "-f", mnt], ["kexec", mnt],
                     ["kexec", mnt, "--to", tmp_path / "to"]):
            r, took = timed(*args, backend=backend)
            assert (r.returncode, r.stdout, r.stderr) == (1, "", stopped), args
            assert took < BOUND
        r, took = timed("mount", mnt, backend=backend)
        assert (r.returncode, r.stderr) == (2, (
            f"khofs: mount point {mnt}: a khofs mount whose daemon does not answer "
            f"(stopped?): run `khofs umount {mnt}` first\n"))
        assert took < BOUND
        r, took = timed("umount", mnt, backend=backend)
        assert (r.returncode, r.stdout) == (0, "")
        assert r.stderr == (f"khofs: {mnt}: its daemon (pid {pid}, stopped) did not answer: "
                            "aborted its FUSE connection, unmounted\n")
        assert took < BOUND
        nothing_left(mnt)  # detached, and the daemon, continued, saw the end and exited
        assert not (tmp_path / "to").exists()


@pytest.mark.mount
def test_ctrl_z_on_a_foreground_daemon(tmp_path: Path) -> None:
    """`khofs mount --foreground` suspended as Ctrl-Z does it (SIGTSTP would be discarded
    here: the test's process group is orphaned; SIGSTOP stops it the same), then unmounted
    from elsewhere: it is detached, and the foreground command ends."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.Popen([*KHOFS, "mount", mnt, "--foreground"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while daemon_pid(mnt) is None or not os.path.ismount(mnt):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGSTOP)
        r, took = timed("umount", mnt, backend="2")
        assert r.returncode == 0 and "did not answer: aborted its FUSE connection" in r.stderr
        assert took < BOUND
        assert proc.wait(timeout=BOUND) == 0
        nothing_left(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        force_cleanup(mnt)


@pytest.mark.mount
@pytest.mark.parametrize("backend", BACKENDS)
def test_mounting_over_a_dead_mount(tmp_path: Path, backend: str) -> None:
    mnt = tmp_path / "m"
    with mounted(mnt, backend=backend):
        pid = daemon_pid(mnt)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        r = khofs("mount", mnt, backend=backend)
        assert (r.returncode, r.stderr) == (2, (
            f"khofs: mount point {mnt}: a dead khofs mount (its daemon is gone): run "
            f"`khofs umount {mnt}` first\n"))
        r = khofs("umount", mnt, backend=backend)
        assert (r.returncode, r.stderr) == (0, "")
        nothing_left(mnt)
        r = khofs("mount", mnt, backend=backend)  # and now it mounts
        assert r.returncode == 0, r.stderr
