"""The handover directory of `khofs kexec --to DIR` and `khofs mount --boot-from DIR`.

Three files, each written to a temporary name, fsync'd and renamed into place, the handover
last (a handover already there is removed first), so that a full disk or a crash leaves either
the previous state or no handover at all, never one that --boot-from would accept:

- `machine.json`: the Machine (name, description, arch, page size, cpus, nodes' ranges,
  kernel and initrd sizes, cmdline), so the next daemon boots the same hardware.
- `ram.img`: RAM, compact: only the pages something wrote. A header `KHOFSRAM`, then u32
  version (1), u32 page size, u64 page count, little endian; then per page, in ascending
  address order, its u64 address and its page_size bytes.
- `handover.json`: the size and SHA-256 of both files, then what kexec passes on: the loaded
  image's command line, segments, FDT and scratch table addresses, the bytes the purgatory
  copies, the next kernel's release (`next_release`, which names its KHO ABI era; a
  handover without it boots 6.16.0), the boot number of the kernel that loaded it, the seed
  and the log so far.

Every problem reading a directory is a StateDirError whose message is one line naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from khofs.engine.era import DEBUG_SUFFIX, DEFAULT_PROFILE, Profile, profile_of
from khofs.engine.kexec import Handover, Segment
from khofs.engine.machine import Machine, Node, get_arch
from khofs.engine.printk import LEVELS, Record
from khofs.engine.system import LoadedImage, MachineState
from khofs.errors import StateDirError
from khofs.lib.read_file import open_regular, read_file

MACHINE_FILE = "machine.json"
RAM_FILE = "ram.img"
HANDOVER_FILE = "handover.json"
FORMAT_VERSION = 1
RAM_MAGIC = b"KHOFSRAM"
RAM_HEADER = struct.Struct("<8sIIQ")
PAGE_ADDR = struct.Struct("<Q")
CHUNK = 1 << 20
JSON_MAX = 256 << 20  # handover.json: the log across boots is most of it


# --- the machine ------------------------------------------------------------------------

def machine_to_json(machine: Machine) -> dict[str, Any]:
    return {
        "name": machine.name, "description": machine.description,
        "arch": machine.arch.name, "page_size": machine.arch.page_size, "cpus": machine.cpus,
        "nodes": [{"nid": n.nid, "ranges": [list(r) for r in n.ranges]} for n in machine.nodes],
        "kernel_size": machine.kernel_size, "initrd_size": machine.initrd_size,
        "cmdline": machine.cmdline,
    }


def machine_from_json(doc: Any, where: str) -> Machine:
    """Rebuild a Machine; StateDirError names the first field that is not as written."""
    get = _Fields(doc, where)
    try:
        arch = get_arch(get.text("arch"), get.integer("page_size"))
    except ValueError as e:
        raise StateDirError(f"{where}: {e}") from None
    nodes = tuple(_node(n, f"{where}: nodes[{i}]") for i, n in enumerate(get.items("nodes")))
    if not nodes or get.integer("cpus") < 1:
        raise StateDirError(f"{where}: a machine needs a node and a CPU")
    cmdline = get.value("cmdline")
    if cmdline is not None and not isinstance(cmdline, str):
        raise StateDirError(f"{where}: 'cmdline' must be a string or null")
    return Machine(get.text("name"), get.text("description"), arch, get.integer("cpus"), nodes,
                   get.integer("kernel_size"), get.integer("initrd_size"), cmdline)


def _node(doc: Any, where: str) -> Node:
    get = _Fields(doc, where)
    ranges = []
    for r in get.items("ranges"):
        if not (isinstance(r, list) and len(r) == 2 and all(_is_u64(x) for x in r)
                and r[0] < r[1]):
            raise StateDirError(f"{where}: a range must be [start, end) with start < end")
        ranges.append((r[0], r[1]))
    if not ranges:
        raise StateDirError(f"{where}: a node needs RAM")
    return Node(get.integer("nid"), tuple(ranges))


def machine_difference(a: Machine, b: Machine) -> list[str]:
    """The fields in which two machines differ (none when they are the same)."""
    mine, theirs = machine_to_json(a), machine_to_json(b)
    return [key for key in mine if mine[key] != theirs[key]]


class _Fields:
    """Typed access to a JSON object's fields, each failure one line naming the field."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise StateDirError(f"{where}: not a JSON object")
        self.doc, self.where = doc, where

    def value(self, key: str) -> Any:
        if key not in self.doc:
            raise StateDirError(f"{self.where}: '{key}' is missing")
        return self.doc[key]

    def integer(self, key: str) -> int:
        v = self.value(key)
        if not _is_u64(v):
            raise StateDirError(f"{self.where}: '{key}' must be an integer from 0 to 2**64-1")
        return int(v)

    def text(self, key: str) -> str:
        v = self.value(key)
        if not isinstance(v, str):
            raise StateDirError(f"{self.where}: '{key}' must be a string")
        return v

    def items(self, key: str) -> list[Any]:
        v = self.value(key)
        if not isinstance(v, list):
            raise StateDirError(f"{self.where}: '{key}' must be a list")
        return v


def _is_u64(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64


# --- writing ----------------------------------------------------------------------------

def write_state_dir(directory: Path, machine: Machine, state: MachineState) -> None:
    """Write the three files, the handover last; OSError (with its filename) on failure."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / HANDOVER_FILE).unlink(missing_ok=True)
    _fsync_dir(directory)
    machine_bytes = (json.dumps(machine_to_json(machine), indent=1) + "\n").encode()
    files = {
        MACHINE_FILE: _write_atomic(directory, MACHINE_FILE, [machine_bytes]),
        RAM_FILE: _write_atomic(directory, RAM_FILE,
                                _ram_chunks(state.pages, machine.arch.page_size)),
    }
    doc = state_to_json(state, files)
    _write_atomic(directory, HANDOVER_FILE, [(json.dumps(doc, indent=1) + "\n").encode()])
    _fsync_dir(directory)


def _ram_chunks(pages: dict[int, bytes], page_size: int) -> Iterator[bytes]:
    yield RAM_HEADER.pack(RAM_MAGIC, FORMAT_VERSION, page_size, len(pages))
    for addr in sorted(pages):
        yield PAGE_ADDR.pack(addr) + pages[addr]


def _write_atomic(directory: Path, name: str, chunks: Iterable[bytes]) -> dict[str, Any]:
    """Write to a temporary file, fsync, rename over name: {"size", "sha256"} of what landed."""
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    digest, size = hashlib.sha256(), 0
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write or fsync: name the file it was for
            e.filename = str(directory / name)
        raise
    return {"size": size, "sha256": digest.hexdigest()}


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def state_to_json(state: MachineState, files: dict[str, Any]) -> dict[str, Any]:
    h = state.image.handover
    return {
        "format": "khofs-handover", "version": FORMAT_VERSION, "files": files,
        "boot_number": state.boot_number, "seed": state.seed,
        "handover": {
            "cmdline": h.cmdline,
            "segments": [{"what": s.what, "mem": s.mem, "memsz": s.memsz} for s in h.segments],
            "fdt_phys": h.fdt_phys, "fdt_len": h.fdt_len,
            "scratch_phys": h.scratch_phys, "scratch_len": h.scratch_len,
        },
        "contents": [[phys, data.hex()] for phys, data in state.image.contents],
        "next_release": state.image.profile.release,
        "next_debug": state.image.profile.debug,
        "records": [[boot, r.level, r.seconds, r.text] for boot, r in state.records],
    }


# --- reading ----------------------------------------------------------------------------

def read_state_dir(directory: Path) -> tuple[Machine, MachineState]:
    """The machine and state in directory; StateDirError with one line on any problem."""
    path = directory / HANDOVER_FILE
    doc = _load_json(path)
    get = _Fields(doc, str(path))
    if doc.get("format") != "khofs-handover" or doc.get("version") != FORMAT_VERSION:
        raise StateDirError(f"{path}: not a khofs handover (format version {FORMAT_VERSION})")
    files = _Fields(get.value("files"), f"{path}: files")
    machine_bytes = _read_checked(directory / MACHINE_FILE, files)
    try:
        machine_doc = json.loads(machine_bytes)
    except ValueError as e:
        raise StateDirError(f"{directory / MACHINE_FILE}: {e}") from None
    machine = machine_from_json(machine_doc, str(directory / MACHINE_FILE))
    pages = _read_ram(directory / RAM_FILE, files, machine.arch.page_size)
    image = LoadedImage(_handover(get.value("handover"), f"{path}: handover"),
                        tuple(_contents(get.items("contents"), f"{path}: contents")),
                        _profile(doc.get("next_release"), doc.get("next_debug"),
                                 f"{path}: next_release"))
    records = _records(get.items("records"), f"{path}: records")
    return machine, MachineState(pages, image, get.integer("boot_number"), records,
                                 get.integer("seed"))


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_file(path, JSON_MAX))
    except FileNotFoundError:
        raise StateDirError(f"{path}: no handover here (No such file or directory)") from None
    except OSError as e:
        raise StateDirError(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise StateDirError(f"{path}: not a khofs handover ({e})") from None


def _read_checked(path: Path, files: _Fields) -> bytes:
    """The file, whole, if its size and SHA-256 are what the handover recorded."""
    want = _Fields(files.value(path.name), f"{files.where}: {path.name}")
    size, sha = want.integer("size"), want.text("sha256")
    data = bytearray()
    digest = hashlib.sha256()
    try:
        with open_regular(path) as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                data += chunk
                digest.update(chunk)
                if len(data) > size:
                    break
    except OSError as e:
        raise StateDirError(f"{path}: {e.strerror or e}") from None
    if len(data) != size:
        raise StateDirError(f"{path}: {_size_words(len(data), size)}, the handover says {size}"
                           " (partial, or from another kexec)")
    if digest.hexdigest() != sha:
        raise StateDirError(f"{path}: SHA-256 differs from the handover's (corrupt, or from "
                           "another kexec)")
    return bytes(data)


def _size_words(got: int, want: int) -> str:
    return f"more than {want} bytes" if got > want else f"{got} bytes"


def _read_ram(path: Path, files: _Fields, page_size: int) -> dict[int, bytes]:
    data = memoryview(_read_checked(path, files))
    if len(data) < RAM_HEADER.size:
        raise StateDirError(f"{path}: too short for a RAM image header")
    magic, version, psize, count = RAM_HEADER.unpack_from(data)
    if magic != RAM_MAGIC or version != FORMAT_VERSION:
        raise StateDirError(f"{path}: not a khofs RAM image (version {FORMAT_VERSION})")
    if psize != page_size:
        raise StateDirError(f"{path}: page size {psize}, the machine's is {page_size}")
    entry = PAGE_ADDR.size + page_size
    if len(data) != RAM_HEADER.size + count * entry:
        raise StateDirError(f"{path}: {len(data)} bytes do not hold {count} pages")
    pages: dict[int, bytes] = {}
    last = -1
    for off in range(RAM_HEADER.size, len(data), entry):
        (addr,) = PAGE_ADDR.unpack_from(data, off)
        if addr % page_size or addr <= last:
            raise StateDirError(f"{path}: page address 0x{addr:x} unaligned or out of order")
        pages[addr] = bytes(data[off + PAGE_ADDR.size:off + entry])
        last = addr
    return pages


def _handover(doc: Any, where: str) -> Handover:
    get = _Fields(doc, where)
    segments = []
    for i, s in enumerate(get.items("segments")):
        seg = _Fields(s, f"{where}: segments[{i}]")
        segments.append(Segment(seg.text("what"), seg.integer("mem"), seg.integer("memsz")))
    return Handover(get.text("cmdline"), tuple(segments), get.integer("fdt_phys"),
                    get.integer("fdt_len"), get.integer("scratch_phys"), get.integer("scratch_len"))


def _profile(release: Any, debug: Any, where: str) -> Profile:
    """The next kernel's version (absent in handovers from before the eras: 6.16.0)."""
    if release is None:
        return DEFAULT_PROFILE
    if not isinstance(release, str) or not isinstance(debug, bool | None):
        raise StateDirError(f"{where}: must be a string (and next_debug true or false)")
    try:
        return profile_of(release + (DEBUG_SUFFIX if debug else ""))
    except ValueError as e:
        raise StateDirError(f"{where}: {e}") from None


def _contents(items: list[Any], where: str) -> list[tuple[int, bytes]]:
    out = []
    for item in items:
        data = None
        if isinstance(item, list) and len(item) == 2 and _is_u64(item[0]):
            with contextlib.suppress(ValueError):
                data = bytes.fromhex(item[1]) if isinstance(item[1], str) else None
        if data is None:
            raise StateDirError(f"{where}: each entry must be [address, hex bytes]")
        out.append((item[0], data))
    return out


def _records(items: list[Any], where: str) -> list[tuple[int, Record]]:
    out = []
    for item in items:
        ok = (isinstance(item, list) and len(item) == 4 and _is_u64(item[0])
              and item[1] in LEVELS and isinstance(item[2], int | float)
              and isinstance(item[3], str))
        if not ok:
            raise StateDirError(f"{where}: each entry must be [boot, level, seconds, text]")
        out.append((item[0], Record(item[1], float(item[2]), item[3])))
    return out
