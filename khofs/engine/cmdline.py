"""The boot command line, read the way a 6.16 kernel reads it, for the parameters khofs knows.

The kernel reads its command line twice (init/main.c), each time with parse_args:
1. parse_early_param, which x86-64 and arm64 call from setup_arch: every argument goes to
   do_early_param, which runs each matching early_param handler (`kho=`, `kho_scratch=`)
   and warns "Malformed early option" when one fails;
2. after start_kernel has logged "Kernel command line: ...", parse_args("Booting kernel"),
   where unknown_bootoption -> obsolete_checksetup runs the __setup handlers, among them
   `reserve_mem=` (mm/memblock.c). A __setup handler's failure is not reported by the
   caller, and 6.16's reserve_mem logs nothing itself.
So the early parameters' messages come before "Kernel command line:".
Before either, the kernel has kept at most COMMAND_LINE_SIZE - 1 bytes of what the boot loader
gave (`boot_command_line`): everything, the log line and /proc/cmdline included, sees only
that much. Handlers run in
command-line order and update BootParams as the kernel's handlers update its variables:
a rejected value changes nothing. Parameters khofs does not know belong to others: ignored.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from khofs.engine.era import ERA_6_16, Era
from khofs.engine.machine import SMP_CACHE_BYTES
from khofs.engine.params import BootParams, ReserveMem, ScratchParams
from khofs.engine.printk import Printk
from khofs.lib.cmdline import (
    decode_arg,
    encode_arg,
    isspace,
    memparse,
    parameq,
    parameqn,
    split_args,
)
from khofs.lib.kstrtox import kstrtobool, kstrtouint

EarlyHandler = Callable[[str | None, BootParams, Printk], int]
SetupHandler = Callable[[str, BootParams, Printk], int]

# kernel/kexec_handover.c kho_parse_scratch_size: `char s_scale[11]`, the digits and a NUL
SCALE_BUF_LEN = 11
# mm/memblock.c
RESERVE_MEM_MAX_ENTRIES = 8
RESERVE_MEM_NAME_SIZE = 16
# arch/x86/include/asm/setup.h and arch/arm64/include/uapi/asm/setup.h: 2048 on both
COMMAND_LINE_SIZE = 2048


def _s32(v: int) -> int:
    """An unsigned int printed with %d."""
    v &= (1 << 32) - 1
    return v - (1 << 32) if v >> 31 else v


def _s64(v: int) -> int:
    """A u64 printed with %lld."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


# --- kernel/kexec_handover.c --------------------------------------------------------------

def kho_parse_enable(p: str | None, params: BootParams, log: Printk) -> int:
    """kho_parse_enable: kstrtobool into kho_enable, which it leaves alone on failure."""
    err, enable = kstrtobool(None if p is None else encode_arg(p))
    if err:
        return err
    params.kho = enable
    return 0


def _parse_scratch_scale(raw: bytes, scratch: ScratchParams, log: Printk) -> int:
    """The "N%" form: at most 10 characters before the '%', kstrtouint base 10."""
    if len(raw) > SCALE_BUF_LEN:
        return -errno.EINVAL
    err, scale = kstrtouint(raw[:-1], 10)
    if err:
        return err
    scratch.scale = scale
    # The kernel prints the unsigned scale with %d: above 2**31 - 1 it shows negative.
    log.notice(f"KHO: scratch scale is {_s32(scale)}%")
    return 0


def _parse_scratch_sizes(raw: bytes, scratch: ScratchParams, log: Printk,
                         strict: bool = False) -> int:
    """The "lowmem,global,pernode" form: three memparse sizes, each consuming at least one
    character. 6.16: each non-zero (after the suffix shift wraps at 2**64), and anything
    after the third is ignored. 6.18 on (`strict`): a part may be 0 but not all (their
    size_t sum wraps too), and nothing may follow the third."""
    sizes: list[int] = []
    pos = 0
    for i in range(3):
        if i > 0:
            if raw[pos:pos + 1] != b",":
                return -errno.EINVAL
            pos += 1
        size, used = memparse(raw[pos:])
        if not used or (not size and not strict):
            return -errno.EINVAL
        sizes.append(size)
        pos += used
    if strict and (not sum(sizes) % (1 << 64) or raw[pos:]):
        return -errno.EINVAL
    # 6.16 quirk: nothing looks at raw[pos:], so "1G,1G,1Gjunk" or "1G,1G,1G,4G" is
    # accepted with the first three sizes (6.18 added the `if (*p)` check).
    scratch.lowmem, scratch.global_, scratch.pernode = sizes
    scratch.scale = 0
    log.notice(f"KHO: scratch areas: lowmem: {scratch.lowmem >> 20}MiB "
               f"global: {scratch.global_ >> 20}MiB pernode: {_s64(scratch.pernode >> 20)}MiB")
    return 0


def kho_parse_scratch_size(p: str | None, params: BootParams, log: Printk) -> int:
    """kho_parse_scratch_size: "N%" when the value ends with '%', else three sizes."""
    if p is None:
        return -errno.EINVAL
    raw = encode_arg(p)
    if not raw:
        return -errno.EINVAL
    if raw.endswith(b"%"):
        return _parse_scratch_scale(raw, params.scratch, log)
    return _parse_scratch_sizes(raw, params.scratch, log, params.era.strict_scratch_sizes)


# --- mm/memblock.c ------------------------------------------------------------------------

def _reserve_mem_name(raw: bytes, params: BootParams) -> str | int:
    """reserve_mem's checks on NAME: 1 to 15 bytes, not all spaces, not already used."""
    if not raw or len(raw) >= RESERVE_MEM_NAME_SIZE:
        return -errno.EINVAL
    if all(isspace(c) for c in raw):
        return -errno.EINVAL
    name = decode_arg(raw)
    if any(r.name == name for r in params.reserve_mem):
        return -errno.EBUSY
    return name


def reserve_mem(p: str, params: BootParams, log: Printk) -> int:
    """reserve_mem's parsing of SIZE:ALIGN:NAME (6.16). Returns 1 when it records a request
    (a __setup handler's "handled"), or a negative errno.

    The allocation (or the revival from KHO) is left to the boot code; the 8-entry limit is
    counted over the recorded requests. An ALIGN below SMP_CACHE_BYTES, empty included
    ("1M::name"), becomes SMP_CACHE_BYTES, and that is the align recorded.
    """
    if len(params.reserve_mem) >= RESERVE_MEM_MAX_ENTRIES:
        return -errno.EBUSY
    raw = encode_arg(p)
    size, used = memparse(raw)
    if not size or not used:
        return -errno.EINVAL
    rest = raw[used:]
    if rest[:1] != b":":
        return -errno.EINVAL
    align, used = memparse(rest[1:])
    rest = rest[1 + used:]
    if rest[:1] != b":":
        return -errno.EINVAL
    name = _reserve_mem_name(rest[1:], params)
    if isinstance(name, int):
        return name
    params.reserve_mem.append(ReserveMem(size, max(align, SMP_CACHE_BYTES), name))
    return 1


# --- init/main.c --------------------------------------------------------------------------

EARLY_PARAMS: tuple[tuple[str, EarlyHandler], ...] = (
    ("kho", kho_parse_enable),
    ("kho_scratch", kho_parse_scratch_size),
)

# __setup names carry their '=' and match as a prefix of "param=value".
SETUP_PARAMS: tuple[tuple[str, SetupHandler], ...] = (
    ("reserve_mem=", reserve_mem),
)


def early_params(era: Era) -> tuple[tuple[str, EarlyHandler], ...]:
    """The era's early_params: 7.4 renamed kho_scratch= to kho_bootmem=."""
    if era.bootmem:
        return (("kho", kho_parse_enable), ("kho_bootmem", kho_parse_scratch_size))
    return EARLY_PARAMS


def do_early_param(param: str, val: str | None, params: BootParams, log: Printk) -> None:
    """do_early_param: run every early_param whose name parameq-matches."""
    for name, handler in early_params(params.era):
        if parameq(param, name) and handler(val, params, log) != 0:
            log.warn(f"Malformed early option '{param}'")


def obsolete_checksetup(param: str, val: str | None, params: BootParams, log: Printk) -> bool:
    """obsolete_checksetup on the line repair_env_string rebuilds: "param=value"."""
    line = param if val is None else f"{param}={val}"
    for prefix, handler in SETUP_PARAMS:
        n = len(prefix)
        if parameqn(line, prefix, n) and handler(line[n:], params, log):
            return True
    return False


def boot_command_line(cmdline: str) -> str:
    """What the kernel keeps of the command line it was given: the first COMMAND_LINE_SIZE - 1
    bytes, silently. arm64's early_init_dt_scan_chosen copies /chosen/bootargs with
    strscpy(cmdline, p, min(l, COMMAND_LINE_SIZE)); x86-64's boot protocol tells the boot
    loader cmdline_size = COMMAND_LINE_SIZE - 1, and setup_arch strscpy()s boot_command_line
    into command_line[COMMAND_LINE_SIZE]. Neither logs anything about the rest."""
    raw = encode_arg(cmdline)
    if len(raw) < COMMAND_LINE_SIZE:
        return cmdline
    return decode_arg(raw[:COMMAND_LINE_SIZE - 1])


def parse_cmdline(cmdline: str, log: Printk, era: Era = ERA_6_16) -> BootParams:
    """Both passes over what the kernel keeps of `cmdline`, logging what the kernel logs, in
    the kernel's order, as the era's kernel reads it."""
    cmdline = boot_command_line(cmdline)
    params = BootParams(cmdline=cmdline, era=era)
    for param, val in split_args(cmdline):
        do_early_param(param, val, params, log)
    # printk's %s stops at a NUL, as the kernel's copy of the command line does
    log.notice(f"Kernel command line: {cmdline.partition(chr(0))[0]}")
    for param, val in split_args(cmdline):
        obsolete_checksetup(param, val, params, log)
    return params
