"""Helpers the machine tests share (khofs run and the emulated system calls): kernel images
made here (nothing is downloaded), a newc cpio writer, and a caller of the emulated system
calls made of plain data.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from khofs.engine.uaccess import CAP_SYS_ADMIN, CAP_SYS_BOOT
from tests.helpers import KHOFS
from tests.other_user import SETPRIV, as_nobody, nobody_env

MiB = 1 << 20
NOBODY = SETPRIV  # the prefix that runs a command as nobody (tests.other_user)
PROGRAMS = Path(__file__).parent / "programs"


@dataclass
class Scratch:
    """A world-readable directory for a run's files, and the TMPDIR its runner uses (so
    that a test can see the runner left nothing behind)."""

    path: Path

    @property
    def tmpdir(self) -> Path:
        return self.path / "tmp"

    def file(self, name: str, data: bytes | str, mode: int = 0o644) -> Path:
        path = self.path / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        path.chmod(mode)
        return path

    def dir(self, name: str) -> Path:
        path = self.path / name
        path.mkdir(mode=0o777)
        path.chmod(0o777)
        return path

    def nothing_left(self) -> None:
        """The runner's directory is gone, and no process of the run (they all start in
        this directory) is left."""
        assert list(self.tmpdir.iterdir()) == []
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(self.path)):
                    left.append(pid)
        assert left == []


@contextlib.contextmanager
def scratch() -> Iterator[Scratch]:
    path = Path(tempfile.mkdtemp(prefix="khofs-machine-test-"))
    path.chmod(0o755)
    made = Scratch(path)
    made.dir("tmp").chmod(0o1777)
    try:
        yield made
    finally:
        shutil.rmtree(path, ignore_errors=True)


def khofs_run(*args: str, sc: Scratch, user: list[str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`khofs run ARGS` as root, or as nobody (`user` is NOBODY) from the world-readable copy
    of khofs (this checkout may be out of nobody's reach), its TMPDIR in sc."""
    if user is None:
        argv, env = [*KHOFS, "run", *args], dict(os.environ, HOME="/tmp", TMPDIR=str(sc.tmpdir))
    else:
        assert user == NOBODY
        argv, env = as_nobody("run", *args), nobody_env(HOME="/tmp", TMPDIR=str(sc.tmpdir))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env, cwd=sc.path)


@contextlib.contextmanager
def fuse_for_everyone() -> Iterator[None]:
    """Debian's udev makes /dev/fuse 0666; this machine's is 0600: open it for a test the
    way udev would, and put it back."""
    mode = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


def build(source: str, out: Path, *, static: bool = False) -> Path:
    """A program of tests/programs built with the system's compiler."""
    cmd = ["cc", "-O", "-Wall", "-Werror", *(["-static"] if static else []), "-o", str(out),
           str(PROGRAMS / source)]
    subprocess.run(cmd, check=True, capture_output=True)
    out.chmod(0o755)
    return out


def bzimage(*, size: int = 8192, setup_sects: int = 1, version: int = 0x020F,
            loadflags: int = 0x01, xloadflags: int = 0x3, init_size: int = 16 * MiB,
            cmdline_size: int = 2047, boot_flag: int = 0xAA55, magic: bytes = b"HdrS") -> bytes:
    """An x86-64 bzImage header that passes the kernel's and kexec-tools' probes (boot
    protocol 2.15, LOADED_HIGH, XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G, relocatable),
    or fails the one check a keyword changes. Nothing in it runs."""
    buf = bytearray(size)
    buf[0x1F1] = setup_sects
    struct.pack_into("<H", buf, 0x1FE, boot_flag)
    buf[0x200:0x202] = b"\xeb\x66"  # the jump over the header
    buf[0x202:0x206] = magic
    struct.pack_into("<H", buf, 0x206, version)
    buf[0x211] = loadflags
    struct.pack_into("<I", buf, 0x230, 2 * MiB)  # kernel_alignment
    buf[0x234] = 1  # relocatable_kernel
    struct.pack_into("<H", buf, 0x236, xloadflags)
    struct.pack_into("<I", buf, 0x238, cmdline_size)
    struct.pack_into("<Q", buf, 0x258, 16 * MiB)  # pref_address
    struct.pack_into("<I", buf, 0x260, init_size)
    return bytes(buf)


def arm64_image(*, image_size: int = 2 * MiB, flags: int = 0x2, magic: bytes = b"ARM\x64",
                size: int = 4096) -> bytes:
    """An arm64 Image header (little endian, 4K pages) and some bytes."""
    header = struct.pack("<IIQQQQQQ4sI", 0x14000000, 0, 0, image_size, flags, 0, 0, 0, magic, 0)
    return header + bytes(size - len(header))


def newc(entries: list[tuple[str, int, bytes]], *, compress: bool = False) -> bytes:
    """A newc cpio archive (what `cpio -H newc` and gen_init_cpio write): (name, mode,
    data-or-symlink-target) entries, then TRAILER!!!; gzip-compressed when asked."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        raw = name.encode() + b"\0"
        rdev = (5, 1) if stat.S_ISCHR(mode) else (0, 0)
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(raw), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += bytes(-len(out) % 4)
        out += data
        out += bytes(-len(out) % 4)
    out += bytes(-len(out) % 512)
    return gzip.compress(bytes(out)) if compress else bytes(out)


@dataclass
class FakeFile:
    """An open file as fdget() finds it."""

    data: bytes = b""
    mode: int = stat.S_IFREG | 0o644
    readable: bool = True

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self) -> bytes | int:
        return self.data


@dataclass
class FakeUser:
    """A caller: its capabilities, pid namespace, memory (address -> bytes) and files."""

    caps: set[int] = field(default_factory=lambda: {CAP_SYS_BOOT, CAP_SYS_ADMIN, 34})
    nested_pid_ns: bool = False
    memory: dict[int, bytes] = field(default_factory=dict)
    files: dict[int, FakeFile] = field(default_factory=dict)

    def capable(self, cap: int) -> bool:
        return cap in self.caps

    def pid_ns_capable(self, cap: int) -> bool:
        return cap in self.caps

    def in_init_pid_ns(self) -> bool:
        return not self.nested_pid_ns

    def copy_from_user(self, addr: int, size: int) -> bytes | None:
        for base, data in self.memory.items():
            if base <= addr and addr + size <= base + len(data):
                return data[addr - base:addr - base + size]
        return None

    def copy_to_user(self, addr: int, data: bytes) -> bool:
        for base, old in self.memory.items():
            if base <= addr and addr + len(data) <= base + len(old):
                at = addr - base
                self.memory[base] = old[:at] + data + old[at + len(data):]
                return True
        return False

    def strncpy_from_user(self, addr: int, size: int) -> bytes | None:
        for base, data in self.memory.items():
            if base <= addr < base + len(data):
                return data[addr - base:addr - base + size].partition(b"\0")[0]
        return None

    def fdget(self, fd: int) -> FakeFile | None:
        return self.files.get(fd)

    def put(self, addr: int, data: bytes) -> int:
        """Map data at addr; returns addr."""
        self.memory[addr] = data
        return addr

    def open(self, fd: int, data: bytes, **kw: object) -> int:
        self.files[fd] = FakeFile(data, **kw)  # type: ignore[arg-type]
        return fd


EBADF, EINVAL, ENOEXEC, EFAULT, EPERM = (-errno.EBADF, -errno.EINVAL, -errno.ENOEXEC,
                                         -errno.EFAULT, -errno.EPERM)
EADDRNOTAVAIL, EFBIG, ENOENT = -errno.EADDRNOTAVAIL, -errno.EFBIG, -errno.ENOENT
