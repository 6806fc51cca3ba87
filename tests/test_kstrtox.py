"""khofs.lib.kstrtox against exact examples and against a C-shaped reference of lib/kstrtox.c.

The reference below walks a NUL-terminated byte array with an integer "pointer", exactly as
the C code walks its `const char *`, with 64-bit wrap-around spelled out. It is kept apart from
the production code on purpose (and test_cmdline.py reuses it for memparse and kho_scratch).
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from khofs.lib.kstrtox import (
    KSTRTOX_OVERFLOW,
    kstrtobool,
    kstrtouint,
    kstrtoull,
    parse_integer_fixup_radix,
    parse_integer_limit,
)

EINVAL = -errno.EINVAL
ERANGE = -errno.ERANGE
U64 = 0xFFFF_FFFF_FFFF_FFFF
OVF = 1 << 31
PROPS = settings(max_examples=300, deadline=None)


# --- the reference: lib/kstrtox.c, pointer by pointer ---------------------------------------

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


# --- random C strings that hit the interesting cases -----------------------------------------

ALPHABET = b"0123456789xX+-\n\0 ,%:kKmMgGtTpPeEabcdefABCDEFyYnNoOqz\"=\t"
PIECES = [b"0x", b"0X", b"+", b"0", b"18446744073709551615", b"18446744073709551616",
          b"ffffffffffffffff", b"1fffffffffffffff", b"1777777777777777777777",
          b"2000000000000000000000", b"4294967295", b"4294967296", b"on", b"of"]

chunk = st.one_of(
    st.sampled_from(PIECES),
    st.lists(st.sampled_from(list(ALPHABET)), max_size=6).map(bytes),
)
cstrings = st.lists(chunk, max_size=5).map(b"".join)
bases = st.sampled_from([0, 8, 10, 16])


# --- examples ---------------------------------------------------------------------------

@pytest.mark.parametrize(("s", "expected"), [
    (b"1", (0, 1)),
    (b"1\n", (0, 1)),
    (b"+1", (0, 1)),
    (b"0x1", (0, 1)),
    (b"0X10", (0, 16)),
    (b"0xAbC\n", (0, 0xABC)),
    (b"01", (0, 1)),
    (b"017", (0, 15)),
    (b"0", (0, 0)),
    (b"00", (0, 0)),
    (b"1\0junk", (0, 1)),
    (b"1\n\0junk", (0, 1)),
    (b"18446744073709551615", (0, U64)),
    (b"0xffffffffffffffff", (0, U64)),
    (b"01777777777777777777777", (0, U64)),
    (b" 1", (EINVAL, 0)),
    (b"1 ", (EINVAL, 0)),
    (b"-1", (EINVAL, 0)),
    (b"-0", (EINVAL, 0)),
    (b"++1", (EINVAL, 0)),
    (b"+", (EINVAL, 0)),
    (b"08", (EINVAL, 0)),
    (b"0x", (EINVAL, 0)),
    (b"0X", (EINVAL, 0)),
    (b"0xg", (EINVAL, 0)),
    (b"\n", (EINVAL, 0)),
    (b"1\n\n", (EINVAL, 0)),
    (b"1\r\n", (EINVAL, 0)),
    (b"", (EINVAL, 0)),
    (b"\0" b"1", (EINVAL, 0)),
    (b"1k", (EINVAL, 0)),
    (b"18446744073709551616", (ERANGE, 0)),
    (b"99999999999999999999999", (ERANGE, 0)),
    (b"0x10000000000000000", (ERANGE, 0)),
    (b"02000000000000000000000", (ERANGE, 0)),
    (b"18446744073709551616junk", (ERANGE, 0)),  # overflow is reported before junk
])
def test_kstrtoull_base0_examples(s: bytes, expected: tuple[int, int]) -> None:
    assert kstrtoull(s, 0) == expected


@pytest.mark.parametrize(("s", "base", "expected"), [
    (b"ff", 16, (0, 255)),
    (b"0xff", 16, (0, 255)),
    (b"0x", 16, (EINVAL, 0)),  # explicit base 16 skips "0x" even with no digit after it
    (b"0x5", 10, (EINVAL, 0)),
    (b"010", 10, (0, 10)),
    (b"010", 8, (0, 8)),
    (b"8", 8, (EINVAL, 0)),
    (b"1A", 10, (EINVAL, 0)),
])
def test_kstrtoull_explicit_base(s: bytes, base: int, expected: tuple[int, int]) -> None:
    assert kstrtoull(s, base) == expected


@pytest.mark.parametrize(("s", "expected"), [
    (b"4294967295", (0, 0xFFFF_FFFF)),
    (b"4294967296", (ERANGE, 0)),
    (b"18446744073709551616", (ERANGE, 0)),
    (b"0x10", (EINVAL, 0)),
    (b"+7\n", (0, 7)),
    (b"010", (0, 10)),
])
def test_kstrtouint_base10(s: bytes, expected: tuple[int, int]) -> None:
    assert kstrtouint(s, 10) == expected


@pytest.mark.parametrize(("s", "expected"), [
    (None, (EINVAL, False)),
    (b"", (EINVAL, False)),
    (b"1", (0, True)), (b"y", (0, True)), (b"Y", (0, True)),
    (b"t", (0, True)), (b"T", (0, True)), (b"yes", (0, True)), (b"true", (0, True)),
    (b"1junk", (0, True)), (b"on", (0, True)), (b"ON", (0, True)), (b"oN", (0, True)),
    (b"onward", (0, True)),
    (b"0", (0, False)), (b"n", (0, False)), (b"N", (0, False)), (b"f", (0, False)),
    (b"F", (0, False)), (b"no", (0, False)), (b"false", (0, False)), (b"0x1", (0, False)),
    (b"of", (0, False)), (b"off", (0, False)), (b"OF", (0, False)), (b"offset", (0, False)),
    (b"o", (EINVAL, False)), (b"ox", (EINVAL, False)), (b"enable", (EINVAL, False)),
    (b"disable", (EINVAL, False)), (b" y", (EINVAL, False)), (b"\0y", (EINVAL, False)),
    (b"2", (EINVAL, False)), (b"+1", (EINVAL, False)), (b"o\0n", (EINVAL, False)),
])
def test_kstrtobool_examples(s: bytes | None, expected: tuple[int, bool]) -> None:
    assert kstrtobool(s) == expected


@pytest.mark.parametrize(("s", "base", "expected"), [
    (b"0x1f", 0, (b"1f", 16)),
    (b"0X1f", 0, (b"1f", 16)),
    (b"0x", 0, (b"0x", 8)),  # no hex digit after "0x": octal, and the 'x' stays
    (b"0xg", 0, (b"0xg", 8)),
    (b"0xg", 16, (b"g", 16)),
    (b"0", 0, (b"0", 8)),
    (b"7", 0, (b"7", 10)),
    (b"", 0, (b"", 10)),
    (b"0x1", 10, (b"0x1", 10)),
    (b"0x1\0z", 0, (b"1", 16)),
])
def test_fixup_radix_examples(s: bytes, base: int, expected: tuple[bytes, int]) -> None:
    assert parse_integer_fixup_radix(s, base) == expected


@pytest.mark.parametrize(("s", "base", "limit", "expected"), [
    (b"123", 10, 2, (2, 12)),
    (b"123", 10, 0, (0, 0)),
    (b"12a", 16, 9, (3, 0x12A)),
    (b"12a", 10, 9, (2, 12)),
    (b"18446744073709551616", 10, 99, (20 | KSTRTOX_OVERFLOW, 0)),
    (b"ffffffffffffffff1", 16, 99, (17 | KSTRTOX_OVERFLOW, 0xFFFF_FFFF_FFFF_FFF1)),
    (b"1\0" b"23", 10, 9, (1, 1)),
])
def test_parse_integer_limit_examples(s: bytes, base: int, limit: int,
                                      expected: tuple[int, int]) -> None:
    assert parse_integer_limit(s, base, limit) == expected


# --- properties against the reference -----------------------------------------------------

@PROPS
@given(cstrings, bases)
def test_fixup_radix_matches_reference(s: bytes, base: int) -> None:
    m = mem(s)
    p, ref_base = ref_fixup_radix(m, 0, base)
    rest, got_base = parse_integer_fixup_radix(s, base)
    assert got_base == ref_base
    assert rest == bytes(m[p:m.index(0, p)])


@PROPS
@given(cstrings, st.sampled_from([2, 8, 10, 16]), st.integers(0, 40))
def test_parse_integer_limit_matches_reference(s: bytes, base: int, limit: int) -> None:
    assert parse_integer_limit(s, base, limit) == ref_parse_integer_limit(mem(s), 0, base, limit)


@PROPS
@given(cstrings, bases)
def test_kstrtoull_matches_reference(s: bytes, base: int) -> None:
    assert kstrtoull(s, base) == ref_kstrtoull(s, base)
    assert kstrtoull(s[:23], base) == ref_kstrtoull(s[:23], base)


@PROPS
@given(cstrings, bases)
def test_kstrtouint_matches_reference(s: bytes, base: int) -> None:
    assert kstrtouint(s, base) == ref_kstrtouint(s, base)


@PROPS
@given(st.one_of(st.none(), cstrings))
def test_kstrtobool_matches_reference(s: bytes | None) -> None:
    assert kstrtobool(s) == ref_kstrtobool(s)


@PROPS
@given(st.integers(0, 1 << 66), st.sampled_from(["%d", "0x%x", "0X%X", "0%o", "+%d"]),
       st.sampled_from(["", "\n"]))
def test_kstrtoull_against_python_integers(n: int, fmt: str, tail: str) -> None:
    text = (fmt % n + tail).encode()
    if n > U64:
        assert kstrtoull(text, 0) == (ERANGE, 0)
    else:
        assert kstrtoull(text, 0) == (0, n)
