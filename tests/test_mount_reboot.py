"""`khofs reboot` on a real mount: a cold restart in the same mount (the old kernel's files
read EIO, the log goes on), what stays and what the options change, bad input (one line, exit
2, the running kernel untouched) and the daemon's other state (a pending handover)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import is_mounted, khofs, one_line_error, sh, write_producers

pytestmark = pytest.mark.mount

OUT = "kho/out"
ALPHA = """
[[producer]]
name = "alpha"
dts = "alpha.dts"
"""
COUNTER = """
import struct
BOOTS = []  # module state: what a plugin must not carry from one machine to the next


def count(api):
    BOOTS.append(api.boot)
    api.log(f"count: api.boot {api.boot}, boots this module saw: {len(BOOTS)}")
"""


def reboot(mnt: Path, *options: str) -> None:
    r = khofs("reboot", str(mnt), *options)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


def log(mnt: Path) -> list[str]:
    r = khofs("log", str(mnt))
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def texts(lines: list[str], boot: int) -> list[str]:
    """The texts of one boot's lines, without the timestamps."""
    prefix = f"[boot {boot}] ["
    return [ln.split("] ", 2)[2] for ln in lines if ln.startswith(prefix)]


def test_reboot_is_a_cold_boot_in_the_same_mount(mount: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    producers = write_producers(tmp_path, ALPHA)
    mnt = mount("--producers", producers)
    dev = os.stat(mnt).st_dev
    assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0
    assert khofs("kexec", str(mnt)).returncode == 0
    assert os.listdir(mnt / "kho/in/sub_fdts") == ["alpha"]
    reboot(mnt)
    assert os.stat(mnt).st_dev == dev  # the same mount, the same daemon
    assert sorted(os.listdir(mnt / "kho")) == ["out"]  # no handover
    assert (mnt / OUT / "finalize").read_bytes() == b"0\n"
    assert not (mnt / OUT / "fdt").exists()
    assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0  # the producers stayed
    assert os.listdir(mnt / OUT / "sub_fdts") == ["alpha"]
    lines = log(mnt)
    assert texts(lines, 2)[-1] == "reboot: Restarting system"
    assert texts(lines, 3) == ["Kernel command line: kho=on"]
    assert [ln for ln in lines if ln.startswith("[boot 4]")] == []


def test_files_opened_in_the_old_kernel_read_eio(mnt: Path) -> None:
    assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0
    fds = [os.open(mnt / OUT / name, os.O_RDONLY) for name in ("finalize", "fdt", "scratch_len")]
    w = os.open(mnt / OUT / "finalize", os.O_WRONLY)
    try:
        reboot(mnt)
        for fd in fds:
            with pytest.raises(OSError) as e:
                os.read(fd, 4096)
            assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            os.write(w, b"0\n")
        assert e.value.errno == errno.EIO
        assert r_sh(f"cat {mnt}/{OUT}/finalize") == "0\n"  # the new kernel's file
    finally:
        for fd in [*fds, w]:
            os.close(fd)


def r_sh(script: str) -> str:
    r = sh(script)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_what_is_not_given_stays(mount: Callable[..., Path]) -> None:
    mnt = mount("--machine", "server-2s", "--cmdline", "kho=on reserve_mem=4M:2M:trace",
                "--seed", "9")
    scratch = (mnt / OUT / "scratch_len").read_bytes()
    assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0
    assert khofs("kexec", str(mnt), "--append", "quiet").returncode == 0
    reboot(mnt)
    assert (mnt / OUT / "scratch_len").read_bytes() == scratch  # server-2s, two nodes
    # the command line the machine booted cold with, not the one the kexec loaded
    assert texts(log(mnt), 3)[0] == "Kernel command line: kho=on reserve_mem=4M:2M:trace"


def test_options_change_what_boots(mount: Callable[..., Path], tmp_path: Path) -> None:
    producers = write_producers(tmp_path, ALPHA)
    mnt = mount("--cmdline", "kho=on kho_scratch=10%")
    reboot(mnt, "--producers", producers, "--cmdline", "kho=on quiet")
    assert texts(log(mnt), 2)[0] == "Kernel command line: kho=on quiet"
    assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0
    assert "alpha" in os.listdir(mnt / OUT / "sub_fdts")
    # another machine, its default command line; the producers stay, and '' drops them
    reboot(mnt, "--machine", "arm64-virt-64k", "--producers", "")
    assert texts(log(mnt), 3)[0] == "Kernel command line: kho=on"
    st = os.stat(mnt / OUT / "finalize")
    assert st.st_blksize == 65536 and os.statvfs(mnt).f_bsize == 65536  # its page size
    assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0
    assert os.listdir(mnt / OUT / "sub_fdts") == []


def test_abi_boots_another_kernel_version_and_stays(mount: Callable[..., Path]) -> None:
    """--abi: the next cold boot is that version; without it, the version stays."""
    mnt = mount()
    assert sorted(os.listdir(mnt / OUT)) == ["finalize", "scratch_len", "scratch_phys",
                                             "sub_fdts"]
    reboot(mnt, "--abi", "7.4")
    assert sorted(os.listdir(mnt / OUT)) == ["bootmem_len", "bootmem_phys", "fdt", "sub_fdts"]
    assert os.listdir(mnt / OUT / "sub_fdts") == ["kexec-metadata"]
    reboot(mnt)
    assert "finalize" not in os.listdir(mnt / OUT)
    reboot(mnt, "--abi", "6.16")
    assert "finalize" in os.listdir(mnt / OUT)
    r = khofs("reboot", str(mnt), "--abi", "5.10")
    assert (r.returncode, "finalize" in os.listdir(mnt / OUT)) == (2, True)


def test_plugins_load_anew_at_each_reboot(mount: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "count.py").write_text(COUNTER)
    mnt = mount("--plugin", f"{tmp_path}/count.py:count")
    assert khofs("kexec", str(mnt)).returncode == 0
    reboot(mnt)
    lines = log(mnt)
    said = [t for b in (1, 2, 3) for t in texts(lines, b) if t.startswith("count:")]
    # a kexec keeps the module (one machine); a reboot runs it anew, and api.boot is 1 again
    assert said == ["count: api.boot 1, boots this module saw: 1",
                    "count: api.boot 2, boots this module saw: 2",
                    "count: api.boot 1, boots this module saw: 1"]
    reboot(mnt, "--plugin", "")
    assert not any(t.startswith("count:") for t in texts(log(mnt), 4))


def test_seed_gives_the_bytes_of_a_new_mount(mount: Callable[..., Path],
                                             tmp_path: Path) -> None:
    producers = write_producers(tmp_path, '[[producer]]\nname = "kho_test"\nbuiltin = "kho_test"\n')
    fresh = mount("--producers", producers, "--seed", "4")
    used = mount("--producers", producers)
    assert khofs("kexec", str(used)).returncode == 0
    reboot(used, "--seed", "4")
    for mnt in (fresh, used):
        assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0
    assert (fresh / OUT / "sub_fdts/kho_test").read_bytes() == \
        (used / OUT / "sub_fdts/kho_test").read_bytes()


def test_kho_off_is_said_as_mount_says_it(mnt: Path) -> None:
    r = khofs("reboot", str(mnt), "--cmdline", "kho_scratch=50%")
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr == ("khofs: KHO is off on the kernel command line 'kho_scratch=50%', as a "
                        "kernel would boot it: no kho/ directory (add kho=on)\n")
    assert os.listdir(mnt) == []
    reboot(mnt, "--cmdline", "kho=on")
    assert os.listdir(mnt) == ["kho"]


@pytest.mark.parametrize("options, words", [
    (["--machine", "nowhere"], ["--machine nowhere", "unknown machine"]),
    (["--machine", "{tmp}/none.toml"], ["none.toml"]),
    (["--producers", "{tmp}/none.toml"], ["none.toml", "No such file"]),
    (["--producers", "{tmp}/bad.toml"], ["bad.toml"]),
    (["--plugin", "nomodule"], ["--plugin nomodule", "MODULE:FUNCTION"]),
    (["--plugin", "no_such_module_here:f"], ["no module named"]),
    (["--plugin", "{tmp}/count.py:nothing"], ["has no function 'nothing'"]),
    (["--seed", "-1"], ["--seed", "invalid seed"]),
    (["--seed", "x"], ["--seed"]),
    (["--bogus"], ["--bogus"]),
    ([], ["mountpoint"]),
])
def test_bad_input_changes_nothing(mnt: Path, tmp_path: Path, options: list[str],
                                   words: list[str]) -> None:
    (tmp_path / "bad.toml").write_text("[[producer]]\nname = 3\n")
    (tmp_path / "count.py").write_text(COUNTER)
    assert sh(f"echo 1 > {mnt}/{OUT}/finalize").returncode == 0
    before = log(mnt)
    args = [o.replace("{tmp}", str(tmp_path)) for o in options]
    one_line_error(khofs("reboot", *([str(mnt)] if options else []), *args), *words)
    assert (mnt / OUT / "finalize").read_bytes() == b"1\n"  # the same kernel runs on
    assert log(mnt) == before


def test_not_a_khofs_mount(tmp_path: Path) -> None:
    r = khofs("reboot", str(tmp_path))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"khofs: {tmp_path}: not a khofs mount\n"


def test_a_pending_handover_is_forgotten(mount: Callable[..., Path], tmp_path: Path) -> None:
    """kexec --load-only --to DIR hands over when the daemon stops; a cold restart forgets
    the loaded image, as a machine's reset does."""
    mnt = mount()
    to = tmp_path / "next"
    assert khofs("kexec", str(mnt), "--load-only", "--to", str(to)).returncode == 0
    reboot(mnt)
    r = khofs("umount", str(mnt))
    assert r.returncode == 0 and not is_mounted(mnt)
    assert not (to / "handover.json").exists()
