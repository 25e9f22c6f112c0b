"""The NumPy candidates of ``python -m benchmarks``: ``tfree_core`` on NumPy (the reference
implementation, analytic gradient), untiled and tiled, against the three matrix products of
the same shapes. NumPy has no autodiff, so there is no plain-formula variant."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import tfree_core


def variants(n: int, d: int, *, chunk: int | str = 256, peer_max_gib: float = 0.0,
             seed: int = 0, peers: bool = True) -> list:
    """tfree (``info_nce_value_and_grad``), tfree tiled (``chunk_size=chunk``), 3 GEMMs."""
    from benchmarks._harness import Variant

    del peer_max_gib, peers
    rng = np.random.default_rng(seed * 7919 + n * 1000 + d)
    q = rng.standard_normal((n, d), dtype=np.float32)
    k = rng.standard_normal((n, d), dtype=np.float32)

    def loss_and_grad(**kw: object) -> Callable[[], object]:
        return lambda: tfree_core.info_nce_value_and_grad(q, k, **kw)

    def floor() -> Callable[[], object]:
        g = rng.standard_normal((n, n), dtype=np.float32)

        def run() -> tuple[np.ndarray, ...]:
            return q @ k.T, g @ k, g.T @ q

        return run

    return [
        Variant("tfree", loss_and_grad),
        Variant("tfree untiled", lambda: loss_and_grad(chunk_size=None)),
        Variant(f"tfree tiled ({chunk})", lambda: loss_and_grad(chunk_size=chunk)),
        Variant("3 GEMMs", floor),
    ]
