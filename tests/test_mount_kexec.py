"""Through a real mount: `khofs kexec` (in the same daemon and into another one through
--to/--boot-from), what the next kernel shows in kho/in, and `khofs log` across boots."""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import ALPHA_AND_BETA, Mounter, is_mounted, khofs, sh, write_producers

pytestmark = pytest.mark.mount

FOUND = "KHO: found kexec handover data. Will skip init for some devices"
LINE = re.compile(r"\[boot (\d+)\] \[ *\d+\.\d{6}\] (.*)")
EADDRNOTAVAIL_LINE = "khofs: kexec_file_load failed: Cannot assign requested address\n"


@pytest.fixture
def producers(tmp_path: Path) -> str:
    """alpha (a DTS with a preserved range) and beta (the same tree compiled by dtc)."""
    return write_producers(tmp_path, ALPHA_AND_BETA)


def finalize(mnt: Path) -> None:
    r = sh(f"echo 1 > {mnt}/kho/out/finalize")
    assert r.returncode == 0, r.stderr


def blobs(mnt: Path, side: str) -> dict[str, bytes]:
    """kho/<side>/fdt and every kho/<side>/sub_fdts/NAME, by name."""
    d = mnt / "kho" / side
    out = {"fdt": (d / "fdt").read_bytes()}
    for name in os.listdir(d / "sub_fdts"):
        out[f"sub_fdts/{name}"] = (d / "sub_fdts" / name).read_bytes()
    return out


def scratch(mnt: Path) -> tuple[bytes, bytes]:
    out = mnt / "kho/out"
    return (out / "scratch_phys").read_bytes(), (out / "scratch_len").read_bytes()


def kexec(mnt: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return khofs("kexec", str(mnt), *options)


def ok(result: subprocess.CompletedProcess[str]) -> None:
    """Success prints nothing, as kexec -e does."""
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result


def log_lines(mnt: Path) -> list[tuple[int, str]]:
    r = khofs("log", str(mnt))
    assert r.returncode == 0 and r.stderr == "", r
    lines = []
    for line in r.stdout.splitlines():
        m = LINE.fullmatch(line)
        assert m, line
        lines.append((int(m.group(1)), m.group(2)))
    return lines


def boot_texts(mnt: Path, boot: int) -> list[str]:
    return [text for b, text in log_lines(mnt) if b == boot]


def assert_fresh_out(mnt: Path) -> None:
    """A new kernel's kho/out: not finalized, no root FDT, no sub-trees yet."""
    assert (mnt / "kho/out/finalize").read_bytes() == b"0\n"
    assert os.listdir(mnt / "kho/out/sub_fdts") == []
    assert not (mnt / "kho/out/fdt").exists()


def dts_of(path: Path) -> str:
    r = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(path)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def daemons(mnt: Path) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"khofs mount {mnt}( |$)"], capture_output=True,
                          text=True, check=False).stdout.split()


def test_admin_guide_flow(mount: Mounter, producers: str, tmp_path: Path) -> None:
    mnt = mount("--producers", producers)
    before_scratch = scratch(mnt)
    finalize(mnt)
    out = blobs(mnt, "out")
    assert sorted(out) == ["fdt", "sub_fdts/alpha", "sub_fdts/beta"]
    saved = tmp_path / "saved"
    saved.mkdir()
    for name, data in out.items():
        (saved / name.replace("/", "_")).write_bytes(data)
    ok(kexec(mnt))
    assert sorted(os.listdir(mnt / "kho")) == ["in", "out"]
    assert blobs(mnt, "in") == out  # byte for byte what kho/out served before the kexec
    for name in out:
        incoming = dts_of(mnt / "kho/in" / name)
        assert incoming == dts_of(saved / name.replace("/", "_"))
    assert 'compatible = "kho-v1";' in dts_of(mnt / "kho/in/fdt")
    assert 'compatible = "alpha-v1";' in dts_of(mnt / "kho/in/sub_fdts/alpha")
    assert scratch(mnt) == before_scratch  # the next kernel reuses the old scratch areas
    assert_fresh_out(mnt)
    assert (mnt / "kho/in/fdt").stat().st_mode & 0o777 == 0o400
    assert boot_texts(mnt, 2)[-1] == FOUND


def test_three_chained_kexecs_and_the_log(mount: Mounter, producers: str) -> None:
    mnt = mount("--producers", producers)
    first_scratch = scratch(mnt)
    for boot in (1, 2, 3):
        finalize(mnt)
        out = blobs(mnt, "out")
        ok(kexec(mnt))
        assert blobs(mnt, "in") == out, f"kexec from boot {boot}"
        assert_fresh_out(mnt)
        assert scratch(mnt) == first_scratch
    lines = log_lines(mnt)
    assert sorted({b for b, _ in lines}) == [1, 2, 3, 4]
    for boot in (1, 2, 3, 4):
        texts = [t for b, t in lines if b == boot]
        assert texts[0] == "Kernel command line: kho=on"
        assert (FOUND in texts) == (boot > 1)
        assert (texts[-1] == "kexec_core: Starting new kernel") == (boot < 4)
    # the daemon's log file gets the same lines, boot numbers and all
    logged = mount.logs[mnt].read_text().splitlines()
    assert [ln for ln in logged if LINE.fullmatch(ln)] == khofs("log", str(mnt)).stdout.splitlines()


def test_kexec_without_finalize(mount: Mounter) -> None:
    """6.16 hands over the root FDT page even when not finalized; in a first boot that page
    is not an FDT yet, so the next kernel refuses the handover and has no kho/in."""
    mnt = mount()
    ok(kexec(mnt))
    texts = boot_texts(mnt, 2)
    invalid = [t for t in texts if t.startswith("KHO: setup:")]
    assert len(invalid) == 1
    assert re.fullmatch(r"KHO: setup: handover FDT \(0x[0-9a-f]+\) is invalid: -9", invalid[0])
    assert texts[texts.index(invalid[0]) + 1] == "KHO: disabling KHO revival: -22"
    assert FOUND not in texts
    assert os.listdir(mnt / "kho") == ["out"]
    assert_fresh_out(mnt)


def bzimage(path: Path, init_size: int) -> Path:
    """A stand-in bzImage: 'HdrS' at 0x202 and the setup header's init_size at 0x260."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    data[0x260:0x264] = struct.pack("<I", init_size)
    path.write_bytes(data)
    return path


def test_image_too_big_for_the_scratch_areas(mount: Mounter, tmp_path: Path) -> None:
    mnt = mount()
    big = tmp_path / "vmlinuz"
    with big.open("wb") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB of nothing, bigger than every scratch area
    r = kexec(mnt, "--image", str(big))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", EADDRNOTAVAIL_LINE)
    # a bzImage is sized by its init_size, however small the file
    r = kexec(mnt, "--image", str(bzimage(tmp_path / "bz", 1 << 30)), "--load-only")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", EADDRNOTAVAIL_LINE)
    # nothing changed: still boot 1, still mounted, nothing loaded
    assert is_mounted(mnt)
    assert {b for b, _ in log_lines(mnt)} == {1}
    r = kexec(mnt, "--exec-only")
    assert (r.returncode, r.stderr) == (1, "khofs: Nothing has been loaded!\n")
    finalize(mnt)
    assert (mnt / "kho/out/finalize").read_bytes() == b"1\n"


def test_load_only_then_exec_only(mount: Mounter, tmp_path: Path) -> None:
    mnt = mount()
    r = kexec(mnt, "--exec-only")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "khofs: Nothing has been loaded!\n")
    ok(kexec(mnt, "--load-only", "--append", "foo=1",
             "--image", str(bzimage(tmp_path / "bz", 16 << 20))))
    assert os.listdir(mnt / "kho") == ["out"]  # loaded, not executed: still boot 1
    assert "kexec_core: Starting new kernel" not in boot_texts(mnt, 1)
    finalize(mnt)
    out = blobs(mnt, "out")
    ok(kexec(mnt, "--exec-only"))
    assert boot_texts(mnt, 2)[0] == "Kernel command line: kho=on foo=1"
    assert blobs(mnt, "in") == out
    # a kexec consumed the image; --command-line replaces the line whole
    assert kexec(mnt, "--exec-only").returncode == 1
    ok(kexec(mnt, "--command-line", "kho=on kho_scratch=50%"))
    assert "Kernel command line: kho=on kho_scratch=50%" in boot_texts(mnt, 3)


def test_kexec_to_kho_off(mount: Mounter) -> None:
    """The next kernel boots with KHO off: no kho/ directory at all."""
    mnt = mount()
    ok(kexec(mnt, "--command-line", "quiet"))
    assert os.listdir(mnt) == []
    assert boot_texts(mnt, 2)[0] == "Kernel command line: quiet"


def test_fuse_calls_never_see_a_half_switched_kernel(mount: Mounter, producers: str) -> None:
    """A reader racing kexecs sees the scratch table (the same in every kernel) or, for a
    file it opened in a kernel that is gone, EIO; never a missing name."""
    mnt = mount("--producers", producers)
    want = (mnt / "kho/out/scratch_phys").read_bytes()
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                os.stat(mnt / "kho/out/finalize")
                if (mnt / "kho/out/scratch_phys").read_bytes() != want:
                    problems.append("different contents")
                reads[0] += 1
            except OSError as e:
                if e.errno != errno.EIO:
                    problems.append(os.strerror(e.errno or 0))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            finalize(mnt)
            ok(kexec(mnt))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == [] and reads[0] > 0
    assert {b for b, _ in log_lines(mnt)} == {1, 2, 3, 4, 5, 6}


# --- into another process ---------------------------------------------------------------

def test_a_daemon_stopped_after_a_load_hands_over(mount: Mounter, producers: str,
                                                 tmp_path: Path) -> None:
    """kexec -l with --to, then the daemon stops (umount, SIGTERM): the loaded image goes to
    DIR, and `--boot-from DIR` boots it."""
    first = mount("--producers", producers)
    finalize(first)
    out = blobs(first, "out")
    handover = tmp_path / "handover"
    ok(kexec(first, "--load-only", "--to", str(handover)))
    assert is_mounted(first) and not handover.joinpath("handover.json").exists()
    assert khofs("umount", str(first)).returncode == 0
    assert sorted(os.listdir(handover)) == ["handover.json", "machine.json", "ram.img"]
    assert "khofs: stopped with a loaded image: handed over to" in \
        mount.logs[first].read_text()
    second = mount("--boot-from", str(handover), "--producers", producers)
    assert blobs(second, "in") == out
    assert FOUND in [t for b, t in log_lines(second) if b == 2]


def test_a_later_load_without_to_keeps_the_image_here(mount: Mounter, producers: str,
                                                      tmp_path: Path) -> None:
    first = mount("--producers", producers)
    handover = tmp_path / "handover"
    ok(kexec(first, "--load-only", "--to", str(handover)))
    ok(kexec(first, "--load-only"))
    assert khofs("umount", str(first)).returncode == 0
    assert not handover.joinpath("handover.json").exists()


def test_kexec_between_two_daemons(mount: Mounter, producers: str, tmp_path: Path) -> None:
    first = mount("--producers", producers)
    assert len(daemons(first)) == 1
    first_scratch = scratch(first)
    finalize(first)
    out = blobs(first, "out")
    handover = tmp_path / "handover"
    ok(kexec(first, "--to", str(handover)))
    # like a machine that kexec'd away: its daemon is gone and the mount with it
    assert not is_mounted(first)
    assert daemons(first) == []
    assert sorted(os.listdir(handover)) == ["handover.json", "machine.json", "ram.img"]
    assert "khofs: handed over to" in mount.logs[first].read_text()
    second = mount("--boot-from", str(handover), "--producers", producers)
    assert blobs(second, "in") == out
    assert scratch(second) == first_scratch
    assert_fresh_out(second)
    lines = log_lines(second)
    assert [t for b, t in lines if b == 1][-1] == "kexec_core: Starting new kernel"
    assert FOUND in [t for b, t in lines if b == 2]
    # and on: a same-daemon kexec from the second, then back into a third process
    finalize(second)
    out2 = blobs(second, "out")
    ok(kexec(second))
    assert blobs(second, "in") == out2
    finalize(second)
    out3 = blobs(second, "out")
    ok(kexec(second, "--to", str(handover)))
    third = mount("--boot-from", str(handover))  # no producers this time
    assert blobs(third, "in") == out3
    assert {b for b, _ in log_lines(third)} == {1, 2, 3, 4}


def test_kexec_to_a_directory_it_cannot_use(mount: Mounter, tmp_path: Path) -> None:
    """Refused before the kernel goes: the machine stays, the image stays loaded."""
    mnt = mount()
    r = kexec(mnt, "--to", str(mnt / "kho"))
    assert (r.returncode, r.stderr) == (1, f"khofs: {mnt / 'kho'}: inside the mount point it "
                                           "would hand over from\n")
    (tmp_path / "file").write_text("")
    r = kexec(mnt, "--exec-only", "--to", str(tmp_path / "file"))
    assert (r.returncode, r.stderr) == (1, f"khofs: {tmp_path / 'file'}: File exists\n")
    assert is_mounted(mnt)
    assert {b for b, _ in log_lines(mnt)} == {1}
    ok(kexec(mnt, "--exec-only"))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs: room for machine.json, not for the RAM image."""
    path = tmp_path / "full"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "khofs-test", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_full_disk_leaves_no_handover(mount: Mounter, producers: str, small_fs: Path) -> None:
    mnt = mount("--producers", producers)
    finalize(mnt)
    out = blobs(mnt, "out")
    r = kexec(mnt, "--to", str(small_fs / "dir"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "ram.img: No space left on device" in r.stderr
    assert sorted(os.listdir(small_fs / "dir")) == ["machine.json"]  # no temporary left
    # the RAM never left: the next kernel booted in this daemon instead
    assert is_mounted(mnt)
    assert blobs(mnt, "in") == out
    never = mnt.parent / "never"
    never.mkdir()
    bad = khofs("mount", str(never), "--boot-from", str(small_fs / "dir"))
    assert bad.returncode == 2 and "handover.json: no handover here" in bad.stderr
    assert not is_mounted(never)


# --- --boot-from refusing what it cannot boot -------------------------------------------

@pytest.fixture(scope="module")
def good_handover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A handover directory from a real `khofs kexec --to` (one daemon, gone after)."""
    base = tmp_path_factory.mktemp("handover")
    mounter = Mounter(base)
    try:
        mnt = mounter()
        finalize(mnt)
        ok(kexec(mnt, "--to", str(base / "dir")))
        yield base / "dir"
    finally:
        mounter.cleanup()


def _truncate_ram(d: Path) -> None:
    with (d / "ram.img").open("r+b") as f:
        f.truncate(os.path.getsize(d / "ram.img") // 2)


def _flip_ram_byte(d: Path) -> None:
    data = bytearray((d / "ram.img").read_bytes())
    data[100] ^= 0xFF
    (d / "ram.img").write_bytes(data)


def _edit_machine(d: Path) -> None:
    text = (d / "machine.json").read_text()
    (d / "machine.json").write_text(text.replace('"cpus": 8', '"cpus": 9'))


def _make_file(d: Path) -> None:
    shutil.rmtree(d)
    d.write_text("")


DAMAGE: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("no handover", lambda d: (d / "handover.json").unlink(), ["handover.json", "no handover"]),
    ("no ram", lambda d: (d / "ram.img").unlink(), ["ram.img", "No such file"]),
    ("no machine", lambda d: (d / "machine.json").unlink(), ["machine.json", "No such file"]),
    ("partial ram", _truncate_ram, ["ram.img", "partial"]),
    ("corrupt ram", _flip_ram_byte, ["ram.img", "SHA-256"]),
    ("edited machine", _edit_machine, ["machine.json"]),
    ("garbage handover", lambda d: (d / "handover.json").write_text("{oops"),
     ["handover.json", "not a khofs handover"]),
    ("empty handover", lambda d: (d / "handover.json").write_text("{}"),
     ["handover.json", "not a khofs handover"]),
    ("a file", _make_file, ["handover.json", "Not a directory"]),
]


@pytest.mark.parametrize("what, damage, words", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_boot_from_refuses_a_bad_directory(good_handover: Path, tmp_path: Path, what: str,
                                            damage: Callable[[Path], None],
                                            words: list[str]) -> None:
    d = tmp_path / "dir"
    shutil.copytree(good_handover, d)
    damage(d)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = khofs("mount", str(mnt), "--boot-from", str(d))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("khofs: ") and "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert not is_mounted(mnt)


@pytest.mark.parametrize("options, words", [
    (["--machine", "qemu-vmtest"], ["--machine qemu-vmtest", "not the machine", "nodes"]),
    (["--cmdline", "kho=on"], ["--cmdline", "--boot-from"]),
    (["--seed", "7"], ["--seed 7", "seed 0"]),
])
def test_boot_from_refuses_conflicting_options(good_handover: Path, tmp_path: Path,
                                               options: list[str], words: list[str]) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = khofs("mount", str(mnt), "--boot-from", str(good_handover), *options)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    for w in words:
        assert w in r.stderr, r.stderr
    assert not is_mounted(mnt)


def test_boot_from_with_the_same_machine(good_handover: Path, mount: Mounter) -> None:
    mnt = mount("--boot-from", str(good_handover), "--machine", "laptop", "--seed", "0")
    assert os.listdir(mnt / "kho/in/sub_fdts") == []
    assert {b for b, _ in log_lines(mnt)} == {1, 2}


PLUGIN = '''
def plug(api):
    blob = api.retrieve_subtree("plug")
    api.log(f"plug: boot {api.boot}: incoming {'yes' if blob else 'no'}")
    api.on_finalize(lambda: api.add_subtree("plug", api.make_fdt("khofs,plug-v1")))
'''


def test_plugins_boot_with_every_kernel(mount: Mounter, tmp_path: Path) -> None:
    (tmp_path / "plug.py").write_text(PLUGIN)
    mnt = mount("--plugin", f"{tmp_path / 'plug.py'}:plug")
    finalize(mnt)
    out = blobs(mnt, "out")
    assert sorted(out) == ["fdt", "sub_fdts/plug"]
    ok(kexec(mnt))
    assert blobs(mnt, "in") == out
    texts = [t for _, t in log_lines(mnt)]
    assert "plug: boot 1: incoming no" in texts and "plug: boot 2: incoming yes" in texts


def test_bad_plugin_is_a_startup_error(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = khofs("mount", str(mnt), "--plugin", "no_such_module_here:f")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("khofs: --plugin no_such_module_here:f")
    assert not is_mounted(mnt)
