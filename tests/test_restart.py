"""A cold restart inside the engine (System.restart, kernel_restart): the old kernel's last
line and files, new RAM, no handover, what stays and what the options change, and how boots
are numbered in the log and by the kernel."""

from __future__ import annotations

import errno

from khofs.engine.system import System
from khofs.machines.presets import MACHINES
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.spec import ProducerSpec
from khofs.producers.table import boot_table
from tests.helpers import SUB, boot_lines, boot_system, children, drivers_of, kexec_next, read_blob

ALPHA = ProducerSpec("alpha", SUB, preserve=((0x100000000, 0x200000),))


def test_restart_logs_the_old_kernels_last_line_and_boots_anew(system: System) -> None:
    kexec_next(system)
    assert system.kernel.kho_in is not None
    system.restart()
    last = [(n, rec.level, rec.text) for n, rec in system.records if n == 2][-1]
    assert last == (2, "emerg", "reboot: Restarting system")
    assert boot_lines(system, 3)[0] == "Kernel command line: kho=on"
    k = system.kernel
    assert (k.boot_number, system.log_number) == (1, 3)  # the kernel counts from 1 again
    assert k.handover is None and k.kho_in is None and system.loaded is None
    assert children(k, "kho") == ["out"]
    assert read_blob(k, "kho/out/finalize") == b"0\n"


def test_files_of_the_old_kernel_read_eio(system: System) -> None:
    assert system.kernel.kho.finalize_set(1) == 0
    opened = []
    for path in ("kho/out/finalize", "kho/out/fdt", "kho/out/scratch_phys"):
        d = system.kernel.debugfs.lookup(path)
        assert d is not None and d.fops is not None
        f = d.fops.open(d)
        assert not isinstance(f, int)
        opened.append(f)
    system.restart()
    assert [f.read(4096, 0) for f in opened] == [-errno.EIO] * 3
    assert opened[0].write(b"0\n", 0) == -errno.EIO
    assert system.kernel.debugfs.lookup("kho/out/fdt") is None


def test_restart_gives_new_ram_and_forgets_the_loaded_image(system: System) -> None:
    system.kernel.mem.write(0x100000000, b"left behind")
    assert system.kexec_load() == (0, "")
    system.restart()
    assert system.loaded is None
    assert system.kernel.mem.read(0x100000000, 11) == bytes(11)
    assert system.kexec_execute() == (-errno.EINVAL, "Nothing has been loaded!")


def test_what_is_not_given_stays() -> None:
    s = boot_system(MACHINES["server-2s"], "kho=on reserve_mem=4M:2M:trace", [ALPHA], seed=7)
    assert s.kernel.kho.finalize_set(1) == 0
    assert s.kexec_load("kho=on other") == (0, "") and s.kexec_execute() == (0, "")
    assert s.kernel.params.cmdline == "kho=on other"
    s.restart()
    k = s.kernel
    # the boot loader's command line, not the one the kexec loaded
    assert (k.machine.name, k.params.cmdline, s.seed) == ("server-2s",
                                                         "kho=on reserve_mem=4M:2M:trace", 7)
    assert k.kho.finalize_set(1) == 0
    assert children(k, "kho/out/sub_fdts") == ["alpha", "memblock"]


def test_options_change_the_machine_drivers_and_seed(system: System) -> None:
    system.restart(MACHINES["arm64-virt-64k"], "kho=on kho_scratch=10%", boot_table([ALPHA]),
                   seed=3)
    k = system.kernel
    assert (k.machine.name, k.mem.page_size, k.params.cmdline) == (
        "arm64-virt-64k", 65536, "kho=on kho_scratch=10%")
    assert system.mem.page_size == 65536
    assert k.kho.finalize_set(1) == 0
    assert children(k, "kho/out/sub_fdts") == ["alpha"]
    system.restart()  # the new machine, command line and drivers stay
    assert (system.kernel.machine.name, system.kernel.params.cmdline, system.seed) == (
        "arm64-virt-64k", "kho=on kho_scratch=10%", 3)


def test_a_restarted_kernel_randomises_as_a_new_machine_does() -> None:
    """The seed gives the same bytes after any number of earlier boots: the kernel's own
    count (api.boot, and what seeds a boot) starts at 1 on every cold boot."""
    fresh = boot_system(drivers=[KhoTest], seed=5)
    used = boot_system(drivers=[KhoTest], seed=5)
    kexec_next(used)
    used.restart()
    used.restart()
    a, b = drivers_of(fresh.kernel, KhoTest)[0], drivers_of(used.kernel, KhoTest)[0]
    assert (a.folios, a.csum) == (b.folios, b.csum)
    kexec_next(fresh)
    kexec_next(used)
    assert fresh.kernel.boot_number == used.kernel.boot_number == 2
    assert boot_lines(fresh, 2) == boot_lines(used, 5)


def test_log_numbers_go_on_across_a_handover_to_another_process(system: System) -> None:
    system.restart()
    system.restart()
    assert system.kernel.kho.finalize_set(1) == 0
    assert system.kexec_load() == (0, "")
    err, state = system.kexec_away()
    assert err == 0 and state is not None and state.boot_number == 1
    nxt = System(system.machine, state.image.handover.cmdline, system.initcalls, state=state)
    assert (nxt.kernel.boot_number, nxt.log_number) == (2, 4)
    assert boot_lines(nxt, 4)[0] == "Kernel command line: kho=on"
    assert nxt.kernel.kho_in is not None
