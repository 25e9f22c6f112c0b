"""Logit maps: how a cosine similarity becomes a logit (SPEC §2.4, §2.9).

The kernel never evaluates a logit directly. It works with *ratios*
``R = exp(ℓ - shift)`` (the softmax numerators) and the weights ``R·φ'``:

* ``arctanh`` (the temperature-free map): ``ℓ = φ(c)`` with ``c = clip(s, -b, b)`` and
  ``φ(s) = log((1+s)/(1-s)) = 2·atanh(s)``, so ``R = exp(φ(c)) = (1+c)/(1-c)`` exactly and
  no shift is needed: after the clip every ratio lies in ``[ε/2, 2/ε]``.
  ``φ'(s) = 2/(1-s²)`` for ``-b <= s <= b``, 0 outside, and ``R·φ' = 2/(1-c)²``.
* ``temperature`` (the InfoNCE baseline): ``ℓ = s/τ`` and ``R = exp(ℓ - m)`` with ``m`` the
  maximum over the anchor's candidates, because ``exp(1/τ)`` overflows for small τ.

Shifts arrive already broadcast against the matrix (the kernel owns the axes). Ratios and
weights come back masked: 0 outside ``keep`` (``None`` keeps everything), computed without
touching ``atanh(±1)`` or ``exp`` of a dropped entry (SPEC §2.5).

Matrix-sized work is written as few fresh temporaries updated with augmented assignment
(``c *= -1``): in place for NumPy and PyTorch, where each avoided allocation of an N×N
array saves more than the arithmetic costs; plain rebinding for JAX and TensorFlow.
"""

from __future__ import annotations

import numpy as np

from . import _validation as check
from ._namespace import Array, Namespace, fuses_elementwise, scalar, to_compute
from ._options import Options, check_for_dtype, make_options


def _fresh(x: Array, s: Array, xp: Namespace) -> Array:
    """``x`` if it is a new array, else a copy: temporaries are updated in place."""
    return xp.asarray(x, copy=True) if x is s else x


class ArctanhMap:
    """``ℓ = 2·atanh(clip(s, -b, b))``, the temperature-free map."""

    needs_shift = False

    def __init__(self, options: Options, float64: bool) -> None:
        self.bound = options.clip_bound(float64)

    def _clip(self, s: Array, xp: Namespace) -> Array:
        return _fresh(xp.clip(s, -self.bound, self.bound), s, xp)

    def shift(self, s: Array, keep: Array | None, axis: int, xp: Namespace) -> None:
        return None

    def single_shift(self, shift: None, s_positive: Array, xp: Namespace) -> None:
        return None

    def ratio(self, s: Array, shift: None, keep: Array | None, xp: Namespace) -> Array:
        """``R = (1+c)/(1-c) = exp(φ(c))``: no ``exp``, ``log`` or ``atanh`` per element;
        dropped entries become ``c = -1``, hence ``R = 0`` exactly."""
        if fuses_elementwise(xp):
            return self._fused_ratio(s, keep, xp)
        c = self._clip(s, xp)
        if keep is not None:
            c = xp.where(keep, c, scalar(-1.0, c, xp))
        r = 1 + c
        c *= -1
        c += 1
        r /= c
        return r

    def _fused_ratio(self, s: Array, keep: Array | None, xp: Namespace) -> Array:
        """The same ``R``, bit for bit, as ``max(min(1+s, 1+b)/max(1-s, 1-b), R(-b))``:
        inside ``[-b, b]`` the bounds are inactive; above, it is ``(1+b)/(1-b)``; below,
        ``(1+s)/(1-s) < R(-b)`` (rounding is monotonic), so the outer bound gives ``R(-b)``.
        A fusing compiler (XLA) folds this chain into the row sum that consumes it, where
        a clip or a select would first write the whole matrix."""
        real = np.float64 if s.dtype == xp.float64 else np.float32
        upper, lower = real(1) + real(self.bound), real(1) - real(self.bound)
        r = xp.maximum(xp.minimum(1 + s, upper) / xp.maximum(1 - s, lower), lower / upper)
        if keep is not None:
            r = xp.where(keep, r, scalar(0.0, r, xp))
        return r

    def positive_ratio(self, s_positive: Array, shift: None, xp: Namespace) -> Array:
        c = xp.clip(s_positive, -self.bound, self.bound)
        return (1 + c) / (1 - c)

    def log_ratio(
        self, s: Array, ratio: Array, shift: None, positive: Array, xp: Namespace
    ) -> Array:
        """``log R`` on the positives, 0 elsewhere; the log of the very ratios summed into ``Q``."""
        return xp.log(xp.where(positive, ratio, scalar(1.0, ratio, xp)))

    def slope(self, s: Array, xp: Namespace) -> Array:
        """``φ'(s) = 2/(1-s²)`` for ``-b <= s <= b`` (bounds included), else 0."""
        c = xp.clip(s, -self.bound, self.bound)
        return xp.where(c == s, 2 / ((1 - c) * (1 + c)), scalar(0.0, s, xp))

    def times_slope(self, x: Array, s: Array, xp: Namespace) -> Array:
        """``x·φ'(s)``."""
        return x * self.slope(s, xp)

    def scaled_weight(
        self, s: Array, shift: None, keep: Array | None, scaled: Array, xp: Namespace
    ) -> Array:
        """``scaled·R·φ'`` (``scaled``: broadcast per anchor)."""
        w = self.weight(s, None, keep, xp)
        w *= scaled
        return w

    def weight(self, s: Array, shift: None, keep: Array | None, xp: Namespace) -> Array:
        """``R·φ' = 2/(1-c)²`` inside the clip and in ``keep``, else 0.

        Dropped and clamped entries are sent to ``c = -inf`` first, where the same
        arithmetic gives exactly 0: one mask, one selection.
        """
        c = self._clip(s, xp)
        inside = c == s
        if keep is not None:
            inside = xp.logical_and(inside, keep)
        c = xp.where(inside, c, scalar(-float("inf"), c, xp))
        c *= -1
        c += 1
        c *= c
        c **= -1
        c *= 2
        return c

    def ratio_and_weight(
        self, s: Array, keep: Array | None, xp: Namespace
    ) -> tuple[Array, Array]:
        """``(R, R·φ')`` as :meth:`ratio` and :meth:`weight` give them, bit for bit, from
        one clip and one ``1 - c``: for a pass that needs both (the gradient computed with
        the loss), two fewer matrix-sized temporaries and four fewer passes over them."""
        if fuses_elementwise(xp):
            return self.ratio(s, None, keep, xp), self.weight(s, None, keep, xp)
        c = self._clip(s, xp)
        inside = c == s
        if keep is not None:
            inside = xp.logical_and(inside, keep)
            c = xp.where(keep, c, scalar(-1.0, c, xp))
        d = 1 - c  # (as weight's in-place negate-and-add-one: the same rounding)
        r = c
        r += 1
        r /= d
        w = xp.where(inside, d, scalar(float("inf"), d, xp))
        w *= w
        w **= -1
        w *= 2
        return r, w

    def single_loss(
        self, negatives: Array, s_positive: Array, shift: None, xp: Namespace
    ) -> Array:
        """One positive: ``L = log1p(N/R_p)``, no cancellation however small the loss."""
        return xp.log1p(negatives / self.positive_ratio(s_positive, None, xp))

    def anchor_loss(
        self, negatives: Array, positives: Array, mean_log_positive: Array, xp: Namespace
    ) -> Array:
        """``L = log1p(N/Q) + (log Q - mean_p log R_p)``.

        ``N`` sums the non-positive candidates' ratios, ``Q`` the positives'. The bracket is
        0 for one positive (both terms are logs of the same number) and ``>= log|P|`` for
        several, so nothing cancels.
        """
        return xp.log1p(negatives / positives) + (xp.log(positives) - mean_log_positive)


class TemperatureMap:
    """``ℓ = s/τ``, the InfoNCE baseline (for comparisons and peer checks).

    The max-shift ``m`` is kept in similarity units and every exponent is formed as
    ``(s - m)/τ <= 0``: ``s/τ`` itself is never computed, so no ``inf - inf`` arises at a
    tiny ``τ`` or a huge similarity (``loss_from_similarity`` takes any ``S``); an
    exponent past the dtype's range is ``-inf``, whose ratio is exactly 0. Derivatives
    divide by ``τ`` last (``x/τ``, never ``x·(1/τ)``), so a zero stays zero.
    """

    needs_shift = True

    def __init__(self, options: Options, float64: bool) -> None:
        assert options.temperature is not None
        self.temperature = options.temperature

    def shift(self, s: Array, keep: Array | None, axis: int, xp: Namespace) -> Array:
        """``m``: the largest kept similarity of each anchor (0 for an anchor with none)."""
        m = self.block_max(s, keep, axis, xp)
        return xp.where(xp.isfinite(m), m, scalar(0.0, m, xp))

    def block_max(self, s: Array, keep: Array | None, axis: int, xp: Namespace) -> Array:
        """The largest kept similarity along ``axis``, ``-inf`` where nothing is kept (the
        neutral element of a running maximum over blocks of the matrix)."""
        if keep is not None:
            s = self.block_max_input(s, keep, xp)
        return xp.max(s, axis=axis)

    def block_max_input(self, s: Array, keep: Array, xp: Namespace) -> Array:
        """``s`` with its dropped entries at ``-inf``: their exponent is ``-inf`` whatever
        the shift, so this one array serves the maximum and the ratios."""
        return xp.where(keep, s, scalar(-float("inf"), s, xp))

    def rescale(self, m_old: Array, m_new: Array, xp: Namespace) -> Array:
        """``e^((m_old - m_new)/τ)``: sums taken relative to ``m_old``, moved to ``m_new``
        (0 where ``m_old`` is still ``-inf``)."""
        return xp.exp((m_old - m_new) / self.temperature)

    def logit(self, difference: Array, xp: Namespace) -> Array:
        """A difference of similarities as a difference of logits, ``Δs/τ``."""
        return difference / self.temperature

    def single_shift(self, shift: Array, s_positive: Array, xp: Namespace) -> Array:
        """With the positive outside the matrix: ``m = max(m_negatives, s_p)``.

        Given the raw maximum (``-inf`` for an anchor without negatives), ``m = s_p``
        there, so ``Q = 1`` and ``L = log1p(0) = 0`` exactly (a 0 fallback would leave
        ``Q = e^(s_p/τ)``, which rounds ``(Q - 1) + N`` to -1 for a far-off positive)."""
        return xp.maximum(shift, s_positive)

    def ratio(self, s: Array, shift: Array, keep: Array | None, xp: Namespace) -> Array:
        """``R = exp((s - m)/τ)``; dropped entries become ``exp(-inf) = 0``."""
        exponent = s - shift
        exponent /= self.temperature
        if keep is not None:
            exponent = xp.where(keep, exponent, scalar(-float("inf"), s, xp))
        return xp.exp(exponent)

    def positive_ratio(self, s_positive: Array, shift: Array, xp: Namespace) -> Array:
        return xp.exp((s_positive - shift) / self.temperature)

    def log_ratio(
        self, s: Array, ratio: Array, shift: Array, positive: Array, xp: Namespace
    ) -> Array:
        """``(s - m)/τ`` on the positives (never ``log`` of a ratio that may have
        underflowed)."""
        return xp.where(positive, (s - shift) / self.temperature, scalar(0.0, s, xp))

    def times_slope(self, x: Array, s: Array, xp: Namespace) -> Array:
        """``x·φ'(s) = x/τ``."""
        return x / self.temperature

    def scaled_weight(
        self, s: Array, shift: Array, keep: Array | None, scaled: Array, xp: Namespace
    ) -> Array:
        """``scaled·R·φ' = (scaled·R)/τ`` (``scaled``: broadcast per anchor)."""
        return self.weight_from_ratio(self.ratio(s, shift, keep, xp), scaled, xp)

    def weight_from_ratio(self, ratio: Array, scaled: Array, xp: Namespace) -> Array:
        """``scaled·R/τ`` from the ratios themselves (overwritten in place)."""
        ratio *= scaled
        ratio /= self.temperature
        return ratio

    def single_loss(
        self, negatives: Array, s_positive: Array, shift: Array, xp: Namespace
    ) -> Array:
        log_positive = (s_positive - shift) / self.temperature
        return self.anchor_loss(negatives, xp.exp(log_positive), log_positive, xp)

    def anchor_loss(
        self, negatives: Array, positives: Array, mean_log_positive: Array, xp: Namespace
    ) -> Array:
        """``L = log Z - mean_p log R_p`` with ``Z = Q + N >= 1`` (the max is a candidate).

        ``log1p((Q - 1) + N)`` is exact when the positive is the maximum (``Q = 1``), where
        the loss can be tiny; ``Q`` never divides, since it may underflow for a far-off
        positive while the loss stays finite.
        """
        return xp.log1p((positives - 1) + negatives) - mean_log_positive


LogitMap = ArctanhMap | TemperatureMap


def make_map(options: Options, float64: bool) -> LogitMap:
    if options.logit_map == "arctanh":
        return ArctanhMap(options, float64)
    return TemperatureMap(options, float64)


def logits(similarity: Array, eps: float, xp: Namespace) -> Array:
    """``φ(clip(s, -b, b))`` in the compute dtype (SPEC §2.4), ``eps`` validated first."""
    options = make_options(eps=eps)
    check.check_floating("similarity", similarity, xp)
    float64 = similarity.dtype == xp.float64
    check_for_dtype(options, float64)
    bound = options.clip_bound(float64)
    c = xp.clip(to_compute(similarity, xp), -bound, bound)
    return xp.log1p(c) - xp.log1p(-c)


def logit_slope(similarity: Array, eps: float, xp: Namespace) -> Array:
    """``φ'(s) = 2/(1 - s²)`` inside ``[-b, b]`` (bounds included), 0 outside, in the
    compute dtype: the derivative of :func:`logits` that backends register."""
    s = to_compute(similarity, xp)
    return ArctanhMap(make_options(eps=eps), s.dtype == xp.float64).slope(s, xp)
