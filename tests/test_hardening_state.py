"""Issue 13, S1 S2 T2 D4: the state directory is ours alone, never written through a symlink,
and every mount point has a state name of its own."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from khofs.daemon import state
from tests.hardening import mounted, nothing_left
from tests.helpers import KHOFS, khofs

ROOT = Path(__file__).resolve().parent.parent  # the checkout: its .venv runs khofs

# --- S1: /tmp/khofs-UID made first by another user ---------------------------------------

# Runs as root in a mount namespace of its own with a private /tmp, so the machine's
# /tmp/khofs-0 (other runs use it) is neither seen nor touched; the checkout (which may be
# under /tmp) is bound back at its own path from a descriptor opened before (not
# canonicalized: the path would name the new, empty directory). "nobody" got
# there first: a 0777 /tmp/khofs-0 with a symlink at the pid file's name, pointing at a
# root-only file.
PLANTED = r"""
set -u
root=$1; shift
exec 3<"$root"
mount -t tmpfs tmpfs /tmp
mkdir -p "$root" && mount --no-canonicalize --bind /proc/self/fd/3 "$root"
mkdir /tmp/mnt /tmp/khofs-0
printf 'secret\n' > /tmp/victim && chmod 600 /tmp/victim
chown 65534:65534 /tmp/khofs-0 && chmod 0777 /tmp/khofs-0
ln -s /tmp/victim /tmp/khofs-0/tmp-mnt.pid
unset XDG_RUNTIME_DIR
"$@" mount /tmp/mnt; echo "status=$?"
echo "victim=$(cat /tmp/victim)"
grep -c ' /tmp/mnt ' /proc/mounts
"$@" umount /tmp/mnt >/dev/null 2>&1
# the same with the directory ours but a symlink planted in it: refused too
rm -rf /tmp/khofs-0 && mkdir -m 0700 /tmp/khofs-0 && ln -s /tmp/victim /tmp/khofs-0/tmp-mnt.log
"$@" mount /tmp/mnt; echo "status=$?"
echo "victim=$(cat /tmp/victim)"
grep -c ' /tmp/mnt ' /proc/mounts
"$@" umount /tmp/mnt >/dev/null 2>&1
# and a symlinked runtime directory
rm -rf /tmp/khofs-0 && mkdir -m 0700 /tmp/elsewhere && ln -s /tmp/elsewhere /tmp/khofs-0
"$@" mount /tmp/mnt; echo "status=$?"
grep -c ' /tmp/mnt ' /proc/mounts
"$@" umount /tmp/mnt >/dev/null 2>&1
# once it is ours, a mount works, and its state files are 0600 in a 0700 directory
rm /tmp/khofs-0 && rm -f /tmp/elsewhere/*
"$@" mount /tmp/mnt; echo "status=$?"
stat -c '%a %U %n' /tmp/khofs-0 /tmp/khofs-0/tmp-mnt.pid /tmp/khofs-0/tmp-mnt.log \
    /tmp/khofs-0/tmp-mnt.sock
"$@" umount /tmp/mnt; echo "umount=$?"
"""


@pytest.mark.mount
def test_a_runtime_directory_that_is_not_ours_is_refused() -> None:
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", PLANTED,
                        "sh", str(ROOT), *KHOFS], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.stdout.splitlines() == [
        "status=2", "victim=secret", "0",
        "status=2", "victim=secret", "0",
        "status=2", "0",
        "status=0", "700 root /tmp/khofs-0", "600 root /tmp/khofs-0/tmp-mnt.pid",
        "600 root /tmp/khofs-0/tmp-mnt.log", "600 root /tmp/khofs-0/tmp-mnt.sock",
        "umount=0"], r.stdout + r.stderr
    advice = ("khofs keeps its daemons' sockets there and needs it to be its user's own "
              "(remove it, or set XDG_RUNTIME_DIR to a directory of yours with mode 0700)")
    assert r.stderr.splitlines() == [
        f"khofs: /tmp/khofs-0: owned by uid 65534, not 0: {advice}",
        "khofs: /tmp/khofs-0/tmp-mnt.log: Too many levels of symbolic links",
        f"khofs: /tmp/khofs-0: a symbolic link: {advice}"]


# --- T2, D4: XDG_RUNTIME_DIR that cannot be used ----------------------------------------

@pytest.mark.parametrize("value, problem", [
    ("/proc", "mode 0555, not 0700: a runtime directory must be the user's own with mode "
              "0700"),
    ("/etc/passwd", "not a directory"),
    ("TMP/nonexistent/deep", "No such file or directory"),
])
def test_a_bad_xdg_runtime_dir_is_one_line(tmp_path: Path, value: str, problem: str) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    value = value.replace("TMP", str(tmp_path))
    env = {**os.environ, "XDG_RUNTIME_DIR": value}
    for args in (["mount", mnt], ["log", mnt], ["umount", mnt]):
        r = khofs(*args, env=env)
        if args[0] != "mount":  # nothing is mounted: that is all they need to say
            assert r.returncode == 1 and "not" in r.stderr
            continue
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == f"khofs: XDG_RUNTIME_DIR={value}: {problem}\n"
    nothing_left(mnt)
    assert not (tmp_path / "nonexistent").exists()  # nothing made on the way


def test_an_xdg_runtime_dir_of_another_mode_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = khofs("mount", mnt, env={**os.environ, "XDG_RUNTIME_DIR": str(run)})
    assert r.returncode == 2 and r.stderr == (
        f"khofs: XDG_RUNTIME_DIR={run}: mode 0755, not 0700: a runtime directory must be the "
        "user's own with mode 0700\n")
    assert not (run / "khofs").exists()
    nothing_left(mnt)


# --- S2: one state name per mount point ---------------------------------------------------

def _unescape(name: str) -> bytes:
    """state_name read back: '-' is '/', %XX a byte."""
    if name == "%2F":
        return b"/"
    parts = [re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), p)
             for p in name.split("-")]
    return b"/" + b"/".join(p.encode("latin-1") for p in parts)


# paths under a directory that does not exist: nothing on this machine resolves them
NOWHERE = "/khofs-nonexistent"


def test_state_names_read_back_to_their_paths() -> None:
    assert state.state_name(f"{NOWHERE}/c/a-b") == "khofs%2Dnonexistent-c-a%2Db"
    assert state.state_name(f"{NOWHERE}/c-a/b") == "khofs%2Dnonexistent-c%2Da-b"
    assert state.state_name("/") == "%2F"
    assert state.state_name(f"{NOWHERE}/ü b") == "khofs%2Dnonexistent-%C3%BC%20b"
    assert state.state_name(os.fsdecode(NOWHERE.encode() + b"/x\xffy")) == \
        "khofs%2Dnonexistent-x%FFy"


@given(st.lists(st.binary(min_size=1, max_size=12).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")), max_size=4))
def test_state_names_are_injective(parts: list[bytes]) -> None:
    path = b"/".join([NOWHERE.encode(), *parts])
    name = state.state_name(os.fsdecode(path))
    assert _unescape(name) == path
    assert not name.startswith("%H")


def test_too_long_names_are_hashed_apart() -> None:
    a = f"{NOWHERE}/{'a' * 200}/x"
    b = f"{NOWHERE}/{'a' * 200}/y"
    assert state.socket_path(a) != state.socket_path(b)
    assert state.socket_path(a).name.startswith("%H")
    assert len(os.fsencode(state.socket_path(a))) <= state.SUN_PATH_MAX
    assert state.pid_path(a).name == state.state_name(a) + ".pid"  # still fits a file name


@pytest.mark.mount
def test_two_mount_points_that_used_to_share_a_name(tmp_path: Path) -> None:
    """/X/c/a-b and /X/c-a/b were both X-c-a-b: kexec of one rebooted the other."""
    first, second = tmp_path / "c" / "a-b", tmp_path / "c-a" / "b"
    with mounted(first) as one, mounted(second) as two:
        assert state.socket_path(one) != state.socket_path(two)
        r = khofs("kexec", one)
        assert r.returncode == 0, r.stderr
        assert "[boot 2]" in khofs("log", one).stdout
        assert "[boot 2]" not in khofs("log", two).stdout
        for path in (state.pid_path(one), state.pid_path(two)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    nothing_left(first)
    nothing_left(second)
