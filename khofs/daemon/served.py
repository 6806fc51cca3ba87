"""The emulated machine as a daemon serves it: one System, one lock, and the requests the
control socket brings (kexec, reboot, the log, stop).

Every FUSE call, every kexec and every reboot takes `lock`, so a call sees one kernel's tree,
whole.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from khofs.daemon import mountinfo
from khofs.daemon.control_client import KexecRequest, Rebooted, RebootRequest
from khofs.debugfs.inode import Debugfs
from khofs.engine.driver import Initcall
from khofs.engine.era import Profile, profile_of
from khofs.engine.machine import Machine
from khofs.engine.printk import Record
from khofs.engine.system import MachineState, System, format_record
from khofs.errors import InputError


@dataclass(frozen=True)
class ColdBoot:
    """What a reboot boots; None keeps the machine, or the boot loader's command line."""

    machine: Machine | None
    cmdline: str | None
    initcalls: Sequence[Initcall]
    seed: int
    profile: Profile | None = None  # the kernel's version; None keeps the running one's


@dataclass(frozen=True)
class Rebooter:
    """How the daemon cold-boots (`khofs reboot`): the options the running kernel was booted
    with (paths absolute) and the command line's loader, which turns options into a ColdBoot
    (it reads the machine, producers and plugins as `khofs mount` does) or raises InputError.
    It gets the machine only when the request names one: else the machine stays as it is."""

    options: RebootRequest
    configure: Callable[[RebootRequest], ColdBoot]


def merge_options(current: RebootRequest, request: RebootRequest) -> RebootRequest:
    """Each option the request gives, else the current one; a machine given without a command
    line boots that machine's default command line (None), as `khofs mount` would."""
    cmdline = request.cmdline
    if cmdline is None and request.machine is None:
        cmdline = current.cmdline
    return RebootRequest(
        request.machine if request.machine is not None else current.machine, cmdline,
        request.producers if request.producers is not None else current.producers,
        request.plugins if request.plugins is not None else current.plugins,
        request.seed if request.seed is not None else current.seed,
        request.abi if request.abi is not None else current.abi)


class ServedSystem:
    """The emulated machine as the daemon serves it: its System, and the lock that keeps
    FUSE calls and kexecs apart (a FUSE call never sees a half-switched kernel)."""

    def __init__(self, system: System, mountpoint: str, logger: logging.Logger,
                 rebooter: Rebooter | None = None) -> None:
        self.system = system
        self.rebooter = rebooter
        self.mountpoint = mountinfo.resolve(mountpoint)
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

    def reboot(self, request: RebootRequest) -> tuple[int, str] | Rebooted:
        """reboot(2) with LINUX_REBOOT_CMD_RESTART, booting what the request changes: the new
        kernel, or (2, line) for bad input and (1, line) otherwise, the running kernel
        untouched. The new drivers are loaded before the old kernel goes; FUSE calls go on
        meanwhile."""
        with self._kexec_lock:
            if self.gone_to is not None:
                return 1, f"the machine has kexec'd to {self.gone_to}"
            if self.rebooter is None:
                return 1, "this daemon cannot reboot its machine"
            options = merge_options(self.rebooter.options, request)
            try:
                boot = self.rebooter.configure(options._replace(machine=request.machine))
            except InputError as e:
                return 2, str(e)
            with self.lock:
                self.system.restart(boot.machine, boot.cmdline, boot.initcalls, boot.seed,
                                    boot.profile)
                self.pending_to = None  # a cold restart forgets the loaded image
                self.rebooter = replace(self.rebooter, options=options)
                k = self.system.kernel
                return Rebooted(self.system.log_number, k.params.cmdline, k.params.kho,
                                k.kho_enabled, k.era.warn_no_scratch)

    def page_size(self) -> int:
        """The running machine's page size (st_blksize, statfs): a reboot may change it."""
        return self.system.machine.arch.page_size

    def _load(self, request: KexecRequest) -> tuple[int, str]:
        with self.lock:
            cmdline = request.command_line
            if request.append is not None:
                # kexec-tools' concat_cmdline: the reused command line, a space, the append
                cmdline = f"{self.system.kernel.params.cmdline} {request.append}"
            profile = None
            if request.abi is not None:
                try:
                    profile = profile_of(request.abi)
                except ValueError as e:
                    return -errno.EINVAL, f"--abi {e}"
            return self.system.kexec_load(cmdline, request.image_size, request.initrd_size,
                                          profile, request.image_release)

    def _hand_over_at_stop(self, to: str | None) -> tuple[int, str]:
        """kexec -l with --to: the loaded image goes to DIR when this daemon is stopped
        (unmount, SIGTERM, SIGINT), as a machine whose next kernel was loaded reboots into
        it. A load without --to forgets an earlier --to."""
        self.pending_to = None
        if to is None:
            return 0, ""
        path = Path(to)
        if self._inside_mount(path):
            return 1, f"{to}: inside the mount point it would hand over from"
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            return 1, f"{to}: {e.strerror or e}"
        self.pending_to = path
        return 0, ""

    def _inside_mount(self, path: Path) -> bool:
        """path is the mount point or under it: a handover cannot be written there."""
        real = os.path.realpath(path)
        return real == self.mountpoint or real.startswith(self.mountpoint.rstrip("/") + "/")

    def hand_over_if_stopped_loaded(self) -> None:
        """The daemon is stopping with an image loaded for another process: write it."""
        with self.lock:
            to, self.pending_to = self.pending_to, None
            if to is None or self.system.loaded is None:
                return
            err, state = self.system.kexec_away()
            if state is None:
                return
            try:
                from khofs.daemon import ramimage  # only a handover needs it

                ramimage.write_state_dir(to, self.system.machine, state)
            except OSError as e:
                self.logger.error("khofs: stopped with a loaded image, but cannot hand it "
                                  "over: %s: %s", e.filename, e.strerror or e)
                return
        self.logger.info("khofs: stopped with a loaded image: handed over to %s", to)

    def _hand_over(self, to: Path) -> tuple[int, str]:
        """kexec -e into the process that will `khofs mount --boot-from to`."""
        if self._inside_mount(to):
            return 1, f"{to}: inside the mount point it would hand over from"
        with self.lock:
            if self.system.loaded is None:
                return 1, "Nothing has been loaded!"
            try:  # a directory we cannot write fails before the kernel goes
                to.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                return 1, f"{to}: {e.strerror or e}"
            err, state = self.system.kexec_away()
            if state is None:
                return 1, "Nothing has been loaded!"
            try:
                from khofs.daemon import ramimage  # only a handover needs it

                ramimage.write_state_dir(to, self.system.machine, state)
            except OSError as e:
                return 1, self._boot_here(state, f"{e.filename}: {e.strerror or e}")
            self.gone_to = to
        self.logger.info("khofs: handed over to %s: unmounting", to)
        return 0, ""

    def _boot_here(self, state: MachineState, problem: str) -> str:
        """The handover could not be written: the RAM is still here, so the next kernel
        boots in this daemon, as `kexec -e` without --to would have done."""
        old = self.system
        self.logger.error("khofs: cannot hand over: %s; booting the next kernel here", problem)
        self.system = System(old.machine, state.image.handover.cmdline, old.initcalls,
                             uid=old.uid, gid=old.gid, log_sink=self._log_sink, state=state,
                             next_profile=old.next_profile)
        self.system.boot_cmdline = old.boot_cmdline
        return f"cannot hand over: {problem} (the next kernel booted in this mount instead)"

    def stop(self) -> None:
        """Unmount and exit as SIGTERM does: libfuse's handler, on the FUSE main thread."""
        ident = threading.main_thread().ident
        if ident is not None:
            signal.pthread_kill(ident, signal.SIGTERM)
