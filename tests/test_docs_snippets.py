"""Every ```python block in docs/*.md runs, each in a fresh namespace, so the docs cannot rot.

A block is skipped only when
- it imports a third-party package that is not installed (``pytest.importorskip``), or
- it uses a ``tfree_torch`` / ``tfree_jax`` / ``tfree_tf`` name that the backend does not
  define (yet): the reason names the missing attribute, or
- it is preceded by ``<!-- skip-snippet: reason -->`` (the reason is reported).
A block that runs and raises fails the test.

The API reference is made from the docstrings of the public modules, so they are checked
too: every ```python block in the docstring of a public module, of every name in its
``__all__`` and of their public methods runs (read from the live objects, as the API pages
read them), and every public function and class documents each parameter, has a
``Returns`` section (functions) and an example.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
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
    return collect_text(path.read_text(encoding="utf-8"), path)


def collect_text(text: str, path: Path) -> list[Snippet]:
    """The ```python blocks of a Markdown text (a page, a docstring), dedented."""
    lines = text.splitlines()
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


# --- the docstrings of the public API ----------------------------------------------------

PUBLIC = {"tfree_core": ROOT / "tfree_core", "tfree_torch": ROOT / "backends" / "tfree_torch",
          "tfree_jax": ROOT / "backends" / "tfree_jax", "tfree_tf": ROOT / "backends" / "tfree_tf",
          "tfree_keras": ROOT / "backends" / "tfree_keras"}
FRAMEWORK = {**BACKENDS, "tfree_keras": "keras"}


def public_names(module: str) -> list[str]:
    """``__all__`` of a public module, read from its source (importing the frameworks while
    the tests are collected would change what the other tests see)."""
    tree = ast.parse((PUBLIC[module] / "__init__.py").read_text(encoding="utf-8"))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                names += ast.literal_eval(node.value)
    return [n for n in names if not n.startswith("_")]


API = [(module, name) for module in PUBLIC for name in [None, *public_names(module)]]


def _api_id(item: tuple[str, str | None]) -> str:
    module, name = item
    return module if name is None else f"{module}.{name}"


def _documented(module: str, name: str | None) -> list[tuple[str, object]]:
    """The object and, for a class, its public methods with a docstring (as the API pages
    show them): ``(qualified name, object)``."""
    if module in FRAMEWORK:
        pytest.importorskip(FRAMEWORK[module], reason=f"{FRAMEWORK[module]} is not installed")
    package = importlib.import_module(module)
    if name is None:
        return [(module, package)]
    obj = getattr(package, name)
    found = [(f"{module}.{name}", obj)]
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if not attr.startswith("_") and callable(value) and value.__doc__:
                found.append((f"{module}.{name}.{attr}", value))
    return found


def docstring_snippets(module: str, name: str | None) -> list[Snippet]:
    snippets = []
    for qualified, obj in _documented(module, name):
        if isinstance(obj, (int, float, str, tuple)):
            continue  # attributes: their docstrings are in the source (docs hook)
        doc = inspect.getdoc(obj) or ""
        snippets += collect_text(doc, Path(f"<{qualified}>"))
    return snippets


@pytest.mark.parametrize("item", API, ids=[_api_id(i) for i in API])
def test_docstring_examples_run(item):
    snippets = docstring_snippets(*item)
    for snippet in snippets:
        _require(snippet)
        exec(compile(snippet.code, snippet.id, "exec"), {"__name__": "__docs_snippet__"})


def _attribute_docstring(module: str, name: str) -> str | None:
    """The docstring the API page shows for a module attribute (the docs' griffe hook)."""
    pytest.importorskip("griffe", reason="griffe is not installed (pip install '.[docs]')")
    path = DOCS / "hooks" / "griffe_attributes.py"
    spec = importlib.util.spec_from_file_location("docs_hook_griffe_attributes", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook.attribute_docstring(module, name)


def _sections(obj) -> dict[str, list]:
    griffe = pytest.importorskip("griffe", reason="griffe is not installed (pip install '.[docs]')")
    options = {"returns_multiple_items": False, "warn_unknown_params": False,
               "warn_missing_types": False}
    parsed = griffe.Docstring(inspect.getdoc(obj) or "", parser="google",
                              parser_options=options).parse()
    sections: dict[str, list] = {}
    for section in parsed:
        sections.setdefault(section.kind.value, []).append(section.value)
    return sections


def _parameters(obj) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    if inspect.isclass(obj) and target is object.__init__:
        return []
    return [p.name for p in signature.parameters.values() if p.name not in ("self", "cls")
            and not (inspect.isclass(obj) and p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                     and issubclass(obj, BaseException))]


@pytest.mark.parametrize("item", [i for i in API if i[1] is not None],
                         ids=[_api_id(i) for i in API if i[1] is not None])
def test_public_docstrings_are_complete(item):
    """Each parameter documented (positional ones too), a ``Returns`` section for a
    function, an example for every function and class; attributes: a source docstring."""
    for qualified, obj in _documented(*item):
        if isinstance(obj, (int, float, str, tuple)):
            assert _attribute_docstring(*item), f"{qualified}: no docstring in the source"
            continue
        sections = _sections(obj)
        is_method = qualified.count(".") == 2
        documented = {p.name.lstrip("*") for params in sections.get("parameters", [])
                      for p in params}
        missing = [p for p in _parameters(obj) if p not in documented]
        assert not missing, f"{qualified}: parameters without documentation: {missing}"
        if inspect.isclass(obj):
            assert "examples" in sections, f"{qualified}: no Examples section"
            continue
        returns = inspect.signature(obj).return_annotation
        if returns not in (None, "None"):
            assert "returns" in sections, f"{qualified}: no Returns section"
        if not is_method:
            assert "examples" in sections, f"{qualified}: no Examples section"
            assert "```python" in inspect.getdoc(obj), f"{qualified}: no ```python example"


def test_api_names_are_read_from_the_sources():
    assert {"info_nce", "info_nce_value_and_grad", "DEFAULT_EPS"} <= set(public_names("tfree_core"))
    assert "cached_value_and_grad" in public_names("tfree_jax")
    assert {"TemperatureFreeLoss", "LAYOUTS"} <= set(public_names("tfree_keras"))
