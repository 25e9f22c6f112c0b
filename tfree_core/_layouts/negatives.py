"""Explicit negatives (MoCo): query ``i`` against its own key and the negatives, shared
``(M, D)`` or per row ``(N, M, D)``; other rows' keys are not candidates (SPEC §3)."""

from __future__ import annotations

from typing import Any

from .. import _validation as check
from .._blocks import Tiling
from . import _base as base
from ._base import Checked, Layout, Saved


class Negatives(Layout):
    """``info_nce(query, key, negatives=...)``: the single-positive kernel with the
    negatives as the matrix's columns and ``⟨q_i, k_i⟩`` outside it. ``where`` drops
    anchors only: a masked row's key is nobody else's candidate."""

    name = "negatives"
    function = "info_nce with negatives="
    arrays = ("query", "key", "negatives", "where")
    differentiable = ("query", "key", "negatives")
    saved = ("uq", "rq", "uk", "rk", "un", "rn", "where")
    shardable = False

    def check(self, arrays, xp) -> Checked:
        query, key, negatives, _ = arrays
        base.check_rows(("query", "key"), query, key, xp)
        d = query.shape[1]
        check.check_floating("negatives", negatives, xp)
        check.check_rank("negatives", negatives, (2, 3), "(M, D) (shared)|(N, M, D) (per row)")
        check.check_nonempty("negatives", negatives, (-2,), ("negative",))
        check.check_dim("negatives", negatives, -1, d, "query's D")
        per_row = len(negatives.shape) == 3
        if per_row:
            check.check_dim("negatives", negatives, 0, query.shape[0], "query's N")
        named = [("query", query), ("key", key), ("negatives", negatives)]
        check.check_same_dtype(named)
        depth = (base.static(negatives.shape[-1]) or 0) if per_row else 0
        return Checked(tuple(x.dtype for _, x in named), masked=False,
                       n=base.static(query.shape[0]), m=base.static(negatives.shape[-2]),
                       depth=depth)

    def _sizes_agree(self, arrays) -> bool:
        query, key, negatives, _ = arrays
        return (base.same_shape(query, key) and negatives.shape[-1] == query.shape[1]
                and negatives.shape[-2] != 0
                and (len(negatives.shape) == 2 or negatives.shape[0] == query.shape[0]))

    def fused_unsupported(self, problem, arrays) -> str | None:
        if len(arrays[2].shape) == 3:
            return ("per-row negatives of shape (N, M, D) (the fused kernels take negatives "
                    "shared by all rows, (M, D))")
        return None

    def setup(self, problem, arrays, xp, comm) -> Saved:
        query, key, negatives, where = arrays
        uq, rq = base.normalized(query, xp, where)
        uk, rk = base.normalized(key, xp, where)
        # per-row negatives belong to their row; shared ones to no row
        un, rn = base.normalized(negatives, xp, where if len(negatives.shape) == 3 else None)
        return {"uq": uq, "rq": rq, "uk": uk, "rk": rk, "un": un, "rn": rn, "where": where}

    def blocks(self, problem, saved, xp, comm) -> Tiling:
        un = saved["un"]
        return Tiling(saved["uq"], un, per_row=len(un.shape) == 3)

    def positives(self, problem, saved, xp) -> tuple[Any, Any]:
        uq, uk, where = saved["uq"], saved["uk"], saved["where"]
        has = base.everyone(uq.shape[0], uq, xp) if where is None else where
        return xp.sum(uq * uk, axis=1), has

    def gradients(self, problem, saved, du_a, du_c, g_positive, xp) -> tuple[Any, ...]:
        uq, uk = saved["uq"], saved["uk"]
        # the key is no column of the matrix: its only term is the positive's
        duq = du_a + g_positive[:, None] * uk
        duk = g_positive[:, None] * uq
        return (base.vjp(saved, "uq", "rq", duq, xp), base.vjp(saved, "uk", "rk", duk, xp),
                base.vjp(saved, "un", "rn", du_c, xp))
