"""The kernel's KHO selftest flow under `khofs run`: an initrd whose /init (a static C program
of our own, built here) mounts debugfs and proc, finalizes, reads /proc/cmdline,
kexec_file_loads /kernel and reboots into it; the next boot's test_kho says whether the
restore worked. Also --root DIR, and how an initrd is unpacked."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from khofs.run.initramfs import parse_newc, unpack
from tests.machine_helpers import (
    NOBODY,
    Scratch,
    build,
    bzimage,
    fuse_for_everyone,
    khofs_run,
    newc,
    scratch,
)

KHO_TEST = '[[producer]]\nname = "kho_test"\nbuiltin = "kho_test"\n'
DIR, FILE, EXE, CHR = 0o040755, 0o100644, 0o100755, stat.S_IFCHR | 0o600


@pytest.fixture
def sc() -> Iterator[Scratch]:
    with scratch() as made:
        made.file("kho_test.toml", KHO_TEST)
        build("kho_init.c", made.path / "init", static=True)
        yield made


def selftest_members(sc: Scratch) -> list[tuple[str, int, bytes]]:
    """What tools/testing/selftests/kho builds: /init, /kernel, the mount points, a console."""
    return [("dev", DIR, b""), ("dev/console", CHR, b""), ("debugfs", DIR, b""),
            ("proc", DIR, b""), ("init", EXE, (sc.path / "init").read_bytes()),
            ("kernel", FILE, bzimage())]


def check_selftest(stdout: str, stderr: str, status: int) -> None:
    assert status == 0, stderr
    assert stdout == "kho_init: reusing 'kho=on'\n" * 2
    kernel = stderr.splitlines()
    assert sum("] test_kho: KHO restore succeeded" in line for line in kernel) == 1
    assert sum("] kexec_core: Starting new kernel" in line for line in kernel) == 2
    assert kernel[-1] == ("khofs: run: the machine rebooted (kexec); boot 3 would start, past "
                          "--boots 2: stopping")


@pytest.mark.mount
@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_the_selftest_initrd_restores_kho_test(sc: Scratch, compress: bool) -> None:
    initrd = sc.file("initrd.cpio", newc(selftest_members(sc), compress=compress))
    r = khofs_run("--producers", str(sc.path / "kho_test.toml"), "--initrd", str(initrd),
                  "--boots", "2", "--console", sc=sc)
    check_selftest(r.stdout, r.stderr, r.returncode)
    sc.nothing_left()


@pytest.mark.mount
def test_the_selftest_as_an_ordinary_user(sc: Scratch) -> None:
    initrd = sc.file("initrd.cpio", newc(selftest_members(sc), compress=True))
    with fuse_for_everyone():
        r = khofs_run("--producers", str(sc.path / "kho_test.toml"), "--initrd", str(initrd),
                      "--boots", "2", "--console", sc=sc, user=NOBODY)
    check_selftest(r.stdout, r.stderr, r.returncode)
    sc.nothing_left()


@pytest.mark.mount
def test_a_root_directory_runs_its_init(sc: Scratch) -> None:
    root = sc.dir("root")
    for name, mode, data in selftest_members(sc):
        path = root / name
        if stat.S_ISDIR(mode):
            path.mkdir(exist_ok=True)
        elif stat.S_ISREG(mode):
            path.write_bytes(data)
            path.chmod(stat.S_IMODE(mode))
    r = khofs_run("--producers", str(sc.path / "kho_test.toml"), "--root", str(root),
                  "--boots", "2", "--console", sc=sc)
    check_selftest(r.stdout, r.stderr, r.returncode)
    # the debugfs and proc the init mounted were in the boot's namespaces, not here
    assert sorted(os.listdir(root / "debugfs")) == [] and os.listdir(root / "proc") == []


@pytest.mark.mount
def test_an_init_that_is_not_there_is_127(sc: Scratch) -> None:
    initrd = sc.file("initrd.cpio", newc([("sbin", DIR, b"")]))
    r = khofs_run("--initrd", str(initrd), sc=sc)
    assert (r.returncode, r.stderr) == (127, "khofs: run: /init: No such file or directory\n")


# --- the archive ---------------------------------------------------------------------------

def test_parse_newc_reads_concatenated_and_compressed_archives() -> None:
    first = newc([("a", FILE, b"one")])
    second = newc([("b", 0o120777, b"a")], compress=False)
    entries = parse_newc(first + second)
    assert [(e.name, e.mode, e.data) for e in entries] == [("a", FILE, b"one"),
                                                          ("b", 0o120777, b"a")]
    assert [e.name for e in parse_newc(newc([("c", FILE, b"x" * 5000)], compress=True))] == ["c"]
    crc = newc([("d", FILE, b"")]).replace(b"070701", b"070702")
    assert [e.name for e in parse_newc(crc)] == ["d"]


@pytest.mark.parametrize(("raw", "problem"), [
    (b"", "no TRAILER!!! entry"),
    (b"hello world", "no newc header at byte 0"),
    (b"070701" + b"Z" * 104, "a header field is not hex at byte 0"),
    (b"\x1f\x8bnot gzip", "bad gzip data"),
])
def test_parse_newc_says_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_newc(raw)


def test_unpack_makes_no_device_and_binds_the_harmless_ones(tmp_path: Path) -> None:
    entries = parse_newc(newc([
        ("etc", DIR, b""), ("etc/motd", 0o100600, b"hi\n"), ("etc/link", 0o120777, b"motd"),
        ("dev", DIR, b""), ("dev/console", CHR, b""), ("../escape", FILE, b"no"),
        ("bin/sh", EXE, b"#!"),
    ]))
    binds: list[tuple[str, str]] = []
    unpack(entries, str(tmp_path), lambda s, t: binds.append((s, t)), "/dev/pts/7", "/kmsg")
    assert (tmp_path / "etc/motd").read_bytes() == b"hi\n"
    assert stat.S_IMODE((tmp_path / "etc/motd").stat().st_mode) == 0o600
    assert os.readlink(tmp_path / "etc/link") == "motd"
    console = tmp_path / "dev/console"
    assert stat.S_ISREG(console.lstat().st_mode) and console.read_bytes() == b""
    assert binds == [("/dev/pts/7", str(console))]  # newc() writes char devices as 5,1
    assert (tmp_path / "escape").read_bytes() == b"no"  # never above the root
    assert not (tmp_path / "bin").exists()  # no directory entry for it: skipped
