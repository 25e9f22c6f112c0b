"""The masked softmax cross-entropy on a similarity matrix, and its analytic gradient.

Every layout reduces to this (SPEC §2.5-§2.6, "Analytic gradient"): a similarity matrix
``S`` (n × m), a candidate mask ``C`` (``valid``; ``None`` means all) and a positive mask
``P ⊆ C``. Anchors lie along rows (``axis=1``: reduce over the columns) or along columns
(``axis=0``), or both for a symmetric loss, which then shares one matrix and one pass.

Per anchor ``i``, with ratios ``R_ij = exp(ℓ_ij - shift_i)`` (see ``_maps``),
``Q_i = Σ_{j∈P(i)} R_ij`` and ``N_i = Σ_{j∈C(i)∖P(i)} R_ij``::

    L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - logsumexp_{j∈C(i)} ℓ_ij]

and, with ``Z_i = Q_i + N_i`` and ``A_i`` the reduction's weight of anchor ``i``::

    ∂L/∂S_ij = A_i · (R_ij/Z_i - 1[j∈P(i)]/|P(i)|) · φ'(S_ij)    for j ∈ C(i), else 0.

For a positive the bracket is written ``((R_ip - Q_i/|P|) - N_i/|P|)/Z_i``: with one
positive it is ``-N_i/Z_i`` exactly, so ``1 - P₊`` never cancels near ``s₊ → 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._maps import LogitMap
from ._namespace import Array, Namespace, scalar


def along(v: Array, axis: int) -> Array:
    """Broadcast a per-anchor vector over the matrix whose anchors lie on ``axis``'s rows/cols."""
    return v[:, None] if axis == 1 else v[None, :]


@dataclass
class AnchorStats:
    """Per-anchor statistics of one direction, all the backward needs besides ``S``."""

    negatives: Array  # N_i
    positives: Array  # Q_i
    count: Array  # |P(i)|, in the compute dtype
    shift: Array | None  # the temperature map's max-shift
    s_positive: Array | None  # the single positive's similarity (single-positive layouts)

    def arrays(self) -> tuple[Array | None, ...]:
        return (self.negatives, self.positives, self.count, self.shift, self.s_positive)


def _count(positive: Array, axis: int, dtype: object, xp: Namespace) -> Array:
    return xp.sum(xp.astype(positive, dtype), axis=axis)


def anchor_losses(
    s: Array,
    positive: Array,
    valid: Array | None,
    fmap: LogitMap,
    axis: int,
    single_positive: bool,
    xp: Namespace,
) -> tuple[Array, AnchorStats]:
    """Per-anchor losses ``L_i`` along one direction (0 for anchors without a positive)."""
    shift = fmap.shift(s, valid, axis, xp)
    shift_b = None if shift is None else along(shift, axis)
    ratio = fmap.ratio(s, shift_b, valid, xp)
    zero = scalar(0.0, s, xp)
    negatives = xp.sum(xp.where(positive, zero, ratio), axis=axis)
    positives = xp.sum(xp.where(positive, ratio, zero), axis=axis)
    count = _count(positive, axis, s.dtype, xp)
    has_positive = count > 0
    safe_positives = xp.where(has_positive, positives, scalar(1.0, positives, xp))
    s_positive = None
    if single_positive:
        # One non-zero term plus zeros: the sum is the positive's similarity, bit for bit.
        s_positive = xp.sum(xp.where(positive, s, zero), axis=axis)
        mean_log = fmap.single_log_ratio(s_positive, shift, xp)
    else:
        safe_count = xp.where(has_positive, count, scalar(1.0, count, xp))
        logs = fmap.log_ratio(s, ratio, shift_b, positive, xp)
        mean_log = xp.sum(logs, axis=axis) / safe_count
    loss = fmap.anchor_loss(negatives, safe_positives, mean_log, xp)
    loss = xp.where(has_positive, loss, scalar(0.0, loss, xp))
    return loss, AnchorStats(negatives, positives, count, shift, s_positive)


def similarity_gradient(
    s: Array,
    positive: Array,
    valid: Array | None,
    fmap: LogitMap,
    directions: tuple[tuple[int, AnchorStats, Array], ...],
    xp: Namespace,
) -> Array:
    """``G = ∂(Σ_i A_i L_i)/∂S`` summed over directions ``(axis, stats, A)``.

    ``A`` must already be 0 for anchors without a positive.
    """
    zero = scalar(0.0, s, xp)
    spread = zero  # G on non-positive candidates
    on_positive = zero  # G on positives
    shared_weight = None if fmap.needs_shift else fmap.weight(s, None, valid, xp)
    for axis, stats, coef in directions:
        has_positive = stats.count > 0
        total = stats.negatives + stats.positives
        safe_total = xp.where(has_positive, total, scalar(1.0, total, xp))
        per_anchor = coef / safe_total
        shift_b = None if stats.shift is None else along(stats.shift, axis)
        weight = shared_weight
        if weight is None:
            weight = fmap.weight(s, shift_b, valid, xp)
        spread = spread + weight * along(per_anchor, axis)
        if stats.s_positive is not None:
            slope = fmap.slope(stats.s_positive, xp)
            on_positive = on_positive + along(-per_anchor * slope * stats.negatives, axis)
        else:
            safe_count = xp.where(has_positive, stats.count, scalar(1.0, stats.count, xp))
            ratio = fmap.ratio(s, shift_b, valid, xp)
            centred = (ratio - along(stats.positives / safe_count, axis)) - along(
                stats.negatives / safe_count, axis
            )
            on_positive = on_positive + fmap.slope(s, xp) * centred * along(per_anchor, axis)
    return xp.where(positive, on_positive, spread)
