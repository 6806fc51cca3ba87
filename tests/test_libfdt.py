"""Our libfdt sequential writer and DTS/DTB handling, against the real libfdt and dtc tools.

The oracle is Debian's python3-libfdt: its FdtSw class for whole trees (it grows its buffer, so
its blobs are the layout of a tree that fits) and its raw fdt_* functions on a fixed bytearray,
which run libfdt's C code on exactly the bytes our class writes in place.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libfdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from khofs.lib.libfdt import (
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    FDT_ERR_BADFLAGS,
    FDT_ERR_BADMAGIC,
    FDT_ERR_BADSTATE,
    FDT_ERR_NOSPACE,
    FDT_MAGIC,
    FDT_PROP,
    FdtSw,
    fdt_totalsize,
)
from khofs.producers.dts import MAX_DTB_SIZE, check_dtb, compile_dts
from tests.oracle import finished

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PAGE = 4096
REPO = Path(__file__).resolve().parent.parent


# --- trees ------------------------------------------------------------------------------------

@dataclass
class Prop:
    kind: str  # bytes, string, u32, u64, placeholder
    name: str
    value: Any


@dataclass
class Node:
    name: str
    props: list[Prop] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)


@dataclass
class Tree:
    rsv: list[tuple[int, int]]
    root: Node


def prop_bytes(p: Prop) -> bytes:
    if p.kind == "string":
        return str(p.value).encode() + b"\0"
    if p.kind == "u32":
        return struct.pack(">I", p.value)
    if p.kind == "u64":
        return struct.pack(">Q", p.value)
    return bytes(p.value)


def write_ours(sw: FdtSw, p: Prop) -> int:
    if p.kind == "string":
        return sw.property_string(p.name, p.value)
    if p.kind == "u32":
        return sw.property_u32(p.name, p.value)
    if p.kind == "u64":
        return sw.property_u64(p.name, p.value)
    if p.kind == "placeholder":
        err, off = sw.property_placeholder(p.name, len(p.value))
        if not err:
            sw.buf[off:off + len(p.value)] = p.value
        return err
    return sw.property(p.name, p.value)


def write_oracle(sw: Any, p: Prop) -> None:
    if p.kind == "string":
        sw.property_string(p.name, p.value)
    elif p.kind == "u32":
        sw.property_u32(p.name, p.value)
    elif p.kind == "u64":
        sw.property_u64(p.name, p.value)
    else:
        sw.property(p.name, bytes(p.value))


def build_ours(tree: Tree, buf: bytearray | memoryview) -> bytes:
    sw = FdtSw(buf)
    err = sw.create()
    for addr, size in tree.rsv:
        err |= sw.add_reservemap_entry(addr, size)
    err |= sw.finish_reservemap()

    def node(n: Node, name: str) -> int:
        e = sw.begin_node(name)
        for p in n.props:
            e |= write_ours(sw, p)
        for child in n.nodes:
            e |= node(child, child.name)
        return e | sw.end_node()

    err |= node(tree.root, "")
    err |= sw.finish()
    assert err == 0
    return bytes(sw.buf[:fdt_totalsize(sw.buf)])


def build_oracle(tree: Tree) -> bytes:
    sw = libfdt.FdtSw()
    for addr, size in tree.rsv:
        sw.add_reservemap_entry(addr, size)
    sw.finish_reservemap()

    def node(n: Node, name: str) -> None:
        sw.begin_node(name)
        for p in n.props:
            write_oracle(sw, p)
        for child in n.nodes:
            node(child, child.name)
        sw.end_node()

    node(tree.root, "")
    return finished(sw)


# Names chosen so that suffixes are shared and repeated ("map" inside "memory-map", "" inside all).
PROP_NAMES = ["reg", "eg", "g", "compatible", "patible", "le", "e", "fdt", "preserved-memory-map",
              "memory-map", "map", "#address-cells", "address-cells", "cells", "s", ""]
prop_names = st.sampled_from(PROP_NAMES) | st.text("abgms-", max_size=5)
node_names = st.builds(
    lambda base, unit: base + (f"@{unit:x}" if unit is not None else ""),
    st.text("abcnode-,._+", min_size=0, max_size=8),
    st.none() | st.integers(0, 0xFFFF))
u64 = st.integers(0, 2**64 - 1)
props = st.one_of(
    st.builds(Prop, st.sampled_from(["bytes", "placeholder"]), prop_names, st.binary(max_size=23)),
    st.builds(Prop, st.just("string"), prop_names,
              st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                      max_size=12)),
    st.builds(Prop, st.just("u32"), prop_names, st.integers(0, 2**32 - 1)),
    st.builds(Prop, st.just("u64"), prop_names, u64),
)


def nodes(depth: int) -> st.SearchStrategy[Node]:
    children = st.lists(nodes(depth - 1), max_size=3) if depth > 0 else st.just([])
    return st.builds(Node, node_names, st.lists(props, max_size=4), children)


trees = st.builds(Tree, st.lists(st.tuples(u64, u64), max_size=4), nodes(4))


@SETTINGS
@given(trees)
def test_random_trees_match_libfdt(tree: Tree) -> None:
    # Our buffer is one "page" inside a larger memory: nothing outside it may change.
    mem = bytearray(b"\xa5" * (3 * 65536))
    window = memoryview(mem)[65536:2 * 65536]
    ours = build_ours(tree, window)
    assert ours == build_oracle(tree)
    assert mem[:65536] == b"\xa5" * 65536 and mem[2 * 65536:] == b"\xa5" * 65536


# --- a fixed buffer, call by call, against libfdt's C functions --------------------------------

@dataclass
class Op:
    name: str
    args: tuple[Any, ...]


def op_create(size: int, flags: int) -> Op:
    return Op("create", (size, flags))


short_names = st.sampled_from(PROP_NAMES[:12]) | st.text("abcm-", max_size=6)
ops = st.one_of(
    st.builds(lambda a, s: Op("rsv", (a, s)), u64, u64),
    st.just(Op("finish_reservemap", ())),
    st.builds(lambda n: Op("begin_node", (n,)), short_names),
    st.just(Op("end_node", ())),
    st.builds(lambda n, v: Op("property", (n, v)), short_names, st.binary(max_size=40)),
    st.builds(lambda n, v: Op("placeholder", (n, v)), short_names, st.binary(max_size=40)),
    st.builds(lambda n, v: Op("property_string", (n, v)), short_names, st.text("xyz", max_size=9)),
    st.builds(lambda n, v: Op("property_u32", (n, v)), short_names, st.integers(0, 2**32 - 1)),
    st.builds(lambda n, v: Op("property_u64", (n, v)), short_names, u64),
    st.just(Op("finish", ())),
)


def run_c(buf: bytearray, op: Op) -> int:
    """The same operation through libfdt's own C functions."""
    a = op.args
    calls: dict[str, Callable[[], int]] = {
        "create": lambda: libfdt.fdt_create_with_flags(buf, a[0], a[1]),
        "rsv": lambda: libfdt.fdt_add_reservemap_entry(buf, a[0], a[1]),
        "finish_reservemap": lambda: libfdt.fdt_finish_reservemap(buf),
        "begin_node": lambda: libfdt.fdt_begin_node(buf, a[0]),
        "end_node": lambda: libfdt.fdt_end_node(buf),
        "property": lambda: libfdt.fdt_property_stub(buf, a[0], a[1], len(a[1])),
        "placeholder": lambda: libfdt.fdt_property_stub(buf, a[0], a[1], len(a[1])),
        "property_string": lambda: libfdt.fdt_property_string(buf, a[0], a[1]),
        "property_u32": lambda: libfdt.fdt_property_u32(buf, a[0], a[1]),
        "property_u64": lambda: libfdt.fdt_property_u64(buf, a[0], a[1]),
        "finish": lambda: libfdt.fdt_finish(buf),
    }
    return calls[op.name]()


def run_ours(sw: FdtSw, op: Op) -> int:
    a = op.args
    if op.name == "create":
        return sw.create(a[0], a[1])
    if op.name == "rsv":
        return sw.add_reservemap_entry(a[0], a[1])
    if op.name == "placeholder":
        return write_ours(sw, Prop("placeholder", a[0], a[1]))
    result: int = getattr(sw, op.name)(*a)
    return result


@SETTINGS
@given(st.integers(40, 700), st.data())
def test_fixed_buffer_matches_libfdt_call_by_call(size: int, data: st.DataObject) -> None:
    """Return codes (NOSPACE, BADSTATE, BADMAGIC, BADFLAGS) and every byte, after every call.

    Includes the bytes libfdt leaves behind: a string rolled back by a failed property stays in
    the buffer and may end up in a later node's padding.
    """
    first = data.draw(st.builds(op_create, st.integers(0, size), st.sampled_from([0, 0, 1, 2]))
                      | ops)
    sequence = [first, *data.draw(st.lists(ops | st.builds(op_create, st.integers(0, size),
                                                           st.just(0)), max_size=60))]
    cbuf, pbuf = bytearray(size), bytearray(size)
    sw = FdtSw(pbuf)
    for i, op in enumerate(sequence):
        assert run_ours(sw, op) == run_c(cbuf, op), (i, op)
        assert pbuf == cbuf, (i, op)


def test_states_out_of_order() -> None:
    buf = bytearray(PAGE)
    sw = FdtSw(buf)
    assert sw.begin_node("") == -FDT_ERR_BADMAGIC  # never created: zero magic
    assert sw.create(47) == -FDT_ERR_NOSPACE
    assert sw.create(flags=2) == -FDT_ERR_BADFLAGS
    assert sw.create() == 0
    assert sw.begin_node("") == -FDT_ERR_BADSTATE  # before fdt_finish_reservemap
    assert sw.property_u32("x", 1) == -FDT_ERR_BADSTATE
    assert sw.finish() == -FDT_ERR_BADSTATE
    assert sw.add_reservemap_entry(1, 2) == 0
    assert sw.finish_reservemap() == 0
    assert sw.add_reservemap_entry(3, 4) == -FDT_ERR_BADSTATE  # map already closed
    assert sw.finish_reservemap() == -FDT_ERR_BADSTATE
    assert sw.begin_node("") == 0
    assert sw.end_node() == 0
    assert sw.finish() == 0
    after = bytes(buf)
    assert sw.property("x", b"") == -FDT_ERR_BADSTATE  # after fdt_finish
    assert sw.property_placeholder("x", 4) == (-FDT_ERR_BADSTATE, 0)
    assert sw.begin_node("n") == sw.end_node() == sw.finish() == -FDT_ERR_BADSTATE
    assert sw.add_reservemap_entry(0, 0) == -FDT_ERR_BADSTATE
    assert bytes(buf) == after
    assert sw.create() == 0  # a new tree in the same page, as every kho_finalize does
    assert buf[4:8] == PAGE.to_bytes(4, "big") and buf[40:] == bytes(PAGE - 40)


def test_create_bounds() -> None:
    sw = FdtSw(bytearray(100))
    with pytest.raises(ValueError):
        sw.create(101)
    with pytest.raises(ValueError):
        FdtSw(b"read-only")  # type: ignore[arg-type]
    assert sw.create(-1) == -FDT_ERR_NOSPACE
    assert FdtSw(bytearray(10)).finish() == -FDT_ERR_BADMAGIC


# --- NOSPACE in one page, the kernel's way ----------------------------------------------------

def kho_root_calls(count: int) -> list[Op]:
    """kho_finalize's root, then `count` kho_add_subtree() calls, then the end."""
    calls = [Op("create", (PAGE, 0)), Op("finish_reservemap", ()), Op("begin_node", ("",)),
             Op("property_string", ("compatible", "kho-v1")),
             Op("placeholder", ("preserved-memory-map", bytes(8)))]
    for i in range(count):
        calls += [Op("begin_node", (f"producer-{i:03d}",)),
                  Op("property", ("fdt", struct.pack("<Q", 0x100000 * i))), Op("end_node", ())]
    return calls + [Op("end_node", ()), Op("finish", ())]


def oracle_space(calls: list[Op]) -> list[int]:
    """Bytes in use (header, map, struct, strings) after each call, from the growing oracle."""
    sw = libfdt.FdtSw()
    used = []
    for op in calls[1:]:
        if op.name == "finish":
            blob = finished(sw)
            used.append(fdt_totalsize(blob))
            continue
        if op.name == "placeholder":
            sw.property(op.args[0], op.args[1])
        else:
            getattr(sw, op.name)(*op.args)
        raw = sw._fdt  # the work-in-progress header: struct and strings sizes so far
        used.append(libfdt.fdt_off_dt_struct(raw) + libfdt.fdt_size_dt_struct(raw)
                    + libfdt.fdt_size_dt_strings(raw))
    return used


def test_nospace_at_the_call_libfdt_fails() -> None:
    calls = kho_root_calls(120)  # 120 sub-nodes of 40 bytes each cannot fit a page
    used = oracle_space(calls)
    first_fail = 1 + next(i for i, n in enumerate(used) if n > PAGE)
    # By hand: 64 bytes of header and map, 48 of root struct, 36 of strings leave 3948; each
    # sub-node takes 44 (20 begin, 20 property, 4 end). After 89 of them 32 bytes are left: the
    # 90th begin_node fits, its property does not.
    assert first_fail == 5 + 3 * ((PAGE - 64 - 48 - 36) // 44) + 1
    buf, cbuf = bytearray(PAGE), bytearray(PAGE)
    sw = FdtSw(memoryview(buf))
    err = 0
    results = []
    for op in calls:
        result = run_ours(sw, op)
        assert result == run_c(cbuf, op)
        results.append(result)
        err |= result
    assert buf == cbuf
    assert results.index(-FDT_ERR_NOSPACE) == first_fail
    assert all(r == 0 for r in results[:first_fail])
    assert set(results) == {0, -FDT_ERR_NOSPACE}
    assert -err == 3  # what kho_finalize returns: -ESRCH to the writer of `finalize`


def test_nospace_rolls_back_the_new_string() -> None:
    """A property that does not fit leaves the strings block as it was (fdt_del_last_string_)."""
    sw = FdtSw(bytearray(128))
    assert sw.create() == sw.finish_reservemap() == sw.begin_node("") == 0
    assert sw.property("a-long-property-name", bytes(40)) == -FDT_ERR_NOSPACE
    assert sw.buf[32:36] == bytes(4)  # size_dt_strings still 0
    assert sw.property("a-long-property-name", bytes(4)) == 0
    assert sw.end_node() == sw.finish() == 0
    blob = bytes(sw.buf[:fdt_totalsize(sw.buf)])
    assert blob.endswith(b"\0\0\0\x09a-long-property-name\0")


# --- the spec example and placeholders ------------------------------------------------------

SPEC_BLOB = bytes.fromhex(
    "d00dfeed000000c400000040000000a0000000300000001100000010000000000000002400000060"
    "0000000000000000000000000000000000000000000000000000000100000000000000030000000700000019"
    "6b686f2d763100000000000300000008000000040000100000000000000000016d656d626c6f636b00000000"
    "0000000300000008000000000040230100000000000000020000000200000009666474007072657365727665"
    "642d6d656d6f72792d6d617000636f6d70617469626c6500")


def spec_root(buf: bytearray | memoryview) -> tuple[FdtSw, int]:
    sw = FdtSw(buf)
    err = sw.create() | sw.finish_reservemap() | sw.begin_node("")
    err |= sw.property_string("compatible", "kho-v1")
    perr, off = sw.property_placeholder("preserved-memory-map", 8)
    err |= perr | sw.begin_node("memblock")
    err |= sw.property("fdt", struct.pack("<Q", 0x1234000))
    err |= sw.end_node() | sw.end_node() | sw.finish()
    assert err == 0
    sw.buf[off:off + 8] = struct.pack("<Q", 0x100000)
    return sw, off


def test_spec_example_bytes() -> None:
    buf = bytearray(PAGE)
    sw, off = spec_root(buf)
    blob = bytes(buf[:fdt_totalsize(buf)])
    assert blob == SPEC_BLOB
    assert len(blob) == 196
    hdr = struct.unpack(">10I", blob[:40])
    assert hdr == (FDT_MAGIC, 196, 64, 160, 48, 17, 16, 0, 36, 96)
    assert blob[40:64] == bytes(24)  # padding to 48, then the terminating map entry
    assert blob[160:] == b"fdt\0preserved-memory-map\0compatible\0"
    # fdt_finish() copies the strings down and leaves the old copy at the end of the page.
    assert buf[196:PAGE - 36] == bytes(PAGE - 196 - 36)
    assert buf[PAGE - 36:] == blob[160:]
    oracle = libfdt.FdtSw()
    oracle.finish_reservemap()
    with oracle.add_node(""):
        oracle.property_string("compatible", "kho-v1")
        oracle.property("preserved-memory-map", struct.pack("<Q", 0x100000))
        with oracle.add_node("memblock"):
            oracle.property("fdt", struct.pack("<Q", 0x1234000))
    assert finished(oracle) == blob


def test_placeholder_offset_is_the_value_in_the_final_blob() -> None:
    buf = bytearray(PAGE)
    _, off = spec_root(buf)
    blob = bytes(buf[:fdt_totalsize(buf)])
    f = libfdt.Fdt(blob)
    prop_off = f.next_property_offset(f.first_property_offset(0))
    assert f.get_property_by_offset(prop_off).name == "preserved-memory-map"
    assert off == f.off_dt_struct() + prop_off + 12
    assert f.getprop(0, "preserved-memory-map") == struct.pack("<Q", 0x100000)
    assert struct.unpack_from(">III", blob, off - 12) == (FDT_PROP, 8, 4)  # nameoff rebased


def test_struct_tokens() -> None:
    body = SPEC_BLOB[64:160]
    words = struct.unpack(">24I", body)
    assert words[0] == FDT_BEGIN_NODE and words[-1] == FDT_END and words[-2] == FDT_END_NODE
    assert body[48:64] == struct.pack(">I", FDT_BEGIN_NODE) + b"memblock\0\0\0\0"


# --- real tools read our blobs ----------------------------------------------------------------

def run(*cmd: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(cmd, input=stdin, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_tools_read_our_blob(tmp_path: Path) -> None:
    path = tmp_path / "fdt"
    path.write_bytes(SPEC_BLOB)
    dump = run("fdtdump", str(path)).splitlines()
    assert dump[:12] == [
        "/dts-v1/;", "// magic:\t\t0xd00dfeed", "// totalsize:\t\t0xc4 (196)",
        "// off_dt_struct:\t0x40", "// off_dt_strings:\t0xa0", "// off_mem_rsvmap:\t0x30",
        "// version:\t\t17", "// last_comp_version:\t16", "// boot_cpuid_phys:\t0x0",
        "// size_dt_strings:\t0x24", "// size_dt_struct:\t0x60", ""]
    assert dump[12:] == [
        "/ {", '    compatible = "kho-v1";',
        "    preserved-memory-map = <0x00001000 0x00000000>;", "    memblock {",
        "        fdt = <0x00402301 0x00000000>;", "    };", "};"]
    assert run("fdtget", str(path), "/", "compatible") == "kho-v1\n"
    assert run("fdtget", "-t", "bx", str(path), "/", "preserved-memory-map") == \
        "0 0 10 0 0 0 0 0\n"
    assert run("fdtget", "-t", "x", str(path), "/memblock", "fdt") == "402301 0\n"
    assert run("fdtget", "-l", str(path), "/") == "memblock\n"
    assert run("fdtget", "-p", str(path), "/") == "compatible\npreserved-memory-map\n"
    assert run("dtc", "-I", "dtb", "-O", "dts", str(path)).splitlines() == [
        "/dts-v1/;", "", "/ {", '\tcompatible = "kho-v1";',
        "\tpreserved-memory-map = <0x1000 0x00>;", "", "\tmemblock {",
        "\t\tfdt = <0x402301 0x00>;", "\t};", "};"]


# --- compile_dts -------------------------------------------------------------------------------

KITCHEN_SINK = """\
/dts-v1/;
/memreserve/ 0x1000 0x2000;
/memreserve/ 16 017;

/ {
\tcompatible = "khofs,demo-v1", "generic";\t// a string list
\tmagic = <0x4b484f21>;
\tempty;
\tcells = <1 2 0xFFFFFFFF>, <010>, <>;
\tbytes = [0102 ab CD];
\tnobytes = [];
\t/* a comment { with ; braces } "and a quote */
\tstate {
\t\tgeneration = <1>;
\t\tlabel = "survives kexec";
\t\tnode@1f {
\t\t\treg = <0x1f>;
\t\t};
\t};
\tother@0,1 { };
};
"""


def kitchen_sink_oracle() -> bytes:
    sw = libfdt.FdtSw()
    sw.add_reservemap_entry(0x1000, 0x2000)
    sw.add_reservemap_entry(16, 0o17)
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property("compatible", b"khofs,demo-v1\0generic\0")
        sw.property_u32("magic", 0x4B484F21)
        sw.property("empty", b"")
        sw.property("cells", struct.pack(">4I", 1, 2, 0xFFFFFFFF, 8))
        sw.property("bytes", bytes([1, 2, 0xAB, 0xCD]))
        sw.property("nobytes", b"")
        with sw.add_node("state"):
            sw.property_u32("generation", 1)
            sw.property_string("label", "survives kexec")
            with sw.add_node("node@1f"):
                sw.property_u32("reg", 0x1F)
        with sw.add_node("other@0,1"):
            pass
    return finished(sw)


def test_compile_dts_matches_hand_built_oracle() -> None:
    assert compile_dts(KITCHEN_SINK) == kitchen_sink_oracle()


def relayout(dtb: bytes) -> bytes:
    """Any DTB (dtc's layout) rewritten by libfdt's sequential writer, node by node."""
    f = libfdt.Fdt(dtb)
    sw = libfdt.FdtSw()
    # get_mem_rsv() of this binding mangles an entry at address 0: read the map directly.
    for i in range(f.num_mem_rsv()):
        sw.add_reservemap_entry(*struct.unpack_from(">QQ", dtb, f.off_mem_rsvmap() + 16 * i))
    sw.finish_reservemap()
    quiet = (libfdt.NOTFOUND,)

    def node(offset: int) -> None:
        sw.begin_node(f.get_name(offset))
        prop = f.first_property_offset(offset, quiet)
        while prop >= 0:
            p = f.get_property_by_offset(prop)
            sw.property(p.name, bytes(p))
            prop = f.next_property_offset(prop, quiet)
        child = f.first_subnode(offset, quiet)
        while child >= 0:
            node(child)
            child = f.next_subnode(child, quiet)
        sw.end_node()

    node(0)
    return finished(sw)


def dtc_compile(text: str) -> bytes:
    result = subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-"], input=text.encode(),
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("text", [KITCHEN_SINK, (REPO / "examples/demo/demo.dts").read_text()])
def test_compile_dts_matches_dtc(text: str, tmp_path: Path) -> None:
    ours = compile_dts(text)
    theirs = dtc_compile(text)
    check_dtb(theirs)
    assert ours == relayout(theirs)
    path_ours, path_theirs = tmp_path / "ours.dtb", tmp_path / "theirs.dtb"
    path_ours.write_bytes(ours)
    path_theirs.write_bytes(theirs)
    assert run("dtc", "-I", "dtb", "-O", "dts", str(path_ours)) == \
        run("dtc", "-I", "dtb", "-O", "dts", str(path_theirs))


def test_kitchen_sink_through_dtc_text(tmp_path: Path) -> None:
    path = tmp_path / "k.dtb"
    path.write_bytes(compile_dts(KITCHEN_SINK))
    assert run("dtc", "-I", "dtb", "-O", "dts", str(path)).splitlines() == [
        "/dts-v1/;", "",
        "/memreserve/\t0x0000000000001000 0x0000000000002000;",
        "/memreserve/\t0x0000000000000010 0x000000000000000f;",
        "/ {", '\tcompatible = "khofs,demo-v1\\0generic";', "\tmagic = <0x4b484f21>;",
        "\tempty;", "\tcells = <0x01 0x02 0xffffffff 0x08>;", "\tbytes = <0x102abcd>;",
        "\tnobytes;", "", "\tstate {", "\t\tgeneration = <0x01>;",
        '\t\tlabel = "survives kexec";', "", "\t\tnode@1f {", "\t\t\treg = <0x1f>;", "\t\t};",
        "\t};", "", "\tother@0,1 {", "\t};", "};"]
    assert run("fdtget", str(path), "/state", "label") == "survives kexec\n"
    assert run("fdtget", "-t", "x", str(path), "/", "cells") == "1 2 ffffffff 8\n"


# Random trees written as DTS, in the subset compile_dts reads, against dtc itself.
dts_names = st.text("abcxyz019,._+-", min_size=1, max_size=8)
dts_strings = st.lists(st.text("abc XYZ019=<>[]{}'&@#:!-_.,", min_size=1, max_size=8).filter(
    lambda s: s == s.strip() and not s.startswith(",")), min_size=1, max_size=3)
dts_cells = st.lists(st.lists(st.integers(0, 2**32 - 1), max_size=4), min_size=1, max_size=3)
dts_values = st.one_of(
    st.none(), st.tuples(st.just("s"), dts_strings), st.tuples(st.just("c"), dts_cells),
    st.tuples(st.just("b"), st.binary(max_size=9)))


def literal(v: int, style: int) -> str:
    return (f"0x{v:x}", f"{v}", f"0{v:o}" if v else "0", f"0X{v:X}")[style % 4]


def dts_value(value: Any, seed: int) -> tuple[str, bytes]:
    if value is None:
        return "", b""
    kind, data = value
    if kind == "s":
        return " = " + ", ".join(f'"{s}"' for s in data), b"".join(s.encode() + b"\0"
                                                                   for s in data)
    if kind == "c":
        groups = ", ".join("<" + " ".join(literal(v, seed + i) for i, v in enumerate(g)) + ">"
                           for g in data)
        return " = " + groups, b"".join(struct.pack(">I", v) for g in data for v in g)
    return " = [" + bytes(data).hex(" ") + "]", bytes(data)


@st.composite
def dts_nodes(draw: st.DrawFn, depth: int) -> tuple[list[str], list[tuple[str, bytes]], list[Any]]:
    names = draw(st.lists(dts_names, unique=True, max_size=4))
    seed = draw(st.integers(0, 3))
    lines, props = [], []
    for name in names:
        text, raw = dts_value(draw(dts_values), seed)
        lines.append(f"{name}{text};")
        props.append((name, raw))
    children = []
    if depth:
        for name in draw(st.lists(dts_names, unique=True, max_size=3)):
            sub_lines, sub_props, sub_children = draw(dts_nodes(depth - 1))
            lines += [f"{name} {{", *sub_lines, "};"]
            children.append((name, sub_props, sub_children))
    return lines, props, children


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dts_nodes(3), st.lists(st.tuples(u64, st.integers(1, 2**64 - 1)), max_size=2))
def test_random_dts_matches_dtc(tree: Any, rsv: list[tuple[int, int]]) -> None:
    lines, props, children = tree
    text = "/dts-v1/;\n" + "".join(f"/memreserve/ {a:#x} {s:#x};\n" for a, s in rsv)
    text += "/ {\n" + "\n".join(lines) + "\n};\n"
    ours = compile_dts(text)
    assert ours == relayout(dtc_compile(text))
    sw = libfdt.FdtSw()
    for a, s in rsv:
        sw.add_reservemap_entry(a, s)
    sw.finish_reservemap()

    def node(name: str, node_props: list[tuple[str, bytes]], node_children: list[Any]) -> None:
        sw.begin_node(name)
        for pname, raw in node_props:
            sw.property(pname, raw)
        for child in node_children:
            node(*child)
        sw.end_node()

    node("", props, children)
    assert ours == finished(sw)


BAD_DTS = [
    ("/ { a = <1>; };", "line 1: missing /dts-v1/"),
    ("/dts-v1/;\n/ {\n a = <1>\n};", "line 3: "),
    ("/dts-v1/;\n/ { a { }; b; };", "properties must precede subnodes"),
    ("/dts-v1/;\n/ { a; a; };", "duplicate property 'a'"),
    ("/dts-v1/;\n/ { n { }; n { }; };", "duplicate node 'n'"),
    ("/dts-v1/;\n/ {\n\n x = <0x100000000>;\n};", "line 4: value 0x100000000 out of range"),
    ("/dts-v1/;\n/ { x = <08>; };", "bad integer literal '08'"),
    ("/dts-v1/;\n/ { x = <&lbl>; };", "references"),
    ("/dts-v1/;\n/ { lbl: n { }; };", "labels"),
    ("/dts-v1/;\n/ { x = /bits/ 64 <1>; };", "/bits/"),
    ("/dts-v1/;\n/ { x = <(1 + 2)>; };", "expressions"),
    ("/dts-v1/;\n/ { x = \"a;b\"; };", "';' inside a string"),
    ("/dts-v1/;\n/ { x = \"http://x\"; };", "'//' inside a string"),
    ("/dts-v1/;\n/ { x = \"a\\n\"; };", "'\\\\' inside a string"),
    ("/dts-v1/;\n/ { x = \"\"; };", "empty strings"),
    ("/dts-v1/;\n/ { x = \"a\", \",b\"; };", "starting with ','"),
    ("/dts-v1/;\n/ { x = \" a\"; };", "outer spaces"),
    ("/dts-v1/;\n/ { x = \"a\tb\"; };", "control characters"),
    ("/dts-v1/;\n/ { x = \"a\", <1>; };", "mixed"),
    ("/dts-v1/;\n/ { x = [012]; };", "bad byte string '012'"),
    ("/dts-v1/;\n/ { x = [01], [02]; };", "line 2:"),
    ("/dts-v1/;\n/ { x = <1> <2>; };", "mixed or malformed"),
    ("/dts-v1/;\n/ { x = \"abc; };", "line 2: unterminated string"),
    ("/dts-v1/;\n/* never closed\n/ { };", "line 2: unterminated comment"),
    ("/dts-v1/;\n/ { };\n/ { };", "only one root node"),
    ("/dts-v1/;\n/ { a { };", "missing '};'"),
    ("/dts-v1/;\n/ { a } };", "line 2:"),
    ("/dts-v1/;\n/ { /delete-property/ x; };", "/delete-property/ is not supported"),
    ("/dts-v1/;\n/ { b@a/c { }; };", "line 2:"),
    ("/dts-v1/;\n/ { x = 'a'; };", "character literals"),
    ("/dts-v1/;\n/ { x = <1>; }", "missing ';' at the end"),
    ("/dts-v1/;\n/memreserve/ 1;\n/ { };", "line 2: /memreserve/ needs"),
    ("/dts-v1/;\n/memreserve/ 0x1000 0;\n/ { };", "line 2: /memreserve/ of size 0"),
    ("/dts-v1/;\n/ { x = <1>; };\n$", "unexpected character '$'"),
    ("", "missing /dts-v1/"),
]


@pytest.mark.parametrize(("text", "message"), BAD_DTS)
def test_compile_dts_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_dts(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_compile_dts_too_large() -> None:
    count = MAX_DTB_SIZE // 20 + 1
    text = "/dts-v1/;\n/ {\n" + "".join(f"p{i} = <{i}>;\n" for i in range(count)) + "};\n"
    with pytest.raises(ValueError, match="tree too large"):
        compile_dts(text)


# --- check_dtb ---------------------------------------------------------------------------------

def patched(blob: bytes, offset: int, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(">I", out, offset, value)
    return bytes(out)


def test_check_dtb_accepts() -> None:
    check_dtb(SPEC_BLOB)
    check_dtb(SPEC_BLOB + b"trailing bytes past totalsize")
    check_dtb(compile_dts(KITCHEN_SINK))
    check_dtb(dtc_compile(KITCHEN_SINK))
    check_dtb(dtc_compile("/dts-v1/;\n/ { };"))


def test_check_dtb_rejects() -> None:
    blob = SPEC_BLOB
    nop_after_root = bytearray(blob[:156]) + struct.pack(">II", 4, FDT_END) + blob[160:]
    struct.pack_into(">III", nop_after_root, 4, len(nop_after_root), 64, 164)
    struct.pack_into(">I", nop_after_root, 36, 100)
    bad = {
        "magic": patched(blob, 0, 0xD00DFEEE),
        "short": blob[:39],
        "truncated": blob[:195],
        "totalsize": patched(blob, 4, 197),
        "small totalsize": patched(blob, 4, 39),
        "struct past end": patched(blob, 8, 180),
        "struct size past end": patched(blob, 36, 200),
        "strings past end": patched(blob, 12, 190),
        "strings size": patched(blob, 32, 0x7FFFFFFF),
        "rsvmap past end": patched(blob, 16, 0xFFFFFFF0),
        "rsvmap in header": patched(blob, 16, 8),
        "rsvmap unaligned": patched(blob, 16, 44),
        "version": patched(blob, 20, 15),
        "last_comp_version": patched(blob, 24, 18),
        "garbage struct": blob[:64] + b"\xff" * 96 + blob[160:],
        "bad tag": patched(blob, 64 + 8, 7),
        "unbalanced": patched(blob, 64 + 88, FDT_END),
        "root name": blob[:68] + b"x" + blob[69:],
        "name offset": patched(blob, 64 + 16, 36),
        "value past struct": patched(blob, 64 + 12, 1000),
        "no terminator in map": patched(blob, 60, 1),
        "map ends with an address": patched(blob, 52, 1),
        "nop after root": bytes(nop_after_root),
    }
    for what, data in bad.items():
        with pytest.raises(ValueError) as info:
            check_dtb(data)
        assert "\n" not in str(info.value), what
    longer = patched(blob, 36, 100)  # a struct block longer than its FDT_END: accepted
    check_dtb(longer)
    libfdt_walk(longer)


mutations = st.lists(st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.integers(0, 100), st.sampled_from(
        [0, 1, 2, 3, 4, 9, 36, 40, 48, 64, 96, 160, 196, 0xFFFFFFFF, 0x80000000])),
    st.tuples(st.just("cut"), st.integers(0, 400), st.just(0)),
), min_size=1, max_size=4)


def libfdt_walk(data: bytes) -> None:
    """What a reader of the blob does: libfdt's full check, then every node and property."""
    assert libfdt.fdt_check_full(bytearray(data), len(data)) == 0
    f = libfdt.Fdt(data)
    for i in range(f.num_mem_rsv()):
        f.get_mem_rsv(i)
    offset, depth = 0, 0
    while offset >= 0 and depth >= 0:
        f.get_name(offset)
        prop = f.first_property_offset(offset, (libfdt.NOTFOUND,))
        while prop >= 0:
            f.get_property_by_offset(prop)
            prop = f.next_property_offset(prop, (libfdt.NOTFOUND,))
        offset, depth = f.next_node(offset, depth, (libfdt.NOTFOUND,))


@SETTINGS
@given(st.sampled_from(["spec", "sink", "dtc"]), mutations)
def test_mutated_dtb_is_rejected_or_readable(source: str, muts: list[tuple[str, int, int]]) -> None:
    base = {"spec": SPEC_BLOB, "sink": SINK_BLOB, "dtc": SINK_DTC}[source]
    data = bytearray(base)
    for kind, pos, value in muts:
        if kind == "cut":
            del data[pos:]
        elif kind == "byte" and pos < len(data):
            data[pos] = value
        elif kind == "u32" and pos + 4 <= len(data):
            struct.pack_into(">I", data, pos & ~3, value)
    try:
        check_dtb(bytes(data))
    except ValueError as e:
        assert "\n" not in str(e)
        return
    libfdt_walk(bytes(data))


SINK_BLOB = compile_dts(KITCHEN_SINK)
SINK_DTC = dtc_compile(KITCHEN_SINK)
