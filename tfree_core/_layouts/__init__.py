"""The layouts of SPEC §3, one module each, and their registry.

A new layout is a :class:`~tfree_core._layouts._base.Layout` subclass in a module of its
own plus one line in :data:`LAYOUTS`; the engine needs nothing else.
"""

from __future__ import annotations

from ._base import Checked, Layout, Saved
from .negatives import Negatives
from .nt_xent import NtXent
from .pairs import Pairs
from .retrieval import Retrieval
from .similarity import Similarity
from .sup_con import SupCon

__all__ = ["LAYOUTS", "Checked", "Layout", "Saved", "layout"]

LAYOUTS: dict[str, Layout] = {
    spec.name: spec for spec in (Pairs(), Negatives(), NtXent(), SupCon(), Similarity(),
                                 Retrieval())
}


def layout(name: str) -> Layout:
    """The layout called ``name`` (``ValueError`` for an unknown one)."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None
