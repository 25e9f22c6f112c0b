"""The similarity level: a precomputed ``S`` ``(N, M)`` with its positive and valid masks
(SPEC §3); the gradient is ``∂L/∂S`` itself."""

from __future__ import annotations

from typing import Any

from .. import _validation as check
from .._blocks import GivenMatrix
from .._namespace import to_compute
from ._base import Checked, Layout, Saved, drop_rows


class Similarity(Layout):
    """``loss_from_similarity(S, positive_mask, valid_mask=None)``: the masked kernel on the
    given matrix, one block. ``where`` drops whole anchor rows."""

    name = "similarity"
    function = "loss_from_similarity"
    arrays = ("similarity", "positive_mask", "valid_mask", "where")
    differentiable = ("similarity",)
    saved = ("s", "positive", "valid")
    shardable = False
    tileable = False

    def check(self, arrays, xp) -> Checked:
        similarity, positive_mask, valid_mask, _ = arrays
        check.check_floating("similarity", similarity, xp)
        check.check_rank("similarity", similarity, (2,), "(N, M)")
        check.check_nonempty("similarity", similarity, (0, 1), ("anchor", "candidate"))
        shape = tuple(similarity.shape)
        check.check_mask("positive_mask", positive_mask, shape, xp)
        if valid_mask is not None:
            check.check_mask("valid_mask", valid_mask, shape, xp)
        return Checked((similarity.dtype,), masked=True, n=None, m=None)

    def _sizes_agree(self, arrays) -> bool:
        similarity = arrays[0]
        return all(mask is None or tuple(mask.shape) == tuple(similarity.shape)
                   for mask in arrays[1:3])

    def check_values(self, arrays, xp) -> None:
        if arrays[2] is not None:
            check.check_positive_inside_valid(arrays[1], arrays[2], xp)

    def fused_unsupported(self, problem, arrays) -> str | None:
        return "loss_from_similarity (the similarity matrix is an input: nothing to fuse)"

    def setup(self, problem, arrays, xp, comm) -> Saved:
        similarity, positive, valid, where = arrays
        s = drop_rows(to_compute(similarity, xp), where, xp)
        if where is not None:
            rows = xp.broadcast_to(where[:, None], s.shape)
            valid = rows if valid is None else xp.logical_and(valid, rows)
        if valid is not None:
            positive = xp.logical_and(positive, valid)
        return {"s": s, "positive": positive, "valid": valid}

    def blocks(self, problem, saved, xp, comm) -> GivenMatrix:
        return GivenMatrix(saved["s"], saved["positive"], saved["valid"])

    def gradients(self, problem, saved, du_a, du_c, g_positive, xp) -> tuple[Any, ...]:
        return (du_a,)
