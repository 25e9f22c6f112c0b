"""Row normalisation ``u = z / max(‖z‖₂, δ)`` and its vector-Jacobian product (SPEC §2.1)."""

from __future__ import annotations

from ._namespace import Array, Namespace, fuses_elementwise, scalar


def normalize(z: Array, xp: Namespace) -> tuple[Array, Array]:
    """Return ``(u, 1/‖z‖)`` over the last axis (the reciprocal norm keeps a trailing axis
    of size 1, and is 0 for zero rows, ``‖z‖ < δ``, which the gradient skips).

    Every finite row is normalised without overflow or underflow: with ``m = max|z|``,
    ``u = (z/m) / ‖z/m‖`` (``1 <= ‖z/m‖ <= √D``) and ``1/‖z‖ = (1/m) / ‖z/m‖``; the norm
    itself, which exceeds the dtype's range for entries near its maximum (±2e38 in
    float32), is never formed. ``m`` comes from two reductions (``max z``, ``-min z``)
    rather than an ``|z|`` temporary: for rows this wide every matrix-sized temporary
    costs as much as the arithmetic on it. Zero rows are ``u = z / δ``.
    """
    largest = xp.maximum(xp.max(z, axis=-1, keepdims=True), -xp.min(z, axis=-1, keepdims=True))
    one = scalar(1.0, largest, xp)
    prescale = None
    if fuses_elementwise(xp):
        # XLA divides by multiplying with the reciprocal, and 1/m is subnormal, hence
        # flushed to 0, for m > 2^126 (float32) or 2^1022 (float64): bring such rows down
        # by an exact power of two first
        prescale = xp.where(largest > 2.0**64, scalar(2.0**-64, largest, xp), one)
        z = z * prescale
        largest = largest * prescale
    safe_largest = xp.where(largest > 0, largest, one)
    u = z / safe_largest  # a division: 1/m overflows for a subnormal m
    root = xp.sqrt(xp.sum(u * u, axis=-1, keepdims=True))
    safe_root = xp.where(root > 0, root, one)
    floor = 1e-12  # δ (_options.NORM_FLOOR) as a literal: a traced constant, not a global
    live = largest >= floor / safe_root  # ‖z‖ = m·‖z/m‖ >= δ
    inverse = xp.where(live, 1 / xp.where(live, safe_largest, one) / safe_root,
                       scalar(0.0, largest, xp))
    # per row: 1/‖z/m‖ for a live row, m/δ for a zero row (whose u is then z/δ)
    u *= xp.where(live, 1 / safe_root, xp.where(live, one, safe_largest) / floor)
    if prescale is not None:
        inverse = inverse * prescale
    return u, inverse


def normalize_vjp(u: Array, inverse_norm: Array, du: Array, xp: Namespace) -> Array:
    """``dz = (du - u·⟨u, du⟩)/‖z‖`` from the reciprocal norm of :func:`normalize`, which
    is 0 for zero rows (a degenerate row does not train; the exact derivative ``du/δ``
    would be ~1e12)."""
    dz = u * xp.sum(u * du, axis=-1, keepdims=True)
    dz -= du
    dz *= -inverse_norm
    return dz
