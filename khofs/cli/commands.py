"""`khofs mount`, `run`, `umount` and `machine show`: what boots and serves a machine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from khofs.cli.boot import (
    boot_kernel,
    check_mountpoint,
    make_system,
    warn_kho_off,
)
from khofs.cli.parser import Usage


def cmd_mount(args: argparse.Namespace) -> int:
    from khofs.daemon import lifecycle as daemon
    from khofs.daemon.fuse_edge import load_backend
    from khofs.daemon.state import default_log_path, runtime_dir

    mountpoint = mountpoint_arg(args.mountpoint)
    check_mountpoint(mountpoint, args.mountpoint)
    runtime_dir()  # one that is not ours is refused before anything boots
    load_backend()  # a KHOFS_FUSE backend that is not there fails here, before the daemon
    system = make_system(args)
    warn_kho_off(system.kernel)
    if args.foreground:
        return daemon.run_foreground(system, mountpoint, args.allow_other, args.debug)
    logfd = _open_log(args.log, default_log_path(mountpoint))
    status, problem = daemon.start(system, mountpoint, logfd, args.allow_other, args.debug)
    if status:
        raise Usage(f"cannot mount {mountpoint}: {problem}")
    return 0


def _open_log(given: str | None, default: Path) -> int:
    """--log FILE (as the user names it), else the state directory's log, never followed
    through a symlink there."""
    from khofs.daemon.lifecycle import open_log
    from khofs.daemon.state import STATE_FILE_FLAGS

    try:
        if given is not None:
            if not given:
                raise Usage("--log '': an empty file name")
            return open_log(given)
        return os.open(default, os.O_WRONLY | os.O_CREAT | os.O_APPEND | STATE_FILE_FLAGS,
                       0o600)
    except OSError as e:
        raise Usage(f"--log {given}: {e.strerror}" if given is not None
                    else f"{default}: {e.strerror}") from None


def mountpoint_arg(given: str) -> str:
    """The mount point as an absolute path; an empty one is refused, as the kernel refuses
    an empty path (ENOENT), instead of meaning the current directory."""
    if not given:
        raise Usage("mount point '': No such file or directory")
    return os.path.abspath(given)


def cmd_run(args: argparse.Namespace) -> int:
    """khofs run: the mount options go to the daemon `khofs mount` runs in the namespace."""
    from khofs.run.runner import RunError, run

    command = args.run_command[1:] if args.run_command[:1] == ["--"] else args.run_command
    options = [f"--{name.replace('_', '-')}={value}" for name, value in (
        ("machine", args.machine_arg), ("cmdline", args.cmdline), ("producers", args.producers),
        ("seed", args.seed), ("boot-from", args.boot_from)) if value is not None]
    options += [f"--plugin={spec}" for spec in args.plugin]
    options += [flag for flag, on in (("--debug", args.debug),
                                      ("--allow-other", args.allow_other)) if on]
    try:
        return run(options, command, log=args.log)
    except RunError as e:
        raise Usage(str(e)) from None


def cmd_machine_show(args: argparse.Namespace) -> int:
    from khofs.machines.show import show_json, show_text

    kernel = boot_kernel(args)
    sys.stdout.write(show_json(kernel) if args.json else show_text(kernel))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from khofs.daemon.detach import umount

    done = umount(mountpoint_arg(args.mountpoint))
    if done.status < 0:
        print(f"khofs: {args.mountpoint}: not mounted", file=sys.stderr)
        return 1
    if done.status:
        problem = f" ({done.note})" if done.note else ""
        print(f"khofs: {args.mountpoint}: could not unmount{problem}", file=sys.stderr)
    elif done.note:  # the daemon did not answer: say what was done about it
        print(f"khofs: {done.note}", file=sys.stderr)
    return done.status
