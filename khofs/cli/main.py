"""The `khofs` command: mount, run, umount, kexec, reboot, log, machine show.

Each command's module is imported when that command runs, so a command imports only what it
uses (`khofs umount` and `khofs log` never load the emulated kernel or a FUSE binding).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from khofs.cli.parser import Usage, build_parser
from khofs.errors import InputError

# command -> (module, function)
COMMANDS = {
    "mount": ("khofs.cli.commands", "cmd_mount"),
    "run": ("khofs.cli.commands", "cmd_run"),
    "umount": ("khofs.cli.commands", "cmd_umount"),
    "machine": ("khofs.cli.commands", "cmd_machine_show"),
    "kexec": ("khofs.cli.requests", "cmd_kexec"),
    "reboot": ("khofs.cli.requests", "cmd_reboot"),
    "log": ("khofs.cli.requests", "cmd_log"),
}


def command_of(name: str) -> Callable[[argparse.Namespace], int]:
    module, function = COMMANDS[name]
    command: Callable[[argparse.Namespace], int] = getattr(import_module(module), function)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return command_of(args.command)(args)
    # InputError includes BackendError: KHOFS_FUSE names a backend that is not there
    except (Usage, InputError) as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 2
