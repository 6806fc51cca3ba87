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
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from khofs.daemon.probe import is_stopped
from khofs.daemon.state import SUN_PATH_MAX

log = logging.getLogger("khofs.daemon.control")

# What ends a command, and what libfuse handles itself in a daemon (fuse_set_signal_handlers
# installs its handlers only where the disposition is SIG_DFL). Its handlers end the FUSE
# loop only when they run on the main thread: the control threads block them (a
# process-directed SIGTERM may land on any thread that does not).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FOLLOW_POLL = 0.5
STOP_TIMEOUT = 30.0
DRAIN_TIMEOUT, DRAIN_LIMIT = 1.0, 1 << 16
REQUEST_TIMEOUT = 10.0
REBOOT_TIMEOUT = 60.0  # a reboot loads producers and plugins


@dataclass(frozen=True)
class KexecRequest:
    """`kexec -s -l` (load) then `kexec -e` (execute); to: execute into another process."""

    load: bool = True
    execute: bool = True
    append: str | None = None  # --reuse-cmdline --append
    command_line: str | None = None  # --command-line: exactly this
    image_size: int | None = None  # None: the machine's kernel_size
    initrd_size: int = 0
    to: str | None = None
    abi: str | None = None  # --abi: the next kernel's version, whatever the image says
    image_release: str | None = None  # the release in the image's header, if it has one


@dataclass(frozen=True)
class RebootRequest:
    """`khofs reboot`: a cold boot with these options; None keeps the current one. Paths are
    absolute. producers "" is none; plugins () is none."""

    machine: str | None = None
    cmdline: str | None = None
    producers: str | None = None
    plugins: tuple[str, ...] | None = None
    seed: int | None = None
    abi: str | None = None  # the kernel's version, as --abi takes it


@dataclass(frozen=True)
class Rebooted:
    """The kernel a reboot started: its boot number in the log, its command line, whether
    that turns KHO on and whether KHO is on after the boot."""

    boot: int
    cmdline: str
    kho: bool
    kho_enabled: bool
    scratch_logged: bool = False


class ControlTarget(Protocol):
    """What the daemon offers the channel (khofs.daemon.served.ServedSystem)."""

    def kexec(self, request: KexecRequest) -> tuple[int, str]: ...

    def reboot(self, request: RebootRequest) -> tuple[int, str] | Rebooted: ...

    def log_lines(self, start: int) -> list[str]: ...

    def wait_log(self, count: int, timeout: float) -> None: ...

    def stop(self) -> None: ...


class ControlError(Exception):
    """A client-side failure: the message is the whole line; status 2 when the daemon
    refused bad input, else 1 (the exit status)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """SO_PEERCRED: (pid, uid, gid) of the process that connected."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def _send(conn: socket.socket, *messages: dict[str, Any]) -> None:
    conn.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))


def _block_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


# --- the daemon's side ------------------------------------------------------------------


@contextlib.contextmanager
def _unix_address(path: Path) -> Iterator[str]:
    """An address for bind/connect that names path. A path longer than sun_path is reached
    through its directory, opened O_PATH, as /proc/self/fd/N/NAME (the kernel resolves it
    as an ordinary path), so any runtime directory works."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield os.fspath(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


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
                with _unix_address(self.path) as address:
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
        _send(conn, {"status": 1, "error": "Permission denied: not the daemon's user"})
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
            _send(conn, {"status": 1, "error": "bad control request"})

    def _kexec(self, conn: socket.socket, req: dict[str, Any]) -> None:
        request = parse_kexec(req)
        if request is None:
            _send(conn, {"status": 1, "error": "bad kexec request"})
            return
        status, error = self.target.kexec(request)
        _send(conn, {"status": status, "error": error} if status else {"status": 0})
        if status == 0 and request.execute and request.to is not None:
            # kexec'd into another process: the client waits for this connection to close,
            # which happens when the daemon has unmounted and exited.
            self._lingering.append(conn)
            self.target.stop()

    def _reboot(self, conn: socket.socket, req: dict[str, Any]) -> None:
        request = parse_reboot(req)
        if request is None:
            _send(conn, {"status": 1, "error": "bad reboot request"})
            return
        done = self.target.reboot(request)
        if isinstance(done, Rebooted):
            _send(conn, {"status": 0, "boot": done.boot, "cmdline": done.cmdline,
                         "kho": done.kho, "kho_enabled": done.kho_enabled,
                         "scratch_logged": done.scratch_logged})
        else:
            _send(conn, {"status": done[0], "error": done[1]})

    def _log(self, conn: socket.socket, follow: bool) -> None:
        sent = 0
        while True:
            lines = self.target.log_lines(sent)
            if lines:
                _send(conn, *({"line": ln} for ln in lines))
                sent += len(lines)
            if not follow:
                _send(conn, {"end": True})
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


# --- the client's side ------------------------------------------------------------------
#
# Every wait for the daemon is bounded: a daemon that is stopped (SIGSTOP, Ctrl-Z) is seen at
# once through /proc (its pid is the socket's peer), and one that does not answer at all is
# given up on after REPLY_TIMEOUT; either is one line (ControlError).

REPLY_TIMEOUT = 60.0
POLL = 0.2


def connect(path: Path, mountpoint: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _unix_address(path) as address:
            sock.connect(address)
    except FileNotFoundError:
        sock.close()
        raise ControlError(f"{mountpoint}: its khofs daemon is gone (no control socket "
                           f"{path})") from None
    except ConnectionRefusedError:
        sock.close()
        raise ControlError(f"{mountpoint}: its khofs daemon is gone (control socket {path}: "
                           "Connection refused)") from None
    except OSError as e:
        sock.close()
        raise ControlError(f"{mountpoint}: control socket {path}: {e.strerror or e}") from None
    return sock


def _request(sock: socket.socket, doc: dict[str, Any], mountpoint: str) -> None:
    """Send a request; a daemon that refuses the peer closes without reading it, so a
    broken pipe here is not the answer: the reply line that is waiting says why."""
    try:
        _send(sock, doc)
    except BrokenPipeError:
        pass
    except OSError as e:
        raise ControlError(f"{mountpoint}: control socket: {e.strerror or e}") from None


class _Replies:
    """The daemon's reply lines, read with bounded waits (a socket file object cannot take
    a timeout and go on reading)."""

    def __init__(self, sock: socket.socket, mountpoint: str) -> None:
        self.sock = sock
        self.mountpoint = mountpoint
        self.pid = peer_credentials(sock)[0]  # the daemon: it listened on the socket
        self.buf = b""
        sock.settimeout(POLL)
        self._check(None)  # a stopped daemon gets no request: it would run it when continued

    def _recv(self, deadline: float | None) -> bytes:
        while True:
            try:
                return self.sock.recv(65536)
            except TimeoutError:
                self._check(deadline)
            except OSError as e:
                raise ControlError(f"{self.mountpoint}: control socket: "
                                   f"{e.strerror or e}") from None

    def _check(self, deadline: float | None) -> None:
        if is_stopped(self.pid):
            raise ControlError(f"{self.mountpoint}: its khofs daemon (pid {self.pid}) is "
                               f"stopped: continue it (kill -CONT {self.pid}) or `khofs umount "
                               f"{self.mountpoint}`")
        if deadline is not None and time.monotonic() > deadline:
            raise ControlError(f"{self.mountpoint}: its khofs daemon (pid {self.pid}) did not "
                               "answer: gave up waiting")

    def line(self, timeout: float | None = REPLY_TIMEOUT) -> bytes:
        """The next line, or b"" when the daemon closed the connection."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            chunk = self._recv(deadline)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def messages(self, timeout: float | None = REPLY_TIMEOUT) -> Iterator[dict[str, Any]]:
        """The replies, one JSON object per line, until the daemon closes the connection."""
        while True:
            line = self.line(timeout)
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                raise ControlError(f"{self.mountpoint}: unreadable reply from the daemon"
                                   ) from None
            if not isinstance(msg, dict):
                raise ControlError(f"{self.mountpoint}: unreadable reply from the daemon")
            if msg.get("status"):
                raise ControlError(str(msg.get("error", "failed")),
                                   2 if msg["status"] == 2 else 1)
            yield msg


def kexec(path: Path, mountpoint: str, request: KexecRequest,
          wait_unmounted: Callable[[], None]) -> None:
    """Run a kexec request; ControlError with the daemon's one line when it fails. After a
    kexec into another process, waits for the daemon to exit, then for the unmount."""
    doc = {"op": "kexec", "load": request.load, "exec": request.execute,
           "append": request.append, "command_line": request.command_line,
           "image_size": request.image_size, "initrd_size": request.initrd_size,
           "to": request.to, "abi": request.abi, "image_release": request.image_release}
    with connect(path, mountpoint) as sock:
        replies = _Replies(sock, mountpoint)
        _request(sock, doc, mountpoint)
        for _ in replies.messages():
            if not (request.execute and request.to is not None):
                return
            try:  # the daemon closes the connection when it exits
                while replies.line(STOP_TIMEOUT):
                    pass
            except ControlError:
                raise ControlError(f"{mountpoint}: the daemon did not stop after handing "
                                   "over") from None
            wait_unmounted()
            return
    raise ControlError(f"{mountpoint}: the daemon stopped before answering")


def reboot(path: Path, mountpoint: str, request: RebootRequest,
           timeout: float = REBOOT_TIMEOUT) -> Rebooted:
    """Cold-boot a new kernel in the mount. ControlError with the daemon's line when it
    refuses (status 2: bad input, nothing changed)."""
    doc = {"op": "reboot", "machine": request.machine, "cmdline": request.cmdline,
           "producers": request.producers, "seed": request.seed, "abi": request.abi,
           "plugins": list(request.plugins) if request.plugins is not None else None}
    with connect(path, mountpoint) as sock:
        replies = _Replies(sock, mountpoint)
        _request(sock, doc, mountpoint)
        for msg in replies.messages(timeout):
            return Rebooted(int(msg.get("boot", 0)), str(msg.get("cmdline", "")),
                            bool(msg.get("kho")), bool(msg.get("kho_enabled")),
                            bool(msg.get("scratch_logged")))
    raise ControlError(f"{mountpoint}: the daemon stopped before answering")


def stream_log(path: Path, mountpoint: str, follow: bool, out: Callable[[str], None]) -> None:
    """Pass each log line to out; returns at the end (or, following, when the daemon stops).
    Following waits for new lines without a bound, but not on a stopped daemon."""
    with connect(path, mountpoint) as sock:
        replies = _Replies(sock, mountpoint)
        _request(sock, {"op": "log", "follow": follow}, mountpoint)
        for msg in replies.messages(None if follow else REPLY_TIMEOUT):
            if msg.get("end"):
                return
            out(str(msg.get("line", "")))
    if not follow:
        raise ControlError(f"{mountpoint}: the daemon stopped before answering")
