"""The mount's life cycle: start a daemon that serves an emulated machine, and unmount.

`start` forks a daemon (its command line is the `khofs mount MOUNTPOINT ...` that started
it), which serves FUSE and says "ready" from the FUSE init callback; until then its stderr is
a pipe to the parent, so whatever libfuse prints on a failed mount becomes the parent's one
error line. After that the daemon logs to a file.

The daemon serves whatever kernel the machine runs now (khofs.daemon.served); `khofs kexec`,
`khofs reboot` and `khofs log` reach it through its control socket (khofs.daemon.control).

`umount` is what `khofs umount` runs: it imports nothing of the daemon's serving side, so the
command starts quickly.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from khofs.daemon import mountinfo
from khofs.daemon.state import pid_path, socket_path

if TYPE_CHECKING:
    import logging

    from khofs.daemon.served import Rebooter, ServedSystem
    from khofs.engine.system import System

READY = b"\nkhofs-ready\n"
START_TIMEOUT = 30.0


def setup_logging(stream_or_path: str | None, debug: bool) -> logging.Logger:
    """The daemon's log: kernel lines as dmesg prints them, and khofs's own messages."""
    import logging  # the daemon's: `khofs umount` has no log

    handler: logging.Handler
    if stream_or_path is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(stream_or_path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    return logging.getLogger("khofs.kernel")


def _serve(host: ServedSystem, mountpoint: str, allow_other: bool, debug: bool,
           on_ready: Callable[[], None] | None = None) -> None:
    """Listen on the control socket, then serve FUSE until unmounted."""
    from khofs.daemon.control import ControlServer
    from khofs.daemon.fuse_edge import serve

    control = ControlServer(socket_path(mountpoint), host)
    control.start()
    try:
        serve(host.current, mountpoint, host.page_size, lock=host.lock,
              allow_other=allow_other, debug=debug, on_ready=on_ready)
    finally:
        control.close()
        host.hand_over_if_stopped_loaded()


def run_foreground(system: System, mountpoint: str, allow_other: bool, debug: bool,
                   rebooter: Rebooter | None = None) -> int:
    from khofs.daemon.served import ServedSystem

    host = ServedSystem(system, mountpoint, setup_logging(None, debug), rebooter)
    _serve(host, mountpoint, allow_other, debug)
    return 0


def start(system: System, mountpoint: str, log_path: Path, allow_other: bool,
          debug: bool, rebooter: Rebooter | None = None) -> tuple[int, str]:
    """Fork the daemon; return (0, "") once the mount is live, or (2, error line)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        _daemon(system, mountpoint, log_path, w, allow_other, debug, rebooter)
        os._exit(0)
    os.close(w)
    return _await_ready(pid, r, mountpoint)


def _daemon(system: System, mountpoint: str, log_path: Path, w: int, allow_other: bool,
            debug: bool, rebooter: Rebooter | None) -> None:
    from khofs.daemon.served import ServedSystem

    os.setsid()
    logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(w, 2)
    os.close(w)
    pidfile = pid_path(mountpoint)
    pidfile.write_text(f"{os.getpid()}\n")

    def ready() -> None:
        os.write(2, READY)
        os.dup2(logfd, 2)

    status = 0
    try:
        host = ServedSystem(system, mountpoint, setup_logging(str(log_path), debug), rebooter)
        _serve(host, mountpoint, allow_other, debug, on_ready=ready)
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
    lines = [ln.strip() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return 2, lines[-1] if lines else "the daemon exited before the mount came up"


def _run(argv: list[str]) -> bool:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False).returncode == 0


def umount(mountpoint: str) -> int:
    """fusermount -u (also fine when the daemon died); umount -l as a last resort."""
    if mountinfo.fstype(mountpoint) is None:
        return -1
    pidfile = pid_path(mountpoint)
    for argv in (["fusermount", "-u", mountpoint], ["umount", mountpoint],
                 ["fusermount", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if _run(argv):
            break
    else:
        return 1
    _wait_for_daemon(pidfile)
    # a daemon that was killed left its control socket behind
    socket_path(mountpoint).unlink(missing_ok=True)
    return 0


def _wait_for_daemon(pidfile: Path, timeout: float = 10.0) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    wait_exit(pid, timeout)
    pidfile.unlink(missing_ok=True)


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until pid has exited (a zombie has): True, or False after timeout. A pidfd turns
    readable the moment the process exits (it is not our child, so no waitpid); where there
    is no pidfd (Linux before 5.3), /proc is looked at every 20 ms."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return _poll_exit(pid, timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000)) or not _running(pid)
    finally:
        os.close(fd)


def _poll_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _running(pid: int) -> bool:
    """pid has not exited. A zombie has: once `khofs mount` is gone, its reaper is PID 1,
    which may take seconds to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
