"""The `khofs` command: mount, umount."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from khofs import __version__

if TYPE_CHECKING:
    from khofs.engine.kernel import Kernel

DEFAULT_CMDLINE = "kho=on"


class Usage(Exception):
    """A start-up error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Usage(message)


def build_parser() -> Parser:
    from khofs.engine.machine import MACHINES
    from khofs.fuse import BACKEND

    p = Parser(prog="khofs", description="A debugfs tree for Kexec HandOver over FUSE.")
    p.add_argument("--version", action="version", version=f"khofs {__version__} ({BACKEND})")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    m = sub.add_parser("mount", help="boot an emulated kernel and mount its debugfs")
    m.add_argument("mountpoint")
    _machine_options(m)
    m.add_argument("--producers", metavar="FILE", help="TOML file of KHO producers")
    m.add_argument("--foreground", action="store_true", help="serve in this process")
    m.add_argument("--debug", action="store_true", help="log every FUSE call")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users in (the file modes then decide)")
    m.add_argument("--log", metavar="FILE", help="the daemon's log (default: under "
                   "$XDG_RUNTIME_DIR/khofs or /tmp/khofs-UID)")
    u = sub.add_parser("umount", help="unmount, also when the daemon died")
    u.add_argument("mountpoint")
    ms = sub.add_parser("machine", help="the emulated machines").add_subparsers(
        dest="machine_command", required=True, parser_class=Parser)
    show = ms.add_parser("show", help="boot a machine and show its memory, reservations and "
                         "scratch areas, without mounting")
    show.add_argument("machine_arg", nargs="?", default="laptop", metavar="NAME|FILE",
                      help=f"a preset ({', '.join(MACHINES)}), host, or a machine file")
    show.add_argument("--cmdline", default=None, help=CMDLINE_HELP)
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    return p


CMDLINE_HELP = ("the emulated kernel's whole command line (default: the machine file's "
                "cmdline, else kho=on)")


def _machine_options(p: argparse.ArgumentParser) -> None:
    from khofs.engine.machine import MACHINES

    p.add_argument("--machine", default="laptop", dest="machine_arg",
                   help=f"a preset ({', '.join(MACHINES)}), host, or a machine file")
    p.add_argument("--cmdline", default=None, help=CMDLINE_HELP)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "mount":
            return cmd_mount(args)
        if args.command == "machine":
            return cmd_machine_show(args)
        return cmd_umount(args)
    except Usage as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 2


def _check_mountpoint(path: str) -> None:
    from khofs.daemon import mount_fstype

    if not os.path.exists(path):
        raise Usage(f"mount point {path}: does not exist")
    if not os.path.isdir(path):
        raise Usage(f"mount point {path}: not a directory")
    if mount_fstype(path) is not None:
        raise Usage(f"mount point {path}: busy (something is already mounted there)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise Usage("/dev/fuse: not available (load the fuse module or run with access to it)")


def _boot(args: argparse.Namespace, producers_file: str | None = None,
          quiet: bool = False) -> Kernel:
    from khofs.config import ConfigError, load_producers
    from khofs.engine.kernel import Kernel
    from khofs.machine_file import load_machine

    try:
        machine = load_machine(args.machine_arg)
        producers = load_producers(producers_file) if producers_file else []
    except ConfigError as e:
        raise Usage(str(e)) from None
    cmdline = args.cmdline if args.cmdline is not None else machine.cmdline or DEFAULT_CMDLINE
    kernel = Kernel(machine, cmdline, producers, uid=os.getuid(), gid=os.getgid())
    if quiet:
        return kernel
    if not kernel.params.kho:
        print(f"khofs: KHO is off on the kernel command line {cmdline!r}, as a kernel "
              "would boot it: no kho/ directory (add kho=on)", file=sys.stderr)
    elif not kernel.kho_enabled:
        print("khofs: KHO was disabled during boot: a scratch area could not be allocated "
              "(6.16 logs nothing; `khofs machine show` shows the sizes): no kho/ directory",
              file=sys.stderr)
    return kernel


def cmd_mount(args: argparse.Namespace) -> int:
    from khofs import daemon

    mountpoint = os.path.abspath(args.mountpoint)
    _check_mountpoint(mountpoint)
    kernel = _boot(args, args.producers)
    if args.foreground:
        return daemon.run_foreground(kernel, mountpoint, args.allow_other, args.debug)
    log_path = args.log or daemon.default_log_path(mountpoint)
    status, problem = daemon.start(kernel, mountpoint, log_path, args.allow_other, args.debug)
    if status:
        raise Usage(f"cannot mount {mountpoint}: {problem}")
    return 0


def cmd_machine_show(args: argparse.Namespace) -> int:
    from khofs.report import show_json, show_text

    kernel = _boot(args, quiet=True)
    sys.stdout.write(show_json(kernel) if args.json else show_text(kernel))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from khofs import daemon

    status = daemon.umount(os.path.abspath(args.mountpoint))
    if status < 0:
        print(f"khofs: {args.mountpoint}: not mounted", file=sys.stderr)
        return 1
    if status:
        print(f"khofs: {args.mountpoint}: could not unmount", file=sys.stderr)
    return status
