"""The per-anchor weights ``A_i`` of the gradient (SPEC §2.7's reductions)."""

from __future__ import annotations

from ._namespace import Array, Namespace, scalar


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
