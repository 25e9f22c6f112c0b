"""Row normalisation ``u = z / max(‖z‖₂, δ)`` and its vector-Jacobian product (SPEC §2.1)."""

from __future__ import annotations

from ._namespace import Array, Namespace, scalar
from ._options import NORM_FLOOR


def normalize(z: Array, xp: Namespace) -> tuple[Array, Array]:
    """Return ``(u, ‖z‖)`` over the last axis; the norm keeps a trailing axis of size 1.

    The norm is ``m·‖z/m‖`` with ``m = max|z|``, so no finite row overflows or underflows
    when squared (1e±30 in float32, 1e±300 in float64).
    """
    largest = xp.max(xp.abs(z), axis=-1, keepdims=True)
    safe_largest = xp.where(largest > 0, largest, scalar(1.0, largest, xp))
    scaled = z / safe_largest
    norm = largest * xp.sqrt(xp.sum(scaled * scaled, axis=-1, keepdims=True))
    return z / xp.maximum(norm, scalar(NORM_FLOOR, norm, xp)), norm


def normalize_vjp(u: Array, norm: Array, du: Array, xp: Namespace) -> Array:
    """``dz = (du - u·⟨u, du⟩)/‖z‖``, and 0 for zero rows (``‖z‖ < δ``: a degenerate row
    does not train; the exact derivative ``du/δ`` would be ~1e12)."""
    live = norm >= NORM_FLOOR
    safe_norm = xp.where(live, norm, scalar(1.0, norm, xp))
    radial = xp.sum(u * du, axis=-1, keepdims=True)
    return xp.where(live, (du - u * radial) / safe_norm, scalar(0.0, du, xp))
