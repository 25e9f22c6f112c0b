"""Griffe extension for the API pages: restore the shared keyword docs appended at import.

The public modules write the keywords every loss shares once, as ``_COMMON_DOC``, and append
it at import time (``for _f in (...): _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC``).
Static analysis does not run that loop, so this extension does it from the source: it
finds ``_COMMON_DOC`` and the loop in each module and appends the text to the docstrings of
the functions named there, with its heading turned into a Google "Other Parameters:" section
so the keywords render as a table. It also renders Sphinx roles (``:func:`x```) as code.
Nothing is imported.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

import griffe

HEADING = "Common keywords"
ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):`~?([^`]+)`")


def _common_doc(module: ast.Module) -> str | None:
    for stmt in module.body:
        if (
            isinstance(stmt, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_COMMON_DOC" for t in stmt.targets)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            return stmt.value.value
    return None


def _targets(module: ast.Module) -> list[str]:
    """Names in ``for _f in (a, b, ...)`` loops whose body mentions ``_COMMON_DOC``."""
    names: list[str] = []
    for stmt in module.body:
        if not isinstance(stmt, ast.For) or not isinstance(stmt.iter, (ast.Tuple, ast.List)):
            continue
        body = ast.unparse(ast.Module(body=stmt.body, type_ignores=[]))
        if "_COMMON_DOC" in body and "__doc__" in body:
            names += [e.id for e in stmt.iter.elts if isinstance(e, ast.Name)]
    return names


def _as_section(text: str) -> str:
    lines = inspect.cleandoc(text).splitlines()
    if lines and lines[0].startswith(HEADING):
        lines[0] = "Other Parameters:"
    return "\n".join(lines)


class CommonDoc(griffe.Extension):
    def on_module_members(self, *, node: Any, mod: griffe.Module, agent: Any, **kwargs: Any):
        if not isinstance(node, ast.Module):
            return
        text = _common_doc(node)
        if text is None:
            return
        section = _as_section(text)
        for name in _targets(node):
            member = mod.members.get(name)
            if member is None or member.is_alias:
                continue
            if member.docstring is None:
                member.docstring = griffe.Docstring(section, parent=member)
            elif HEADING not in member.docstring.value:
                member.docstring.value = member.docstring.value.rstrip() + "\n\n" + section

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any):
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
