"""The eras on the command line: --abi, --next-abi, kexec --abi, machine show, khofs compat,
and what a kernel version cannot run refused in one line before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import is_mounted, khofs, one_line_error


def producers(tmp_path: Path, body: str) -> str:
    (tmp_path / "raw.bin").write_bytes(b"\x00\x01 not an FDT")
    (tmp_path / "a.dts").write_text('/dts-v1/; / { compatible = "a-v1"; };')
    path = tmp_path / "producers.toml"
    path.write_text(body)
    return str(path)


BLOB = '[[producer]]\nname = "raw"\nblob = "raw.bin"\n'
ABORT = '[[producer]]\nname = "a"\ndts = "a.dts"\nfail_abort = "EIO"\n'


@pytest.mark.mount  # `khofs mount` loads the FUSE backend before it boots anything
@pytest.mark.parametrize(("args", "words"), [
    (["mount", "{mnt}", "--abi", "5.10"],
     ["argument --abi: '5.10': 5.10 is outside the kernels khofs emulates (6.16 to 7.4)"]),
    (["mount", "{mnt}", "--abi", "7.9.1"], ["'7.9.1': 7.9 is outside"]),
    (["mount", "{mnt}", "--next-abi", "linux"], ["argument --next-abi: 'linux': a release "
                                                  "starts with MAJOR.MINOR"]),
    (["machine", "show", "--abi", "6.15"], ["6.15 is outside"]),
    (["kexec", "{mnt}", "--abi", "8.0"], ["argument --abi: '8.0'"]),
    (["compat", "6.16", "5.4"], ["'5.4': 5.4 is outside"]),
    (["mount", "{mnt}", "--abi", "6.19", "--producers", "{blob}"],
     ["producers.toml: producer 'raw': 'blob': a 6.19 kernel hands over FDTs only (non-FDT "
      "blobs came with 7.1)"]),
    (["mount", "{mnt}", "--abi", "7.1", "--next-abi", "6.18", "--producers", "{blob}"],
     ["producers.toml: producer 'raw': 'blob': a 6.18 kernel"]),
    (["mount", "{mnt}", "--abi", "6.19", "--producers", "{abort}"],
     ["producers.toml: producer 'a': 'fail_abort': a 6.19 kernel has no abort (writing 0 to "
      "finalize is EINVAL)"]),
    (["mount", "{mnt}", "--abi", "7.4", "--producers", "{abort}"],
     ["'fail_abort': a 7.4 kernel has no finalize and no abort"]),
    (["compat", "--producers", "{blob}"], ["'blob': a 6.16 kernel hands over FDTs only"]),
    (["mount", "{mnt}", "--abi", "7.1", "--boot-from", "{tmp}"],
     ["--abi and --boot-from: the next kernel's version is the one `khofs kexec` loaded"]),
])
def test_what_cannot_boot_is_one_line(tmp_path: Path, args: list[str],
                                      words: list[str]) -> None:
    (tmp_path / "mnt").mkdir()
    blob, abort = producers(tmp_path, BLOB), producers(tmp_path / "..", ABORT)
    argv = [a.format(mnt=tmp_path / "mnt", tmp=tmp_path, blob=blob, abort=abort) for a in args]
    one_line_error(khofs(*argv), *words)
    assert not is_mounted(tmp_path / "mnt")


def test_machine_show_names_the_kernel() -> None:
    r = khofs("machine", "show", "laptop", "--abi", "7.4", "--cmdline",
              "kho=on kho_bootmem=1G,512M,256M")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[2] == "kernel: 7.4.0 (KHO ABI era 7.4)"
    assert "  explicit sizes (kho_bootmem=): lowmem 0x40000000, global 0x20000000, per node " \
           "0x10000000" in lines
    assert "bootmem_len:\n0x40000000\n0x20000000\n0x10000000\n" in r.stdout
    doc = json.loads(khofs("machine", "show", "--abi", "7.2.1-rc3", "--json").stdout)
    assert doc["kernel"] == {"release": "7.2.1-rc3", "era": "7.1", "debug": False}
    assert "scratch_phys" in doc
    r = khofs("machine", "show", "laptop")
    assert r.stdout.splitlines()[2] == "kernel: 6.16.0 (KHO ABI era 6.16)"


def test_compat_prints_the_matrix_then_a_reason_per_cell() -> None:
    r = khofs("compat")
    assert r.returncode == 0 and r.stderr == "", r
    lines = r.stdout.splitlines()
    assert lines[:6] == [
        r"FROM \ TO  6.16       6.18       6.19       7.1        7.4",
        "6.16       restored   corrupted  corrupted  no-kho     no-kho",
        "6.18       corrupted  restored   restored   no-kho     no-kho",
        "6.19       corrupted  restored   restored   no-kho     no-kho",
        "7.1        no-kho     no-kho     no-kho     restored   no-kho",
        "7.4        no-kho     no-kho     no-kho     no-kho     restored"]
    assert lines[6] == "" and len(lines) == 7 + 25
    assert lines[7] == "6.16 -> 6.16: restored: test_kho restored; reserve_mem 'compat' revived"
    assert lines[-1] == "7.4 -> 7.4: restored: test_kho restored; reserve_mem 'compat' revived"


def test_compat_with_releases_and_json() -> None:
    r = khofs("compat", "7.1", "7.2.0", "7.4", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["eras"] == ["7.1", "7.2.0", "7.4"]
    cells = {(c["from"], c["to"]): c["outcome"] for c in doc["cells"]}
    assert cells == {("7.1", "7.1"): "restored", ("7.1", "7.2.0"): "no-kho",
                     ("7.1", "7.4"): "no-kho", ("7.2.0", "7.1"): "no-kho",
                     ("7.2.0", "7.2.0"): "restored", ("7.2.0", "7.4"): "restored",
                     ("7.4", "7.1"): "no-kho", ("7.4", "7.2.0"): "restored",
                     ("7.4", "7.4"): "restored"}


def test_compat_with_a_blob_producer_among_7_x(tmp_path: Path) -> None:
    r = khofs("compat", "7.1", "7.4", "--producers", producers(tmp_path, BLOB))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:3] == ["7.1        restored   no-kho",
                                          "7.4        no-kho     restored"]
    assert "7.1 -> 7.1: restored: raw came back as handed over" in r.stdout
