"""Hyper-parameters of the loss, validated once and frozen (hashable: usable as a static
argument under ``jax.jit`` and as a closure constant under ``tf.function``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

LOGIT_MAPS = ("arctanh", "temperature")
REDUCTIONS = ("mean", "sum", "none")
DEFAULT_EPS = 1e-6
"""The default ``eps`` of every loss and of ``logits``: similarities are clipped to
``[-b, b]``, ``b`` the largest compute-dtype value ``<= 1 - eps``, which caps the logit
``2·atanh(b)`` at 14.508657 in float64 and 14.495466 in float32 (SPEC §2.4)."""
NORM_FLOOR = 1e-12
"""δ of SPEC §2.1: rows with a smaller norm are "zero rows" (as torch's ``F.normalize``)."""


@dataclass(frozen=True)
class Options:
    """The hyper-parameters shared by every loss (SPEC §2.4, §2.7, §2.9)."""

    logit_map: str = "arctanh"
    temperature: float | None = None
    eps: float = DEFAULT_EPS
    reduction: str = "mean"

    def clip_bound(self, float64: bool) -> float:
        """``b``: the largest compute-dtype value ``<= 1 - eps`` (SPEC §2.4)."""
        return clip_bound(self.eps, float64=float64)


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def make_options(
    *,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
) -> Options:
    """Validate the hyper-parameters and freeze them.

    Raises ``ValueError`` / ``TypeError`` naming the argument, the value it got and what
    it needs.
    """
    if logit_map not in LOGIT_MAPS:
        raise ValueError(f"logit_map must be one of {LOGIT_MAPS}; got {logit_map!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if logit_map == "temperature":
        if temperature is None:
            raise ValueError(
                "temperature is required with logit_map='temperature' (a float > 0); got None"
            )
        if not _is_real_number(temperature):
            raise TypeError(
                f"temperature must be a Python float > 0; got {type(temperature).__name__}"
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite float > 0; got {temperature!r}")
        temperature = float(temperature)
    elif temperature is not None:
        raise ValueError(
            "temperature is only used with logit_map='temperature'; the default map "
            f"'arctanh' has no temperature. Got temperature={temperature!r}"
        )
    if not _is_real_number(eps):
        raise TypeError(f"eps must be a Python float in (0, 0.5); got {type(eps).__name__}")
    eps = float(eps)
    if not (0.0 < eps < 0.5):
        raise ValueError(f"eps must lie in the open interval (0, 0.5); got {eps!r}")
    return Options(logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction)


def check_for_dtype(options: Options, float64: bool) -> None:
    """The options against the compute dtype: ``1 - eps`` must stay below 1 (SPEC §2.4,
    else the clip is void); ``temperature`` must be at least the dtype's smallest normal
    number, so that the logit differences ``(s - s')/τ`` of cosine similarities
    (``|s - s'| <= 2``) stay within its range."""
    real = np.float64 if float64 else np.float32
    name = "float64" if float64 else "float32"
    if options.logit_map != "arctanh":
        smallest = float(np.finfo(real).tiny)
        if options.temperature < smallest:
            raise ValueError(
                f"temperature={options.temperature!r} is too small for the {name} compute "
                f"dtype: it must be at least {smallest:.4g}, its smallest normal number "
                "(below it the logits s/τ leave the dtype's range)"
            )
        return
    if real(1.0 - options.eps) >= 1.0:
        tiny = float(np.finfo(real).epsneg)
        raise ValueError(
            f"eps={options.eps!r} is too small for the {name} compute dtype: 1 - eps rounds "
            f"to 1, so the logit would be unbounded; eps needs to be at least about {tiny:.3g}"
        )


def clip_bound(eps: float, *, float64: bool) -> float:
    """The clip bound ``b``: the largest float32 (or float64) value ``<= 1 - eps``,
    computed exactly (SPEC §2.4).

    Every loss clips its cosine similarities to ``[-b, b]`` before the logit map, so the
    largest logit is ``2·atanh(b)`` and a pair beyond the bound gets no gradient through
    the map. Use it to tell whether a batch has collapsed past the clip (see the
    Troubleshooting page).

    Args:
        eps: The loss's ``eps`` (``DEFAULT_EPS`` by default), in ``(0, 0.5)``.
        float64: ``True`` for float64 inputs, ``False`` for the float32 compute dtype
            (float16, bfloat16 and float32 inputs).

    Returns:
        ``b`` as a Python float.

    Examples:
        ```python
        import math

        import tfree_core

        b = tfree_core.clip_bound(tfree_core.DEFAULT_EPS, float64=False)
        assert b <= 1 - 1e-6
        assert math.isclose(2 * math.atanh(b), 14.495466, rel_tol=1e-7)  # the float32 cap
        ```
    """
    real = np.float64 if float64 else np.float32
    exact = 1 - Fraction(eps)
    bound = real(1.0 - eps)
    while Fraction(float(bound)) > exact:
        bound = np.nextafter(bound, real(0))
    while Fraction(float(np.nextafter(bound, real(2)))) <= exact:
        bound = np.nextafter(bound, real(2))
    return float(bound)


AUTO_CHUNK = "auto"


def check_chunk_size(chunk_size: object) -> int | str | None:
    """Validate ``chunk_size``: ``None`` (untiled), ``"auto"`` or a positive int.

    Integers of any integer type become a Python ``int`` (hashable, a static constant).
    """
    if chunk_size is None:
        return None
    if isinstance(chunk_size, str):
        if chunk_size == AUTO_CHUNK:
            return AUTO_CHUNK
        raise ValueError(
            f"chunk_size must be a positive int, {AUTO_CHUNK!r} or None; got {chunk_size!r}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(
            f"chunk_size must be a positive int, {AUTO_CHUNK!r} or None; "
            f"got {type(chunk_size).__name__}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per block); got {chunk_size}")
    return int(chunk_size)
