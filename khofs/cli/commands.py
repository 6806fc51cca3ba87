"""`khofs mount`, `run`, `umount` and `machine show`: what boots and serves a machine."""

from __future__ import annotations

import argparse
import os
import sys

from khofs.cli.boot import boot_kernel, check_mountpoint, make_system, rebooter_of, warn_kho_off
from khofs.cli.parser import Usage


def cmd_mount(args: argparse.Namespace) -> int:
    from khofs.daemon import lifecycle as daemon
    from khofs.daemon.fuse_edge import load_backend
    from khofs.daemon.state import default_log_path

    mountpoint = os.path.abspath(args.mountpoint)
    check_mountpoint(mountpoint)
    load_backend()  # a KHOFS_FUSE backend that is not there fails here, before the daemon
    system = make_system(args)
    warn_kho_off(system.kernel)
    rebooter = rebooter_of(args, system)
    if args.foreground:
        return daemon.run_foreground(system, mountpoint, args.allow_other, args.debug,
                                     rebooter)
    log_path = args.log or default_log_path(mountpoint)
    status, problem = daemon.start(system, mountpoint, log_path, args.allow_other, args.debug,
                                   rebooter)
    if status:
        raise Usage(f"cannot mount {mountpoint}: {problem}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """khofs run: the mount options go to the daemon `khofs mount` runs in the namespace."""
    from khofs.run.runner import RunError, run

    command = args.run_command[1:] if args.run_command[:1] == ["--"] else args.run_command
    options = [f"--{name.replace('_', '-')}={value}" for name, value in (
        ("machine", args.machine_arg), ("cmdline", args.cmdline), ("producers", args.producers),
        ("seed", args.seed)) if value is not None]
    options += [f"--plugin={spec}" for spec in args.plugin]
    options += [flag for flag, on in (("--debug", args.debug),
                                      ("--allow-other", args.allow_other)) if on]
    try:
        return run(options, command)
    except RunError as e:
        raise Usage(str(e)) from None


def cmd_machine_show(args: argparse.Namespace) -> int:
    from khofs.machines.show import show_json, show_text

    kernel = boot_kernel(args)
    sys.stdout.write(show_json(kernel) if args.json else show_text(kernel))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from khofs.daemon import lifecycle as daemon

    status = daemon.umount(os.path.abspath(args.mountpoint))
    if status < 0:
        print(f"khofs: {args.mountpoint}: not mounted", file=sys.stderr)
        return 1
    if status:
        print(f"khofs: {args.mountpoint}: could not unmount", file=sys.stderr)
    return status
