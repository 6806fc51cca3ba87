"""`khofs umount`: detach a mount whether its daemon is alive, dead, stopped or stuck.

fusermount -u, or umount, does it while the daemon lives or after it died. A daemon that does
not answer (stopped by SIGSTOP or Ctrl-Z, or stuck) would leave every process that touches the
mount waiting in the kernel, so first its FUSE connection is aborted, as
`echo 1 > /sys/fs/fuse/connections/N/abort` does (fs/fuse/control.c fuse_conn_abort_write:
waiting requests end with ECONNABORTED, and the daemon's next read of /dev/fuse ends its loop),
then the mount is detached, lazily if something still holds it. A stopped daemon is continued
(SIGCONT) so that it can see the end and exit. Every step has a bounded wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass

from khofs.daemon import mountinfo
from khofs.daemon.probe import TIMED_OUT, is_running, is_stopped, stat_errno, wait_exit
from khofs.daemon.state import pid_path, read_pid_file, socket_path

FSTYPE = "fuse.khofs"
FUSECTL = "/sys/fs/fuse/connections"
COMMAND_TIMEOUT = 10.0
DAEMON_EXIT_TIMEOUT = 10.0
UNMOUNTS = (["fusermount", "-u"], ["umount"], ["fusermount", "-u", "-z"], ["umount", "-l"])


@dataclass
class Unmounted:
    """What `umount` did: status -1 (nothing mounted), -2 (something else than khofs is
    mounted there: left alone; note is its type), 0 (detached) or 1 (could not), and a line
    to tell the user when the daemon did not answer."""

    status: int
    note: str = ""


def umount(mountpoint: str) -> Unmounted:
    """Detach whatever khofs mounted at mountpoint; see the module docstring."""
    mount = mountinfo.find(mountpoint)
    if mount is None:
        return Unmounted(-1)
    if mount.fstype != FSTYPE:
        return Unmounted(-2, mount.fstype)
    pidfile = pid_path(mountpoint)
    pid = read_pid_file(pidfile)
    if pid is not None and not is_running(pid):
        pid = None
    note = ""
    if _not_answering(mountpoint, pid):
        note = _abort(mount, pid)
    for argv in UNMOUNTS:
        if _run([*argv, mountpoint]):
            break
    else:
        return Unmounted(1, note)
    if pid is not None:
        if is_stopped(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        wait_exit(pid, DAEMON_EXIT_TIMEOUT)
    pidfile.unlink(missing_ok=True)
    # a daemon that was killed left its control socket behind
    socket_path(mountpoint).unlink(missing_ok=True)
    return Unmounted(0, note)


def _not_answering(mountpoint: str, pid: int | None) -> bool:
    if pid is not None and is_stopped(pid):
        return True
    return stat_errno(mountpoint) == TIMED_OUT


def _abort(mount: mountinfo.Mount, pid: int | None) -> str:
    """Abort the mount's FUSE connection; the line that says so (or why it could not)."""
    who = "its daemon" if pid is None else \
        f"its daemon (pid {pid}{', stopped' if is_stopped(pid) else ''})"
    problem = abort_connection(mount.dev)
    if problem:
        return (f"{mount.mount_point}: {who} does not answer, and its FUSE connection could "
                f"not be aborted ({problem}): unmounted lazily")
    return f"{mount.mount_point}: {who} did not answer: aborted its FUSE connection, unmounted"


def abort_connection(dev: int) -> str:
    """Write 1 to /sys/fs/fuse/connections/DEV/abort: '' or what went wrong. When fusectl is
    not mounted there, root mounts it in a mount namespace of its own, for this one write."""
    path = f"{FUSECTL}/{dev}/abort"
    if os.path.exists(path):
        try:
            with open(path, "w") as f:
                f.write("1")
        except OSError as e:
            return f"{path}: {e.strerror}"
        return ""
    if os.geteuid() != 0:
        return f"fusectl is not mounted at {FUSECTL}"
    script = f'mount -t fusectl fusectl {FUSECTL} && echo 1 > "$0"'
    if _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, path]):
        return ""
    return f"cannot write {path}"


def _run(argv: list[str]) -> bool:
    """argv ran and exited 0 within COMMAND_TIMEOUT (waited for on a pidfd: subprocess's
    own timed wait polls, and would add up to its poll interval to every unmount)."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    if not wait_exit(proc.pid, COMMAND_TIMEOUT):
        proc.kill()
    return proc.wait() == 0
