"""The mount's life cycle: start a daemon that serves an emulated machine, and unmount
(khofs.daemon.detach).

`start` forks a daemon (its command line is the `khofs mount MOUNTPOINT ...` that started
it), which serves FUSE and says "ready" from the FUSE init callback; until then its stderr is
a pipe to the parent, so whatever libfuse prints on a failed mount becomes the parent's one
error line. After that the daemon logs to a file.

Interrupting `khofs mount` (SIGINT, SIGTERM, SIGHUP) while the mount comes up leaves nothing:
the signals stay blocked across the fork, so the one that arrives lands in the parent, which
kills the daemon and detaches whatever it had mounted.

The daemon serves whatever kernel the machine runs now (khofs.daemon.served); `khofs kexec`,
`khofs reboot` and `khofs log` reach it through its control socket (khofs.daemon.control).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable

from khofs.daemon import mountinfo
from khofs.daemon.control import STOP_SIGNALS, ControlServer
from khofs.daemon.detach import umount
from khofs.daemon.served import Rebooter, ServedSystem
from khofs.daemon.state import pid_path, socket_path, write_pid_file
from khofs.engine.system import System

READY = b"\nkhofs-ready\n"
START_TIMEOUT = 30.0


def open_log(path: str) -> int:
    """The daemon's log, opened (append, 0600) by `khofs mount` itself so that a bad --log is
    its one-line error: OSError when it cannot be. O_NONBLOCK only for the open, so a FIFO
    without a reader fails (ENXIO) instead of waiting."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK,
                 0o600)
    os.set_blocking(fd, True)
    return fd


def setup_logging(logfd: int | None, debug: bool) -> logging.Logger:
    """The daemon's log: kernel lines as dmesg prints them, and khofs's own messages. Paths
    that are not UTF-8 go out as the bytes they are."""
    stream = sys.stderr if logfd is None else open(  # noqa: SIM115 - the daemon's for life
        logfd, "w", buffering=1, encoding="utf-8", errors="surrogateescape", closefd=False)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    return logging.getLogger("khofs.kernel")


def default_signals() -> None:
    """SIG_DFL for the stop signals, so that libfuse installs its handlers (which end the
    FUSE loop and unmount) in place of the command's."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def _serve(served: ServedSystem, mountpoint: str, allow_other: bool, debug: bool,
           on_ready: Callable[[], None] | None = None) -> None:
    """Listen on the control socket, then serve FUSE until unmounted."""
    from khofs.daemon.fuse_edge import serve

    control = ControlServer(socket_path(mountpoint), served)
    control.start()
    try:
        serve(served.current, mountpoint, served.page_size, lock=served.lock,
              allow_other=allow_other, debug=debug, on_ready=on_ready)
    finally:
        control.close()
        served.hand_over_if_stopped_loaded()


def run_foreground(system: System, mountpoint: str, allow_other: bool, debug: bool,
                   rebooter: Rebooter | None = None) -> int:
    pidfile = pid_path(mountpoint)
    default_signals()
    write_pid_file(pidfile)
    try:
        served = ServedSystem(system, mountpoint, setup_logging(None, debug), rebooter)
        _serve(served, mountpoint, allow_other, debug)
    finally:
        pidfile.unlink(missing_ok=True)
    return 0


def start(system: System, mountpoint: str, logfd: int, allow_other: bool,
          debug: bool, rebooter: Rebooter | None = None) -> tuple[int, str]:
    """Fork the daemon; return (0, "") once the mount is live, or (2, error line). Whatever
    interrupts this (Interrupted, KeyboardInterrupt) takes the daemon and its mount with it."""
    r, w = os.pipe()
    pid = 0
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # the daemon: never back into the command's code
            try:
                os.close(r)
                _daemon(system, mountpoint, logfd, w, mask, allow_other, debug, rebooter)
            finally:
                os._exit(1)
        os.close(w)
        os.close(logfd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending Ctrl-C lands here
        result = _await_ready(pid, r, mountpoint)
        if not result[0]:  # up: from here a signal is too late to undo it
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        return result
    except BaseException:
        if pid:
            _undo(pid, mountpoint)
        raise


def _undo(pid: int, mountpoint: str) -> None:
    """Kill a daemon that was starting and detach what it mounted."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if mountinfo.fstype(mountpoint) == "fuse.khofs":
        umount(mountpoint)
    pid_path(mountpoint).unlink(missing_ok=True)
    socket_path(mountpoint).unlink(missing_ok=True)


def _daemon(system: System, mountpoint: str, logfd: int, w: int,
            mask: set[int | signal.Signals], allow_other: bool, debug: bool,
            rebooter: Rebooter | None) -> None:
    os.setsid()  # out of the terminal's process group: its Ctrl-C is for the command
    default_signals()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(w, 2)
    os.close(w)
    pidfile = pid_path(mountpoint)

    def ready() -> None:
        os.write(2, READY)
        os.dup2(logfd, 2)

    status = 0
    try:
        write_pid_file(pidfile)
        served = ServedSystem(system, mountpoint, setup_logging(logfd, debug), rebooter)
        _serve(served, mountpoint, allow_other, debug, on_ready=ready)
    except BaseException as e:  # noqa: BLE001 - the daemon must report, then exit
        import logging

        print(f"{e}", file=sys.stderr)
        logging.getLogger("khofs").exception("daemon stopped")
        status = 1
    finally:
        pidfile.unlink(missing_ok=True)
    sys.stderr.flush()
    os._exit(status)


def _await_ready(pid: int, r: int, mountpoint: str) -> tuple[int, str]:
    data = b""
    deadline = time.monotonic() + START_TIMEOUT
    while READY not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            os.kill(pid, 9)
            data += b"\ntimed out waiting for the mount to come up"
            break
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    if READY in data:
        return 0, ""
    os.waitpid(pid, 0)
    if mountinfo.fstype(mountpoint) == "fuse.khofs":
        umount(mountpoint)
    lines = [ln.strip() for ln in data.decode(errors="surrogateescape").splitlines()
             if ln.strip()]
    return 2, lines[-1] if lines else "the daemon exited before the mount came up"
