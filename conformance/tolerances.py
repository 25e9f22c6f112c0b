"""How close an implementation must come to the golden values, per input dtype.

An actual array ``a`` is compared with the exact expected array ``e`` element by element:

    error = max_k |a_k − e_k| / (atol + rtol · scale_k)

with ``scale`` normwise by default (one number for the whole array):

- ``kind="loss"``: ``max(max_k |e_k|, 1)``, so a loss near 0 is judged absolutely;
- ``kind="grad"``: ``max_k |e_k|``, or, when given, a scale per row (the golden files'
  ``grad_scales``: Σ|dL/dS| over the pairs touching the row / ‖z_row‖), which keeps rows of
  very different norms (1e-10 next to 1e30) each judged at their own size.

``compare`` returns the worst ``error``: ≤ 1 passes. Shapes that differ, or a NaN or an
infinity where the expected value is finite, give ``inf``.

The table is a first proposal from the arithmetic, to be tuned by measurement:

- the loss is returned in the compute dtype (float32 for float16 / bfloat16 / float32 inputs,
  whose golden inputs are exactly representable), so half inputs share float32's loss row;
  rtol ≈ a few hundred units of round-off of the compute dtype (logits up to ~15 for the
  arctanh map, ~100 for temperature 0.01; φ'(s) = 2/(1 − s²) amplifies an error in S by
  up to 1/(1 − |s|) near the clip bound);
- gradients are cast to the input dtype: float16 adds 2^-11 ≈ 4.9e-4 relative rounding and
  flushes below 2^-24 ≈ 6e-8 (hence its atol), bfloat16 adds 2^-8 ≈ 3.9e-3.

First measurement (a plain NumPy implementation of SPEC §2 on CPU, every golden case, gradient
with the per-row scale): worst error / tolerance 0.002 (float64 loss), 3e-4 (float64 grad),
0.2 (float32 loss), 0.08 (float32 grad), 0.5 (float16 grad), 0.2 (bfloat16 grad).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """error = |actual − expected| / (atol + rtol · scale)."""

    rtol: float
    atol: float


TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "float64": {
        "loss": Tolerance(rtol=1e-12, atol=0.0),
        "grad": Tolerance(rtol=1e-10, atol=1e-300),
    },
    "float32": {"loss": Tolerance(rtol=1e-5, atol=0.0), "grad": Tolerance(rtol=1e-4, atol=1e-37)},
    "float16": {"loss": Tolerance(rtol=1e-5, atol=0.0), "grad": Tolerance(rtol=2e-3, atol=6e-8)},
    "bfloat16": {
        "loss": Tolerance(rtol=1e-5, atol=0.0),
        "grad": Tolerance(rtol=1.6e-2, atol=1e-37),
    },
}
"""Per input dtype, per kind ("loss" or "grad")."""


def as_float64(values: Any) -> np.ndarray:
    """A float64 array from numbers, decimal strings or ``float.hex()`` strings (nested lists)."""
    arr = np.asarray(values, dtype=object)
    flat = [
        float.fromhex(v) if isinstance(v, str) and "0x" in v.lower() else float(v)
        for v in arr.ravel()
    ]
    return np.array(flat, dtype=np.float64).reshape(arr.shape)


def compare(
    actual: Any, expected: Any, dtype: str, kind: str, *, scale: Any | None = None
) -> float:
    """Worst error over tolerance of ``actual`` against ``expected`` (≤ 1 passes).

    ``dtype`` is the input dtype ("float64", "float32", "float16", "bfloat16"), ``kind`` is
    "loss" or "grad"; ``scale`` (optional, shape ``expected.shape[:-1]``) gives one scale per
    row of a gradient instead of the normwise one.
    """
    tol = TOLERANCES[dtype][kind]
    e = as_float64(expected)
    a = (
        np.asarray(actual, dtype=np.float64)
        if not isinstance(actual, (str, list))
        else as_float64(actual)
    )
    if a.shape != e.shape:
        return float("inf")
    if not np.all(np.isfinite(a)):
        return float("inf")
    if e.size == 0:
        return 0.0
    if scale is not None:
        size = np.broadcast_to(as_float64(scale)[..., None], e.shape)
    else:
        top = float(np.max(np.abs(e)))
        size = np.full(e.shape, max(top, 1.0) if kind == "loss" else top)
    return float(np.max(np.abs(a - e) / (tol.atol + tol.rtol * size)))
