"""`khofs machine show`: a booted kernel's memory map, boot reservations, the totals the KHO
scratch formula reads, and the scratch table exactly as `scratch_phys`/`scratch_len` print it
(`bootmem_phys`/`bootmem_len` from 7.4).
"""

from __future__ import annotations

import json
from typing import Any

from khofs.engine.kernel import Kernel
from khofs.engine.memblock import round_up
from khofs.lib.cmdline import encode_arg, parameq, split_args
from khofs.lib.kstrtox import kstrtobool
from khofs.lib.sizes import readable_size


def scratch_text(kernel: Kernel) -> tuple[str, str]:
    """The two show files, rendered by the engine's own show functions."""
    return kernel.kho.scratch_show("addr"), kernel.kho.scratch_show("size")


def kho_off_reason(cmdline: str) -> str:
    """Why KHO is off: the last kho= value kho_parse_enable accepted (each one it accepts
    replaces the one before), or that none is there."""
    accepted = None
    for param, val in split_args(cmdline):
        if parameq(param, "kho"):
            err, _ = kstrtobool(None if val is None else encode_arg(val))
            if not err:
                accepted = val
    if accepted is None:
        return "kho=on is not on the command line"
    return f"the command line has kho={accepted}"


def _status(kernel: Kernel) -> str:
    if not kernel.params.kho:
        return f"off ({kho_off_reason(kernel.params.cmdline)})"
    if not kernel.kho_enabled:
        return "disabled during boot: a scratch area could not be allocated"
    return "on"


def _formula_lines(kernel: Kernel) -> list[str]:
    """How scratch_size_update and scratch_size_node got the sizes."""
    p = kernel.params.scratch
    align = kernel.machine.arch.pageblock_size
    t = kernel.kern_totals
    if not p.scale:
        param = "kho_bootmem" if kernel.era.bootmem else "kho_scratch"
        return [f"  explicit sizes ({param}=): lowmem {p.lowmem:#x}, global {p.global_:#x}, "
                f"per node {p.pernode:#x}"]
    lowmem = round_up(t.low * p.scale // 100, align)
    lines = [f"  scale {p.scale}%, rounded up to the pageblock ({readable_size(align)})",
             f"  lowmem = round_up({t.low:#x} * {p.scale} / 100) = {lowmem:#x}",
             f"  global = round_up({t.all:#x} * {p.scale} / 100 - {lowmem:#x}) = "
             f"{round_up((t.all * p.scale // 100 - lowmem) % (1 << 64), align):#x}"]
    for nid, k in t.nodes.items():
        lines.append(f"  node {nid} = round_up({k:#x} * {p.scale} / 100) = "
                     f"{round_up(k * p.scale // 100, align):#x}")
    return lines


def show_text(kernel: Kernel) -> str:
    m = kernel.machine
    out = [f"machine {m.name}: {m.description}",
           f"arch {m.arch.name}, {readable_size(m.arch.page_size)} pages, pageblock "
           f"{readable_size(m.arch.pageblock_size)}, ARCH_LOW_ADDRESS_LIMIT {m.low_limit:#x}",
           f"kernel: {kernel.profile}",
           f"command line: {kernel.params.cmdline}", f"KHO: {_status(kernel)}", "",
           "memory (memblock.memory):"]
    for reg in kernel.memblock.memory.regions:
        out.append(f"  node {reg.nid}  {reg.base:#018x}-{reg.end - 1:#018x}  "
                   f"{readable_size(reg.size):>10}")
    out += ["", "boot reservations, in boot order (kern: MEMBLOCK_RSRV_KERN):",
            f"  {'start':>18}  {'size':>12}  node  kern  {'what':44}  by"]
    for r in kernel.reservations:
        node = "-" if r.nid < 0 else str(r.nid)
        out.append(f"  {r.base:#018x}  {r.size:#12x}  {node:>4}  {'yes' if r.kern else 'no':>4}  "
                   f"{r.what:44}  {r.func}")
    t = kernel.kern_totals
    out += ["", "memblock_reserved_kern_size before the scratch areas:",
            f"  below ARCH_LOW_ADDRESS_LIMIT  {t.low:#14x}  {readable_size(t.low)}",
            f"  anywhere                      {t.all:#14x}  {readable_size(t.all)}"]
    out += [f"  node {nid:<25}{k:#14x}  {readable_size(k)}" for nid, k in t.nodes.items()]
    if kernel.params.kho:
        out += ["", "scratch sizes (kho_reserve_scratch):", *_formula_lines(kernel)]
    if kernel.kho_enabled:
        phys, size = scratch_text(kernel)
        phys_name, len_name = kernel.kho.scratch_names()
        out += ["", f"{phys_name}:", phys.rstrip("\n"), "", f"{len_name}:", size.rstrip("\n")]
    return "\n".join(out) + "\n"


def show_json(kernel: Kernel) -> str:
    m = kernel.machine
    t = kernel.kern_totals
    doc: dict[str, Any] = {
        "machine": {"name": m.name, "description": m.description, "arch": m.arch.name,
                    "page_size": m.arch.page_size, "pageblock_size": m.arch.pageblock_size,
                    "cpus": m.cpus, "low_limit": m.low_limit,
                    "nodes": [{"nid": n.nid, "ranges": [list(r) for r in n.ranges]}
                              for n in m.nodes]},
        "kernel": {"release": kernel.profile.release, "era": kernel.era.name,
                   "debug": kernel.profile.debug},
        "cmdline": kernel.params.cmdline,
        "kho": _status(kernel),
        "memory": [{"nid": r.nid, "start": r.base, "size": r.size}
                   for r in kernel.memblock.memory.regions],
        "reservations": [{"what": r.what, "by": r.func, "start": r.base, "size": r.size,
                          "nid": r.nid, "kern": r.kern} for r in kernel.reservations],
        "kern_reserved": {"low": t.low, "all": t.all,
                          "nodes": {str(k): v for k, v in t.nodes.items()}},
        "scratch": [{"addr": s.addr, "size": s.size} for s in kernel.scratch],
    }
    if kernel.kho_enabled:
        phys_name, len_name = kernel.kho.scratch_names()
        doc[phys_name], doc[len_name] = scratch_text(kernel)
    return json.dumps(doc, indent=2) + "\n"
