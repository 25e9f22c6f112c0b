"""Row normalisation ``u = z / max(‖z‖₂, δ)`` and its vector-Jacobian product (SPEC §2.1)."""

from __future__ import annotations

from ._namespace import Array, Namespace, scalar
from ._options import NORM_FLOOR


def normalize(z: Array, xp: Namespace) -> tuple[Array, Array]:
    """Return ``(u, ‖z‖)`` over the last axis; the norm keeps a trailing axis of size 1.

    The norm is ``m·‖z/m‖`` with ``m = max|z|``, so no finite row overflows or underflows
    when squared (1e±30 in float32, 1e±300 in float64). ``m`` comes from two reductions
    (``max z``, ``-min z``) rather than an ``|z|`` temporary: for rows this wide every
    matrix-sized temporary costs as much as the arithmetic on it.
    """
    largest = xp.maximum(xp.max(z, axis=-1, keepdims=True), -xp.min(z, axis=-1, keepdims=True))
    safe_largest = xp.where(largest > 0, largest, scalar(1.0, largest, xp))
    squares = z / safe_largest  # a division: 1/m overflows for a subnormal m
    squares *= squares
    norm = largest * xp.sqrt(xp.sum(squares, axis=-1, keepdims=True))
    return z * (1 / xp.maximum(norm, scalar(NORM_FLOOR, norm, xp))), norm


def normalize_vjp(u: Array, norm: Array, du: Array, xp: Namespace) -> Array:
    """``dz = (du - u·⟨u, du⟩)/‖z‖``, and 0 for zero rows (``‖z‖ < δ``: a degenerate row
    does not train; the exact derivative ``du/δ`` would be ~1e12). The per-row factor
    ``-1/‖z‖`` (0 on zero rows) multiplies ``u·⟨u, du⟩ - du`` in place."""
    live = norm >= NORM_FLOOR
    factor = xp.where(live, -1 / xp.where(live, norm, scalar(1.0, norm, xp)),
                      scalar(0.0, norm, xp))
    dz = u * xp.sum(u * du, axis=-1, keepdims=True)
    dz -= du
    dz *= factor
    return dz
