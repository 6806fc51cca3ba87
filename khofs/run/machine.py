"""The daemon of a `khofs run`: the one System of the machine, served two ways. FUSE shows its
debugfs and machine files (khofs.run.run_tree) for the run to bind into place; a supervisor
thread answers the seccomp notifications of each boot (khofs.run.supervisor). Both see the same
System, so a kexec_file_load is at once in /sys/kernel/kexec_loaded.

It talks to the runner over a SEQPACKET socket, one JSON object a message:
    runner -> daemon: {"op": "boot", "init": PID} with the boot's notify fd attached,
                      {"op": "next"} (boot the next kernel), {"op": "overlay"} with the
                      /sys/kernel overlay's root attached; each answered {"ok": true}
    daemon -> runner: {"ready": true} once mounted, {"ending": "kexec"|"restart"|"halt"|
                      "power-off"} when the machine goes down
Its first act is to fork the mount helper's forker, before any thread exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
from typing import Any

from khofs.daemon import mountinfo
from khofs.daemon.lifecycle import setup_logging
from khofs.engine.printk import Record, console_loglevel, on_console
from khofs.engine.reboot import Reboot, Shutdown
from khofs.engine.syslog import console_level
from khofs.engine.system import System, format_record
from khofs.run import mounts
from khofs.run.machine_files import MachineFiles
from khofs.run.namespace import ns_inode, set_parent_death_signal
from khofs.run.run_tree import RunTree
from khofs.run.supervisor import Supervisor
from khofs.run.task import Task

log = logging.getLogger("khofs.run.machine")
MESSAGE_MAX = 1 << 16


def send(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the fds that came with it; (None, []) when the peer is gone."""
    data, fds, _, _ = socket.recv_fds(sock, MESSAGE_MAX, 4)
    return (json.loads(data) if data else None), list(fds)


class Console:
    """--console: the kernel's lines on stderr as they are printed, above the console log
    level (the booting kernel's command line's, or what syslog(2) set since)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, system: System, boot: int, rec: Record) -> None:
        if self.fd is None:
            return
        kernel = getattr(system, "kernel", None)
        if kernel is not None and system.log_number == boot:
            level = console_level(kernel.log, kernel.params.cmdline)
        else:  # a kernel still booting
            level = console_loglevel(system.boot_cmdlines.get(boot, ""))
        if on_console(rec, level):
            try:
                os.write(self.fd, (rec.format() + "\n").encode("utf-8", "surrogateescape"))
            except OSError:
                self.fd = None


class MachineDaemon:
    def __init__(self, system: System, control: socket.socket, forker: socket.socket,
                 console: Console, rundir: mounts.RunDir) -> None:
        self.system = system
        self.rundir = rundir
        self.control = control
        self.console = console
        self.send_lock = threading.Lock()
        self.tree_lock = threading.Lock()
        self.base_user_ns = ns_inode("self", "user")
        uid, gid = os.getuid(), os.getgid()
        self.files = MachineFiles(system, uid, gid, self._sysrq_reboot)
        self.tree = RunTree(lambda: system.kernel.debugfs, self.files.fs, uid, gid)
        self.supervisor = Supervisor(system, self.files, mounts.ForkerClient(forker),
                                     self._ending, self.base_user_ns, self._own_size)
        self.fuse_dev: int | None = None  # once the mount is live
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.kernel_log = setup_logging(2, debug=False)
        for boot, rec in system.records:
            console(system, boot, rec)
            self.kernel_log.info("%s", format_record(boot, rec))
        system.log_sink = self._log

    def _log(self, boot: int, rec: Record) -> None:
        self.kernel_log.info("%s", format_record(boot, rec))  # the daemon's log, as a mount's
        self.files.log_sink(boot, rec)
        self.console(self.system, boot, rec)
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b".")  # syslog readers may be waiting for it

    def _send(self, message: dict[str, Any]) -> None:
        with self.send_lock:
            send(self.control, message)

    def _ending(self, how: Shutdown) -> None:
        self._send({"ending": how.value})

    def _sysrq_reboot(self, reboot: Reboot) -> None:
        self.supervisor.end_boot(reboot)

    def _own_size(self, st: os.stat_result) -> int | None:
        """The kernel's i_size of a file our mount serves (kernel_read_file reads i_size
        bytes; FUSE's stat reports the data's length so that sendfile copies it)."""
        if self.fuse_dev is None or st.st_dev != self.fuse_dev:
            return None
        with self.tree_lock:
            return self.tree.inode_size(st.st_ino)

    def mounted(self, mountpoint: str) -> None:
        """The mount is live: note its device (from mountinfo: no request to ourselves)."""
        mount = mountinfo.find(mountpoint)
        self.fuse_dev = mount.st_dev if mount is not None else None
        self._send({"ready": True})

    def capable(self, pid: int, cap: int) -> bool:
        """For the FUSE edge: the opener's cap in the machine's initial user namespace."""
        return Task(pid, self.base_user_ns, 0).capable(cap)

    # --- the control thread: the runner's messages and the boot's notifications ------------

    def control_loop(self) -> None:
        """Until the runner closes the socket (it then stops us, or its death does)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            while self._step():
                pass
        except Exception:  # noqa: BLE001 - say why, then stop the daemon
            log.exception("khofs run: the machine's supervisor failed")
            os.kill(os.getpid(), signal.SIGTERM)  # libfuse unmounts and serve() returns

    def _step(self) -> bool:
        boot = self.supervisor.boot
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        if boot is not None:
            poller.register(boot.fd, select.POLLIN)
        for fd, events in poller.poll():
            if fd == self.control.fileno():
                return self._command()  # it may have changed the boot: poll afresh
            if fd == self.wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
                self.supervisor.log_changed()
            elif boot is not None and events & select.POLLIN:
                self.supervisor.handle()
            elif boot is not None:  # POLLHUP: nothing of the boot is left to call
                os.close(boot.fd)
                self.supervisor.boot = None
        return True

    def _command(self) -> bool:
        message, fds = receive(self.control)
        if message is None:
            return False
        if message["op"] == "boot":
            old = self.supervisor.boot
            if old is not None:
                os.close(old.fd)
            self.supervisor.start_boot(fds[0], int(message["init"]))
        elif message["op"] == "overlay":
            self.rundir.overlay = fds[0]
        elif message["op"] == "next":
            self.system.boot_next()
            self.files.refresh()
        self._send({"ok": True})
        return True


def run_daemon(system: System, control: socket.socket, places: mounts.Places,
               mountpoint: str, console_fd: int | None, debug: bool,
               rundir: mounts.RunDir) -> None:
    """The daemon process, forked by the runner: never returns. It takes the run's
    directory away when it outlives a runner that was killed."""
    runner = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    # libfuse takes SIGTERM (and SIGHUP) only where nothing else has: undo the runner's
    # handlers. Ctrl-C is the runner's to handle: it stops us once the boot is down.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.fork() == 0:  # the forker: before any thread of this process exists
        parent.close()
        control.close()
        mounts.serve_forker(child, places)
    child.close()
    status = 0
    try:
        daemon = MachineDaemon(system, control, parent, Console(console_fd), rundir)
        threading.Thread(target=daemon.control_loop, name="khofs-supervisor",
                         daemon=True).start()
        from khofs.daemon.fuse_edge import serve

        serve(daemon.tree, mountpoint, system.machine.arch.page_size, lock=daemon.tree_lock,
              allow_other=True, debug=debug, capable=daemon.capable,
              on_ready=lambda: daemon.mounted(mountpoint))
    except BaseException as e:  # noqa: BLE001 - the runner reads the last line of our log
        print(f"{e}", file=sys.stderr)
        status = 1
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # libfuse is done: finish what follows
    sys.stderr.flush()
    if os.getppid() != runner:  # the runner was killed: nobody else will clean up
        rundir.remove()
    os._exit(status)
