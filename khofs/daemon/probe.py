"""Looking at a mount and its daemon without hanging.

A stat() of a FUSE mount whose daemon is stopped (SIGSTOP, Ctrl-Z) or stuck waits in the
kernel until the daemon answers, which may be never. So the one stat a client needs is made
by a child process that is killed when it has not answered in time (a FUSE request's wait is
killable), and a daemon's state is read from /proc, which never waits for it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

PROBE_TIMEOUT = 2.0
TIMED_OUT = -1


def stat_errno(path: str, timeout: float = PROBE_TIMEOUT) -> int:
    """stat(path) in a child: 0, the errno it failed with, or TIMED_OUT."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.stat(path)
            code = 0
        except OSError as e:
            code = e.errno or 255
        os._exit(min(code, 255))
    if not wait_exit(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return TIMED_OUT
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else TIMED_OUT


def wait_exit(pid: int, timeout: float) -> bool:
    """Until pid has exited (a zombie has), at most timeout: whether it has. A pidfd turns
    readable the moment the process exits, a child or not, so no wait ends late; where there
    is no pidfd (Linux before 5.3), /proc is looked at every 10 ms."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        deadline = time.monotonic() + timeout
        while is_running(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, T for stopped, t for traced, Z...), or
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return fields[0].decode() if fields else None


def is_stopped(pid: int) -> bool:
    """Stopped by a signal (SIGSTOP, SIGTSTP: Ctrl-Z) or by a debugger."""
    return process_state(pid) in ("T", "t")


def is_running(pid: int) -> bool:
    """pid has not exited. A zombie has: once `khofs mount` is gone, its reaper is PID 1,
    which may take seconds to reap it."""
    state = process_state(pid)
    return state is not None and state != "Z"
