"""The control socket in a runtime directory of any length: sun_path holds 107 bytes, so a
longer path is reached through its directory (/proc/self/fd/N/NAME)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from khofs.daemon.mountinfo import is_mounted
from tests.helpers import khofs

pytestmark = pytest.mark.mount


def test_kexec_and_log_through_a_long_runtime_dir(tmp_path: Path) -> None:
    runtime = tmp_path / ("r" * 120)
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert khofs("mount", str(mnt), env=env).returncode == 0
    try:
        (sock,) = (runtime / "khofs").glob("*.sock")
        assert len(os.fsencode(sock)) > 107
        assert khofs("kexec", str(mnt), env=env).returncode == 0
        log = khofs("log", str(mnt), env=env)
        assert log.returncode == 0 and "[boot 2]" in log.stdout
    finally:
        khofs("umount", str(mnt), env=env)
    assert not is_mounted(mnt)
