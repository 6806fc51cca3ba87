"""Faults of the daemon while clients use the mount: SIGSTOP, Ctrl-C of a waiting client,
SIGKILL of a stopped daemon. (SIGKILL then `khofs umount`, SIGTERM and SIGINT of the daemon
are in test_cli.py.)

What a user sees, as on any FUSE filesystem: while the daemon is stopped, every system call
on the mount waits (the client sleeps in the kernel, state S, using no CPU), for as long as
the daemon stays stopped; SIGCONT lets it answer and the client finishes with the right
bytes. A waiting client can be ended by a signal that kills it (Ctrl-C, SIGTERM, SIGKILL);
the mount keeps working afterwards. If the daemon dies meanwhile, the waiting call fails
with ECONNABORTED and later ones with ENOTCONN, until `khofs umount`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import daemon_pid, is_mounted, khofs, sh, wait_gone

pytestmark = pytest.mark.mount

WAIT = 1.0  # how long a client is seen waiting on a stopped daemon


def proc_state(pid: int, process: int | None = None) -> str:
    """A process's state letter, or a thread's (of process)."""
    path = f"/proc/{pid}/stat" if process is None else f"/proc/{process}/task/{pid}/stat"
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def all_stopped(pid: int) -> bool:
    """Every thread of pid is stopped. A group stop reaches each thread on its own; one still
    running could take the next request off /dev/fuse and stop with it in hand, and the
    client would wait for it uninterruptibly (a mount that served before has up to ten idle
    threads waiting for requests)."""
    tasks = os.listdir(f"/proc/{pid}/task")
    return all(proc_state(int(t), pid) == "T" for t in tasks)


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while not all_stopped(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all_stopped(pid)


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The daemon stopped with SIGSTOP for the block; continued however the block ends."""
    try:
        stop(pid)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def waiting(proc: subprocess.Popen[bytes]) -> None:
    """The client is still in its system call after WAIT seconds, asleep in the kernel."""
    time.sleep(WAIT)
    assert proc.poll() is None
    assert proc_state(proc.pid) in ("S", "D")


def test_cat_waits_for_a_stopped_daemon(mnt: Path) -> None:
    pid = daemon_pid(mnt)
    with stopped(pid):
        cat = subprocess.Popen(["cat", str(mnt / "kho/out/finalize")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        try:
            waiting(cat)
        except BaseException:
            cat.kill()
            raise
    out, err = cat.communicate(timeout=10)
    assert (cat.returncode, out, err) == (0, b"0\n", b"")


def test_dd_of_fdt_stopped_mid_read_resumes(mnt: Path) -> None:
    """dd reads 16 bytes of an open `fdt`; the daemon stops; the rest of the blob comes after
    SIGCONT, on the same open file, byte for byte."""
    assert sh(f"echo 1 > {mnt}/kho/out/finalize").returncode == 0
    blob = (mnt / "kho/out/fdt").read_bytes()
    pid = daemon_pid(mnt)
    script = (f"exec 3< {mnt}/kho/out/fdt; dd bs=16 count=1 status=none <&3; read go; "
              "dd bs=64K status=none <&3")
    dd = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    try:
        assert dd.stdin is not None and dd.stdout is not None
        head = dd.stdout.read(16)
        assert head == blob[:16]
        with stopped(pid):
            dd.stdin.write(b"go\n")
            dd.stdin.flush()
            waiting(dd)
        rest, err = dd.communicate(timeout=10)
    finally:
        if dd.poll() is None:
            dd.kill()
            dd.wait(10)
    assert (dd.returncode, err) == (0, b"")
    assert head + rest == blob


def test_ctrl_c_ends_a_waiting_client_and_the_mount_still_works(mnt: Path) -> None:
    pid = daemon_pid(mnt)
    with stopped(pid):
        cat = subprocess.Popen(["cat", str(mnt / "kho/out/scratch_len")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            waiting(cat)
            cat.send_signal(signal.SIGINT)
            cat.wait(5)
        finally:
            if cat.poll() is None:
                cat.kill()
                cat.wait(10)
        assert cat.returncode == -signal.SIGINT
    assert sh(f"cat {mnt}/kho/out/scratch_len").stdout == "0xcc00000\n0x23600000\n0x20600000\n"
    assert sh(f"echo 1 > {mnt}/kho/out/finalize").returncode == 0
    assert (mnt / "kho/out/finalize").read_bytes() == b"1\n"


def test_killing_a_stopped_daemon_fails_the_waiting_client(
        mount: Callable[..., Path]) -> None:
    # a mount of its own: the request cat waits in is its first lookup, which the kill aborts
    # (ECONNABORTED); on a mount whose names the kernel has cached, the lookup that fails is a
    # revalidation, which the kernel retries as a new lookup (ENOTCONN)
    mnt = mount()
    pid = daemon_pid(mnt)
    stop(pid)
    cat = subprocess.Popen(["cat", str(mnt / "kho/out/finalize")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        waiting(cat)
        os.kill(pid, signal.SIGKILL)  # a stopped process dies of SIGKILL
        assert wait_gone(pid)
        out, err = cat.communicate(timeout=10)
        assert (cat.returncode, out) == (1, b"")
        assert err.decode().endswith(": Software caused connection abort\n"), err  # ECONNABORTED
        r = sh(f"cat {mnt}/kho/out/finalize")
        assert r.stderr.endswith(": Transport endpoint is not connected\n"), r.stderr  # ENOTCONN
        r2 = khofs("umount", str(mnt))
        assert r2.returncode == 0, r2.stderr
        assert not is_mounted(mnt)
    finally:
        if cat.poll() is None:
            cat.kill()
            cat.wait(10)
        if os.path.exists(f"/proc/{pid}") and proc_state(pid) == "T":
            os.kill(pid, signal.SIGCONT)  # the test failed before the kill: let teardown work
