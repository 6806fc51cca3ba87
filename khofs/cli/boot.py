"""From options to a machine: the boot table, the machine, the kernel or System to serve."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from khofs.cli.parser import Usage

if TYPE_CHECKING:
    from khofs.daemon.control_client import RebootRequest
    from khofs.daemon.served import ColdBoot, Rebooter
    from khofs.engine.driver import Initcall
    from khofs.engine.era import Profile
    from khofs.engine.kernel import Kernel
    from khofs.engine.machine import Machine
    from khofs.engine.system import System
    from khofs.producers.plugin import PluginFactory
    from khofs.producers.spec import ProducerSpec

DEFAULT_CMDLINE = "kho=on"
DEFAULT_MACHINE = "laptop"


def mountpoint_arg(given: str) -> str:
    """The mount point as an absolute path; an empty one is refused, as the kernel refuses
    an empty path (ENOENT), instead of meaning the current directory."""
    if not given:
        raise Usage("mount point '': No such file or directory")
    return os.path.abspath(given)


def check_mountpoint(path: str, given: str) -> None:
    """A directory where nothing is mounted, empty. What is mounted there is looked up in
    mountinfo before anything stats the path: a dead khofs mount fails a stat with ENOTCONN
    (which is not "does not exist"), and one whose daemon is stopped never answers it."""
    from khofs.daemon import mountinfo

    mount = mountinfo.find(path)
    if mount is not None:
        raise Usage(f"mount point {path}: {_occupied(mount.fstype, path, given)}")
    if not os.path.exists(path):
        raise Usage(f"mount point {path}: does not exist")
    if not os.path.isdir(path):
        raise Usage(f"mount point {path}: not a directory")
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise Usage(f"mount point {path}: {e.strerror}") from None
    if entries:
        # libfuse2 refuses it with a message of its own, libfuse3 would mount over it
        raise Usage(f"mount point {path}: not empty")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise Usage("/dev/fuse: not available (load the fuse module or run with access to it)")


def _occupied(fstype: str, path: str, given: str) -> str:
    """What is wrong with mounting over what is mounted at path."""
    import errno

    from khofs.daemon.probe import TIMED_OUT, stat_errno

    if fstype != "fuse.khofs":
        return "busy (something is already mounted there)"
    err = stat_errno(path)
    if err == errno.ENOTCONN:
        return f"a dead khofs mount (its daemon is gone): run `khofs umount {given}` first"
    if err == TIMED_OUT:
        return (f"a khofs mount whose daemon does not answer (stopped?): run `khofs umount "
                f"{given}` first")
    return "busy (khofs is already mounted there)"


def cmdline_of(args: argparse.Namespace, machine: Machine) -> str:
    """--cmdline, else the machine file's, else kho=on; a warning when it is longer than the
    kernel keeps."""
    from khofs.engine.cmdline import COMMAND_LINE_SIZE, boot_command_line

    cmdline: str = (args.cmdline if args.cmdline is not None
                    else machine.cmdline or DEFAULT_CMDLINE)
    kept = boot_command_line(cmdline)
    if kept != cmdline:
        size = len(os.fsencode(cmdline))
        print(f"khofs: the command line is {size} bytes: the kernel keeps the first "
              f"{len(os.fsencode(kept))} (COMMAND_LINE_SIZE {COMMAND_LINE_SIZE}), the rest is "
              "ignored", file=sys.stderr)
    return cmdline


def boot_table_of(args: argparse.Namespace) -> list[Initcall]:
    """The boot table: --producers FILE, then each --plugin, in that order."""
    return _boot_table(getattr(args, "producers", None), getattr(args, "plugin", None) or ())


def _boot_table(producers: str | None, plugins: Sequence[str],
                fresh: bool = False) -> list[Initcall]:
    # the file readers are imported only when there is something to read (a mount's start)
    from khofs.producers.table import boot_table

    drivers: list[ProducerSpec | PluginFactory] = []
    if producers:
        from khofs.producers.producers_file import load_producers

        drivers.extend(load_producers(producers))
    if plugins:
        from khofs.producers.plugin import load_plugin

        drivers.extend(load_plugin(spec, fresh) for spec in plugins)
    return boot_table(drivers)


def profile_arg(text: str | None) -> Profile:
    """--abi and --next-abi (already checked by the parser)."""
    from khofs.engine.era import DEFAULT_PROFILE, profile_of

    return profile_of(text) if text is not None else DEFAULT_PROFILE


def check_table(args: argparse.Namespace, initcalls: list[Initcall], *profiles: Profile) -> None:
    """Producers the kernel versions asked for cannot run: one line naming the file."""
    from khofs.engine.driver import initcall_problem

    for profile in profiles:
        problem = initcall_problem(initcalls, profile)
        if problem:
            raise Usage(f"{args.producers}: {problem}")


# --- khofs reboot: what the daemon boots next -----------------------------------------------

def absolute_machine(spec: str | None) -> str | None:
    """--machine as the daemon (in another directory) reads it: a machine file's path (as
    load_machine tells one from a preset) absolute."""
    if spec is None:
        return None
    from khofs.machines.load import is_machine_file

    return os.path.abspath(spec) if is_machine_file(spec) else spec


def absolute_plugin(spec: str) -> str:
    """--plugin with a file's path absolute (a dotted module name stays as it is)."""
    module, colon, function = spec.rpartition(":")
    if colon and (module.endswith(".py") or "/" in module):
        return f"{os.path.abspath(module)}:{function}"
    return spec


def rebooter_of(args: argparse.Namespace, system: System) -> Rebooter:
    """What `khofs reboot` on this mount keeps unless told otherwise: the options it was
    mounted with (paths made absolute), and how options become a cold boot."""
    from khofs.daemon.control_client import RebootRequest
    from khofs.daemon.served import Rebooter

    options = RebootRequest(
        machine=absolute_machine(args.machine_arg), cmdline=args.cmdline,
        producers=os.path.abspath(args.producers) if args.producers else "",
        plugins=tuple(absolute_plugin(spec) for spec in args.plugin), seed=system.seed,
        abi=args.abi)
    return Rebooter(options, cold_boot)


def cold_boot(request: RebootRequest) -> ColdBoot:
    """The daemon's loader for `khofs reboot` (the options merged with the mount's): the
    machine when one is named, its command line, and the drivers, read from their files
    again (a plugin module runs anew). InputError (one line) for bad input."""
    from khofs.daemon.served import ColdBoot
    from khofs.engine.driver import initcall_problem
    from khofs.engine.era import profile_of as profile_of_abi
    from khofs.errors import InputError
    from khofs.machines.load import load_machine

    try:
        machine = load_machine(request.machine) if request.machine is not None else None
        cmdline = request.cmdline
        if cmdline is None and machine is not None:
            cmdline = machine.cmdline or DEFAULT_CMDLINE
        initcalls = _boot_table(request.producers or None, request.plugins or (), fresh=True)
        profile = profile_of_abi(request.abi) if request.abi is not None else None
        problem = initcall_problem(initcalls, profile) if profile is not None else None
    except (Usage, ValueError) as e:
        raise InputError(str(e)) from None
    if problem:
        raise InputError(f"{request.producers}: {problem}")
    return ColdBoot(machine, cmdline, initcalls, request.seed or 0, profile)


def boot_kernel(args: argparse.Namespace) -> Kernel:
    """One boot of the machine, not mounted (`khofs machine show`)."""
    from khofs.engine.kernel import Kernel
    from khofs.machines.load import load_machine
    from khofs.producers.table import boot_table

    machine = load_machine(args.machine_arg or DEFAULT_MACHINE)
    return Kernel(machine, cmdline_of(args, machine), boot_table(), uid=os.getuid(),
                  gid=os.getgid(), profile=profile_arg(args.abi))


def make_system(args: argparse.Namespace, owner: tuple[int, int] | None = None) -> System:
    """The machine to mount: a cold boot, or (--boot-from) the next kernel of a handover.
    owner: who owns its debugfs (default: us; `khofs run` serves it as root of the run)."""
    from khofs.engine.system import System
    from khofs.machines.load import load_machine

    initcalls = boot_table_of(args)
    next_profile = profile_arg(args.next_abi) if args.next_abi is not None else None
    if args.boot_from is not None:
        return _system_from(args, initcalls, next_profile, owner)
    profile = profile_arg(args.abi)
    check_table(args, initcalls, profile, *([next_profile] if next_profile else []))
    machine = load_machine(args.machine_arg or DEFAULT_MACHINE)
    uid, gid = owner or (os.getuid(), os.getgid())
    return System(machine, cmdline_of(args, machine), initcalls, seed=args.seed or 0, uid=uid,
                  gid=gid, profile=profile, next_profile=next_profile)


def _system_from(args: argparse.Namespace, initcalls: list[Initcall],
                 next_profile: Profile | None, owner: tuple[int, int] | None) -> System:
    """--boot-from DIR: the machine as DIR describes it, booted with its handover. The
    command line and the kernel version are the ones kexec loaded, and the seed the previous
    daemon's."""
    from khofs.daemon.ramimage import machine_difference, read_state_dir
    from khofs.engine.system import System
    from khofs.machines.load import load_machine

    if args.cmdline is not None:
        raise Usage("--cmdline and --boot-from: the next kernel's command line is the one "
                    "`khofs kexec` loaded (use its --append or --command-line)")
    if args.abi is not None:
        raise Usage("--abi and --boot-from: the next kernel's version is the one `khofs "
                    "kexec` loaded (use its --abi, or the mount's --next-abi)")
    machine, state = read_state_dir(Path(args.boot_from))
    check_table(args, initcalls, state.image.profile,
                *([next_profile] if next_profile else []))
    given = load_machine(args.machine_arg) if args.machine_arg is not None else None
    diff = machine_difference(given, machine) if given is not None else []
    if diff:
        raise Usage(f"--machine {args.machine_arg}: not the machine that wrote "
                    f"{args.boot_from} ({', '.join(diff)} differ)")
    if args.seed is not None and args.seed != state.seed:
        raise Usage(f"--seed {args.seed}: {args.boot_from} was written with seed "
                    f"{state.seed}")
    uid, gid = owner or (os.getuid(), os.getgid())
    return System(machine, state.image.handover.cmdline, initcalls, seed=state.seed, uid=uid,
                  gid=gid, state=state, next_profile=next_profile)


def warn_kho_off(kernel: Kernel) -> None:
    note = kho_note(kernel.params.kho, kernel.kho_enabled, kernel.params.cmdline,
                    kernel.era.warn_no_scratch)
    if note:
        print(note, file=sys.stderr)


def kho_note(kho: bool, enabled: bool, cmdline: str, logged: bool = False) -> str | None:
    """What `khofs mount` and `khofs reboot` say when the kernel they booted has no KHO
    (logged: the kernel's version logs the scratch failure itself, from 6.18)."""
    if not kho:
        return (f"khofs: KHO is off on the kernel command line {cmdline!r}, as a kernel would "
                "boot it: no kho/ directory (add kho=on)")
    if not enabled:
        said = ("6.16 logs nothing" if not logged else
                "logged as \"KHO: Failed to reserve scratch area, disabling kexec handover\"")
        return (f"khofs: KHO was disabled during boot: a scratch area could not be allocated "
                f"({said}; `khofs machine show` shows the sizes): no kho/ directory")
    return None
