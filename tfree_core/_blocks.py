"""Row blocks of a layout: one block of ``S = U_a·U_cᵀ`` and its masks, from global indices.

A tiled evaluation (``_tiled``) never holds an N×M array. For a block of anchor rows
``r`` (``c`` indices, the last block padded with repeats of the last row and marked dead
by ``live``) it asks this module for

* ``S[r] = U_a[r]·U_cᵀ`` (``c × M``; per-row negatives: ``S[r]_j = ⟨u_r, n_{r,j}⟩``), and
* the block's masks, built from the row indices, labels and ``where`` vectors exactly as
  the untiled layouts build the whole matrix's (``_layouts._build``): ``keep`` (the
  single-positive kernel's negatives) or ``(positive, valid)`` (the masked kernel).

Dead rows are dropped from the masks only where they could reach a column statistic
(``dead_rows=True``, symmetric losses); elsewhere their anchor weight is 0 and their
outputs are sliced off, which costs nothing per element.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._namespace import Array, Namespace, device_of


@dataclass(frozen=True)
class Tiling:
    """What the blocks of one call are made of (normalised embeddings and index vectors).

    ``anchors`` ``(N, D)``; ``candidates`` ``(M, D)``, or ``(N, M, D)`` when ``per_row``.
    ``where_rows`` / ``where_cols``: row masks applied to the block's rows / columns.
    ``labels``: for the masked kernel, the labels of rows and columns (one vector: the
    layouts with labels compare a set with itself). ``diagonal``: drop ``j = i``.
    ``partner``: NT-Xent's positive ``i ± N``, dropped from the negatives.
    ``row_offset``: the candidate index of anchor row 0 (a Python int or a 0-d integer
    array), for a rank's row block against the gathered candidates: ``diagonal`` then
    drops ``j = row_offset + i`` and ``partner`` holds candidate indices. Only the fused
    kernels read it (``_fused.exclusions``); :func:`keep_mask` assumes the default 0.
    """

    anchors: Array
    candidates: Array
    per_row: bool = False
    where_rows: Array | None = None
    where_cols: Array | None = None
    labels: Array | None = None
    diagonal: bool = False
    partner: Array | None = None
    row_offset: int | Array = 0

    @property
    def n(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def m(self) -> int:
        return int(self.candidates.shape[-2])


def block_rows(index: object, rows: int, n: int, like: Array, xp: Namespace):
    """``(r, live)``: the ``rows`` global indices of block ``index`` (a Python int or a
    traced integer scalar), clamped to ``n - 1`` past the end, and which of them are real."""
    base = xp.arange(rows, device=device_of(like))
    idx = base + xp.asarray(index * rows, dtype=base.dtype, device=device_of(like))
    live = idx < n
    if n % rows:  # only the last block is padded; a clamp keeps the gathers in range
        idx = xp.clip(idx, 0, n - 1)
    return idx, live


def similarity(t: Tiling, r: Array, xp: Namespace) -> tuple[Array, Array]:
    """``(S[r], U_a[r])``: the block of the similarity matrix and the block's anchors."""
    a = xp.take(t.anchors, r, axis=0)
    if t.per_row:
        c = xp.take(t.candidates, r, axis=0)
        return (a[:, None, :] @ xp.matrix_transpose(c))[:, 0, :], a
    return a @ xp.matrix_transpose(t.candidates), a


def _and(mask: Array | None, other: Array, xp: Namespace) -> Array:
    return other if mask is None else xp.logical_and(mask, other)


def keep_mask(
    t: Tiling, r: Array, live: Array, dead_rows: bool, xp: Namespace
) -> Array | None:
    """The candidates of rows ``r`` (``None``: all of them), as ``_layouts._build`` makes
    them: no self-pair, no partner, no masked row or column, no dead row."""
    keep = None
    if t.diagonal or t.partner is not None:
        cols = xp.arange(t.m, device=device_of(r))
        if t.diagonal:
            keep = r[:, None] != cols[None, :]
        if t.partner is not None:
            keep = _and(keep, cols[None, :] != xp.take(t.partner, r, axis=0)[:, None], xp)
    if t.where_rows is not None:
        keep = _and(keep, xp.take(t.where_rows, r, axis=0)[:, None], xp)
    if t.where_cols is not None:
        keep = _and(keep, t.where_cols[None, :], xp)
    if dead_rows:
        keep = _and(keep, live[:, None], xp)
    return keep


def masks(
    t: Tiling, r: Array, live: Array, dead_rows: bool, xp: Namespace
) -> tuple[Array, Array | None]:
    """``(positive, valid)`` for the masked kernel: same label, inside ``valid``."""
    assert t.labels is not None
    valid = keep_mask(t, r, live, dead_rows, xp)
    positive = xp.take(t.labels, r, axis=0)[:, None] == t.labels[None, :]
    if valid is not None:
        positive = xp.logical_and(positive, valid)
    return positive, valid
