"""Helpers the tests share: running khofs and shells, mounts and their daemons, producers
files, and booting the engine in process.

Test modules import from here (and from tests/oracle.py, tests/reference_kstrtox.py), and
take conftest's fixtures as arguments; never import from one another or from conftest (a test
in test_layers.py checks).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from khofs.cli.pytest_plugin import Kho, KhofsError
from khofs.daemon.mountinfo import is_mounted
from khofs.engine.abi.kexec_handover import CHUNK_ELM, CHUNK_HDR, PRESERVE_BITS
from khofs.engine.driver import Driver
from khofs.engine.kernel import Kernel
from khofs.engine.machine import Machine
from khofs.engine.system import System
from khofs.machines.presets import MACHINES
from khofs.producers.dts import compile_dts
from khofs.producers.spec import ProducerSpec
from khofs.producers.table import boot_table

__all__ = [
    "ALPHA_AND_BETA", "ALPHA_DTS", "KHOFS", "LAPTOP", "SUB", "Mounter", "boot_kernel",
    "boot_lines", "boot_system", "children", "daemon_pid", "decode_map", "drivers_of", "fdt_at",
    "is_mounted", "kexec_next", "khofs", "one_line_error", "read_blob", "sh", "wait_gone",
    "write_errno", "write_producers",
]

# --- the khofs command and shells, as a user runs them -------------------------------------

KHOFS = [sys.executable, "-m", "khofs"]


def khofs(*args: str | os.PathLike[str], check: bool = False, backend: str | None = None,
          timeout: float = 60, env: dict[str, str] | None = None,
          **kw: object) -> subprocess.CompletedProcess[str]:
    """`khofs ARGS` as a user runs it (on the FUSE backend given, else the environment's);
    stdout and stderr as text (bytes that are not UTF-8 come back as surrogates, as
    os.fsdecode makes them)."""
    if backend is not None:
        env = {**(os.environ if env is None else env), "KHOFS_FUSE": backend}
    return subprocess.run([*KHOFS, *map(os.fspath, args)], capture_output=True, text=True,
                          errors="surrogateescape", check=check, timeout=timeout, env=env,
                          **kw)  # type: ignore[call-overload]


def sh(script: str, shell: str = "sh", **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a shell snippet, as a user types it. Debian's sh (dash) reports any failed
    `echo` write as "I/O error"; pass shell="bash" to see the errno's message."""
    return subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False, **kw)  # type: ignore[call-overload]


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Bad input: exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("khofs: ")
    for w in words:
        assert w in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- mounts and their daemons --------------------------------------------------------------

class Mounter:
    """Mounts on demand, through the khofs pytest plugin's Kho, and unmounts everything at
    cleanup (conftest's `mount` fixture is one)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mounts: list[Kho] = []
        self.logs: dict[Path, Path] = {}  # mount point -> its daemon's log

    def __call__(self, *options: str, parent: Path | None = None) -> Path:
        mnt = (parent or self.tmp_path) / f"mnt{len(self.mounts) + 1}"
        kho = Kho(self.tmp_path, mountpoint=mnt, options=options or ("--machine", "laptop"))
        self.mounts.append(kho)
        try:
            root = kho.root
        except KhofsError as e:
            raise AssertionError(str(e)) from None
        assert is_mounted(root)
        self.logs[root] = kho.log_path
        return root

    def cleanup(self) -> None:
        for kho in self.mounts:
            kho.unmount()


def daemon_pid(mnt: Path) -> int:
    """The pid of the one daemon serving mnt."""
    out = subprocess.run(["pgrep", "-f", f"khofs mount {mnt}"], capture_output=True,
                         text=True, check=False).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def write_errno(path: Path, data: bytes) -> int:
    """One write(2) of data on a fresh O_WRONLY open: 0, or the errno it failed with."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    except OSError as e:
        return e.errno or 0
    finally:
        os.close(fd)
    return 0


# --- producers files -----------------------------------------------------------------------

ALPHA_DTS = """/dts-v1/;
/ {
	compatible = "alpha-v1";
	count = <3>;
	node { label = "x"; bytes = [01 02 03]; };
};
"""

# alpha (a DTS with a preserved range) and beta (the same tree compiled by dtc)
ALPHA_AND_BETA = """
[[producer]]
name = "alpha"
dts = "alpha.dts"
preserve = ["0x100000000+2M"]

[[producer]]
name = "beta"
dtb = "beta.dtb"
"""


def write_producers(tmp_path: Path, body: str) -> str:
    """A producers file with `body`, beside alpha.dts (ALPHA_DTS) and beta.dtb (alpha.dts
    compiled by dtc): its path."""
    (tmp_path / "alpha.dts").write_text(ALPHA_DTS)
    subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(tmp_path / "beta.dtb"),
                    str(tmp_path / "alpha.dts")], check=True, capture_output=True)
    path = tmp_path / "producers.toml"
    path.write_text(body)
    return str(path)


# --- the engine in process -----------------------------------------------------------------

LAPTOP = MACHINES["laptop"]
SUB = compile_dts('/dts-v1/; / { compatible = "test-v1"; value = <1 2>; };')

DriverEntry = ProducerSpec | Callable[[], Driver]
D = TypeVar("D")


def boot_kernel(machine: Machine = LAPTOP, cmdline: str = "kho=on",
                drivers: Sequence[DriverEntry] = (), **kw: Any) -> Kernel:
    """One boot with the boot table khofs mounts with: `drivers`, then memblock's."""
    return Kernel(machine, cmdline, boot_table(drivers), **kw)


def boot_system(machine: Machine = LAPTOP, cmdline: str = "kho=on",
                drivers: Sequence[DriverEntry] = (), **kw: Any) -> System:
    """A machine across kexecs, booted with the same table."""
    return System(machine, cmdline, boot_table(drivers), **kw)


def kexec_next(s: System, finalize: bool = True) -> Kernel:
    """Finalize (unless told not to), load and execute: the next kernel."""
    if finalize:
        assert s.kernel.kho.finalize_set(1) == 0
    assert s.kexec_load() == (0, "") and s.kexec_execute() == (0, "")
    return s.kernel


def boot_lines(s: System, boot_number: int) -> list[str]:
    """The log texts of one boot."""
    return [rec.text for n, rec in s.records if n == boot_number]


def drivers_of(kernel: Kernel, kind: type[D]) -> list[D]:
    """The drivers of one kind that this boot's initcalls made, in init order."""
    return [d for d in kernel.drivers if isinstance(d, kind)]


def read_blob(k: Kernel, path: str) -> bytes:
    """A debugfs file's bytes, read as one read(2) from offset 0."""
    d = k.debugfs.lookup(path)
    assert d is not None and d.fops is not None, path
    f = d.fops.open(d)
    assert not isinstance(f, int)
    out = f.read(1 << 24, 0)
    assert isinstance(out, bytes)
    return out


def children(k: Kernel, path: str) -> list[str]:
    """The names in a debugfs directory, sorted."""
    d = k.debugfs.lookup(path)
    assert d is not None, path
    return sorted(d.children)


def fdt_at(k: Kernel, phys: int) -> bytes:
    """The FDT blob at phys, as long as its header's totalsize says."""
    return k.mem.read(phys, k.mem.fdt_totalsize(phys))


def decode_map(k: Kernel, first: int) -> list[tuple[int, int]]:
    """Walk the chunk list as the next kernel's kho_mem_deserialize does: (phys, order) of
    every preserved block, by order then address."""
    blocks, chunk = [], first
    while chunk:
        nxt, order, n = CHUNK_HDR.unpack(k.mem.read(chunk, CHUNK_HDR.size))
        for i in range(n):
            start, bitmap = CHUNK_ELM.unpack(
                k.mem.read(chunk + CHUNK_HDR.size + i * CHUNK_ELM.size, CHUNK_ELM.size))
            bits = int.from_bytes(k.mem.read(bitmap, PRESERVE_BITS // 8), "little")
            for b in range(PRESERVE_BITS):
                if bits >> b & 1:
                    blocks.append((start + (b << (order + 12)), order))
        chunk = nxt
    return sorted(blocks, key=lambda x: (x[1], x[0]))
