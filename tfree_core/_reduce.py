"""Reductions over anchors (SPEC §2.7) and the per-anchor weights ``A_i`` of the gradient."""

from __future__ import annotations

from ._namespace import Array, Namespace, scalar


def reduce(loss: Array, count: Array, reduction: str, xp: Namespace) -> Array:
    """``mean`` over anchors with ``|P(i)| >= 1`` (0 when there are none), ``sum``, or ``none``."""
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    anchors = xp.sum(xp.astype(count > 0, loss.dtype))
    return total / xp.maximum(anchors, scalar(1.0, anchors, xp))


def anchor_weights(
    count: Array, reduction: str, cotangent: Array, scale: float, xp: Namespace
) -> Array:
    """``A_i``: ``g/n`` for ``mean``, ``g`` for ``sum`` (scalar upstream ``g``), ``g_i`` for
    ``none``; times ``scale`` (½ per direction of a symmetric loss); 0 without positives."""
    has_positive = count > 0
    if reduction == "mean":
        anchors = xp.sum(xp.astype(has_positive, count.dtype))
        cotangent = cotangent / xp.maximum(anchors, scalar(1.0, anchors, xp))
    weights = xp.where(has_positive, cotangent * scale, scalar(0.0, count, xp))
    return weights
