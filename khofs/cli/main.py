"""The `khofs` command: mount, umount, kexec, log, machine show."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from khofs import __version__
from khofs.errors import InputError

if TYPE_CHECKING:
    from khofs.engine.driver import Initcall
    from khofs.engine.kernel import Kernel
    from khofs.engine.system import System
    from khofs.producers.plugin import PluginFactory
    from khofs.producers.spec import ProducerSpec

DEFAULT_CMDLINE = "kho=on"
DEFAULT_MACHINE = "laptop"
UNMOUNT_TIMEOUT = 10.0


class Usage(Exception):
    """A start-up error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Usage(message)


class Version(argparse.Action):
    """--version: khofs and the FUSE backend, which is loaded only then (and to mount)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from khofs.daemon.fuse_edge import BACKEND

        print(f"khofs {__version__} ({BACKEND})")
        parser.exit()


def build_parser() -> Parser:
    from khofs.machines.presets import MACHINES

    p = Parser(prog="khofs", description="A debugfs tree for Kexec HandOver over FUSE.")
    p.add_argument("--version", action=Version, nargs=0, help="show the version and the FUSE "
                   "backend (KHOFS_FUSE), and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    m = sub.add_parser("mount", help="boot an emulated kernel and mount its debugfs")
    m.add_argument("mountpoint")
    _boot_options(m)
    m.add_argument("--boot-from", metavar="DIR",
                   help="boot the next kernel from what `khofs kexec --to DIR` left there")
    m.add_argument("--foreground", action="store_true", help="serve in this process")
    m.add_argument("--log", metavar="FILE", help="the daemon's log (default: under "
                   "$XDG_RUNTIME_DIR/khofs or /tmp/khofs-UID)")
    r = sub.add_parser("run", help="run COMMAND with the emulated debugfs at /sys/kernel/debug "
                       "and a kexec for it, in a private mount namespace")
    _boot_options(r)
    r.add_argument("run_command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    u = sub.add_parser("umount", help="unmount, also when the daemon died")
    u.add_argument("mountpoint")
    _kexec_parser(sub)
    lg = sub.add_parser("log", help="the emulated kernel's log across boots, like dmesg")
    lg.add_argument("mountpoint")
    lg.add_argument("-f", "--follow", action="store_true",
                    help="wait for new lines until Ctrl-C or the daemon stops")
    ms = sub.add_parser("machine", help="the emulated machines").add_subparsers(
        dest="machine_command", required=True, parser_class=Parser)
    show = ms.add_parser("show", help="boot a machine and show its memory, reservations and "
                         "scratch areas, without mounting")
    show.add_argument("machine_arg", nargs="?", default="laptop", metavar="NAME|FILE",
                      help=f"a preset ({', '.join(MACHINES)}), host, or a machine file")
    show.add_argument("--cmdline", default=None, help=CMDLINE_HELP)
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    return p


def _kexec_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    k = sub.add_parser("kexec", help="kexec -s -l, then kexec -e, on the mounted machine")
    k.add_argument("mountpoint")
    line = k.add_mutually_exclusive_group()
    line.add_argument("--append", metavar="STRING",
                      help="the current command line, a space, then STRING")
    line.add_argument("--command-line", metavar="STRING", help="exactly STRING")
    k.add_argument("--image", metavar="FILE", help="the kernel image (sizes its segment)")
    k.add_argument("--initrd", metavar="FILE", help="the initrd (sizes its segment)")
    stage = k.add_mutually_exclusive_group()
    stage.add_argument("--load-only", action="store_true", help="kexec -l: load, no reboot")
    stage.add_argument("--exec-only", action="store_true", help="kexec -e: boot what is loaded")
    k.add_argument("--to", metavar="DIR", help="boot the next kernel in another process: "
                   "write RAM and handover to DIR, unmount, stop (with --load-only: when "
                   "this daemon is stopped later)")


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: a number from 0")
    return value


CMDLINE_HELP = ("the emulated kernel's whole command line (default: the machine file's "
                "cmdline, else kho=on)")


def _boot_options(p: argparse.ArgumentParser) -> None:
    """What boots the emulated kernel and how it is served: shared by mount and run."""
    _machine_options(p)
    p.add_argument("--producers", metavar="FILE", help="TOML file of KHO producers")
    p.add_argument("--plugin", metavar="MODULE:FUNCTION", action="append", default=[],
                   help="a KHO user written in Python (repeatable)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed of the emulated randomness (default 0)")
    p.add_argument("--debug", action="store_true", help="log every FUSE call")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in (the file modes then decide)")


def _machine_options(p: argparse.ArgumentParser) -> None:
    from khofs.machines.presets import MACHINES

    p.add_argument("--machine", default=None, dest="machine_arg",
                   help=f"a preset ({', '.join(MACHINES)}), host, or a machine file")
    p.add_argument("--cmdline", default=None, help=CMDLINE_HELP)


def main(argv: Sequence[str] | None = None) -> int:
    from khofs.daemon.fuse_edge import BackendError

    try:
        args = build_parser().parse_args(argv)
        command = {"mount": cmd_mount, "machine": cmd_machine_show, "umount": cmd_umount,
                   "kexec": cmd_kexec, "log": cmd_log, "run": cmd_run}[args.command]
        return command(args)
    # BackendError: KHOFS_FUSE names a backend that is not there
    except (Usage, InputError, BackendError) as e:
        print(f"khofs: {e}", file=sys.stderr)
        return 2


def _check_mountpoint(path: str) -> None:
    from khofs.daemon import mountinfo

    if not os.path.exists(path):
        raise Usage(f"mount point {path}: does not exist")
    if not os.path.isdir(path):
        raise Usage(f"mount point {path}: not a directory")
    if mountinfo.fstype(path) is not None:
        raise Usage(f"mount point {path}: busy (something is already mounted there)")
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise Usage(f"mount point {path}: {e.strerror}") from None
    if entries:
        # libfuse2 refuses it with a message of its own, libfuse3 would mount over it
        raise Usage(f"mount point {path}: not empty")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise Usage("/dev/fuse: not available (load the fuse module or run with access to it)")


def _initcalls(args: argparse.Namespace) -> list[Initcall]:
    """The boot table: --producers FILE, then each --plugin, in that order."""
    from khofs.producers.plugin import load_plugin
    from khofs.producers.producers_file import load_producers
    from khofs.producers.table import boot_table

    drivers: list[ProducerSpec | PluginFactory] = []
    if getattr(args, "producers", None):
        drivers.extend(load_producers(args.producers))
    drivers.extend(load_plugin(spec) for spec in getattr(args, "plugin", None) or ())
    return boot_table(drivers)


def _boot(args: argparse.Namespace) -> Kernel:
    """One boot of the machine, not mounted (`khofs machine show`)."""
    from khofs.engine.kernel import Kernel
    from khofs.machines.load import load_machine
    from khofs.producers.table import boot_table

    machine = load_machine(args.machine_arg or DEFAULT_MACHINE)
    cmdline = args.cmdline if args.cmdline is not None else machine.cmdline or DEFAULT_CMDLINE
    return Kernel(machine, cmdline, boot_table(), uid=os.getuid(), gid=os.getgid())


def _system(args: argparse.Namespace) -> System:
    """The machine to mount: a cold boot, or (--boot-from) the next kernel of a handover."""
    from khofs.engine.system import System
    from khofs.machines.load import load_machine

    initcalls = _initcalls(args)
    if args.boot_from is not None:
        return _system_from(args, initcalls)
    machine = load_machine(args.machine_arg or DEFAULT_MACHINE)
    cmdline = args.cmdline if args.cmdline is not None else machine.cmdline or DEFAULT_CMDLINE
    return System(machine, cmdline, initcalls, seed=args.seed or 0, uid=os.getuid(),
                  gid=os.getgid())


def _system_from(args: argparse.Namespace, initcalls: list[Initcall]) -> System:
    """--boot-from DIR: the machine as DIR describes it, booted with its handover. The
    command line is the one kexec loaded, and the seed the previous daemon's."""
    from khofs.daemon.ramimage import machine_difference, read_state_dir
    from khofs.engine.system import System
    from khofs.machines.load import load_machine

    if args.cmdline is not None:
        raise Usage("--cmdline and --boot-from: the next kernel's command line is the one "
                    "`khofs kexec` loaded (use its --append or --command-line)")
    machine, state = read_state_dir(Path(args.boot_from))
    given = load_machine(args.machine_arg) if args.machine_arg is not None else None
    diff = machine_difference(given, machine) if given is not None else []
    if diff:
        raise Usage(f"--machine {args.machine_arg}: not the machine that wrote "
                    f"{args.boot_from} ({', '.join(diff)} differ)")
    if args.seed is not None and args.seed != state.seed:
        raise Usage(f"--seed {args.seed}: {args.boot_from} was written with seed "
                    f"{state.seed}")
    return System(machine, state.image.handover.cmdline, initcalls, seed=state.seed,
                  uid=os.getuid(), gid=os.getgid(), state=state)


def _warn_kho_off(kernel: Kernel) -> None:
    if not kernel.params.kho:
        print(f"khofs: KHO is off on the kernel command line {kernel.params.cmdline!r}, as a "
              "kernel would boot it: no kho/ directory (add kho=on)", file=sys.stderr)
    elif not kernel.kho_enabled:
        print("khofs: KHO was disabled during boot: a scratch area could not be allocated "
              "(6.16 logs nothing; `khofs machine show` shows the sizes): no kho/ directory",
              file=sys.stderr)


def cmd_mount(args: argparse.Namespace) -> int:
    from khofs.daemon import lifecycle as daemon
    from khofs.daemon.fuse_edge import load_backend
    from khofs.daemon.state import default_log_path

    mountpoint = os.path.abspath(args.mountpoint)
    _check_mountpoint(mountpoint)
    load_backend()  # a KHOFS_FUSE backend that is not there fails here, before the daemon
    system = _system(args)
    _warn_kho_off(system.kernel)
    if args.foreground:
        return daemon.run_foreground(system, mountpoint, args.allow_other, args.debug)
    log_path = args.log or default_log_path(mountpoint)
    status, problem = daemon.start(system, mountpoint, log_path, args.allow_other, args.debug)
    if status:
        raise Usage(f"cannot mount {mountpoint}: {problem}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """khofs run: the mount options go to the daemon `khofs mount` runs in the namespace."""
    from khofs.run.runner import RunError, run

    command = args.run_command[1:] if args.run_command[:1] == ["--"] else args.run_command
    options = [f"--{name.replace('_', '-')}={value}" for name, value in (
        ("machine", args.machine_arg), ("cmdline", args.cmdline), ("producers", args.producers),
        ("seed", args.seed)) if value is not None]
    options += [f"--plugin={spec}" for spec in args.plugin]
    options += [flag for flag, on in (("--debug", args.debug),
                                      ("--allow-other", args.allow_other)) if on]
    try:
        return run(options, command)
    except RunError as e:
        raise Usage(str(e)) from None


def cmd_machine_show(args: argparse.Namespace) -> int:
    from khofs.machines.show import show_json, show_text

    kernel = _boot(args)
    sys.stdout.write(show_json(kernel) if args.json else show_text(kernel))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from khofs.daemon import lifecycle as daemon

    status = daemon.umount(os.path.abspath(args.mountpoint))
    if status < 0:
        print(f"khofs: {args.mountpoint}: not mounted", file=sys.stderr)
        return 1
    if status:
        print(f"khofs: {args.mountpoint}: could not unmount", file=sys.stderr)
    return status


# --- kexec and log: requests to the daemon serving a mount --------------------------------

def _control(mountpoint: str) -> tuple[str, Path]:
    """The mount point as the user gave it and its daemon's control socket; one line and
    exit 1 when nothing of khofs is mounted there."""
    from khofs.daemon import mountinfo
    from khofs.daemon.state import socket_path

    path = os.path.abspath(mountpoint)
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
    from khofs.daemon.control import ControlError, KexecRequest, kexec

    load = not args.exec_only
    if args.exec_only and (args.append is not None or args.command_line is not None
                           or args.image or args.initrd):
        raise Usage("--exec-only boots what is loaded: it takes no --append, --command-line, "
                    "--image or --initrd")
    to = os.path.abspath(args.to) if args.to else None
    request = KexecRequest(
        load=load, execute=not args.load_only, append=args.append,
        command_line=args.command_line,
        image_size=_image_size(args.image) if args.image else None,
        initrd_size=_file_size(args.initrd) if args.initrd else 0, to=to)
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


def cmd_log(args: argparse.Namespace) -> int:
    from khofs.daemon.control import ControlError, stream_log

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
    except KeyboardInterrupt:
        return 130  # Ctrl-C ends -f, as it ends `dmesg -w`
    except BrokenPipeError:
        # `khofs log MNT | head`: the reader is gone; say nothing, as dmesg does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


# --- image sizes, as kexec_file_load's image loaders size the kernel segment -------------

def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise Usage(f"{path}: {e.strerror or e}") from None


def _image_size(path: str) -> int:
    from khofs.engine.kexec import kernel_image_size

    try:
        with open(path, "rb") as f:
            size = kernel_image_size(f.read(0x264), os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise Usage(f"{path}: {e.strerror or e}") from None
    if not size:
        raise Usage(f"{path}: empty, not a kernel image")
    return size
