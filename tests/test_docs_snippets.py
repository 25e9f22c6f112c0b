"""Every ```python block in docs/*.md runs, each in a fresh namespace, so the docs cannot rot.

A block is skipped only when
- it imports a third-party package that is not installed (``pytest.importorskip``), or
- it uses a ``tfree_torch`` / ``tfree_jax`` / ``tfree_tf`` name that the backend does not
  define (yet): the reason names the missing attribute, or
- it is preceded by ``<!-- skip-snippet: reason -->`` (the reason is reported).
A block that runs and raises fails the test.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OWN = {"tfree_core", "tfree_torch", "tfree_jax", "tfree_tf", "conformance"}
BACKENDS = {"tfree_torch": "torch", "tfree_jax": "jax", "tfree_tf": "tensorflow"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*$")
SKIP = re.compile(r"<!--\s*skip-snippet:?\s*(?P<reason>.*?)\s*-->")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        path = self.path.relative_to(DOCS) if self.path.is_relative_to(DOCS) else self.path
        return f"{path.as_posix()}:{self.line}"


def collect(path: Path) -> list[Snippet]:
    """The ```python blocks of one Markdown file, dedented (blocks inside tabs are indented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start = match["indent"], match["lang"], i
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path}:{start + 1}: unclosed code fence")
        if lang in ("python", "py"):
            before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            skip = SKIP.search(before)
            body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:end]]
            snippets.append(Snippet(path, start + 1, textwrap.dedent("\n".join(body)) + "\n",
                                    skip["reason"] or "marked skip-snippet" if skip else None))
        i = end + 1
    return snippets


SNIPPETS = [s for path in sorted(DOCS.rglob("*.md")) for s in collect(path)]


def _imports(tree: ast.Module) -> tuple[set[str], dict[str, str], dict[str, set[str]]]:
    """Top-level modules imported; local alias -> backend module; backend -> names used."""
    modules: set[str] = set()
    aliases: dict[str, str] = {}
    used: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.name.split(".")[0])
                if alias.name in BACKENDS:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            modules.add(top)
            if node.module in BACKENDS:
                used.setdefault(node.module, set()).update(a.name for a in node.names)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            used.setdefault(aliases[node.value.id], set()).add(node.attr)
    return modules, aliases, used


def _require(snippet: Snippet) -> None:
    """Skip (with the reason) what this environment cannot run; never skip silently."""
    if snippet.skip_reason is not None:
        pytest.skip(f"{snippet.id}: {snippet.skip_reason}")
    tree = ast.parse(snippet.code, filename=snippet.id)
    modules, _, used = _imports(tree)
    stdlib = set(sys.stdlib_module_names)
    for module in sorted(modules - stdlib - OWN):
        pytest.importorskip(module, reason=f"{snippet.id} imports {module}, not installed")
    for backend in sorted(m for m in modules if m in BACKENDS):
        pytest.importorskip(BACKENDS[backend],
                            reason=f"{snippet.id} needs {BACKENDS[backend]}, not installed")
        package = importlib.import_module(backend)
        for name in sorted(used.get(backend, ())):
            try:
                getattr(package, name)
            except AttributeError:
                pytest.skip(f"{snippet.id}: {backend} does not define {name} yet")
            except ImportError as error:  # an optional dependency of that name is absent
                pytest.skip(f"{snippet.id}: {backend}.{name} is unavailable: {error}")


@pytest.fixture(scope="module", autouse=True)
def _torch_before_tensorflow() -> None:
    """Import torch before TensorFlow in one process (the other order can crash)."""
    if importlib.util.find_spec("torch") is not None and "tensorflow" not in sys.modules:
        import torch  # noqa: F401


def test_snippets_were_collected():
    pages = {s.path.name for s in SNIPPETS}
    assert {"index.md", "loss.md", "layouts.md", "migrating.md", "guarantees.md"} <= pages, pages
    assert len(SNIPPETS) >= 20, [s.id for s in SNIPPETS]


def test_collect_handles_tabs_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        '=== "A"\n\n    ```python\n    x = 1\n    ```\n\n'
        "<!-- skip-snippet: needs a GPU -->\n```python\nraise SystemExit\n```\n\n"
        "```bash\nls\n```\n",
        encoding="utf-8",
    )
    found = collect(page)
    assert [s.code for s in found] == ["x = 1\n", "raise SystemExit\n"]
    assert [s.skip_reason for s in found] == [None, "needs a GPU"]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, capsys):
    _require(snippet)
    code = compile(snippet.code, f"{snippet.path}:{snippet.line}", "exec")
    exec(code, {"__name__": "__docs_snippet__"})


def test_missing_backend_function_skips_with_its_name(tmp_path):
    pytest.importorskip("torch")
    snippet = Snippet(tmp_path / "x.md", 1, "import tfree_torch\ntfree_torch.not_there(1)\n", None)
    with pytest.raises(pytest.skip.Exception, match="tfree_torch does not define not_there"):
        _require(snippet)
    snippet = Snippet(tmp_path / "x.md", 1, "import not_a_real_module_xyz\n", None)
    with pytest.raises(pytest.skip.Exception, match="imports not_a_real_module_xyz"):
        _require(snippet)
