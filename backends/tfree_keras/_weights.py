"""``sample_weight``: a per-anchor weight on the ``reduction="none"`` losses.

With per-anchor losses ``L_a`` (tfree's ``"none"`` result) and the weight ``w_i`` of the
sample ``i`` each anchor ``a`` belongs to::

    "none":  w_i · L_a
    "sum":   Σ_a w_i · L_a
    "mean":  Σ_a w_i · L_a / Σ_{a has a positive} w_i      (0 when that sum is 0)

A sample's anchors: NT-Xent's two (``z1_i`` and ``z2_i``), SupCon's ``V`` views, one pair
for InfoNCE (symmetric: the pair's ``½(L_q,i + L_k,i)``). With every ``w_i = 1`` this is
SPEC's reduction exactly. A weight scales an anchor's own term only: the sample stays a
candidate (a negative or a positive) of every other anchor, so ``w_i = 0`` drops anchor
``i`` and keeps its embeddings in the other rows' denominators; removing a row entirely is
``where=`` of the functional API. The weights are constants to the gradient (Keras passes
them as data); the loss's gradient is ``Σ_a w_i · ∂L_a``: the framework's autodiff feeds the
cotangent ``w_i`` (scaled by the mean's ``1/Σ w``) into tfree's analytic ``"none"``
gradient.
"""

from __future__ import annotations

from typing import Any

from keras import ops

from ._layouts import KerasLayout

__all__ = ["as_weights", "reduce_weighted"]

Tensor = Any


def as_weights(sample_weight: Any, n: Any, dtype: str) -> Tensor:
    """``sample_weight`` of shape ``(N,)`` or ``(N, 1)`` as a ``(N,)`` tensor of ``dtype``."""
    weights = ops.convert_to_tensor(sample_weight)
    shape = tuple(weights.shape)
    if len(shape) == 2 and shape[1] == 1:
        weights = ops.squeeze(weights, axis=1)
        shape = shape[:1]
    if len(shape) != 1 or (shape[0] is not None and n is not None and shape[0] != n):
        raise ValueError(
            f"sample_weight must have shape (N,) or (N, 1), one weight per sample of the "
            f"batch (N = {'?' if n is None else n}); got shape {shape}"
        )
    return ops.cast(weights, dtype)


def reduce_weighted(
    spec: KerasLayout, loss: Tensor, weights: Tensor, reduction: str, has_positive: Tensor | None
) -> Tensor:
    """The weighted reduction of a ``"none"`` result ``loss`` (see the module).

    ``has_positive``: bool ``(N,)``, the samples whose anchors have a positive (``None``:
    all of them).
    """
    per_sample = spec.per_sample(loss)
    shape = (-1,) + (1,) * (len(per_sample.shape) - 1)
    weighted = per_sample * ops.reshape(weights, shape)
    if reduction == "none":
        return spec.from_per_sample(weighted)
    total = ops.sum(weighted)
    if reduction == "sum":
        return total
    counted = weights if has_positive is None else weights * ops.cast(has_positive, weights.dtype)
    # One weight per anchor: broadcast over the sample's anchors (NT-Xent's two, V views).
    denominator = ops.sum(ops.reshape(counted, shape) * ops.ones_like(per_sample))
    positive = denominator > 0
    safe = ops.where(positive, denominator, ops.ones_like(denominator))  # no 0/0 in the gradient
    return ops.where(positive, total / safe, ops.zeros_like(total))
