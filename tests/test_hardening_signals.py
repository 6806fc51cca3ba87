"""Issue 13, L2 T3 D3 L3: an interrupted `khofs mount` leaves nothing; a plugin that exits
is an error logged as such, never khofs's exit; `make demo | head` cleans up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.hardening import force_cleanup, mounted, nothing_left
from tests.helpers import KHOFS, khofs

ROOT = Path(__file__).parent.parent

PLUGIN = """
import os, sys, time

def sys_exit(api):
    sys.exit(3)

def os_exit(api):
    os._exit(4)

def keyboard_interrupt(api):
    raise KeyboardInterrupt

def system_exit(api):
    raise SystemExit("bye")

def slow(api):
    time.sleep(60)

def exit_at_finalize(api):
    api.on_finalize(lambda: sys.exit(5))

def os_exit_at_finalize(api):
    api.on_finalize(lambda: os._exit(6))
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "exits.py"
    path.write_text(PLUGIN)
    return path


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _interrupt(argv: list[str], signum: int, *, when: str = "forked",
               delay: float = 0.0) -> subprocess.CompletedProcess[str]:
    """Run argv in a session of its own and send signum to its process group, as a terminal
    does: once it has forked its daemon (when="forked"), or after `delay`."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    if when == "forked":
        while not _children(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
    else:
        time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):  # it may have finished already
        os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.mount
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupting_mount_while_its_daemon_starts(tmp_path: Path, signum: int) -> None:
    """The signal lands after the fork, before the mount is ready (or, rarely, just after:
    then the mount is up and the command succeeded). Either way the outcome is whole."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    interrupted = 0
    try:
        for _ in range(5):
            r = _interrupt([*KHOFS, "mount", str(mnt)], signum)
            if r.returncode == 0:  # it was done before the signal came
                assert khofs("umount", mnt).returncode == 0
            else:
                name = signal.Signals(signum).name
                assert (r.returncode, r.stderr) == (128 + signum,
                                                    f"khofs: interrupted ({name})\n"), r
                interrupted += 1
            nothing_left(mnt)
    finally:
        force_cleanup(mnt)
    assert interrupted  # the window was hit at least once


@pytest.mark.mount
def test_ctrl_c_during_a_slow_plugin_init(tmp_path: Path, plugin: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            r = _interrupt([*KHOFS, "mount", str(mnt), "--plugin", f"{plugin}:slow"], signum,
                           when="delay", delay=1.5)
            name = signal.Signals(signum).name
            assert (r.returncode, r.stdout, r.stderr) == (128 + signum, "",
                                                          f"khofs: interrupted ({name})\n")
            nothing_left(mnt)
    finally:
        force_cleanup(mnt)


@pytest.mark.mount
@pytest.mark.parametrize("function, words", [
    ("sys_exit", "sys.exit(3)"), ("os_exit", "os._exit(4)"),
    ("keyboard_interrupt", "KeyboardInterrupt"), ("system_exit", "sys.exit('bye')"),
])
def test_a_plugin_that_exits_at_init(tmp_path: Path, plugin: Path, function: str,
                                     words: str) -> None:
    spec = f"{plugin}:{function}"
    with mounted(tmp_path / "m", "--plugin", spec) as mnt:
        log = khofs("log", mnt).stdout
        assert f"khofs: plugin {spec}: init exited ({words}): a plugin cannot end khofs\n" in log
        (mnt / "kho/out/finalize").write_bytes(b"1\n")  # the kernel goes on without it
        assert (mnt / "kho/out/finalize").read_bytes() == b"1\n"


@pytest.mark.mount
@pytest.mark.parametrize("function, words", [
    ("exit_at_finalize", "sys.exit(5)"), ("os_exit_at_finalize", "os._exit(6)"),
])
def test_a_plugin_that_exits_in_its_finalize_callback(tmp_path: Path, plugin: Path,
                                                      function: str, words: str) -> None:
    spec = f"{plugin}:{function}"
    with mounted(tmp_path / "m", "--plugin", spec) as mnt:
        r = subprocess.run(["bash", "-c", f"echo 1 > {mnt}/kho/out/finalize"],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 1 and "write error: Input/output error" in r.stderr
        assert (mnt / "kho/out/finalize").read_bytes() == b"0\n"  # the daemon still serves
        log = khofs("log", mnt).stdout
        assert (f"khofs: plugin {spec}: finalize callback exited ({words}): a plugin cannot "
                "end khofs\n") in log


def test_a_plugin_that_exits_when_imported(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    for body, words in (("import sys\nsys.exit(7)\n", "sys.exit(7)"),
                        ("import os\nos._exit(8)\n", "os._exit(8)")):
        path = tmp_path / "at_import.py"
        path.write_text(body + "def f(api):\n    pass\n")
        r = khofs("mount", mnt, "--plugin", f"{path}:f")
        assert (r.returncode, r.stderr) == (2, f"khofs: --plugin {path}:f: importing {path} "
                                               f"exited ({words})\n")
    nothing_left(mnt)


@pytest.mark.mount
def test_demo_piped_into_head_cleans_up(tmp_path: Path) -> None:
    """`make demo | head -3`: head goes, the demo dies of SIGPIPE; its EXIT trap still
    unmounts (its mount point lives under TMPDIR, here this test's own)."""
    env = {**os.environ, "TMPDIR": str(tmp_path),
           "PATH": f"{Path(KHOFS[0]).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", f"bash {ROOT / 'scripts/demo.sh'} | head -3"],
                       capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 0 and r.stdout.count("\n") == 3, r
    assert r.stderr == ""
    demo_dirs = list(tmp_path.glob("khofs-demo.*"))
    assert demo_dirs == []  # removed, so unmounted first
    with open("/proc/mounts") as f:
        assert str(tmp_path) not in f.read()
    found = subprocess.run(["pgrep", "-f", f"khofs mount {tmp_path}/khofs-demo"],
                           capture_output=True, text=True, check=False).stdout
    assert found == ""
