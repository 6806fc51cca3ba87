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
