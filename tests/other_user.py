"""khofs as another user runs it, wherever this checkout is.

The checkout, its .venv and pytest's temporary directories may sit where other users cannot
go (/root, a 0700 home directory, `mktemp -d`, pytest's 0700 basetemp). So the other user
runs a copy that everyone may read: the khofs package and the pure-Python packages it imports
from the venv (fusepy, mfusepy, fdt), in a 0755 directory of their own, on PYTHONPATH of the
interpreter the venv was made from (with --system-site-packages, so the system's packages are
the same). The copy is made once per test session and removed at its end.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import khofs

NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# what khofs imports from the venv rather than from the system
VENV_PACKAGES = ("fuse", "mfusepy", "fdt")


def base_python() -> str:
    """The interpreter the venv was made from (/usr/bin/python3.11), which anyone may run."""
    path = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(path if path.exists() else sys.executable)


def _copy_module(name: str, site: Path) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return  # not installed (the fuse3 extra): the other user lacks it as we do
    ignore = shutil.ignore_patterns("__pycache__")
    if spec.submodule_search_locations:
        src = Path(spec.origin).parent
        shutil.copytree(src, site / src.name, ignore=ignore)
    else:
        shutil.copy2(spec.origin, site / Path(spec.origin).name)


@functools.cache
def _world_site() -> Path:
    root = Path(tempfile.mkdtemp(prefix="khofs-world-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    site = root / "site"
    site.mkdir()
    shutil.copytree(Path(khofs.__file__).parent, site / "khofs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in VENV_PACKAGES:
        _copy_module(name, site)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return site


def as_nobody(*args: str) -> list[str]:
    """argv that runs `khofs ARGS` as nobody from the world-readable copy."""
    return [*SETPRIV, base_python(), "-m", "khofs", *args]


def nobody_env(**extra: str) -> dict[str, str]:
    """The environment for as_nobody(): the copy on PYTHONPATH, no bytecode written."""
    env = {**os.environ, "PYTHONPATH": str(_world_site()), "PYTHONDONTWRITEBYTECODE": "1",
           **extra}
    env.pop("XDG_RUNTIME_DIR", None)  # root's is not nobody's
    return env
