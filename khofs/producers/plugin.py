"""Plugins: KHO users written in Python, loaded with `khofs mount --plugin MODULE:FUNCTION`.

MODULE is a module on sys.path (`mypkg.kho`) or the path of a .py file; FUNCTION is a function
in it. khofs calls FUNCTION(api) during every boot of the emulated kernel, the cold boot and
each boot after a kexec, as a driver's module_init runs, before KHO's debugfs tree exists.
FUNCTION gets a fresh ProducerAPI each boot. It may return nothing, 0 or a negative errno
(the init then failed). Memory is the only thing that survives a kexec: keep state in pages
you preserve, and find them again through the sub-tree you add.

The ProducerAPI is one API for every kernel version khofs emulates; each call is the
running kernel's KHO function, and what a version cannot do is refused with -EOPNOTSUPP and
one log line naming the version (errors are negative errnos, as in the kernel):

    api.boot                         boot number: 1 for the cold boot, +1 per kexec
    api.era, api.release             the running kernel: "6.19", "6.19.0"
    api.notifiers                    whether it has KHO notifiers (6.16, 6.18)
    api.page_size, api.kho_enabled
    api.log(text, level="info")      a kernel log line, exactly as given
    api.alloc_pages(order) -> int    a 2^order block of pages; 0 when out of memory
    api.free_pages(phys, order)
    api.write(phys, data)            physical memory
    api.read(phys, size) -> bytes
    api.preserve_folio(phys, order) -> int   kho_preserve_folio
    api.preserve_phys(phys, size) -> int     6.16: kho_preserve_phys (page aligned, else
        -EINVAL); 6.18 on: kho_preserve_pages(page of phys, size >> PAGE_SHIFT)
    api.preserve_pages(phys, nr_pages) -> int    kho_preserve_pages (6.16: kho_preserve_phys
        of nr_pages pages)
    api.unpreserve_folio(phys, order), api.unpreserve_pages(phys, nr_pages)   6.19 on
    api.add_subtree(name, data) -> int       copies the blob into pages, preserves them and
        adds the sub-tree `name`: 6.16 and 6.18 only inside a finalize callback (else
        -EINVAL), 6.19 on at any time; an FDT, or from 7.1 any bytes (sized by them)
    api.retrieve_subtree(name) -> bytes | None     after a kexec: the incoming sub-tree (its
        FDT's totalsize bytes; from 7.1 its blob-size bytes)
    api.retrieve_subtree_phys(name) -> int | None  ... or just its address
    api.restore_folio(phys) -> int | None    kho_restore_folio: the block's order, or None
    api.on_finalize(callback)        6.16, 6.18: callback() -> 0 / None or a negative errno,
    api.on_abort(callback)           run when `finalize` is written 1 / 0 (KEXEC_KHO_FINALIZE/
                                     ABORT); refused from 6.19 (no notifiers)
    api.make_fdt(compatible, **props) -> bytes   a one-node FDT (values: bytes, or str)
    api.fdt_props(blob) -> dict[str, bytes] | None   its root properties

Preservation calls fail with -EBUSY while finalized in 6.16 and 6.18, as in the kernel; after
an abort those kernels have forgotten every preservation, so finalize callbacks should
preserve, not init. From 6.19 a plugin preserves and adds its sub-tree in FUNCTION itself.
An exception in FUNCTION or a callback is logged, traceback and all, as khofs's own lines
("khofs: plugin SPEC: ...") and counts as -EIO; nothing else changes. So does a plugin that
exits: sys.exit(), SystemExit, KeyboardInterrupt, or os._exit() called through the os module
("khofs: plugin SPEC: init exited (os._exit(3))"): the mount or daemon goes on. Only a real
signal (khofs.errors.Interrupted) passes through a plugin, to end the command.

Example: examples/plugins/counter.py keeps a boot counter in one preserved page (it reads
the page the previous kernel handed over through its sub-tree, adds one, and preserves the
page and adds the sub-tree again: on finalize where the kernel has notifiers, else at once):

    $ khofs mount /mnt --plugin examples/plugins/counter.py:counter
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.util
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn, cast

from khofs.engine.driver import DriverContext
from khofs.engine.kho_out import KEXEC_KHO_ABORT, KEXEC_KHO_FINALIZE, KhoOut, KhoSerialization
from khofs.engine.kho_out_live import KhoOutLive
from khofs.engine.notifier import NOTIFY_BAD, notifier_from_errno
from khofs.engine.printk import LEVELS
from khofs.engine.slab import get_order
from khofs.errors import Interrupted, PluginError
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

    @property
    def era(self) -> str:
        return self._ctx.profile.era.name

    @property
    def release(self) -> str:
        return self._ctx.profile.release

    @property
    def notifiers(self) -> bool:
        return self._ctx.profile.era.notifiers

    def _refuse(self, call: str, why: str) -> int:
        """What this kernel version cannot do: one line, -EOPNOTSUPP."""
        self._producer._log(f"{call}: a {self.era} kernel {why}")
        return -errno.EOPNOTSUPP

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
        kho = self._ctx.kho
        if isinstance(kho, KhoOut) and not kho.era.preserve_pages:
            return kho.preserve_phys(phys, size)
        return kho.preserve_pages(phys, size // self.page_size)

    def preserve_pages(self, phys: int, nr_pages: int) -> int:
        kho = self._ctx.kho
        if isinstance(kho, KhoOut) and not kho.era.preserve_pages:
            return kho.preserve_phys(phys, nr_pages * self.page_size)
        return kho.preserve_pages(phys, nr_pages)

    def unpreserve_folio(self, phys: int, order: int) -> int:
        kho = self._ctx.kho
        if not isinstance(kho, KhoOutLive):
            return self._refuse("unpreserve_folio", "has no kho_unpreserve_folio (from 6.19)")
        kho.unpreserve_folio(phys, order)
        return 0

    def unpreserve_pages(self, phys: int, nr_pages: int) -> int:
        kho = self._ctx.kho
        if not isinstance(kho, KhoOutLive):
            return self._refuse("unpreserve_pages", "has no kho_unpreserve_pages (from 6.19)")
        kho.unpreserve_pages(phys, nr_pages)
        return 0

    def add_subtree(self, name: str, data: bytes) -> int:
        """Put the blob in pages of its own, preserve them, kho_add_subtree them."""
        kho = self._ctx.kho
        ser = self._ser
        if isinstance(kho, KhoOut) and ser is None:
            return -errno.EINVAL
        if kho.era.blob_size:
            size = len(data)
            if not size:
                return -errno.EINVAL
        elif fdt_check_blob(data):
            size = fdt_totalsize(data)
        else:
            return -errno.EINVAL
        order = get_order(size, self.page_size)
        phys = self.alloc_pages(order)
        if not phys:
            return -errno.ENOMEM
        self.write(phys, data[:size])
        err = kho.preserve_folio(phys, order)
        if err:
            self.free_pages(phys, order)
            return err
        if isinstance(kho, KhoOut):
            assert ser is not None
            return kho.add_subtree(ser, name, phys)
        assert isinstance(kho, KhoOutLive)
        return kho.add_subtree(name, phys, size)

    def on_finalize(self, callback: Callback) -> int:
        if not self.notifiers:
            return self._refuse("on_finalize", "has no KHO notifiers (gone from 6.19): "
                                "preserve and add_subtree in the plugin function")
        self._producer.finalize_callbacks.append(callback)
        return 0

    def on_abort(self, callback: Callback) -> int:
        if not self.notifiers:
            return self._refuse("on_abort", "has no KHO notifiers and no abort (gone from "
                                "6.19)")
        self._producer.abort_callbacks.append(callback)
        return 0

    # --- the incoming side ------------------------------------------------------------

    def retrieve_subtree_phys(self, name: str) -> int | None:
        kho_in = self._ctx.kho_in
        if kho_in is None:
            return None
        err, phys = kho_in.retrieve_subtree(name)
        return None if err else phys

    def retrieve_subtree(self, name: str) -> bytes | None:
        """The incoming sub-tree's bytes (KhoIn.retrieve_bytes), or None."""
        kho_in = self._ctx.kho_in
        return kho_in.retrieve_bytes(name) if kho_in is not None else None

    def restore_folio(self, phys: int) -> int | None:
        kho_in = self._ctx.kho_in
        return kho_in.restore_folio(phys) if kho_in is not None else None


# --- plugins that exit -----------------------------------------------------------------


class PluginExit(BaseException):  # noqa: N818 - what os._exit becomes in plugin code
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _plugin_exit(status: int) -> NoReturn:
    raise PluginExit(status)


_exit_guard = threading.Lock()
_guarded = 0


@contextmanager
def no_exit() -> Iterator[None]:
    """While plugin code runs, os._exit raises PluginExit instead of ending the process.
    Plugin code runs under the kernel's lock, one call at a time; the count covers a
    plugin that loads another."""
    global _guarded
    with _exit_guard:
        if not _guarded:
            os._exit = _plugin_exit
        _guarded += 1
    try:
        yield
    finally:
        with _exit_guard:
            _guarded -= 1
            if not _guarded:
                os._exit = _REAL_EXIT


_REAL_EXIT = os._exit


def _exit_words(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "KeyboardInterrupt"
    code = e.code if isinstance(e, SystemExit) else None
    return f"sys.exit({code!r})"


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
        kho = ctx.kho
        if isinstance(kho, KhoOut) and (self.finalize_callbacks or self.abort_callbacks):
            return kho.register_notifier(self)
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
        """Run plugin code: its errno, or -EIO (logged) when it raised, exited or returned
        nonsense."""
        try:
            with no_exit():
                ret = func(*args)
        except Interrupted:
            raise
        except PluginExit as e:
            self._log(f"{what} exited (os._exit({e.status})): a plugin cannot end khofs")
            return -errno.EIO
        except (SystemExit, KeyboardInterrupt) as e:
            self._log(f"{what} exited ({_exit_words(e)}): a plugin cannot end khofs")
            return -errno.EIO
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
        with no_exit():
            if fresh and module_name in sys.modules:
                return importlib.reload(sys.modules[module_name])
            return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise PluginError(f"--plugin {spec}: no module named {module_name!r}") from None
        raise PluginError(f"--plugin {spec}: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}") from None
    except Interrupted:
        raise
    except (PluginExit, SystemExit, KeyboardInterrupt) as e:
        raise PluginError(f"--plugin {spec}: importing {module_name} exited "
                          f"({_import_exit_words(e)})") from None
    except Exception as e:
        raise PluginError(f"--plugin {spec}: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}") from None


def _import_exit_words(e: BaseException) -> str:
    return f"os._exit({e.status})" if isinstance(e, PluginExit) else _exit_words(e)


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
        with no_exit():
            loader_spec.loader.exec_module(module)
    except Interrupted:
        del sys.modules[name]
        raise
    except (PluginExit, SystemExit, KeyboardInterrupt) as e:
        del sys.modules[name]
        raise PluginError(f"--plugin {spec}: importing {path} exited "
                          f"({_import_exit_words(e)})") from None
    except Exception as e:
        del sys.modules[name]
        raise PluginError(f"--plugin {spec}: importing {path} failed: "
                          f"{type(e).__name__}: {e}") from None
    return module
