"""Debian's kexec-tools (/usr/sbin/kexec, unmodified) inside `khofs run`: every call it makes
reaches the emulated kernel, with kexec-tools' own messages and exit statuses."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.machine_helpers import (
    Scratch,
    arm64_image,
    bzimage,
    khofs_run,
    scratch,
)

pytestmark = pytest.mark.mount

KEXEC = "/usr/sbin/kexec"
DTS = '/dts-v1/;\n/ {\n\tcompatible = "mydrv-v1";\n\tstate = <42>;\n};\n'
NOT_LOADED = "Nothing has been loaded!\n"


@pytest.fixture
def sc() -> Iterator[Scratch]:
    with scratch() as made:
        made.file("bzImage", bzimage())
        made.file("Image", arm64_image())
        made.file("huge", bzimage(init_size=0xF0000000))
        made.file("mydrv.dts", DTS)
        made.file("producers.toml", '[[producer]]\nname = "mydrv"\ndts = "mydrv.dts"\n'
                  'preserve = ["0x100000000+2M"]\n')
        yield made


def run(sc: Scratch, script: str, *args: str,
        user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return khofs_run(*args, "--", "sh", "-c", script.replace("KEXEC", KEXEC), sc=sc, user=user)


FILE_LOAD = """\
d=/sys/kernel/debug/kho
if [ -d $d/in ]; then
    cp $d/in/fdt {out}/in-root.dtb && cp $d/in/sub_fdts/mydrv {out}/in.dtb
    echo "boot 2: $(cat /proc/cmdline), loaded $(cat /sys/kernel/kexec_loaded)"
    exit 0
fi
echo 1 > $d/out/finalize
cp $d/out/fdt {out}/out-root.dtb && cp $d/out/sub_fdts/mydrv {out}/out.dtb
KEXEC -s -l {image} --reuse-cmdline && echo "loaded $(cat /sys/kernel/kexec_loaded)"
KEXEC -e
echo "kexec -e returned $?"
"""


def test_file_load_and_exec_hand_the_sub_fdts_over_byte_for_byte(
        sc: Scratch, user: list[str] | None) -> None:
    out = sc.dir("out")
    r = run(sc, FILE_LOAD.format(out=out, image=sc.path / "bzImage"), "--boots", "2",
            "--producers", str(sc.path / "producers.toml"), user=user)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "loaded 1\nboot 2: kho=on, loaded 0\n"
    assert (out / "in.dtb").read_bytes() == (out / "out.dtb").read_bytes()
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(out / "in.dtb")],
                         capture_output=True, text=True, check=True).stdout
    assert 'compatible = "mydrv-v1";' in dts and "state = <0x2a>;" in dts
    in_root = subprocess.run(["fdtget", str(out / "in-root.dtb"), "/", "compatible"],
                             capture_output=True, text=True, check=True).stdout
    assert in_root == "kho-v1\n"
    sc.nothing_left()


CLASSIC = """\
if [ $(cat /proc/cmdline) = "kho=on" ] && [ ! -e /tmp/booted-{tag} ]; then
    touch /tmp/booted-{tag}
    echo 1 > /sys/kernel/debug/kho/out/finalize
    KEXEC -l {image} --reuse-cmdline && KEXEC -e
fi
rm -f /tmp/booted-{tag}
echo "boot 2: $(cat /proc/cmdline); kho: $(ls /sys/kernel/debug/kho | tr '\\n' ' ')"
"""


def test_a_classic_load_boots_the_next_kernel_without_the_handover(sc: Scratch) -> None:
    r = run(sc, CLASSIC.format(image=sc.path / "bzImage", tag=sc.path.name), "--boots", "2")
    assert (r.returncode, r.stderr) == (0, "")
    # KHO is on (the command line came through boot_params), but nothing was handed over
    assert r.stdout == "boot 2: kho=on; kho: out \n"


def test_unload(sc: Scratch, user: list[str] | None) -> None:
    r = run(sc, "KEXEC -s -l {img} && cat /sys/kernel/kexec_loaded && KEXEC -u && "
            "cat /sys/kernel/kexec_loaded && KEXEC -s -l {img} && KEXEC -s -u && "
            "cat /sys/kernel/kexec_loaded && KEXEC -e; echo e=$?".format(
                img=sc.path / "bzImage"), user=user)
    assert (r.returncode, r.stdout, r.stderr) == (0, "1\n0\n0\ne=1\n", NOT_LOADED)


def test_exec_with_nothing_loaded(sc: Scratch, user: list[str] | None) -> None:
    r = run(sc, "KEXEC -e; echo e=$?", user=user)
    assert (r.returncode, r.stdout, r.stderr) == (0, "e=1\n", NOT_LOADED)


def test_crash_kernel_needs_crashkernel(sc: Scratch) -> None:
    script = ("KEXEC -s -p {img} --reuse-cmdline; echo p=$?; cat /sys/kernel/kexec_crash_loaded;"
              " KEXEC -S; echo S=$?").format(img=sc.path / "bzImage")
    r = run(sc, script)
    assert r.stdout == "p=1\n0\nS=0\n"
    assert r.stderr == ("Memory for crashkernel is not reserved\nPlease reserve memory by "
                        "passing\"crashkernel=Y@X\" parameter to kernel\nThen try to loading "
                        "kdump kernel\n")
    r = run(sc, script + "; cat /sys/kernel/kexec_crash_size; KEXEC --print-ckr-size",
            "--cmdline", "kho=on crashkernel=256M")
    assert (r.stdout, r.stderr) == ("p=0\n1\nS=1\n268435456\n268435456\n", "")


def test_what_is_not_a_kernel_gets_kexec_tools_own_messages(sc: Scratch) -> None:
    r = run(sc, "KEXEC -s -l /etc/hostname; echo text=$?; KEXEC -s -l {arm}; echo arm=$?; "
            "KEXEC -s -l {huge}; echo huge=$?".format(arm=sc.path / "Image",
                                                      huge=sc.path / "huge"))
    assert r.stdout == "text=255\narm=255\nhuge=255\n"
    assert r.stderr.splitlines() == [
        "Cannot determine the file type of /etc/hostname",
        f"Cannot determine the file type of {sc.path / 'Image'}",
        "kexec_file_load failed: Cannot assign requested address"]


def test_an_arm64_machine_refuses_a_bzimage_as_its_kernel_does(sc: Scratch) -> None:
    r = run(sc, "KEXEC -s -l {img}; echo s=$?".format(img=sc.path / "bzImage"),
            "--machine", "arm64-virt")
    # EINVAL from arm64's image_probe: kexec-tools takes it for a missing syscall
    assert (r.stdout, r.stderr) == ("s=253\n", "syscall kexec_file_load not available.\n")


def test_loading_takes_cap_sys_boot(sc: Scratch) -> None:
    r = run(sc, "setpriv --reuid=65534 KEXEC -s -l {img}; echo s=$?; "
            "setpriv --reuid=65534 KEXEC -e; echo e=$?".format(img=sc.path / "bzImage"))
    assert r.stdout == "s=255\ne=1\n"
    assert r.stderr == "kexec_file_load failed: Operation not permitted\n" + NOT_LOADED


def test_reboot_past_the_last_boot(sc: Scratch, user: list[str] | None) -> None:
    r = run(sc, "KEXEC -s -l {img} --reuse-cmdline && KEXEC -e; echo not reached".format(
        img=sc.path / "bzImage"), user=user)
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr == ("khofs: run: the machine rebooted (kexec); boot 2 would start, past "
                        "--boots 1: stopping\n")


def test_kexec_is_the_systems(sc: Scratch) -> None:
    r = run(sc, "command -v kexec; KEXEC --version")
    assert r.stdout == f"{Path(KEXEC)}\nkexec-tools 2.0.25\n"


def versioned(release: str) -> bytes:
    """A bzImage whose setup header names release (kernel_version at 0x20E)."""
    image = bytearray(bzimage())
    image[0x20E:0x210] = (0x100).to_bytes(2, "little")
    text = f"{release} (builder@host) #1 SMP".encode() + b"\0"
    image[0x300:0x300 + len(text)] = text
    return bytes(image)


def test_the_image_names_the_next_kernels_version(sc: Scratch) -> None:
    old = sc.file("old", versioned("5.10.0-28-amd64"))
    new = sc.file("new", versioned("6.18.2-1-amd64"))
    script = (f"[ -d /sys/kernel/debug/kho/in ] && {{ dmesg | grep -c 'found kexec handover'; "
              f"exit; }}; KEXEC -s -l {old}; echo old=$?; dmesg | tail -1 | cut -d] -f2; "
              f"echo 1 > /sys/kernel/debug/kho/out/finalize; "
              f"KEXEC -s -l {new} --reuse-cmdline && KEXEC -e")
    r = run(sc, script, "--boots", "2")
    # EINVAL, which kexec-tools takes for a missing syscall; then 6.18, which hands over
    assert r.stdout == ("old=253\n khofs: kexec: the image is Linux 5.10.0-28-amd64; khofs "
                        "emulates 6.16 to 7.4\n1\n")
    assert r.stderr == "syscall kexec_file_load not available.\n"
