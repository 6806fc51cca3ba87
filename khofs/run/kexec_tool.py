"""`kexec` inside `khofs run`: the kexec-tools options KHO users type, driving the emulated
kernel mounted at $KHOFS_MOUNT, with kexec-tools' messages and exit statuses (kexec/kexec.c):
a failed kexec_file_load prints "kexec_file_load failed: <strerror>" and main returns
EFAILED (-1), exit 255; die() exits 1; a bad option prints glibc getopt's complaint and exits 1.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Sequence

SHORT = "hvdfxyulepsact:"
LONG = ["help", "version", "debug", "force", "no-ifdown", "no-sync", "unload", "load", "exec",
        "load-panic", "kexec-file-syscall", "kexec-syscall", "kexec-syscall-auto", "type=",
        "initrd=", "ramdisk=", "append=", "command-line=", "reuse-cmdline"]
EFAILED = 255  # main() returning EFAILED (-1)

USAGE = """Usage: kexec [OPTION]... [kernel]
(the kexec of khofs run: it loads into and boots the emulated kernel at $KHOFS_MOUNT)
 -l, --load           Load the new kernel into the current kernel.
 -e, --exec           Execute a currently loaded kernel.
 -f, --force          Force an immediate kexec, don't call shutdown.
 -u, --unload         Unload the current kexec target kernel.
 -s, --kexec-file-syscall  Use file based syscall for kexec operation
     --initrd=FILE    Use FILE as the kernel's initial ramdisk.
     --append=STRING  Set the kernel command line to STRING.
     --command-line=STRING  Set the kernel command line to STRING.
     --reuse-cmdline  Use kernel command line from running system.
"""


class Plan:
    """What the options ask for, as kexec-tools' main() works it out."""

    def __init__(self) -> None:
        self.load, self.execute, self.unload, self.panic = True, False, False, False
        self.old_syscall = False
        self.initrd: str | None = None
        self.append: str | None = None
        self.reuse = False


def _apply(plan: Plan, opt: str, value: str) -> int | None:
    """One option; an exit status when it ends the run (help, version)."""
    if opt in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if opt in ("-v", "--version"):
        print("kexec-tools 2.0.27 (khofs)")
        return 0
    if opt in ("-f", "--force"):
        plan.load, plan.execute = True, True
    elif opt in ("-l", "--load"):
        plan.load, plan.execute = True, False
    elif opt in ("-e", "--exec"):
        plan.load, plan.execute = False, True
    elif opt in ("-u", "--unload"):
        plan.load, plan.unload = False, True
    elif opt in ("-p", "--load-panic"):
        plan.load, plan.panic = True, True
    elif opt in ("-c", "--kexec-syscall"):
        plan.old_syscall = True
    elif opt in ("--initrd", "--ramdisk"):
        plan.initrd = value
    elif opt in ("--append", "--command-line"):  # the same option in the x86 loaders
        plan.append = value
    elif opt == "--reuse-cmdline":
        plan.reuse = True
    return None


def _size(path: str) -> int:
    return os.stat(path).st_size


def _glibc_message(e: getopt.GetoptError) -> str:
    """What glibc's getopt_long prints, which kexec-tools users see."""
    long = len(e.opt) > 1
    if "requires argument" in e.msg:
        return f"option '--{e.opt}' requires an argument" if long \
            else f"option requires an argument -- '{e.opt}'"
    if "must not have an argument" in e.msg:
        return f"option '--{e.opt}' doesn't allow an argument"
    return f"unrecognized option '--{e.opt}'" if long else f"invalid option -- '{e.opt}'"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts, rest = getopt.gnu_getopt(args, SHORT, LONG)
    except getopt.GetoptError as e:
        print(f"kexec: {_glibc_message(e)}", file=sys.stderr)
        sys.stderr.write(USAGE)
        return 1
    plan = Plan()
    for opt, value in opts:
        status = _apply(plan, opt, value)
        if status is not None:
            return status
    return _do(plan, rest)


def _do(plan: Plan, rest: list[str]) -> int:
    if plan.panic:
        # kexec-tools checks crashkernel= first; no emulated machine reserves one
        print("Memory for crashkernel is not reserved\nPlease reserve memory by passing"
              "\"crashkernel=Y@X\" parameter to kernel\nThen try to loading kdump kernel",
              file=sys.stderr)
        return 1
    if plan.old_syscall:
        print("kexec: khofs emulates kexec_file_load (-s) only: the kexec_load syscall (-c) "
              "carries no KHO handover", file=sys.stderr)
        return 1
    mount = os.environ.get("KHOFS_MOUNT")
    if not mount:
        print("kexec: KHOFS_MOUNT is not set: run this under `khofs run`", file=sys.stderr)
        return 1
    if plan.unload:
        return _request(plan, mount, None)  # neither load nor exec: kexec_file_unload
    if plan.load and not rest:
        print("No kernel specified", file=sys.stderr)
        sys.stderr.write(USAGE)
        return EFAILED
    return _request(plan, mount, rest[0] if plan.load else None)


def _image_head(path: str) -> tuple[int, str | None]:
    """The kernel segment's size and the release the image names (it picks the next
    kernel's version; None: the running one)."""
    from khofs.engine.kexec import BZIMAGE_HEAD_MAX, kernel_image_release, kernel_image_size

    with open(path, "rb") as f:
        head = f.read(BZIMAGE_HEAD_MAX)
        return kernel_image_size(head, os.fstat(f.fileno()).st_size), kernel_image_release(head)


def _request(plan: Plan, mount: str, kernel: str | None) -> int:
    from khofs.daemon.control import ControlError, KexecRequest, kexec
    from khofs.daemon.state import socket_path

    try:
        image, release = _image_head(kernel) if kernel else (None, None)
        initrd = _size(plan.initrd) if plan.initrd else 0
    except OSError as e:
        print(f"Failed to decompress file {e.filename}:{e.strerror}", file=sys.stderr)
        return EFAILED
    # --reuse-cmdline takes the running (emulated) kernel's line; without it, only --append
    reuse = {"append": plan.append} if plan.reuse else {"command_line": plan.append or ""}
    request = KexecRequest(load=plan.load and not plan.unload,
                           execute=plan.execute and not plan.unload, image_size=image,
                           initrd_size=initrd, image_release=release, **reuse)
    try:
        kexec(socket_path(mount), mount, request, lambda: None)
    except ControlError as e:
        message = str(e)
        if message.startswith("kexec_file_load failed"):
            print(message, file=sys.stderr)
            return EFAILED
        if message == "Nothing has been loaded!":
            print(message, file=sys.stderr)
            return 1
        print(f"kexec: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
