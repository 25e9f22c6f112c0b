"""A griffe extension: module attributes keep the docstring written under their assignment.

The API pages inspect the imported modules (``force_inspection``: the public functions are
made at import time), and inspection reads an attribute's docstring from its value, so
``DEFAULT_EPS`` would be documented by ``float.__doc__`` and ``LAYOUTS`` by
``tuple.__doc__``. This extension reads the string literal that follows the assignment in
the source instead, following ``from X import NAME`` re-exports to the module that assigns
the name, and drops the value type's docstring where there is none.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from functools import cache

import griffe


@cache
def _source_tree(module: str) -> ast.Module | None:
    try:
        path = importlib.import_module(module).__file__
    except ImportError:
        return None
    if not path or not path.endswith(".py"):
        return None
    with open(path, encoding="utf-8") as file:
        return ast.parse(file.read())


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importlib.import_module(module)
    base = package.__name__ if hasattr(package, "__path__") else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def attribute_docstring(module: str, name: str, depth: int = 0) -> str | None:
    """The docstring under ``name = ...`` in ``module``'s source, or where it is imported
    from; ``None`` if there is none."""
    tree = _source_tree(module)
    if tree is None or depth > 5:
        return None
    body = tree.body
    for i, node in enumerate(body):
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        if name in targets:
            after = body[i + 1] if i + 1 < len(body) else None
            if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                return inspect.cleandoc(after.value.value)
            return None
    for node in body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return attribute_docstring(_absolute(module, node), alias.name, depth + 1)
    return None


class SourceAttributeDocstrings(griffe.Extension):
    """Replace an inspected module attribute's docstring by the one in its source."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        parent = attr.parent
        if parent is None or not parent.is_module:
            return
        text = attribute_docstring(parent.path, attr.name)
        if text is None:
            attr.docstring = None
            return
        attr.docstring = griffe.Docstring(text, parent=attr, parser=agent.docstring_parser,
                                          parser_options=agent.docstring_options)
