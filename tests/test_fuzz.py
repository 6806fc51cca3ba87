"""Fuzzing with a fixed budget: writes to `finalize` through a real mount against the
reference parser, and the producers-file loader on malformed TOML, DTS and DTB files.

Writes: any bytes, any length up to 300, split into 1 to 4 write() calls on one open file,
O_WRONLY or O_RDWR (with or without O_TRUNC). Each call must return what simple_attr_write
and kho_out_finalize_set give in the state of that moment: the whole length on success,
EINVAL or ERANGE from kstrtoull (ref_kstrtoull, written from lib/kstrtox.c, on the first 23
bytes), ENOENT for 0 when not finalized, EEXIST for non-zero when finalized; and the state
read back after every call is the model's, so a refused write changed nothing.
"""

from __future__ import annotations

import errno
import json
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from khofs.errors import ProducersFileError
from khofs.producers.dts import compile_dts
from khofs.producers.producers_file import load_producers
from tests.helpers import is_mounted, khofs, one_line_error
from tests.reference_kstrtox import ref_kstrtoull

ATTR_BUF_LEN = 24  # simple_attr's set_buf: at most 23 bytes are parsed
MOUNTED = settings(max_examples=1000, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])
IN_PROCESS = settings(max_examples=500, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])
END_TO_END = settings(max_examples=12, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- writes to finalize, through a mount -----------------------------------------------------

def expected_write(data: bytes, finalized: bool) -> tuple[int, bool]:
    """(write()'s result: a count or -errno, the state after it), from the reference."""
    err, val = ref_kstrtoull(data[:ATTR_BUF_LEN - 1], 0)
    if err:
        return err, finalized
    if bool(val) == finalized:
        return (-errno.EEXIST if finalized else -errno.ENOENT), finalized
    return len(data), bool(val)


def do_write(fd: int, data: bytes) -> int:
    try:
        return os.write(fd, data)
    except OSError as e:
        return -(e.errno or 0)


def write_ok(fin: Path, value: bytes) -> None:
    fd = os.open(fin, os.O_WRONLY)
    try:
        assert os.write(fd, value) == len(value)
    finally:
        os.close(fd)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given points into non-empty pieces (FUSE never sends empty writes)."""
    points = sorted({c % len(data) for c in cuts} - {0})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# bytes a parser cares about, so that hypothesis finds numbers as well as junk
interesting = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([b"1", b"0", b"+1", b"0x", b"0X1f", b"07", b"08", b"00",
                               b"18446744073709551615", b"18446744073709551616", b" 1", b"-0",
                               b"1\n", b"0\n", b"1\0", b"\n"]),
              st.binary(max_size=40)),
    st.text("0123456789abcdefxX+-\n\0 ", min_size=1, max_size=40).map(str.encode),
    # numbers padded to around the 23 bytes that are parsed, then whatever follows
    st.builds(lambda sign, zeros, n, tail: sign + b"0" * zeros + b"%d" % n + tail,
              st.sampled_from([b"", b"+"]), st.integers(0, 25), st.integers(0, 2**64),
              st.binary(max_size=3)),
)


@pytest.mark.mount
@MOUNTED
@given(data=interesting, cuts=st.lists(st.integers(1, 299), max_size=3),
       rdwr=st.booleans(), trunc=st.booleans(), start=st.booleans())
def test_finalize_writes_match_the_reference(mnt: Path, data: bytes, cuts: list[int],
                                             rdwr: bool, trunc: bool, start: bool) -> None:
    fin = mnt / "kho/out/finalize"
    if fin.read_bytes() == b"1\n":  # the previous example's state: back to "not finalized"
        write_ok(fin, b"0")
    finalized = start
    if start:
        write_ok(fin, b"1")
    assert fin.read_bytes() == (b"1\n" if finalized else b"0\n")
    flags = (os.O_RDWR if rdwr else os.O_WRONLY) | (os.O_TRUNC if trunc else 0)
    fd = os.open(fin, flags)
    try:
        for piece in pieces(data, cuts):
            want, finalized = expected_write(piece, finalized)
            assert do_write(fd, piece) == want, piece
            assert fin.read_bytes() == (b"1\n" if finalized else b"0\n"), piece
            assert (mnt / "kho/out/fdt").exists() == finalized
    finally:
        os.close(fd)


def test_pieces_and_model() -> None:
    """The helpers above, on examples worked by hand from lib/kstrtox.c and kexec_handover.c."""
    assert pieces(b"abcdef", [2, 4, 8]) == [b"ab", b"cd", b"ef"]  # 8 % 6 == 2, a repeat
    assert pieces(b"abc", [3, 6]) == [b"abc"]
    assert expected_write(b"1\n", False) == (2, True)
    assert expected_write(b"1\n", True) == (-errno.EEXIST, True)
    assert expected_write(b"0", False) == (-errno.ENOENT, False)
    assert expected_write(b"0x0\n", True) == (4, False)
    assert expected_write(b"1" + b" " * 22 + b"x", False) == (-errno.EINVAL, False)
    assert expected_write(b"1" + b"\0" * 40, False) == (41, True)
    assert expected_write(b"08", False) == (-errno.EINVAL, False)
    assert expected_write(b"18446744073709551616", False) == (-errno.ERANGE, False)
    assert expected_write(b"000000000000000000000001", False) == (-errno.ENOENT, False)


# --- the producers file, in process ------------------------------------------------------------

VALID_DTS = ('/dts-v1/;\n/memreserve/ 0x1000 0x2000;\n/ {\n\tcompatible = "khofs-fuzz-v1";\n'
             '\tcells = <1 0x2 03>;\n\tbytes = [00 ff];\n\tchild@1 {\n\t\treg = <1>;\n\t};\n};\n')
VALID_DTB = compile_dts(VALID_DTS)


def load(tmp_path: Path, toml: bytes, files: dict[str, bytes]) -> None:
    """load_producers on these files: it returns, or raises ProducersFileError with one line that
    starts with the name of a file in tmp_path. Nothing else may escape."""
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    path = tmp_path / "producers.toml"
    path.write_bytes(toml)
    try:
        specs = load_producers(path)
    except ProducersFileError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message, message
        assert message.startswith(str(tmp_path) + "/"), message
        return
    assert all(s.name for s in specs)


def toml_value(depth: int = 2) -> st.SearchStrategy[object]:
    leaves = st.one_of(st.integers(-2**70, 2**70), st.booleans(), st.floats(allow_nan=False),
                       st.text(max_size=20), st.sampled_from(
                           ["x.dts", "x.dtb", "EBUSY", "EWHAT", "0x100000000+2M", "1Q+4K",
                            "kho_test", "..", "a/b", "", "12", "0x1000+0x1000"]))
    if depth == 0:
        return leaves
    return st.one_of(leaves, st.lists(toml_value(depth - 1), max_size=3))


def render(value: object) -> str:
    """A TOML value; JSON's string, number and array syntax is TOML's too (lone surrogates
    are not, which tomllib rightly refuses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return json.dumps(value)


producer_keys = st.sampled_from(["name", "dts", "dtb", "preserve", "fail_finalize",
                                 "fail_abort", "builtin", "fill", "forget", "colour"])
producer_tables = st.lists(st.dictionaries(producer_keys, toml_value(), max_size=5), max_size=4)


@IN_PROCESS
@given(tables=producer_tables, top=st.booleans())
def test_structured_producer_files(tmp_path: Path, tables: list[dict[str, object]],
                                   top: bool) -> None:
    text = "".join("[[producer]]\n" + "".join(f"{k} = {render(v)}\n" for k, v in t.items())
                   for t in tables)
    if top:
        text = "version = 1\n" + text
    load(tmp_path, text.encode(), {"x.dts": VALID_DTS.encode(), "x.dtb": VALID_DTB})


@IN_PROCESS
@given(text=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_random_producer_files(tmp_path: Path, text: bytes) -> None:
    load(tmp_path, text, {})


def mutate(base: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Splices: at each position, drop some bytes and insert others."""
    out = bytearray(base)
    for pos, drop, insert in edits:
        at = pos % (len(out) + 1)
        out[at:at + drop] = insert
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 8), st.binary(max_size=8)),
                 min_size=1, max_size=4)
DTS_TOML = b'[[producer]]\nname = "fuzz"\ndts = "x.dts"\n'
DTB_TOML = b'[[producer]]\nname = "fuzz"\ndtb = "x.dtb"\n'


@IN_PROCESS
@given(dts=st.one_of(st.text(max_size=300).map(str.encode),
                     edits.map(lambda e: mutate(VALID_DTS.encode(), e))))
def test_malformed_dts_files(tmp_path: Path, dts: bytes) -> None:
    load(tmp_path, DTS_TOML, {"x.dts": dts})


@IN_PROCESS
@given(dtb=st.one_of(st.binary(max_size=300), edits.map(lambda e: mutate(VALID_DTB, e))))
def test_malformed_dtb_files(tmp_path: Path, dtb: bytes) -> None:
    load(tmp_path, DTB_TOML, {"x.dtb": dtb})


def test_the_fuzzed_bases_are_valid(tmp_path: Path) -> None:
    """The inputs mutated above load as they are, so the mutations are what gets refused."""
    for toml, files in ((DTS_TOML, {"x.dts": VALID_DTS.encode()}),
                        (DTB_TOML, {"x.dtb": VALID_DTB})):
        for name, content in files.items():
            (tmp_path / name).write_bytes(content)
        (tmp_path / "p.toml").write_bytes(toml)
        [spec] = load_producers(tmp_path / "p.toml")
        assert (spec.name, spec.fdt) == ("fuzz", VALID_DTB)
    value = [1, -2**63, "a\u2028\"\\", True, 1.5e300, float("-inf"), [2**40, []]]
    assert tomllib.loads("v = " + render(value)) == {"v": value}


# --- end to end: `khofs mount --producers BAD` --------------------------------------------------

def mount_refused(tmp_path: Path, toml: bytes, files: dict[str, bytes], *words: str) -> None:
    """exit 2, one line on stderr naming the file, no traceback, nothing mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "producers.toml").write_bytes(toml)
    try:
        r = khofs("mount", str(mnt), "--producers", str(tmp_path / "producers.toml"))
        one_line_error(r, str(tmp_path), *words)
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            khofs("umount", str(mnt))


@pytest.mark.mount
@END_TO_END
@given(kind=st.sampled_from(["toml", "dts", "dtb"]), junk=st.binary(max_size=35))
def test_mount_refuses_fuzzed_producer_files(tmp_path: Path, kind: str, junk: bytes) -> None:
    """Junk in each kind of file, framed so that no junk can make the file valid: a TOML line
    `= =`, a DTS root node never closed, a DTB shorter than its header."""
    if kind == "toml":
        mount_refused(tmp_path, b"[[producer]]\n" + junk + b"\n= =\n", {}, "producers.toml")
    elif kind == "dts":
        mount_refused(tmp_path, DTS_TOML, {"x.dts": b"/dts-v1/;\n" + junk + b"\n/ {"}, "x.dts")
    else:
        mount_refused(tmp_path, DTB_TOML, {"x.dtb": VALID_DTB[:4] + junk}, "x.dtb")


@pytest.mark.mount
@pytest.mark.parametrize("toml, files, words", [
    (b"\xff\xfe[[producer]]\n", {}, ["producers.toml"]),
    (DTS_TOML, {"x.dts": b"/dts-v1/;\n/ { x = \"\xff\"; };\n"}, ["x.dts"]),
    (DTB_TOML, {"x.dtb": b""}, ["x.dtb", "shorter than a header"]),
    (b'[[producer]]\nname = "fuzz"\ndts = "."\n', {}, ["Is a directory"]),
    (b'[[producer]]\nname = "a\\u0000b"\ndts = "x.dts"\n', {"x.dts": VALID_DTS.encode()},
     ["single path component"]),
])
def test_mount_refuses_odd_files(tmp_path: Path, toml: bytes, files: dict[str, bytes],
                                 words: list[str]) -> None:
    mount_refused(tmp_path, toml, files, *words)
