"""Machine files (`--machine FILE.toml`), `--machine NAME` and `--machine host`."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from khofs.engine.machine import X86_64, GiB, KiB, Machine, MiB, Node, arm64, get_arch
from khofs.errors import MachineError
from khofs.machines.host import host_machine
from khofs.machines.load import load_machine
from khofs.machines.machine_file import load_machine_file, parse_number
from khofs.machines.presets import MACHINES, contiguous_nodes, pc_nodes
from tests.helpers import boot_kernel

TiB = 1 << 40
X86_HEAD = 'arch = "x86_64"\ncpus = 4\n'
LOW_RAM = '[[node]]\nranges = ["0x0-0x9f000", "0x100000-0x80000000"]\n'
GOOD = X86_HEAD + LOW_RAM
LOW_NODE = Node(0, ((0, 0x9F000), (MiB, 2 * GiB)))
ARM_HEAD = 'arch = "arm64"\ncpus = 4\n'


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path | str) -> str:
    with pytest.raises(MachineError) as info:
        load_machine(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- --machine NAME -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MACHINES))
def test_presets(name: str) -> None:
    assert load_machine(name) is MACHINES[name]


def test_unknown_machine() -> None:
    assert error("mainframe") == ("--machine mainframe: unknown machine (laptop, qemu-vmtest, "
                                  "server-2s, arm64-virt, arm64-virt-16k, arm64-virt-64k, host, "
                                  "or a .toml file)")


def test_spec_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path with a '/', a name ending .toml, or any existing file is a machine file."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, GOOD, "box.toml")
    write(tmp_path, GOOD, "plainfile")
    assert load_machine("box.toml").name == "box"
    assert load_machine("./box.toml").name == "box"
    assert load_machine(str(tmp_path / "box.toml")).name == "box"
    assert load_machine("plainfile").name == "plainfile"
    assert error("missing.toml") == "missing.toml: No such file or directory"
    assert error("sub/missing") == "sub/missing: No such file or directory"
    (tmp_path / "adir").mkdir()
    assert error("adir").startswith("--machine adir: unknown machine")


def test_reading_errors(tmp_path: Path) -> None:
    (tmp_path / "d.toml").mkdir()
    assert error(tmp_path / "d.toml") == f"{tmp_path}/d.toml: Is a directory"
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b'arch = "x86_64"\n\xff\n')
    assert error(bad) == f"{bad}: not UTF-8 text (byte 16)"


# --- good files -----------------------------------------------------------------------------

def test_x86_ranges(tmp_path: Path) -> None:
    path = write(tmp_path, X86_HEAD + '[[node]]\nranges = ["0x0-0x9f000", "0x100000-0x80000000",'
                 ' "0x100000000+14G"]\n', "my-box.toml")
    m = load_machine(str(path))
    assert m == Machine("my-box", f"x86_64, 16.0 GiB in 1 node, 4 CPUs, from {path}", X86_64,
                        cpus=4, nodes=(Node(0, ((0, 0x9F000), (MiB, 2 * GiB),
                                                (4 * GiB, 18 * GiB))),),
                        kernel_size=38 * MiB, initrd_size=0, cmdline=None)


def test_laptop_as_a_file(tmp_path: Path) -> None:
    """The laptop preset written as a file, with `size`, is the preset exactly."""
    path = write(tmp_path, f'''
name = "laptop"
description = "{MACHINES["laptop"].description}"
arch = "x86_64"
page_size = "4K"
cpus = 8
kernel_size = "38M"
initrd_size = "64M"

[[node]]
size = "16G"
''')
    assert load_machine(str(path)) == MACHINES["laptop"]


def test_server_as_ranges(tmp_path: Path) -> None:
    """server-2s by ranges: the nodes, ids in file order, ranges as written."""
    path = write(tmp_path, '''
name = "server-2s"
description = "x86-64, two NUMA nodes of 192 GiB, 96 CPUs"
arch = "x86_64"
cpus = 96
kernel_size = 39845888      # a TOML integer is a size too
initrd_size = "0x4000000"

[[node]]
ranges = ["0x0-0x9f000", "0x100000 - 0x80000000", " 0x100000000 + 190G "]
[[node]]
ranges = ["0x3080000000+192g"]
''')
    assert load_machine(str(path)) == MACHINES["server-2s"]


def test_x86_sizes_two_nodes(tmp_path: Path) -> None:
    path = write(tmp_path, X86_HEAD + '[[node]]\nsize = "16G"\n[[node]]\nsize = "8G"\n')
    m = load_machine(str(path))
    assert m.nodes == pc_nodes([16 * GiB, 8 * GiB])
    assert m.nodes == (Node(0, ((0, 0x9F000), (MiB, 2 * GiB), (4 * GiB, 18 * GiB))),
                       Node(1, ((18 * GiB, 26 * GiB),)))


@pytest.mark.parametrize("page, text", [(4 * KiB, "4K"), (16 * KiB, "16k"),
                                        (64 * KiB, "0x10000")])
def test_arm64_page_sizes(tmp_path: Path, page: int, text: str) -> None:
    path = write(tmp_path, ARM_HEAD + f'page_size = "{text}"\ninitrd_size = "16M"\n'
                 '[[node]]\nsize = "4G"\n[[node]]\nsize = "2G"\n')
    m = load_machine(str(path))
    assert m.arch == arm64(page) == get_arch("arm64", page)
    assert m.nodes == contiguous_nodes(GiB, [4 * GiB, 2 * GiB])
    assert m.nodes == (Node(0, ((GiB, 5 * GiB),)), Node(1, ((5 * GiB, 7 * GiB),)))
    assert (m.kernel_size, m.initrd_size) == (32 * MiB, 16 * MiB)
    pages = "" if page == 4 * KiB else f" ({page // KiB} KiB pages)"
    assert m.description == f"arm64{pages}, 6.0 GiB in 2 nodes, 4 CPUs, from {path}"


def test_arm64_virt_64k_as_ranges(tmp_path: Path) -> None:
    preset = MACHINES["arm64-virt-64k"]
    path = write(tmp_path, f'''
name = "arm64-virt-64k"
description = "{preset.description}"
arch = "arm64"
page_size = 65536
cpus = 4
initrd_size = "16M"
[[node]]
ranges = ["0x40000000-0x140000000"]
''')
    assert load_machine(str(path)) == preset


def test_arm64_ranges_high_ram(tmp_path: Path) -> None:
    """RAM that starts high (as on many arm64 servers): ranges sorted within a node."""
    path = write(tmp_path, ARM_HEAD + '[[node]]\nranges = ["0x8880000000+2G", '
                 '"0x8000000000+2G"]\n[[node]]\nranges = ["0x10000000000+4G"]\n')
    m = load_machine(str(path))
    assert m.nodes == (Node(0, ((0x80_0000_0000, 0x80_8000_0000),
                                (0x88_8000_0000, 0x89_0000_0000))),
                       Node(1, ((TiB, TiB + 4 * GiB),)))
    assert boot_kernel(m).scratch


def test_cmdline_carried(tmp_path: Path) -> None:
    path = write(tmp_path, X86_HEAD + 'cmdline = "kho=on kho_scratch=30%,\\"x\\""\n' + LOW_RAM)
    assert load_machine(str(path)).cmdline == 'kho=on kho_scratch=30%,"x"'


def test_inline_node_tables(tmp_path: Path) -> None:
    path = write(tmp_path, X86_HEAD + 'node = [{size = "4G"}, {size = "4G"}]\n')
    assert load_machine(str(path)).nodes == pc_nodes([4 * GiB, 4 * GiB])


def test_tiny_machine_boots(tmp_path: Path) -> None:
    """The smallest machine accepted boots (KHO's scratch may not fit: that is the kernel's
    business, not a crash)."""
    path = write(tmp_path, ARM_HEAD + 'page_size = "64K"\nkernel_size = "16M"\n'
                 '[[node]]\nranges = ["0x40000000+64M"]\n')
    m = load_machine(str(path))
    assert m.memory_size == 64 * MiB
    boot_kernel(m)


def test_eight_tib_four_nodes_boots_fast(tmp_path: Path) -> None:
    path = write(tmp_path, 'arch = "x86_64"\ncpus = 256\n' + '[[node]]\nsize = "2T"\n' * 4)
    start = time.perf_counter()
    m = load_machine(str(path))
    kernel = boot_kernel(m)
    elapsed = time.perf_counter() - start
    assert m.memory_size == 8 * TiB - (MiB - 0x9F000)  # the PC's legacy hole
    assert m.nodes[3] == Node(3, ((6 * TiB + 2 * GiB, 8 * TiB + 2 * GiB),))
    assert kernel.kho_enabled and len(kernel.scratch) == 6
    assert elapsed < 0.5, elapsed


def test_largest_address_space_boots_fast(tmp_path: Path) -> None:
    """The most a file may describe, RAM up to arm64's MAX_PHYSMEM_BITS, stays quick."""
    ranges = [f'"{n * 64 * TiB:#x}+64T"' for n in range(4)]
    ranges[0] = '"0x40000000-0x400000000000"'
    text = ARM_HEAD + "".join(f"[[node]]\nranges = [{r}]\n" for r in ranges)
    start = time.perf_counter()
    boot_kernel(load_machine(str(write(tmp_path, text))))
    assert time.perf_counter() - start < 1.0


# --- numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("4K", 4096), ("4k", 4096), ("0x1000", 4096), ("010", 8), ("  1G ", GiB),
    ("0x1E", 0x1E), ("1e", 1 << 60), ("15E", 15 << 60), ("0", 0), ("0xffffffffffffffff", 2**64 - 1),
])
def test_numbers(text: str, value: int) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", " ", "K", "x10", "0x", "08", "4KB", "4 K", "1_000", "-1",
                                  "16E", "0x10000000000000000", "\t", "4K\n", "1\x002"])
def test_bad_numbers(text: str) -> None:
    assert parse_number(text) is None


# --- refusals -------------------------------------------------------------------------------

def nodes(n: int, body: str = 'size = "1G"') -> str:
    return "".join(f"[[node]]\n{body}\n" for _ in range(n))


many_ranges = '[[node]]\nranges = [\n' + "".join(
    f'  "{0x100000000 + i * 2 * MiB:#x}+1M",\n' for i in range(3201)) + ']\n'

REFUSALS: list[tuple[str, str]] = [
    # TOML itself
    ('arch = "x86_64"\ncpus =\n', ": Invalid value (at line 2, column 7)"),
    ('arch = "x86_64"\narch = "arm64"\n', ": Cannot overwrite a value (at line 2, column 15)"),
    # unknown keys
    (X86_HEAD + 'ram = "4G"\n' + LOW_RAM,
     ":3: unknown key 'ram' (name, description, arch, page_size, cpus, kernel_size, "
     "initrd_size, cmdline, node)"),
    (GOOD + '[machine]\nx = 1\n',
     ":5: unknown key 'machine' (name, description, arch, page_size, cpus, kernel_size, "
     "initrd_size, cmdline, node)"),
    (X86_HEAD + LOW_RAM + '[[node]]\nsize = "1G"\nstart = 0\n',
     ":7: node 1: unknown key 'start' (ranges, size)"),
    # name, description
    (X86_HEAD + 'name = 7\n' + LOW_RAM, ":3: 'name' must be a string, not integer"),
    (X86_HEAD + 'name = ""\n' + LOW_RAM, ":3: 'name' must not be empty"),
    (X86_HEAD + 'description = """two\nlines"""\n' + LOW_RAM,
     ":3: 'description' must be one line, without NULs"),
    (X86_HEAD + 'description = ["x"]\n' + LOW_RAM, ":3: 'description' must be a string, not array"),
    # arch and page size
    ('cpus = 4\n' + LOW_RAM, ": 'arch' is required (x86_64 or arm64)"),
    ('cpus = 4\narch = 64\n' + LOW_RAM, ":2: 'arch' must be a string, not integer"),
    ('cpus = 4\narch = "sparc"\n' + LOW_RAM, ":2: unknown architecture 'sparc' (x86_64 or arm64)"),
    (X86_HEAD + 'page_size = "16K"\n' + LOW_RAM, ":3: page_size '16K': x86_64 has 4K pages only"),
    (ARM_HEAD + 'page_size = 8192\n' + LOW_RAM,
     ":3: page_size 8192: arm64 pages are 4K, 16K or 64K"),
    (X86_HEAD + 'page_size = "4Q"\n' + LOW_RAM, ":3: page_size: bad number '4Q'"),
    (X86_HEAD + 'page_size = 4.0\n' + LOW_RAM,
     ":3: 'page_size' must be a size such as \"16G\" or an integer, not float"),
    # cpus
    ('arch = "x86_64"\n' + LOW_RAM, ": 'cpus' is required (1 to 8192)"),
    ('arch = "x86_64"\ncpus = "4"\n' + LOW_RAM, ":2: 'cpus' must be an integer, not string"),
    ('arch = "x86_64"\ncpus = true\n' + LOW_RAM, ":2: 'cpus' must be an integer, not boolean"),
    ('arch = "x86_64"\ncpus = 0\n' + LOW_RAM, ":2: cpus 0: must be from 1 to 8192"),
    ('arch = "x86_64"\ncpus = 8193\n' + LOW_RAM, ":2: cpus 8193: must be from 1 to 8192"),
    # kernel and initrd sizes
    (X86_HEAD + 'kernel_size = "0"\n' + LOW_RAM, ":3: kernel_size '0': must be more than 0"),
    (X86_HEAD + 'kernel_size = -1\n' + LOW_RAM, ":3: kernel_size -1: must not be negative"),
    (X86_HEAD + 'kernel_size = "38 M"\n' + LOW_RAM, ":3: kernel_size: bad number '38 M'"),
    (X86_HEAD + 'kernel_size = "16E"\n' + LOW_RAM, ":3: kernel_size: bad number '16E'"),
    (X86_HEAD + 'kernel_size = "M"\n' + LOW_RAM, ":3: kernel_size: bad number 'M'"),
    (X86_HEAD + 'kernel_size = "3G"\n' + LOW_RAM,
     ":3: kernel_size '3G': the kernel image at 0x1000000-0xc1000000 is not all RAM "
     "(x86_64 loads it at 16 MiB)"),
    (X86_HEAD + '[[node]]\nranges = ["0x0-0x9f000", "0x1100000-0x80000000"]\n',
     ":3: kernel_size 38 MiB: the kernel image at 0x1000000-0x3600000 is not all RAM "
     "(x86_64 loads it at 16 MiB)"),
    (X86_HEAD + '[[node]]\nranges = ["0x100000000+4G"]\n',
     ":3: kernel_size 38 MiB: the kernel image at 0x1000000-0x3600000 is not all RAM "
     "(x86_64 loads it at 16 MiB)"),
    (ARM_HEAD + 'kernel_size = "100M"\n[[node]]\nranges = ["0x40000000+64M"]\n',
     ":3: kernel_size '100M': the kernel image at 0x40200000-0x46600000 is not all RAM "
     "(arm64 loads it 2 MiB into RAM)"),
    (X86_HEAD + 'initrd_size = true\n' + LOW_RAM,
     ":3: 'initrd_size' must be a size such as \"16G\" or an integer, not boolean"),
    (X86_HEAD + 'initrd_size = "3G"\n' + LOW_RAM,
     ":3: initrd_size '3G': more than the RAM below 0x80000000 (x86_64 boot loaders put it at "
     "the top of the RAM below 2 GiB)"),
    (X86_HEAD + 'initrd_size = "70M"\n[[node]]\nranges = ["0x100000-0x4000000", '
     '"0x4100000-0x8000000"]\n',
     ":3: initrd_size '70M': the initrd at 0x3a00000-0x8000000 is not all RAM (x86_64 boot "
     "loaders put it at the top of the RAM below 2 GiB)"),
    (X86_HEAD + 'initrd_size = "100M"\n[[node]]\nranges = ["0x100000-0x8000000"]\n',
     ":3: initrd_size '100M': the initrd at 0x1c00000-0x8000000 overlaps the kernel image at "
     "0x1000000-0x3600000 (x86_64 boot loaders put it at the top of the RAM below 2 GiB)"),
    (ARM_HEAD + 'initrd_size = "200M"\n[[node]]\nranges = ["0x40000000+256M"]\n',
     ":3: initrd_size '200M': the initrd at 0x48000000-0x54800000 is not all RAM (QEMU puts it "
     "half the RAM, at most 128 MiB, into RAM)"),
    (ARM_HEAD + 'initrd_size = "4M"\n[[node]]\nranges = ["0x40000000+64M"]\n',
     ":3: initrd_size '4M': the initrd at 0x42000000-0x42400000 overlaps the kernel image at "
     "0x40200000-0x42200000 (QEMU puts it half the RAM, at most 128 MiB, into RAM)"),
    # cmdline
    (X86_HEAD + 'cmdline = 5\n' + LOW_RAM, ":3: 'cmdline' must be a string, not integer"),
    (X86_HEAD + 'cmdline = "kho=on\\nquiet"\n' + LOW_RAM,
     ":3: cmdline has a line break: a command line is one line"),
    (X86_HEAD + 'cmdline = "kho=on\\u0000quiet"\n' + LOW_RAM,
     ":3: cmdline has a NUL: the kernel's command line would end there"),
    # nodes
    (X86_HEAD, ": no [[node]] tables: a machine needs at least one NUMA node"),
    (X86_HEAD + 'node = []\n', ":3: 'node' is empty: a machine needs at least one NUMA node"),
    (X86_HEAD + 'node = 5\n', ":3: 'node' must be an array of tables ([[node]])"),
    (X86_HEAD + '[node]\nsize = "1G"\n', ":3: 'node' must be an array of tables ([[node]])"),
    (X86_HEAD + 'node = ["1G"]\n', ":3: 'node' must be an array of tables ([[node]])"),
    (X86_HEAD + nodes(1025), ":2051: more than 1024 nodes (MAX_NUMNODES)"),
    (X86_HEAD + LOW_RAM + '[[node]]\n# nothing\n', ":5: node 1: needs 'ranges' or 'size'"),
    (X86_HEAD + '[[node]]\nranges = ["0x0-0x80000000"]\nsize = "1G"\n',
     ":5: node 0: give 'ranges' or 'size', not both"),
    (X86_HEAD + LOW_RAM + '[[node]]\nsize = "1G"\n',
     ":6: node 1: 'size' here but 'ranges' in node 0: give every node ranges, or every node "
     "a size"),
    (X86_HEAD + '[[node]]\nsize = "1G"\n' + LOW_RAM,
     ":6: node 1: 'ranges' here but 'size' in node 0: give every node ranges, or every node "
     "a size"),
    # ranges
    (X86_HEAD + '[[node]]\nranges = "0x0-0x80000000"\n',
     ":4: node 0: 'ranges' must be an array of strings"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = []\n', ":6: node 1 has no RAM: 'ranges' is empty"),
    (X86_HEAD + '[[node]]\nranges = ["0x0-0x80000000", 4096]\n',
     ":4: node 0: ranges must be strings such as \"0x100000000+4G\", not integer"),
    (X86_HEAD + '[[node]]\nranges = [\n  "0x0-0x80000000",\n  "0x100000000",\n]\n',
     ":6: node 0 range '0x100000000': not START-END or START+SIZE"),
    (X86_HEAD + '[[node]]\nranges = ["0x0-0x80000000", "0x100000000-0x1zz"]\n',
     ":4: node 0 range '0x100000000-0x1zz': bad number '0x1zz'"),
    (X86_HEAD + '[[node]]\nranges = ["0x0-0x80000000", "0x100000000+16E"]\n',
     ":4: node 0 range '0x100000000+16E': bad number '16E'"),
    (X86_HEAD + '[[node]]\nranges = ["0x0-0x80000000", "0x100000000-0x100000000+1G"]\n',
     ":4: node 0 range '0x100000000-0x100000000+1G': bad number '0x100000000+1G'"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = ["0x100000000+0"]\n',
     ":6: node 1 range '0x100000000+0': empty"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = ["0x100000000-0x100000000"]\n',
     ":6: node 1 range '0x100000000-0x100000000': empty"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = ["0x200000000-0x100000000"]\n',
     ":6: node 1 range '0x200000000-0x100000000': ends before it starts"),
    (X86_HEAD + '[[node]]\nranges = ["0x0-0x9fc00", "0x100000-0x80000000"]\n',
     ":4: node 0 range '0x0-0x9fc00': not aligned to the 4 KiB page size"),
    (ARM_HEAD + 'page_size = "16K"\n[[node]]\nranges = ["0x40001000+1G"]\n',
     ":5: node 0 range '0x40001000+1G': not aligned to the 16 KiB page size"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = ["0xfffffff00000000+4G"]\n',
     ":6: node 1 range '0xfffffff00000000+4G': reaches 2**52 (4 PiB) or above, past any "
     "physical address"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = ["0x3fff00000000+8G"]\n',
     ":6: node 1 range '0x3fff00000000+8G': reaches 64 TiB or above, past the RAM x86_64 "
     "kernels use (MAX_PHYSMEM_BITS 46)"),
    (ARM_HEAD + '[[node]]\nranges = ["0x40000000+1G", "0xffff00000000-0x1000000000000"]\n'
     '[[node]]\nranges = ["0x1000000000000+1G"]\n',
     ":6: node 1 range '0x1000000000000+1G': reaches 256 TiB or above, past the RAM arm64 "
     "kernels use (MAX_PHYSMEM_BITS 48)"),
    (X86_HEAD + '[[node]]\nranges = [\n  "0x0-0x9f000",\n  "0x100000-0x80000000",\n'
     '  "0x0-0x9f000",\n]\n',
     ":7: node 0 range '0x0-0x9f000': overlaps node 0 range '0x0-0x9f000'"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = ["0x100000000+4G"]\n[[node]]\n'
     'ranges = ["0x200000000+4G", "0x7ffff000+8K"]\n',
     ":8: node 2 range '0x7ffff000+8K': overlaps node 0 range '0x100000-0x80000000'"),
    (X86_HEAD + LOW_RAM + '[[node]]\nranges = ["0x100000000+4G"]\n[[node]]\n'
     'ranges = ["0x80000000+4G"]\n',
     ":8: node 2 range '0x80000000+4G': overlaps node 1 range '0x100000000+4G'"),
    (X86_HEAD + many_ranges, ":3205: more than 3200 RAM ranges (E820_MAX_ENTRIES)"),
    # sizes
    (X86_HEAD + '[[node]]\nsize = "0"\n', ":4: node 0 has no RAM: size '0'"),
    (X86_HEAD + '[[node]]\nsize = "2G"\n[[node]]\nsize = 0\n', ":6: node 1 has no RAM: size 0"),
    (X86_HEAD + '[[node]]\nsize = "16G"\n[[node]]\nsize = "1G+1"\n',
     ":6: node 1 size: bad number '1G+1'"),
    (X86_HEAD + '[[node]]\nsize = [1]\n',
     ":4: 'size' must be a size such as \"16G\" or an integer, not array"),
    (X86_HEAD + '[[node]]\nsize = -4096\n', ":4: node 0 size -4096: must not be negative"),
    (X86_HEAD + '[[node]]\nsize = 4294967297\n',
     ":4: node 0 size 4294967297: not a multiple of the 4 KiB page size"),
    (ARM_HEAD + 'page_size = "64K"\n[[node]]\nsize = "1G"\n[[node]]\nsize = "1028K"\n',
     ":7: node 1 size '1028K': not a multiple of the 64 KiB page size"),
    (X86_HEAD + '[[node]]\nsize = "1M"\n',
     ":4: node 0 size '1M': a PC's node 0 needs more than its first 1 MiB"),
    (X86_HEAD + '[[node]]\nsize = "2G"\n[[node]]\nsize = "8P"\n',
     ":6: node 1 range 0x100000000-0x20000100000000 (from size '8P'): reaches 2**52 (4 PiB) "
     "or above, past any physical address"),
    (X86_HEAD + '[[node]]\nsize = "32T"\n[[node]]\nsize = "33T"\n',
     ":6: node 1 range 0x200080000000-0x410080000000 (from size '33T'): reaches 64 TiB or above, "
     "past the RAM x86_64 kernels use (MAX_PHYSMEM_BITS 46)"),
    # too little RAM
    (X86_HEAD + '\n[[node]]\nranges = ["0x0-0x9f000", "0x1000000+32M"]\n',
     ":4: only 33404 KiB of RAM: a machine needs at least 64 MiB"),
    (ARM_HEAD + '[[node]]\nsize = "32M"\n[[node]]\nsize = "16M"\n',
     ":3: only 48 MiB of RAM: a machine needs at least 64 MiB"),
]


@pytest.mark.parametrize("text, expected", REFUSALS)
def test_refusals(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert error(path) == f"{path}{expected}"


def test_refusal_lines_follow_the_file(tmp_path: Path) -> None:
    """The line is found in the file as written: comments, blank lines, quoted keys."""
    path = write(tmp_path, '''# my machine
"arch" = "x86_64"   # quoted key

cpus = 4

[[node]]   # node 0
ranges = ["0x0-0x9f000", "0x100000-0x80000000"]

[[node]]
# node 1: 'size' below is the offending key, not node 0's
ranges = [
    "0x100000000+1G",   # fine
    "0x140000000+1G",   # fine
    'oops',
]
''')
    assert error(path) == f"{path}:14: node 1 range 'oops': not START-END or START+SIZE"


# Values of every TOML type, and nonsense of the right types, for any key.
_VALUES = st.sampled_from([
    '0', '-1', '1', '4096', '1.5', 'true', '"4K"', '"16E"', '""', '"x86_64"', '"arm64"',
    '"0x0-0x9f000"', '"0x100000+1G"', '[]', '["0x0-0x1000"]', '[1, "a"]', '{}', '{a = 1}',
    '1979-05-27', '"\\u0000"', '"a\\nb"', '"0x40000000+1G"', '"16G"', '[[1]]', 'nan',
])
_KEYS = st.sampled_from(["name", "description", "arch", "page_size", "cpus", "kernel_size",
                         "initrd_size", "cmdline", "bogus"])
_NODE_KEYS = st.sampled_from(["ranges", "size", "x"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(top=st.dictionaries(_KEYS, _VALUES, max_size=6),
       node_tables=st.lists(st.dictionaries(_NODE_KEYS, _VALUES, max_size=2), max_size=3))
def test_never_a_traceback(tmp_path: Path, top: dict[str, str],
                           node_tables: list[dict[str, str]]) -> None:
    """Whatever the structure, the answer is a Machine that boots or one MachineError line."""
    text = "".join(f"{k} = {v}\n" for k, v in top.items())
    text += "".join("[[node]]\n" + "".join(f"{k} = {v}\n" for k, v in n.items())
                    for n in node_tables)
    path = write(tmp_path, text)
    try:
        machine = load_machine_file(path)
    except MachineError as e:
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: \S", str(e)), str(e)
        assert "\n" not in str(e)
        return
    boot_kernel(machine)


# --- the host -------------------------------------------------------------------------------

BLOCK = 128 * MiB


def fake_tree(tmp_path: Path, *, memmap: list[tuple[int, int, str]] | None = None,
              node_blocks: dict[int, list[int]] | None = None, iomem: str | None = None,
              meminfo_kb: int | None = None, cpus: dict[str, str] | None = None
              ) -> tuple[str, str]:
    """A /sys and a /proc holding only the files given: memmap entries (start, inclusive
    end, type), memory block numbers per node (a node with [] has CPUs only), iomem text,
    MemTotal, and cpu/{possible,online}."""
    sys_root, proc_root = tmp_path / "sys", tmp_path / "proc"
    (sys_root / "devices/system/cpu").mkdir(parents=True)
    proc_root.mkdir()
    for name, text in (cpus if cpus is not None else {"possible": "0-7\n"}).items():
        (sys_root / "devices/system/cpu" / name).write_text(text)
    for i, (start, end, kind) in enumerate(memmap or ()):
        entry = sys_root / "firmware/memmap" / str(i)
        entry.mkdir(parents=True)
        (entry / "start").write_text(f"{start:#x}\n")
        (entry / "end").write_text(f"{end:#x}\n")
        (entry / "type").write_text(f"{kind}\n")
    if node_blocks is not None:
        memory = sys_root / "devices/system/memory"
        memory.mkdir(parents=True)
        (memory / "block_size_bytes").write_text(f"{BLOCK:x}\n")
        for nid, blocks in node_blocks.items():
            node = sys_root / f"devices/system/node/node{nid}"
            node.mkdir(parents=True)
            (node / "cpu0").mkdir()
            for b in blocks:
                (memory / f"memory{b}").mkdir()
                (node / f"memory{b}").symlink_to(f"../../memory/memory{b}")
        (sys_root / "devices/system/node/possible").write_text("0-3\n")
    if iomem is not None:
        (proc_root / "iomem").write_text(iomem)
    if meminfo_kb is not None:
        (proc_root / "meminfo").write_text(f"MemTotal:       {meminfo_kb} kB\n"
                                           "MemFree:         1000 kB\n")
    return str(sys_root), str(proc_root)


ZEROED_IOMEM = """00000000-00000000 : Reserved
00000000-00000000 : System RAM
  00000000-00000000 : Kernel code
  00000000-00000000 : Kernel bss
00000000-00000000 : PCI Bus 0000:00
"""

X86_IOMEM = """00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7fffffff : System RAM
  01000000-0220bb07 : Kernel code
  02400000-02e09fff : Kernel rodata
  03000000-0327c13f : Kernel data
  03b34000-03c57fff : Kernel bss
80000000-febfffff : PCI Bus 0000:00
100000000-2ffffffff : System RAM
"""


def test_host_two_nodes_firmware_memmap(tmp_path: Path) -> None:
    """e820 RAM intersected with each node's memory blocks; the CPU-only node 2 left out."""
    sys_root, proc_root = fake_tree(
        tmp_path,
        memmap=[(0, 0x9FBFF, "System RAM"), (0x9FC00, 0xFFFFF, "Reserved"),
                (0x100000, 0x7FFFFFFF, "System RAM"), (0x80000000, 0x8FFFFFFF, "ACPI Tables"),
                (0x100000000, 0x43FFFFFFF, "System RAM")],
        node_blocks={0: [*range(0, 16), *range(32, 64)], 1: list(range(64, 136)), 2: []},
        iomem=ZEROED_IOMEM, meminfo_kb=15 * 1024 * 1024)
    m = host_machine(sys_root, proc_root, machine_arch="x86_64", page_size=4096)
    assert m == Machine(
        "host", f"x86_64, 15.0 GiB in 2 nodes, 8 CPUs, from {sys_root}/firmware/memmap and "
        f"{sys_root}/devices/system/node", X86_64, cpus=8,
        nodes=(Node(0, ((0, 0x9F000), (MiB, 2 * GiB), (4 * GiB, 8 * GiB))),
               Node(1, ((8 * GiB, 17 * GiB),))),
        kernel_size=38 * MiB)
    kernel = boot_kernel(m)
    assert kernel.kho_enabled and len(kernel.scratch) == 4


def test_host_iomem_when_no_firmware_memmap(tmp_path: Path) -> None:
    """The kernel's own map from a readable /proc/iomem, and the image size from it."""
    sys_root, proc_root = fake_tree(tmp_path, iomem=X86_IOMEM, cpus={"online": "0,2-3\n"})
    m = host_machine(sys_root, proc_root, machine_arch="x86_64", page_size=4096)
    assert m.nodes == (Node(0, ((0x1000, 0x9F000), (MiB, 2 * GiB), (4 * GiB, 12 * GiB))),)
    assert m.kernel_size == 0x3C58000 - 0x1000000
    assert m.cpus == 3
    assert m.description == f"x86_64, 10.0 GiB in 1 node, 3 CPUs, from {proc_root}/iomem"


def test_host_zeroed_iomem_uses_memory_blocks(tmp_path: Path) -> None:
    """Unprivileged: iomem reads as zeros, so each node's memory blocks are its RAM."""
    sys_root, proc_root = fake_tree(tmp_path, node_blocks={0: [8, 9, 10, 11], 1: [12, 13]},
                                    iomem=ZEROED_IOMEM, meminfo_kb=700 * 1024)
    m = host_machine(sys_root, proc_root, machine_arch="aarch64", page_size=16384)
    assert m.arch == arm64(16 * KiB)
    assert m.nodes == (Node(0, ((GiB, GiB + 4 * BLOCK),)), Node(1, ((GiB + 4 * BLOCK,
                                                                     GiB + 6 * BLOCK),)))
    assert m.kernel_size == 32 * MiB
    assert m.description == (f"arm64 (16 KiB pages), 768.0 MiB in 2 nodes, 8 CPUs, from "
                             f"{sys_root}/devices/system/node")
    boot_kernel(m)


def test_host_unreadable_iomem_falls_back_to_meminfo(tmp_path: Path) -> None:
    """No memory map, no nodes, iomem not a readable file: MemTotal laid out as a PC."""
    sys_root, proc_root = fake_tree(tmp_path, meminfo_kb=16 * 1024 * 1024 + 3,
                                    cpus={"possible": "garbage\n"})
    (Path(proc_root) / "iomem").mkdir()
    m = host_machine(sys_root, proc_root, machine_arch="x86_64", page_size=4096)
    assert m.nodes == pc_nodes([16 * GiB])
    assert m.cpus == os.cpu_count()
    assert m.description.endswith(f"from {proc_root}/meminfo")
    assert boot_kernel(m).kho_enabled


def test_host_arm64_meminfo_and_iomem_kernel(tmp_path: Path) -> None:
    """arm64's iomem names the image "Kernel code" and "Kernel data" (to _end)."""
    iomem = """40000000-13fffffff : System RAM
  40210000-4175ffff : Kernel code
  41760000-41cfffff : reserved
  41d00000-4227ffff : Kernel data
"""
    sys_root, proc_root = fake_tree(tmp_path, iomem=iomem)
    m = host_machine(sys_root, proc_root, machine_arch="aarch64", page_size=65536)
    assert m.nodes == contiguous_nodes(GiB, [4 * GiB])
    assert m.kernel_size == 0x42280000 - 0x40210000
    m = host_machine(*fake_tree(tmp_path / "b", meminfo_kb=2 * 1024 * 1024 + 60),
                     machine_arch="aarch64", page_size=65536)
    assert m.nodes == (Node(0, ((GiB, 3 * GiB),)),)


def test_host_memmap_without_nodes(tmp_path: Path) -> None:
    sys_root, proc_root = fake_tree(tmp_path, memmap=[(0x100000, 0x3FFFFFFF, "System RAM"),
                                                      (0x40000000, 0x40000FFF, "System RAM")])
    m = host_machine(sys_root, proc_root, machine_arch="x86_64", page_size=4096)
    assert m.nodes == (Node(0, ((MiB, GiB + 4 * KiB),)),)


@pytest.mark.parametrize("kwargs, expected", [
    ({"machine_arch": "riscv64", "page_size": 4096},
     "host: architecture riscv64 is not emulated (x86_64 and aarch64 are)"),
    ({"machine_arch": "x86_64", "page_size": 16384}, "host: x86_64 has 4K pages only"),
    ({"machine_arch": "aarch64", "page_size": 8192}, "host: arm64 pages are 4K, 16K or 64K"),
])
def test_host_refusals(tmp_path: Path, kwargs: dict[str, object], expected: str) -> None:
    sys_root, proc_root = fake_tree(tmp_path, meminfo_kb=4 * 1024 * 1024)
    with pytest.raises(MachineError) as info:
        host_machine(sys_root, proc_root, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == expected


def test_host_without_any_memory_information(tmp_path: Path) -> None:
    sys_root, proc_root = fake_tree(tmp_path)
    with pytest.raises(MachineError) as info:
        host_machine(sys_root, proc_root, machine_arch="x86_64", page_size=4096)
    assert str(info.value) == ("host: cannot tell how much RAM this machine has (no memory map "
                               f"and no MemTotal in {proc_root}/meminfo)")


def test_host_too_small(tmp_path: Path) -> None:
    sys_root, proc_root = fake_tree(tmp_path, memmap=[(0x1000000, 0x2FFFFFF, "System RAM")])
    with pytest.raises(MachineError) as info:
        host_machine(sys_root, proc_root, machine_arch="x86_64", page_size=4096)
    assert str(info.value) == "host: only 32 MiB of RAM: a machine needs at least 64 MiB"


def test_real_host() -> None:
    """This computer: it loads, matches what /proc says, and boots with scratch areas."""
    m = load_machine("host")
    assert m == host_machine()
    assert m.name == "host"
    assert m.arch.name == {"x86_64": "x86_64", "aarch64": "arm64"}[platform.machine()]
    assert m.arch.page_size == os.sysconf("SC_PAGE_SIZE")
    with open("/proc/meminfo") as f:
        mem_total = int(re.search(r"MemTotal:\s+(\d+) kB", f.read())[1]) * 1024  # type: ignore[index]
    # the RAM the kernel manages (MemTotal) is part of the RAM the machine has
    assert mem_total <= m.memory_size
    assert m.cpus >= (os.cpu_count() or 1)
    kernel = boot_kernel(m)
    assert kernel.kho_enabled
    assert len(kernel.scratch) == len(m.nodes) + 2
    assert all(area.size > 0 for area in kernel.scratch[2:])
