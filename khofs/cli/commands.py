"""`khofs mount`, `run`, `umount`, `compat` and `machine show`: what boots and serves a
machine."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from khofs.cli.boot import (
    DEFAULT_CMDLINE,
    DEFAULT_MACHINE,
    boot_kernel,
    check_mountpoint,
    make_system,
    warn_kho_off,
)
from khofs.cli.parser import Usage

if TYPE_CHECKING:
    from khofs.producers.compat import Cell
    from khofs.producers.spec import ProducerSpec
    from khofs.producers.table import DriverFactory


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


def cmd_compat(args: argparse.Namespace) -> int:
    """khofs compat: the matrix; exit 0 whatever the cells say."""
    import json

    from khofs.cli.boot import profile_arg
    from khofs.engine.driver import initcall_problem
    from khofs.engine.era import ERAS
    from khofs.machines.load import load_machine
    from khofs.producers.compat import DEFAULT_REGION, compat_matrix
    from khofs.producers.lib_test_kho import KhoTest
    from khofs.producers.producers_file import load_producers
    from khofs.producers.table import boot_table

    names = args.eras or list(ERAS)
    profiles = [profile_arg(name) for name in names]
    machine = load_machine(args.machine_arg or DEFAULT_MACHINE)
    cmdline = machine.cmdline or DEFAULT_CMDLINE
    drivers: list[ProducerSpec | DriverFactory]
    if args.producers:
        drivers = list(load_producers(args.producers))
        for profile in profiles:
            problem = initcall_problem(boot_table(drivers), profile)
            if problem:
                raise Usage(f"{args.producers}: {problem}")
    else:
        drivers, cmdline = [KhoTest], f"{cmdline} {DEFAULT_REGION}"
    cells = compat_matrix(machine, cmdline, drivers, profiles)
    if args.json:
        doc = {"machine": machine.name, "cmdline": cmdline, "eras": names,
               "cells": [{"from": a, "to": b, "outcome": cell.token, "reason": cell.reason}
                         for a, row in zip(names, cells, strict=True)
                         for b, cell in zip(names, row, strict=True)]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    sys.stdout.write(compat_text(names, cells))
    return 0


def compat_text(names: list[str], cells: list[list[Cell]]) -> str:
    """The matrix (a header of the TO versions, a line per FROM version), then a line per
    cell with its reason."""
    width = max(len(x) for x in [r"FROM \ TO", *names, *(c.token for row in cells
                                                            for c in row)]) + 2
    lines = ["".join(x.ljust(width) for x in [r"FROM \ TO", *names]).rstrip()]
    lines += ["".join(x.ljust(width) for x in [a, *(c.token for c in row)]).rstrip()
              for a, row in zip(names, cells, strict=True)]
    lines.append("")
    lines += [f"{a} -> {b}: {cell.token}: {cell.reason}"
              for a, row in zip(names, cells, strict=True)
              for b, cell in zip(names, row, strict=True)]
    return "\n".join(lines) + "\n"


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
