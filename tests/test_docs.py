"""The README and docs/ say what works, and it works, as written.

Examples are marked in the Markdown with an HTML comment on the line before their fence:

- `<!-- test: NAME -->` before a ```sh block: part of example NAME. The blocks of one NAME in
  one file are run in order as one bash script (`set -eo pipefail`, stderr into stdout), from
  the checkout, with TMPDIR a fresh temporary directory, so that `mktemp -d` mount points lie
  inside it; whatever is still mounted there afterwards is unmounted, also on failure.
- `<!-- output: NAME -->` before a fence: what the test block just before it prints. Compared
  line by line, except the log's timestamps (`[    0.000211]`: the time since each emulated
  boot, different in every run) and trailing blanks.
- `<!-- check: NAME -->` before a fence: a file the docs show (a producers file, a machine
  file, a pytest module), checked by the function of that name below.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from khofs.cli.parser import build_parser
from khofs.daemon import mountinfo
from tests.helpers import KHOFS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- (test|output|check): ([\w-]+) -->")
FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
TIMESTAMP = re.compile(r"\[\s*\d+\.\d{6}\]")
SEPARATOR = b"\0"  # printed between the blocks of one example


@dataclass(frozen=True)
class Block:
    """One marked fenced block of a Markdown file."""

    kind: str  # test, output or check
    name: str
    lang: str
    text: str
    line: int  # of its marker, for messages


def blocks(path: Path) -> list[Block]:
    """The marked fenced blocks of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        marker = MARKER.fullmatch(line.strip())
        if marker is None:
            continue
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        assert fence, f"{path.name}:{i + 1}: a marker must stand just before a fence"
        end = next(j for j in range(i + 2, len(lines)) if lines[j] == fence.group(1))
        found.append(Block(marker.group(1), marker.group(2), fence.group(2),
                           "".join(f"{ln}\n" for ln in lines[i + 2:end]), i + 1))
    return found


def _split(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """A Markdown file's prose lines (fenced blocks left out) and its fenced blocks
    (language, text)."""
    lines = path.read_text().splitlines()
    text: list[str] = []
    code: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            text.append(lines[i])
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == fence.group(1))
        code.append((fence.group(2), "\n".join(lines[i + 1:end])))
        i = end + 1
    return text, code


def fenced(path: Path) -> list[tuple[str, str]]:
    """Every fenced block of a Markdown file: (language, text)."""
    return _split(path)[1]


def prose(path: Path) -> str:
    """The Markdown without its fenced blocks."""
    return "\n".join(_split(path)[0]) + "\n"


def spans(text: str) -> list[str]:
    """The inline code spans of some Markdown prose."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]


# --- examples: run as written --------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    path: Path
    name: str
    steps: tuple[tuple[Block, Block | None], ...]  # each sh block and the output shown for it

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.name}"


def examples() -> list[Example]:
    found = []
    for path in DOCS:
        marked = blocks(path)
        for name in dict.fromkeys(b.name for b in marked if b.kind == "test"):
            steps = []
            for i, b in enumerate(marked):
                if b.kind == "test" and b.name == name:
                    after = marked[i + 1] if i + 1 < len(marked) else None
                    shown = after if after and after.kind == "output" \
                        and after.name == name else None
                    steps.append((b, shown))
            found.append(Example(path, name, tuple(steps)))
    return found


def test_every_output_and_test_block_is_paired() -> None:
    for path in DOCS:
        marked = blocks(path)
        for i, b in enumerate(marked):
            if b.kind == "test":
                assert b.lang == "sh", f"{path.name}:{b.line}: a test block is ```sh"
            if b.kind == "output":
                before = marked[i - 1] if i else None
                assert before and before.kind == "test" and before.name == b.name, \
                    f"{path.name}:{b.line}: output {b.name} follows no test block {b.name}"


def test_the_readme_has_its_walk_through() -> None:
    walk = [e for e in examples() if e.path.name == "README.md"]
    assert [e.name for e in walk] == ["walk-through", "compat"]
    script = "".join(b.text for b, _ in walk[0].steps)
    for step in ("khofs mount", "scratch_phys", "echo 1 >", "dtc -I dtb", "khofs kexec",
                 "kho/in/", "khofs umount"):
        assert step in script
    assert all(shown is not None for _, shown in walk[0].steps)


def _normalise(text: str) -> list[str]:
    return [TIMESTAMP.sub("[TIME]", line).rstrip() for line in text.rstrip("\n").split("\n")]


def _unmount_all_under(top: Path) -> list[str]:
    """Unmount whatever an example left mounted under top (deepest first); what was left."""
    left = sorted((m.mount_point for m in mountinfo.mounts()
                   if m.mount_point.startswith(f"{top}/")), key=len, reverse=True)
    for mnt in left:
        subprocess.run([*KHOFS, "umount", mnt], capture_output=True, timeout=60, check=False)
        if mountinfo.is_mounted(mnt):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    return left


@pytest.mark.mount
@pytest.mark.parametrize("example", examples(), ids=str)
def test_example_runs_as_written(example: Example, tmp_path: Path) -> None:
    work = tmp_path / "tmp"
    work.mkdir()
    script = "exec 2>&1\nset -eo pipefail\n" + "".join(
        f"{b.text}printf '\\0'\n" for b, _ in example.steps)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KHOFS_MOUNT")}
    env.update(TMPDIR=str(work), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    try:
        run = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                             timeout=300, check=False)
    finally:
        left = _unmount_all_under(work)
    out = run.stdout.decode(errors="replace")
    assert run.returncode == 0, f"{example}: exit status {run.returncode}\n{out}"
    pieces = run.stdout.split(SEPARATOR)
    assert len(pieces) == len(example.steps) + 1, out
    for (block, shown), got in zip(example.steps, pieces, strict=False):
        if shown is not None:
            assert _normalise(got.decode()) == _normalise(shown.text), \
                f"{example}, block at line {block.line}"
    assert left == [], f"{example} leaves {left} mounted"


# --- checks: the files the docs show --------------------------------------------------------

def producers_file(block: Block, tmp_path: Path) -> None:
    from khofs.producers.producers_file import load_producers

    shutil.copy(ROOT / "examples/demo/demo.dts", tmp_path / "demo.dts")
    (tmp_path / "producers.toml").write_text(block.text)
    specs = load_producers(tmp_path / "producers.toml")
    assert [(s.name, s.builtin, bool(s.fdt)) for s in specs] == [("demo", "", True),
                                                                 ("kho_test", "kho_test", False)]


def machine_file(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "my-box.toml"
    path.write_text(block.text)
    show = subprocess.run([*KHOFS, "machine", "show", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert show.returncode == 0, show.stderr
    assert "\nKHO: on\n" in show.stdout


def pytest_example(block: Block, tmp_path: Path) -> None:
    (tmp_path / "test_handover.py").write_text(block.text)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--basetemp", str(tmp_path / "pt"), "test_handover.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


CHECKS: dict[str, Callable[[Block, Path], None]] = {
    "producers-file": producers_file, "machine-file": machine_file,
    "pytest-example": pytest_example,
}


def checked_blocks() -> list[tuple[str, Block]]:
    return [(f"{p.relative_to(ROOT)}:{b.line}:{b.name}", b)
            for p in DOCS for b in blocks(p) if b.kind == "check"]


def test_every_check_has_its_checker() -> None:
    names = [b.name for _, b in checked_blocks()]
    assert sorted(set(names)) == sorted(CHECKS)


@pytest.mark.mount
@pytest.mark.parametrize(("where", "block"), checked_blocks(), ids=[w for w, _ in checked_blocks()])
def test_shown_file_is_valid(where: str, block: Block, tmp_path: Path) -> None:
    CHECKS[block.name](block, tmp_path)


# --- links and paths ------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.*)$", prose(path), re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in headings:
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(path: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or (anchor and dest.suffix == ".md"
                                 and anchor not in anchors(dest)):
            broken.append(target)
    assert broken == []


REPO_PATH = re.compile(r"(?<![\w./$-])((?:khofs|scripts|examples|tests)/[\w./-]*[\w/])")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_paths_exist(path: Path) -> None:
    """Paths in code and links, such as `khofs/engine/boot.py`, are files of the checkout."""
    text = prose(path)
    code = [*spans(text), *re.findall(r"\]\(([^)\s]+)\)", text),
            *(body for _, body in fenced(path))]
    named = {p for c in code for p in REPO_PATH.findall(c)}
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_the_layout_names_every_package() -> None:
    layout = next(body for lang, body in fenced(ROOT / "docs/development.md")
                  if lang == "" and "khofs/engine/" in body)
    listed = set(re.findall(r"^khofs/(\w+)/", layout, re.M))
    packages = {p.parent.name for p in (ROOT / "khofs").glob("*/__init__.py")}
    assert listed == packages


def test_the_layer_table_is_the_docstrings() -> None:
    text = (ROOT / "docs/development.md").read_text()
    table = dict(re.findall(r"^\| `(khofs\.\w+)` \| (.*) \|$", text, re.M))
    rules = {}
    for init in sorted((ROOT / "khofs").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        imports = next(" ".join(p.split()) for p in doc.split("\n\n")
                       if p.startswith("Imports: "))
        allowed = imports.removeprefix("Imports: ").rstrip(".")
        rules[f"khofs.{init.parent.name}"] = (
            set() if allowed.startswith("nothing") else {n.strip() for n in allowed.split(",")})
    documented = {k: set() if v == "nothing of khofs" else set(re.findall(r"`([\w.]+)`", v))
                  for k, v in table.items()}
    assert documented == rules


def test_the_plugin_api_table_is_the_api() -> None:
    from khofs.producers.plugin import ProducerAPI

    text = (ROOT / "docs/producers.md").read_text()
    cells = re.findall(r"^\| (`[a-z_]+[(`].*?) \|", text, re.M)
    documented = {m for cell in cells for m in re.findall(r"`([a-z_]+)[(`]", cell)}
    assert documented == {n for n in dir(ProducerAPI) if not n.startswith("_")}


# --- commands and options: docs/commands.md against the parser ----------------------------

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}


def parser_commands() -> dict[str, set[str]]:
    """Each command (`machine show` as one) and its options; "" is khofs itself."""
    top = build_parser()
    found = {"": _options(top)}
    for name, sub in _subcommands(top).items():
        nested = _subcommands(sub)
        for name2, sub2 in nested.items():
            found[f"{name} {name2}"] = _options(sub2)
        if not nested:
            found[name] = _options(sub)
    return found


COMMAND = re.compile(r"\bkhofs ((?:machine )?[a-z]+)\b([^|;&#)]*)")
# an option, not a file mode such as -r--------
OPTION = re.compile(r"(?:(?<=\s)|(?<=\[)|^)(--?[a-zA-Z][a-zA-Z0-9]*(?:-[a-zA-Z0-9]+)*)(?![\w-])")
COMMANDS_MD = ROOT / "docs/commands.md"


def _named_commands(text: str) -> list[tuple[str, set[str]]]:
    """Each `khofs COMMAND ...` in some text, with the options given to it (up to `--`,
    a pipe, `;`, `&&`, `#` or `)`)."""
    found = []
    for m in COMMAND.finditer(text):
        rest = m.group(2).split(" -- ")[0]
        found.append((m.group(1), set(OPTION.findall(rest))))
    return found


def _code(path: Path) -> list[str]:
    """The inline code and the shell lines of a Markdown file."""
    shell = [body for lang, body in fenced(path) if lang == "sh"]
    return spans(prose(path)) + [ln for body in shell for ln in body.splitlines()]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_commands_and_their_options_exist(path: Path) -> None:
    commands = parser_commands()
    wrong = []
    for code in _code(path):
        for command, options in _named_commands(code):
            if command not in commands:
                wrong.append(f"khofs {command}")
            else:
                wrong += [f"khofs {command} {o}" for o in options - commands[command]]
    assert wrong == []


def _sections(path: Path) -> list[tuple[str, str]]:
    """(heading, body) for each heading of a Markdown file."""
    parts = re.split(r"^(#+ .*)$", path.read_text(), flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _commands_of(heading: str) -> set[str]:
    return {c for c, _ in _named_commands(heading)}


def test_commands_md_options_exist() -> None:
    """Every option commands.md names exists; the options in the first column of a table
    under a command's heading are that command's."""
    commands = parser_commands()
    every = set().union(*commands.values())
    wrong = []
    for code in spans(prose(COMMANDS_MD)):
        m = OPTION.match(code)
        if m and m.group(1) not in every:
            wrong.append(m.group(1))
    for heading, body in _sections(COMMANDS_MD):
        named = _commands_of(heading)
        rows = re.findall(r"^\| `(--?[a-zA-Z][a-zA-Z0-9-]*)", body, re.M)
        if rows:
            assert len(named) == 1, heading
            command = next(iter(named))
            wrong += [f"khofs {command} {o}" for o in rows if o not in commands[command]]
    assert wrong == []


def test_commands_md_documents_every_command_and_option() -> None:
    sections = _sections(COMMANDS_MD)
    missing = []
    for command, options in parser_commands().items():
        where = [heading + body for heading, body in sections
                 if command in _commands_of(heading)] if command else [prose(COMMANDS_MD)]
        if not where:
            missing.append(f"khofs {command}")
            continue
        named = {o for text in where for code in spans(text) for o in OPTION.findall(code)}
        missing += [f"khofs {command} {o}".replace("  ", " ") for o in options - named]
    assert missing == []


def test_the_readme_is_a_five_minute_read() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) < 150
