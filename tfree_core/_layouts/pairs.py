"""Pairs (InfoNCE, CLIP): query ``i`` against all ``N`` keys, key ``i`` its positive, or
with ``labels`` every key of its label (SPEC §3)."""

from __future__ import annotations

from typing import Any

from .. import _validation as check
from .._blocks import Tiling
from . import _base as base
from ._base import Checked, Layout, Saved


class Pairs(Layout):
    """``info_nce(query, key[, labels])``: candidates are all keys. Without labels the
    positive ``(q_i, k_i)`` lies on the diagonal, handled outside the matrix (single
    positive kernel); with labels, every key of the query's label is a positive (masked
    kernel). ``where`` masks a pair's query and key together."""

    name = "pairs"
    function = "info_nce"
    arrays = ("query", "key", "labels", "where")
    differentiable = ("query", "key")
    saved = ("uq", "rq", "uk", "rk", "candidates", "labels", "col_labels", "where",
             "col_where")

    def check(self, arrays, xp) -> Checked:
        query, key, labels, _ = arrays
        base.check_rows(("query", "key"), query, key, xp)
        check.check_same_dtype([("query", query), ("key", key)])
        if labels is not None:
            check.check_labels("labels", labels, query.shape[0], xp)
        n = base.static(query.shape[0])
        return Checked((query.dtype, key.dtype), masked=labels is not None, n=n, m=n)

    def _sizes_agree(self, arrays) -> bool:
        return base.same_shape(arrays[0], arrays[1]) and base.labels_fit(arrays[2], arrays[0])

    def fused_unsupported(self, problem, arrays) -> str | None:
        return f"labels {base.SEVERAL_POSITIVES}" if problem.masked else None

    def setup(self, problem, arrays, xp, comm) -> Saved:
        query, key, labels, where = arrays
        uq, rq = base.normalized(query, xp, where)
        uk, rk = base.normalized(key, xp, where)
        return {"uq": uq, "rq": rq, "uk": uk, "rk": rk, "candidates": base.gather(uk, comm),
                "labels": labels, "col_labels": base.gather(labels, comm), "where": where,
                "col_where": base.gather_mask(where, comm, xp)}

    def blocks(self, problem, saved, xp, comm) -> Tiling:
        # masked keys drop out of every row and, when symmetric, masked queries out of
        # every column
        uq = saved["uq"]
        return Tiling(uq, saved["candidates"], where_rows=saved["where"],
                      where_cols=saved["col_where"], row_labels=saved["labels"],
                      col_labels=saved["col_labels"], diagonal=not problem.masked,
                      row_offset=base.row_offset(comm, uq.shape[0]))

    def positives(self, problem, saved, xp) -> tuple[Any, Any] | None:
        if problem.masked:
            return None
        uq, uk, where = saved["uq"], saved["uk"], saved["where"]
        has = base.everyone(uq.shape[0], uq, xp) if where is None else where
        return xp.sum(uq * uk, axis=1), has

    def column_positives(self, problem, saved, single, xp, comm) -> tuple[Any, Any]:
        # column j's positive is key j's own pair: the same s_jj and where_j
        has = saved["col_where"]
        if has is None:
            has = base.everyone(saved["candidates"].shape[0], saved["uq"], xp)
        return base.gather(single[0], comm), has

    def gradients(self, problem, saved, du_a, du_c, g_positive, xp) -> tuple[Any, ...]:
        duq, duk = du_a, du_c
        if g_positive is not None:  # the positive pair (q_i, k_i), outside the matrix
            duq = duq + g_positive[:, None] * saved["uk"]
            duk = duk + g_positive[:, None] * saved["uq"]
        return base.vjp(saved, "uq", "rq", duq, xp), base.vjp(saved, "uk", "rk", duk, xp)
