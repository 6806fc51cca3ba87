"""The mount's life cycle: start a daemon that serves an emulated machine, and unmount.

`start` forks a daemon (its command line is the `khofs mount MOUNTPOINT ...` that started
it), which serves FUSE and says "ready" from the FUSE init callback; until then its stderr is
a pipe to the parent, so whatever libfuse prints on a failed mount becomes the parent's one
error line. After that the daemon logs to a file.

The daemon serves whatever kernel the machine runs now: `Host` holds the System and a lock
that every FUSE call and every kexec takes, so a call sees one kernel's tree, whole.
`khofs kexec` and `khofs log` reach the daemon through its control socket (khofs/control.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from khofs import ramimage
from khofs.control import ControlServer, KexecRequest
from khofs.debugfs.inode import Debugfs
from khofs.engine.printk import Record
from khofs.engine.system import Handoff, System, format_record

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


SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) less the NUL


def socket_path(mountpoint: str) -> Path:
    """The control socket beside the pid file; a hash of the mount point when the readable
    name would not fit in a sockaddr_un."""
    path = runtime_dir() / f"{_state_name(mountpoint)}.sock"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:16]
    return runtime_dir() / f"ctl-{digest}.sock"


def _unescape_mountinfo(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mountinfo(mountpoint: str) -> list[str] | None:
    """The last /proc/self/mountinfo entry mounted exactly at mountpoint, split, or None."""
    target = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape_mountinfo(fields[4]) == target:
                found = fields
    return found


def mount_fstype(mountpoint: str) -> str | None:
    """The file system type mounted exactly at mountpoint, or None."""
    fields = _mountinfo(mountpoint)
    return fields[fields.index("-") + 1] if fields else None


def mount_owner(mountpoint: str) -> int | None:
    """The uid that mounted a FUSE file system there (its `user_id=` option), or None."""
    fields = _mountinfo(mountpoint)
    if not fields:
        return None
    for option in fields[-1].split(","):
        if option.startswith("user_id="):
            return int(option.removeprefix("user_id="))
    return None


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


class Host:
    """The emulated machine as the daemon serves it: its System, and the lock that keeps
    FUSE calls and kexecs apart (a FUSE call never sees a half-switched kernel)."""

    def __init__(self, system: System, mountpoint: str, logger: logging.Logger) -> None:
        self.system = system
        self.mountpoint = os.path.realpath(mountpoint)
        self.logger = logger
        self.lock = threading.Lock()
        self._kexec_lock = threading.Lock()  # one request's load and execute together
        self._log_changed = threading.Condition()
        self.gone_to: Path | None = None  # where the machine kexec'd away to
        self.pending_to: Path | None = None  # `--load-only --to`: where a stop hands over
        for boot, rec in system.records:
            logger.info("%s", format_record(boot, rec))
        system.log_sink = self._log_sink

    def _log_sink(self, boot: int, rec: Record) -> None:
        self.logger.info("%s", format_record(boot, rec))
        with self._log_changed:
            self._log_changed.notify_all()

    def current(self) -> Debugfs:
        """The running kernel's debugfs; FUSE calls it with `lock` held."""
        return self.system.kernel.debugfs

    # --- control requests ----------------------------------------------------------------

    def log_lines(self, start: int) -> list[str]:
        return [format_record(boot, rec) for boot, rec in self.system.records[start:]]

    def wait_log(self, count: int, timeout: float) -> None:
        with self._log_changed:
            self._log_changed.wait_for(lambda: len(self.system.records) > count, timeout)

    def kexec(self, request: KexecRequest) -> tuple[int, str]:
        """kexec -s -l, then kexec -e here or into another process: (0, "") or (1, line)."""
        with self._kexec_lock:
            if self.gone_to is not None:  # until the unmount: nothing left to kexec
                return 1, f"the machine has kexec'd to {self.gone_to}"
            if not request.load and not request.execute:  # kexec -u
                with self.lock:
                    self.system.kexec_unload()
                    self.pending_to = None
                return 0, ""
            if request.load:
                err, message = self._load(request)
                if err:
                    return 1, message
            if not request.execute:
                return self._hand_over_at_stop(request.to)
            if request.to is not None:
                return self._hand_over(Path(request.to))
            with self.lock:
                err, message = self.system.kexec_execute()
            return (1, message) if err else (0, "")

    def _load(self, request: KexecRequest) -> tuple[int, str]:
        with self.lock:
            cmdline = request.command_line
            if request.append is not None:
                # kexec-tools' concat_cmdline: the reused command line, a space, the append
                cmdline = f"{self.system.kernel.params.cmdline} {request.append}"
            return self.system.kexec_load(cmdline, request.image_size, request.initrd_size)

    def _hand_over_at_stop(self, to: str | None) -> tuple[int, str]:
        """kexec -l with --to: the loaded image goes to DIR when this daemon is stopped
        (unmount, SIGTERM, SIGINT), as a machine whose next kernel was loaded reboots into
        it. A load without --to forgets an earlier --to."""
        self.pending_to = None
        if to is None:
            return 0, ""
        path = Path(to)
        real = os.path.realpath(path)
        if real == self.mountpoint or real.startswith(self.mountpoint.rstrip("/") + "/"):
            return 1, f"{to}: inside the mount point it would hand over from"
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            return 1, f"{to}: {e.strerror or e}"
        self.pending_to = path
        return 0, ""

    def hand_over_if_stopped_loaded(self) -> None:
        """The daemon is stopping with an image loaded for another process: write it."""
        with self.lock:
            to, self.pending_to = self.pending_to, None
            if to is None or self.system.loaded is None:
                return
            err, handoff = self.system.take_handoff()
            if handoff is None:
                return
            try:
                ramimage.write_handoff(to, self.system.machine, handoff)
            except OSError as e:
                self.logger.error("khofs: stopped with a loaded image, but cannot hand it "
                                  "over: %s: %s", e.filename, e.strerror or e)
                return
        self.logger.info("khofs: stopped with a loaded image: handed over to %s", to)

    def _hand_over(self, to: Path) -> tuple[int, str]:
        """kexec -e into the process that will `khofs mount --boot-from to`."""
        real = os.path.realpath(to)
        if real == self.mountpoint or real.startswith(self.mountpoint.rstrip("/") + "/"):
            return 1, f"{to}: inside the mount point it would hand over from"
        with self.lock:
            if self.system.loaded is None:
                return 1, "Nothing has been loaded!"
            try:  # a directory we cannot write fails before the kernel goes
                to.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                return 1, f"{to}: {e.strerror or e}"
            err, handoff = self.system.take_handoff()
            if handoff is None:
                return 1, "Nothing has been loaded!"
            try:
                ramimage.write_handoff(to, self.system.machine, handoff)
            except OSError as e:
                return 1, self._boot_here(handoff, f"{e.filename}: {e.strerror or e}")
            self.gone_to = to
        self.logger.info("khofs: handed over to %s: unmounting", to)
        return 0, ""

    def _boot_here(self, handoff: Handoff, problem: str) -> str:
        """The handover could not be written: the RAM is still here, so the next kernel
        boots in this daemon, as `kexec -e` without --to would have done."""
        old = self.system
        self.logger.error("khofs: cannot hand over: %s; booting the next kernel here", problem)
        self.system = System(old.machine, handoff.image.handover.cmdline, old.producers,
                             uid=old.uid, gid=old.gid, log_sink=self._log_sink, handoff=handoff)
        return f"cannot hand over: {problem} (the next kernel booted in this mount instead)"

    def stop(self) -> None:
        """Unmount and exit as SIGTERM does: libfuse's handler, on the FUSE main thread."""
        ident = threading.main_thread().ident
        if ident is not None:
            signal.pthread_kill(ident, signal.SIGTERM)


def _serve(host: Host, mountpoint: str, allow_other: bool, debug: bool,
           on_ready: Callable[[], None] | None = None) -> None:
    """Listen on the control socket, then serve FUSE until unmounted."""
    from khofs.fuse import serve

    control = ControlServer(socket_path(mountpoint), host)
    control.start()
    try:
        serve(host.current, mountpoint, host.system.machine.arch.page_size, lock=host.lock,
              allow_other=allow_other, debug=debug, on_ready=on_ready)
    finally:
        control.close()
        host.hand_over_if_stopped_loaded()


def run_foreground(system: System, mountpoint: str, allow_other: bool, debug: bool) -> int:
    host = Host(system, mountpoint, setup_logging(None, debug))
    _serve(host, mountpoint, allow_other, debug)
    return 0


def start(system: System, mountpoint: str, log_path: Path, allow_other: bool,
          debug: bool) -> tuple[int, str]:
    """Fork the daemon; return (0, "") once the mount is live, or (2, error line)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        _daemon(system, mountpoint, log_path, w, allow_other, debug)
        os._exit(0)
    os.close(w)
    return _await_ready(pid, r, mountpoint)


def _daemon(system: System, mountpoint: str, log_path: Path, w: int, allow_other: bool,
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

    def ready() -> None:
        os.write(2, READY)
        os.dup2(logfd, 2)

    status = 0
    try:
        host = Host(system, mountpoint, setup_logging(str(log_path), debug))
        _serve(host, mountpoint, allow_other, debug, on_ready=ready)
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
    # a daemon that was killed left its control socket behind
    socket_path(mountpoint).unlink(missing_ok=True)
    return 0


def _wait_for_daemon(pidfile: Path, timeout: float = 10.0) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.02)
    pidfile.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """pid has not exited. A zombie has: once `khofs mount` is gone, its reaper is PID 1,
    which may take seconds to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
