"""One boot's userspace: fresh pid, mount, network, UTS and IPC namespaces, and COMMAND as
their PID 1, under the seccomp filter.

The runner forks A, which unshares the namespaces and forks B, the boot's init (PID 1), then
waits for it: A stays in the runner's pid namespace, so it sees B's exit status and can report
it. B sets up what a machine's init finds and execs COMMAND:
- on the host's file system (no --initrd or --root): a proc of its own pid namespace on /proc
  with the machine's cmdline, iomem and sysrq-trigger on it and sys/ read-only; a sysfs of its
  own network namespace on /sys with the /sys/kernel overlay (the kexec files, the debugfs
  at debug/) and firmware/memmap; the machine's /dev/kmsg; an empty /run (the host's sockets
  there, its init's among them, are not the machine's);
- in a root of its own (--initrd unpacked into a tmpfs, or --root DIR): nothing mounted, as
  the kernel hands rdinit an initramfs; what it mounts is intercepted.
The hostname is "(none)", as a kernel starts with. When COMMAND (PID 1) exits, the kernel ends
every process of the pid namespace: the run's processes all go at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from khofs.run import namespace as ns
from khofs.run import seccomp
from khofs.run.initramfs import Entry, unpack
from khofs.run.mounts import PROC_FILES, Places

KERNEL_HOSTNAME = "(none)"  # UTS_NODENAME, CONFIG_DEFAULT_HOSTNAME
# what a kernel gives init (envp_init), and where COMMAND is looked up in a root of its own
INIT_ENV = {"HOME": "/", "TERM": "linux"}
INIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MOUNT_FLAGS = ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC


@dataclass(frozen=True)
class BootPlan:
    """What every boot starts: COMMAND, and the root it runs in."""

    command: tuple[str, ...]
    places: Places
    root: str | None = None  # a root of its own, mounted here in each boot
    root_dir: str | None = None  # --root DIR (else an --initrd's members)
    initrd: tuple[Entry, ...] = field(default=())


def start_boot(plan: BootPlan, sock: socket.socket) -> int:
    """Fork A; return its pid. A sends {"init": B's pid}; B sends its notify fd and waits
    for a go-ahead before it execs COMMAND."""
    a = os.fork()
    if a:
        return a
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        ns.unshare(ns.BOOT_NAMESPACES)
        b = os.fork()
        if b == 0:
            _init(plan, sock)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's and COMMAND's
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sock.send(json.dumps({"init": b}).encode())
        _, status = os.waitpid(b, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
    except BaseException as e:  # noqa: BLE001 - A must exit, whatever happened
        _fail(f"khofs: run: cannot start the boot: {e}", 1)


def _fail(message: str, status: int) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode())
    os._exit(status)


def _init(plan: BootPlan, sock: socket.socket) -> NoReturn:
    """B, PID 1 of the boot: never returns."""
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
        if plan.root is None:
            _host_mounts(plan.places)
        else:
            _own_root(plan)
        ns.sethostname(KERNEL_HOSTNAME)
        ns.setdomainname(KERNEL_HOSTNAME)
        notify = seccomp.load_filter()
    except BaseException as e:  # noqa: BLE001
        _fail(f"khofs: run: cannot start the boot's init: {e}", 1)
    socket.send_fds(sock, [b"notify"], [notify])
    os.close(notify)
    if sock.recv(16) != b"go":
        os._exit(1)
    sock.close()
    _exec(plan)


def _host_mounts(places: Places) -> None:
    # The host's proc and sysfs go first where they can (as root): unmounting the run's would
    # otherwise show them again. In a user namespace they are locked in place, and mounting
    # a proc or sysfs there even needs them (mount_too_revealing).
    for path in ("/proc", "/sys"):
        with contextlib.suppress(OSError):
            ns.umount(path, ns.MNT_DETACH)
    ns.mount("proc", "/proc", "proc", MOUNT_FLAGS)
    for name in PROC_FILES:  # a host built without one has nothing there to reach
        if os.path.exists(f"/proc/{name}"):
            ns.mount(f"{places.machine}/proc/{name}", f"/proc/{name}", None, ns.MS_BIND)
    ns.mount("/proc/sys", "/proc/sys", None, ns.MS_BIND | ns.MS_REC)
    ns.mount(None, "/proc/sys", None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY)
    ns.mount("sysfs", "/sys", "sysfs", MOUNT_FLAGS)
    ns.mount(places.sys_kernel, "/sys/kernel", None, ns.MS_BIND | ns.MS_REC)
    memmap = f"{places.machine}/sys/firmware/memmap"
    if os.listdir(memmap) and os.path.isdir("/sys/firmware/memmap"):
        ns.mount(memmap, "/sys/firmware/memmap", None, ns.MS_BIND)
    ns.mount(f"{places.machine}/dev/kmsg", "/dev/kmsg", None, ns.MS_BIND)
    ns.mount("tmpfs", "/run", "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=0755")


def _own_root(plan: BootPlan) -> None:
    """The root COMMAND starts in: the initrd unpacked into a fresh tmpfs (rootfs) each
    boot, or --root DIR itself."""
    assert plan.root is not None
    if plan.root_dir is not None:
        ns.mount(plan.root_dir, plan.root, None, ns.MS_BIND | ns.MS_REC)
        return
    ns.mount("rootfs", plan.root, "tmpfs", 0, "mode=0755")

    def bind(source: str, target: str) -> None:
        ns.mount(source, target, None, ns.MS_BIND)

    unpack(list(plan.initrd), plan.root, bind, plan.places.console,
           f"{plan.places.machine}/dev/kmsg")


def _resolve(command: Sequence[str]) -> str:
    name = command[0]
    if "/" in name:
        return name
    for d in INIT_PATH.split(":"):
        path = os.path.join(d, name)
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return path
    return name


def _exec(plan: BootPlan) -> NoReturn:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # what Python ignores, COMMAND must not
        signal.signal(sig, signal.SIG_DFL)
    env = dict(os.environ)
    if plan.root is not None:
        os.chroot(plan.root)
        os.chdir("/")
        env = dict(INIT_ENV)
    command = list(plan.command)
    try:
        if plan.root is None:
            os.execvp(command[0], command)
        os.execve(_resolve(command), command, env)
    except OSError as e:
        _fail(f"khofs: run: {command[0]}: {e.strerror}",
              127 if isinstance(e, FileNotFoundError) else 126)
    sys.exit(1)  # not reached
