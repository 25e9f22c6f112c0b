"""NT-Xent (SimCLR): ``Z = [z1; z2]`` of ``2N`` rows; each row against the other ``2N - 1``,
its positive the other view ``i ± N`` (SPEC §3)."""

from __future__ import annotations

from typing import Any

from .. import _validation as check
from .._blocks import Tiling
from .._namespace import Array, Namespace, device_of
from .._normalize import normalize_vjp
from . import _base as base
from ._base import Checked, Layout, Saved


def partner(n2: int, like: Array, xp: Namespace) -> Array:
    """NT-Xent's positive of row ``i`` among ``2N`` rows: the other view ``i ± N``."""
    idx = xp.arange(n2, device=device_of(like))
    half = n2 // 2
    return xp.where(idx < half, idx + half, idx - half)


class NtXent(Layout):
    """``nt_xent(z1, z2)``: anchors and candidates are the same ``2N`` rows (a device's
    ``[z1; z2]``; the devices' blocks in rank order when sharded). The positive pair lies
    outside the matrix (single-positive kernel); the self-pair and the partner are
    dropped from the negatives. ``where`` masks the pair ``(z1_i, z2_i)``."""

    name = "nt_xent"
    function = "nt_xent"
    arrays = ("z1", "z2", "where")
    differentiable = ("z1", "z2")
    saved = ("u", "rnorm", "candidates", "has", "col_where")

    def check(self, arrays, xp) -> Checked:
        z1, z2, _ = arrays
        base.check_rows(("z1", "z2"), z1, z2, xp)
        check.check_same_dtype([("z1", z1), ("z2", z2)])
        n = base.static(z1.shape[0])
        n2 = None if n is None else 2 * n
        return Checked((z1.dtype, z2.dtype), masked=False, n=n2, m=n2)

    def _sizes_agree(self, arrays) -> bool:
        return base.same_shape(arrays[0], arrays[1])

    def loss_shape(self, problem, arrays) -> tuple[int, ...]:
        return (2 * arrays[0].shape[0],)

    def setup(self, problem, arrays, xp, comm) -> Saved:
        z1, z2, where = arrays
        has = None if where is None else xp.concat([where, where])
        u, rnorm = base.normalized(xp.concat([z1, z2], axis=0), xp, has)
        return {"u": u, "rnorm": rnorm, "candidates": base.gather(u, comm), "has": has,
                "col_where": base.gather_mask(has, comm, xp)}

    def blocks(self, problem, saved, xp, comm) -> Tiling:
        u = saved["u"]
        offset = base.row_offset(comm, u.shape[0])
        own = partner(u.shape[0], u, xp)
        if not isinstance(offset, int) or offset:
            own = own + (offset if isinstance(offset, int) else xp.astype(offset, own.dtype))
        return Tiling(u, saved["candidates"], where_cols=saved["col_where"], diagonal=True,
                      partner=own, row_offset=offset)

    def positives(self, problem, saved, xp) -> tuple[Any, Any]:
        u, has = saved["u"], saved["has"]
        n2 = u.shape[0]
        s_positive = xp.sum(u * xp.take(u, partner(n2, u, xp), axis=0), axis=1)
        return s_positive, base.everyone(n2, u, xp) if has is None else has

    def gradients(self, problem, saved, du_a, du_c, g_positive, xp) -> tuple[Any, ...]:
        u = saved["u"]
        du = du_a + du_c  # anchors and candidates are the same rows: (G + Gᵀ)·U
        # the pair (i, partner(i)) contributes both ways
        other = partner(u.shape[0], u, xp)
        both = g_positive + xp.take(g_positive, other, axis=0)
        du = du + both[:, None] * xp.take(u, other, axis=0)
        dz = normalize_vjp(u, saved["rnorm"], du, xp)
        half = dz.shape[0] // 2
        return dz[:half, :], dz[half:, :]
