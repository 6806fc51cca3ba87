"""Shared fixtures: a real khofs mount, served by a daemon in its own process.

Tests never serve and use a mount in one process (that deadlocks); every mount is unmounted
when its test ends, passed or failed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from khofs.cli.pytest_plugin import Kho, KhofsError
from khofs.daemon.mountinfo import is_mounted

KHOFS = [sys.executable, "-m", "khofs"]


def khofs(*args: str, check: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the khofs command as a user would."""
    return subprocess.run([*KHOFS, *args], capture_output=True, text=True, check=check,
                          timeout=60, **kw)  # type: ignore[call-overload]


class Mounter:
    """Mounts on demand, through the khofs pytest plugin's Kho, and unmounts everything at
    teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounts: list[Kho] = []
        self.logs: dict[Path, Path] = {}  # mount point -> its daemon's log

    def __call__(self, *options: str, parent: Path | None = None) -> Path:
        mnt = (parent or self.tmp_path) / f"mnt{len(self.mounts) + 1}"
        kho = Kho(self.tmp_path, mountpoint=mnt, options=options or ("--machine", "laptop"))
        self.mounts.append(kho)
        try:
            root = kho.root
        except KhofsError as e:
            raise AssertionError(str(e)) from None
        assert is_mounted(root)
        self.logs[root] = kho.log_path
        return root

    def cleanup(self) -> None:
        for kho in self.mounts:
            kho.unmount()


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(*options) -> the mount point of a fresh `khofs mount`."""
    mounter = Mounter(tmp_path)
    try:
        yield mounter
    finally:
        mounter.cleanup()


@pytest.fixture
def mnt(kho: Kho) -> Path:
    """A mount of the default machine and command line: the khofs plugin's `kho` fixture."""
    return kho.root


def sh(script: str, shell: str = "sh", **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a shell snippet, as a user types it. Debian's sh (dash) reports any failed
    `echo` write as "I/O error"; pass shell="bash" to see the errno's message."""
    return subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False, **kw)  # type: ignore[call-overload]
