"""`khofs kexec`, `khofs reboot` and `khofs log`: requests to the daemon serving a mount."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from khofs.cli.parser import Usage
from khofs.errors import Interrupted

if TYPE_CHECKING:
    from khofs.daemon.control_client import Rebooted, RebootRequest

UNMOUNT_TIMEOUT = 10.0


# --- kexec and log: requests to the daemon serving a mount --------------------------------

def _control(mountpoint: str) -> tuple[str, Path]:
    """The mount point as the user gave it and its daemon's control socket; one line and
    exit 1 when nothing of khofs is mounted there."""
    from khofs.cli.boot import mountpoint_arg
    from khofs.daemon import mountinfo
    from khofs.daemon.state import socket_path

    path = mountpoint_arg(mountpoint)
    mount = mountinfo.find(path)
    if mount is None or mount.fstype != "fuse.khofs":
        raise Failure(f"{mountpoint}: not a khofs mount")
    user_id = mount.option("user_id")
    owner = int(user_id) if user_id is not None else None
    if owner is not None and owner != os.getuid():
        # its control socket is private to that user (and the daemon checks SO_PEERCRED)
        raise Failure(f"{mountpoint}: mounted by uid {owner}: only that user may use its "
                      "daemon")
    return mountpoint, socket_path(path)


class Failure(Exception):
    """A request that failed: one line, exit status 1."""


def cmd_kexec(args: argparse.Namespace) -> int:
    from khofs.daemon.control_client import ControlError, KexecRequest, kexec

    load = not args.exec_only
    if args.exec_only and (args.append is not None or args.command_line is not None
                           or args.image or args.initrd):
        raise Usage("--exec-only boots what is loaded: it takes no --append, --command-line, "
                    "--image or --initrd")
    if args.exec_only and args.abi is not None:
        raise Usage("--exec-only boots what is loaded: it takes no --abi")
    if args.to == "":
        raise Usage("--to '': an empty directory name (kexec into another process needs "
                    "one)")
    to = os.path.abspath(args.to) if args.to is not None else None
    image_size, release = _image_head(args.image) if args.image is not None else (None, None)
    request = KexecRequest(
        load=load, execute=not args.load_only, append=args.append,
        command_line=args.command_line, image_size=image_size,
        initrd_size=_file_size(args.initrd) if args.initrd is not None else 0, to=to,
        abi=args.abi, image_release=release)
    try:
        mountpoint, sock = _control(args.mountpoint)
        kexec(sock, mountpoint, request, lambda: _wait_unmounted(args.mountpoint))
    except (Failure, ControlError) as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 1
    return 0


def _wait_unmounted(mountpoint: str) -> None:
    from khofs.daemon import mountinfo

    deadline = time.monotonic() + UNMOUNT_TIMEOUT
    while mountinfo.is_mounted(mountpoint):
        if time.monotonic() > deadline:
            raise Failure(f"{mountpoint}: still mounted after the handover")
        time.sleep(0.02)


def cmd_reboot(args: argparse.Namespace) -> int:
    """khofs reboot: nothing on stdout; the KHO-off note on stderr, as `khofs mount` gives
    it; bad input (the daemon's loader refused it) exits 2, nothing changed."""
    from khofs.cli.boot import absolute_machine, absolute_plugin, kho_note
    from khofs.daemon.control_client import ControlError, RebootRequest

    producers = args.producers
    request = RebootRequest(
        machine=absolute_machine(args.machine_arg), cmdline=args.cmdline,
        producers=os.path.abspath(producers) if producers else producers,
        plugins=(tuple(absolute_plugin(spec) for spec in args.plugin if spec)
                 if args.plugin is not None else None),
        seed=args.seed, abi=args.abi)
    try:
        done = reboot_request(args.mountpoint, request)
    except Failure as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 1
    except ControlError as e:
        print(f"khofs: {e}", file=sys.stderr)
        return e.status
    note = kho_note(done.kho, done.kho_enabled, done.cmdline, done.scratch_logged)
    if note:
        print(note, file=sys.stderr)
    return 0


def reboot_request(mountpoint: str | os.PathLike[str],
                   request: RebootRequest | None = None) -> Rebooted:
    """`khofs reboot`'s request, sent from this process (the pytest plugin sends it so, per
    test): the kernel it started. Failure (nothing of khofs there) or ControlError."""
    from khofs.daemon.control_client import RebootRequest, reboot

    given, sock = _control(os.fspath(mountpoint))
    return reboot(sock, given, request or RebootRequest())


def cmd_log(args: argparse.Namespace) -> int:
    from khofs.daemon.control_client import ControlError, stream_log

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        if args.follow:
            sys.stdout.flush()

    try:
        mountpoint, sock = _control(args.mountpoint)
        stream_log(sock, mountpoint, args.follow, out)
    except (Failure, ControlError) as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        return 128 + e.signum  # Ctrl-C ends -f quietly, as it ends `dmesg -w`
    return 0  # `khofs log MNT | head`: main says nothing of the broken pipe, as dmesg


# --- image sizes, as kexec_file_load's image loaders size the kernel segment -------------

def _file_size(path: str) -> int:
    """--initrd: a regular file's size (kexec-tools reads the file whole)."""
    from khofs.lib.read_file import open_regular

    try:
        with open_regular(path) as f:
            return os.fstat(f.fileno()).st_size
    except OSError as e:
        raise Usage(f"{path}: {e.strerror or e}") from None


def _image_head(path: str) -> tuple[int, str | None]:
    """The kernel segment's size and the release the image names (None: it names none)."""
    from khofs.engine.kexec_image import (
        BZIMAGE_HEAD_MAX,
        kernel_image_release,
        kernel_image_size,
    )
    from khofs.lib.read_file import open_regular

    try:
        with open_regular(path) as f:
            head = f.read(BZIMAGE_HEAD_MAX)
            size = kernel_image_size(head, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise Usage(f"{path}: {e.strerror or e}") from None
    if not size:
        raise Usage(f"{path}: empty, not a kernel image")
    return size, kernel_image_release(head)
