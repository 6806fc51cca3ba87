"""`khofs run [mount options] [--boots N] [--console] [--initrd FILE | --root DIR] -- COMMAND`:
COMMAND is the userspace of an emulated machine, booted up to N times.

The runner stays single-threaded: it makes the run's mount namespace (and, for an ordinary
user, a user namespace in which it is root), forks the daemon that holds the machine
(khofs.run.machine: FUSE and the seccomp supervisor), prepares the /sys/kernel overlay, then
boots: each boot gets fresh namespaces with COMMAND as PID 1 (khofs.run.init). When the
machine reboots, the daemon says so and the runner kills the boot's init, which takes every
process of the boot with it; then the next kernel boots (kexec, or a cold restart) and
COMMAND starts again. The run ends when COMMAND exits (its status), when the machine halts or
powers off (0), or when a reboot would start boot N+1 (0, and a line on stderr).

Everything lives in the runner's private mount namespace: the FUSE mount, the overlay and
the per-boot roots go with it. Killed, the runner takes the daemon (PR_SET_PDEATHSIG) and the
boot (its A, then init) along.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from khofs.engine.system import System
from khofs.errors import InputError
from khofs.run import namespace as ns
from khofs.run.init import BootPlan, start_boot
from khofs.run.initramfs import Entry
from khofs.run.machine import receive, run_daemon, send
from khofs.run.mounts import Places, RunDir
from khofs.run.seccomp import seccomp_available

START_TIMEOUT = 30.0
DEFAULT_INIT = "/init"  # the kernel's rdinit


class RunError(Exception):
    """A start-up problem: one line, exit status 2."""


class Stop(Exception):
    """SIGTERM or SIGHUP to the runner: end the run as SIGINT does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _console_device() -> str:
    """What the run's /dev/console is: our terminal, else /dev/null."""
    for fd in (2, 1, 0):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.ttyname(fd)
    return "/dev/null"


class Runner:
    def __init__(self, system: System, command: Sequence[str], boots: int, console: bool,
                 initrd: list[Entry] | None, root: str | None, debug: bool,
                 logfd: int | None = None) -> None:
        self.system = system
        self.logfd = logfd  # --log: the daemon's log (else a file of the run's directory)
        self.log_start = 0
        self.boots = boots
        self.console = console
        self.debug = debug
        self.tmp = Path(tempfile.mkdtemp(prefix="khofs-run-"))
        os.chmod(self.tmp, 0o755)  # COMMAND may switch to other users
        fuse = self.tmp / "fuse"
        self.places = Places(machine=str(fuse / "machine"), debug=str(fuse / "debug"),
                             sys_kernel=str(self.tmp / "sys_kernel"),
                             console=_console_device())
        own_root = initrd is not None or root is not None
        self.plan = BootPlan(tuple(command), self.places,
                             root=str(self.tmp / "root") if own_root else None,
                             root_dir=root, initrd=tuple(initrd or ()))
        self.daemon: int | None = None
        self.control: socket.socket | None = None
        self.init_pidfd: int | None = None
        self.ending: str | None = None  # how the machine went down in this boot
        self.dir = RunDir(str(self.tmp))

    # --- the daemon -------------------------------------------------------------------------

    def start_daemon(self) -> None:
        (self.tmp / "fuse").mkdir()
        (self.tmp / "sys_kernel").mkdir()
        if self.plan.root is not None:
            (self.tmp / "root").mkdir()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = self.tmp / "daemon.log"
        if self.logfd is not None:  # --log: read back from where this run's lines start
            log = Path(f"/proc/self/fd/{self.logfd}")
            with contextlib.suppress(OSError):
                self.log_start = os.lseek(self.logfd, 0, os.SEEK_END)
        console = os.dup(2) if self.console else None
        pid = os.fork()
        if pid == 0:
            ours.close()
            fd = (self.logfd if self.logfd is not None
                  else os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            run_daemon(self.system, theirs, self.places, str(self.tmp / "fuse"), console,
                       self.debug, self.dir)
        theirs.close()
        if console is not None:
            os.close(console)
        self.daemon, self.control = pid, ours
        self._await_ready(log)
        self._overlay()

    def _await_ready(self, log: Path) -> None:
        assert self.control is not None
        ready, _, _ = select.select([self.control], [], [], START_TIMEOUT)
        message = receive(self.control)[0] if ready else None
        if message == {"ready": True}:
            return
        try:
            with log.open("rb") as f:
                f.seek(self.log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        libfuse = [ln for ln in lines if ln.startswith("fuse: ")]  # libfuse says why first
        lines = libfuse or lines
        raise RunError(lines[-1].removeprefix("khofs: ") if lines
                       else "the machine's daemon did not start")

    def _overlay(self) -> None:
        """/sys/kernel as the machine shows it: the emulated kexec files over the host's
        /sys/kernel (read-only overlayfs), the emulated debugfs at its debug/ (an overlay
        shows no submounts of its layers)."""
        target = self.places.sys_kernel
        lower = f"{self.places.machine}/sys/kernel:/sys/kernel"
        try:
            ns.mount("overlay", target, "overlay", ns.MS_RDONLY, f"lowerdir={lower}")
            ns.mount(self.places.debug, f"{target}/debug", None, ns.MS_BIND)
            self.dir.overlay = os.open(target, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            raise RunError(f"run: cannot lay the machine's /sys/kernel over the host's: "
                           f"{e.strerror}") from None
        self._request({"op": "overlay"}, (self.dir.overlay,))  # for the daemon's cleanup

    def _request(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        """A command to the daemon, and its answer; "ending" messages meanwhile are kept."""
        assert self.control is not None
        send(self.control, message, fds)
        while True:
            reply, _ = receive(self.control)
            if reply is None:
                raise RunError("the machine's daemon stopped")
            if "ending" in reply:
                self.ending = reply["ending"]
                continue
            return

    # --- boots ------------------------------------------------------------------------------

    def boot(self) -> tuple[str | None, int]:
        """One boot: (how the machine went down, or None when COMMAND exited; its status)."""
        self.ending = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a = start_boot(self.plan, theirs)
        theirs.close()
        a_fd = os.pidfd_open(a)
        try:
            if self._start_init(ours):
                self._watch(a_fd)
        finally:
            ours.close()
            os.close(a_fd)
        _, status = os.waitpid(a, 0)
        code = os.waitstatus_to_exitcode(status)
        if self.init_pidfd is not None:
            os.close(self.init_pidfd)
            self.init_pidfd = None
        return self.ending, code if code >= 0 else 128 - code

    def _start_init(self, sock: socket.socket) -> bool:
        """B's pid (A says it) and its notify fd (B sends it), in whichever order they come;
        the fd to the daemon, then B's go-ahead. False when the boot failed before COMMAND
        started (A reports why and exits)."""
        init, notify = None, None
        while init is None or notify is None:
            data, fds, _, _ = socket.recv_fds(sock, 256, 1)
            if not data:
                for fd in fds:
                    os.close(fd)
                if notify is not None:
                    os.close(notify)
                return False
            if fds:
                notify = fds[0]
            else:
                init = int(json.loads(data)["init"])
        self.init_pidfd = os.pidfd_open(init)
        try:
            self._request({"op": "boot", "init": init}, (notify,))
        finally:
            os.close(notify)
        sock.send(b"go")
        return True

    def _watch(self, a_fd: int) -> None:
        """Until A exits; a reboot kills the boot's init, and so every process of the boot."""
        assert self.control is not None
        while True:
            ready, _, _ = select.select([self.control.fileno(), a_fd], [], [])
            if self.control.fileno() in ready:
                message, _ = receive(self.control)
                if message is None:
                    raise RunError("the machine's daemon stopped")
                if "ending" in message:
                    self.ending = message["ending"]
                    self.kill_boot()
            if a_fd in ready:
                return

    def kill_boot(self) -> None:
        if self.init_pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)

    def run(self) -> int:
        for number in range(1, self.boots + 1):
            ending, status = self.boot()
            if ending is None:
                return status
            if ending in ("halt", "power-off"):
                return 0
            if number == self.boots:
                print(f"khofs: run: the machine rebooted ({ending}); boot {number + 1} would "
                      f"start, past --boots {self.boots}: stopping", file=sys.stderr)
                return 0
            self._request({"op": "next"})
        return 0

    # --- the end ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.kill_boot()
        if self.control is not None:
            self.control.close()
        if self.daemon is not None:
            _stop(self.daemon)
        self.dir.remove()


def _stop(pid: int) -> None:
    """SIGTERM: libfuse unmounts and the daemon exits; SIGKILL if it will not."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signum)


def check_inputs(command: Sequence[str], boots: int, root: str | None) -> None:
    """What must hold before anything starts (the --initrd archive is read by its caller)."""
    if boots < 1:
        raise InputError(f"--boots {boots}: not a positive integer")
    if root is not None and not os.path.isdir(root):
        raise InputError(f"--root {root}: not a directory")
    if not command:
        raise InputError("run: no COMMAND given (khofs run [options] -- COMMAND, or "
                         "--initrd/--root for /init)")
    problem = seccomp_available()
    if problem:
        raise RunError(f"run: {problem}")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise RunError("/dev/fuse: not available (load the fuse module or run with access to "
                       "it)")


def run(system: System, command: Sequence[str], *, boots: int = 1, console: bool = False,
        initrd: list[Entry] | None = None, root: str | None = None,
        debug: bool = False, logfd: int | None = None) -> int:
    """COMMAND's exit status (128 + signal when it was killed), or 0. The caller has
    checked its inputs (check_inputs) before the machine booted."""
    try:
        ns.enter_private_namespace()
    except OSError as e:
        raise RunError(f"run: cannot make a private mount namespace: {e.strerror}") from None
    runner = Runner(system, command, boots, console, initrd, root, debug, logfd)
    old = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        runner.start_daemon()
        return runner.run()
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Stop as e:
        return 128 + e.signum
    finally:
        runner.cleanup()
        for sig, handler in old.items():
            signal.signal(sig, handler)
