"""`khofs mount`, `run`, `umount`, `compat` and `machine show`: what boots and serves a
machine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from khofs.cli.boot import (
    DEFAULT_CMDLINE,
    DEFAULT_MACHINE,
    boot_kernel,
    check_mountpoint,
    make_system,
    mountpoint_arg,
    rebooter_of,
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
    from khofs.daemon.state import default_log_path, runtime_dir

    mountpoint = mountpoint_arg(args.mountpoint)
    check_mountpoint(mountpoint, args.mountpoint)
    runtime_dir()  # one that is not ours is refused before anything boots
    load_backend()  # a KHOFS_FUSE backend that is not there fails here, before the daemon
    system = make_system(args)
    warn_kho_off(system.kernel)
    rebooter = rebooter_of(args, system)
    if args.foreground:
        return daemon.run_foreground(system, mountpoint, args.allow_other, args.debug,
                                     rebooter)
    logfd = _open_log(args.log, default_log_path(mountpoint))
    status, problem = daemon.start(system, mountpoint, logfd, args.allow_other, args.debug,
                                   rebooter)
    if status:
        raise Usage(f"cannot mount {mountpoint}: {problem}")
    return 0


def _open_log(given: str | None, default: Path | None) -> int:
    """--log FILE (as the user names it), else the state directory's log, never followed
    through a symlink there."""
    from khofs.daemon.lifecycle import open_log
    from khofs.daemon.state import STATE_FILE_FLAGS

    try:
        if given is not None:
            if not given:
                raise Usage("--log '': an empty file name")
            return open_log(given)
        assert default is not None
        return os.open(default, os.O_WRONLY | os.O_CREAT | os.O_APPEND | STATE_FILE_FLAGS,
                       0o600)
    except OSError as e:
        raise Usage(f"--log {given}: {e.strerror}" if given is not None
                    else f"{default}: {e.strerror}") from None


def cmd_run(args: argparse.Namespace) -> int:
    """khofs run: the machine boots here, then the runner serves it to COMMAND."""
    from khofs.daemon.fuse_edge import load_backend
    from khofs.run.initramfs import read_initrd
    from khofs.run.runner import DEFAULT_INIT, RunError, check_inputs, run

    command = args.run_command[1:] if args.run_command[:1] == ["--"] else args.run_command
    if not command and (args.initrd or args.root):
        command = [DEFAULT_INIT]
    try:
        check_inputs(command, args.boots, args.root)
        initrd = read_initrd(args.initrd) if args.initrd else None
        load_backend()
        logfd = _open_log(args.log, None) if args.log is not None else None
        system = make_system(args, owner=(0, 0))  # root of the run: the user, mapped
        warn_kho_off(system.kernel)
        return run(system, command, boots=args.boots, console=args.console, initrd=initrd,
                   root=args.root, debug=args.debug, logfd=logfd)
    except RunError as e:
        raise Usage(str(e)) from None


def cmd_compat(args: argparse.Namespace) -> int:
    """khofs compat: the matrix; exit 0 whatever the cells say."""
    import json

    from khofs.cli.boot import check_table, profile_arg
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
        check_table(args, boot_table(drivers), *profiles)
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
    from khofs.daemon.detach import umount

    done = umount(mountpoint_arg(args.mountpoint))
    if done.status == -1:
        print(f"khofs: {args.mountpoint}: not mounted", file=sys.stderr)
        return 1
    if done.status == -2:
        print(f"khofs: {args.mountpoint}: not a khofs mount ({done.note} is mounted there): "
              "left alone", file=sys.stderr)
        return 1
    if done.status:
        problem = f" ({done.note})" if done.note else ""
        print(f"khofs: {args.mountpoint}: could not unmount{problem}", file=sys.stderr)
    elif done.note:  # the daemon did not answer: say what was done about it
        print(f"khofs: {done.note}", file=sys.stderr)
    return done.status
