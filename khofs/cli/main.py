"""The `khofs` command: mount, run, umount, kexec, log, compat, machine show."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from khofs.cli.commands import cmd_compat, cmd_machine_show, cmd_mount, cmd_run, cmd_umount
from khofs.cli.parser import Usage, build_parser
from khofs.cli.requests import cmd_kexec, cmd_log
from khofs.errors import InputError


def main(argv: Sequence[str] | None = None) -> int:
    from khofs.daemon.fuse_edge import BackendError

    try:
        args = build_parser().parse_args(argv)
        command = {"mount": cmd_mount, "machine": cmd_machine_show, "umount": cmd_umount,
                   "kexec": cmd_kexec, "log": cmd_log, "run": cmd_run,
                   "compat": cmd_compat}[args.command]
        return command(args)
    # BackendError: KHOFS_FUSE names a backend that is not there
    except (Usage, InputError, BackendError) as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 2
