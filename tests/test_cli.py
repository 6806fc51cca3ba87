"""The khofs command: start-up errors, KHO off, unmounting, signals and a killed daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import daemon_pid, is_mounted, khofs, one_line_error, wait_gone

pytestmark = pytest.mark.mount


@pytest.mark.parametrize("args, words", [
    (["mount"], ["mountpoint"]),
    (["mount", "{mnt}", "--bogus"], ["--bogus"]),
    (["mount", "{mnt}", "--machine", "mainframe"], ["mainframe", "unknown machine"]),
    (["mount", "{mnt}", "--producers", "{tmp}/missing.toml"], ["missing.toml", "No such file"]),
    (["mount", "{tmp}/nowhere"], ["nowhere", "does not exist"]),
    (["mount", "{tmp}/file"], ["file", "not a directory"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_startup_errors(tmp_path: Path, args: list[str], words: list[str]) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "file").write_text("")
    argv = [a.format(mnt=tmp_path / "mnt", tmp=tmp_path) for a in args]
    one_line_error(khofs(*argv), *words)
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.parametrize("body, words", [
    ("[[producer]\n", ["producers.toml", "line 1"]),
    ('[[producer]]\nname = "a"\n', ["needs exactly one of 'dts' or 'dtb'"]),
    ('[[producer]]\nname = "a/b"\ndts = "x.dts"\n', ["single path component"]),
    ('[[producer]]\nname = ".."\ndts = "x.dts"\n', ["'.' or '..'"]),
    ('[[producer]]\nname = ""\ndts = "x.dts"\n', ["is empty"]),
    ('[[producer]]\nname = "a"\ndts = "missing.dts"\n', ["missing.dts", "No such file"]),
    ('[[producer]]\nname = "a"\ndts = "bad.dts"\n', ["bad.dts"]),
    ('[[producer]]\nname = "a"\ndtb = "bad.dtb"\n', ["bad.dtb"]),
    ('[[producer]]\nname = "a"\ndts = "x.dts"\nfail_finalize = "EWHAT"\n', ["EWHAT"]),
    ('[[producer]]\nname = "a"\ndts = "x.dts"\npreserve = ["12"]\n', ["PHYS+SIZE"]),
    ('[[producer]]\nname = "a"\ndts = "x.dts"\npreserve = ["1Q+4K"]\n', ["1Q"]),
    ('[[producer]]\nname = "a"\ndts = "x.dts"\ncolour = 1\n', ["colour"]),
])
def test_bad_producer_files(tmp_path: Path, body: str, words: list[str]) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "x.dts").write_text("/dts-v1/; / { };")
    (tmp_path / "bad.dts").write_text("/dts-v1/; / { oops")
    (tmp_path / "bad.dtb").write_bytes(b"\xd0\x0d\xfe\xed" + b"\xff" * 60)
    (tmp_path / "producers.toml").write_text(body)
    r = khofs("mount", str(tmp_path / "mnt"), "--producers", str(tmp_path / "producers.toml"))
    one_line_error(r, *words)
    assert not is_mounted(tmp_path / "mnt")


def test_busy_mount_point(mnt: Path) -> None:
    one_line_error(khofs("mount", str(mnt)), "busy")


def test_kho_off_by_cmdline(mount: Callable[..., Path], tmp_path: Path) -> None:
    mnt = tmp_path / "off"
    mnt.mkdir()
    r = khofs("mount", str(mnt), "--cmdline", "kho_scratch=50%")
    try:
        assert r.returncode == 0
        assert "KHO is off" in r.stderr and "no kho/ directory" in r.stderr
        assert os.listdir(mnt) == []
    finally:
        khofs("umount", str(mnt))
    assert not is_mounted(mnt)


def test_umount_after_daemon_killed(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    assert khofs("mount", str(mnt)).returncode == 0
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    with pytest.raises(OSError) as e:
        os.stat(mnt / "kho")
    assert e.value.errno == 107  # ENOTCONN: "Transport endpoint is not connected"
    r = khofs("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert not is_mounted(mnt)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(tmp_path: Path, sig: int) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    log = tmp_path / "log"
    assert khofs("mount", str(mnt), "--log", str(log)).returncode == 0
    pid = daemon_pid(mnt)
    os.kill(pid, sig)
    try:
        assert wait_gone(pid)
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            khofs("umount", str(mnt))
    assert "Traceback" not in log.read_text()


def test_umount_not_mounted(tmp_path: Path) -> None:
    r = khofs("umount", str(tmp_path))
    assert r.returncode == 1 and "not mounted" in r.stderr


def test_version() -> None:
    r = khofs("--version")
    binding = "mfusepy" if os.environ.get("KHOFS_FUSE") == "3" else "fusepy"
    assert r.returncode == 0 and r.stdout.startswith(f"khofs 0.1.0 ({binding} ")


def test_foreground_serves_until_sigterm(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "khofs", "mount", str(mnt), "--foreground",
                             "--cmdline", "kho=on kho_scratch=150%"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (mnt / "kho/out/finalize").read_bytes() == b"0\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not is_mounted(mnt)
        assert "KHO: scratch scale is 150%" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
        if is_mounted(mnt):
            khofs("umount", str(mnt))


def test_umount_leaves_what_is_not_khofs_alone(tmp_path: Path) -> None:
    """`khofs umount` of a mount point where something else is mounted (a tmpfs here, a
    real file system elsewhere) unmounts nothing."""
    mnt = tmp_path / "tmp"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], check=True)
    try:
        r = khofs("umount", str(mnt))
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", f"khofs: {mnt}: not a khofs mount (tmpfs is mounted there): left alone\n")
        assert is_mounted(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
