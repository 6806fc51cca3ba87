"""`khofs mount`, `run`, `umount` and `machine show`: what boots and serves a machine."""

from __future__ import annotations

import argparse
import os
import sys

from khofs.cli.boot import boot_kernel, check_mountpoint, make_system, warn_kho_off
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
    if args.foreground:
        return daemon.run_foreground(system, mountpoint, args.allow_other, args.debug)
    log_path = args.log or default_log_path(mountpoint)
    status, problem = daemon.start(system, mountpoint, log_path, args.allow_other, args.debug)
    if status:
        raise Usage(f"cannot mount {mountpoint}: {problem}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """khofs run: the machine boots here, then the runner serves it to COMMAND."""
    from khofs.daemon.fuse_edge import load_backend
    from khofs.run.initramfs import read_initrd
    from khofs.run.runner import RunError, check_inputs, run

    command = args.run_command[1:] if args.run_command[:1] == ["--"] else args.run_command
    if not command and (args.initrd or args.root):
        command = ["/init"]
    try:
        check_inputs(command, args.boots, args.root)
        initrd = read_initrd(args.initrd) if args.initrd else None
        load_backend()
        args.boot_from = None
        system = make_system(args, owner=(0, 0))  # root of the run: the user, mapped
        warn_kho_off(system.kernel)
        return run(system, command, boots=args.boots, console=args.console, initrd=initrd,
                   root=args.root, debug=args.debug)
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
