"""Where a daemon keeps its state: its pid file, control socket and log, by mount point.

They live in $XDG_RUNTIME_DIR/khofs, else /tmp/khofs-UID, named after the mount point.
"""

from __future__ import annotations

import os
from pathlib import Path


def runtime_dir() -> Path:
    """Where pid and log files live: $XDG_RUNTIME_DIR/khofs, else /tmp/khofs-UID."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "khofs" if base else Path(f"/tmp/khofs-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _state_name(mountpoint: str) -> str:
    return os.path.realpath(mountpoint).strip("/").replace("/", "-") or "root"


def default_log_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{_state_name(mountpoint)}.log"


def pid_path(mountpoint: str) -> Path:
    return runtime_dir() / f"{_state_name(mountpoint)}.pid"


SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) less the NUL


def socket_path(mountpoint: str) -> Path:
    """The control socket beside the pid file; a hash of the mount point when the readable
    name would not fit in a sockaddr_un."""
    path = runtime_dir() / f"{_state_name(mountpoint)}.sock"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path
    import hashlib  # loads libcrypto: only for a mount point this long

    digest = hashlib.sha256(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:16]
    return runtime_dir() / f"ctl-{digest}.sock"
