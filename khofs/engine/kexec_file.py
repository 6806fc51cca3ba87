"""kexec_file_load(2) (kernel/kexec_file.c, 6.16): the kernel reads the image itself.

The syscall checks, in order: permission (EPERM), unknown flags (EINVAL); KEXEC_FILE_UNLOAD
then just empties the slot. Otherwise kimage_file_prepare_segments reads the kernel fd
(kernel_read_file_from_fd: EBADF, EINVAL, EFBIG), lets the architecture's loader probe it
(x86-64 ENOEXEC, arm64 EINVAL), reads the initrd fd unless KEXEC_FILE_NO_INITRAMFS (so -1
without that flag is EBADF), copies the command line (EFAULT; ENOMEM past kmalloc's limit; a
last byte that is not NUL is EINVAL), adds KHO's scratch table segment (kho_fill_kimage), and
runs the loader, which checks the image and places its segments (EADDRNOTAVAIL when one fits
nowhere: with KHO on, only the scratch areas are offered; a crash image goes into the
crashkernel= region). sanity_check_segment_list closes the load.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from khofs.engine.kernel import Kernel
from khofs.engine.kexec import (
    KexecBuf,
    Segment,
    image_segments,
    kexec_file_load,
    scratch_table_buf,
)
from khofs.engine.kexec_core import (
    KexecSegment,
    KexecSlots,
    kexec_load_permitted,
    sanity_check_segment_list,
    totalram_pages,
)
from khofs.engine.kexec_image import (
    KernelImage,
    kernel_image_release,
    kexec_image_load,
    kexec_image_probe,
)
from khofs.engine.uaccess import UserAccess, kernel_read_file_from_fd

# include/uapi/linux/kexec.h
KEXEC_FILE_UNLOAD = 0x00000001
KEXEC_FILE_ON_CRASH = 0x00000002
KEXEC_FILE_NO_INITRAMFS = 0x00000004
KEXEC_FILE_DEBUG = 0x00000008
KEXEC_FILE_FLAGS = KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS \
    | KEXEC_FILE_DEBUG  # 6.16: NO_CMA (0x10) and FORCE_DTB (0x20) came later
KEXEC_FILE_SIZE_MAX = 4 << 30
KMALLOC_MAX_SIZE = 4 << 20  # 1 << (MAX_PAGE_ORDER + PAGE_SHIFT): memdup_user's ceiling
# arch/x86/kernel/crash.c crash_load_segments with CONFIG_CRASH_HOTPLUG: room for
# VMCOREINFO, the kernel map, CONFIG_NR_CPUS_DEFAULT (8192) CPUs and CRASH_MAX_MEMORY_RANGES
# (32768) ranges, as Elf64_Phdr (56 bytes) after an Elf64_Ehdr (64)
ELFCOREHDR_SIZE = 64 + 56 * (2 + 8192 + 32768)
ELF_CORE_HEADER_ALIGN = 4096


@dataclass(frozen=True)
class FileImage:
    """What kimage_file_prepare_segments made of the caller's files: the next kernel's
    command line, the placed segments (the KHO scratch table first when kho_fill_kimage
    hands a root FDT over: fdt_phys), and the release the image names, if it does."""

    cmdline: str
    segments: tuple[Segment, ...]
    fdt_phys: int = 0
    release: str | None = None


def _copy_cmdline(user: UserAccess, cmdline_len: int, ptr: int) -> str | int:
    """memdup_user of the command line; the kernel passes on the C string it holds."""
    if not cmdline_len:
        return ""
    if cmdline_len > KMALLOC_MAX_SIZE:
        return -errno.ENOMEM
    raw = user.copy_from_user(ptr, cmdline_len)
    if raw is None:
        return -errno.EFAULT
    if raw[-1:] != b"\0":
        return -errno.EINVAL
    return raw.partition(b"\0")[0].decode("utf-8", "surrogateescape")


def _crash_ranges(region: tuple[int, int] | None) -> list[tuple[int, int]]:
    """kexec_walk_resources for a crash image: crashk_res only ([start, end) here)."""
    return [(region[0], region[1] + 1)] if region is not None else []


def add_buffers(kernel: Kernel, bufs: Sequence[KexecBuf],
           crash_region: tuple[int, int] | None, crash: bool) -> tuple[int, list[Segment]]:
    """kexec_add_buffer for each buffer: a crash image in crashk_res, else with KHO on
    kho_locate_mem_hole's scratch areas, else all of memblock's memory."""
    if crash:
        ranges = _crash_ranges(crash_region)
    elif kernel.kho_enabled:
        ranges = [(s.addr, s.addr + s.size) for s in kernel.scratch]
    else:
        ranges = [(r.base, r.end) for r in kernel.memblock.memory.regions]
    return kexec_file_load(bufs, ranges, kernel.machine.arch.page_size)


def _loader_bufs(kernel: Kernel, cmdline: str, image: KernelImage, initrd: int,
                 crash: bool) -> list[KexecBuf]:
    """The image loader's buffers in its order; a crash load's ELF core headers come first
    on x86 (crash_load_segments), after the kernel on arm64 (load_other_segments)."""
    bufs = image_segments(kernel.machine, cmdline, image.memsz, initrd)
    if crash:
        headers = KexecBuf("elfcorehdr", ELFCOREHDR_SIZE, ELF_CORE_HEADER_ALIGN)
        bufs.insert(0 if kernel.machine.arch.name == "x86_64" else 1, headers)
    return bufs


def kimage_file_prepare(kernel: Kernel, user: UserAccess, kernel_fd: int, initrd_fd: int,
                        cmdline_len: int, cmdline_ptr: int, flags: int,
                        crash_region: tuple[int, int] | None) -> FileImage | int:
    """kimage_file_alloc_init and sanity_check_segment_list: the image, or a negative errno
    from the first check that fails, in the kernel's order."""
    arch, page_size, log = kernel.machine.arch.name, kernel.machine.arch.page_size, kernel.log
    crash = bool(flags & KEXEC_FILE_ON_CRASH)
    buf = kernel_read_file_from_fd(user, kernel_fd, KEXEC_FILE_SIZE_MAX)
    if isinstance(buf, int):
        return buf
    err = kexec_image_probe(arch, buf, log)
    if err:
        return err
    initrd = b""
    if not flags & KEXEC_FILE_NO_INITRAMFS:
        got = kernel_read_file_from_fd(user, initrd_fd, KEXEC_FILE_SIZE_MAX)
        if isinstance(got, int):
            return got
        initrd = got
    cmdline = _copy_cmdline(user, cmdline_len, cmdline_ptr)
    if isinstance(cmdline, int):
        return cmdline
    # kho_fill_kimage comes first: whether it hands a root FDT over is the era's to say
    fdt_phys = kernel.kho.fill_kimage() if kernel.kho_enabled else 0
    scratch = [scratch_table_buf(len(kernel.scratch))] if fdt_phys else []
    err, _ = add_buffers(kernel, scratch, crash_region, crash)
    if err:
        return err
    image = kexec_image_load(arch, buf, cmdline_len, page_size, log)
    if isinstance(image, int):
        return image
    bufs = scratch + _loader_bufs(kernel, cmdline, image, len(initrd), crash)
    err, segments = add_buffers(kernel, bufs, crash_region, crash)
    if err:
        return err
    err = sanity_check_segment_list(_user_view(segments, image), page_size, arch,
                                    totalram_pages(kernel), crash_region if crash else None)
    return err or FileImage(cmdline, tuple(segments), fdt_phys, kernel_image_release(buf))


def _user_view(segments: Sequence[Segment], image: KernelImage) -> list[KexecSegment]:
    """The placed segments as sanity_check_segment_list sees them: the kernel segment's
    bufsz is what the file holds of it (more than init_size is EINVAL there)."""
    return [KexecSegment(0, image.bufsz if s.what == "kernel" else 0, s.mem, s.memsz)
            for s in segments]


def sys_kexec_file_load(kernel: Kernel, user: UserAccess, slots: KexecSlots, kernel_fd: int,
                        initrd_fd: int, cmdline_len: int, cmdline_ptr: int, flags: int,
                        crash_region: tuple[int, int]) -> int:
    """SYSCALL_DEFINE5(kexec_file_load): 0 or a negative errno. UNLOAD empties the slot
    (even an empty one); a crash load frees the old crash image first, so a failed one
    leaves none; a failed normal load keeps the image loaded before."""
    if not kexec_load_permitted(user):
        return -errno.EPERM
    if flags & ~KEXEC_FILE_FLAGS:
        return -errno.EINVAL
    crash = bool(flags & KEXEC_FILE_ON_CRASH)
    if flags & KEXEC_FILE_UNLOAD:
        slots.unload(crash)
        return 0
    if crash:
        slots.unload(True)
    got = kimage_file_prepare(kernel, user, kernel_fd, initrd_fd, cmdline_len, cmdline_ptr,
                              flags, crash_region if crash else None)
    if isinstance(got, int):
        return got
    cmdline = got.cmdline
    headers = next((s for s in got.segments if s.what == "elfcorehdr"), None)
    if headers is not None and kernel.machine.arch.name == "x86_64":
        # bzImage64's setup_cmdline puts the ELF core headers' address first
        cmdline = f"elfcorehdr=0x{headers.mem:x} {cmdline}"
    return slots.install(crash, cmdline, got.segments, fdt_phys=got.fdt_phys,
                         release=got.release)
