"""The `khofs` command as a process runs it: the console script and `python -m khofs`."""

from __future__ import annotations

import signal


def main() -> int:
    """Until the command can undo what it starts, Ctrl-C ends it as the default action does,
    quietly (Python would print a KeyboardInterrupt traceback from the middle of an import);
    then khofs.cli.main takes the signals over."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from khofs.cli.main import main as khofs

    return khofs(final=True)
