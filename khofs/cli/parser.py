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
    _serve_options(m, "serve in this process", "the daemon's log (default: under "
                   "$XDG_RUNTIME_DIR/khofs or /tmp/khofs-UID)")
    r = sub.add_parser("run", help="run COMMAND as the userspace of an emulated machine: its "
                       "kexec and reboot system calls, /proc and /sys files and debugfs are "
                       "the emulated kernel's, in namespaces of its own")
    _boot_options(r)
    _serve_options(r, None, "the machine's daemon log, appended to (default: a file removed "
                   "when the run ends)")
    r.add_argument("--boots", type=_boots, default=1, metavar="N",
                   help="boot up to N times: a reboot that would start boot N+1 ends the run "
                   "(default 1)")
    r.add_argument("--console", action="store_true",
                   help="copy the emulated kernel's log to stderr as it is printed")
    root = r.add_mutually_exclusive_group()
    root.add_argument("--initrd", metavar="FILE", help="a newc cpio archive (gzip-compressed "
                      "or not) unpacked as COMMAND's root at every boot (COMMAND: /init)")
    root.add_argument("--root", metavar="DIR", help="DIR as COMMAND's root (COMMAND: /init)")
    r.add_argument("run_command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    u = sub.add_parser("umount", help="unmount, also when the daemon died")
    u.add_argument("mountpoint")
    _kexec_parser(sub)
    _reboot_parser(sub)
    lg = sub.add_parser("log", help="the emulated kernel's log across boots, like dmesg")
    lg.add_argument("mountpoint")
    lg.add_argument("-f", "--follow", action="store_true",
                    help="wait for new lines until Ctrl-C or the daemon stops")
    _compat_parser(sub)
    ms = sub.add_parser("machine", help="the emulated machines").add_subparsers(
        dest="machine_command", required=True, parser_class=Parser)
    show = ms.add_parser("show", help="boot a machine and show its memory, reservations and "
                         "scratch areas, without mounting")
    show.add_argument("machine_arg", nargs="?", default="laptop", metavar="NAME|FILE"
                      ).lazy_help = _machine_help  # type: ignore[attr-defined]
    show.add_argument("--cmdline", default=None, type=_cmdline, help=CMDLINE_HELP)
    show.add_argument("--abi", type=_abi, default=None, metavar="ERA|RELEASE", help=ABI_HELP)
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    return p


def _compat_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    c = sub.add_parser("compat", help="a live update from each kernel version to each, and "
                       "what the next kernel made of the handover")
    c.add_argument("eras", nargs="*", type=_abi, metavar="ERA|RELEASE",
                   help="the versions, as rows and columns (default: 6.16 6.18 6.19 7.1 7.4)")
    c.add_argument("--producers", metavar="FILE", help="TOML file of KHO producers (default: "
                   "test_kho and a reserve_mem region)")
    c.add_argument("--machine", default=None, dest="machine_arg",
                   help="a preset, host, or a machine file (default laptop)")
    c.add_argument("--json", action="store_true", help="JSON for scripts")


def _kexec_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    k = sub.add_parser("kexec", help="kexec -s -l, then kexec -e, on the mounted machine")
    k.add_argument("mountpoint")
    line = k.add_mutually_exclusive_group()
    line.add_argument("--append", metavar="STRING",
                      help="the current command line, a space, then STRING")
    line.add_argument("--command-line", metavar="STRING", help="exactly STRING")
    k.add_argument("--image", metavar="FILE", help="the kernel image (sizes its segment; an "
                   "x86 bzImage's version string chooses the next kernel)")
    k.add_argument("--abi", type=_abi, default=None, metavar="ERA|RELEASE",
                   help="the next kernel's version, whatever the image says")
    k.add_argument("--initrd", metavar="FILE", help="the initrd (sizes its segment)")
    stage = k.add_mutually_exclusive_group()
    stage.add_argument("--load-only", action="store_true", help="kexec -l: load, no reboot")
    stage.add_argument("--exec-only", action="store_true", help="kexec -e: boot what is loaded")
    k.add_argument("--to", metavar="DIR", help="boot the next kernel in another process: "
                   "write RAM and handover to DIR, unmount, stop (with --load-only: when "
                   "this daemon is stopped later)")


def _boots(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a positive integer")
    return value


def _serve_options(p: argparse.ArgumentParser, foreground: str | None, log: str) -> None:
    """How the machine is served: shared by mount and run (which always serves in the
    foreground, so it has no --foreground)."""
    p.add_argument("--boot-from", metavar="DIR",
                   help="boot the next kernel from what `khofs kexec --to DIR` left there")
    if foreground is not None:
        p.add_argument("--foreground", action="store_true", help=foreground)
    p.add_argument("--log", metavar="FILE", help=log)


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


SEED_MAX = (1 << 64) - 1  # the seed a handover records is a u64


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: a number from 0 to "
                                         f"{SEED_MAX} (2**64 - 1)")
    return value


def _cmdline(text: str) -> str:
    """--cmdline: one line, as a machine file's `cmdline` must be."""
    if "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("has a line break: a command line is one line")
    return text


CMDLINE_HELP = ("the emulated kernel's whole command line (default: the machine file's "
                "cmdline, else kho=on)")


ABI_HELP = ("the emulated kernel's version: a KHO ABI era (6.16, 6.18, 6.19, 7.1, 7.4) or a "
            "release such as 7.2.0, +debug for CONFIG_KEXEC_HANDOVER_DEBUG (default 6.16)")


def _abi(text: str) -> str:
    """An --abi value, checked now (the daemon gets the text)."""
    from khofs.engine.era import profile_of

    try:
        profile_of(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _boot_options(p: argparse.ArgumentParser) -> None:
    """What boots the emulated kernel and how it is served: shared by mount and run."""
    _machine_options(p)
    p.add_argument("--next-abi", type=_abi, default=None, metavar="ERA|RELEASE",
                   help="the version every kexec boots, whatever its image says (khofs kexec "
                   "--abi still overrides it)")
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
    p.add_argument("--cmdline", default=None, type=_cmdline, help=CMDLINE_HELP)
    p.add_argument("--abi", type=_abi, default=None, metavar="ERA|RELEASE", help=ABI_HELP)
