"""The architectures' kexec_file image loaders: what they accept and how big the kernel is.

x86-64 has one loader, arch/x86/kernel/kexec-bzimage64.c: bzImage64_probe checks the setup
header (every refusal ENOEXEC, each with its pr_err), bzImage64_load the length and the command
line. arm64 has one, arch/arm64/kernel/kexec_image.c: image_probe wants the Image header's
magic (EINVAL, silently), image_load a non-zero image_size and the kernel's endianness.
kexec_image_probe_default tries each loader of the architecture and returns the last error.

After a classic kexec_load the next kernel finds its command line where the loaded data says:
x86's boot_params (hdr.cmd_line_ptr), arm64's device tree (/chosen/bootargs).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from khofs.engine.printk import Printk
from khofs.lib.fdt_ro import fdt_parse

# arch/x86/include/uapi/asm/bootparam.h: struct setup_header inside struct boot_params
SETUP_SECTS = 0x1F1  # u8; 0 means 4
BOOT_FLAG = 0x1FE  # u16, 0xAA55
HEADER = 0x202  # "HdrS"
VERSION = 0x206  # u16, the boot protocol
LOADFLAGS = 0x211  # u8
CMD_LINE_PTR = 0x228  # u32
KERNEL_ALIGNMENT = 0x230  # u32
XLOADFLAGS = 0x236  # u16
CMDLINE_SIZE = 0x238  # u32
INIT_SIZE = 0x260  # u32
KERNEL_VERSION = 0x20E  # u16: when non-zero, a NUL-terminated string at it + 0x200
EXT_CMD_LINE_PTR = 0x0C8  # u32 in boot_params, the high half of the command line's address
LOADED_HIGH = 0x01
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
MIN_PROTOCOL = 0x020C  # 2.12: xloadflags
MAX_ELFCOREHDR_STR_LEN = 30  # "elfcorehdr=0x<64 bit value> "
BZIMAGE_PR_FMT = "kexec-bzImage64: "

# arch/arm64/include/asm/image.h: struct arm64_image_header, 64 bytes, little endian
ARM64_HEADER = struct.Struct("<IIQQQQQQII")
ARM64_IMAGE_MAGIC = b"ARM\x64"
ARM64_MAGIC_OFF = 56
ARM64_IMAGE_SIZE_OFF = 16  # u64 image_size
ARM64_IMAGE_FLAG_BE = 1 << 0
MIN_KIMG_ALIGN = 2 << 20
FDT_MAGIC = b"\xd0\x0d\xfe\xed"

PAGE_SIZE_X86 = 4096


@dataclass(frozen=True)
class KernelImage:
    """What an image loader found: the kernel segment's size and alignment."""

    memsz: int
    align: int
    bufsz: int  # the bytes of it the file gives (the rest is bss)


def _u16(buf: bytes, off: int) -> int:
    value: int = struct.unpack_from("<H", buf, off)[0]
    return value


def _u32(buf: bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", buf, off)[0]
    return value


def bzimage64_probe(buf: bytes, log: Printk) -> int:
    """bzImage64_probe: 0, or -ENOEXEC with the kernel's pr_err for the first check that
    fails. (The EFI and 5-level paging checks apply only to a machine booted 32-bit EFI or
    running with LA57.)"""
    if len(buf) < 2 * 512:
        return _refuse(log, "File is too short to be a bzImage")
    checks = (
        (buf[HEADER:HEADER + 4] == b"HdrS", "Not a bzImage"),
        (_u16(buf, BOOT_FLAG) == 0xAA55, "No x86 boot sector present"),
        (_u16(buf, VERSION) >= MIN_PROTOCOL, "Must be at least protocol version 2.12"),
        (bool(buf[LOADFLAGS] & LOADED_HIGH), "zImage not a bzImage"),
        (bool(_u16(buf, XLOADFLAGS) & XLF_KERNEL_64),
         "Not a bzImage64. XLF_KERNEL_64 is not set."),
        (bool(_u16(buf, XLOADFLAGS) & XLF_CAN_BE_LOADED_ABOVE_4G),
         "XLF_CAN_BE_LOADED_ABOVE_4G is not set."),
    )
    for ok, message in checks:
        if not ok:
            return _refuse(log, message)
    return 0  # its pr_debug "It's a relocatable bzImage64" is off, as dynamic debug is


def _refuse(log: Printk, message: str) -> int:
    log.err(BZIMAGE_PR_FMT + message)
    return -errno.ENOEXEC


def bzimage64_load(buf: bytes, cmdline_len: int, page_size: int,
                   log: Printk) -> KernelImage | int:
    """bzImage64_load's checks before it places anything: the real-mode part is all there,
    and the command line fits with room for the "elfcorehdr=" a crash load would add (the
    check applies to every load). The kernel segment is PAGE_ALIGN(init_size) bytes."""
    setup_sects = buf[SETUP_SECTS] or 4
    kern16_size = (setup_sects + 1) * 512
    if len(buf) < kern16_size:
        log.err(BZIMAGE_PR_FMT + "bzImage truncated")
        return -errno.ENOEXEC
    cmdline_size = _u32(buf, CMDLINE_SIZE)
    if cmdline_len > cmdline_size:
        log.err(BZIMAGE_PR_FMT + "Kernel command line too long")
        return -errno.EINVAL
    if cmdline_len + MAX_ELFCOREHDR_STR_LEN > cmdline_size:
        log.err(BZIMAGE_PR_FMT + "Appending elfcorehdr=<addr> to command line exceeds maximum "
                "allowed length")
        return -errno.EINVAL
    memsz = -(-_u32(buf, INIT_SIZE) // page_size) * page_size
    return KernelImage(memsz, max(_u32(buf, KERNEL_ALIGNMENT), page_size),
                       len(buf) - kern16_size)


def arm64_image_probe(buf: bytes) -> int:
    """image_probe: the 64-byte header with "ARM\\x64" at 56, else -EINVAL (no message)."""
    if len(buf) < ARM64_HEADER.size or buf[ARM64_MAGIC_OFF:ARM64_MAGIC_OFF + 4] != \
            ARM64_IMAGE_MAGIC:
        return -errno.EINVAL
    return 0


def arm64_image_load(buf: bytes, page_size: int) -> KernelImage | int:
    """image_load: an image_size of 0, or a big-endian image on this little-endian kernel
    (no mixed-endian support assumed), is -EINVAL; the kernel segment is text_offset +
    image_size, 2 MiB aligned. The page-size flag names a granule the CPU has (any here)."""
    _, _, text_offset, image_size, flags, *_ = ARM64_HEADER.unpack_from(buf)
    if not image_size or flags & ARM64_IMAGE_FLAG_BE:
        return -errno.EINVAL
    memsz = -(-(image_size + text_offset) // page_size) * page_size
    return KernelImage(memsz, MIN_KIMG_ALIGN, len(buf))


def kexec_image_probe(arch: str, buf: bytes, log: Printk) -> int:
    """arch_kexec_kernel_image_probe -> kexec_image_probe_default over the arch's loaders."""
    return bzimage64_probe(buf, log) if arch == "x86_64" else arm64_image_probe(buf)


def kexec_image_load(arch: str, buf: bytes, cmdline_len: int, page_size: int,
                     log: Printk) -> KernelImage | int:
    """The probed loader's load: its checks and the kernel segment."""
    if arch == "x86_64":
        return bzimage64_load(buf, cmdline_len, page_size, log)
    return arm64_image_load(buf, page_size)


# --- what `khofs kexec --image FILE` reads of a kernel file: the kernel segment's size and
# the release the image names --------------------------------------------------------------

BZIMAGE_HEAD_MAX = (255 + 1) * 0x200  # the boot sector and the most setup sectors there are


def kernel_image_size(head: bytes, file_size: int) -> int:
    """The kernel segment's size from a file's first bytes (at least 0x264 of them when the
    file has them) and its size. An x86 bzImage ("HdrS" at 0x202): the larger of the file
    and the setup header's init_size (what the kernel needs in place, bss included); an
    arm64 Image ("ARM\\x64" at 56): its header's image_size, else the file's size."""
    if head[HEADER:HEADER + 4] == b"HdrS" and len(head) >= INIT_SIZE + 4:
        return max(file_size, _u32(head, INIT_SIZE))
    if head[ARM64_MAGIC_OFF:ARM64_MAGIC_OFF + 4] == ARM64_IMAGE_MAGIC:
        image_size: int = struct.unpack_from("<Q", head, ARM64_IMAGE_SIZE_OFF)[0]
        return image_size or file_size
    return file_size


def kernel_image_release(head: bytes) -> str | None:
    """The release an x86 bzImage names in its setup header (Documentation/arch/x86/boot.rst:
    the text of kernel_version up to the first space; arch/x86/boot/version.c writes
    UTS_RELEASE " (" LINUX_COMPILE_BY "@" LINUX_COMPILE_HOST ") " UTS_VERSION there), from
    the file's first bytes (up to BZIMAGE_HEAD_MAX of them); None when it names none: no
    "HdrS", protocol before 2.00, a zero field, a string outside the setup sectors or
    without its NUL (and every arm64 Image)."""
    if head[HEADER:HEADER + 4] != b"HdrS" or len(head) < KERNEL_VERSION + 2:
        return None
    protocol, offset = _u16(head, VERSION), _u16(head, KERNEL_VERSION)
    setup_sects = head[SETUP_SECTS] or 4
    if protocol < 0x200 or not offset or offset >= 0x200 * setup_sects:
        return None
    start = offset + 0x200
    nul = head.find(b"\0", start, (setup_sects + 1) * 0x200)
    if nul < 0:
        return None
    return head[start:nul].decode("latin-1").split(" ", 1)[0]


# --- the next kernel's command line after a classic load ------------------------------------

def _c_string(segments: Sequence[tuple[int, bytes]], phys: int) -> str | None:
    """The NUL-terminated string at phys in the loaded data, or None when nothing is there."""
    for mem, data in segments:
        if mem <= phys < mem + len(data):
            raw = data[phys - mem:].partition(b"\0")[0]
            return raw.decode("utf-8", "surrogateescape")
    return None


def boot_command_line(arch: str, segments: Sequence[tuple[int, bytes]]) -> str:
    """The command line a kernel started from these segments reads: x86 from the
    boot_params page (found by its setup header's "HdrS"; kexec-tools copies the header
    from the image, with no boot flag), arm64 from the device tree's
    /chosen/bootargs; "" when the loaded data holds none."""
    for _, data in segments:
        if arch == "x86_64" and len(data) >= PAGE_SIZE_X86 and \
                data[HEADER:HEADER + 4] == b"HdrS":
            ptr = _u32(data, CMD_LINE_PTR) | _u32(data, EXT_CMD_LINE_PTR) << 32
            found = _c_string(segments, ptr)
            if found is not None:
                return found
        if arch == "arm64" and data[:4] == FDT_MAGIC:
            root = fdt_parse(data)
            chosen = None if isinstance(root, int) else root.subnode("chosen")
            args = chosen.getprop("bootargs") if chosen is not None else None
            if args is not None:
                return args.partition(b"\0")[0].decode("utf-8", "surrogateescape")
    return ""
