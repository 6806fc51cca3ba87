"""Live updates across kernel versions, and what survives them (`khofs compat`).

live_update boots one kernel version with producers, finalizes where that version has
finalize (what lib/test_kho's selftest does before kexec up to 7.0), kexecs into another
version in the same RAM, and classifies what the next kernel made of the handover:

- `no-kho`: it took no handover (refused at kho_populate, or none was passed);
- `corrupted`: a producer's check failed (test_kho's restore, a reserve_mem region revived
  where the memory map did not reserve it, a fill pattern, a config producer's sub-tree that
  did not come back byte for byte), or preserved pages were left
  unreserved, or a reservation lies where the next kernel has no memory map (it would fault
  stamping page->private);
- `leaked:N`: everything survived, but N pages are reserved that nobody preserved;
- `restored`: everything survived and nothing else is held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from khofs.engine.era import Profile
from khofs.engine.kernel import Kernel
from khofs.engine.machine import Machine
from khofs.engine.system import System
from khofs.lib.ranges import Ranges, merge, minus
from khofs.producers.config_producer import ConfigProducer
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.spec import ProducerSpec
from khofs.producers.table import DriverFactory, boot_table

DEFAULT_REGION = "reserve_mem=64M:4096:compat"  # the reserve_mem region compat hands over
Blocks = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Cell:
    """One live update's outcome: its token and the one-line reason behind it."""

    token: str
    reason: str


def live_update(machine: Machine, cmdline: str,
                drivers: Sequence[ProducerSpec | DriverFactory], frm: Profile, to: Profile,
                seed: int = 0) -> Cell:
    """Boot `frm`, finalize where it can, kexec into `to`, classify (see the module)."""
    s = System(machine, cmdline, boot_table(drivers), seed=seed, profile=frm)
    k = s.kernel
    if not k.kho_enabled:
        return Cell("no-kho", f"{frm.release}: KHO is not enabled")
    if k.era.finalize:
        err = k.kho.finalize_set(1)
        if err:
            return Cell("no-kho", f"{frm.release}: writing 1 to finalize failed: {err}")
    preserved = list(k.kho.preserved_blocks())
    err, message = s.kexec_load(profile=to)
    if err:
        return Cell("no-kho", message)
    s.kexec_execute()
    return classify(s.kernel, preserved, frm)


def _ranges(blocks: Blocks, page: int) -> Ranges:
    """The memory a list of (phys, order) blocks covers."""
    return merge([(p, p + (page << o)) for p, o in blocks])


def _size(ranges: Ranges) -> int:
    return sum(end - start for start, end in ranges)


def classify(k: Kernel, preserved: Blocks, frm: Profile) -> Cell:
    """What the kernel `k`, just booted by kexec, made of a handover of `preserved`."""
    to = k.profile
    if k.kho_in is None:
        said = [t.removeprefix("KHO: ") for t in k.log.texts() if t.startswith("KHO: ")
                and ("setup:" in t or "disabling" in t or "failed to get" in t)]
        why = "; ".join(said) if said else f"{frm.release} passed no handover"
        return Cell("no-kho", f"{to.release}: {why}")
    page = k.mem.page_size
    kept, held = _ranges(preserved, page), _ranges(k.kho_in.reserved, page)
    problems = _producer_problems(k, held)
    lost = minus(kept, held)
    if lost:
        problems.append(f"{_size(lost) // page} preserved pages not reserved (lowest at "
                        f"0x{lost[0][0]:x})")
    leaked = minus(held, kept)
    unmapped = minus(leaked, _memmap(k))
    if unmapped:
        problems.append(f"a reservation at 0x{unmapped[0][0]:x} has no memory map: the "
                        "kernel would fault stamping its page->private")
    if problems:
        return Cell("corrupted", "; ".join(problems))
    if leaked:
        n = _size(leaked) // page
        return Cell(f"leaked:{n}", f"{n} pages reserved that nobody preserved (from "
                    f"0x{leaked[0][0]:x})")
    return Cell("restored", "; ".join(_survivors(k)) or "nothing to hand over")


def _producer_problems(k: Kernel, held: Ranges) -> list[str]:
    """What the next kernel's producers say did not survive."""
    out = []
    for t in k.drivers:
        if isinstance(t, KhoTest) and t.restored is False:
            out.append(f"test_kho: the restore failed ({t.why})")
        elif isinstance(t, KhoTest) and t.restored is None:
            out.append("test_kho: no kho_test sub-tree came")
    for name, start, size in k.reserved_mem:
        if f"Revived memory reservation '{name}' from KHO" not in k.log.texts():
            out.append(f"reserve_mem '{name}' was not revived")
        elif minus([(start, start + size)], held):
            out.append(f"reserve_mem '{name}' was revived at 0x{start:x} but the memory map "
                       "did not reserve it")
    out += [t.removeprefix("khofs: ") for t in k.log.texts()
            if t.startswith("khofs: producer ") and "corrupted" in t]
    for p in k.drivers:
        if isinstance(p, ConfigProducer) and _incoming(k, p.name) != p.data:
            out.append(f"producer {p.name}: its sub-tree did not come back as handed over")
    return out


def _incoming(k: Kernel, name: str) -> bytes | None:
    """The bytes of an incoming sub-tree (KhoIn.retrieve_bytes), or None."""
    return k.kho_in.retrieve_bytes(name) if k.kho_in is not None else None


def _survivors(k: Kernel) -> list[str]:
    said = []
    if any(isinstance(t, KhoTest) and t.restored for t in k.drivers):
        said.append("test_kho restored")
    said += [f"reserve_mem '{name}' revived" for name, _s, _z in k.reserved_mem]
    said += [f"{p.name} came back as handed over" for p in k.drivers
             if isinstance(p, ConfigProducer)]
    said += [t.removeprefix("khofs: ") for t in k.log.texts()
             if t.startswith("khofs: producer ") and t.endswith("intact")]
    return said


def _memmap(k: Kernel) -> Ranges:
    """SPARSEMEM_VMEMMAP: the sections that hold some RAM have struct pages."""
    section = k.machine.arch.section_size
    covered = [(start - start % section, -(-end // section) * section)
               for node in k.machine.nodes for start, end in node.ranges]
    return merge(covered)


def compat_matrix(machine: Machine, cmdline: str,
                  drivers: Sequence[ProducerSpec | DriverFactory],
                  profiles: Sequence[Profile], seed: int = 0) -> list[list[Cell]]:
    """Every live update from each profile (rows) to each profile (columns)."""
    return [[live_update(machine, cmdline, drivers, frm, to, seed) for to in profiles]
            for frm in profiles]
