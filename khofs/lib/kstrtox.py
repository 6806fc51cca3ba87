"""lib/kstrtox.c: the kernel's strict string-to-integer conversions.

Inputs are C strings held in Python bytes: the first NUL byte ends the string, and reading
past the end reads that NUL, as the C code does. Results follow the kernel's convention:
`(0, value)` on success, `(-errno, 0)` on failure. Arithmetic wraps modulo 2**64 where the
C code uses `unsigned long long`.
"""

from __future__ import annotations

import errno

KSTRTOX_OVERFLOW = 1 << 31  # lib/kstrtox.h: or-ed into _parse_integer's count on overflow
ULLONG_MAX = (1 << 64) - 1
UINT_MAX = (1 << 32) - 1
_TOP_NIBBLE = 0xF << 60  # ~0ull << 60


def cstr(s: bytes) -> bytes:
    """The C string `s` points to: everything before the first NUL."""
    nul = s.find(b"\0")
    return s if nul < 0 else s[:nul]


def _at(s: bytes, i: int) -> int:
    """`s[i]` of a C string: past its end lies the terminating NUL."""
    return s[i] if i < len(s) else 0


def _tolower(c: int) -> int:
    """include/linux/ctype.h _tolower: a plain `c | 0x20`, right for letters only."""
    return c | 0x20


def _isxdigit(c: int) -> bool:
    """lib/ctype.c: _X is set for 0-9, a-f and A-F only (none of the Latin-1 half)."""
    return c in b"0123456789abcdefABCDEF"


def parse_integer_fixup_radix(s: bytes, base: int) -> tuple[bytes, int]:
    """_parse_integer_fixup_radix: guess the base when it is 0, skip a "0x" prefix for 16.

    Returns the string from where digits start, and the base to use. Base 0 picks 16 only when
    a hex digit follows "0x"; otherwise a leading '0' means octal (and the 'x' is not skipped).
    """
    s = cstr(s)
    if base == 0:
        if _at(s, 0) != ord("0"):
            base = 10
        elif _tolower(_at(s, 1)) == ord("x") and _isxdigit(_at(s, 2)):
            base = 16
        else:
            base = 8
    if base == 16 and _at(s, 0) == ord("0") and _tolower(_at(s, 1)) == ord("x"):
        s = s[2:]
    return s, base


def _digit(c: int) -> int | None:
    """The value of one digit character in _parse_integer_limit, or None to stop."""
    if ord("0") <= c <= ord("9"):
        return c - ord("0")
    lc = c | 0x20  # the kernel deliberately does not call tolower() here
    if ord("a") <= lc <= ord("f"):
        return lc - ord("a") + 10
    return None


def parse_integer_limit(s: bytes, base: int, max_chars: int) -> tuple[int, int]:
    """_parse_integer_limit: convert at most `max_chars` digits of `base`.

    Returns (rv, result): rv counts the digits consumed, or-ed with KSTRTOX_OVERFLOW if the
    value passed 2**64 - 1; result is the value modulo 2**64, as the C code computes it.
    """
    s = cstr(s)
    res = 0
    rv = 0
    i = 0
    while max_chars > 0:
        max_chars -= 1
        val = _digit(_at(s, i))
        if val is None or val >= base:
            break
        # The kernel only checks when the value is within reach of overflow (base <= 16).
        if res & _TOP_NIBBLE and res > (ULLONG_MAX - val) // base:
            rv |= KSTRTOX_OVERFLOW
        res = (res * base + val) & ULLONG_MAX
        rv += 1
        i += 1
    return rv, res


def parse_integer(s: bytes, base: int) -> tuple[int, int]:
    """_parse_integer: _parse_integer_limit without a limit (INT_MAX in the kernel)."""
    return parse_integer_limit(s, base, (1 << 31) - 1)


def _kstrtoull(s: bytes, base: int) -> tuple[int, int]:
    """_kstrtoull: digits, then at most one '\\n', then the end of the string."""
    s, base = parse_integer_fixup_radix(s, base)
    rv, res = parse_integer(s, base)
    if rv & KSTRTOX_OVERFLOW:
        return -errno.ERANGE, 0
    if rv == 0:
        return -errno.EINVAL, 0
    rest = s[rv:]
    if _at(rest, 0) == ord("\n"):
        rest = rest[1:]
    if _at(rest, 0):
        return -errno.EINVAL, 0
    return 0, res


def kstrtoull(s: bytes, base: int) -> tuple[int, int]:
    """kstrtoull: an optional '+' (never '-'), then _kstrtoull."""
    s = cstr(s)
    if _at(s, 0) == ord("+"):
        s = s[1:]
    return _kstrtoull(s, base)


def kstrtouint(s: bytes, base: int) -> tuple[int, int]:
    """kstrtouint: kstrtoull, then -ERANGE unless the value fits an unsigned int."""
    err, val = kstrtoull(s, base)
    if err:
        return err, 0
    if val > UINT_MAX:
        return -errno.ERANGE, 0
    return 0, val


_TRUE_FIRST = b"yYtT1"
_FALSE_FIRST = b"nNfF0"


def kstrtobool(s: bytes | None) -> tuple[int, bool]:
    """kstrtobool (6.16, with 't'/'f' since 5.19): only the first character decides, or the
    second after an 'o'/'O' ("on"/"of..."). Anything after that is ignored: "yes", "true1",
    "0x", "offset" are all accepted. A NULL string (a bare `param` with no '=') is -EINVAL.
    """
    if s is None:
        return -errno.EINVAL, False
    s = cstr(s)
    first = _at(s, 0)
    if first in _TRUE_FIRST:
        return 0, True
    if first in _FALSE_FIRST:
        return 0, False
    if first in b"oO":
        second = _at(s, 1)
        if second in b"nN":
            return 0, True
        if second in b"fF":
            return 0, False
    return -errno.EINVAL, False
