"""Processes and mounts, for the benchmark and the stress runner (both run as scripts, so
this module sits beside them on sys.path)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from khofs.daemon.mountinfo import is_mounted
from khofs.daemon.probe import process_state

__all__ = ["alive", "cmdline", "is_mounted", "run"]


def run(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def alive(pid: int) -> bool:
    """Running: a zombie (this VM's init reaps late) counts as gone."""
    return process_state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> str:
    """Its command line, to tell our daemon from a process that reused its pid."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
