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

One khofs mount serves the whole session (with pytest-xdist, each worker's session has its
own). The fixture `kho` gives each test a freshly booted kernel on it: on first use (so that
producers can be added first) the mount cold-boots a new kernel with the test's options, as
`khofs reboot` does (reboot(2) with RESTART: new RAM, no handover), through the daemon's control
socket from this process, in milliseconds. Nothing a test did is visible to the next: the
producers and plugins are the test's own, `finalize` reads 0, there is no `kho/in`, files the
last test kept open read EIO, and `kho.log()` returns only the lines of this test's kernels,
their boots numbered from 1 as on a mount of its own (`khofs log` on the mount shows the
session's every boot). A test that stops the daemon (kills it, or kexecs it to another process
with `--to`) costs the next one a new mount. The marker's keywords are those of `khofs mount`:
machine, cmdline, seed, plus producers (a list of dicts with the keys of a producers file) and
plugins (MODULE:FUNCTION strings; loaded anew at each boot of a test, so module state does not
carry over).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from khofs.daemon import mountinfo

if TYPE_CHECKING:  # the rest is imported when a test first uses `kho`, not at pytest's start
    from khofs.daemon.control_client import RebootRequest

KHOFS = [sys.executable, "-m", "khofs"]
BOOT = re.compile(r"^\[boot (\d+)\] ")


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


class SessionMount:
    """One khofs mount for a whole pytest session, cold-booted anew for each test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mountpoint = workdir / "debugfs"
        self.log_path = workdir / "debugfs.log"
        self.mounted = False

    def boot(self, options: list[str], request: RebootRequest) -> int:
        """A new kernel, booted as `khofs mount` with options would boot it (request: the
        same as `khofs reboot` options): its boot number in the mount's log. The first test
        mounts; the others reboot, unless the daemon is gone."""
        from khofs.cli.requests import Failure, reboot_request
        from khofs.daemon.control_client import ControlError

        if self.mounted:
            try:
                return reboot_request(self.mountpoint, request).boot
            except ControlError as e:
                if e.status == 2:  # bad input: one line, as `khofs mount` would say it
                    raise KhofsError(f"khofs: {e}") from None
            except Failure:
                pass
            self.unmount()  # a test killed the daemon, or kexec'd the machine away
        self.mountpoint.mkdir(exist_ok=True)
        khofs("mount", str(self.mountpoint), "--log", str(self.log_path), *options)
        self.mounted = True
        return 1

    def unmount(self) -> None:
        if self.mounted or mountinfo.is_mounted(self.mountpoint):
            unmount(self.mountpoint)
        self.mounted = False


def unmount(mountpoint: Path) -> None:
    """khofs umount (it waits for the daemon); a lazy unmount if even that fails."""
    khofs("umount", str(mountpoint), check=False)
    if mountinfo.is_mounted(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


class Kho:
    """One emulated kernel's debugfs: the session's mount rebooted for this test (session),
    else a mount of its own; either on first use."""

    def __init__(self, workdir: Path, machine: str = "laptop", cmdline: str | None = None,
                 seed: int = 0, producers: list[dict[str, Any]] | None = None,
                 plugins: list[str] | None = None, abi: str = "6.16", *,
                 mountpoint: Path | None = None,
                 options: Sequence[str] = (), session: SessionMount | None = None) -> None:
        self.workdir = workdir
        # options given whole need a mount of their own (--debug, --boot-from, ...)
        self.session = session if not options else None
        self.options = list(options)  # any other `khofs mount` options, as given
        if self.session is not None:
            self.mountpoint = self.session.mountpoint
            self.log_path = self.session.log_path
        else:
            self.mountpoint = mountpoint or workdir / "debugfs"
            self.log_path = workdir / f"{self.mountpoint.name}.log"
        self.first_boot = 1  # this test's first boot in the mount's log
        self.machine = machine
        self.cmdline = cmdline
        self.seed = seed
        self.producers: list[dict[str, Any]] = list(producers or [])
        self.plugins = list(plugins or [])
        self.abi = abi  # the kernel's version, as `--abi` takes it
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
        options = ["--machine", self.machine, "--seed", str(self.seed), "--abi", self.abi]
        if self.cmdline is not None:
            options += ["--cmdline", self.cmdline]
        if self.producers:
            options += ["--producers", str(self._producers_file())]
        for plugin in self.plugins:
            options += ["--plugin", plugin]
        return options

    def reboot_options(self) -> RebootRequest:
        """The same boot as a `khofs reboot` request: every option given (a machine and no
        command line boots the machine's default one)."""
        from khofs.cli.boot import absolute_machine, absolute_plugin
        from khofs.daemon.control_client import RebootRequest

        return RebootRequest(
            machine=absolute_machine(self.machine), cmdline=self.cmdline,
            producers=str(self._producers_file()) if self.producers else "",
            plugins=tuple(absolute_plugin(p) for p in self.plugins), seed=self.seed,
            abi=self.abi)

    @property
    def root(self) -> Path:
        """The debugfs root: what a kernel shows as /sys/kernel/debug."""
        if self._root is None:
            mnt = self.mountpoint
            if self.session is not None:
                self.first_boot = self.session.boot(self.mount_options(),
                                                    self.reboot_options())
            else:
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
        """`khofs log`'s lines of this test's kernels only, their boots numbered from 1 as
        on a mount of its own."""
        from khofs.daemon.control_client import ControlError, stream_log
        from khofs.daemon.state import socket_path

        lines: list[str] = []
        root = self.root
        try:
            stream_log(socket_path(str(root)), str(root), False, lines.append)
        except ControlError as e:
            raise KhofsError(f"khofs: {e}") from None
        return [_renumber(line, self.first_boot) for line in lines
                if (m := BOOT.match(line)) is None or int(m.group(1)) >= self.first_boot]

    def unmount(self) -> None:
        """Unmount a mount of its own (the session's stays, for the next test)."""
        if self._root is not None and self.session is None:
            unmount(self._root)
        self._root = None


def _renumber(line: str, first: int) -> str:
    m = BOOT.match(line)
    if m is None or first == 1:
        return line
    return f"[boot {int(m.group(1)) - first + 1}] {line[m.end():]}"




def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kho(machine=, cmdline=, seed=, producers=, plugins=, abi=): how the `kho` "
        "fixture boots its emulated kernel")


@pytest.fixture(scope="session")
def kho_session() -> Iterator[SessionMount]:
    """The session's khofs mount (a worker's, with xdist), unmounted when the session ends."""
    workdir = Path(tempfile.mkdtemp(prefix="khofs-pytest-"))
    session = SessionMount(workdir)
    try:
        yield session
    finally:
        session.unmount()
        if not mountinfo.is_mounted(session.mountpoint):  # never remove through a mount
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def kho(request: pytest.FixtureRequest, kho_session: SessionMount) -> Iterator[Kho]:
    """An emulated kernel's debugfs: on first use, the session's mount with a kernel freshly
    booted as the test's marker says."""
    marker = request.node.get_closest_marker("kho")
    kwargs = dict(marker.kwargs) if marker else {}
    with tempfile.TemporaryDirectory(prefix="khofs-pytest-") as d:
        debugfs = Kho(Path(d), **kwargs, session=kho_session)
        try:
            yield debugfs
        finally:
            debugfs.unmount()
