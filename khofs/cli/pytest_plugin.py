"""pytest plugin (entry point `pytest11`): a KHO debugfs for your tests.

```python
import pytest

@pytest.mark.kho(machine="server-2s", cmdline="kho=on reserve_mem=4M:2M:trace")
def test_my_tool_finalizes(kho):
    kho.add_producer("mydrv", dts="/dts-v1/; / { compatible = \\"mydrv-v1\\"; };")
    subprocess.run(["my-live-update-tool", "--debugfs", str(kho.root)], check=True)
    assert kho.read("kho/out/finalize") == b"1\\n"
    kho.kexec()
    assert (kho.root / "kho/in/sub_fdts/mydrv").exists()
```

The fixture `kho` mounts on first use (so producers can be added first) a fresh emulated kernel
in a separate daemon, and unmounts it when the test ends, passed or failed. The marker's
keywords are those of `khofs mount`: machine, cmdline, seed, plus producers (a list of dicts
with the keys of a producers file) and plugins (MODULE:FUNCTION strings).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from khofs.daemon import mountinfo

KHOFS = [sys.executable, "-m", "khofs"]


class KhofsError(Exception):
    """A khofs command failed: its one line."""


def khofs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*KHOFS, *args], capture_output=True, text=True, timeout=120,
                            check=False)
    if check and result.returncode:
        raise KhofsError(result.stderr.strip() or f"khofs {args[0]} failed")
    return result


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Kho:
    """One emulated kernel's debugfs, mounted on first use."""

    def __init__(self, workdir: Path, machine: str = "laptop", cmdline: str | None = None,
                 seed: int = 0, producers: list[dict[str, Any]] | None = None,
                 plugins: list[str] | None = None, *, mountpoint: Path | None = None,
                 options: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.mountpoint = mountpoint or workdir / "debugfs"
        self.options = list(options)  # any other `khofs mount` options, as given
        self.log_path = workdir / f"{self.mountpoint.name}.log"
        self.machine = machine
        self.cmdline = cmdline
        self.seed = seed
        self.producers: list[dict[str, Any]] = list(producers or [])
        self.plugins = list(plugins or [])
        self._root: Path | None = None

    def add_producer(self, name: str, *, dts: str | None = None, dtb: bytes | None = None,
                     **keys: Any) -> None:
        """A producer (driver) of the kernel to boot: keys as in a producers file."""
        if self._root is not None:
            raise RuntimeError("kho: add producers before the first use of the mount")
        entry: dict[str, Any] = {"name": name, **keys}
        if dts is not None:
            path = self.workdir / f"{name}.dts"
            path.write_text(dts)
            entry["dts"] = str(path)
        if dtb is not None:
            path = self.workdir / f"{name}.dtb"
            path.write_bytes(dtb)
            entry["dtb"] = str(path)
        self.producers.append(entry)

    def _producers_file(self) -> Path:
        path = self.workdir / "producers.toml"
        path.write_text("".join(
            "[[producer]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in p.items())
            for p in self.producers))
        return path

    def mount_options(self) -> list[str]:
        if self.options:  # given whole: they say what they want
            return self.options
        options = ["--machine", self.machine, "--seed", str(self.seed)]
        if self.cmdline is not None:
            options += ["--cmdline", self.cmdline]
        if self.producers:
            options += ["--producers", str(self._producers_file())]
        for plugin in self.plugins:
            options += ["--plugin", plugin]
        return options

    @property
    def root(self) -> Path:
        """The debugfs root: what a kernel shows as /sys/kernel/debug."""
        if self._root is None:
            mnt = self.mountpoint
            mnt.mkdir(exist_ok=True)
            khofs("mount", str(mnt), "--log", str(self.log_path), *self.mount_options())
            self._root = mnt
        return self._root

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def write(self, rel: str, data: bytes) -> int:
        """One write(2), as `echo` does it; OSError carries the kernel's errno."""
        fd = os.open(self.root / rel, os.O_WRONLY)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    def finalize(self) -> None:
        self.write("kho/out/finalize", b"1\n")

    def abort(self) -> None:
        self.write("kho/out/finalize", b"0\n")

    def kexec(self, *options: str) -> None:
        """`khofs kexec` with its options (--append, --image, --initrd, ...)."""
        khofs("kexec", str(self.root), *options)

    def log(self) -> list[str]:
        return khofs("log", str(self.root)).stdout.splitlines()

    def unmount(self) -> None:
        """khofs umount (it waits for the daemon); a lazy unmount if even that fails."""
        if self._root is not None:
            khofs("umount", str(self._root), check=False)
            if mountinfo.is_mounted(self._root):
                subprocess.run(["umount", "-l", str(self._root)], check=False)
            self._root = None




def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kho(machine=, cmdline=, seed=, producers=, plugins=): how the `kho` "
        "fixture boots its emulated kernel")


@pytest.fixture
def kho(request: pytest.FixtureRequest) -> Iterator[Kho]:
    """An emulated kernel's debugfs, mounted on first use and unmounted after the test."""
    marker = request.node.get_closest_marker("kho")
    kwargs = dict(marker.kwargs) if marker else {}
    with tempfile.TemporaryDirectory(prefix="khofs-pytest-") as d:
        debugfs = Kho(Path(d), **kwargs)
        try:
            yield debugfs
        finally:
            debugfs.unmount()
