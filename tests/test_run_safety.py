"""Nothing a process of `khofs run` does with reboot(2), kexec_load(2) or kexec_file_load(2)
reaches the host, as root: each is answered by the emulated kernel.

The raw calls come from tests/programs/raw_calls.c, which refuses them unless it has proved
first that it is PID 1 of a pid namespace of its own (there the kernel turns a reboot that
escaped the filter into a signal to that namespace's init, never a host reboot) and that the
seccomp filter answers. The test proves the same from outside before it lets the calls run.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.machine_helpers import Scratch, build, bzimage, khofs_run, scratch

pytestmark = [pytest.mark.mount,
              pytest.mark.skipif(os.getuid() != 0, reason="the safety test is root's")]

RESTART, HALT, CAD_ON, CAD_OFF = 0x01234567, 0xCDEF0123, 0x89ABCDEF, 0
POWER_OFF, RESTART2, SW_SUSPEND, KEXEC = 0x4321FEDC, 0xA1B2C3D4, 0xD000FCE2, 0x45584543


@pytest.fixture
def sc() -> Iterator[Scratch]:
    with scratch() as made:
        made.file("bzImage", bzimage())
        build("raw_calls.c", made.path / "raw_calls")
        yield made


def host_state() -> tuple[str, str | None]:
    """What must not change: the host's interfaces and their flags, and whether it has a
    kexec image loaded (the file is missing on a kernel built without kexec)."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    flags = "\n".join(re.sub(r"\s+link/.*", "", line) for line in links.splitlines())
    loaded = Path("/sys/kernel/kexec_loaded")
    return flags, loaded.read_text() if loaded.exists() else None


def test_the_run_is_a_pid_namespace_of_its_own_and_the_filter_answers(sc: Scratch) -> None:
    ours = os.readlink("/proc/self/ns/pid")
    r = khofs_run("--", "sh", "-c", f"readlink /proc/self/ns/pid; exec {sc.path}/raw_calls "
                  "guard", sc=sc)
    theirs, guard = r.stdout.splitlines()
    assert theirs != ours and theirs.startswith("pid:[")
    # PID 1 there, and reboot(CAD_OFF) gave 0: the emulated kernel, where the real one
    # would have said EINVAL to a child pid namespace
    assert (r.returncode, guard) == (0, "guard -> 0")


BOOTS = """\
n=$(($(cat {state} 2>/dev/null || echo 0) + 1)); echo $n > {state}
case $n in
1) exec {raw} guard loaded kl loaded kl32 kfl {image} 4 kfl /etc/hostname 4 reboot {cad_on} \
reboot {cad_off} reboot32 {cad_off} reboot {suspend} reboot 0x12345678 badmagic reboot {kexec} ;;
2) exec {raw} guard loaded reboot {kexec} reboot32 {restart} ;;
3) exec {raw} guard reboot {restart2} ;;
4) exec {raw} guard kfl {image} 4 reboot {halt} ;;
esac
"""

EXPECTED = """\
guard -> 0
kexec_loaded 0
kexec_load -> 0
kexec_loaded 1
kexec_load (i386) -> 0
kexec_file_load {image} 4 -> 0
kexec_file_load /etc/hostname 4 -> -1 ENOEXEC
reboot 0x89abcdef -> 0
reboot 0 -> 0
reboot32 0 -> 0
reboot 0xd000fce2 -> -1 EINVAL
reboot 0x12345678 -> -1 EINVAL
badmagic -> -1 EINVAL
guard -> 0
kexec_loaded 0
reboot 0x45584543 -> -1 EINVAL
guard -> 0
guard -> 0
kexec_file_load {image} 4 -> 0
"""


def test_raw_reboots_and_kexecs_are_the_emulated_kernels(sc: Scratch) -> None:
    before = host_state()
    script = BOOTS.format(state=sc.path / "boot", raw=sc.path / "raw_calls",
                          image=sc.path / "bzImage", cad_on=hex(CAD_ON), cad_off=hex(CAD_OFF),
                          suspend=hex(SW_SUSPEND), kexec=hex(KEXEC), restart=hex(RESTART),
                          restart2=hex(RESTART2), halt=hex(HALT))
    r = khofs_run("--boots", "5", "--console", "--", "sh", "-c", script, sc=sc)
    assert r.returncode == 0
    assert r.stdout == EXPECTED.format(image=sc.path / "bzImage")
    kernel = [re.sub(r"^\[ *\d+\.\d+\] ", "", line) for line in r.stderr.splitlines()]
    # boot 1 ends in a kexec into the last image loaded (the file load: /etc/hostname's
    # failed and left it), boot 2 in a restart by the i386 entry, boot 3 in RESTART2 with
    # its command, boot 4 halts
    assert [line for line in kernel if line.startswith(("kexec", "reboot"))] == [
        "kexec-bzImage64: File is too short to be a bzImage",
        "kexec_core: Starting new kernel", "reboot: Restarting system",
        "reboot: Restarting system with command 'khofs'", "reboot: System halted"]
    assert kernel.count("Kernel command line: kho=on") == 4
    assert host_state() == before
    sc.nothing_left()


def test_power_off_ends_the_run(sc: Scratch) -> None:
    before = host_state()
    r = khofs_run("--boots", "3", "--console", "--", f"{sc.path}/raw_calls", "guard",
                  "reboot", hex(POWER_OFF), sc=sc)
    assert (r.returncode, r.stdout) == (0, "guard -> 0\n")
    assert r.stderr.splitlines()[-1].endswith("] reboot: Power down")
    assert host_state() == before


def test_the_machines_own_files_as_a_kernel(sc: Scratch) -> None:
    """kexec_file_load of files the emulated kernel serves itself: they are read while the
    load is under way, and answered as kernel_read_file would answer them."""
    files = ["/sys/kernel/kexec_crash_size", "/sys/kernel/debug/kho/out/scratch_len",
             "/proc/cmdline", "/dev/kmsg", "/sys/kernel/debug/kho"]
    steps = [arg for f in files for arg in ("kfl", f, "4")]
    r = khofs_run("--cmdline", "kho=on crashkernel=64M", "--", f"{sc.path}/raw_calls",
                  "guard", *steps, sc=sc)
    assert r.stdout.splitlines() == [
        "guard -> 0",
        "kexec_file_load /sys/kernel/kexec_crash_size 4 -> -1 EIO",  # sysfs: 4096, short
        "kexec_file_load /sys/kernel/debug/kho/out/scratch_len 4 -> -1 EINVAL",  # size 0
        "kexec_file_load /proc/cmdline 4 -> -1 ENOEXEC",  # read whole, not a bzImage
        "kexec_file_load /dev/kmsg 4 -> -1 EINVAL",
        "kexec_file_load /sys/kernel/debug/kho 4 -> -1 EINVAL",  # a directory
    ]
