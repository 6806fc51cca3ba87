"""Plugins (--plugin MODULE:FUNCTION): loading them and their errors, and the API a plugin's
producer gets, across finalize, abort and kexec."""

from __future__ import annotations

import errno
from pathlib import Path

import libfdt
import pytest

from khofs.errors import PluginError
from khofs.producers.plugin import ProducerAPI, load_plugin, make_fdt
from tests.helpers import (
    boot_kernel,
    boot_lines,
    boot_system,
    children,
    fdt_at,
    kexec_next,
    read_blob,
)
from tests.oracle import finished

COUNTER = Path(__file__).parent.parent / "examples" / "plugins" / "counter.py"


# --- plugins: loading ------------------------------------------------------------------


def plugin_error(spec: str) -> str:
    with pytest.raises(PluginError) as info:
        load_plugin(spec)
    return str(info.value)


def test_plugin_spec_errors(tmp_path: Path) -> None:
    assert plugin_error("counter") == "--plugin counter: expected MODULE:FUNCTION"
    assert plugin_error("mod:") == "--plugin mod:: expected MODULE:FUNCTION"
    assert (plugin_error("khofs_no_such_plugin:f")
            == "--plugin khofs_no_such_plugin:f: no module named 'khofs_no_such_plugin'")
    assert (plugin_error("khofs.no_such:f")
            == "--plugin khofs.no_such:f: no module named 'khofs.no_such'")
    missing = tmp_path / "missing.py"
    assert plugin_error(f"{missing}:f") == f"--plugin {missing}:f: {missing}: No such file"


def test_plugin_function_errors() -> None:
    spec = f"{COUNTER}:nope"
    assert plugin_error(spec) == f"--plugin {spec}: module {COUNTER} has no function 'nope'"
    spec = f"{COUNTER}:NAME"
    assert plugin_error(spec) == f"--plugin {spec}: 'NAME' in {COUNTER} is not callable"
    assert (plugin_error("json:nope")
            == "--plugin json:nope: module json has no function 'nope'")


def test_plugin_import_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('no')\n")
    assert (plugin_error(f"{bad}:f")
            == f"--plugin {bad}:f: importing {bad} failed: RuntimeError: no")
    (tmp_path / "needs_dep.py").write_text("import khofs_missing_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (plugin_error("needs_dep:f") == "--plugin needs_dep:f: importing needs_dep failed: "
            "ModuleNotFoundError: No module named 'khofs_missing_dep'")


def test_plugin_from_a_module_on_sys_path(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "khofs_test_plug.py").write_text("def setup(api):\n    api.log('hello')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    k = boot_kernel(drivers=[load_plugin("khofs_test_plug:setup")])
    assert "hello" in k.log.texts()


# --- plugins: the API ----------------------------------------------------------------


def plugin(tmp_path: Path, body: str, name: str = "plug") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return f"{path}:setup"


def test_counter_plugin_counts_across_kexecs() -> None:
    s = boot_system(drivers=[load_plugin(f"{COUNTER}:counter")])
    kexec_next(s)
    kexec_next(s)
    kexec_next(s, finalize=False)
    texts = [line for n in range(1, 5) for line in boot_lines(s, n) if line.startswith("counter")]
    assert texts == ["counter: boot 1: value 1", "counter: boot 2: value 2",
                     "counter: boot 3: value 3", "counter: boot 4: value 1"]


def test_add_subtree_outside_finalize_is_refused(tmp_path: Path) -> None:
    spec = plugin(tmp_path, "def setup(api):\n"
                  "    api.log(f'add: {api.add_subtree(\"early\", api.make_fdt(\"x\"))}')\n")
    k = boot_kernel(drivers=[load_plugin(spec)])
    assert f"add: {-errno.EINVAL}" in k.log.texts()
    assert k.kho.finalize_set(1) == 0
    assert children(k, "/kho/out/sub_fdts") == []


RAISING = """\
calls = []

def setup(api):
    def finalize():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return api.add_subtree("late", api.make_fdt("x", v=b"1234"))
    api.on_finalize(finalize)
"""


def test_plugin_raising_in_finalize_fails_it_with_eio(tmp_path: Path) -> None:
    spec = plugin(tmp_path, RAISING, "raising")
    k = boot_kernel(drivers=[load_plugin(spec)])
    assert k.kho.finalize_set(1) == -errno.EIO
    assert not k.kho.finalized and k.debugfs.lookup("/kho/out/fdt") is None
    assert children(k, "/kho/out/sub_fdts") == [] and k.kho.track.preserved_blocks() == []
    texts = k.log.texts()
    first = texts.index(f"khofs: plugin {spec}: finalize callback raised RuntimeError: boom")
    tb = texts[first + 1:]
    assert tb[0] == f"khofs: plugin {spec}: Traceback (most recent call last):"
    assert any("raising.py" in line and "in finalize" in line for line in tb)
    # nothing else changed: the next attempt goes through
    assert k.kho.finalize_set(1) == 0
    assert children(k, "/kho/out/sub_fdts") == ["late"]
    assert fdt_props_of(read_blob(k, "/kho/out/sub_fdts/late")) == {"compatible": b"x\0",
                                                                  "v": b"1234"}


def fdt_props_of(blob: bytes) -> dict[str, bytes]:
    fdt = libfdt.Fdt(blob)
    out = {}
    off = fdt.first_property_offset(0, [libfdt.NOTFOUND])
    while off >= 0:
        prop = fdt.get_property_by_offset(off)
        out[prop.name] = bytes(prop)
        off = fdt.next_property_offset(off, [libfdt.NOTFOUND])
    return out


def test_plugin_raising_or_misbehaving_in_init(tmp_path: Path) -> None:
    spec = plugin(tmp_path, "def setup(api):\n    raise KeyError('x')\n", "init_raises")
    k = boot_kernel(drivers=[load_plugin(spec)])
    assert f"khofs: plugin {spec}: init raised KeyError: 'x'" in k.log.texts()
    assert f"khofs: producer {spec}: init failed: -5" in k.log.texts()
    spec = plugin(tmp_path, "def setup(api):\n    return 3\n", "init_positive")
    k = boot_kernel(drivers=[load_plugin(spec)])
    assert f"khofs: plugin {spec}: init returned 3, not 0 or a negative errno" in k.log.texts()
    spec = plugin(tmp_path, "def setup(api):\n    return -16\n", "init_busy")
    k = boot_kernel(drivers=[load_plugin(spec)])
    assert f"khofs: producer {spec}: init failed: -16" in k.log.texts()


def test_plugin_abort_callback_and_retrieve(tmp_path: Path) -> None:
    spec = plugin(tmp_path, """\
def setup(api):
    api.log(f"boot {api.boot}: {api.retrieve_subtree('p')!r}")
    page = api.alloc_pages(0)
    api.write(page, b"data")
    api.on_finalize(lambda: api.preserve_folio(page, 0)
                    or api.add_subtree("p", api.make_fdt("p-v1", page=page.to_bytes(8, "little"))))
    api.on_abort(lambda: api.log("aborted"))
""", "cycle")
    s = boot_system(drivers=[load_plugin(spec)])
    k = s.kernel
    assert k.kho.finalize_set(1) == 0 and k.kho.finalize_set(0) == 0
    assert "aborted" in boot_lines(s, 1)
    k2 = kexec_next(s)
    (line,) = [x for x in boot_lines(s, 2) if x.startswith("boot 2")]
    assert line.startswith("boot 2: b'\\xd0\\r\\xfe\\xed")
    api = ProducerAPI(k2, load_plugin(spec)())
    phys = api.retrieve_subtree_phys("p")
    assert phys is not None and api.retrieve_subtree("p") == fdt_at(k2, phys)
    page = int.from_bytes(libfdt.Fdt(fdt_at(k2, phys)).getprop(0, "page"), "little")
    assert api.restore_folio(page) == 0 and api.read(page, 4) == b"data"
    assert api.retrieve_subtree("none") is None and api.retrieve_subtree_phys("none") is None
    with pytest.raises(ValueError):
        api.log("x", level="loud")


def test_make_fdt_is_libfdts() -> None:
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", "c-v1")
    sw.property("raw", b"\x01\x02")
    sw.property_string("s", "text")
    sw.end_node()
    assert make_fdt("c-v1", raw=b"\x01\x02", s="text") == finished(sw)
    assert len(make_fdt("big", blob=bytes(10000))) > 10000
