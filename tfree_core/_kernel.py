"""The softmax cross-entropy on a similarity matrix, and its analytic gradient.

Every layout reduces to this (SPEC §2.5-§2.6, "Analytic gradient"). Anchors lie along
rows (``axis=1``: reduce over the columns) or along columns (``axis=0``), or both for a
symmetric loss, which then shares one matrix.

Per anchor ``i``, with ratios ``R_ij = exp(ℓ_ij - ℓ_shift_i)`` (see ``_maps``),
``Q_i = Σ_{p∈P(i)} R_ip`` and ``N_i = Σ_{j∈C(i)∖P(i)} R_ij``::

    L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - logsumexp_{j∈C(i)} ℓ_ij]

and, with ``Z_i = Q_i + N_i`` and ``A_i`` the reduction's weight of anchor ``i``::

    ∂L/∂S_ij = A_i · (R_ij/Z_i - 1[j∈P(i)]/|P(i)|) · φ'(S_ij)    for j ∈ C(i), else 0.

Two kernels share these formulas:

* **single positive** (pairs, NT-Xent, explicit negatives): each anchor has at most one
  positive, given as a vector ``s_p`` of similarities; the matrix holds the candidates and
  ``keep`` marks the negatives among them. On the positive the gradient is
  ``-A_i·φ'(s_p)·N_i/Z_i`` exactly (``1 - P₊ = N/Z``: no cancellation near ``s₊ → 1``),
  returned as a vector for the layout to apply with its own structure (a diagonal, a
  permutation, a separate key), so no N×N mask of positives is ever needed.
* **masked** (labels, SupCon, similarity level): positives as an N×M boolean mask; on a
  positive the bracket is ``((R_ip - Q_i/|P|) - N_i/|P|)/Z_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._maps import LogitMap
from ._namespace import Array, Namespace, scalar


def along(v: Array, axis: int) -> Array:
    """Broadcast a per-anchor vector over the matrix whose anchors lie on ``axis``."""
    return v[:, None] if axis == 1 else v[None, :]


def _safe(values: Array, live: Array, xp: Namespace) -> Array:
    return xp.where(live, values, scalar(1.0, values, xp))


# --------------------------------------------------------------------------- single positive


@dataclass
class SingleStats:
    """What the backward needs of one direction, besides the matrix."""

    negatives: Array  # N_i
    s_positive: Array  # s_p
    has_positive: Array  # bool
    shift: Array | None  # the temperature map's max-shift

    WIDTH: ClassVar[int] = 4  # the fields, for the flat residuals (a plain count: tracers read it)

    def values(self) -> tuple[Array | None, ...]:
        return (self.negatives, self.s_positive, self.has_positive, self.shift)


def single_losses(
    s: Array,
    s_positive: Array,
    keep: Array | None,
    has_positive: Array,
    fmap: LogitMap,
    axis: int,
    xp: Namespace,
    ratio: Array | None = None,
) -> tuple[Array, SingleStats, Array]:
    """Per-anchor ``L_i`` (0 without a positive); also returns the ratio matrix for reuse
    by the other direction of a symmetric loss (it is shift-free for ``arctanh``)."""
    shift = None
    if fmap.needs_shift:  # max over the kept entries (-inf if none) and the positive: finite
        if keep is not None:  # dropped once, for the maximum and the ratios alike
            s, keep = fmap.block_max_input(s, keep, xp), None
        shift = fmap.single_shift(fmap.block_max(s, keep, axis, xp), s_positive, xp)
    if ratio is None or fmap.needs_shift:
        ratio = fmap.ratio(s, None if shift is None else along(shift, axis), keep, xp)
    negatives = xp.sum(ratio, axis=axis)
    loss, stats = single_finish(negatives, s_positive, has_positive, shift, fmap, xp)
    return loss, stats, ratio


def single_finish(
    negatives: Array,
    s_positive: Array,
    has_positive: Array,
    shift: Array | None,
    fmap: LogitMap,
    xp: Namespace,
) -> tuple[Array, SingleStats]:
    """Per-anchor ``L_i`` from the finished sums ``N_i`` (0 without a positive)."""
    loss = fmap.single_loss(negatives, s_positive, shift, xp)
    loss = xp.where(has_positive, loss, scalar(0.0, loss, xp))
    return loss, SingleStats(negatives, s_positive, has_positive, shift)


Scales = tuple[tuple[int, Array, Array | None], ...]


def single_scales(
    directions: tuple[tuple[int, SingleStats, Array], ...], fmap: LogitMap, xp: Namespace
) -> tuple[Scales, tuple[Array, ...]]:
    """Per direction, the per-anchor factor ``A_i/Z_i`` of ``G`` (with the axis and shift),
    and the gradient ``g_p = -A_i·φ'(s_p)·N_i/Z_i`` w.r.t. each anchor's positive.

    Per-anchor vectors only, so a tiled backward computes them once for all blocks.
    """
    per_anchor = []
    positive_grads = []
    for axis, st, coef in directions:
        r_positive = fmap.positive_ratio(st.s_positive, st.shift, xp)
        total = _safe(st.negatives + r_positive, st.has_positive, xp)
        scaled = coef / total
        per_anchor.append((axis, scaled, st.shift))
        positive_grads.append(fmap.times_slope(-scaled * st.negatives, st.s_positive, xp))
    return tuple(per_anchor), tuple(positive_grads)


def single_weights(
    s: Array, keep: Array | None, fmap: LogitMap, per_anchor: Scales, xp: Namespace,
    weight: Array | None = None,
) -> Array:
    """``G_ij = Σ_directions (A/Z)_anchor · R_ij·φ'(S_ij)`` on the kept entries, else 0.
    ``weight`` (updated in place): ``R·φ'`` already computed for a shift-free map, or, for
    one direction of the temperature map, the ratios ``R`` of that direction's shift."""
    if weight is not None and fmap.needs_shift:
        (axis, scaled, _), = per_anchor
        return fmap.weight_from_ratio(weight, along(scaled, axis), xp)
    if not fmap.needs_shift:
        g = fmap.weight(s, None, keep, xp) if weight is None else weight
        if len(per_anchor) == 1:
            axis, scaled, _ = per_anchor[0]
            g *= along(scaled, axis)
        else:
            g *= sum(along(scaled, axis) for axis, scaled, _ in per_anchor)
        return g
    g = None
    for axis, scaled, shift in per_anchor:
        w = fmap.scaled_weight(s, along(shift, axis), keep, along(scaled, axis), xp)
        g = w if g is None else g + w
    return g


# --------------------------------------------------------------------------- masked positives


@dataclass
class MaskedStats:
    """Per-anchor statistics of one direction for the masked kernel."""

    negatives: Array  # N_i
    positives: Array  # Q_i
    count: Array  # |P(i)|, in the compute dtype
    shift: Array | None

    WIDTH: ClassVar[int] = 4

    def values(self) -> tuple[Array | None, ...]:
        return (self.negatives, self.positives, self.count, self.shift)


def masked_losses(
    s: Array,
    positive: Array,
    valid: Array | None,
    fmap: LogitMap,
    axis: int,
    xp: Namespace,
) -> tuple[Array, MaskedStats]:
    """Per-anchor losses along one direction (0 for anchors without a positive)."""
    shift = fmap.shift(s, valid, axis, xp)
    shift_b = None if shift is None else along(shift, axis)
    sums = masked_sums(s, positive, valid, shift_b, fmap, axis, xp)
    return masked_finish(*sums, shift, fmap, xp)


def masked_sums(
    s: Array,
    positive: Array,
    valid: Array | None,
    shift_b: Array | None,
    fmap: LogitMap,
    axis: int,
    xp: Namespace,
) -> tuple[Array, Array, Array, Array]:
    """``(N_i, Q_i, |P(i)|, Σ_{p∈P(i)} log R_ip)`` along ``axis``, ratios taken relative to
    the broadcast shift ``shift_b``. Plain sums: partial sums over blocks of the matrix add
    up (after rescaling to a common shift, for the temperature map)."""
    ratio = fmap.ratio(s, shift_b, valid, xp)
    zero = scalar(0.0, s, xp)
    negatives = xp.sum(xp.where(positive, zero, ratio), axis=axis)
    positives = xp.sum(xp.where(positive, ratio, zero), axis=axis)
    count = xp.sum(xp.astype(positive, s.dtype), axis=axis)
    log_sum = xp.sum(fmap.log_ratio(s, ratio, shift_b, positive, xp), axis=axis)
    return negatives, positives, count, log_sum


def masked_finish(
    negatives: Array,
    positives: Array,
    count: Array,
    log_sum: Array,
    shift: Array | None,
    fmap: LogitMap,
    xp: Namespace,
) -> tuple[Array, MaskedStats]:
    """Per-anchor losses from the finished sums (0 for anchors without a positive)."""
    has_positive = count > 0
    mean_log = log_sum / _safe(count, has_positive, xp)
    loss = fmap.anchor_loss(negatives, _safe(positives, has_positive, xp), mean_log, xp)
    loss = xp.where(has_positive, loss, scalar(0.0, loss, xp))
    return loss, MaskedStats(negatives, positives, count, shift)


def masked_gradient(
    s: Array,
    positive: Array,
    valid: Array | None,
    fmap: LogitMap,
    directions: tuple[tuple[int, MaskedStats, Array], ...],
    xp: Namespace,
) -> Array:
    """``G = ∂(Σ_i A_i L_i)/∂S`` summed over directions ``(axis, stats, A)``.

    ``A`` must already be 0 for anchors without a positive.
    """
    spread = None  # G on the non-positive candidates
    on_positive = None  # G on the positives
    for axis, st, coef in directions:
        has_positive = st.count > 0
        scaled = along(coef / _safe(st.negatives + st.positives, has_positive, xp), axis)
        safe_count = _safe(st.count, has_positive, xp)
        shift_b = None if st.shift is None else along(st.shift, axis)
        w = fmap.scaled_weight(s, shift_b, valid, scaled, xp)
        spread = w if spread is None else spread + w
        centred = fmap.ratio(s, shift_b, valid, xp)
        centred -= along(st.positives / safe_count, axis)
        centred -= along(st.negatives / safe_count, axis)
        centred *= scaled
        centred = fmap.times_slope(centred, s, xp)
        on_positive = centred if on_positive is None else on_positive + centred
    return xp.where(positive, on_positive, spread)
