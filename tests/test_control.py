"""The daemon's control socket: its mode, other users refused, `khofs log -f`, and
`khofs kexec`/`khofs log` when the daemon is gone or the command line is wrong."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from khofs.daemon.state import runtime_dir, socket_path
from tests.helpers import (
    KHOFS,
    Mounter,
    daemon_pid,
    is_mounted,
    khofs,
    one_line_error,
    sh,
    wait_gone,
)
from tests.other_user import NOBODY, SETPRIV, as_nobody, base_python, nobody_env

pytestmark = pytest.mark.mount

# Connects as a process whose effective uid is nobody's but whose file-system uid is still
# root's: it gets past the socket's mode, so only the daemon's SO_PEERCRED check (which
# reports the effective uid) stands between it and the daemon.
PEERCRED_CLIENT = """
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
os.setegid(65534)
os.seteuid(65534)
libc.setfsuid(0)
assert libc.setfsuid(-1) == 0, "fsuid is not 0"
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(sys.argv[2].encode() + b"\\n")
except BrokenPipeError:
    pass  # refused before the request was read: the reply is waiting
sys.stdout.write(s.makefile().read())
"""

RAW_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(e.errno)
"""


def request(mnt: Path, doc: object) -> list[dict[str, object]]:
    """Send one raw request line as this process's user; the reply lines."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.fspath(socket_path(str(mnt))))
        s.sendall(json.dumps(doc).encode() + b"\n")
        return [json.loads(line) for line in s.makefile("rb")]


def test_socket_is_private(mnt: Path) -> None:
    path = socket_path(str(mnt))
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert path.parent == runtime_dir() and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert path.with_suffix(".pid").exists()  # beside the pid file


def test_the_socket_goes_with_the_daemon(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    assert khofs("mount", str(mnt), "--log", str(tmp_path / "log")).returncode == 0
    path = socket_path(str(mnt))
    assert path.exists()
    assert khofs("umount", str(mnt)).returncode == 0
    assert not path.exists()


def test_other_users_are_refused(mount: Mounter, tmp_path: Path) -> None:
    mnt = mount()
    path = socket_path(str(mnt))
    env = nobody_env()  # nobody runs a world-readable copy: the checkout may be out of reach
    for args in (["log", str(mnt)], ["kexec", str(mnt)]):
        r = subprocess.run(as_nobody(*args), capture_output=True, text=True,
                           timeout=60, env=env, check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r
        assert r.stderr == f"khofs: {mnt}: mounted by uid 0: only that user may use its daemon\n"
    # nobody cannot even reach the socket: the runtime directory and the socket are 0700/0600
    r = subprocess.run([*SETPRIV, base_python(), "-c", RAW_CLIENT, str(path)],
                       capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.stdout == "13\n", r  # EACCES
    # and past the file modes, SO_PEERCRED: refused, and the refusal is in the daemon's log
    r = subprocess.run([sys.executable, "-c", PEERCRED_CLIENT, str(path),
                        json.dumps({"op": "kexec", "load": True, "exec": True})],
                       capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"status": 1,
                                    "error": "Permission denied: not the daemon's user"}
    logged = mount.logs[mnt].read_text()
    assert f"khofs: control: refused a connection from uid {NOBODY} (pid " in logged
    assert "only uid 0 may use this daemon" in logged
    # nothing happened: still the first boot, still not loaded
    assert "kexec_core" not in khofs("log", str(mnt)).stdout
    assert khofs("kexec", str(mnt), "--exec-only").returncode == 1


def test_dead_daemon(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    assert khofs("mount", str(mnt), "--log", str(tmp_path / "log")).returncode == 0
    try:
        pid = daemon_pid(mnt)
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        for args in (["log", str(mnt)], ["log", "-f", str(mnt)], ["kexec", str(mnt)],
                     ["kexec", str(mnt), "--to", str(tmp_path / "d")]):
            r = khofs(*args)
            assert (r.returncode, r.stdout) == (1, ""), r
            assert r.stderr == (f"khofs: {mnt}: its khofs daemon is gone (control socket "
                                f"{socket_path(str(mnt))}: Connection refused)\n")
        assert khofs("umount", str(mnt)).returncode == 0
        assert not socket_path(str(mnt)).exists()  # umount cleans up what the daemon left
    finally:
        if is_mounted(mnt):
            khofs("umount", str(mnt))
    for args in (["log", str(mnt)], ["kexec", str(mnt)]):
        r = khofs(*args)
        assert (r.returncode, r.stderr) == (1, f"khofs: {mnt}: not a khofs mount\n"), r


def test_log_on_a_missing_socket(mnt: Path) -> None:
    path = socket_path(str(mnt))
    hidden = path.with_name("hidden.sock")
    path.rename(hidden)
    try:
        r = khofs("log", str(mnt))
        assert r.returncode == 1
        assert r.stderr == f"khofs: {mnt}: its khofs daemon is gone (no control socket {path})\n"
    finally:
        hidden.rename(path)


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], text: str, seen: list[str]) -> None:
    deadline = time.monotonic() + 20
    while not any(text in ln for ln in seen):
        seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))


def test_log_follows_kexecs_until_the_daemon_stops(tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    assert khofs("mount", str(mnt), "--log", str(tmp_path / "log")).returncode == 0
    proc = subprocess.Popen([*KHOFS, "log", "-f", str(mnt)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines, seen = _reader(proc), []
        _wait_for(lines, "[boot 1]", seen)
        assert sh(f"echo 1 > {mnt}/kho/out/finalize").returncode == 0
        assert khofs("kexec", str(mnt)).returncode == 0
        _wait_for(lines, "[boot 2]", seen)
        _wait_for(lines, "KHO: found kexec handover data", seen)
        assert khofs("umount", str(mnt)).returncode == 0
        assert proc.wait(20) == 0  # the daemon stopped: so does -f
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
        if is_mounted(mnt):
            khofs("umount", str(mnt))


def test_log_follow_stops_on_ctrl_c(mnt: Path) -> None:
    proc = subprocess.Popen([*KHOFS, "log", "-f", str(mnt)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(_reader(proc), "[boot 1]", [])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
        assert proc.stderr is not None and proc.stderr.read() == ""  # no traceback
    finally:
        if proc.poll() is None:
            proc.kill()


def test_log_without_follow_ends(mnt: Path) -> None:
    r = khofs("log", str(mnt))
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("[boot 1] [") and r.stdout.endswith("\n")


def test_malformed_requests(mnt: Path) -> None:
    assert request(mnt, {"op": "halt"}) == [{"status": 1, "error": "bad control request"}]
    for bad_reboot in ({"seed": "1"}, {"seed": -1}, {"plugins": "a:b"}, {"plugins": [1]},
                       {"machine": 2}, {"cmdline": ["kho=on"]}, {"producers": True}):
        assert request(mnt, {"op": "reboot", **bad_reboot}) == [
            {"status": 1, "error": "bad reboot request"}]
    assert request(mnt, ["log"]) == [{"status": 1, "error": "bad control request"}]
    bad = {"op": "kexec", "load": True, "exec": True, "image_size": "big"}
    assert request(mnt, bad) == [{"status": 1, "error": "bad kexec request"}]
    assert request(mnt, {"op": "log", "follow": False})[-1] == {"end": True}


@pytest.mark.parametrize("args, words", [
    (["kexec"], ["mountpoint"]),
    (["kexec", "{mnt}", "--append", "a", "--command-line", "b"], ["--command-line", "--append"]),
    (["kexec", "{mnt}", "--load-only", "--exec-only"], ["--exec-only", "--load-only"]),
    (["kexec", "{mnt}", "--exec-only", "--image", "{tmp}/img"], ["--exec-only", "--image"]),
    (["kexec", "{mnt}", "--image", "{tmp}/missing"], ["missing", "No such file"]),
    (["kexec", "{mnt}", "--image", "{tmp}/empty"], ["empty"]),
    (["kexec", "{mnt}", "--initrd", "{tmp}/missing"], ["missing", "No such file"]),
    (["log"], ["mountpoint"]),
    (["log", "{mnt}", "--bogus"], ["--bogus"]),
    (["mount", "{mnt}", "--seed", "-1"], ["seed"]),
])
def test_usage_errors(tmp_path: Path, args: list[str], words: list[str]) -> None:
    (tmp_path / "img").write_bytes(b"x")
    (tmp_path / "empty").write_bytes(b"")
    argv = [a.format(mnt=tmp_path, tmp=tmp_path) for a in args]
    one_line_error(khofs(*argv), *words)
