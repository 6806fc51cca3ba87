"""The mount's life cycle: start a daemon that serves a booted kernel, and unmount.

`start` forks a daemon (its command line is the `khofs mount MOUNTPOINT ...` that started
it), which serves FUSE and says "ready" from the FUSE init callback; until then its stderr is
a pipe to the parent, so whatever libfuse prints on a failed mount becomes the parent's one
error line. After that the daemon logs to a file.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from khofs.engine.kernel import Kernel

READY = b"\nkhofs-ready\n"
START_TIMEOUT = 30.0


def runtime_dir() -> Path:
    """Where pid and log files live: $XDG_RUNTIME_DIR/khofs, else /tmp/khofs-UID."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "khofs" if base else Path(f"/tmp/khofs-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _state_name(mountpoint: str) -> str:
    return os.path.realpath(mountpoint).strip("/").replace("/", "-") or "root"


def default_log_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{_state_name(mountpoint)}.log"


def pid_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{_state_name(mountpoint)}.pid"


def _unescape_mountinfo(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_fstype(mountpoint: str) -> str | None:
    """The file system type mounted exactly at mountpoint, or None."""
    target = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if _unescape_mountinfo(fields[4]) == target:
                found = fields[sep + 1]
    return found


def setup_logging(stream_or_path: str | None, debug: bool) -> logging.Logger:
    """The daemon's log: kernel lines as dmesg prints them, and khofs's own messages."""
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


def attach_kernel_log(kernel: Kernel, logger: logging.Logger) -> None:
    """Write what the kernel logged so far, then every new line as it comes."""
    for rec in kernel.log.records:
        logger.info("%s", rec.format())
    kernel.log.sink = lambda rec: logger.info("%s", rec.format())


def run_foreground(kernel: Kernel, mountpoint: str, allow_other: bool, debug: bool) -> int:
    from khofs.fuse import serve

    attach_kernel_log(kernel, setup_logging(None, debug))
    serve(kernel.debugfs, mountpoint, kernel.machine.arch.page_size,
          allow_other=allow_other, debug=debug)
    return 0


def start(kernel: Kernel, mountpoint: str, log_path: Path, allow_other: bool,
          debug: bool) -> tuple[int, str]:
    """Fork the daemon; return (0, "") once the mount is live, or (2, error line)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        _daemon(kernel, mountpoint, log_path, w, allow_other, debug)
        os._exit(0)
    os.close(w)
    return _await_ready(pid, r, mountpoint)


def _daemon(kernel: Kernel, mountpoint: str, log_path: Path, w: int, allow_other: bool,
            debug: bool) -> None:
    os.setsid()
    logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(w, 2)
    os.close(w)
    pidfile = pid_path(mountpoint)
    pidfile.write_text(f"{os.getpid()}\n")
    attach_kernel_log(kernel, setup_logging(str(log_path), debug))

    def ready() -> None:
        os.write(2, READY)
        os.dup2(logfd, 2)

    status = 0
    try:
        from khofs.fuse import serve

        serve(kernel.debugfs, mountpoint, kernel.machine.arch.page_size,
              allow_other=allow_other, debug=debug, on_ready=ready)
    except BaseException as e:  # noqa: BLE001 - the daemon must report, then exit
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
    if mount_fstype(mountpoint) == "fuse.khofs":
        umount(mountpoint)
    lines = [ln.strip() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return 2, lines[-1] if lines else "the daemon exited before the mount came up"


def _run(argv: list[str]) -> bool:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False).returncode == 0


def umount(mountpoint: str) -> int:
    """fusermount -u (also fine when the daemon died); umount -l as a last resort."""
    if mount_fstype(mountpoint) is None:
        return -1
    pidfile = pid_path(mountpoint)
    for argv in (["fusermount", "-u", mountpoint], ["umount", mountpoint],
                 ["fusermount", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if _run(argv):
            break
    else:
        return 1
    _wait_for_daemon(pidfile)
    return 0


def _wait_for_daemon(pidfile: Path, timeout: float = 10.0) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    pidfile.unlink(missing_ok=True)
