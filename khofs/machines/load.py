"""What `--machine` names: a preset, `host` (this computer), or a machine file."""

from __future__ import annotations

from pathlib import Path

from khofs.engine.machine import Machine
from khofs.errors import MachineError
from khofs.machines.presets import MACHINES


def is_machine_file(spec: str) -> bool:
    """Whether --machine names a machine file (else a preset or `host`)."""
    return spec not in MACHINES and spec != "host" and (
        "/" in spec or spec.endswith(".toml") or Path(spec).is_file())


def load_machine(spec: str) -> Machine:
    """A preset, `host`, or the path of a machine file; MachineError (one line) else. The
    readers of /sys and of machine files are imported only for those (a mount's start)."""
    if spec in MACHINES:
        return MACHINES[spec]
    if spec == "host":
        from khofs.machines.host import host_machine

        return host_machine()
    if is_machine_file(spec):
        from khofs.machines.machine_file import load_machine_file

        return load_machine_file(spec)
    names = ", ".join(MACHINES)
    raise MachineError(f"--machine {spec}: unknown machine ({names}, host, or a .toml file)")
