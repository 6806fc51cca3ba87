"""`khofs run`: tools that hard-code /sys/kernel/debug and call kexec, run unmodified."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.other_user import as_nobody, nobody_env

EXAMPLES = Path(__file__).parent.parent / "examples" / "scripts"
KHOFS = [sys.executable, "-m", "khofs"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
DTS = '/dts-v1/;\n/ {\n\tcompatible = "mydrv-v1";\n\tstate = <42>;\n};\n'


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory everyone may read (the ordinary-user runs need it): an x86 bzImage
    header (HdrS, init_size 40 MiB) and a producers file."""
    d = Path(tempfile.mkdtemp(prefix="khofs-run-test-"))
    os.chmod(d, 0o755)
    image = bytearray(64 * 1024)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<I", image, 0x260, 40 << 20)
    (d / "bzImage").write_bytes(bytes(image))
    (d / "mydrv.dts").write_text(DTS)
    (d / "producers.toml").write_text('[[producer]]\nname = "mydrv"\ndts = "mydrv.dts"\n'
                                      'preserve = ["0x100000000+2M"]\n')
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(*args: str, user: list[str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # another user runs a world-readable copy of khofs: this checkout may be out of its reach
    argv = as_nobody("run", *args) if user else [*KHOFS, "run", *args]
    env = nobody_env(HOME="/tmp") if user else dict(os.environ, HOME="/tmp")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd, env=env)


def nothing_left() -> None:
    """No mount and no daemon of any `khofs run` (their mount points are khofs-run-*)."""
    with open("/proc/mounts") as f:
        assert not [ln for ln in f if "khofs-run-" in ln]
    found = subprocess.run(["pgrep", "-f", "khofs mount .*khofs-run-"], capture_output=True,
                           text=True, check=False).stdout.split()
    assert found == [], found


# As with kexec-tools, the next kernel gets an empty command line (so KHO off) unless the
# current one is reused or a line is given.
FLOW = ("echo 1 > /sys/kernel/debug/kho/out/finalize && kexec -s -l {image} --reuse-cmdline && "
        "kexec -e && "
        "cat /sys/kernel/debug/kho/in/sub_fdts/mydrv > {out}/in.dtb && "
        "ls /sys/kernel/debug/kho/in /sys/kernel/debug/kho/in/sub_fdts && "
        "cat /sys/kernel/debug/kho/out/finalize")


def check_flow(world: Path, user: list[str] | None) -> None:
    out = world / "out"
    out.mkdir(mode=0o777)
    os.chmod(out, 0o777)
    r = run("--producers", str(world / "producers.toml"), "--", "sh", "-c",
            FLOW.format(image=world / "bzImage", out=out), user=user)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/sys/kernel/debug/kho/in:\nfdt\nsub_fdts\n\n" \
                       "/sys/kernel/debug/kho/in/sub_fdts:\nmydrv\n0\n"
    dtc = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(out / "in.dtb")],
                         capture_output=True, text=True, check=True)
    assert 'compatible = "mydrv-v1";' in dtc.stdout and "state = <0x2a>;" in dtc.stdout
    nothing_left()


def test_flow_as_root(world: Path) -> None:
    check_flow(world, None)


def test_without_reuse_cmdline_the_next_kernel_has_kho_off(world: Path) -> None:
    r = run("--", "sh", "-c", f"echo 1 > /sys/kernel/debug/kho/out/finalize && "
            f"kexec -s -l {world / 'bzImage'} && kexec -e && ls /sys/kernel/debug")
    assert (r.returncode, r.stdout) == (0, "")


def test_flow_as_an_ordinary_user(world: Path) -> None:
    """A user namespace with FUSE inside it. Debian's udev makes /dev/fuse 0666; this
    machine's is 0600, so open it for the test the way udev would."""
    mode = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    try:
        check_flow(world, NOBODY)
    finally:
        os.chmod("/dev/fuse", mode)


def test_exit_status_passes_through(world: Path) -> None:
    assert run("--", "sh", "-c", "exit 7").returncode == 7
    r = run("--", "sh", "-c", "kill -9 $$")
    assert r.returncode == 128 + signal.SIGKILL
    nothing_left()
    r = run("--", str(world / "no-such-command"))
    assert r.returncode == 127 and "No such file or directory" in r.stderr


def test_start_up_errors_are_one_line_exit_2() -> None:
    r = run("--machine", "mainframe", "--", "true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "mainframe" in r.stderr
    r = run()
    assert r.returncode == 2 and "no COMMAND given" in r.stderr
    nothing_left()


def test_killing_khofs_run_leaves_no_daemon(world: Path) -> None:
    proc = subprocess.Popen([*KHOFS, "run", "--", "sleep", "60"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not subprocess.run(
                ["pgrep", "-f", "khofs mount .*khofs-run-"], capture_output=True,
                check=False).stdout:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(
                ["pgrep", "-f", "khofs mount .*khofs-run-"], capture_output=True,
                check=False).stdout:
            time.sleep(0.05)
    finally:
        subprocess.run(["pkill", "-f", "sleep 60"], check=False)
    nothing_left()


def test_kexec_tools_messages_and_statuses(world: Path) -> None:
    script = ("kexec -e; echo e=$?; kexec -p {img}; echo p=$?; kexec -s -l; echo none=$?; "
              "kexec -s -l {big}; echo big=$?; kexec --bogus; echo bogus=$?; "
              "ls -l /usr/sbin/kexec /sbin/kexec >/dev/null && echo sbin=ok")
    big = world / "huge.img"
    with big.open("wb") as f:
        f.truncate(4 << 30)  # sparse: bigger than any scratch area
    r = run("--", "sh", "-c", script.format(img=world / "bzImage", big=big))
    assert r.returncode == 0
    assert r.stdout == "e=1\np=1\nnone=255\nbig=255\nbogus=1\nsbin=ok\n"
    for line in ("Nothing has been loaded!\n", "Memory for crashkernel is not reserved\n",
                 "No kernel specified\n",
                 "kexec_file_load failed: Cannot assign requested address\n",
                 "kexec: unrecognized option '--bogus'\n"):
        assert line in r.stderr


def test_admin_guide_script_unmodified(world: Path) -> None:
    r = run("--producers", str(world / "producers.toml"), "--", "sh",
            str(EXAMPLES / "kho-admin-guide.sh"), str(world / "bzImage"))
    assert r.returncode == 0, r.stderr
    assert "finalized: 1\n" in r.stdout and "next kernel:\n" in r.stdout
    assert "sub-tree mydrv:\n" in r.stdout and 'compatible = "mydrv-v1";' in r.stdout
    assert r.stdout.count('compatible = "kho-v1";') == 2  # out/fdt, then in/fdt


def test_luo_triage_script_unmodified(world: Path) -> None:
    out = world / "triage"
    r = run("--producers", str(world / "producers.toml"), "--", "sh",
            str(EXAMPLES / "luo-triage.sh"), str(world / "bzImage"), str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "handover intact: mydrv \n"
    assert (out / "before/fdt").read_bytes() == (out / "after/fdt").read_bytes()
    assert (out / "after/sub_fdts/mydrv").read_bytes()[:4] == b"\xd0\x0d\xfe\xed"


def test_kexec_unload_forgets_the_image(world: Path) -> None:
    r = run("--", "sh", "-c", f"kexec -s -l {world / 'bzImage'} --reuse-cmdline && kexec -u && "
            "kexec -e; echo e=$?")
    assert (r.returncode, r.stdout) == (0, "e=1\n")
    assert r.stderr == "Nothing has been loaded!\n"
