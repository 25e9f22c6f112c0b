"""How one call is evaluated: the whole similarity matrix at once, or in row blocks.

``chunk_size="auto"`` (the default of every loss) is resolved once, from the static shapes
and the kind of device, into ``None`` (untiled) or a number of rows per block:

* untiled while the ``N × M`` matrix ``S`` takes at most :data:`UNTILED_BYTES` of the
  device kind (three matrix products; the matrix is kept for the backward);
* otherwise tiled, with the most rows whose block of ``S`` takes at most
  :data:`BLOCK_BYTES` of the device kind (four matrix products, ``S`` recomputed block by
  block in the backward; no ``N × M`` array), and on a CPU never fewer than ``D`` rows
  (:data:`WIDE_ROWS_KINDS`).

The budgets depend on the kind of device and on whether element-wise work is fused:

* ``"cpu"`` (NumPy, PyTorch, TensorFlow: one pass over memory per operation): both budgets
  are 8 MiB. A block that size stays in the cache between the passes over it, while each
  fresh ``N × N`` temporary of the untiled path costs its page faults again (measured on a
  2-core CPU at ``N = 4096``, ``D = 128``, float32: 512-row blocks ran loss + gradient
  1.9× faster than the whole matrix in PyTorch). When the gradient is computed in the
  loss's pass (one direction, a scalar reduction: ``_tiled.value_and_grad``), blocks take
  4 MiB: the pass holds the ratios and the weights of a block at once;
* ``"fused_cpu"`` (JAX on a CPU: XLA folds the element-wise chains into the reductions
  that consume them, so the untiled path writes few matrices and the fourth matrix
  product of tiling is not repaid): untiled up to 256 MiB, then 64 MiB blocks;
* ``"accelerator"``: the extra matrix product costs more than memory traffic saves, so the
  matrix stays whole up to 1 GiB and larger problems are cut into 64 MiB blocks.
"""

from __future__ import annotations

from ._options import AUTO_CHUNK

CPU, FUSED_CPU, ACCELERATOR = "cpu", "fused_cpu", "accelerator"

UNTILED_BYTES = {CPU: 8 * 2**20, FUSED_CPU: 256 * 2**20, ACCELERATOR: 2**30}
"""``chunk_size="auto"``: the largest similarity matrix evaluated untiled, per device kind."""

BLOCK_BYTES = {CPU: 8 * 2**20, FUSED_CPU: 64 * 2**20, ACCELERATOR: 64 * 2**20}
"""``chunk_size="auto"``: the size of one block of ``S`` in tiled evaluation."""

ONE_PASS_BLOCK_BYTES = {**BLOCK_BYTES, CPU: 4 * 2**20}
"""The same when the gradient is computed in the loss's pass (``_tiled.value_and_grad``):
a block then holds twice the block-sized temporaries (ratios and weights together), so on
a CPU it takes half the bytes to keep the same working set in the cache."""


MIN_ROWS = 128
"""Fewer rows per block make the block's matrix products inefficient; per-row negatives,
whose block gathers ``rows × M × D`` values, are exempt."""

WIDE_ROWS_KINDS = (CPU,)
"""Device kinds whose blocks take at least ``D`` rows: every block reads the ``M × D``
candidates twice and updates their ``M × D`` gradient once, so with fewer than ``D`` rows
that traffic outweighs the block's own (measured with PyTorch on a 2-core CPU, one-pass
loss + gradient: ``N = 1024``, ``M = 8192``, ``D = 768``: 128-row blocks 374 ms, 512-row
blocks 283 ms, untiled 310 ms; ``N = M = 4096``, ``D = 512``: 256 rows 392 ms, 512 rows
369 ms)."""


def device_kind(device: object) -> str | None:
    """``"cpu"`` for a host device (by its name: NumPy's ``"cpu"``, torch's ``cpu``, JAX's
    ``cpu:0``, TensorFlow's ``/device:CPU:0``), ``"accelerator"`` for any other, ``None``
    where the device is unknown (``None`` under ``jax.jit``, ``""`` in a ``tf.function``
    graph): the backend then says which kind it compiles for."""
    if device is None or device == "":
        return None
    return CPU if "cpu" in str(device).lower() else ACCELERATOR


def resolve_chunk_size(
    chunk_size: int | str | None,
    *,
    n: int | None,
    m: int | None,
    depth: int,
    float64: bool,
    kind: str,
    one_pass: bool = False,
    features: int = 0,
) -> int | None:
    """The evaluation of a call: ``None`` (untiled) or rows per block.

    ``n`` anchors against ``m`` candidates (``None`` where a shape is not static: untiled);
    ``depth`` is ``D`` for per-row negatives, whose ``(rows, M, D)`` gather is part of the
    block, else 0. ``one_pass``: the gradient is computed in the loss's pass
    (:data:`ONE_PASS_BLOCK_BYTES`). ``features``: the embeddings' ``D`` (0 if unknown),
    the fewest rows of a block on :data:`WIDE_ROWS_KINDS`. An explicit ``chunk_size`` is
    kept as given.
    """
    if chunk_size != AUTO_CHUNK:
        return chunk_size  # type: ignore[return-value]
    if kind not in UNTILED_BYTES:
        raise ValueError(f"device_kind must be one of {tuple(UNTILED_BYTES)}; got {kind!r}")
    if n is None or m is None:
        return None
    per_row = m * (8 if float64 else 4) * (1 + depth)
    if n * per_row <= UNTILED_BYTES[kind]:
        return None
    budget = (ONE_PASS_BLOCK_BYTES if one_pass else BLOCK_BYTES)[kind]
    fewest = 1 if depth else max(MIN_ROWS, features if kind in WIDE_ROWS_KINDS else 0)
    most = max(fewest, budget // per_row)
    blocks = -(-n // most)
    return -(-n // blocks)  # balanced: the last block is no smaller than it must be
