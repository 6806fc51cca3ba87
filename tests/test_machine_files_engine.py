"""The files kexec tools read, as the emulated kernel renders them: /proc/cmdline,
/proc/iomem, /sys/firmware/memmap, /sys/kernel/kexec_*, /dev/kmsg records."""

from __future__ import annotations

from khofs.engine.printk import (
    Record,
    console_loglevel,
    devkmsg_parse,
    kmsg_record,
    on_console,
)
from khofs.engine.procfs import iomem_entries, proc_cmdline, proc_iomem
from khofs.engine.sysfs import (
    firmware_map,
    kexec_crash_size_parse,
    kexec_crash_size_show,
    kexec_loaded_show,
    memmap_show,
)
from khofs.machines.presets import MACHINES
from tests.helpers import boot_system

LAPTOP_IOMEM = """\
00000000-00000fff : Reserved
00001000-0009efff : System RAM
0009f000-000fffff : Reserved
00100000-7fffffff : System RAM
  01000000-02119998 : Kernel code
  02200000-02b7ffff : Kernel rodata
  02c00000-02ea8f5b : Kernel data
  02ea9000-02fccd6f : Kernel bss
  6c000000-7bffffff : Crash kernel
100000000-47fffffff : System RAM
"""


def test_proc_cmdline_is_the_line_and_a_newline() -> None:
    system = boot_system(cmdline="kho=on console=ttyS0")
    assert proc_cmdline(system.kernel) == b"kho=on console=ttyS0\n"


def test_iomem_as_root_sees_the_resource_tree() -> None:
    system = boot_system(cmdline="kho=on crashkernel=256M")
    assert proc_iomem(iomem_entries(system.kernel, system.crash), True) == LAPTOP_IOMEM


def test_iomem_without_cap_sys_admin_reads_zeros_with_the_names() -> None:
    system = boot_system(cmdline="kho=on crashkernel=256M")
    text = proc_iomem(iomem_entries(system.kernel, system.crash), False)
    want = "".join(" " * (len(line) - len(line.lstrip())) + "00000000-00000000 :"
                   + line.split(":", 1)[1] + "\n" for line in LAPTOP_IOMEM.splitlines())
    assert text == want


def test_iomem_shows_what_a_shrink_gave_back() -> None:
    system = boot_system(cmdline="kho=on crashkernel=256M")
    assert system.crash_shrink(64 << 20) == 0
    lines = proc_iomem(iomem_entries(system.kernel, system.crash), True).splitlines()
    assert "  6c000000-6fffffff : Crash kernel" in lines
    assert "  70000000-7bffffff : System RAM" in lines


def test_arm64_iomem_is_memblock_memory_with_the_image() -> None:
    system = boot_system(MACHINES["arm64-virt"], "kho=on crashkernel=256M")
    assert proc_iomem(iomem_entries(system.kernel, system.crash), True) == (
        "40000000-13fffffff : System RAM\n"
        "  40200000-41399998 : Kernel code\n"
        "  4139a000-41b99fff : Kernel data\n"
        "  f0000000-ffffffff : Crash kernel\n")


def test_firmware_memmap_is_the_e820_map_ends_inclusive() -> None:
    entries = firmware_map(MACHINES["laptop"])
    assert entries == [(0, 0x9EFFF, "System RAM"), (0x9F000, 0xFFFFF, "Reserved"),
                       (0x100000, 0x7FFFFFFF, "System RAM"),
                       (0x100000000, 0x47FFFFFFF, "System RAM")]
    assert [memmap_show(entries[2], a) for a in ("start", "end", "type")] == \
        ["0x100000\n", "0x7fffffff\n", "System RAM\n"]
    # two nodes back to back are one e820 entry; arm64 has no firmware memmap
    assert firmware_map(MACHINES["server-2s"])[-1] == (0x100000000, 0x607FFFFFFF, "System RAM")
    assert firmware_map(MACHINES["arm64-virt"]) == []


def test_kexec_sysfs_files() -> None:
    assert (kexec_loaded_show(False), kexec_loaded_show(True)) == ("0\n", "1\n")
    assert kexec_crash_size_show(268435456) == "268435456\n"
    assert kexec_crash_size_parse(b"0x1000\n") == 0x1000
    assert kexec_crash_size_parse(b"12k") is None


def test_kmsg_records_as_devkmsg_read_formats_them() -> None:
    rec = Record("info", 1.5, "KHO: a\\b\tc\u00e9")
    assert kmsg_record(7, rec) == b"6,7,1500000,-;KHO: a\\x5cb\\x09c\\xc3\\xa9\n"
    assert kmsg_record(0, Record("warn", 0.0, "x", facility=1)) == b"12,0,0,-;x\n"


def test_devkmsg_write_prefixes() -> None:
    assert devkmsg_parse(b"hello\n") == (1, "warn", "hello\n")
    assert devkmsg_parse(b"<3>boom") == (1, "err", "boom")
    assert devkmsg_parse(b"<30>daemon") == (3, "info", "daemon")
    assert devkmsg_parse(b"<>zero") == (1, "emerg", "zero")
    assert devkmsg_parse(b"<3x>odd") == (1, "warn", "<3x>odd")


def test_console_loglevel() -> None:
    assert console_loglevel("kho=on") == 7
    assert console_loglevel("quiet kho=on") == 4
    assert console_loglevel("loglevel=3 debug") == 10
    assert on_console(Record("info", 0, "x"), 7) and not on_console(Record("debug", 0, "x"), 7)
    assert not on_console(Record("warn", 0, "x"), 4)


# --- syslog(2) ------------------------------------------------------------------------------

def test_syslog_reads_clears_and_sets_the_console_level() -> None:
    from khofs.engine.syslog import WAIT, do_syslog
    from tests.machine_helpers import FakeUser

    system = boot_system(cmdline="kho=on")
    log, line = system.kernel.log, system.kernel.params.cmdline
    user = FakeUser()
    user.put(0x1000, bytes(4096))
    first = f"<5>[{log.records[0].seconds:12.6f}] Kernel command line: kho=on\n".encode()
    assert do_syslog(log, line, user, 10, 0, 0) == 128 << 10
    assert do_syslog(log, line, user, 3, 0x1000, 4096) == len(first)
    assert user.memory[0x1000][:len(first)] == first
    assert do_syslog(log, line, user, 3, 0x1000, 10) == 0  # nothing whole fits
    assert do_syslog(log, line, user, 9, 0, 0) == len(first)
    assert do_syslog(log, line, user, 2, 0x1000, 10) == 10  # READ takes a part
    assert do_syslog(log, line, user, 9, 0, 0) == len(first) - 10
    assert do_syslog(log, line, user, 2, 0x1000, 4096) == len(first) - 10
    assert do_syslog(log, line, user, 2, 0x1000, 4096) is WAIT
    assert do_syslog(log, line, user, 5, 0, 0) == 0
    assert do_syslog(log, line, user, 3, 0x1000, 4096) == 0  # cleared
    assert do_syslog(log, line, user, 8, 0, 9) == -22
    assert do_syslog(log, line, user, 8, 0, 1) == 0 and log.console_level == 1
    assert do_syslog(log, line, user, 7, 0, 0) == 0 and log.console_level is None
    assert do_syslog(log, line, user, 3, 0xDEAD0000, 4096) == 0  # nothing to copy
    assert do_syslog(log, line, user, 11, 0, 0) == -22
    assert do_syslog(log, line, FakeUser(caps=set()), 10, 0, 0) == -1  # dmesg_restrict
