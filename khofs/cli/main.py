"""The `khofs` command: mount, run, umount, kexec, reboot, log, compat, machine show.

Each command's module is imported when that command runs, so a command imports only what it
uses (`khofs umount` and `khofs log` never load the emulated kernel or a FUSE binding).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import import_module
from types import FrameType

from khofs.cli.parser import Usage, build_parser
from khofs.errors import InputError, Interrupted

# command -> (module, function)
COMMANDS = {
    "mount": ("khofs.cli.commands", "cmd_mount"),
    "run": ("khofs.cli.commands", "cmd_run"),
    "umount": ("khofs.cli.commands", "cmd_umount"),
    "machine": ("khofs.cli.commands", "cmd_machine_show"),
    "compat": ("khofs.cli.commands", "cmd_compat"),
    "kexec": ("khofs.cli.requests", "cmd_kexec"),
    "reboot": ("khofs.cli.requests", "cmd_reboot"),
    "log": ("khofs.cli.requests", "cmd_log"),
}


def command_of(name: str) -> Callable[[argparse.Namespace], int]:
    module, function = COMMANDS[name]
    command: Callable[[argparse.Namespace], int] = getattr(import_module(module), function)
    return command

# what interrupts a command: Ctrl-C, kill, a closed terminal
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: Sequence[str] | None = None, *, final: bool = False) -> int:
    """Run one command: its exit status. `final`: the process ends after it (see
    _signals_interrupt)."""
    # paths are bytes to the kernel: print them as the bytes they are
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    try:
        with _signals_interrupt(final):
            args = build_parser().parse_args(argv)
            status = command_of(args.command)(args)
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # the outcome is decided
            return status
    # InputError includes BackendError: KHOFS_FUSE names a backend that is not there
    except (Usage, InputError) as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        # whatever the command had started is undone on the way here
        print(f"khofs: interrupted ({signal.Signals(e.signum).name})", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:
        # `khofs ... | head`: the reader is gone; say nothing, as coreutils' tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def _signals_interrupt(final: bool) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted while the command runs, and are blocked
    once its outcome is decided. A process that ends after the command (`final`) keeps them
    blocked: a late Ctrl-C must not report a mount that is up as interrupted. Otherwise
    (a test calling main()) the handlers and the mask it found are back."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    old = {signum: signal.signal(signum, _interrupt) for signum in SIGNALS}
    try:
        yield
    finally:
        if not final:
            for signum, handler in old.items():
                signal.signal(signum, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
