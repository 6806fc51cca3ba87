"""Machines through a mount and `khofs machine show`: the numbers a kernel would print."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import is_mounted, khofs, sh

pytestmark = pytest.mark.mount

SERVER_PHYS = "0x6b400000\n0x5cbb800000\n0x2e3d800000\n0x5b39e00000\n"
SERVER_LEN = "0xcc00000\n0x303800000\n0x181a00000\n0x181a00000\n"


def scratch(mnt: Path) -> tuple[str, str]:
    out = mnt / "kho/out"
    return sh(f"cat {out}/scratch_phys").stdout, sh(f"cat {out}/scratch_len").stdout


def test_server_2s_prints_four_scratch_lines(mount: Callable[..., Path]) -> None:
    mnt = mount("--machine", "server-2s")
    assert scratch(mnt) == (SERVER_PHYS, SERVER_LEN)  # lowmem, global, node 0, node 1


def test_arm64_64k_pages_align_to_the_512m_pageblock(mount: Callable[..., Path]) -> None:
    mnt = mount("--machine", "arm64-virt-64k")
    phys, size = scratch(mnt)
    assert (phys, size) == ("0xc0000000\n0x120000000\n0x100000000\n",
                            "0x20000000\n0x0\n0x20000000\n")
    for line in phys.split() + size.split():
        assert int(line, 16) % (512 << 20) == 0


def test_machine_file_mounts(mount: Callable[..., Path], tmp_path: Path) -> None:
    machine = tmp_path / "box.toml"
    machine.write_text('arch = "x86_64"\ncpus = 96\ninitrd_size = "64M"\ncmdline = "kho=on"\n'
                       '[[node]]\nsize = "192G"\n[[node]]\nsize = "192G"\n')
    mnt = mount("--machine", str(machine))
    assert scratch(mnt) == (SERVER_PHYS, SERVER_LEN)  # the same layout as server-2s


def test_bad_machine_file_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    machine = tmp_path / "bad.toml"
    machine.write_text('arch = "x86_64"\ncpus = 0\n[[node]]\nsize = "1G"\n')
    r = khofs("mount", str(tmp_path / "mnt"), "--machine", str(machine))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"khofs: {machine}:2: ") and "cpus" in r.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_scratch_that_cannot_fit_disables_kho(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = khofs("mount", str(mnt), "--cmdline", "kho=on kho_scratch=1T,1T,1T")
    try:
        assert r.returncode == 0
        assert "KHO was disabled during boot: a scratch area could not be allocated" in r.stderr
        assert os.listdir(mnt) == []
    finally:
        khofs("umount", str(mnt))


def test_machine_show_matches_the_mount(mount: Callable[..., Path]) -> None:
    mnt = mount("--machine", "server-2s")
    r = khofs("machine", "show", "server-2s")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert text.startswith("machine server-2s: x86-64, two NUMA nodes of 192 GiB, 96 CPUs\n")
    assert f"scratch_phys:\n{SERVER_PHYS}\nscratch_len:\n{SERVER_LEN}" in text
    for needle in ("memmap (struct pages), node 1", "per-cpu first chunk",
                   "memblock_reserved_kern_size before the scratch areas:",
                   "  lowmem = round_up(0x6600000 * 200 / 100) = 0xcc00000"):
        assert needle in text
    doc = json.loads(khofs("machine", "show", "server-2s", "--json").stdout)
    assert doc["scratch_phys"] == SERVER_PHYS and doc["scratch_len"] == SERVER_LEN
    assert [s["size"] for s in doc["scratch"]] == [int(x, 16) for x in SERVER_LEN.split()]
    k = doc["kern_reserved"]
    assert k["low"] == 0x6600000 and set(k["nodes"]) == {"0", "1"}
    assert scratch(mnt) == (SERVER_PHYS, SERVER_LEN)


def test_machine_show_with_cmdline_and_kho_off() -> None:
    r = khofs("machine", "show", "laptop", "--cmdline", "kho=on kho_scratch=1G,512M,256M")
    assert "  explicit sizes (kho_scratch=): lowmem 0x40000000, global 0x20000000, per node " \
           "0x10000000" in r.stdout
    assert "scratch_len:\n0x40000000\n0x20000000\n0x10000000\n" in r.stdout
    r = khofs("machine", "show", "qemu-vmtest", "--cmdline", "quiet")
    assert "KHO: off (kho=on is not on the command line)" in r.stdout
    assert "scratch_phys" not in r.stdout
