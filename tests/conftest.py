"""Fixtures only (helpers are in tests/helpers.py): a real khofs mount, served by a daemon in
its own process, and a booted laptop in process.

Tests never serve and use a mount in one process (that deadlocks); every mount is unmounted
when its test ends, passed or failed. A test that takes `mount`, `mnt` or `kho` is marked
`mount` (pyproject's markers; a test in test_layers.py checks).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from khofs.cli.pytest_plugin import Kho
from khofs.engine.kernel import Kernel
from khofs.engine.system import System
from tests.helpers import Mounter, boot_kernel, boot_system
from tests.machine_helpers import NOBODY, fuse_for_everyone


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mounter]:
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


@pytest.fixture
def kernel() -> Kernel:
    """The laptop after one boot with `kho=on` and the default boot table (memblock's
    handover only)."""
    return boot_kernel()


@pytest.fixture
def system() -> System:
    """The laptop booted as `kernel` is, to kexec from."""
    return boot_system()


@pytest.fixture(params=["root", "nobody"])
def user(request: pytest.FixtureRequest) -> Iterator[list[str] | None]:
    """`khofs run` as root, and as an ordinary user (a user namespace with FUSE in it): the
    prefix that runs a command as that user, or None for root."""
    if request.param == "root":
        yield None
        return
    with fuse_for_everyone():
        yield NOBODY
