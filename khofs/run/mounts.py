"""Mounts in a caller's namespaces: how the run's mount(2) of debugfs, proc, sysfs and devtmpfs
gives the emulated machine's, and umount2 takes it off again.

A helper process joins the caller's user (when it differs), mount and, for sysfs, network
namespaces, takes the caller's root and working directory (so the target resolves exactly as
for the caller, inside an initrd's root too) and, for proc, its pid namespace (proc shows the
pid namespace of whoever mounts it). What khofs stacks on the new mount is cloned first, in
the run's own mount namespace where the FUSE tree is (open_tree), and attached after
(move_mount): the emulated debugfs; over a proc its cmdline, iomem and sysrq-trigger, and its
sys/ read-only (the host's sysctls stay the host's); over a sysfs the /sys/kernel overlay
(the kexec files, the debugfs bound inside) and firmware/memmap. devtmpfs becomes a tmpfs
with the harmless devices bound in and /dev/kmsg from the machine.

setns into a user namespace needs a single-threaded process, and a fork of a threaded one is
fragile, so the helpers come from the forker: a process started before any thread, serving
requests on a socket (serve_forker).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

from khofs.run import namespace as ns

REQUEST_MAX = 1 << 16
DEVICES = (("null", 0o666), ("zero", 0o666), ("full", 0o666), ("random", 0o666),
           ("urandom", 0o666), ("tty", 0o666))
PROC_FILES = ("cmdline", "iomem", "sysrq-trigger", "kmsg")


@dataclass(frozen=True)
class Places:
    """Where the run's FUSE tree and prepared mounts are, in the run's mount namespace."""

    machine: str  # the machine files (khofs.run.machine_files)
    debug: str  # the running kernel's debugfs
    sys_kernel: str  # the /sys/kernel overlay, the debugfs bound at its debug/
    console: str  # what /dev/console is in a devtmpfs the run mounts


Work = Callable[[dict[str, int]], None]


@dataclass
class RunDir:
    """The run's directory, with the FUSE tree at fuse/ and the /sys/kernel overlay at
    sys_kernel/. `overlay` holds the overlay's root open: once the FUSE tree is gone, no
    path through the overlay resolves (ENOTCONN), so it is unmounted through the handle."""

    path: str
    overlay: int | None = None

    def remove(self) -> None:
        targets = [os.path.join(self.path, "fuse")]
        if self.overlay is not None:
            targets.insert(0, f"/proc/self/fd/{self.overlay}")
        for target in targets:
            with contextlib.suppress(OSError):
                ns.umount(target, ns.MNT_DETACH)
        shutil.rmtree(self.path, ignore_errors=True)


def _open_caller(pid: int) -> dict[str, int]:
    fds: dict[str, int] = {}
    try:
        for kind in ("user", "mnt", "net", "pid"):
            fds[kind] = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        for kind in ("root", "cwd"):
            fds[kind] = os.open(f"/proc/{pid}/{kind}",
                                os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _enter(fds: dict[str, int], net: bool) -> None:
    if os.fstat(fds["user"]).st_ino != ns.ns_inode("self", "user"):
        ns.setns(fds["user"], ns.CLONE_NEWUSER)
    ns.setns(fds["mnt"], ns.CLONE_NEWNS)
    if net:
        ns.setns(fds["net"], ns.CLONE_NEWNET)
    os.fchdir(fds["root"])
    os.chroot(".")
    os.fchdir(fds["cwd"])


def in_caller_namespaces(pid: int, trees: dict[str, tuple[str, bool]], work: Work, *,
                         net: bool = False, pid_ns: bool = False) -> int:
    """Run work(clones) in a helper inside pid's namespaces: 0 or the errno it failed with.
    trees: name -> (path in our namespace, recursive), cloned before the helper leaves."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        err = 0
        try:
            fds = _open_caller(pid)
            clones = {name: ns.open_tree(path, rec) for name, (path, rec) in trees.items()}
            _enter(fds, net)
            err = _work_in_pid_ns(fds["pid"], work, clones) if pid_ns else _run(work, clones)
        except OSError as e:
            err = e.errno or 5
        except BaseException:  # noqa: BLE001 - a helper must report, never raise
            err = 5
        os.write(w, struct.pack("i", err))
        os._exit(0)
    os.close(w)
    data = os.read(r, 4)
    os.close(r)
    os.waitpid(child, 0)
    return struct.unpack("i", data)[0] if len(data) == 4 else 5


def _run(work: Work, clones: dict[str, int]) -> int:
    try:
        work(clones)
    except OSError as e:
        return e.errno or 5
    return 0


def _work_in_pid_ns(pid_fd: int, work: Work, clones: dict[str, int]) -> int:
    """setns into a pid namespace applies to children: fork one more to be in it."""
    ns.setns(pid_fd, ns.CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        os._exit(_run(work, clones))
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 5


def _attach(clones: dict[str, int], base: str, name: str) -> None:
    ns.move_mount(clones[name], os.path.join(base, name) if name else base)


def _proc_sys_readonly(target: str) -> None:
    """The host's sysctls stay the host's: /proc/sys bound read-only, as containers do."""
    path = os.path.join(target, "sys")
    ns.mount(path, path, None, ns.MS_BIND | ns.MS_REC)
    ns.mount(None, path, None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY)


def mount_request(req: dict[str, object], places: Places) -> int:
    """One mount or umount2 of the run, done as the emulated kernel would have it."""
    pid, target = int(str(req["pid"])), str(req["target"])
    if req["op"] == "umount":
        return in_caller_namespaces(pid, {}, lambda c: _umount(target, int(str(req["flags"]))))
    fstype, source = str(req["fstype"]), str(req["source"]) or None
    flags, data = int(str(req["flags"])), str(req["data"]) or None
    machine = places.machine
    if fstype == "debugfs":
        return in_caller_namespaces(pid, {"": (places.debug, False)},
                                    lambda c: _attach(c, target, ""))
    if fstype == "proc":
        def proc(clones: dict[str, int]) -> None:
            ns.mount(source, target, "proc", flags, data)
            for name in PROC_FILES:  # a host built without one has nothing there to reach
                if os.path.exists(os.path.join(target, name)):
                    _attach(clones, target, name)
            _proc_sys_readonly(target)

        trees = {name: (f"{machine}/proc/{name}", False) for name in PROC_FILES}
        return in_caller_namespaces(pid, trees, proc, pid_ns=True)
    if fstype == "sysfs":
        return in_caller_namespaces(pid, _sysfs_trees(places), lambda c: _sysfs(
            c, source, target, flags, data), net=True)
    return in_caller_namespaces(pid, _dev_trees(places), lambda c: _devtmpfs(c, target))


def _sysfs_trees(places: Places) -> dict[str, tuple[str, bool]]:
    trees = {"kernel": (places.sys_kernel, True)}
    if os.listdir(f"{places.machine}/sys/firmware/memmap"):
        trees["firmware/memmap"] = (f"{places.machine}/sys/firmware/memmap", False)
    return trees


def _sysfs(clones: dict[str, int], source: str | None, target: str, flags: int,
           data: str | None) -> None:
    ns.mount(source, target, "sysfs", flags, data)
    for name in clones:
        if os.path.isdir(os.path.join(target, name)):
            _attach(clones, target, name)


def _dev_trees(places: Places) -> dict[str, tuple[str, bool]]:
    trees = {name: (f"/dev/{name}", False) for name, _ in DEVICES}
    trees["console"] = (places.console, False)
    trees["kmsg"] = (f"{places.machine}/dev/kmsg", False)
    return trees


def _devtmpfs(clones: dict[str, int], target: str) -> None:
    """A devtmpfs of the machine's: a tmpfs holding the harmless host devices, the
    console and the emulated /dev/kmsg (never the host's disks or memory)."""
    ns.mount("devtmpfs", target, "tmpfs", ns.MS_NOSUID, "mode=0755")
    modes = {**dict(DEVICES), "console": 0o600, "kmsg": 0o644}
    for name in clones:
        path = os.path.join(target, name)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, modes[name]))
        _attach(clones, target, name)


def _umount(target: str, flags: int) -> None:
    """What khofs stacked under target goes first, then the target as asked."""
    for name in (*PROC_FILES, "sys", "kernel/debug", "kernel", "firmware/memmap"):
        with contextlib.suppress(OSError):  # EINVAL: nothing mounted there
            ns.umount(os.path.join(target, name), ns.MNT_DETACH)
    ns.umount(target, flags)


# --- the forker -----------------------------------------------------------------------------

def serve_forker(sock: socket.socket, places: Places) -> None:
    """Answer mount requests, one at a time, until the socket closes. Never returns."""
    ns.set_parent_death_signal(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            raw = sock.recv(REQUEST_MAX)
            if not raw:
                break
            try:
                err = mount_request(json.loads(raw), places)
            except (OSError, ValueError, KeyError) as e:
                err = getattr(e, "errno", None) or 22
            sock.send(json.dumps({"err": err}).encode())
    except OSError:
        pass
    sys.stderr.flush()
    os._exit(0)


class ForkerClient:
    """The daemon's side: one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __call__(self, request: dict[str, object]) -> int:
        self.sock.send(json.dumps(request).encode())
        reply = self.sock.recv(REQUEST_MAX)
        return int(json.loads(reply)["err"]) if reply else 5
