"""khofs's error types, for what comes from outside the emulated kernel.

Inside the engine errors are the kernel's (negative errnos); these are the user's input that
khofs refuses before anything boots or mounts. Each carries one line that names the file or
option and the problem; the command prints it and exits with status 2. Imports nothing.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input: one line naming the file or option and the problem, exit status 2."""


class ProducersFileError(InputError):
    """A producers file (`--producers`), or a DTS or DTB it names."""


class MachineError(InputError):
    """`--machine`: an unknown preset, a machine file, or `host` that cannot be read."""


class PluginError(InputError):
    """`--plugin MODULE:FUNCTION` that cannot be loaded."""


class StateDirError(InputError):
    """`--boot-from DIR`: a handover directory that is missing, partial or corrupt."""


class RuntimeDirError(InputError):
    """The runtime directory ($XDG_RUNTIME_DIR, /tmp/khofs-UID) is missing or not ours."""


class Interrupted(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """SIGINT, SIGTERM or SIGHUP reached a command: it undoes what it started and exits with
    128 + the signal's number. Not a KeyboardInterrupt, so that plugin code raising one
    (or SystemExit) is told apart from a real signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
