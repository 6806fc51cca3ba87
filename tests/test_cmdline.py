"""khofs.lib.cmdline and khofs.engine.cmdline: exact examples, and C-shaped references.

The references walk NUL-terminated byte arrays with integer pointers and write NULs into them
the way lib/cmdline.c next_arg does; the kho_scratch and reserve_mem references follow
kernel/kexec_handover.c (6.16) and mm/memblock.c (6.16) line by line. The boot reference runs
the kernel's two passes (parse_early_param from setup_arch, then "Booting kernel").
"""

from __future__ import annotations

import ctypes
import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from khofs.engine.cmdline import parse_cmdline
from khofs.engine.params import BootParams, ReserveMem, ScratchParams
from khofs.engine.printk import Printk
from khofs.lib.cmdline import (
    encode_arg,
    memparse,
    next_arg,
    parameq,
    simple_strntoull,
    simple_strtoull,
    split_args,
    split_args_bytes,
)
from tests.reference_kstrtox import (
    U64,
    mem,
    ref_kstrtobool,
    ref_kstrtouint,
    ref_memparse,
    ref_simple_strntoull,
)

EINVAL = -errno.EINVAL
EBUSY = -errno.EBUSY
ERANGE = -errno.ERANGE
PROPS = settings(max_examples=300, deadline=None)
M = 1 << 20
G = 1 << 30


# --- references ------------------------------------------------------------------------------

def ref_isspace(c: int) -> bool:
    return c in (9, 10, 11, 12, 13, 32, 0xA0)


def ref_cstring(m: list[int], p: int) -> bytes:
    out = bytearray()
    while m[p]:
        out.append(m[p])
        p += 1
    return bytes(out)


def ref_skip_spaces(m: list[int], p: int) -> int:
    while ref_isspace(m[p]):
        p += 1
    return p


def ref_next_arg(m: list[int], args: int) -> tuple[int, int | None, int]:
    """lib/cmdline.c next_arg on the array m: (param, val, next) pointers."""
    equals = 0
    in_quote = quoted = 0
    if m[args] == 34:
        args += 1
        in_quote = quoted = 1
    i = 0
    while m[args + i]:
        if ref_isspace(m[args + i]) and not in_quote:
            break
        if equals == 0 and m[args + i] == 61:
            equals = i
        if m[args + i] == 34:
            in_quote = not in_quote
        i += 1
    param = args
    val: int | None
    if not equals:
        val = None
    else:
        m[args + equals] = 0
        val = args + equals + 1
        if m[val] == 34:
            val += 1
            if m[args + i - 1] == 34:
                m[args + i - 1] = 0
    if quoted and m[args + i - 1] == 34:
        m[args + i - 1] = 0
    if m[args + i]:
        m[args + i] = 0
        nxt = args + i + 1
    else:
        nxt = args + i
    return param, val, ref_skip_spaces(m, nxt)


def ref_parse_args(cmdline: bytes) -> list[tuple[bytes, bytes | None]]:
    """kernel/params.c parse_args' loop, collecting (param, val)."""
    m = mem(cmdline)
    out: list[tuple[bytes, bytes | None]] = []
    args = ref_skip_spaces(m, 0)
    while m[args]:
        param, val, args = ref_next_arg(m, args)
        if val is None and ref_cstring(m, param) == b"--":
            break
        out.append((ref_cstring(m, param), None if val is None else ref_cstring(m, val)))
    return out


def ref_parameqn(a: bytes, b: bytes, n: int) -> bool:
    ma, mb = mem(a), mem(b)
    for i in range(n):
        ca = 95 if ma[i] == 45 else ma[i]
        cb = 95 if mb[i] == 45 else mb[i]
        if ca != cb:
            return False
    return True


class RefKernel:
    """The variables the kernel's handlers write, with their defaults, and the log."""

    def __init__(self) -> None:
        self.kho_enable = False
        self.scratch_scale = 200
        self.lowmem = self.global_ = self.pernode = 0
        self.reserve_mem_table: list[tuple[int, int, bytes]] = []
        self.logs: list[str] = []

    def kho_parse_enable(self, p: bytes | None) -> int:
        err, v = ref_kstrtobool(p)
        if not err:
            self.kho_enable = v
        return err

    def kho_parse_scratch_size(self, p: bytes | None) -> int:
        if p is None:
            return EINVAL
        m = mem(p)
        length = len(ref_cstring(m, 0))
        if not length:
            return EINVAL
        if m[length - 1] == ord("%"):
            s_scale = bytearray(11)
            if length > len(s_scale):
                return EINVAL
            s_scale[:length - 1] = bytes(m[:length - 1])
            ret, v = ref_kstrtouint(bytes(s_scale), 10)
            if not ret:
                self.scratch_scale = v
                self.logs.append(f"KHO: scratch scale is {ctypes.c_int32(v).value}%")
            return ret
        sizes = [0, 0, 0]
        q = 0
        for i in range(3):
            if i > 0:
                if m[q] != ord(","):
                    return EINVAL
                q += 1
            sizes[i], endp = ref_memparse(m, q)
            if not sizes[i] or endp == q:
                return EINVAL
            q = endp
        self.lowmem, self.global_, self.pernode = sizes
        self.scratch_scale = 0
        pernode = ctypes.c_int64(self.pernode >> 20).value  # %lld
        self.logs.append(f"KHO: scratch areas: lowmem: {self.lowmem >> 20}MiB "
                         f"global: {self.global_ >> 20}MiB pernode: {pernode}MiB")
        return 0

    def reserve_mem(self, p: bytes) -> int:
        m = mem(p)
        q = 0
        if len(self.reserve_mem_table) >= 8:
            return EBUSY
        oldp = q
        size, q = ref_memparse(m, q)
        if not size or q == oldp:
            return EINVAL
        if m[q] != ord(":"):
            return EINVAL
        align, q = ref_memparse(m, q + 1)
        if m[q] != ord(":"):
            return EINVAL
        if align < 64:
            align = 64
        name = q + 1
        length = len(ref_cstring(m, name))
        if not length or length >= 16:
            return EINVAL
        r = name
        while m[r]:
            if not ref_isspace(m[r]):
                break
            r += 1
        if not m[r]:
            return EINVAL
        if any(t[2] == ref_cstring(m, name) for t in self.reserve_mem_table):
            return EBUSY
        self.reserve_mem_table.append((size, align, ref_cstring(m, name)))
        return 1

    def boot(self, cmdline: bytes) -> None:
        early = [(b"kho", self.kho_parse_enable), (b"kho_scratch", self.kho_parse_scratch_size)]
        for param, val in ref_parse_args(cmdline):
            for name, fn in early:
                if ref_parameqn(param, name, len(param) + 1) and fn(val) != 0:
                    self.logs.append(f"Malformed early option '{param.decode()}'")
        shown = ref_cstring(mem(cmdline), 0).decode("utf-8", "surrogateescape")
        self.logs.append(f"Kernel command line: {shown}".rstrip("\n"))  # as Printk stores
        for param, val in ref_parse_args(cmdline):
            line = param if val is None else param + b"=" + val
            if ref_parameqn(line, b"reserve_mem=", 12):
                self.reserve_mem(line[12:])


def boot(cmdline: str) -> tuple[BootParams, list[str]]:
    log = Printk()
    params = parse_cmdline(cmdline, log)
    return params, log.texts()


def assert_matches_reference(cmdline: str) -> tuple[BootParams, RefKernel]:
    params, texts = boot(cmdline)
    ref = RefKernel()
    ref.boot(encode_arg(cmdline))
    assert params.cmdline == cmdline
    assert params.kho == ref.kho_enable
    assert params.scratch == ScratchParams(ref.scratch_scale, ref.lowmem, ref.global_,
                                           ref.pernode)
    assert [(r.size, r.align, encode_arg(r.name)) for r in params.reserve_mem] \
        == ref.reserve_mem_table
    assert texts == ref.logs
    return params, ref


# --- strategies ---------------------------------------------------------------------------

NUMBERS = ["0", "1", "2", "7", "08", "010", "0x10", "0X1f", "0x", "16", "1024", "4294967295",
           "4294967296", "18446744073709551615", "18446744073709551616", "12345678901", "+5"]
SUFFIXES = ["", "", "k", "K", "m", "M", "g", "G", "t", "T", "p", "P", "e", "E", "iB", "x",
            "%", " ", "\n", ",", ":"]
VALUE_CHARS = "0123456789xX+-,%:kKmMgGtTpPeEyYnNoOfq \n\t\""

number_piece = st.builds(lambda n, s: n + s, st.sampled_from(NUMBERS), st.sampled_from(SUFFIXES))
char_piece = st.text(alphabet=VALUE_CHARS, max_size=4)
value_text = st.lists(st.one_of(number_piece, char_piece), max_size=6).map("".join)
scratch_value = st.one_of(
    value_text,
    st.builds(lambda a, b, c, tail: f"{a},{b},{c}{tail}", number_piece, number_piece,
              number_piece, st.sampled_from(["", "", "junk", ",1G", "%", "\n"])),
    st.builds(lambda n, tail: f"{n}{tail}%", st.sampled_from(NUMBERS),
              st.sampled_from(["", "", "\n", " ", "0", "x"])),
)

reserve_value = st.builds(
    lambda size, align, name: f"{size}:{align}:{name}",
    number_piece, st.one_of(number_piece, st.just("")),
    st.sampled_from(["foo", "bar", "foo", " ", "a b", "123456789012345", "1234567890123456",
                     "", "x:y", "\u00e9t\u00e9", "\u00e0"]),
)

NAMES = ["kho", "kho", "kho_scratch", "kho-scratch", "kho_scratch", "reserve_mem",
         "reserve-mem", "KHO", "kho_", "other", "--", '"kho', "=kho"]
SEPARATORS = [" ", " ", "  ", "\t", "\n", "\u00a0", " -- "]


@st.composite
def one_arg(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(NAMES))
    form = draw(st.sampled_from(["bare", "eq", "quoted_val", "quoted_arg"]))
    value = draw(st.one_of(scratch_value, value_text, reserve_value))
    if form == "bare":
        return name
    if form == "eq":
        return f"{name}={value}"
    if form == "quoted_val":
        return f'{name}="{value}"'
    return f'"{name}={value}"'


cmdlines = st.builds(
    lambda args, seps, lead: lead + "".join(a + s for a, s in zip(args, seps, strict=False)),
    st.lists(one_arg(), max_size=5),
    st.lists(st.sampled_from(SEPARATORS), min_size=5, max_size=5),
    st.sampled_from(["", " ", "\t "]),
)


# --- lib/vsprintf.c and lib/cmdline.c numbers ------------------------------------------------

@pytest.mark.parametrize(("s", "base", "expected"), [
    (b"123abc", 10, (123, 3)),
    (b"0x1f", 0, (31, 4)),
    (b"0x", 0, (0, 1)),
    (b"0x", 16, (0, 2)),
    (b"0xg", 16, (0, 2)),
    (b"", 0, (0, 0)),
    (b"-1", 0, (0, 0)),
    (b" 1", 0, (0, 0)),
    (b"08", 0, (0, 1)),
    (b"18446744073709551616", 10, (0, 20)),
    (b"99999999999999999999", 10, (99999999999999999999 % (1 << 64), 20)),
    (b"1\0" b"2", 10, (1, 1)),
])
def test_simple_strtoull_examples(s: bytes, base: int, expected: tuple[int, int]) -> None:
    assert simple_strtoull(s, base) == expected


@pytest.mark.parametrize(("s", "base", "limit", "expected"), [
    (b"0x12", 16, 2, (0, 2)),  # the prefix fills the field: skipped, nothing converted
    (b"0x12", 16, 1, (0, 1)),
    (b"0x12", 16, 3, (1, 3)),
    (b"1234", 10, 2, (12, 2)),
    (b"1234", 10, 0, (0, 0)),
])
def test_simple_strntoull_examples(s: bytes, base: int, limit: int,
                                   expected: tuple[int, int]) -> None:
    assert simple_strntoull(s, base, limit) == expected


@pytest.mark.parametrize(("s", "expected"), [
    (b"2M", (2 * M, 2)),
    (b"0x10k", (16 << 10, 5)),
    (b"1E", (1 << 60, 2)),
    (b"16EiB", (0, 3)),  # 16 << 60 wraps to 0; "iB" is not consumed
    (b"010", (8, 3)),
    (b"0x", (0, 1)),
    (b"", (0, 0)),
    (b"k", (0, 1)),  # a suffix is consumed even with no digits before it
    (b"1K", (1024, 2)),
    (b"1g", (G, 2)),
    (b"1t", (1 << 40, 2)),
    (b"1p", (1 << 50, 2)),
    (b"3e", ((3 << 60) & U64, 2)),
    (b"1Z", (1, 1)),
    (b"1KB", (1024, 2)),
    (b"1 k", (1, 1)),
    (b"08", (0, 1)),
    (b"0x1fM", (31 * M, 5)),
    (b"0x1E", (0x1E, 4)),  # in hex, E is a digit: no exa suffix
    (b"0x1e", (0x1E, 4)),
    (b"17179869184G", (0, 12)),
    (b"18446744073709551617", (1, 20)),
    (b"4k\0M", (4096, 2)),
])
def test_memparse_examples(s: bytes, expected: tuple[int, int]) -> None:
    assert memparse(s) == expected


NUMBER_BYTES = st.lists(
    st.one_of(st.sampled_from([n.encode() for n in NUMBERS]),
              st.lists(st.sampled_from(list(b"0123456789abcdefxXkKmMgGtTpPeE+- ,:%\0")),
                       max_size=6).map(bytes)),
    max_size=4).map(b"".join)


@PROPS
@given(NUMBER_BYTES, st.sampled_from([0, 8, 10, 16]), st.integers(0, 30))
def test_simple_strntoull_matches_reference(s: bytes, base: int, limit: int) -> None:
    value, endp = ref_simple_strntoull(mem(s), 0, base, limit)
    assert simple_strntoull(s, base, limit) == (value, endp)
    value, endp = ref_simple_strntoull(mem(s), 0, base, 0x7FFF_FFFF)
    assert simple_strtoull(s, base) == (value, endp)


@PROPS
@given(NUMBER_BYTES)
def test_memparse_matches_reference(s: bytes) -> None:
    assert memparse(s) == ref_memparse(mem(s), 0)


@PROPS
@given(st.integers(0, 1 << 70), st.sampled_from(["%d", "0x%x", "0%o"]),
       st.sampled_from(list(enumerate("KMGTPE", start=1)) + [(0, "")]))
def test_memparse_against_python_integers(n: int, fmt: str, suffix: tuple[int, str]) -> None:
    k, letter = suffix
    text = (fmt % n).encode()
    if fmt == "0x%x" and letter == "E":
        # after "0x", 'E'/'e' is a hex digit, not the exa suffix
        assert memparse(text + b"E") == (((n << 4) + 14) % (1 << 64), len(text) + 1)
        return
    for s in (letter, letter.lower()):
        assert memparse(text + s.encode()) == (((n % (1 << 64)) << (10 * k)) % (1 << 64),
                                               len(text) + len(s))


# --- next_arg / parse_args / parameq --------------------------------------------------------

@pytest.mark.parametrize(("args", "expected"), [
    (b"kho=on  rest", (b"kho", b"on", b"rest")),
    (b'"a b=c d" x', (b"a b", b"c d", b"x")),
    (b'a="b c" x', (b"a", b"b c", b"x")),
    (b'"a=b c"', (b"a", b"b c", b"")),
    (b'a=b"c d" e', (b"a", b'b"c d"', b"e")),
    (b'a="b"c', (b"a", b'b"c', b"")),
    (b'"a"', (b"a", None, b"")),
    (b'"', (b"", None, b"")),
    (b'""', (b"", None, b"")),
    (b'a=""', (b"a", b"", b"")),
    (b"a=", (b"a", b"", b"")),
    (b"=x", (b"=x", None, b"")),  # a '=' at offset 0 is not the separator...
    (b"=a=b", (b"=a", b"b", b"")),  # ...but a later one is
    (b"a=b=c", (b"a", b"b=c", b"")),
    (b"a\tb\nc", (b"a", None, b"b\nc")),
    (b"a\xa0b", (b"a", None, b"b")),  # Latin-1 NBSP is a space for the kernel's isspace
    (b"a\x0bb", (b"a", None, b"b")),
    (b'"a b', (b"a b", None, b"")),  # an unclosed quote takes the rest of the line
    (b"a\0b c", (b"a", None, b"")),
])
def test_next_arg_examples(args: bytes, expected: tuple[bytes, bytes | None, bytes]) -> None:
    assert next_arg(args) == expected


@pytest.mark.parametrize(("cmdline", "expected"), [
    (' kho=on   kho_scratch="1G, 2G" -- kho=off', [("kho", "on"), ("kho_scratch", "1G, 2G")]),
    ('"--" x', []),
    ("--=x y", [("--", "x"), ("y", None)]),
    ("a --x -- b", [("a", None), ("--x", None)]),
    ("-- ", []),
    ("   ", []),
    ("", []),
    ("kho=on\0kho=off", [("kho", "on")]),
    ("a\u00a0b", [("a\udcc2", None), ("b", None)]),  # U+00A0 is c2 a0: split before a0
    ("à", [("\udcc3", None)]),  # "à" is c3 a0: the a0 is a space, a lone c3 remains
    ("x\r\ny\fz", [("x", None), ("y", None), ("z", None)]),
])
def test_split_args_examples(cmdline: str, expected: list[tuple[str, str | None]]) -> None:
    assert list(split_args(cmdline)) == expected


def test_split_args_a_with_nbsp_keeps_c2() -> None:
    assert list(split_args_bytes("a\u00a0b".encode())) == [(b"a\xc2", None), (b"b", None)]


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("kho-scratch", "kho_scratch", True),
    ("kho_scratch", "kho-scratch", True),
    ("kho-scratch", "kho-scratch", True),
    ("kho", "kho_scratch", False),
    ("kho_scratch", "kho", False),
    ("kho_", "kho", False),
    ("KHO", "kho", False),
    ("--", "__", True),
    ("", "", True),
])
def test_parameq_examples(a: str, b: str, expected: bool) -> None:
    assert parameq(a, b) is expected


CMDLINE_BYTES = st.lists(
    st.one_of(st.sampled_from([b"kho", b"=", b'"', b"--", b" ", b"\t", b"\xa0", b"a=b"]),
              st.lists(st.sampled_from(list(b'ab=" -\t\n\xa0\x0b0')), max_size=5).map(bytes)),
    max_size=10).map(b"".join)


@PROPS
@given(CMDLINE_BYTES)
def test_split_args_matches_reference(cmdline: bytes) -> None:
    assert list(split_args_bytes(cmdline)) == ref_parse_args(cmdline)


@PROPS
@given(CMDLINE_BYTES)
def test_next_arg_matches_reference(args: bytes) -> None:
    m = mem(args)
    param, val, nxt = ref_next_arg(m, 0)
    ref = (ref_cstring(m, param), None if val is None else ref_cstring(m, val),
           ref_cstring(mem(args), nxt))
    assert next_arg(args) == ref


# --- parse_cmdline: kho= ------------------------------------------------------------------

@pytest.mark.parametrize(("value", "enabled"), [
    ("on", True), ("1", True), ("y", True), ("Y", True), ("yes", True), ("true", True),
    ("T", True), ("oN", True), ("off", False), ("0", False), ("n", False), ("no", False),
    ("false", False), ("F", False), ("of", False),
])
def test_kho_values(value: str, enabled: bool) -> None:
    params, texts = boot(f"kho={value}")
    assert params.kho is enabled
    assert texts == [f"Kernel command line: kho={value}"]


@pytest.mark.parametrize("arg", ["kho=bogus", "kho", "kho=", "kho=o", "kho=enable", 'kho=" on"'])
def test_kho_rejected_keeps_default(arg: str) -> None:
    params, texts = boot(f"{arg} kho_scratch=7%")
    assert params.kho is False
    assert texts == ["Malformed early option 'kho'", "KHO: scratch scale is 7%",
                     f"Kernel command line: {arg} kho_scratch=7%"]


@pytest.mark.parametrize(("cmdline", "enabled", "malformed"), [
    ("kho=on kho=off", False, 0),
    ("kho=off kho=on", True, 0),
    ("kho=on kho=nope", False, 0),  # only the first character counts: "nope" is "n"
    ("kho=on kho=maybe", True, 1),  # rejected: the earlier value stays
    ("kho=on kho", True, 1),
    ("kho=on -- kho=off", True, 0),  # "--" ends parsing
    ("kho=on -- kho=maybe", True, 0),
    ('"kho=on"', True, 0),
    ("KHO=on", False, 0),  # names are case-sensitive: not ours, ignored
    ("kho_=on kho.x=on khoo=on", False, 0),
])
def test_kho_in_command_line_order(cmdline: str, enabled: bool, malformed: int) -> None:
    params, texts = boot(cmdline)
    assert params.kho is enabled
    assert texts == ["Malformed early option 'kho'"] * malformed \
        + [f"Kernel command line: {cmdline}"]


def test_defaults_and_cmdline_field() -> None:
    params, texts = boot("")
    assert params == BootParams(cmdline="", kho=False, scratch=ScratchParams(200, 0, 0, 0),
                                reserve_mem=[])
    assert texts == ["Kernel command line: "]


def test_nul_ends_the_command_line() -> None:
    params, texts = boot("kho=on\0kho=off kho_scratch=bad")
    assert params.kho is True
    assert params.cmdline == "kho=on\0kho=off kho_scratch=bad"
    assert texts == ["Kernel command line: kho=on"]


# --- parse_cmdline: kho_scratch= --------------------------------------------------------------

SCRATCH_OK = [
    ("50%", ScratchParams(50, 0, 0, 0), "KHO: scratch scale is 50%"),
    ("0%", ScratchParams(0, 0, 0, 0), "KHO: scratch scale is 0%"),
    ("+5%", ScratchParams(5, 0, 0, 0), "KHO: scratch scale is 5%"),
    ("007%", ScratchParams(7, 0, 0, 0), "KHO: scratch scale is 7%"),  # base 10, not octal
    ("4294967295%", ScratchParams(4294967295, 0, 0, 0), "KHO: scratch scale is -1%"),  # %d
    ("2147483648%", ScratchParams(2147483648, 0, 0, 0), "KHO: scratch scale is -2147483648%"),
    ('"5\n%"', ScratchParams(5, 0, 0, 0), "KHO: scratch scale is 5%"),
    ("1G,512M,256M", ScratchParams(0, G, 512 * M, 256 * M),
     "KHO: scratch areas: lowmem: 1024MiB global: 512MiB pernode: 256MiB"),
    ("0x40000000,0x20000000,010", ScratchParams(0, G, 512 * M, 8),
     "KHO: scratch areas: lowmem: 1024MiB global: 512MiB pernode: 0MiB"),
    ("1k,1K,1", ScratchParams(0, 1024, 1024, 1),
     "KHO: scratch areas: lowmem: 0MiB global: 0MiB pernode: 0MiB"),
    ("1E,1e,15E", ScratchParams(0, 1 << 60, 1 << 60, 15 << 60),
     "KHO: scratch areas: lowmem: 1099511627776MiB global: 1099511627776MiB "
     "pernode: 16492674416640MiB"),
    # 6.16 quirk: whatever follows the third size is never looked at
    ("1G,1G,1Gjunk", ScratchParams(0, G, G, G),
     "KHO: scratch areas: lowmem: 1024MiB global: 1024MiB pernode: 1024MiB"),
    ("1G,1G,1G,4G", ScratchParams(0, G, G, G),
     "KHO: scratch areas: lowmem: 1024MiB global: 1024MiB pernode: 1024MiB"),
    ('"1G,1G,1G and more"', ScratchParams(0, G, G, G),
     "KHO: scratch areas: lowmem: 1024MiB global: 1024MiB pernode: 1024MiB"),
    ("18446744073709551617,2,3", ScratchParams(0, 1, 2, 3),  # wraps to 1, still non-zero
     "KHO: scratch areas: lowmem: 0MiB global: 0MiB pernode: 0MiB"),
]


@pytest.mark.parametrize(("value", "scratch", "line"), SCRATCH_OK)
def test_kho_scratch_accepted(value: str, scratch: ScratchParams, line: str) -> None:
    params, texts = boot(f"kho_scratch={value}")
    assert params.scratch == scratch
    assert texts == [line, f"Kernel command line: kho_scratch={value}".rstrip("\n")]


SCRATCH_BAD = [
    "", "%", "12345678901%", "9999999999%", "4294967296%", "0x10%", "-5%", "5 %", "1,2,3%",
    "1G,1G,1G%", "1G,1G", "1G", "0,1G,1G", "1G,0,1G", "1G,1G,0", "1G,,1G", "1G;1G;1G",
    ",1G,1G", "16E,1,1", "k,1,1", "0x,1,1", "1G,1G,k", '"1G, 1G,1G"', "-1,1,1",
    "17179869184G,1,1",
]


@pytest.mark.parametrize("value", SCRATCH_BAD)
def test_kho_scratch_rejected_keeps_default(value: str) -> None:
    params, texts = boot(f"kho=on kho_scratch={value}")
    assert params.kho is True
    assert params.scratch == ScratchParams(200, 0, 0, 0)
    assert texts == ["Malformed early option 'kho_scratch'",
                     f"Kernel command line: kho=on kho_scratch={value}"]


def test_kho_scratch_bare_is_malformed() -> None:
    params, texts = boot("kho_scratch")
    assert params.scratch == ScratchParams()
    assert texts == ["Malformed early option 'kho_scratch'", "Kernel command line: kho_scratch"]


def test_kho_scratch_dashes_and_order() -> None:
    params, texts = boot("kho-scratch=1G,2G,3G kho_scratch=bad kho-scratch=50% kho-Scratch=1%")
    # the scale replaces scale only: the sizes stay as the kernel's variables do
    assert params.scratch == ScratchParams(50, G, 2 * G, 3 * G)
    assert texts == [
        "KHO: scratch areas: lowmem: 1024MiB global: 2048MiB pernode: 3072MiB",
        "Malformed early option 'kho_scratch'",
        "KHO: scratch scale is 50%",
        "Kernel command line: kho-scratch=1G,2G,3G kho_scratch=bad kho-scratch=50% "
        "kho-Scratch=1%",
    ]


def test_malformed_names_the_param_as_written() -> None:
    _, texts = boot("kho-scratch=bad")
    assert texts == ["Malformed early option 'kho-scratch'",
                     "Kernel command line: kho-scratch=bad"]


@PROPS
@given(scratch_value, st.booleans())
def test_kho_scratch_matches_reference(value: str, quoted: bool) -> None:
    arg = f'kho_scratch="{value}"' if quoted else f"kho_scratch={value}"
    params, ref = assert_matches_reference(arg)
    raw = ref_parse_args(arg.encode())[0][1]
    if RefKernel().kho_parse_scratch_size(raw) != 0:
        assert params.scratch == ScratchParams(200, 0, 0, 0)
        assert ref.logs[0] == "Malformed early option 'kho_scratch'"


@PROPS
@given(cmdlines)
def test_whole_command_line_matches_reference(cmdline: str) -> None:
    assert_matches_reference(cmdline)


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["reserve_mem", "reserve-mem"]), reserve_value,
                          st.booleans()), max_size=10))
def test_reserve_mem_matches_reference(requests: list[tuple[str, str, bool]]) -> None:
    cmdline = " ".join(f'{n}="{v}"' if quoted else f"{n}={v}" for n, v, quoted in requests)
    assert_matches_reference(cmdline)


# --- parse_cmdline: reserve_mem= --------------------------------------------------------------

@pytest.mark.parametrize(("arg", "expected"), [
    ("reserve_mem=1M:4K:foo", [ReserveMem(M, 4096, "foo")]),
    ("reserve-mem=2M:2M:trace", [ReserveMem(2 * M, 2 * M, "trace")]),
    ("reserve_mem=1M:8:foo", [ReserveMem(M, 64, "foo")]),  # align below SMP_CACHE_BYTES
    ("reserve_mem=1M::foo", [ReserveMem(M, 64, "foo")]),  # empty align is 0, so 64
    ("reserve_mem=1M:k:foo", [ReserveMem(M, 64, "foo")]),
    ("reserve_mem=0x100000:0x1000:a:b", [ReserveMem(M, 4096, "a:b")]),
    ("reserve_mem=1M:4K:123456789012345", [ReserveMem(M, 4096, "123456789012345")]),
    ('reserve_mem="1M:4K:a b"', [ReserveMem(M, 4096, "a b")]),
    ('reserve_mem="1M:4K: "', []),  # a name of spaces only
    ("reserve_mem=1M:4K:1234567890123456", []),  # 16 bytes: too long
    ("reserve_mem=1M:4K:", []),
    ("reserve_mem=0:4K:foo", []),
    ("reserve_mem=16E:4K:foo", []),  # wraps to 0
    ("reserve_mem=:4K:foo", []),
    ("reserve_mem=1M:4Kfoo", []),
    ("reserve_mem=1M", []),
    ("reserve_mem=1M-4K:foo", []),
    ("reserve_mem", []),
    ("reserve_mem=", []),
    ("reserve_mem_x=1M:4K:foo", []),
    ("-- reserve_mem=1M:4K:foo", []),
])
def test_reserve_mem_examples(arg: str, expected: list[ReserveMem]) -> None:
    params, texts = boot(arg)
    assert params.reserve_mem == expected
    assert texts == [f"Kernel command line: {arg}"]  # 6.16 logs no reserve_mem failure


def test_reserve_mem_duplicates_and_limit() -> None:
    args = " ".join(f"reserve_mem={i + 1}M:4K:r{i}" for i in range(9))
    params, texts = boot(f"reserve_mem=1M:4K:r0 {args} reserve-mem=5M:4K:r0")
    assert params.reserve_mem == [ReserveMem((i + 1) * M, 4096, f"r{i}") for i in range(8)]
    assert texts == [f"Kernel command line: reserve_mem=1M:4K:r0 {args} reserve-mem=5M:4K:r0"]


def test_duplicate_name_keeps_the_first() -> None:
    params, _ = boot("reserve_mem=1M:4K:foo reserve_mem=2M:8K:foo reserve_mem=3M:1M:bar")
    assert params.reserve_mem == [ReserveMem(M, 4096, "foo"), ReserveMem(3 * M, M, "bar")]


def test_early_messages_come_before_the_command_line() -> None:
    cmdline = "reserve_mem=1M:4K:x kho=bad kho_scratch=50% reserve_mem=bad"
    params, texts = boot(cmdline)
    assert params.reserve_mem == [ReserveMem(M, 4096, "x")]
    assert texts == ["Malformed early option 'kho'", "KHO: scratch scale is 50%",
                     f"Kernel command line: {cmdline}"]
