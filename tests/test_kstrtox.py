"""khofs.lib.kstrtox against exact examples and against a C-shaped reference of lib/kstrtox.c
(tests/reference_kstrtox.py)."""

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
from tests.reference_kstrtox import (
    U64,
    mem,
    ref_fixup_radix,
    ref_kstrtobool,
    ref_kstrtouint,
    ref_kstrtoull,
    ref_parse_integer_limit,
)

EINVAL = -errno.EINVAL
ERANGE = -errno.ERANGE
PROPS = settings(max_examples=300, deadline=None)


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
