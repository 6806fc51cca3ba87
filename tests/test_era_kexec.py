"""Kexec across kernel versions: the next kernel reads the handover as its own code would.

Pairs with the same compatible read each other's memory map with their own layout: a 6.18
kernel reads PAGE_SIZE bytes at each of 6.16's 512-byte bitmaps (whatever lies behind them),
a 6.16 kernel the first 512 bytes of each of 6.18's page bitmaps. Compatibles that differ
stop the handover at kho_populate. The image chooses the next kernel (its version string),
and `--abi` overrides it."""

from __future__ import annotations

import errno
import json
import struct
from pathlib import Path

from khofs.engine.era import profile_of
from khofs.engine.kexec_image import kernel_image_release
from khofs.engine.physmem import PhysMem
from khofs.engine.system import System
from khofs.producers.lib_test_kho import KhoTest
from khofs.producers.table import boot_table
from tests.era_formats import decode_bitmaps, texts
from tests.helpers import LAPTOP, drivers_of

CMDLINE = "kho=on reserve_mem=64M:4096:n1"


def system(era: str, cmdline: str = CMDLINE) -> System:
    return System(LAPTOP, cmdline, boot_table([KhoTest]), profile=profile_of(era))


def snapshot(s: System) -> PhysMem:
    """RAM as the next kernel finds it (before anything of it runs)."""
    mem = PhysMem(s.mem.page_size)
    mem.load_pages(s.mem.pages())
    return mem


def kexec_into(s: System, era: str) -> tuple[PhysMem, list[tuple[int, int]], int]:
    """Finalize, load the next kernel, keep RAM and what was preserved, boot."""
    k = s.kernel
    assert k.kho.finalize_set(1) == 0
    preserved = k.kho.preserved_blocks()
    map_phys = k.kho.ser.preserved_mem_map[0]  # type: ignore[attr-defined]
    assert s.kexec_load(profile=profile_of(era)) == (0, "")
    mem = snapshot(s)
    assert s.kexec_execute() == (0, "")
    assert s.kernel.profile == profile_of(era)
    return mem, preserved, map_phys


def test_6_18_reads_a_page_at_each_of_6_16s_512_byte_bitmaps() -> None:
    s = system("6.16")
    mem, preserved, map_phys = kexec_into(s, "6.18")
    k = s.kernel
    assert k.kho_in is not None
    assert sorted(decode_bitmaps(mem, map_phys, 512)) == sorted(preserved)
    # what 6.18 reserves is what 4096 bytes at each bitmap address say, neighbours included
    assert sorted(k.kho_in.reserved) == sorted(decode_bitmaps(mem, map_phys, 4096))
    assert set(preserved) <= set(k.kho_in.reserved)
    log = texts(k)
    assert "KHO: found kexec handover data. Will skip init for some devices" in log
    assert "Revived memory reservation 'n1' from KHO" in log
    # test_kho of 6.18 wants a 16-byte struct kho_vmalloc in folios_info: EINVAL, no line
    assert "khofs: producer kho_test: init failed: -22" in log
    assert not any("test_kho:" in x for x in log)
    (t,) = drivers_of(k, KhoTest)
    assert t.restored is False


def test_6_16_reads_the_first_512_bytes_of_6_18s_page_bitmaps() -> None:
    s = system("6.18")
    mem, preserved, map_phys = kexec_into(s, "6.16")
    k = s.kernel
    assert k.kho_in is not None
    got = sorted(k.kho_in.reserved)
    assert got == sorted(decode_bitmaps(mem, map_phys, 512))
    # a block whose bit is 4096 or more in its bitmap (16 MiB << order and on inside each
    # 128 MiB << order window) is not reserved: lost
    lost = [(p, o) for p, o in preserved if ((p >> (12 + o)) % 32768) >= 4096]
    assert lost and set(got) == set(preserved) - set(lost)
    assert "khofs: producer kho_test: init failed: -22" in texts(k)  # 8*nr bytes wanted


def test_the_image_chooses_the_next_kernel_and_abi_overrides_it() -> None:
    s = system("6.18")
    assert s.kernel.kho.finalize_set(1) == 0
    assert s.kexec_load(image_release="6.16.3-arch1-1") == (0, "")
    assert s.loaded is not None and s.loaded.profile.era.name == "6.16"
    assert s.loaded.profile.release == "6.16.3-arch1-1"
    assert s.kexec_load(image_release="6.16.3", profile=profile_of("6.18")) == (0, "")
    assert s.loaded.profile == profile_of("6.18")
    assert s.kexec_load() == (0, "") and s.loaded.profile == s.kernel.profile


def test_an_image_outside_6_16_to_7_4_fails_the_load_and_changes_nothing() -> None:
    s = system("6.18")
    assert s.kexec_load() == (0, "")
    before = s.loaded
    err, msg = s.kexec_load(image_release="5.10.0-28-amd64")
    assert err == -errno.EINVAL
    assert msg == ("kexec_file_load failed: Invalid argument (the image is Linux "
                   "5.10.0-28-amd64; khofs emulates 6.16 to 7.4)")
    assert s.loaded is before
    assert texts(s.kernel)[-1] == ("khofs: kexec: the image is Linux 5.10.0-28-amd64; khofs "
                                   "emulates 6.16 to 7.4")
    assert s.kexec_load(image_release="7.5.0")[0] == -errno.EINVAL
    assert s.kexec_load(image_release="linux")[0] == -errno.EINVAL


def bzimage(version: bytes | None, setup_sects: int = 15, protocol: int = 0x20F,
            offset: int = 0x1C00) -> bytes:
    """A bzImage's first sectors: setup_sects, "HdrS", the protocol and kernel_version."""
    head = bytearray(((setup_sects or 4) + 1) * 0x200)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, protocol)
    if version is not None:
        struct.pack_into("<H", head, 0x20E, offset)
        head[offset + 0x200:offset + 0x200 + len(version)] = version
    return bytes(head)


def test_the_bzimage_version_string() -> None:
    text = b"6.18.2-1-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\0"
    assert kernel_image_release(bzimage(text)) == "6.18.2-1-amd64"
    assert kernel_image_release(bzimage(None)) is None  # field 0
    assert kernel_image_release(bzimage(text, protocol=0x1FF)) is None  # before 2.00
    assert kernel_image_release(bzimage(text, setup_sects=14)) is None  # 0x1c00 needs 15
    assert kernel_image_release(bzimage(b"7.4.0" + b"x" * 300, setup_sects=15,
                                        offset=0x1C00 + 0x100)) is None  # no NUL inside
    arm64 = bytearray(0x1000)
    arm64[56:60] = b"ARM\x64"
    assert kernel_image_release(bytes(arm64)) is None
    # setup_sects 0 means 4
    assert kernel_image_release(bzimage(b"7.1.0 (x@y) #1\0", setup_sects=0,
                                        offset=0x600)) == "7.1.0"
    assert kernel_image_release(bzimage(b"7.1.0\0", setup_sects=0, offset=0x800)) is None


# --- the matrix: each era to each, with test_kho and a reserve_mem region -------------------

ERAS = ["6.16", "6.18", "6.19", "7.1", "7.4"]
MATRIX = {  # FROM: cells TO 6.16 6.18 6.19 7.1 7.4 (research note, section 9)
    "6.16": ["restored", "corrupted", "corrupted", "no-kho", "no-kho"],
    "6.18": ["corrupted", "restored", "restored", "no-kho", "no-kho"],
    "6.19": ["corrupted", "restored", "restored", "no-kho", "no-kho"],
    "7.1": ["no-kho", "no-kho", "no-kho", "restored", "no-kho"],
    "7.4": ["no-kho", "no-kho", "no-kho", "no-kho", "restored"],
}


def test_the_compat_matrix() -> None:
    from khofs.producers.compat import DEFAULT_REGION, compat_matrix

    cells = compat_matrix(LAPTOP, f"kho=on {DEFAULT_REGION}", [KhoTest],
                          [profile_of(e) for e in ERAS])
    got = {frm: [c.token for c in row] for frm, row in zip(ERAS, cells, strict=True)}
    assert got == MATRIX
    reason = {(a, b): c.reason for a, row in zip(ERAS, cells, strict=True)
              for b, c in zip(ERAS, row, strict=True)}
    assert reason[("6.16", "6.16")] == "test_kho restored; reserve_mem 'compat' revived"
    assert reason[("6.16", "6.18")].startswith(
        "test_kho: the restore failed (folios_info is 128 bytes, this kernel wants a 16-byte "
        "struct kho_vmalloc); a reservation at 0x480000000 has no memory map")
    assert reason[("6.18", "6.16")].startswith("test_kho: the restore failed (its sub-FDT is "
                                               "not a kho-test-v1 FDT); reserve_mem 'compat' "
                                               "was revived at 0x")
    assert "preserved pages not reserved" in reason[("6.19", "6.16")]
    for frm, to, compatible, tail in [("7.1", "6.19", "kho-v1", ": -22"),
                                      ("6.19", "7.1", "kho-v3", ""),
                                      ("7.1", "7.4", "kho-v4", ""),
                                      ("7.4", "7.1", "kho-v3", "")]:
        assert reason[(frm, to)].startswith(f"{profile_of(to).release}: setup: handover FDT "
                                            "(0x")
        assert reason[(frm, to)].endswith(f"is incompatible with '{compatible}': 1; "
                                          f"disabling KHO revival{tail}")


def test_6_19_without_finalize_into_6_18_reserves_nothing() -> None:
    """A 6.18 kernel has no map check: it takes the handover, reserves nothing, fails to
    restore the root folio, and revives memblock's region on free memory."""
    s = system("6.19")
    assert s.kexec_load(profile=profile_of("6.18")) == (0, "") and s.kexec_execute() == (0, "")
    k = s.kernel
    assert k.kho_in is not None and k.kho_in.reserved == []
    log = texts(k)
    assert "KHO: found kexec handover data. Will skip init for some devices" in log
    assert "KHO: failed to restore folio for KHO fdt" in log
    assert "Revived memory reservation 'n1' from KHO" in log


def test_the_handover_directory_carries_the_next_kernel(tmp_path: Path) -> None:
    from khofs.daemon.ramimage import HANDOVER_FILE, read_state_dir, write_state_dir

    s = system("7.1")
    assert s.kexec_load(profile=profile_of("7.2.4")) == (0, "")
    err, state = s.kexec_away()
    assert err == 0 and state is not None
    write_state_dir(tmp_path, LAPTOP, state)
    doc = json.loads((tmp_path / HANDOVER_FILE).read_text())
    assert doc["next_release"] == "7.2.4"
    _machine, back = read_state_dir(tmp_path)
    assert back.image.profile == profile_of("7.2.4")
    nxt = System(LAPTOP, "", boot_table([KhoTest]), state=back)
    assert nxt.kernel.profile.release == "7.2.4"
    assert any(t.endswith("is incompatible with 'kho-v4': 1") for t in texts(nxt.kernel))
    # a handover written before the eras boots 6.16.0
    del doc["next_release"]
    raw = json.dumps(doc).encode()
    (tmp_path / HANDOVER_FILE).write_bytes(raw)
    assert read_state_dir(tmp_path)[1].image.profile == profile_of("6.16")


def test_a_fill_producer_reports_what_a_6_16_kernel_lost() -> None:
    """Bits 4096 and up of a 6.18 page bitmap are past what 6.16 reads: a page 16 MiB into
    its 128 MiB window (an order-0 block) is not reserved, and the next kernel's memory
    there is not the pattern any more; one in the first 16 MiB survives. (Bigger aligned
    ranges are higher-order blocks, whose bits sit lower.)"""
    from khofs.producers.dts import compile_dts
    from khofs.producers.spec import ProducerSpec

    sub = compile_dts('/dts-v1/; / { compatible = "fill-v1"; };')
    lost, kept = (0x101000000, 0x1000), (0x100100000, 0x1000)
    for preserve, line in [((lost,), "khofs: producer alpha: preserved memory corrupted at "
                                     "0x101000000"),
                           ((kept,), "khofs: producer alpha: preserved memory intact")]:
        spec = ProducerSpec("alpha", sub, preserve, fill=True)
        s = System(LAPTOP, "kho=on", boot_table([spec]), profile=profile_of("6.18"))
        assert s.kernel.kho.finalize_set(1) == 0
        assert s.kexec_load(profile=profile_of("6.16")) == (0, "")
        assert s.kexec_execute() == (0, "")
        assert line in texts(s.kernel)
