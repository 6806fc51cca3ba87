"""A C-shaped reference of lib/kstrtox.c (and of lib/vsprintf.c simple_strntoull and
lib/cmdline.c memparse, built on it), for the tests to check khofs.lib against.

It walks a NUL-terminated byte array with an integer "pointer", exactly as the C code walks
its `const char *`, with 64-bit wrap-around spelled out. It is kept apart from the production
code on purpose: test_kstrtox.py, test_cmdline.py (memparse, kho_scratch) and test_fuzz.py
(writes to finalize) use it.
"""

from __future__ import annotations

import errno

EINVAL = -errno.EINVAL
ERANGE = -errno.ERANGE
U64 = 0xFFFF_FFFF_FFFF_FFFF
OVF = 1 << 31  # _parse_integer_limit's KSTRTOX_OVERFLOW


def mem(s: bytes) -> list[int]:
    """A C char array holding `s` and a terminating NUL."""
    return [*s, 0]


def ref_tolower(c: int) -> int:
    return c | 0x20


def ref_isxdigit(c: int) -> bool:
    return 48 <= c <= 57 or 97 <= c <= 102 or 65 <= c <= 70


def ref_fixup_radix(m: list[int], p: int, base: int) -> tuple[int, int]:
    if base == 0:
        if m[p] == 48:  # '0'
            base = 16 if ref_tolower(m[p + 1]) == 120 and ref_isxdigit(m[p + 2]) else 8
        else:
            base = 10
    if base == 16 and m[p] == 48 and ref_tolower(m[p + 1]) == 120:
        p += 2
    return p, base


def ref_parse_integer_limit(m: list[int], p: int, base: int, max_chars: int) -> tuple[int, int]:
    res = 0
    rv = 0
    while max_chars:
        max_chars -= 1
        c = m[p]
        lc = c | 0x20
        if 48 <= c <= 57:
            val = c - 48
        elif 97 <= lc <= 102:
            val = lc - 97 + 10
        else:
            break
        if val >= base:
            break
        if res & 0xF000_0000_0000_0000 and res > (U64 - val) // base:
            rv |= OVF
        res = (res * base + val) & U64
        rv += 1
        p += 1
    return rv, res


def ref_kstrtoull(s: bytes, base: int) -> tuple[int, int]:
    m = mem(s)
    p = 0
    if m[p] == 43:  # '+'
        p += 1
    p, base = ref_fixup_radix(m, p, base)
    rv, res = ref_parse_integer_limit(m, p, base, 0x7FFF_FFFF)
    if rv & OVF:
        return ERANGE, 0
    if rv == 0:
        return EINVAL, 0
    p += rv
    if m[p] == 10:
        p += 1
    if m[p]:
        return EINVAL, 0
    return 0, res


def ref_kstrtouint(s: bytes, base: int) -> tuple[int, int]:
    rv, tmp = ref_kstrtoull(s, base)
    if rv < 0:
        return rv, 0
    if tmp != tmp & 0xFFFF_FFFF:
        return ERANGE, 0
    return 0, tmp


def ref_kstrtobool(s: bytes | None) -> tuple[int, bool]:
    if s is None:
        return EINVAL, False
    m = mem(s)
    c0 = chr(m[0])
    if c0 in ("y", "Y", "t", "T", "1"):
        return 0, True
    if c0 in ("n", "N", "f", "F", "0"):
        return 0, False
    if c0 in ("o", "O"):
        c1 = chr(m[1])
        if c1 in ("n", "N"):
            return 0, True
        if c1 in ("f", "F"):
            return 0, False
    return EINVAL, False


def ref_simple_strntoull(m: list[int], p: int, base: int, max_chars: int) -> tuple[int, int]:
    """lib/vsprintf.c simple_strntoull: (result, endp)."""
    cp, base = ref_fixup_radix(m, p, base)
    prefix_chars = cp - p
    result = 0
    if prefix_chars < max_chars:
        rv, result = ref_parse_integer_limit(m, cp, base, max_chars - prefix_chars)
        cp += rv & ~OVF
    else:
        cp = p + max_chars
    return result, cp


def ref_memparse(m: list[int], p: int) -> tuple[int, int]:
    """lib/cmdline.c memparse: (ret, endptr), the switch's fallthrough spelled out."""
    ret, endptr = ref_simple_strntoull(m, p, 0, 0x7FFF_FFFF)
    cases = ["Ee", "Pp", "Tt", "Gg", "Mm", "Kk"]
    hit = [i for i, labels in enumerate(cases) if chr(m[endptr]) in labels]
    if hit:
        for _ in cases[hit[0]:]:  # case 'E': ret <<= 10; fallthrough; case 'P': ...
            ret = (ret << 10) & U64
        endptr += 1
    return ret, endptr
