"""Supervised contrastive (SupCon, "outside" average): every row against all others, the
rows of its label its positives; ``(N, V, D)`` features flattened view-major (SPEC §3)."""

from __future__ import annotations

from typing import Any

from .. import _validation as check
from .._blocks import Tiling
from .._normalize import normalize_vjp
from . import _base as base
from ._base import Checked, Layout, Saved


class SupCon(Layout):
    """``sup_con(features, labels)``: the masked kernel on the ``N·V`` rows (view-major:
    all samples' view 0, then view 1, ...); anchors and candidates are the same rows."""

    name = "sup_con"
    function = "sup_con"
    arrays = ("features", "labels", "where")
    differentiable = ("features",)
    saved = ("u", "rnorm", "candidates", "labels", "col_labels", "where", "col_where")
    static_sizes = ((0, 1),)  # (N, V, D): the number of views shapes the loss

    def check(self, arrays, xp) -> Checked:
        features, labels, _ = arrays
        check.check_floating("features", features, xp)
        check.check_rank("features", features, (2, 3), "(N, D)|(N, V, D)")
        rank = len(features.shape)
        check.check_nonempty("features", features, tuple(range(rank)), (
            ("sample", "feature") if rank == 2 else ("sample", "view", "feature")))
        check.check_labels("labels", labels, features.shape[0], xp)
        views = int(features.shape[1]) if rank == 3 else 0
        n = base.static(features.shape[0])
        if views:
            n = None if n is None else n * views
        return Checked((features.dtype,), masked=True, n=n, m=n, views=views)

    def _sizes_agree(self, arrays) -> bool:
        return base.labels_fit(arrays[1], arrays[0])

    def fused_unsupported(self, problem, arrays) -> str | None:
        return f"sup_con {base.SEVERAL_POSITIVES}"

    def loss_shape(self, problem, arrays) -> tuple[int, ...]:
        n = arrays[0].shape[0]
        return (n, problem.views) if problem.views else (n,)

    def shape_loss(self, problem, loss, xp):
        if not problem.views:
            return loss
        return xp.matrix_transpose(xp.reshape(loss, (problem.views, -1)))

    def flatten_cotangent(self, problem, cotangent, xp):
        if not problem.views:
            return cotangent
        return xp.reshape(xp.matrix_transpose(cotangent), (-1,))

    def setup(self, problem, arrays, xp, comm) -> Saved:
        features, labels, where = arrays
        flat = features
        if problem.views:
            n, v, d = features.shape
            flat = xp.reshape(xp.permute_dims(features, (1, 0, 2)), (v * n, d))
            labels = xp.concat([labels] * v)
            where = None if where is None else xp.concat([where] * v)
        u, rnorm = base.normalized(flat, xp, where)
        return {"u": u, "rnorm": rnorm, "candidates": base.gather(u, comm), "labels": labels,
                "col_labels": base.gather(labels, comm), "where": where,
                "col_where": base.gather_mask(where, comm, xp)}

    def blocks(self, problem, saved, xp, comm) -> Tiling:
        u = saved["u"]
        return Tiling(u, saved["candidates"], where_rows=saved["where"],
                      where_cols=saved["col_where"], row_labels=saved["labels"],
                      col_labels=saved["col_labels"], diagonal=True,
                      row_offset=base.row_offset(comm, u.shape[0]))

    def gradients(self, problem, saved, du_a, du_c, g_positive, xp) -> tuple[Any, ...]:
        dz = normalize_vjp(saved["u"], saved["rnorm"], du_a + du_c, xp)
        if problem.views:
            rows, d = dz.shape
            v = problem.views
            dz = xp.permute_dims(xp.reshape(dz, (v, rows // v, d)), (1, 0, 2))
        return (dz,)
