"""The control channel's client side and its messages: what `khofs kexec`, `khofs reboot`,
`khofs log` and the pytest plugin send to the daemon serving a mount, and how they wait for
its answer (khofs.daemon.control is the daemon's side and documents the protocol).

A command that talks to a daemon imports this module and no more of the daemon: it imports
only the standard library's cheapest modules, so that `khofs reboot`, a command a test suite
may run before every test, pays for a new interpreter and little else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from khofs.daemon.probe import is_stopped
from khofs.daemon.state import SUN_PATH_MAX

STOP_TIMEOUT = 30.0
REBOOT_TIMEOUT = 60.0  # a reboot loads producers and plugins
REPLY_TIMEOUT = 60.0
POLL = 0.2


class KexecRequest(NamedTuple):
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


class RebootRequest(NamedTuple):
    """`khofs reboot`: a cold boot with these options; None keeps the current one. Paths are
    absolute. producers "" is none; plugins () is none."""

    machine: str | None = None
    cmdline: str | None = None
    producers: str | None = None
    plugins: tuple[str, ...] | None = None
    seed: int | None = None
    abi: str | None = None  # the kernel's version, as --abi takes it


class Rebooted(NamedTuple):
    """The kernel a reboot started: its boot number in the log, its command line, whether
    that turns KHO on and whether KHO is on after the boot."""

    boot: int
    cmdline: str
    kho: bool
    kho_enabled: bool
    scratch_logged: bool = False


class ControlError(Exception):
    """A client-side failure: the message is the whole line; status 2 when the daemon
    refused bad input, else 1 (the exit status)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """SO_PEERCRED: (pid, uid, gid) of the process at the other end."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def send_messages(conn: socket.socket, *messages: dict[str, Any]) -> None:
    """One JSON object per line."""
    conn.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))


@contextlib.contextmanager
def unix_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """An address for bind/connect that names path. A path longer than sun_path is reached
    through its directory, opened O_PATH, as /proc/self/fd/N/NAME (the kernel resolves it
    as an ordinary path), so any runtime directory works."""
    name = os.fspath(path)
    if len(os.fsencode(name)) <= SUN_PATH_MAX:
        yield name
        return
    directory, base = os.path.split(name)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{base}"
    finally:
        os.close(fd)


# Every wait for the daemon is bounded: a daemon that is stopped (SIGSTOP, Ctrl-Z) is seen at
# once through /proc (its pid is the socket's peer), and one that does not answer at all is
# given up on after REPLY_TIMEOUT; either is one line (ControlError).

def connect(path: str | os.PathLike[str], mountpoint: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            sock.connect(address)
    except FileNotFoundError:
        sock.close()
        raise ControlError(f"{mountpoint}: its khofs daemon is gone (no control socket "
                           f"{os.fspath(path)})") from None
    except ConnectionRefusedError:
        sock.close()
        raise ControlError(f"{mountpoint}: its khofs daemon is gone (control socket "
                           f"{os.fspath(path)}: Connection refused)") from None
    except OSError as e:
        sock.close()
        raise ControlError(f"{mountpoint}: control socket {os.fspath(path)}: "
                           f"{e.strerror or e}") from None
    return sock


def _request(sock: socket.socket, doc: dict[str, Any], mountpoint: str) -> None:
    """Send a request; a daemon that refuses the peer closes without reading it, so a
    broken pipe here is not the answer: the reply line that is waiting says why."""
    try:
        send_messages(sock, doc)
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


def kexec(path: str | os.PathLike[str], mountpoint: str, request: KexecRequest,
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


def reboot(path: str | os.PathLike[str], mountpoint: str, request: RebootRequest,
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


def stream_log(path: str | os.PathLike[str], mountpoint: str, follow: bool,
               out: Callable[[str], None]) -> None:
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
