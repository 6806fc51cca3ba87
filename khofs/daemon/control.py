"""The daemon's private control channel: a Unix socket beside its pid file.

`khofs kexec`, `khofs reboot` and `khofs log` talk to the daemon serving a mount through it,
so the debugfs tree stays exactly the kernel's. The socket is mode 0600 in the per-user
runtime directory, and the daemon also checks SO_PEERCRED: a peer whose uid is not the
daemon's gets one refusal line, and the refusal goes to the daemon's log.

The protocol is one JSON object per line, each way:

    {"op": "kexec", "load": bool, "exec": bool, "append": str|null, "command_line": str|null,
     "image_size": int|null, "initrd_size": int, "to": str|null,
     "abi": str|null, "image_release": str|null}
        -> {"status": 0} | {"status": 1, "error": "one line"}
    {"op": "reboot", "machine": str|null, "cmdline": str|null, "producers": str|null,
     "plugins": [str]|null, "seed": int|null, "abi": str|null}  (null: keep the current one)
        -> {"status": 0, "boot": N, "cmdline": str, "kho": bool, "kho_enabled": bool,
            "scratch_logged": bool}
           (N: the new kernel's boot number in the log; kho: the command line turns KHO on;
           kho_enabled: it is on after the boot; scratch_logged: the kernel logs a failed
           scratch reservation itself, from 6.18)
         | {"status": 2, "error": "one line"} (bad input: the old kernel keeps running)
    {"op": "log", "follow": bool}
        -> {"line": "[boot N] [    0.000123] text"} ..., then {"end": true} unless following
           (a follow stream ends when the daemon stops, as the connection closes)
    refused, malformed or unknown -> {"status": 1, "error": "one line"}

A kexec request whose client hung up before the daemon read it (it gave up on a daemon that
was stopped) is dropped, and the log says so: nothing happens that no one waits for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Protocol

from khofs.daemon.control_client import (
    KexecRequest,
    Rebooted,
    RebootRequest,
    peer_credentials,
    send_messages,
    unix_address,
)

log = logging.getLogger("khofs.daemon.control")

# What ends a command, and what libfuse handles itself in a daemon (fuse_set_signal_handlers
# installs its handlers only where the disposition is SIG_DFL). Its handlers end the FUSE
# loop only when they run on the main thread: the control threads block them (a
# process-directed SIGTERM may land on any thread that does not).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FOLLOW_POLL = 0.5
DRAIN_TIMEOUT, DRAIN_LIMIT = 1.0, 1 << 16
REQUEST_TIMEOUT = 10.0


class ControlTarget(Protocol):
    """What the daemon offers the channel (khofs.daemon.served.ServedSystem)."""

    def kexec(self, request: KexecRequest) -> tuple[int, str]: ...

    def reboot(self, request: RebootRequest) -> tuple[int, str] | Rebooted: ...

    def log_lines(self, start: int) -> list[str]: ...

    def wait_log(self, count: int, timeout: float) -> None: ...

    def stop(self) -> None: ...


def _block_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


# --- the daemon's side ------------------------------------------------------------------


class ControlServer:
    """Listens on path; one thread per connection."""

    def __init__(self, path: Path, target: ControlTarget) -> None:
        self.path = path
        self.target = target
        self.sock: socket.socket | None = None
        self._lingering: list[socket.socket] = []

    def start(self) -> None:
        """Bind (replacing a socket a killed daemon left), chmod 0600, listen, accept."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.unlink(missing_ok=True)
            old = os.umask(0o177)
            try:
                with unix_address(self.path) as address:
                    sock.bind(address)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise RuntimeError(f"control socket {self.path}: {e.strerror or e}") from None
        self.sock = sock
        threading.Thread(target=self._accept, name="khofs-control", daemon=True).start()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress
            sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        _block_stop_signals()  # inherited by the connection threads
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True,
                             name="khofs-control-conn").start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            if self._admit(conn):
                self._serve(conn)
        except OSError:
            pass  # the client went away
        except Exception:
            log.exception("control: request failed")
        finally:
            if conn not in self._lingering:
                conn.close()

    def _admit(self, conn: socket.socket) -> bool:
        pid, uid, _ = peer_credentials(conn)
        if uid == os.getuid():
            return True
        log.warning("khofs: control: refused a connection from uid %d (pid %d): only uid %d "
                    "may use this daemon", uid, pid, os.getuid())
        send_messages(conn, {"status": 1, "error": "Permission denied: not the daemon's user"})
        _drain(conn)
        return False

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)  # a peer that says nothing does not keep a thread
        with conn.makefile("rb") as f:
            line = f.readline(1 << 16)
        conn.settimeout(None)
        try:
            req = json.loads(line)
            op = req["op"] if isinstance(req, dict) else None
        except (ValueError, KeyError):
            op = None
        if op == "kexec" and _peer_closed(conn):
            # the client gave up (a daemon that was stopped is continued): what it no
            # longer waits for must not happen behind its back
            log.warning("khofs: control: dropped a kexec request whose client went away")
        elif op == "kexec":
            self._kexec(conn, req)
        elif op == "reboot":
            self._reboot(conn, req)
        elif op == "log":
            self._log(conn, bool(req.get("follow")))
        else:
            send_messages(conn, {"status": 1, "error": "bad control request"})

    def _kexec(self, conn: socket.socket, req: dict[str, Any]) -> None:
        request = parse_kexec(req)
        if request is None:
            send_messages(conn, {"status": 1, "error": "bad kexec request"})
            return
        status, error = self.target.kexec(request)
        send_messages(conn, {"status": status, "error": error} if status else {"status": 0})
        if status == 0 and request.execute and request.to is not None:
            # kexec'd into another process: the client waits for this connection to close,
            # which happens when the daemon has unmounted and exited.
            self._lingering.append(conn)
            self.target.stop()

    def _reboot(self, conn: socket.socket, req: dict[str, Any]) -> None:
        request = parse_reboot(req)
        if request is None:
            send_messages(conn, {"status": 1, "error": "bad reboot request"})
            return
        done = self.target.reboot(request)
        if isinstance(done, Rebooted):
            send_messages(conn, {"status": 0, "boot": done.boot, "cmdline": done.cmdline,
                         "kho": done.kho, "kho_enabled": done.kho_enabled,
                         "scratch_logged": done.scratch_logged})
        else:
            send_messages(conn, {"status": done[0], "error": done[1]})

    def _log(self, conn: socket.socket, follow: bool) -> None:
        sent = 0
        while True:
            lines = self.target.log_lines(sent)
            if lines:
                send_messages(conn, *({"line": ln} for ln in lines))
                sent += len(lines)
            if not follow:
                send_messages(conn, {"end": True})
                return
            if _peer_closed(conn):
                return
            self.target.wait_log(sent, FOLLOW_POLL)


def parse_kexec(req: dict[str, Any]) -> KexecRequest | None:
    """A KexecRequest from its JSON form, or None if a field has the wrong type."""
    def opt(key: str, kind: type) -> bool:
        return req.get(key) is None or isinstance(req.get(key), kind)

    sizes_ok = all(req.get(k) is None or _is_u64(req.get(k))
                   for k in ("image_size", "initrd_size"))
    strings = ("append", "command_line", "to", "abi", "image_release")
    if not (sizes_ok and all(opt(k, str) for k in strings)
            and all(isinstance(req.get(k), bool) for k in ("load", "exec"))):
        return None
    return KexecRequest(req["load"], req["exec"], req.get("append"), req.get("command_line"),
                        req.get("image_size"), req.get("initrd_size") or 0, req.get("to"),
                        req.get("abi"), req.get("image_release"))


def parse_reboot(req: dict[str, Any]) -> RebootRequest | None:
    """A RebootRequest from its JSON form, or None if a field has the wrong type."""
    plugins = req.get("plugins")
    if not (all(req.get(k) is None or isinstance(req.get(k), str)
                for k in ("machine", "cmdline", "producers", "abi"))
            and (req.get("seed") is None or _is_u64(req.get("seed")))
            and (plugins is None or (isinstance(plugins, list)
                                     and all(isinstance(p, str) for p in plugins)))):
        return None
    return RebootRequest(req.get("machine"), req.get("cmdline"), req.get("producers"),
                         tuple(plugins) if plugins is not None else None, req.get("seed"),
                         req.get("abi"))


def _is_u64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


def _drain(conn: socket.socket) -> None:
    """Closing an AF_UNIX socket with unread data resets the peer (unix_release_sock sets
    ECONNRESET), and the refusal would be lost: read and drop what the peer sent (a little,
    briefly) until it hangs up."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(DRAIN_TIMEOUT)
    total = 0
    with contextlib.suppress(OSError):
        while total < DRAIN_LIMIT:
            chunk = conn.recv(4096)
            if not chunk:
                break
            total += len(chunk)


def _peer_closed(conn: socket.socket) -> bool:
    if not select.select([conn], [], [], 0)[0]:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
