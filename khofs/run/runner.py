"""`khofs run [mount options] -- COMMAND [ARGS...]`: COMMAND sees an emulated kernel's
debugfs at /sys/kernel/debug, and a `kexec` that drives it, in a private mount namespace.

As root the namespace is a new mount namespace; as an ordinary user a user namespace too, in
which we are root and may mount FUSE (Linux 4.18+). The daemon is our direct child, serving in
the foreground and told to die with us (PR_SET_PDEATHSIG), so nothing outlives `khofs run`,
even when it is killed: the namespace and its mounts go with the last process in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from khofs.daemon import mountinfo
from khofs.run import namespace

DEBUGFS = "/sys/kernel/debug"
SBIN = "/usr/sbin"
START_TIMEOUT = 30.0

KEXEC_WRAPPER = """#!/bin/sh
# khofs run: kexec for the emulated kernel mounted at $KHOFS_MOUNT
exec "{python}" -m khofs.run.kexec_tool "$@"
"""


class RunError(Exception):
    """A start-up problem: one line, exit status 2."""




def _start_daemon(mnt: str, options: Sequence[str], log: BinaryIO,
                  env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`khofs mount --foreground` as our child, its output appended to log; ready once the
    mount shows up."""
    start = log.seek(0, os.SEEK_END)
    proc = subprocess.Popen(
        [sys.executable, "-m", "khofs", "mount", mnt, "--foreground", *options],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
        preexec_fn=lambda: namespace.set_parent_death_signal(signal.SIGTERM))
    deadline = time.monotonic() + START_TIMEOUT
    while not mountinfo.is_mounted(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            log.seek(start)
            lines = [ln for ln in log.read().decode(errors="replace").splitlines()
                     if ln.strip()]
            raise RunError(lines[-1].removeprefix("khofs: ") if lines else "the daemon failed")
        time.sleep(0.01)
    return proc


def _open_log(log: str | None, tmp: Path) -> BinaryIO:
    """--log FILE (appended to, as `khofs mount --log` does), else a file in tmp."""
    if log is None:
        return (tmp / "daemon.log").open("w+b")
    try:
        fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o600)
    except OSError as e:
        raise RunError(f"--log {log}: {e.strerror}") from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "r+b")


def _kexec_on_path(tmp: Path) -> str:
    """A `kexec` for COMMAND: first on PATH, and at /usr/sbin/kexec (so /sbin/kexec on a
    merged-/usr system) through an overlay of /usr/sbin when the kernel allows one here."""
    bindir = tmp / "bin"
    bindir.mkdir()
    wrapper = bindir / "kexec"
    wrapper.write_text(KEXEC_WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    upper, work = tmp / "upper", tmp / "work"
    upper.mkdir()
    work.mkdir()
    shutil.copy2(wrapper, upper / "kexec")
    with contextlib.suppress(OSError):  # PATH alone then; said in the README
        namespace.mount("overlay", SBIN, "overlay", 0,
                        f"lowerdir={SBIN},upperdir={upper},workdir={work}")
    return str(bindir)


def run(options: Sequence[str], command: Sequence[str], log: str | None = None) -> int:
    """COMMAND's exit status (128 + signal when it was killed)."""
    if not command:
        raise RunError("run: no COMMAND given (khofs run [options] -- COMMAND)")
    if log == "":
        raise RunError("--log '': an empty file name")
    try:
        namespace.enter_private_namespace()
    except OSError as e:
        raise RunError(f"run: cannot make a private mount namespace: {e.strerror}") from None
    tmp = Path(tempfile.mkdtemp(prefix="khofs-run-"))
    mnt = str(tmp / "debugfs")
    os.mkdir(mnt)
    daemon = None
    # The daemon's pid file and control socket stay in our own directory: inside a user
    # namespace we are uid 0, and the real root's runtime directory is not ours.
    (tmp / "run").mkdir(mode=0o700)
    os.chmod(tmp / "run", 0o700)  # whatever the umask: a runtime directory must be 0700
    env = dict(os.environ, KHOFS_MOUNT=mnt, XDG_RUNTIME_DIR=str(tmp / "run"))
    try:
        with _open_log(log, tmp) as logfile:
            daemon = _start_daemon(mnt, options, logfile, env)
        namespace.mount(mnt, DEBUGFS, None, namespace.MS_BIND)
        env["PATH"] = _kexec_on_path(tmp) + os.pathsep + env.get("PATH", os.defpath)
        try:
            status = subprocess.call(list(command), env=env)
        except OSError as e:
            print(f"khofs: run: {command[0]}: {e.strerror}", file=sys.stderr)
            status = 127 if isinstance(e, FileNotFoundError) else 126
        return status if status >= 0 else 128 - status
    finally:
        _cleanup(daemon, mnt, tmp)


def _cleanup(daemon: subprocess.Popen[bytes] | None, mnt: str, tmp: Path) -> None:
    for target in (SBIN, DEBUGFS):
        if mountinfo.is_mounted(target):
            with contextlib.suppress(OSError):
                namespace.umount(target, namespace.MNT_DETACH)
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)  # libfuse unmounts and the daemon exits
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    if mountinfo.is_mounted(mnt):
        namespace.umount(mnt, namespace.MNT_DETACH)
    shutil.rmtree(tmp, ignore_errors=True)
