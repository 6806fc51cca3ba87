"""include/linux/kho/abi/kexec_metadata.h (7.1 on): what a kernel tells the next about itself.

A sub-tree `kexec-metadata` whose blob is `struct kho_kexec_metadata`, packed, 73 bytes: u32
version (1), char previous_release[__NEW_UTS_LEN + 1] (the writing kernel's `uname -r`,
NUL padded), u32 kexec_count (how many kexecs led to the kernel that reads it).
"""

from __future__ import annotations

import struct

KHO_METADATA_NODE_NAME = "kexec-metadata"
KHO_KEXEC_METADATA_VERSION = 1
KHO_KEXEC_METADATA = struct.Struct("<I65sI")  # packed: 73 bytes
