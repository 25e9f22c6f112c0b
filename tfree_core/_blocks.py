"""The blocks of one call: what a block of ``S`` and its masks are made of.

The engine (``_evaluate``) walks the anchors in blocks of rows ``r`` (all of them at once
when untiled; ``c`` at a time when tiled, the last block padded with repeats of the last
row and marked dead by ``live``). For each block it asks a :class:`Tiling` for

* ``S[r] = U_a[r]·U_cᵀ`` (``c × M``; per-row negatives: ``S[r]_j = ⟨u_r, n_{r,j}⟩``),
* the block's masks, built from index vectors (``keep`` for the single-positive kernel,
  ``(positive, valid)`` for the masked one), never from an ``N × M`` array, and
* the block's share of the embedding gradients, ``G[r]·U_c`` and ``G[r]ᵀ·U_a[r]``.

Indices are global: a device of a sharded call holds anchor rows ``row_offset ..
row_offset + n - 1`` of the global batch and *all* candidates (gathered), so "drop the
self-pair" is ``j = row_offset + i`` and NT-Xent's partner is a candidate index. One
device is ``row_offset = 0``.

:class:`GivenMatrix` is the same interface over a similarity matrix that is an input
(``loss_from_similarity``): one block, the matrix itself, its gradient ``G`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._namespace import Array, Namespace, add_matmul, device_of

Rows = Array | None
"""A block's global row indices, or ``None`` for "every row" (the untiled block, which
gathers nothing)."""


def take(v: Array | None, r: Rows, xp: Namespace) -> Array | None:
    """Rows ``r`` of ``v`` (``v`` itself for every row; ``None`` stays ``None``)."""
    return v if v is None or r is None else xp.take(v, r, axis=0)


def block_rows(index: object, rows: int, n: int, like: Array, xp: Namespace):
    """``(r, live)``: the ``rows`` global indices of block ``index`` (a Python int or a
    traced integer scalar), clamped to ``n - 1`` past the end, and which of them are real."""
    base = xp.arange(rows, device=device_of(like))
    idx = base + xp.asarray(index * rows, dtype=base.dtype, device=device_of(like))
    live = idx < n
    if n % rows:  # only the last block is padded; a clamp keeps the gathers in range
        idx = xp.clip(idx, 0, n - 1)
    return idx, live


def _and(mask: Array | None, other: Array, xp: Namespace) -> Array:
    return other if mask is None else xp.logical_and(mask, other)


@dataclass(frozen=True)
class Tiling:
    """Normalised anchors against normalised candidates, and the index vectors of the masks.

    ``anchors`` ``(n, D)``; ``candidates`` ``(m, D)``, or ``(n, m, D)`` when ``per_row``.
    ``where_rows`` ``(n,)`` / ``where_cols`` ``(m,)``: row masks of the anchors and the
    candidates. ``row_labels`` / ``col_labels``: the masked kernel's labels (positives:
    equal labels). ``row_ids`` / ``col_ids``: identities (document ids) of each anchor's
    positive and of each candidate; a candidate with the id of the anchor's positive is a
    duplicate of it, not a negative, and is dropped (the positive itself lies outside the
    matrix, or is dropped as the self-pair). ``diagonal``: drop the self-pair
    ``j = row_offset + i``. ``partner``: per anchor, a candidate index to drop (NT-Xent's
    other view). ``row_offset``: the candidate index of anchor row 0 (a Python int, or a
    0-d integer array under tracing).
    """

    anchors: Array
    candidates: Array
    per_row: bool = False
    where_rows: Array | None = None
    where_cols: Array | None = None
    row_labels: Array | None = None
    col_labels: Array | None = None
    row_ids: Array | None = None
    col_ids: Array | None = None
    diagonal: bool = False
    partner: Array | None = None
    row_offset: int | Array = 0

    @property
    def n(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def m(self) -> int:
        return int(self.candidates.shape[-2])

    @property
    def dtype(self) -> Any:
        return self.anchors.dtype

    @property
    def like(self) -> Array:
        """An array of the compute dtype on the call's device."""
        return self.anchors

    def anchor_rows(self, r: Rows, xp: Namespace) -> Array:
        """``U_a[r]``."""
        return take(self.anchors, r, xp)

    def similarity(self, r: Rows, xp: Namespace) -> tuple[Array, Array]:
        """``(S[r], U_a[r])``: the block of the similarity matrix and the block's anchors."""
        a = self.anchor_rows(r, xp)
        if self.per_row:
            c = take(self.candidates, r, xp)
            return (a[:, None, :] @ xp.matrix_transpose(c))[:, 0, :], a
        return a @ xp.matrix_transpose(self.candidates), a

    def _global_rows(self, r: Rows, xp: Namespace) -> Array:
        rows = xp.arange(self.n, device=device_of(self.anchors)) if r is None else r
        offset = self.row_offset
        if isinstance(offset, int):
            return rows + offset if offset else rows
        return rows + xp.astype(offset, rows.dtype)

    def drops_only_self_pairs(self) -> bool:
        """Whether the self-pairs are the only entries a block drops (no partner, no masked
        row or column, no identities; rows against shared candidates)."""
        return (self.diagonal and not self.per_row and self.partner is None
                and self.where_rows is None and self.where_cols is None
                and self.row_ids is None)

    def self_pairs(self, r: Rows, xp: Namespace) -> Array:
        """The flat (row-major) indices of the self-pairs ``(i, row_offset + r_i)`` in the
        block of rows ``r``: ``i·M + row_offset + r_i``."""
        rows = self._global_rows(r, xp)
        local = xp.arange(rows.shape[0], dtype=rows.dtype, device=device_of(self.anchors))
        return local * self.m + rows

    def keep(self, r: Rows, live: Array | None, dead_rows: bool, xp: Namespace) -> Array | None:
        """The candidates of rows ``r`` (``None``: all of them): no self-pair, no partner,
        no masked row or column, no duplicate of the positive, no dead row (``dead_rows``:
        where a dead row could reach a column statistic; elsewhere its anchor weight is 0)."""
        keep = None
        if self.diagonal or self.partner is not None:
            cols = xp.arange(self.m, device=device_of(self.anchors))
            if self.diagonal:
                keep = self._global_rows(r, xp)[:, None] != cols[None, :]
            if self.partner is not None:
                partner = take(self.partner, r, xp)
                keep = _and(keep, cols[None, :] != partner[:, None], xp)
        if self.where_rows is not None:
            keep = _and(keep, take(self.where_rows, r, xp)[:, None], xp)
        if self.where_cols is not None:
            keep = _and(keep, self.where_cols[None, :], xp)
        if self.row_ids is not None:
            keep = _and(keep, self.col_ids[None, :] != take(self.row_ids, r, xp)[:, None], xp)
        if dead_rows and live is not None:
            keep = _and(keep, live[:, None], xp)
        return keep

    def masks(
        self, r: Rows, live: Array | None, dead_rows: bool, xp: Namespace
    ) -> tuple[Array, Array | None]:
        """``(positive, valid)`` for the masked kernel: same label, inside ``valid``."""
        valid = self.keep(r, live, dead_rows, xp)
        positive = take(self.row_labels, r, xp)[:, None] == self.col_labels[None, :]
        if valid is not None:
            positive = xp.logical_and(positive, valid)
        return positive, valid

    def product_carry(self, xp: Namespace) -> tuple[Array, ...]:
        """The loop's initial carry for :meth:`products`: ``Gᵀ·U_a`` summed over blocks
        (none with per-row candidates, whose gradients are per-block outputs)."""
        return () if self.per_row else (xp.zeros_like(self.candidates),)

    def products(
        self, g: Array, r: Rows, a: Array, carry: tuple[Array, ...], xp: Namespace
    ) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        """One block's share of the embedding gradients from ``G[r]``: ``dU_a[r] = G[r]·U_c``
        (a per-block output) and ``dU_c += G[r]ᵀ·U_a[r]`` (the carry, updated in place
        where arrays are mutable: the carry is the loop's own); with per-row candidates
        ``dU_c[r]`` is a per-block output too."""
        if self.per_row:
            c = take(self.candidates, r, xp)
            return carry, ((g[:, None, :] @ c)[:, 0, :], g[:, :, None] * a[:, None, :])
        du_c = add_matmul(carry[0], xp.matrix_transpose(g), a, xp)
        return (du_c,), (g @ self.candidates,)


@dataclass(frozen=True)
class GivenMatrix:
    """A similarity matrix given as an input (``n × m``, compute dtype), with its masks
    (``positive`` inside ``valid``; ``valid`` ``None``: every entry). One block only:
    there is nothing to tile, and ``G = ∂L/∂S`` is the gradient itself."""

    matrix: Array
    positive: Array
    valid: Array | None
    per_row = False

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def m(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def dtype(self) -> Any:
        return self.matrix.dtype

    @property
    def like(self) -> Array:
        return self.matrix

    def anchor_rows(self, r: Rows, xp: Namespace) -> None:
        return None

    def similarity(self, r: Rows, xp: Namespace) -> tuple[Array, None]:
        assert r is None, "a given matrix is one block"
        return self.matrix, None

    def masks(
        self, r: Rows, live: Array | None, dead_rows: bool, xp: Namespace
    ) -> tuple[Array, Array | None]:
        return self.positive, self.valid

    def product_carry(self, xp: Namespace) -> tuple[Array, ...]:
        return ()

    def products(
        self, g: Array, r: Rows, a: Any, carry: tuple[Array, ...], xp: Namespace
    ) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        return carry, (g,)


Blocks = Tiling | GivenMatrix
