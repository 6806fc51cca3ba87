"""The `khofs` command line: its parser, options and usage errors."""

from __future__ import annotations

import argparse
from typing import NoReturn

from khofs import __version__


class Usage(Exception):
    """A start-up error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Usage(message)

    def format_help(self) -> str:
        # help that names the presets is written when asked for: the presets are machines,
        # which `khofs umount`, `log` and `--version` never load
        for action in self._actions:
            lazy = getattr(action, "lazy_help", None)
            if lazy is not None:
                action.help = lazy()
        return super().format_help()


def _machine_help() -> str:
    from khofs.machines.presets import MACHINES

    return f"a preset ({', '.join(MACHINES)}), host, or a machine file"


class Version(argparse.Action):
    """--version: khofs and the FUSE backend, which is loaded only then (and to mount)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from khofs.daemon.fuse_edge import BACKEND

        print(f"khofs {__version__} ({BACKEND})")
        parser.exit()


def build_parser() -> Parser:
    p = Parser(prog="khofs", description="A debugfs tree for Kexec HandOver over FUSE.")
    p.add_argument("--version", action=Version, nargs=0, help="show the version and the FUSE "
                   "backend (KHOFS_FUSE), and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    m = sub.add_parser("mount", help="boot an emulated kernel and mount its debugfs")
    m.add_argument("mountpoint")
    _boot_options(m)
    m.add_argument("--boot-from", metavar="DIR",
                   help="boot the next kernel from what `khofs kexec --to DIR` left there")
    m.add_argument("--foreground", action="store_true", help="serve in this process")
    m.add_argument("--log", metavar="FILE", help="the daemon's log (default: under "
                   "$XDG_RUNTIME_DIR/khofs or /tmp/khofs-UID)")
    r = sub.add_parser("run", help="run COMMAND with the emulated debugfs at /sys/kernel/debug "
                       "and a kexec for it, in a private mount namespace")
    _boot_options(r)
    r.add_argument("run_command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    u = sub.add_parser("umount", help="unmount, also when the daemon died")
    u.add_argument("mountpoint")
    _kexec_parser(sub)
    _reboot_parser(sub)
    lg = sub.add_parser("log", help="the emulated kernel's log across boots, like dmesg")
    lg.add_argument("mountpoint")
    lg.add_argument("-f", "--follow", action="store_true",
                    help="wait for new lines until Ctrl-C or the daemon stops")
    ms = sub.add_parser("machine", help="the emulated machines").add_subparsers(
        dest="machine_command", required=True, parser_class=Parser)
    show = ms.add_parser("show", help="boot a machine and show its memory, reservations and "
                         "scratch areas, without mounting")
    show.add_argument("machine_arg", nargs="?", default="laptop", metavar="NAME|FILE"
                      ).lazy_help = _machine_help  # type: ignore[attr-defined]
    show.add_argument("--cmdline", default=None, help=CMDLINE_HELP)
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    return p


def _kexec_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    k = sub.add_parser("kexec", help="kexec -s -l, then kexec -e, on the mounted machine")
    k.add_argument("mountpoint")
    line = k.add_mutually_exclusive_group()
    line.add_argument("--append", metavar="STRING",
                      help="the current command line, a space, then STRING")
    line.add_argument("--command-line", metavar="STRING", help="exactly STRING")
    k.add_argument("--image", metavar="FILE", help="the kernel image (sizes its segment)")
    k.add_argument("--initrd", metavar="FILE", help="the initrd (sizes its segment)")
    stage = k.add_mutually_exclusive_group()
    stage.add_argument("--load-only", action="store_true", help="kexec -l: load, no reboot")
    stage.add_argument("--exec-only", action="store_true", help="kexec -e: boot what is loaded")
    k.add_argument("--to", metavar="DIR", help="boot the next kernel in another process: "
                   "write RAM and handover to DIR, unmount, stop (with --load-only: when "
                   "this daemon is stopped later)")


def _reboot_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    rb = sub.add_parser("reboot", help="cold-boot a new kernel in the mount (reboot(2) with "
                        "RESTART): new RAM, no handover; options not given stay as they are")
    rb.add_argument("mountpoint")
    _machine_options(rb)
    rb.add_argument("--producers", metavar="FILE",
                    help="TOML file of KHO producers ('' for none)")
    rb.add_argument("--plugin", metavar="MODULE:FUNCTION", action="append", default=None,
                    help="a KHO user written in Python (repeatable; replaces the running "
                    "kernel's; '' for none)")
    rb.add_argument("--seed", type=_seed, default=None,
                    help="seed of the emulated randomness")


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: a number from 0")
    return value


CMDLINE_HELP = ("the emulated kernel's whole command line (default: the machine file's "
                "cmdline, else kho=on)")


def _boot_options(p: argparse.ArgumentParser) -> None:
    """What boots the emulated kernel and how it is served: shared by mount and run."""
    _machine_options(p)
    p.add_argument("--producers", metavar="FILE", help="TOML file of KHO producers")
    p.add_argument("--plugin", metavar="MODULE:FUNCTION", action="append", default=[],
                   help="a KHO user written in Python (repeatable)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed of the emulated randomness (default 0)")
    p.add_argument("--debug", action="store_true", help="log every FUSE call")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in (the file modes then decide)")


def _machine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machine", default=None, dest="machine_arg"
                   ).lazy_help = _machine_help  # type: ignore[attr-defined]
    p.add_argument("--cmdline", default=None, help=CMDLINE_HELP)
