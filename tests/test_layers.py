"""The package layout: no import circles, and each package imports only the layers its
`__init__` docstring names (its line `Imports: ...`). And the tests' own: no test module
imports another or conftest (shared helpers live in tests/helpers.py), and a test that takes a
mount fixture is marked `mount`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import khofs

ROOT = Path(khofs.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every khofs module this file imports, at any depth (functions, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from khofs.daemon import mountinfo` imports a module; `from x import name`
            # imports x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        found.update(n for n in names if n.split(".")[0] == "khofs")
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a path, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            dep = dep if dep in graph else dep.rsplit(".", 1)[0]
            if dep == node or dep not in graph:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles() -> None:
    assert _cycle(_graph()) is None


def test_the_search_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _package(module: str) -> str:
    """The layer a module belongs to: khofs.engine.abi.memblock -> khofs.engine."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _allowed() -> dict[str, set[str]]:
    rules = {}
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
        found = [p.removeprefix("Imports: ").rstrip(".") for p in paragraphs
                 if p.startswith("Imports: ")]
        assert found, f"{init}: its docstring has no paragraph 'Imports: ...'"
        text = found[0]
        rules[_module_name(init)] = (set() if text.startswith("nothing")
                                     else {n.strip() for n in text.split(",")})
    return rules


def test_every_package_states_its_layer() -> None:
    assert set(_allowed()) == {"khofs.lib", "khofs.debugfs", "khofs.engine", "khofs.producers",
                               "khofs.machines", "khofs.daemon", "khofs.run", "khofs.cli"}


def test_each_package_imports_only_the_layers_it_names() -> None:
    rules = _allowed()
    wrong = []
    for module, deps in _graph().items():
        layer = _package(module)
        if layer not in rules:
            continue
        for dep in deps:
            target = _package(dep)
            if target not in (layer, "khofs") and target not in rules[layer]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_the_lowest_modules_import_nothing_of_khofs() -> None:
    graph = _graph()
    assert graph["khofs.errors"] == set()
    assert graph["khofs.engine.abi.kexec_handover"] == set()
    assert all(_package(d) == "khofs.lib" for d in graph["khofs.lib.libfdt"])


def test_only_the_fuse_edge_imports_a_fuse_binding() -> None:
    binding = re.compile(r"^\s*(import (fuse|mfusepy)\b|from (fuse|mfusepy) import)"
                         r"|import_module\(\"(fuse|mfusepy)\"\)", re.M)
    importers = sorted(_module_name(p) for p in ROOT.rglob("*.py")
                       if binding.search(p.read_text()))
    assert importers == ["khofs.daemon.fuse_edge"]


# --- the tests' own layout -------------------------------------------------------------

TESTS = Path(__file__).parent
MOUNT_FIXTURES = {"mount", "mnt", "kho"}  # conftest's and the khofs plugin's mounts


def _imported_test_modules(source: str) -> list[str]:
    """The test modules and conftest a tests/ file imports (absolute or relative)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("tests." if node.level else "") + (node.module or "")
            names = [base] + [f"{base.rstrip('.')}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if (len(parts) == 2 and parts[0] == "tests"
                    and (parts[1].startswith("test_") or parts[1] == "conftest")):
                found.append(parts[1])
    return sorted(set(found))


def test_no_test_module_imports_another_or_conftest() -> None:
    wrong = {p.name: found for p in sorted(TESTS.glob("*.py"))
             if (found := _imported_test_modules(p.read_text()))}
    assert wrong == {}


def test_the_import_check_sees_test_imports() -> None:
    assert _imported_test_modules("from tests.test_cli import one_line_error\n"
                                  "import tests.conftest\nfrom . import test_kho\n"
                                  "from tests.helpers import sh\nfrom tests import oracle\n"
                                  ) == ["conftest", "test_cli", "test_kho"]


def _marks_mount(decorators: list[ast.expr]) -> bool:
    """One of these is pytest.mark.mount."""
    return any(isinstance(d, ast.Attribute) and d.attr == "mount"
               and isinstance(d.value, ast.Attribute) and d.value.attr == "mark"
               for d in decorators)


def _unmarked_mount_tests(source: str) -> list[str]:
    """Tests that take a mount fixture but are not marked `mount`, on their own or by the
    module's `pytestmark`."""
    tree = ast.parse(source)
    for node in tree.body:
        if (isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
                and _marks_mount([node.value])):
            return []
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            and MOUNT_FIXTURES & {a.arg for a in node.args.args}
            and not _marks_mount(node.decorator_list)]


def test_tests_that_mount_are_marked_mount() -> None:
    wrong = {p.name: found for p in sorted(TESTS.glob("test_*.py"))
             if (found := _unmarked_mount_tests(p.read_text()))}
    assert wrong == {}


def test_the_mark_check_sees_unmarked_tests() -> None:
    source = ("import pytest\n\n@pytest.mark.mount\ndef test_a(mnt): pass\n\n"
              "def test_b(tmp_path, mount): pass\n\ndef test_c(kernel): pass\n")
    assert _unmarked_mount_tests(source) == ["test_b"]
    assert _unmarked_mount_tests("import pytest\npytestmark = pytest.mark.mount\n" + source) == []
