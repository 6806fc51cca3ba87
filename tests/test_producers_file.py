"""The producers file's keys beyond name/dts/dtb (builtin, fill, forget), loaded in process.
(Refusals through `khofs mount` are in test_cli.py, fuzzed files in test_fuzz.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from khofs.errors import ProducersFileError
from khofs.producers.producers_file import load_producers
from khofs.producers.spec import ProducerSpec


def load(tmp_path: Path, text: str) -> list[ProducerSpec]:
    (tmp_path / "a.dts").write_text('/dts-v1/; / { compatible = "a-v1"; };')
    path = tmp_path / "p.toml"
    path.write_text(text)
    return load_producers(path)


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ProducersFileError) as info:
        load(tmp_path, text)
    return str(info.value).replace(f"{tmp_path}/", "")


def test_config_builtin_kho_test(tmp_path: Path) -> None:
    (spec,) = load(tmp_path, '[[producer]]\nbuiltin = "kho_test"\n')
    assert spec == ProducerSpec(name="kho_test", fdt=b"", builtin="kho_test")
    (spec,) = load(tmp_path, '[[producer]]\nbuiltin = "kho_test"\nname = "kho_test"\n')
    assert spec.builtin == "kho_test"


def test_config_builtin_errors(tmp_path: Path) -> None:
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "memblock"\n')
            == "p.toml: producer #1: unknown builtin 'memblock' (known: 'kho_test')")
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "kho_test"\nname = "t"\n')
            == "p.toml: producer #1: builtin 'kho_test' is always named 'kho_test'")
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "kho_test"\ndts = "a.dts"\n')
            == "p.toml: producer 'kho_test': 'dts' cannot be used with 'builtin'")
    assert (load_error(tmp_path, '[[producer]]\nbuiltin = "kho_test"\n' * 2)
            == "p.toml: builtin 'kho_test' is given more than once")


def test_config_fill_and_forget(tmp_path: Path) -> None:
    (spec,) = load(tmp_path, '[[producer]]\nname = "a"\ndts = "a.dts"\n'
                   'preserve = ["0x100000000+8K"]\nfill = true\nforget = ["0x100002000+4K"]\n')
    assert spec.fill and spec.preserve == ((0x100000000, 0x2000),)
    assert spec.forget == ((0x100002000, 0x1000),)
    assert (load_error(tmp_path, '[[producer]]\nname = "a"\ndts = "a.dts"\nfill = 1\n')
            == "p.toml: producer 'a': 'fill' must be true or false, got 1")
    assert (load_error(tmp_path, '[[producer]]\nname = "a"\ndts = "a.dts"\nforget = ["1"]\n')
            == "p.toml: producer 'a': forget entry '1' is not 'PHYS+SIZE'")


