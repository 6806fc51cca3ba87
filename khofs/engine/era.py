"""The kernel versions khofs emulates: KHO ABI eras and the release strings within them.

An era is a run of kernel releases whose KHO code behaves alike (kexec_handover.c and its
debugfs, the producers' KHO API); its knobs name what changed and when, as the kernels'
sources show it. A Profile is one emulated kernel: its era and its utsname release
(`uname -r`), which decides what differs within an era (the root FDT's compatible in
7.1 .. 7.3) and is what kexec-metadata hands to the next kernel from 7.1 on.

| era  | releases  | memory map                 | finalize                | kho_init      |
|------|-----------|----------------------------|-------------------------|---------------|
| 6.16 | 6.16 6.17 | chunks, 512-byte bitmaps   | 1 finalizes, 0 aborts   | late_initcall |
| 6.18 | 6.18      | chunks, 4096-byte bitmaps  | as 6.16                 | late_initcall |
| 6.19 | 6.19 7.0  | chunks, 4096-byte bitmaps  | 1 serialises, 0 EINVAL  | fs_initcall   |
| 7.1  | 7.1 - 7.3 | radix tree from boot       | none                    | fs_initcall   |
| 7.4  | 7.4       | as 7.1, scratch -> bootmem | none                    | fs_initcall   |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from khofs.engine.abi.kexec_handover import (
    KHO_FDT_COMPATIBLE,
    KHO_FDT_COMPATIBLE_V3,
    KHO_FDT_COMPATIBLE_V4,
)
from khofs.engine.initlevel import FS_INITCALL, LATE_INITCALL

NEW_UTS_LEN = 64  # include/uapi/linux/utsname.h __NEW_UTS_LEN


@dataclass(frozen=True)
class Era:
    """One KHO ABI era: what its kernels do differently from the others."""

    name: str
    versions: tuple[tuple[int, int], ...]  # (major, minor) of the releases in it
    default_release: str
    order: int  # eras compare by this
    kho_init_level: int  # late_initcall (6.16, 6.18) or fs_initcall (6.19+)
    bitmap_bytes: int  # the preserved-memory bitmaps; 0 when the map is the radix tree
    finalize: str  # "toggle" (1 finalizes, 0 aborts), "serialize" (6.19, 7.0) or ""
    notifiers: bool  # register_kho_notifier and the FINALIZE/ABORT chain (6.16, 6.18)
    handover_needs_finalize: bool  # kho_fill_kimage passes nothing unless finalized (6.18)
    page_magic: bool  # deserialize stamps 'KHOP' and kho_restore_page requires it (6.18+)
    restore_checks_order: bool  # ... and requires order <= MAX_PAGE_ORDER (6.18 .. 7.0)
    restore_root_folio: bool  # kho_memory_init restores the root FDT's folio (6.16, 6.18)
    map_required: bool  # kho_populate refuses a handover whose memory map is 0 (6.19+)
    blob_size: bool  # sub-trees are `preserved-data` + `blob-size`, any blob (7.1+)
    kexec_metadata: bool  # the kexec-metadata sub-tree (7.1+)
    vmalloc: bool  # kho_preserve_vmalloc / kho_restore_vmalloc (6.18+)
    preserve_pages: bool  # kho_preserve_pages replaced kho_preserve_phys (6.18+)
    unpreserve: bool  # kho_unpreserve_* and kho_alloc_preserve (6.19+)
    strict_scratch_sizes: bool  # kho_scratch=a,b,c: zero parts allowed, no trailing junk
    warn_no_scratch: bool  # "Failed to reserve scratch area, disabling kexec handover"
    bootmem: bool  # 7.4: scratch is called bootmem (debugfs files, kho_bootmem=)
    debug_config: bool = True  # CONFIG_KEXEC_HANDOVER_DEBUG exists (6.18 on)

    @property
    def radix(self) -> bool:
        return not self.bitmap_bytes

    def __str__(self) -> str:
        return self.name

    def at_least(self, other: Era) -> bool:
        return self.order >= other.order


_COMMON = dict(restore_checks_order=True, page_magic=True, vmalloc=True, preserve_pages=True,
               strict_scratch_sizes=True, warn_no_scratch=True)

ERA_6_16 = Era("6.16", ((6, 16), (6, 17)), "6.16.0", 0, LATE_INITCALL, 512, "toggle",
               notifiers=True, handover_needs_finalize=False, page_magic=False,
               restore_checks_order=False, restore_root_folio=True, map_required=False,
               blob_size=False, kexec_metadata=False, vmalloc=False, preserve_pages=False,
               unpreserve=False, strict_scratch_sizes=False, warn_no_scratch=False,
               bootmem=False, debug_config=False)
ERA_6_18 = Era("6.18", ((6, 18),), "6.18.0", 1, LATE_INITCALL, 4096, "toggle",
               notifiers=True, handover_needs_finalize=True, restore_root_folio=True,
               map_required=False, blob_size=False, kexec_metadata=False, unpreserve=False,
               bootmem=False, **_COMMON)
ERA_6_19 = Era("6.19", ((6, 19), (7, 0)), "6.19.0", 2, FS_INITCALL, 4096, "serialize",
               notifiers=False, handover_needs_finalize=False, restore_root_folio=False,
               map_required=True, blob_size=False, kexec_metadata=False, unpreserve=True,
               bootmem=False, **_COMMON)
ERA_7_1 = Era("7.1", ((7, 1), (7, 2), (7, 3)), "7.1.0", 3, FS_INITCALL, 0, "",
              notifiers=False, handover_needs_finalize=False, restore_root_folio=False,
              map_required=True, blob_size=True, kexec_metadata=True, unpreserve=True,
              bootmem=False, **{**_COMMON, "restore_checks_order": False})
ERA_7_4 = Era("7.4", ((7, 4),), "7.4.0", 4, FS_INITCALL, 0, "",
              notifiers=False, handover_needs_finalize=False, restore_root_folio=False,
              map_required=True, blob_size=True, kexec_metadata=True, unpreserve=True,
              bootmem=True, **{**_COMMON, "restore_checks_order": False})

ERAS = {era.name: era for era in (ERA_6_16, ERA_6_18, ERA_6_19, ERA_7_1, ERA_7_4)}
FIRST, LAST = ERA_6_16.versions[0], ERA_7_4.versions[-1]

_RELEASE = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True)
class Profile:
    """One emulated kernel: its ABI era, its release (init_uts_ns.name.release), and whether
    it was built with CONFIG_KEXEC_HANDOVER_DEBUG (6.18 on; off in a default build): then
    preserving memory that overlaps a scratch area WARNs and fails with EINVAL."""

    era: Era
    release: str
    debug: bool = False

    @property
    def version(self) -> tuple[int, int]:
        m = _RELEASE.match(self.release)
        assert m is not None
        return int(m.group(1)), int(m.group(2))

    @property
    def compatible(self) -> str:
        """KHO_FDT_COMPATIBLE of this kernel: "kho-v1" up to 7.0; the radix tree came with
        "kho-v3" in 7.1 ("kho-v2" never reached a release), and 7.2's linked-block
        serialisation bumped it to "kho-v4"."""
        if not self.era.radix:
            return KHO_FDT_COMPATIBLE
        return KHO_FDT_COMPATIBLE_V3 if self.version == (7, 1) else KHO_FDT_COMPATIBLE_V4

    def __str__(self) -> str:
        debug = ", CONFIG_KEXEC_HANDOVER_DEBUG" if self.debug else ""
        return f"{self.release} (KHO ABI era {self.era.name}{debug})"


DEFAULT_PROFILE = Profile(ERA_6_16, ERA_6_16.default_release)


def era_of_version(major: int, minor: int) -> Era | None:
    """The era whose kernels include major.minor, or None outside 6.16 .. 7.4."""
    return next((e for e in ERAS.values() if (major, minor) in e.versions), None)


def release_problem(release: str) -> str:
    """Why a string cannot be a release khofs boots (empty when it can)."""
    if not release or len(release.encode()) > NEW_UTS_LEN:
        return f"a release is 1 to {NEW_UTS_LEN} bytes"
    if not release.isprintable() or " " in release:
        return "a release has no spaces or control characters"
    m = _RELEASE.match(release)
    if m is None:
        return "a release starts with MAJOR.MINOR"
    if era_of_version(int(m.group(1)), int(m.group(2))) is None:
        return (f"{m.group(1)}.{m.group(2)} is outside the kernels khofs emulates "
                f"({FIRST[0]}.{FIRST[1]} to {LAST[0]}.{LAST[1]})")
    return ""


def profile_of_release(release: str) -> Profile:
    """The profile a release string boots as (ValueError naming the problem)."""
    problem = release_problem(release)
    if problem:
        raise ValueError(f"{release!r}: {problem}")
    m = _RELEASE.match(release)
    assert m is not None
    era = era_of_version(int(m.group(1)), int(m.group(2)))
    assert era is not None
    return Profile(era, release)


DEBUG_SUFFIX = "+debug"


def profile_of(text: str) -> Profile:
    """`--abi` and friends: an era's name (its default release), MAJOR.MINOR (release
    MAJOR.MINOR.0) or a whole release such as 7.2.5-custom, each optionally followed by
    `+debug` (CONFIG_KEXEC_HANDOVER_DEBUG=y); ValueError naming the problem."""
    name, debug = text.removesuffix(DEBUG_SUFFIX), text.endswith(DEBUG_SUFFIX)
    era = ERAS.get(name)
    if era is not None:
        profile = Profile(era, era.default_release)
    else:
        release = name + ".0" if re.fullmatch(r"\d+\.\d+", name) else name
        problem = release_problem(release)
        if problem:
            raise ValueError(f"{text!r}: {problem}")
        profile = profile_of_release(release)
    if debug and not profile.era.debug_config:
        raise ValueError(f"{text!r}: a {profile.era} kernel has no CONFIG_KEXEC_HANDOVER_DEBUG "
                         "(it came with 6.18)")
    return Profile(profile.era, profile.release, debug)
