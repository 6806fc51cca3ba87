"""Plugins: KHO users written in Python, loaded with `khofs mount --plugin MODULE:FUNCTION`.

MODULE is a module on sys.path (`mypkg.kho`) or the path of a .py file; FUNCTION is a function
in it. khofs calls FUNCTION(api) during every boot of the emulated kernel, the cold boot and
each boot after a kexec, as a driver's module_init runs, before KHO's debugfs tree exists.
FUNCTION gets a fresh ProducerAPI each boot. It may return nothing, 0 or a negative errno
(the init then failed). Memory is the only thing that survives a kexec: keep state in pages
you preserve, and find them again through the sub-tree you add.

The ProducerAPI (errors are negative errnos, as in the kernel):

    api.boot                         boot number: 1 for the cold boot, +1 per kexec
    api.page_size, api.kho_enabled
    api.log(text, level="info")      a kernel log line, exactly as given
    api.alloc_pages(order) -> int    a 2^order block of pages; 0 when out of memory
    api.free_pages(phys, order)
    api.write(phys, data)            physical memory
    api.read(phys, size) -> bytes
    api.preserve_folio(phys, order) -> int   kho_preserve_folio
    api.preserve_phys(phys, size) -> int     kho_preserve_phys: page aligned, else -EINVAL
    api.add_subtree(name, fdt) -> int        only inside a finalize callback (else -EINVAL):
        copies the FDT blob into pages, preserves them and adds the sub-tree `name`
    api.retrieve_subtree(name) -> bytes | None     after a kexec: the incoming sub-FDT
    api.retrieve_subtree_phys(name) -> int | None  ... or just its address
    api.restore_folio(phys) -> int | None    kho_restore_folio: the block's order, or None
    api.on_finalize(callback)        callback() -> 0 / None or a negative errno, run when
    api.on_abort(callback)           `finalize` is written 1 / 0 (KEXEC_KHO_FINALIZE/ABORT)
    api.make_fdt(compatible, **props) -> bytes   a one-node FDT (values: bytes, or str)
    api.fdt_props(blob) -> dict[str, bytes] | None   its root properties

Preservation calls fail with -EBUSY while finalized, as in the kernel; after an abort the 6.16
kernel has forgotten every preservation, so finalize callbacks should preserve, not init.
An exception in FUNCTION or a callback is logged, traceback and all, as khofs's own lines
("khofs: plugin SPEC: ...") and counts as -EIO; nothing else changes.

Example: examples/plugins/counter.py keeps a boot counter in one preserved page (it reads
the page the previous kernel handed over through its sub-tree, adds one, and on finalize
preserves the page and adds the sub-tree again):

    $ khofs mount /mnt --plugin examples/plugins/counter.py:counter
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import cast

from khofs.engine.driver import DriverContext
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoSerialization
from khofs.engine.notifier import NOTIFY_BAD, notifier_from_errno
from khofs.engine.printk import LEVELS
from khofs.engine.slab import get_order
from khofs.errors import PluginError
from khofs.lib.fdt_ro import fdt_check_blob, fdt_parse
from khofs.lib.libfdt import FDT_ERR_NOSPACE, FdtSw, fdt_totalsize

Callback = Callable[[], "int | None"]
PluginFunction = Callable[["ProducerAPI"], "int | None"]
MAX_ERRNO = 4095
_MISSING = object()


# --- FDT helpers for plugins ------------------------------------------------------------


def make_fdt(compatible: str, **props: bytes | str) -> bytes:
    """A finished FDT, laid out as the kernel's libfdt lays it out: a root node with
    `compatible` then `props` in order (str values get their NUL, bytes go as they are)."""
    size = 4096
    while True:
        buf = bytearray(size)
        fdt = FdtSw(buf)
        err = fdt.create() | fdt.finish_reservemap() | fdt.begin_node("")
        err |= fdt.property_string("compatible", compatible)
        for name, value in props.items():
            raw = value.encode() + b"\0" if isinstance(value, str) else bytes(value)
            err |= fdt.property(name, raw)
        err |= fdt.end_node() | fdt.finish()
        if not err:
            return bytes(buf[:fdt_totalsize(buf)])
        if err != -FDT_ERR_NOSPACE:
            raise ValueError(f"make_fdt: libfdt error {err}")
        size *= 2


def fdt_props(blob: bytes) -> dict[str, bytes] | None:
    """The root node's properties of an FDT blob, or None when it is not a valid FDT."""
    if not fdt_check_blob(blob):
        return None
    root = fdt_parse(blob)
    return None if isinstance(root, int) else dict(root.props)


# --- the API --------------------------------------------------------------------------


class ProducerAPI:
    """What a plugin sees of the kernel during one boot."""

    def __init__(self, ctx: DriverContext, producer: PluginProducer) -> None:
        self._ctx = ctx
        self._producer = producer
        self._ser: KhoSerialization | None = None  # set while a finalize callback runs

    make_fdt = staticmethod(make_fdt)
    fdt_props = staticmethod(fdt_props)

    @property
    def boot(self) -> int:
        return self._ctx.boot_number

    @property
    def page_size(self) -> int:
        return self._ctx.mem.page_size

    @property
    def kho_enabled(self) -> bool:
        return bool(self._ctx.kho_enabled)

    def log(self, text: str, level: str = "info") -> None:
        """A line at a printk level: emerg alert crit err warn notice info debug."""
        if level not in LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        self._ctx.log.log(level, text)

    # --- memory -----------------------------------------------------------------------

    def alloc_pages(self, order: int) -> int:
        return self._ctx.pages.alloc_pages(order)

    def free_pages(self, phys: int, order: int) -> None:
        self._ctx.pages.free_pages(phys, order)

    def write(self, phys: int, data: bytes) -> None:
        self._ctx.mem.write(phys, bytes(data))

    def read(self, phys: int, size: int) -> bytes:
        return self._ctx.mem.read(phys, size)

    # --- the outgoing side ------------------------------------------------------------

    def preserve_folio(self, phys: int, order: int) -> int:
        return self._ctx.kho.preserve_folio(phys, order)

    def preserve_phys(self, phys: int, size: int) -> int:
        return self._ctx.kho.preserve_phys(phys, size)

    def add_subtree(self, name: str, fdt: bytes) -> int:
        """Put the blob in pages of its own, preserve them, kho_add_subtree them."""
        ser = self._ser
        if ser is None:
            return -errno.EINVAL
        if not fdt_check_blob(fdt):
            return -errno.EINVAL
        size = fdt_totalsize(fdt)
        order = get_order(size, self.page_size)
        phys = self.alloc_pages(order)
        if not phys:
            return -errno.ENOMEM
        self.write(phys, fdt[:size])
        kho = self._ctx.kho
        err = kho.preserve_folio(phys, order)
        if err:
            self.free_pages(phys, order)
            return err
        return kho.add_subtree(ser, name, phys)

    def on_finalize(self, callback: Callback) -> None:
        self._producer.finalize_callbacks.append(callback)

    def on_abort(self, callback: Callback) -> None:
        self._producer.abort_callbacks.append(callback)

    # --- the incoming side ------------------------------------------------------------

    def retrieve_subtree_phys(self, name: str) -> int | None:
        kho_in = self._ctx.kho_in
        if kho_in is None:
            return None
        err, phys = kho_in.retrieve_subtree(name)
        return None if err else phys

    def retrieve_subtree(self, name: str) -> bytes | None:
        """The incoming sub-FDT's bytes (fdt_totalsize of them); None when there is none or
        its header is not an FDT's."""
        phys = self.retrieve_subtree_phys(name)
        if phys is None:
            return None
        err, blob = self._ctx.mem.read_fdt(phys)
        return None if err else blob

    def restore_folio(self, phys: int) -> int | None:
        kho_in = self._ctx.kho_in
        return kho_in.restore_folio(phys) if kho_in is not None else None


# --- the producer ---------------------------------------------------------------------


class PluginProducer:
    """A plugin as a KHO user for one boot: its init runs FUNCTION(api); it registers a
    notifier block (priority 0) when FUNCTION asked for callbacks."""

    priority = 0

    def __init__(self, spec: str, function: PluginFunction) -> None:
        self.name = spec
        self.function = function
        self.finalize_callbacks: list[Callback] = []
        self.abort_callbacks: list[Callback] = []
        self.api: ProducerAPI | None = None
        self.ctx: DriverContext | None = None

    def init(self, ctx: DriverContext) -> int:
        self.ctx = ctx
        self.api = ProducerAPI(ctx, self)
        err = self._call("init", self.function, self.api)
        if err:
            return err
        if self.finalize_callbacks or self.abort_callbacks:
            return ctx.kho.register_notifier(self)
        return 0

    def notifier_call(self, action: int, data: object) -> int:
        assert self.api is not None
        if action == KEXEC_KHO_FINALIZE:
            assert isinstance(data, KhoSerialization)
            self.api._ser = data
            try:
                return notifier_from_errno(self._run("finalize", self.finalize_callbacks))
            finally:
                self.api._ser = None
        if action == KEXEC_KHO_ABORT:
            return notifier_from_errno(self._run("abort", self.abort_callbacks))
        return NOTIFY_BAD

    def _run(self, what: str, callbacks: list[Callback]) -> int:
        """Callbacks in registration order, stopping at the first error."""
        for callback in callbacks:
            err = self._call(f"{what} callback", callback)
            if err:
                return err
        return 0

    def _call(self, what: str, func: Callable[..., object], *args: object) -> int:
        """Run plugin code: its errno, or -EIO (logged) when it raised or returned nonsense."""
        try:
            ret = func(*args)
        except Exception as e:
            lines = traceback.format_exception(type(e), e, e.__traceback__.tb_next
                                               if e.__traceback__ else None)
            self._log(f"{what} raised {type(e).__name__}: {e}")
            for line in "".join(lines).rstrip("\n").splitlines():
                self._log(line)
            return -errno.EIO
        if ret is None:
            return 0
        if isinstance(ret, int) and not isinstance(ret, bool) and -MAX_ERRNO <= ret <= 0:
            return ret
        self._log(f"{what} returned {ret!r}, not 0 or a negative errno")
        return -errno.EIO

    def _log(self, text: str) -> None:
        assert self.ctx is not None
        self.ctx.log.err(f"khofs: plugin {self.name}: {text}")


class PluginFactory:
    """What load_plugin returns: a new PluginProducer for each boot."""

    def __init__(self, spec: str, function: PluginFunction) -> None:
        self.spec = spec
        self.function = function

    def __call__(self) -> PluginProducer:
        return PluginProducer(self.spec, self.function)


# --- loading --------------------------------------------------------------------------


def load_plugin(spec: str, fresh: bool = False) -> PluginFactory:
    """`MODULE:FUNCTION` -> a producer factory; PluginError (one line) for any problem.
    fresh: run the module's code again even if it was loaded before (`khofs reboot`: a
    rebooted machine loads its drivers anew, so nothing a module kept carries over)."""
    module_name, colon, func_name = spec.rpartition(":")
    if not colon or not module_name or not func_name:
        raise PluginError(f"--plugin {spec}: expected MODULE:FUNCTION")
    module = _import(spec, module_name, fresh)
    func: object = module
    for part in func_name.split("."):
        func = getattr(func, part, _MISSING)
        if func is _MISSING:
            raise PluginError(f"--plugin {spec}: module {module_name} has no function "
                              f"{func_name!r}")
    if not callable(func):
        raise PluginError(f"--plugin {spec}: {func_name!r} in {module_name} is not callable")
    return PluginFactory(spec, cast(PluginFunction, func))


def _import(spec: str, module_name: str, fresh: bool = False) -> ModuleType:
    if module_name.endswith(".py") or "/" in module_name:
        return _import_file(spec, Path(module_name), fresh)
    try:
        if fresh and module_name in sys.modules:
            return importlib.reload(sys.modules[module_name])
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise PluginError(f"--plugin {spec}: no module named {module_name!r}") from None
        raise PluginError(f"--plugin {spec}: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}") from None
    except Exception as e:
        raise PluginError(f"--plugin {spec}: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}") from None


def _import_file(spec: str, path: Path, fresh: bool = False) -> ModuleType:
    """A .py file as a module of its own, under a name derived from its absolute path."""
    if not path.is_file():
        raise PluginError(f"--plugin {spec}: {path}: No such file")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    name = f"khofs_plugin_{digest}"
    if name in sys.modules and not fresh:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise PluginError(f"--plugin {spec}: {path}: not a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # before running it, as import does (dataclasses need it)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise PluginError(f"--plugin {spec}: importing {path} failed: "
                          f"{type(e).__name__}: {e}") from None
    return module
