"""The `khofs` command: mount, run, umount, kexec, log, compat, machine show."""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from khofs.cli.commands import cmd_compat, cmd_machine_show, cmd_mount, cmd_run, cmd_umount
from khofs.cli.parser import Usage, build_parser
from khofs.cli.requests import cmd_kexec, cmd_log
from khofs.errors import InputError, Interrupted

# what interrupts a command: Ctrl-C, kill, a closed terminal
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: Sequence[str] | None = None, *, final: bool = False) -> int:
    """Run one command: its exit status. `final`: the process ends after it (see
    _signals_interrupt)."""
    from khofs.daemon.fuse_edge import BackendError

    # paths are bytes to the kernel: print them as the bytes they are
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    try:
        with _signals_interrupt(final):
            args = build_parser().parse_args(argv)
            command = {"mount": cmd_mount, "machine": cmd_machine_show, "umount": cmd_umount,
                       "kexec": cmd_kexec, "log": cmd_log, "run": cmd_run,
                       "compat": cmd_compat}[args.command]
            status = command(args)
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # the outcome is decided
            return status
    # BackendError: KHOFS_FUSE names a backend that is not there
    except (Usage, InputError, BackendError) as e:
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
