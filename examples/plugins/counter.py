"""A khofs plugin: a boot counter that lives in one preserved page.

    khofs mount /mnt --plugin examples/plugins/counter.py:counter

Every boot reads the counter from the page the previous kernel handed over (sub-tree
"counter", whose property "page" holds the page's address), adds one and logs it; a boot
without that sub-tree (a cold boot, or a kexec without finalize) starts again from 1.
The page is preserved and the sub-tree added, so `kexec` carries it over: on finalize in
kernels with KHO notifiers (6.16, 6.18), at once in later ones (`--abi 6.19` and on).
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from khofs.producers.plugin import ProducerAPI

NAME = "counter"
U64 = struct.Struct("<Q")


def counter(api: ProducerAPI) -> int | None:
    phys, value = 0, 0
    blob = api.retrieve_subtree(NAME)
    props = api.fdt_props(blob) if blob is not None else None
    if props is not None and len(props.get("page", b"")) == U64.size:
        phys = U64.unpack(props["page"])[0]
        if api.restore_folio(phys) == 0:
            value = U64.unpack(api.read(phys, U64.size))[0]
        else:
            phys = 0
    if not phys:
        phys = api.alloc_pages(0)
        if not phys:
            return -errno.ENOMEM
    value += 1
    api.write(phys, U64.pack(value))
    api.log(f"counter: boot {api.boot}: value {value}")

    def finalize() -> int:
        err = api.preserve_folio(phys, 0)
        if err:
            return err
        fdt = api.make_fdt("khofs,counter-v1", page=U64.pack(phys))
        return api.add_subtree(NAME, fdt)

    if api.notifiers:
        api.on_finalize(finalize)
        return None
    return finalize()
