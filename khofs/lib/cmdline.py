"""lib/cmdline.c, lib/vsprintf.c and kernel/params.c: how the kernel reads its command line.

The kernel sees the command line as bytes ending at the first NUL; Python callers hold a str.
`encode_arg` / `decode_arg` convert between the two with "surrogateescape", so a command line
that came from argv (decoded the same way) maps back to exactly the kernel's bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

from khofs.lib.kstrtox import (
    KSTRTOX_OVERFLOW,
    ULLONG_MAX,
    cstr,
    parse_integer_fixup_radix,
    parse_integer_limit,
)

INT_MAX = (1 << 31) - 1

# lib/ctype.c: the characters with _S set: \t \n \v \f \r, space, and Latin-1 NBSP (0xa0).
# 0xa0 also occurs inside UTF-8 sequences (e.g. "à" is c3 a0): the kernel splits there too.
_SPACES = frozenset(b"\t\n\v\f\r \xa0")

QUOTE = ord('"')
EQUALS = ord("=")


def encode_arg(s: str) -> bytes:
    """The bytes the kernel would see for `s`."""
    return s.encode("utf-8", "surrogateescape")


def decode_arg(b: bytes) -> str:
    """The str for kernel bytes `b`; `encode_arg` gives the same bytes back."""
    return b.decode("utf-8", "surrogateescape")


def isspace(c: int) -> bool:
    """include/linux/ctype.h isspace over lib/ctype.c's table."""
    return c in _SPACES


def skip_spaces(s: bytes) -> bytes:
    """skip_spaces: past every leading isspace() character."""
    i = 0
    while i < len(s) and isspace(s[i]):
        i += 1
    return s[i:]


# --- lib/vsprintf.c -----------------------------------------------------------------------

def simple_strntoull(s: bytes, base: int, max_chars: int) -> tuple[int, int]:
    """simple_strntoull: (value mod 2**64, bytes consumed). Overflow is silently ignored.

    A prefix ("0x") that uses up the whole field is skipped without converting anything.
    """
    s = cstr(s)
    digits, base = parse_integer_fixup_radix(s, base)
    prefix = len(s) - len(digits)
    if prefix >= max_chars:
        return 0, max_chars
    rv, result = parse_integer_limit(digits, base, max_chars - prefix)
    return result, prefix + (rv & ~KSTRTOX_OVERFLOW)


def simple_strtoull(s: bytes, base: int) -> tuple[int, int]:
    """simple_strtoull: simple_strntoull with INT_MAX characters."""
    return simple_strntoull(s, base, INT_MAX)


# --- lib/cmdline.c ------------------------------------------------------------------------

# memparse's switch falls through from E down to K: each suffix is 10 more bits of shift.
_SUFFIX_SHIFT = {
    ord("K"): 10, ord("k"): 10,
    ord("M"): 20, ord("m"): 20,
    ord("G"): 30, ord("g"): 30,
    ord("T"): 40, ord("t"): 40,
    ord("P"): 50, ord("p"): 50,
    ord("E"): 60, ord("e"): 60,
}


def memparse(s: bytes) -> tuple[int, int]:
    """memparse: (value mod 2**64, bytes consumed).

    simple_strtoull base 0, then one optional suffix K M G T P E (either case) that is always
    consumed, even after no digits at all ("k" is 0 and consumes 1). Shifts wrap: "16E" is 0.
    """
    s = cstr(s)
    value, used = simple_strtoull(s, 0)
    shift = _SUFFIX_SHIFT.get(s[used]) if used < len(s) else None
    if shift is not None:
        value = (value << shift) & ULLONG_MAX
        used += 1
    return value, used


def _find_arg_end(buf: bytearray, start: int, in_quote: bool) -> tuple[int, int]:
    """next_arg's scan: (length i of the argument, offset of its first '=' or 0).

    A '=' at offset 0 does not count (the kernel tests `equals == 0`), so a later one may.
    """
    i = 0
    equals = 0
    while buf[start + i]:
        c = buf[start + i]
        if isspace(c) and not in_quote:
            break
        if equals == 0 and c == EQUALS:
            equals = i
        if c == QUOTE:
            in_quote = not in_quote
        i += 1
    return i, equals


def next_arg(args: bytes) -> tuple[bytes, bytes | None, bytes]:
    """lib/cmdline.c next_arg: (param, value or None, the rest after skip_spaces).

    Works on a copy the way the C code works on its buffer: it writes NULs over the '=',
    over closing quotes and over the separator, then reads param and value as C strings.
    Quotes: a leading '"' makes the whole argument quoted; a value starting with '"' loses
    that quote and, if the argument ends with '"', that one too. Other quotes stay.
    """
    buf = bytearray(cstr(args)) + b"\0"
    start = 0
    quoted = buf[0] == QUOTE
    if quoted:
        start = 1  # so buf[start - 1] is the opening quote, as args[-1] is in C
    i, equals = _find_arg_end(buf, start, quoted)
    last = start + i - 1  # args[i-1]
    val_at: int | None = None
    if equals:
        buf[start + equals] = 0
        val_at = start + equals + 1
        if buf[val_at] == QUOTE:
            val_at += 1
            if buf[last] == QUOTE:
                buf[last] = 0
    if quoted and buf[last] == QUOTE:
        buf[last] = 0
    end = start + i
    after = end
    if buf[end]:
        buf[end] = 0
        after = end + 1
    param = cstr(bytes(buf[start:]))
    val = None if val_at is None else cstr(bytes(buf[val_at:]))
    return param, val, skip_spaces(bytes(buf[after:-1]))


# --- kernel/params.c ----------------------------------------------------------------------

def split_args_bytes(cmdline: bytes) -> Iterator[tuple[bytes, bytes | None]]:
    """parse_args' loop: skip leading spaces, next_arg each argument, stop at a bare "--"."""
    args = skip_spaces(cstr(cmdline))
    while args:
        param, val, args = next_arg(args)
        if val is None and param == b"--":
            return
        yield param, val


def split_args(cmdline: str) -> Iterator[tuple[str, str | None]]:
    """split_args_bytes over the str form of a command line."""
    for param, val in split_args_bytes(encode_arg(cmdline)):
        yield decode_arg(param), None if val is None else decode_arg(val)


def _dash2underscore(c: str) -> str:
    return "_" if c == "-" else c


def parameqn(a: str, b: str, n: int) -> bool:
    """parameqn: the first n characters match, '-' and '_' alike; past its end a C string
    reads NUL (so a shorter string differs at that point)."""
    for i in range(n):
        ca = a[i] if i < len(a) else "\0"
        cb = b[i] if i < len(b) else "\0"
        if _dash2underscore(ca) != _dash2underscore(cb):
            return False
    return True


def parameq(a: str, b: str) -> bool:
    """parameq: the whole names match, '-' and '_' alike ("kho-scratch" is "kho_scratch")."""
    return parameqn(a, b, len(a) + 1)
