"""The producers file (`--producers FILE`): TOML, read and checked whole at start-up.

```toml
[[producer]]
name = "alpha"                 # sub-tree name: node in the root FDT, file in sub_fdts/
dts = "alpha.dts"              # or dtb = "alpha.dtb" (served byte for byte), or (7.1 on)
                               # blob = "alpha.bin": any bytes, handed over by their size
preserve = ["0x100000000+2M"]  # optional: ranges preserved at FINALIZE (phys+size)
fail_finalize = "EBUSY"        # optional: FINALIZE fails with this errno, adding nothing
fail_abort = "EIO"             # optional
fill = true                    # optional: a pattern in the preserve ranges, checked after kexec
forget = ["0x100200000+1M"]    # optional: ranges filled and checked but never preserved

[[producer]]
builtin = "kho_test"           # the kernel's own lib/test_kho.c (no other key but name)
```
A producer with `fill` or `forget` checks its ranges when a kexec handed its sub-tree over and
logs "khofs: producer NAME: preserved memory intact" or "... corrupted at 0xADDR".
Every problem raises ProducersFileError with one line naming the file and what is wrong.
What a kernel version cannot do (`blob` before 7.1, `fail_abort` from 6.19) is refused when
that version is to boot (khofs.producers.config_producer.spec_problem).
"""

from __future__ import annotations

import errno
import tomllib
from pathlib import Path
from typing import Any

from khofs.errors import ProducersFileError
from khofs.lib.cmdline import memparse
from khofs.lib.read_file import read_file
from khofs.producers.dts import check_dtb, compile_dts, read_dtb
from khofs.producers.spec import ProducerSpec

PRODUCER_KEYS = {"name", "dts", "dtb", "blob", "preserve", "fail_finalize", "fail_abort",
                 "builtin", "fill", "forget"}
BUILTINS = ("kho_test",)  # built-in kernel users a producers file may switch on
ONE_SOURCE = "needs exactly one of 'dts' or 'dtb' (or, for 7.1 on, 'blob')"


def load_producers(path: str | Path) -> list[ProducerSpec]:
    path = Path(path)
    try:
        doc = tomllib.loads(read_file(path).decode("utf-8"))
    except OSError as e:
        raise ProducersFileError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ProducersFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ProducersFileError(f"{path}: {e}") from None
    unknown = set(doc) - {"producer"}
    if unknown:
        raise ProducersFileError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}")
    entries = doc.get("producer", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ProducersFileError(f"{path}: 'producer' must be an array of tables ([[producer]])")
    specs = [_producer(path, i + 1, e) for i, e in enumerate(entries)]
    builtins = [s.builtin for s in specs if s.builtin]
    for builtin in builtins:
        if builtins.count(builtin) > 1:
            raise ProducersFileError(f"{path}: builtin {builtin!r} is given more than once")
    return specs


def _producer(path: Path, index: int, entry: dict[str, Any]) -> ProducerSpec:
    where = f"{path}: producer #{index}"
    unknown = set(entry) - PRODUCER_KEYS
    if unknown:
        raise ProducersFileError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "builtin" in entry:
        return _builtin(path, index, entry)
    name = entry.get("name")
    if not isinstance(name, str):
        raise ProducersFileError(f"{where}: 'name' is required and must be a string")
    problem = name_problem(name)
    if problem:
        raise ProducersFileError(f"{where}: name {name!r} {problem}")
    where = f"{path}: producer {name!r}"
    blob = _blob(path, where, entry) if "blob" in entry else b""
    return ProducerSpec(
        name=name,
        fdt=b"" if blob else _fdt(path, where, entry),
        blob=blob,
        preserve=tuple(_range(where, r) for r in _list(where, entry, "preserve")),
        fail_finalize=_errno(where, entry, "fail_finalize"),
        fail_abort=_errno(where, entry, "fail_abort"),
        fill=_bool(where, entry, "fill"),
        forget=tuple(_range(where, r, "forget") for r in _list(where, entry, "forget")),
    )


def _builtin(path: Path, index: int, entry: dict[str, Any]) -> ProducerSpec:
    """`builtin = "kho_test"`: a kernel module, so nothing of it is configurable here."""
    where = f"{path}: producer #{index}"
    kind = entry["builtin"]
    if kind not in BUILTINS:
        raise ProducersFileError(f"{where}: unknown builtin {kind!r} (known: "
                          f"{', '.join(repr(b) for b in BUILTINS)})")
    if entry.get("name", kind) != kind:
        raise ProducersFileError(f"{where}: builtin {kind!r} is always named {kind!r}")
    extra = sorted(set(entry) - {"builtin", "name"})
    if extra:
        raise ProducersFileError(f"{path}: producer {kind!r}: {extra[0]!r} cannot be used with "
                          f"'builtin'")
    return ProducerSpec(name=kind, fdt=b"", builtin=kind)


def name_problem(name: str) -> str:
    """Why a name cannot be a sub-tree (a node and a single debugfs file name), or ''."""
    if not name:
        return "is empty"
    if "/" in name or "\0" in name:
        return "must be a single path component (no '/' or NUL)"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if len(name.encode()) > 255:
        return "is longer than 255 bytes"
    return ""


BLOB_MAX = 64 << 20  # what khofs reads of a `blob =` file


def _blob(path: Path, where: str, entry: dict[str, Any]) -> bytes:
    """`blob = "file"`: its bytes, whatever they are (at least one)."""
    if "dts" in entry or "dtb" in entry:
        raise ProducersFileError(f"{where}: {ONE_SOURCE}")
    rel = entry["blob"]
    if not isinstance(rel, str):
        raise ProducersFileError(f"{where}: 'blob' must be a file name")
    file = path.parent / rel
    try:
        data = read_file(file, BLOB_MAX)
    except OSError as e:
        raise ProducersFileError(f"{file}: {e.strerror or e}") from None
    if not data:
        raise ProducersFileError(f"{file}: empty (a blob is at least one byte)")
    return data


def _fdt(path: Path, where: str, entry: dict[str, Any]) -> bytes:
    kinds = [k for k in ("dts", "dtb") if k in entry]
    if len(kinds) != 1:
        raise ProducersFileError(f"{where}: {ONE_SOURCE}")
    kind = kinds[0]
    rel = entry[kind]
    if not isinstance(rel, str) or not rel:  # "" would name the producers file's directory
        raise ProducersFileError(f"{where}: '{kind}' must be a file name")
    file = path.parent / rel
    try:
        if kind == "dtb":
            data = read_dtb(file)
            check_dtb(data)
            return data
        return compile_dts(read_file(file).decode())
    except OSError as e:
        raise ProducersFileError(f"{file}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ProducersFileError(f"{file}: not UTF-8 text (byte {e.start})") from None
    except ValueError as e:
        raise ProducersFileError(f"{file}: {e}") from None


def _list(where: str, entry: dict[str, Any], key: str) -> list[Any]:
    value = entry.get(key, [])
    if not isinstance(value, list):
        raise ProducersFileError(f"{where}: '{key}' must be a list")
    return value


def _range(where: str, text: Any, key: str = "preserve") -> tuple[int, int]:
    """"PHYS+SIZE", each a memparse number (0x hex, K M G ... suffixes)."""
    if not isinstance(text, str) or "+" not in text:
        raise ProducersFileError(f"{where}: {key} entry {text!r} is not 'PHYS+SIZE'")
    phys_text, size_text = text.split("+", 1)
    values = []
    for part in (phys_text, size_text):
        raw = part.strip().encode()
        value, used = memparse(raw)
        if not raw or used != len(raw):
            raise ProducersFileError(f"{where}: {key} entry {text!r}: bad number {part!r}")
        values.append(value)
    return values[0], values[1]


def _bool(where: str, entry: dict[str, Any], key: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ProducersFileError(f"{where}: '{key}' must be true or false, got {value!r}")
    return value


def _errno(where: str, entry: dict[str, Any], key: str) -> int:
    value = entry.get(key)
    if value is None:
        return 0
    if isinstance(value, str) and isinstance(getattr(errno, value, None), int):
        code = int(getattr(errno, value))
        if value.startswith("E") and code > 0:
            return code
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 4096:
        return value
    raise ProducersFileError(f"{where}: '{key}' must be an errno name such as \"EBUSY\", "
                             f"got {value!r}")
