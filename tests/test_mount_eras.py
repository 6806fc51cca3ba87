"""The eras through a real mount, with real tools: the tree and files each version shows,
`echo > finalize` where it exists, fdtdump and dtc on the root FDT, and kexec across versions
chosen by the image's version string, by `khofs kexec --abi`, and through --to/--boot-from."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from tests.helpers import KHOFS, Mounter, khofs, sh

pytestmark = pytest.mark.mount

PRODUCERS = '[[producer]]\nbuiltin = "kho_test"\n'
CMDLINE = "kho=on reserve_mem=64M:4096:n1"
LINE = re.compile(r"\[boot (\d+)\] \[ *\d+\.\d{6}\] (.*)")


@pytest.fixture
def producers(tmp_path: Path) -> str:
    path = tmp_path / "producers.toml"
    path.write_text(PRODUCERS)
    return str(path)


def boot_texts(mnt: Path, boot: int) -> list[str]:
    r = khofs("log", str(mnt))
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        m = LINE.fullmatch(line)
        assert m, line
        if int(m.group(1)) == boot:
            out.append(m.group(2))
    return out


def ls(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def bzimage(path: Path, release: str) -> str:
    """A stand-in bzImage naming `release` in its setup header (kernel_version)."""
    head = bytearray(16 * 0x200)
    head[0x1F1] = 15
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<HH", head, 0x206, 0x20F, 0)
    struct.pack_into("<H", head, 0x20E, 0x1C00)
    text = f"{release} (builder@host) #1 SMP PREEMPT_DYNAMIC".encode() + b"\0"
    head[0x1E00:0x1E00 + len(text)] = text
    struct.pack_into("<I", head, 0x260, 32 << 20)  # init_size
    path.write_bytes(head)
    return str(path)


def test_6_18_finalizes_and_kexecs_into_the_6_16_its_image_names(
        mount: Mounter, producers: str, tmp_path: Path) -> None:
    mnt = mount("--abi", "6.18", "--producers", producers, "--cmdline", CMDLINE)
    out = mnt / "kho/out"
    assert ls(out) == ["finalize", "scratch_len", "scratch_phys", "sub_fdts"]
    r = sh(f"echo 1 > {out}/finalize && cat {out}/finalize && fdtdump {out}/fdt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1\n")
    assert 'compatible = "kho-v1";' in r.stdout
    assert "    kho_test {" in r.stdout and "    memblock {" in r.stdout
    r = khofs("kexec", str(mnt), "--image", bzimage(tmp_path / "vmlinuz", "6.16.3-arch1-1"))
    assert (r.returncode, r.stderr) == (0, "")
    texts = boot_texts(mnt, 2)
    assert "KHO: found kexec handover data. Will skip init for some devices" in texts
    assert "Revived memory reservation 'n1' from KHO" in texts
    assert "khofs: producer kho_test: init failed: -22" in texts  # 6.17's test_kho
    assert ls(mnt / "kho/in/sub_fdts") == ["kho_test", "memblock"]
    r = khofs("kexec", str(mnt), "--image", bzimage(tmp_path / "old", "5.10.0-28-amd64"))
    assert (r.returncode, r.stderr) == (1, "khofs: kexec_file_load failed: Invalid argument "
                                           "(the image is Linux 5.10.0-28-amd64; khofs "
                                           "emulates 6.16 to 7.4)\n")
    assert boot_texts(mnt, 2)[-1] == ("khofs: kexec: the image is Linux 5.10.0-28-amd64; "
                                      "khofs emulates 6.16 to 7.4")


def test_6_19_serves_the_root_fdt_from_boot_frozen_at_152_bytes(
        mount: Mounter, producers: str) -> None:
    mnt = mount("--abi", "6.19", "--producers", producers, "--cmdline", CMDLINE)
    out = mnt / "kho/out"
    assert ls(out) == ["fdt", "finalize", "scratch_len", "scratch_phys", "sub_fdts"]
    assert ls(out / "sub_fdts") == ["kho_test", "memblock"]
    fdt = (out / "fdt").read_bytes()
    assert len(fdt) == 152 and struct.unpack(">I", fdt[4:8])[0] == 228
    r = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(out / "fdt")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert "FATAL ERROR: EOF before reading 228 bytes of DT blob" in r.stderr
    r = sh(f"echo 0 > {out}/finalize", shell="bash")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    r = sh(f"echo 1 > {out}/finalize && echo 1 > {out}/finalize && cat {out}/finalize")
    assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr
    r = khofs("kexec", str(mnt))
    assert (r.returncode, r.stderr) == (0, "")
    texts = boot_texts(mnt, 2)
    assert "KHO: found kexec handover data." in texts
    assert "test_kho: KHO restore succeeded" in texts
    assert ls(mnt / "kho/out") == ["finalize", "scratch_len", "scratch_phys", "sub_fdts"]
    assert ls(mnt / "kho/out/sub_fdts") == ["memblock"]  # test_kho restored, saves nothing


def test_7_1_has_no_finalize_and_kexec_metadata_crosses_a_process(
        mount: Mounter, producers: str, tmp_path: Path) -> None:
    mnt = mount("--abi", "7.1", "--producers", producers, "--cmdline", CMDLINE)
    out = mnt / "kho/out"
    assert ls(out) == ["fdt", "scratch_len", "scratch_phys", "sub_fdts"]
    assert ls(out / "sub_fdts") == ["kexec-metadata", "kho_test", "memblock"]
    md = (out / "sub_fdts/kexec-metadata").read_bytes()
    assert md == struct.pack("<I65sI", 1, b"7.1.0", 1)
    r = sh(f"echo 1 > {out}/finalize", shell="bash")
    assert r.returncode == 1 and "Permission denied" in r.stderr  # no such file to create
    fdt = (out / "fdt").read_bytes()  # its size at kho_init, before test_kho and memblock
    assert len(fdt) == 233 and struct.unpack(">I", fdt[4:8])[0] == 353
    handover = tmp_path / "handover"
    r = khofs("kexec", str(mnt), "--to", str(handover))
    assert (r.returncode, r.stderr) == (0, "")
    assert "7.1.0" in (handover / "handover.json").read_text()
    mnt2 = mount("--boot-from", str(handover), "--producers", producers,
                 parent=tmp_path)
    texts = boot_texts(mnt2, 2)
    assert "KHO: exec from: 7.1.0 (count 1)" in texts
    assert "test_kho: KHO restore succeeded" in texts
    assert ls(mnt2 / "kho/in/sub_fdts") == ["kexec-metadata", "kho_test", "memblock"]
    r = subprocess.run(["fdtdump", str(mnt2 / "kho/in/fdt")], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and 'compatible = "kho-v3";' in r.stdout
    nodes = re.findall(r"^    (\S+) \{$", r.stdout, re.M)
    assert nodes == ["memblock", "kho_test", "kexec-metadata"]
    assert r.stdout.index("blob-size") < r.stdout.index("preserved-data")
    assert (mnt2 / "kho/out/sub_fdts/kexec-metadata").read_bytes() == \
        struct.pack("<I65sI", 1, b"7.1.0", 2)
    r = khofs("kexec", str(mnt2), "--abi", "7.4")
    assert (r.returncode, r.stderr) == (0, "")
    texts = boot_texts(mnt2, 3)
    assert any(t.endswith("is incompatible with 'kho-v4': 1") for t in texts)
    assert "KHO: disabling KHO revival" in texts
    assert ls(mnt2 / "kho") == ["out"]
    assert ls(mnt2 / "kho/out") == ["bootmem_len", "bootmem_phys", "fdt", "sub_fdts"]


def test_next_abi_boots_every_kexec_into_that_version(mount: Mounter, producers: str) -> None:
    mnt = mount("--abi", "7.2.0", "--next-abi", "7.4", "--producers", producers,
                "--cmdline", CMDLINE)
    r = khofs("kexec", str(mnt))
    assert (r.returncode, r.stderr) == (0, "")
    texts = boot_texts(mnt, 2)
    assert "KHO: exec from: 7.2.0 (count 1)" in texts
    assert "test_kho: KHO restore succeeded" in texts
    assert ls(mnt / "kho/out")[:2] == ["bootmem_len", "bootmem_phys"]


def test_khofs_run_kexecs_into_the_version_its_image_names(tmp_path: Path) -> None:
    """A kexec_file_load inside `khofs run` reads the image's setup header too: a 7.1
    kernel refuses the 6.18 handover and shows its own tree. The image passes the probes
    of the kernel and of the system's kexec (boot flag, protocol, load flags)."""
    image = bzimage(tmp_path / "bzImage", "7.1.0-rc2")
    with open(image, "r+b") as f:
        head = bytearray(f.read())
        struct.pack_into("<H", head, 0x1FE, 0xAA55)
        head[0x211] = 0x01  # LOADED_HIGH
        struct.pack_into("<HI", head, 0x236, 0x3, 2047)  # xloadflags, cmdline_size
        f.seek(0)
        f.write(head)
    booted = tmp_path / "booted"  # on disk: it outlives the kexec
    script = (f"if [ -e {booted} ]; then "
              "ls /sys/kernel/debug/kho/out /sys/kernel/debug/kho/out/sub_fdts; exit; fi; "
              f"touch {booted} && echo 1 > /sys/kernel/debug/kho/out/finalize && "
              f"kexec -s -l {image} --reuse-cmdline && kexec -e")
    r = subprocess.run([*KHOFS, "run", "--abi", "6.18", "--boots", "2", "--", "sh", "-c",
                        script], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("/sys/kernel/debug/kho/out:\nfdt\nscratch_len\nscratch_phys\nsub_fdts\n"
                        "\n/sys/kernel/debug/kho/out/sub_fdts:\nkexec-metadata\n")
