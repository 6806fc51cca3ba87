"""Issue 13, H2 D2 T1 U1..U7 L1 K3: input that used to hang, grow, mislead or kexec the
wrong way is one line (exit status 2) that changes nothing; odd paths work byte for byte."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from khofs.engine.cmdline import parse_cmdline
from khofs.engine.printk import Printk
from tests.hardening import BACKENDS, mounted, nothing_left
from tests.helpers import khofs

FAST = 20.0  # seconds: what reading a header takes, with room for a loaded machine


def refused(r: subprocess.CompletedProcess[str], line: str) -> None:
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"khofs: {line}\n")


# --- H2: non-regular files, and sizes a header gives ---------------------------------------

def _producers(tmp_path: Path, key: str, target: str) -> Path:
    path = tmp_path / "producers.toml"
    path.write_text(f'[[producer]]\nname = "p"\n{key} = "{target}"\n')
    return path


@pytest.mark.parametrize("key", ["dtb", "dts"])
def test_a_producer_file_that_is_a_device_or_fifo(tmp_path: Path, key: str) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    os.mkfifo(tmp_path / "fifo")
    for target, kind in (("/dev/zero", "a character device"), (str(tmp_path / "fifo"), "a FIFO"),
                         (str(tmp_path), None)):
        start = time.monotonic()
        r = khofs("mount", mnt, "--producers", _producers(tmp_path, key, target), timeout=60)
        assert time.monotonic() - start < FAST
        problem = f"not a regular file ({kind})" if kind else "Is a directory"
        refused(r, f"{target}: {problem}")
    nothing_left(mnt)


def test_a_blob_or_an_initrd_that_is_a_device_or_fifo(tmp_path: Path) -> None:
    """A 7.1 producer's `blob =` and `khofs run --initrd` are read whole: only a regular
    file, refused at once otherwise."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    os.mkfifo(tmp_path / "fifo")
    for target, kind in (("/dev/zero", "a character device"), (str(tmp_path / "fifo"), "a FIFO"),
                         (str(tmp_path), None)):
        problem = f"not a regular file ({kind})" if kind else "Is a directory"
        producers = _producers(tmp_path, "blob", target)
        refused(khofs("mount", mnt, "--abi", "7.1", "--producers", producers, timeout=60),
                f"{target}: {problem}")
        refused(khofs("run", "--initrd", target, timeout=60),
                f"--initrd {target}: {problem}")
    nothing_left(mnt)


def test_machine_and_producers_files_that_are_devices(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    os.mkfifo(tmp_path / "fifo.toml")
    for option in ("--machine", "--producers"):
        refused(khofs("mount", mnt, option, "/dev/zero"),
                "/dev/zero: not a regular file (a character device)")
        refused(khofs("mount", mnt, option, tmp_path / "fifo.toml"),
                f"{tmp_path / 'fifo.toml'}: not a regular file (a FIFO)")
    refused(khofs("machine", "show", "/dev/zero"),
            "/dev/zero: not a regular file (a character device)")
    nothing_left(mnt)


def test_a_huge_sparse_dtb_is_judged_by_its_header(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    for name, header in (("zero.dtb", b""), ("big.dtb", struct.pack(">II", 0xD00DFEED,
                                                                      0xF0000000))):
        dtb = tmp_path / name
        with dtb.open("wb") as f:
            f.write(header)
            f.truncate(4 << 30)  # 4 GiB, sparse
        start = time.monotonic()
        r = khofs("mount", mnt, "--producers", _producers(tmp_path, "dtb", name))
        assert time.monotonic() - start < FAST
        problem = ("bad DTB: magic 0x00000000" if not header else
                   "bad DTB: totalsize 4026531840 is more than khofs reads (67108864 bytes)")
        refused(r, f"{dtb}: {problem}")
    nothing_left(mnt)


# --- D2: seeds and kexec options that would strand the next kernel -------------------------

def test_a_seed_beyond_u64_is_refused(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    for args in (["mount", mnt], ["run"]):
        refused(khofs(*args, "--seed", str(1 << 64), "--", "true"),
                f"argument --seed: invalid seed '{1 << 64}': a number from 0 to "
                f"{(1 << 64) - 1} (2**64 - 1)")
    nothing_left(mnt)


@pytest.mark.mount
def test_the_largest_seed_survives_a_handover(tmp_path: Path) -> None:
    seed = str((1 << 64) - 1)
    with mounted(tmp_path / "a", "--seed", seed) as first:
        r = khofs("kexec", first, "--to", tmp_path / "to")
        assert r.returncode == 0, r.stderr
    with mounted(tmp_path / "b", "--boot-from", str(tmp_path / "to"), "--seed", seed) as second:
        assert "[boot 2]" in khofs("log", second).stdout


@pytest.mark.mount
def test_kexec_options_that_name_nothing(tmp_path: Path) -> None:
    with mounted(tmp_path / "m") as mnt:
        refused(khofs("kexec", mnt, "--to", ""),
                "--to '': an empty directory name (kexec into another process needs one)")
        refused(khofs("kexec", mnt, "--initrd", tmp_path),
                f"{tmp_path}: Is a directory")
        os.mkfifo(tmp_path / "fifo")
        for option in ("--initrd", "--image"):
            refused(khofs("kexec", mnt, option, tmp_path / "fifo"),
                    f"{tmp_path / 'fifo'}: not a regular file (a FIFO)")
        log = khofs("log", mnt).stdout
        assert "[boot 2]" not in log and "kexec_core" not in log  # nothing was loaded or run


# --- T1: --log that cannot be a log ----------------------------------------------------

def test_a_log_that_cannot_be_opened(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    os.mkfifo(tmp_path / "fifo")
    for log, problem in (("/tmp", "Is a directory"), ("/proc/x.log", "No such file or directory"),
                         (str(tmp_path / "fifo"), "No such device or address"),
                         ("", None)):
        r = khofs("mount", mnt, "--log", log)
        refused(r, f"--log {log}: {problem}" if problem else "--log '': an empty file name")
    nothing_left(mnt)


# --- U1 is in test_hardening_hangs; U2 and L1: paths as the kernel shows them ---------------

@pytest.mark.mount
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [b"\xc3\xbc b", b"x\xffy z", b"tab\there", b"back\\slash"])
def test_odd_mount_points_work_byte_for_byte(tmp_path: Path, backend: str,
                                             name: bytes) -> None:
    """mountinfo escapes space, tab, newline and backslash; the rest, UTF-8 or not, comes
    as it is. mount, log, kexec, umount and the messages all keep the bytes."""
    mnt = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + name))
    with mounted(mnt, backend=backend):
        assert (mnt / "kho/out/finalize").read_bytes() == b"0\n"
        r = khofs("kexec", mnt, backend=backend)
        assert r.returncode == 0, r.stderr
        assert "[boot 2]" in khofs("log", mnt, backend=backend).stdout
        r = khofs("mount", mnt, backend=backend)
        assert r.returncode == 2
        assert os.fsencode(r.stderr) == b"khofs: mount point " + os.fsencode(mnt) + \
            b": busy (khofs is already mounted there)\n"
        r = khofs("umount", mnt, backend=backend)
        assert (r.returncode, r.stderr) == (0, "")
    nothing_left(mnt)


# --- U3: the DTS subset's limits say what they are -----------------------------------------

@pytest.mark.parametrize("source, problem", [
    (b'/dts-v1/;\n/ { a = "x\\"y"; };\n', "line 2: '\\\\' inside a string is not supported"),
    (b'/dts-v1/;\n/ { a = ""; };\n', "line 2: empty strings, strings with outer spaces and "
                                       "strings starting with ',' are not supported"),
    (b'/dts-v1/;\n/ { a = "\xff"; };\n', "not UTF-8 text (byte 19)"),
])
def test_dts_outside_the_subset(tmp_path: Path, source: bytes, problem: str) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    (tmp_path / "p.dts").write_bytes(source)
    r = khofs("mount", mnt, "--producers", _producers(tmp_path, "dts", "p.dts"))
    refused(r, f"{tmp_path / 'p.dts'}: {problem}")
    nothing_left(mnt)


# --- U4: why KHO is off ---------------------------------------------------------------

@pytest.mark.parametrize("cmdline, status", [
    ("kho=off", "off (the command line has kho=off)"),
    ("quiet", "off (kho=on is not on the command line)"),
    ("kho=on kho=0", "off (the command line has kho=0)"),
    ("kho=off kho=bogus", "off (the command line has kho=off)"),
    ("kho=on", "on"),
])
def test_machine_show_says_why_kho_is_off(cmdline: str, status: str) -> None:
    r = khofs("machine", "show", "--cmdline", cmdline)
    assert f"\nKHO: {status}\n" in r.stdout


# --- U6: empty mount points, and the mount options `khofs run` takes ---------------------

def test_an_empty_mount_point_is_no_directory(tmp_path: Path) -> None:
    for args in (["mount", ""], ["umount", ""], ["log", ""], ["kexec", ""]):
        refused(khofs(*args, cwd=tmp_path), "mount point '': No such file or directory")


@pytest.mark.mount
def test_run_takes_the_mount_options(tmp_path: Path) -> None:
    """Every `khofs mount` option but --foreground (a run always serves in the foreground)."""
    log = tmp_path / "daemon.log"
    script = "cat /sys/kernel/debug/kho/out/finalize"
    r = khofs("run", "--log", log, "--", "sh", "-c", script)
    assert (r.returncode, r.stdout, r.stderr) == (0, "0\n", "")
    assert "Kernel command line: kho=on" in log.read_text()
    with mounted(tmp_path / "m") as mnt:
        (mnt / "kho/out/finalize").write_bytes(b"1\n")
        assert khofs("kexec", mnt, "--to", tmp_path / "to").returncode == 0
    r = khofs("run", "--boot-from", tmp_path / "to", "--", "ls", "/sys/kernel/debug/kho/in")
    assert (r.returncode, r.stdout) == (0, "fdt\nsub_fdts\n"), r.stderr


# --- U7: a command line is one line ---------------------------------------------------

def test_a_cmdline_with_a_line_break_is_refused(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    line = "argument --cmdline: has a line break: a command line is one line"
    for args in (["mount", mnt], ["machine", "show"], ["run"]):
        refused(khofs(*args, "--cmdline", "kho=on\nquiet", "--", "true"), line)
    nothing_left(mnt)


# --- K3: COMMAND_LINE_SIZE ------------------------------------------------------------

def test_the_kernel_keeps_2047_bytes_of_its_command_line() -> None:
    """x86-64 and arm64 both have COMMAND_LINE_SIZE 2048: the kernel keeps 2047 bytes, says
    nothing of the rest, and shows the 2047 in its log and /proc/cmdline."""
    from khofs.engine.cmdline import COMMAND_LINE_SIZE

    assert COMMAND_LINE_SIZE == 2048
    pad = "x" * 2041
    long_line = f"{pad} kho=on reserve_mem=1M:4K:cut"  # kept: "... kho=o"
    log = Printk(None)
    params = parse_cmdline(long_line, log)
    assert params.cmdline == long_line[:2047] and params.cmdline.endswith(" kho=o")
    assert not params.kho and not params.reserve_mem
    assert [r.text for r in log.records] == ["Malformed early option 'kho'",
                                              f"Kernel command line: {long_line[:2047]}"]
    assert parse_cmdline(long_line[:2047], Printk(None)).cmdline == long_line[:2047]
    # a multi-byte character cut in two stays two bytes of it, as the kernel's copy has
    cut = parse_cmdline("é" * 1100, Printk(None)).cmdline
    assert os.fsencode(cut) == ("é" * 1100).encode()[:2047]


def test_machine_show_with_a_long_command_line() -> None:
    long_line = "kho=on " + "x" * 3000
    r = khofs("machine", "show", "--cmdline", long_line)
    assert r.returncode == 0
    assert f"\ncommand line: {long_line[:2047]}\n" in r.stdout
    assert r.stderr == ("khofs: the command line is 3007 bytes: the kernel keeps the first "
                        "2047 (COMMAND_LINE_SIZE 2048), the rest is ignored\n")
