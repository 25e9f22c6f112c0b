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
weights come back masked: 0 outside the candidate set, computed without touching
``atanh(±1)`` or ``exp`` of an excluded entry (SPEC §2.5).
"""

from __future__ import annotations

from ._namespace import Array, Namespace, scalar
from ._options import Options


def _masked(values: Array, mask: Array | None, xp: Namespace) -> Array:
    return values if mask is None else xp.where(mask, values, scalar(0.0, values, xp))


class ArctanhMap:
    """``ℓ = 2·atanh(clip(s, -b, b))``, the temperature-free map."""

    needs_shift = False

    def __init__(self, options: Options, float64: bool) -> None:
        self.bound = options.clip_bound(float64)

    def _clip(self, s: Array, xp: Namespace) -> Array:
        return xp.clip(s, -self.bound, self.bound)

    def shift(self, s: Array, valid: Array | None, axis: int, xp: Namespace) -> None:
        return None

    def ratio(self, s: Array, shift: None, valid: Array | None, xp: Namespace) -> Array:
        """``R = (1+c)/(1-c) = exp(φ(c))``: no ``exp``, ``log`` or ``atanh`` per element."""
        c = self._clip(s, xp)
        return _masked((1 + c) / (1 - c), valid, xp)

    def log_ratio(
        self, s: Array, ratio: Array, shift: None, positive: Array, xp: Namespace
    ) -> Array:
        """``log R`` on the positives, 0 elsewhere; the log of the very ratios summed into ``Q``."""
        return xp.log(xp.where(positive, ratio, scalar(1.0, ratio, xp)))

    def single_log_ratio(self, s_positive: Array, shift: None, xp: Namespace) -> None:
        """With one positive ``log Q = log R_p``: the loss needs no log-ratio at all."""
        return None

    def slope(self, s: Array, xp: Namespace) -> Array:
        """``φ'(s) = 2/(1-s²)`` for ``-b <= s <= b`` (bounds included), else 0."""
        c = self._clip(s, xp)
        return xp.where(c == s, 2 / ((1 - c) * (1 + c)), scalar(0.0, s, xp))

    def weight(self, s: Array, shift: None, valid: Array | None, xp: Namespace) -> Array:
        """``R·φ' = 2/(1-c)²`` inside the clip, else 0 (one division, no cancellation)."""
        c = self._clip(s, xp)
        one_minus = 1 - c
        inside = c == s if valid is None else xp.logical_and(c == s, valid)
        return xp.where(inside, 2 / (one_minus * one_minus), scalar(0.0, s, xp))

    def anchor_loss(
        self, negatives: Array, positives: Array, mean_log_positive: Array | None, xp: Namespace
    ) -> Array:
        """``L = log1p(N/Q) + (log Q - mean_p log R_p)``.

        ``N`` sums the non-positive candidates' ratios, ``Q`` the positives'. The bracket is
        0 for one positive (``mean_log_positive=None``), so a tiny loss keeps its relative
        precision; for several positives it is ``>= log|P|`` and nothing cancels.
        """
        loss = xp.log1p(negatives / positives)
        if mean_log_positive is None:
            return loss
        return loss + (xp.log(positives) - mean_log_positive)


class TemperatureMap:
    """``ℓ = s/τ``, the InfoNCE baseline (for comparisons and peer checks)."""

    needs_shift = True

    def __init__(self, options: Options, float64: bool) -> None:
        assert options.temperature is not None
        self.temperature = options.temperature

    def shift(self, s: Array, valid: Array | None, axis: int, xp: Namespace) -> Array:
        """``m``: the largest candidate logit of each anchor (0 for an anchor with none)."""
        logit = s / self.temperature
        if valid is not None:
            logit = xp.where(valid, logit, scalar(-float("inf"), s, xp))
        m = xp.max(logit, axis=axis)
        return xp.where(xp.isfinite(m), m, scalar(0.0, m, xp))

    def ratio(self, s: Array, shift: Array, valid: Array | None, xp: Namespace) -> Array:
        """``R = exp(s/τ - m)``; excluded entries become ``exp(-inf) = 0`` before they overflow."""
        exponent = s / self.temperature - shift
        if valid is not None:
            exponent = xp.where(valid, exponent, scalar(-float("inf"), s, xp))
        return xp.exp(exponent)

    def log_ratio(
        self, s: Array, ratio: Array, shift: Array, positive: Array, xp: Namespace
    ) -> Array:
        """``s/τ - m`` on the positives (never ``log`` of a ratio that may have underflowed)."""
        return xp.where(positive, s / self.temperature - shift, scalar(0.0, s, xp))

    def single_log_ratio(self, s_positive: Array, shift: Array, xp: Namespace) -> Array:
        return s_positive / self.temperature - shift

    def slope(self, s: Array, xp: Namespace) -> Array:
        return xp.ones_like(s) / self.temperature

    def weight(self, s: Array, shift: Array, valid: Array | None, xp: Namespace) -> Array:
        return self.ratio(s, shift, valid, xp) / self.temperature

    def anchor_loss(
        self, negatives: Array, positives: Array, mean_log_positive: Array, xp: Namespace
    ) -> Array:
        """``L = log Z - mean_p log R_p`` with ``Z = Q + N >= 1`` (the row max is a candidate).

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
