"""The emulated kernel's kexec_file_load, kexec_load and reboot, called as a process would call
them (through a caller made of plain data), with the kernel's errnos in the kernel's order."""

from __future__ import annotations

import signal
import struct

import pytest

from khofs.engine.kexec_core import KEXEC_ARCH_386, KEXEC_ARCH_X86_64, KEXEC_ON_CRASH
from khofs.engine.kexec_file import (
    KEXEC_FILE_DEBUG,
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
)
from khofs.engine.reboot import (
    LINUX_REBOOT_CMD_CAD_OFF,
    LINUX_REBOOT_CMD_CAD_ON,
    LINUX_REBOOT_CMD_HALT,
    LINUX_REBOOT_CMD_KEXEC,
    LINUX_REBOOT_CMD_POWER_OFF,
    LINUX_REBOOT_CMD_RESTART,
    LINUX_REBOOT_CMD_RESTART2,
    LINUX_REBOOT_CMD_SW_SUSPEND,
    LINUX_REBOOT_MAGIC1,
    LINUX_REBOOT_MAGIC2,
    LINUX_REBOOT_MAGIC2C,
    PidNsReboot,
    Reboot,
    Shutdown,
)
from khofs.engine.system import System
from khofs.engine.uaccess import CAP_SYS_BOOT
from khofs.machines.presets import MACHINES
from tests.helpers import boot_system
from tests.machine_helpers import (
    EADDRNOTAVAIL,
    EBADF,
    EFAULT,
    EINVAL,
    ENOEXEC,
    EPERM,
    FakeUser,
    arm64_image,
    bzimage,
)

NOINITRD = KEXEC_FILE_NO_INITRAMFS
CMDLINE = b"console=ttyS0 kho=on\0"
CMD_ADDR = 0x7000


@pytest.fixture
def system() -> System:
    return boot_system(cmdline="kho=on")


@pytest.fixture
def user() -> FakeUser:
    u = FakeUser()
    u.open(3, bzimage())
    u.put(CMD_ADDR, CMDLINE)
    return u


def load(system: System, user: FakeUser, fd: int = 3, initrd: int = -1,
         cmdline: bytes = CMDLINE, flags: int = NOINITRD) -> int:
    user.put(CMD_ADDR, cmdline)
    return system.sys_kexec_file_load(user, fd, initrd, len(cmdline), CMD_ADDR, flags)


# --- kexec_file_load -------------------------------------------------------------------------

def test_a_file_load_is_the_next_kernel_with_its_command_line(system: System,
                                                              user: FakeUser) -> None:
    assert load(system, user) == 0
    assert system.loaded is not None
    handover = system.loaded.handover
    assert handover.cmdline == "console=ttyS0 kho=on"
    assert [s.what for s in handover.segments] == [
        "KHO scratch table", "purgatory", "boot params and command line", "kernel"]
    kernel = handover.segment("kernel")
    assert kernel is not None and kernel.memsz == 16 << 20  # PAGE_ALIGN(init_size)
    # with KHO on, every segment is in a scratch area
    areas = [(a.addr, a.addr + a.size) for a in system.kernel.scratch]
    assert all(any(s <= seg.mem and seg.end <= e for s, e in areas)
               for seg in handover.segments)
    assert handover.fdt_phys and handover.scratch_phys == handover.segments[0].mem


def test_permission_comes_first(system: System, user: FakeUser) -> None:
    user.caps.discard(CAP_SYS_BOOT)
    assert load(system, user, fd=-1, flags=0x40) == EPERM
    assert load(system, user, flags=KEXEC_FILE_UNLOAD) == EPERM


@pytest.mark.parametrize("flags", [0x10, 0x20, 0x100, 1 << 32])
def test_flags_6_16_does_not_know_are_einval(system: System, user: FakeUser,
                                             flags: int) -> None:
    assert load(system, user, fd=-1, flags=flags | NOINITRD) == EINVAL


def test_unload_ignores_the_other_arguments_and_succeeds_with_nothing_loaded(
        system: System, user: FakeUser) -> None:
    assert system.sys_kexec_file_load(user, -1, -1, 0, 0, KEXEC_FILE_UNLOAD) == 0
    assert load(system, user) == 0
    assert system.sys_kexec_file_load(user, 99, 98, 5, 1, KEXEC_FILE_UNLOAD) == 0
    assert system.loaded is None


def test_the_kernel_fd_as_kernel_read_file_checks_it(system: System, user: FakeUser) -> None:
    assert load(system, user, fd=-1) == EBADF
    assert load(system, user, fd=9) == EBADF
    user.open(4, bzimage(), readable=False)  # O_WRONLY
    assert load(system, user, fd=4) == EBADF
    user.open(5, b"", mode=0o040755)  # a directory
    assert load(system, user, fd=5) == EINVAL
    user.open(6, b"")  # empty
    assert load(system, user, fd=6) == EINVAL


@pytest.mark.parametrize(("image", "message"), [
    (b"x" * 1023, "File is too short to be a bzImage"),
    (bzimage(magic=b"HdrX"), "Not a bzImage"),
    (bzimage(boot_flag=0), "No x86 boot sector present"),
    (bzimage(version=0x020B), "Must be at least protocol version 2.12"),
    (bzimage(loadflags=0), "zImage not a bzImage"),
    (bzimage(xloadflags=0x2), "Not a bzImage64. XLF_KERNEL_64 is not set."),
    (bzimage(xloadflags=0x1), "XLF_CAN_BE_LOADED_ABOVE_4G is not set."),
    (arm64_image(), "Not a bzImage"),
])
def test_the_bzimage64_probe_says_why_and_answers_enoexec(system: System, user: FakeUser,
                                                          image: bytes, message: str) -> None:
    user.open(4, image)
    assert load(system, user, fd=4) == ENOEXEC
    assert system.kernel.log.records[-1].text == "kexec-bzImage64: " + message
    assert system.kernel.log.records[-1].level == "err"


def test_the_probe_runs_before_the_initrd_and_the_command_line_are_read(
        system: System, user: FakeUser) -> None:
    user.open(4, b"#!/bin/sh\n" * 200)
    assert system.sys_kexec_file_load(user, 4, -1, 100, 0xDEAD0000, 0) == ENOEXEC
    # a good kernel: then the initrd (-1 without NO_INITRAMFS is EBADF), then the line
    assert system.sys_kexec_file_load(user, 3, -1, 100, 0xDEAD0000, 0) == EBADF
    assert system.sys_kexec_file_load(user, 3, -1, 100, 0xDEAD0000, NOINITRD) == EFAULT


def test_the_command_line_must_end_in_its_nul(system: System, user: FakeUser) -> None:
    assert load(system, user, cmdline=CMDLINE[:-1]) == EINVAL
    assert system.sys_kexec_file_load(user, 3, -1, 0, 0xDEAD0000, NOINITRD) == 0
    assert system.loaded is not None and system.loaded.handover.cmdline == ""


def test_a_nul_inside_the_command_line_ends_it(system: System, user: FakeUser) -> None:
    assert load(system, user, cmdline=b"a=1\0b=2\0") == 0
    assert system.loaded is not None and system.loaded.handover.cmdline == "a=1"


def test_bzimage64_load_checks_the_image_and_the_line(system: System, user: FakeUser) -> None:
    user.open(4, bzimage(setup_sects=30, size=4096))
    assert load(system, user, fd=4) == ENOEXEC
    assert system.kernel.log.records[-1].text == "kexec-bzImage64: bzImage truncated"
    user.open(5, bzimage(cmdline_size=10))
    assert load(system, user, fd=5) == EINVAL
    assert system.kernel.log.records[-1].text == "kexec-bzImage64: Kernel command line too long"
    user.open(6, bzimage(cmdline_size=len(CMDLINE) + 29))
    assert load(system, user, fd=6) == EINVAL
    assert system.kernel.log.records[-1].text.startswith(
        "kexec-bzImage64: Appending elfcorehdr=<addr> to command line exceeds")
    user.open(7, bzimage(cmdline_size=len(CMDLINE) + 30))
    assert load(system, user, fd=7) == 0


def test_an_image_whose_file_outgrows_init_size_fails_the_sanity_check(
        system: System, user: FakeUser) -> None:
    user.open(4, bzimage(size=3 << 20, init_size=1 << 20))
    assert load(system, user, fd=4) == EINVAL


def test_an_image_too_big_for_the_scratch_areas_is_eaddrnotavail(
        system: System, user: FakeUser) -> None:
    user.open(4, bzimage(init_size=0xF0000000))
    assert load(system, user, fd=4) == EADDRNOTAVAIL


def test_the_initrd_is_read_and_placed(system: System, user: FakeUser) -> None:
    user.open(4, b"initrd" * 1000)
    assert load(system, user, initrd=4, flags=0) == 0
    assert system.loaded is not None
    initrd = system.loaded.handover.segment("initrd")
    assert initrd is not None and initrd.memsz == 8192


def test_a_failed_load_keeps_the_image_loaded_before(system: System, user: FakeUser) -> None:
    assert load(system, user) == 0
    before = system.loaded
    assert load(system, user, fd=-1) == EBADF
    assert system.loaded is before


def test_debug_flag_is_accepted(system: System, user: FakeUser) -> None:
    assert load(system, user, flags=NOINITRD | KEXEC_FILE_DEBUG) == 0


def test_arm64_takes_an_image_and_refuses_a_bzimage_with_einval() -> None:
    system = boot_system(MACHINES["arm64-virt"], "kho=on")
    user = FakeUser()
    user.open(3, arm64_image())
    user.open(4, bzimage())
    user.open(5, arm64_image(image_size=0))
    user.open(6, arm64_image(flags=0x3))  # big endian
    user.put(CMD_ADDR, CMDLINE)
    assert load(system, user, fd=4) == EINVAL
    assert system.kernel.log.records[-1].text != "kexec-bzImage64: Not a bzImage"
    assert load(system, user, fd=5) == EINVAL
    assert load(system, user, fd=6) == EINVAL
    assert load(system, user, fd=3) == 0


# --- the crash kernel ---------------------------------------------------------------------

def test_a_crash_load_needs_the_crashkernel_region_and_frees_the_old_image_first(
        user: FakeUser) -> None:
    system = boot_system(cmdline="kho=on")
    assert load(system, user, flags=NOINITRD | KEXEC_FILE_ON_CRASH) == EADDRNOTAVAIL
    assert system.crash_loaded is None and system.loaded is None
    system = boot_system(cmdline="kho=on crashkernel=256M")
    assert load(system, user, flags=NOINITRD | KEXEC_FILE_ON_CRASH) == 0
    image = system.crash_loaded
    assert image is not None and system.loaded is None
    start, end = system.crash.res
    assert all(start <= s.mem and s.end - 1 <= end for s in image.handover.segments)
    assert "elfcorehdr" in [s.what for s in image.handover.segments]
    # a failed crash load leaves no crash kernel at all
    assert load(system, user, fd=-1, flags=NOINITRD | KEXEC_FILE_ON_CRASH) == EBADF
    assert system.crash_loaded is None
    assert load(system, user, flags=NOINITRD | KEXEC_FILE_ON_CRASH) == 0
    assert system.sys_kexec_file_load(user, -1, -1, 0, 0,
                                      KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH) == 0
    assert system.crash_loaded is None


def test_crash_size_shows_and_shrinks_as_crash_shrink_memory() -> None:
    system = boot_system(cmdline="kho=on crashkernel=256M")
    assert system.crash_size() == 256 << 20
    start, _ = system.crash.res
    assert system.crash_shrink(512 << 20) == EINVAL
    assert system.crash_shrink(256 << 20) == 0
    assert system.crash_shrink((128 << 20) - 100) == 0  # rounded up to a page
    assert system.crash.res == (start, start + (128 << 20) - 1)
    assert system.crash.freed == [(start + (128 << 20), start + (256 << 20) - 1)]
    user = FakeUser()
    user.open(3, bzimage())
    assert system.sys_kexec_file_load(user, 3, -1, 0, 0, NOINITRD | KEXEC_FILE_ON_CRASH) == 0
    assert system.crash_shrink(0) == -2  # ENOENT while a crash kernel is loaded
    assert boot_system(cmdline="kho=on").crash_size() == 0


# --- kexec_load ---------------------------------------------------------------------------

SEGMENT = struct.Struct("<QQQQ")
BOOT_PARAMS = 0x9000
LINE = 0xA000


def classic_user(cmdline: bytes = b"console=ttyS0 root=/dev/vda\0") -> FakeUser:
    """A caller with kexec-tools' shape of load: a boot_params page whose setup header
    points at the command line on the next page, and a kernel."""
    user = FakeUser()
    params = bytearray(bzimage(size=4096))
    struct.pack_into("<I", params, 0x228, 0x9F000 + 0x1000)  # hdr.cmd_line_ptr
    user.put(BOOT_PARAMS, bytes(params))
    user.put(LINE, cmdline)
    user.put(0xB000, b"\x90" * 4096)
    segs = [(BOOT_PARAMS, 4096, 0x9F000, 0x1000),
            (LINE, len(cmdline), 0xA0000, 0x1000), (0xB000, 4096, 0x1000000, 0x200000)]
    user.put(0x20000, b"".join(SEGMENT.pack(*s) for s in segs))
    return user


def kexec_load(system: System, user: FakeUser, nr: int = 3, flags: int = KEXEC_ARCH_X86_64,
               entry: int = 0x1000000, ptr: int = 0x20000, compat: bool = False) -> int:
    return system.sys_kexec_load(user, entry, nr, ptr, flags, compat)


def test_a_classic_load_boots_without_kho_and_with_the_line_boot_params_give(
        system: System) -> None:
    user = classic_user()
    assert kexec_load(system, user) == 0
    assert system.loaded is not None and system.loaded.handover.fdt_phys == 0
    got = system.sys_reboot(user, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                            LINUX_REBOOT_CMD_KEXEC, 0)
    assert isinstance(got, Reboot) and got.how is Shutdown.KEXEC
    system.boot_next()
    assert system.kernel.boot_number == 2
    assert system.kernel.params.cmdline == "console=ttyS0 root=/dev/vda"
    assert system.kernel.kho_in is None and system.kernel.debugfs.lookup("/kho") is None
    # the segments' data is in RAM where they were loaded
    assert system.mem.read(0x1000000, 4) == b"\x90" * 4


def test_kexec_load_checks_in_order(system: System) -> None:
    user = classic_user()
    user.caps.clear()
    assert kexec_load(system, user, flags=0xFFFF) == EPERM
    user.caps.add(CAP_SYS_BOOT)
    assert kexec_load(system, user, nr=17, flags=0x2 | KEXEC_ARCH_X86_64) == EINVAL  # no JUMP
    assert kexec_load(system, user, nr=17) == EINVAL
    assert kexec_load(system, user, flags=KEXEC_ARCH_386) == EINVAL
    assert kexec_load(system, user, ptr=0xDEAD0000) == EFAULT
    assert kexec_load(system, user, flags=0) == 0  # KEXEC_ARCH_DEFAULT


def test_kexec_load_with_no_segments_unloads(system: System) -> None:
    user = classic_user()
    assert kexec_load(system, user) == 0
    assert kexec_load(system, user, nr=0, ptr=0, entry=0) == 0
    assert system.loaded is None


def test_the_compat_entry_reads_16_byte_segments_and_wants_an_arch(system: System) -> None:
    user = classic_user()
    segs = [(0xB000, 4096, 0x1000000, 0x200000)]
    user.put(0x30000, b"".join(struct.pack("<IIII", *s) for s in segs))
    assert kexec_load(system, user, nr=1, ptr=0x30000, flags=0, compat=True) == EINVAL
    assert kexec_load(system, user, nr=1, ptr=0x30000, flags=KEXEC_ARCH_386, compat=True) == 0


@pytest.mark.parametrize(("segs", "err"), [
    ([(0xB000, 16, 0x1000800, 0x1000)], EADDRNOTAVAIL),  # not page aligned
    ([(0xB000, 16, 0x1000000, 0x1800)], EADDRNOTAVAIL),  # end not page aligned
    ([(0xB000, 16, (1 << 64) - 0x1000, 0x2000)], EADDRNOTAVAIL),  # wraps
    ([(0xB000, 16, (1 << 46) - 0x1000, 0x1000)], EADDRNOTAVAIL),  # at the limit
    ([(0xB000, 16, 0x1000000, 0x2000), (0xB000, 16, 0x1001000, 0x1000)], EINVAL),
    ([(0xB000, 0x2000, 0x1000000, 0x1000)], EINVAL),  # bufsz > memsz
    ([(0xB000, 16, 0x100000000, 9 << 30)], EINVAL),  # more than half of RAM
    ([(0xDEAD0000, 16, 0x1000000, 0x1000)], EFAULT),  # the data cannot be read
])
def test_sanity_check_segment_list(system: System, segs: list[tuple[int, ...]],
                                   err: int) -> None:
    user = classic_user()
    user.put(0x40000, b"".join(SEGMENT.pack(*s) for s in segs))
    assert kexec_load(system, user, nr=len(segs), ptr=0x40000) == err
    assert system.loaded is None


def test_a_classic_crash_load_must_lie_in_crashk_res() -> None:
    system = boot_system(cmdline="kho=on crashkernel=256M")
    start, _ = system.crash.res
    user = classic_user()
    user.put(0x40000, SEGMENT.pack(0xB000, 16, start, 0x1000))
    flags = KEXEC_ARCH_X86_64 | KEXEC_ON_CRASH
    assert kexec_load(system, user, nr=1, ptr=0x40000, flags=flags, entry=0x1000) == \
        EADDRNOTAVAIL
    assert kexec_load(system, user, nr=3, flags=flags, entry=start) == EADDRNOTAVAIL
    assert kexec_load(system, user, nr=1, ptr=0x40000, flags=flags, entry=start) == 0
    assert system.crash_loaded is not None and system.loaded is None


# --- reboot -------------------------------------------------------------------------------

def reboot(system: System, user: FakeUser, cmd: int, arg: int = 0,
           magic2: int = LINUX_REBOOT_MAGIC2) -> object:
    return system.sys_reboot(user, LINUX_REBOOT_MAGIC1, magic2, cmd, arg)


def test_reboot_wants_cap_sys_boot_then_the_magics(system: System) -> None:
    user = FakeUser(caps=set())
    assert reboot(system, user, LINUX_REBOOT_CMD_RESTART) == EPERM
    user.caps.add(CAP_SYS_BOOT)
    assert system.sys_reboot(user, 1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_ON, 0) == EINVAL
    assert reboot(system, user, LINUX_REBOOT_CMD_CAD_ON, magic2=1) == EINVAL
    # compared as ints: the upper halves of the registers do not count
    assert system.sys_reboot(user, 0xABCD_0000_0000 | LINUX_REBOOT_MAGIC1,
                             LINUX_REBOOT_MAGIC2C, (7 << 32) | LINUX_REBOOT_CMD_CAD_ON, 0) == 0


def test_reboot_commands_that_return(system: System) -> None:
    user = FakeUser()
    assert reboot(system, user, LINUX_REBOOT_CMD_CAD_ON) == 0
    assert reboot(system, user, LINUX_REBOOT_CMD_CAD_OFF) == 0
    assert reboot(system, user, LINUX_REBOOT_CMD_KEXEC) == EINVAL  # nothing loaded
    assert reboot(system, user, LINUX_REBOOT_CMD_SW_SUSPEND) == EINVAL
    assert reboot(system, user, 0x12345678) == EINVAL
    assert reboot(system, user, LINUX_REBOOT_CMD_RESTART2, 0xDEAD0000) == EFAULT
    assert system.going is None


@pytest.mark.parametrize(("cmd", "how", "line"), [
    (LINUX_REBOOT_CMD_RESTART, Shutdown.RESTART, "reboot: Restarting system"),
    (LINUX_REBOOT_CMD_HALT, Shutdown.HALT, "reboot: System halted"),
    (LINUX_REBOOT_CMD_POWER_OFF, Shutdown.POWER_OFF, "reboot: Power down"),
])
def test_reboot_commands_that_end_the_boot(system: System, cmd: int, how: Shutdown,
                                           line: str) -> None:
    got = reboot(system, FakeUser(), cmd)
    assert got == Reboot(how, line)
    assert system.kernel.log.records[-1].text == line
    assert system.kernel.log.records[-1].level == "emerg"
    assert system.kernel.debugfs.lookup("/kho") is None


def test_restart2_logs_its_command(system: System) -> None:
    user = FakeUser()
    user.put(0x5000, b"firmware-update\0junk")
    got = reboot(system, user, LINUX_REBOOT_CMD_RESTART2, 0x5000)
    assert isinstance(got, Reboot) and got.how is Shutdown.RESTART
    assert system.kernel.log.records[-1].text == \
        "reboot: Restarting system with command 'firmware-update'"


def test_a_restart_is_a_cold_boot(system: System, user: FakeUser) -> None:
    assert load(system, user) == 0
    system.mem.write(0x5000_0000, b"data")
    assert isinstance(reboot(system, user, LINUX_REBOOT_CMD_RESTART), Reboot)
    system.boot_next()
    assert (system.kernel.boot_number, system.log_number) == (1, 2)  # a cold boot: 1 again
    assert system.loaded is None and system.kernel.kho_in is None
    assert system.kernel.params.cmdline == "kho=on"
    assert system.mem.read(0x5000_0000, 4) == bytes(4)
    assert [b for b, _ in system.records].count(2) == len(system.kernel.log.records)


def test_kexec_boots_the_file_image_with_its_handover(system: System, user: FakeUser) -> None:
    finalize = system.kernel.debugfs.lookup("/kho/out/finalize")
    assert finalize is not None and finalize.fops is not None
    opened = finalize.fops.open(finalize)
    assert not isinstance(opened, int) and opened.write(b"1\0", 0) == 2
    assert load(system, user) == 0
    assert reboot(system, user, LINUX_REBOOT_CMD_KEXEC) == Reboot(
        Shutdown.KEXEC, "kexec_core: Starting new kernel")
    assert system.loaded is None
    system.boot_next()
    assert system.kernel.boot_number == 2 and system.kernel.kho_in is not None
    assert system.kernel.params.cmdline == "console=ttyS0 kho=on"
    assert system.kernel.debugfs.lookup("/kho/in/fdt") is not None


def test_reboot_in_a_pid_namespace_of_its_own(system: System) -> None:
    user = FakeUser(nested_pid_ns=True)
    assert reboot(system, user, LINUX_REBOOT_CMD_RESTART) == PidNsReboot(signal.SIGHUP)
    assert reboot(system, user, LINUX_REBOOT_CMD_RESTART2, 0xDEAD) == PidNsReboot(signal.SIGHUP)
    assert reboot(system, user, LINUX_REBOOT_CMD_POWER_OFF) == PidNsReboot(signal.SIGINT)
    assert reboot(system, user, LINUX_REBOOT_CMD_HALT) == PidNsReboot(signal.SIGINT)
    assert reboot(system, user, LINUX_REBOOT_CMD_KEXEC) == EINVAL
    assert reboot(system, user, LINUX_REBOOT_CMD_CAD_ON) == EINVAL
    assert system.going is None


def test_restart_is_a_cold_boot_now(system: System, user: FakeUser) -> None:
    assert load(system, user) == 0
    system.restart()
    assert (system.kernel.boot_number, system.log_number) == (1, 2) and system.loaded is None
    boots = [(b, r.text) for b, r in system.records]
    assert (1, "reboot: Restarting system") in boots
    assert boots[-len(system.kernel.log.records)][0] == 2
