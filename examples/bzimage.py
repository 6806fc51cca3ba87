#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Write the header of an x86-64 bzImage that the kernel's bzImage64_probe and kexec-tools'
probe both accept (boot protocol 2.15, LOADED_HIGH, XLF_KERNEL_64 and
XLF_CAN_BE_LOADED_ABOVE_4G, init_size 16 MiB). Nothing in it runs: it is for trying
`khofs run` with the system's kexec when no kernel image is at hand.

    python3 examples/bzimage.py FILE
"""

import struct
import sys

MiB = 1 << 20


def bzimage_header() -> bytes:
    buf = bytearray(8192)
    buf[0x1F1] = 1  # setup_sects
    struct.pack_into("<H", buf, 0x1FE, 0xAA55)  # boot_flag
    buf[0x200:0x206] = b"\xeb\x66HdrS"  # the jump over the header, its magic
    struct.pack_into("<H", buf, 0x206, 0x020F)  # the boot protocol
    buf[0x211] = 0x01  # loadflags: LOADED_HIGH
    struct.pack_into("<I", buf, 0x230, 2 * MiB)  # kernel_alignment
    buf[0x234] = 1  # relocatable_kernel
    struct.pack_into("<H", buf, 0x236, 0x3)  # xloadflags
    struct.pack_into("<I", buf, 0x238, 2047)  # cmdline_size
    struct.pack_into("<I", buf, 0x260, 16 * MiB)  # init_size
    return bytes(buf)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bzimage.py FILE")
    with open(sys.argv[1], "wb") as f:
        f.write(bzimage_header())
