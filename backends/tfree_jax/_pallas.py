"""Fused Pallas kernels for the temperature-free loss (``kernel="fused"``).

Two kernels, each one sweep over tiles of ``S = U_a·U_cᵀ`` computed in the compute dtype
(float32, or float64 for float64 inputs; matrix products at ``Precision.HIGHEST``, IEEE
float32 on GPUs, no TF32), never an ``N × M`` array in memory (``engine.TileKernel`` states
the formulas; the engine normalises, clips the positives, reduces and goes back through
the normalisation):

* :func:`_sums_kernel`: per block of rows of ``X``, stream the tiles of ``Y`` and
  accumulate ``N_x = Σ_y keep_xy·(1+c)/(1-c)``, ``c = clip(⟨X_x, Y_y⟩, -b, b)``: the
  bounded ratios need no running maximum and no ``exp``/``log``/``atanh`` per element.
  The row sums are one launch (``X = U_a``, ``Y = U_c``); the column sums of a symmetric
  loss a second one with the roles swapped (each side drops the other side's indices
  given by ``engine.exclusions``, so both launches see the same candidates).
  Two launches
  instead of one with atomic column updates: no atomics, so the sums are deterministic
  and the kernel is the same in the interpreter and on a GPU.
* :func:`_grad_kernel`: ``out_x = Σ_y (s_x + t_y)·keep_xy·2/(1-c_xy)²·Y_y`` (0 where the
  clip is active, SPEC §2.4), recomputing the tiles: ``dU_a = G·U_c`` is one launch,
  ``dU_c = Gᵀ·U_a`` another with the roles swapped.

Both run on a grid over row blocks of ``X`` with a ``lax.fori_loop`` over column blocks
(the layout of Pallas' own GPU attention kernels), lowered through Triton
(``compiler_params`` selects it: JAX's default GPU lowering is Mosaic GPU). Rows and the
feature axis are zero-padded to the tile sizes (the feature axis to a power of two, at
least 16); padded rows are masked out. Extra memory ``O((N + M)·D)`` for the padded
copies, ``O(N + M)`` besides.

Distributed (``group=``, ``_distributed``): each device launches the same kernels on its
local anchor rows against the gathered candidates (global self-pair and partner indices
through ``Tiling.row_offset``).

On a CPU the same kernels run in Pallas' interpreter (``interpret=True``): slow, meant
for tests. Float32 division on a GPU is Triton's (at most 2 ulp), well inside the float32
tolerances.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from tfree_core import engine
from tfree_core.engine import Tiling

__all__ = ["KERNELS", "PallasKernel", "check_kernel", "interpret_on", "use_fused"]

Array = jax.Array

KERNELS = ("auto", "fused", "portable")

_HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------------- selection


def check_kernel(kernel: object) -> None:
    """``ValueError`` unless ``kernel`` is one of :data:`KERNELS`."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}; "
                         f"got {kernel!r}")


def interpret_on(platform: str) -> bool:
    """Whether the kernels run in Pallas' interpreter on ``platform`` (a CPU: for tests)."""
    return platform == "cpu"


AUTO_SELECTS_FUSED = False
"""Whether ``kernel="auto"`` may pick the kernels on a GPU. Off until they have passed the
conformance suite compiled on a GPU (so far they are verified in Pallas' interpreter):
until then they run only when asked for with ``kernel="fused"``."""


def use_fused(kernel: str, problem: engine.Problem, arrays: tuple[Array | None, ...],
              platform: str, group: Hashable | None = None) -> bool:
    """Resolve ``kernel`` for a call running on ``platform`` (``"gpu"``, ``"cpu"``, ...):
    ``"portable"`` never; ``"auto"`` on a GPU when the call is supported and has no
    ``group``; ``"fused"`` always (``ValueError`` naming the option that prevents it; on a
    CPU the kernels run in Pallas' interpreter), with a ``group`` on each device's rows."""
    check_kernel(kernel)
    if kernel == "portable":
        return False
    reason = engine.fused_unsupported(problem, arrays)
    if kernel == "auto":
        return AUTO_SELECTS_FUSED and platform == "gpu" and reason is None and group is None
    if reason is not None:
        reason = f"the fused kernels do not support {reason}"
    elif platform not in ("gpu", "cpu"):
        reason = (f"platform {platform!r} (the Pallas kernels are lowered through Triton "
                  "for GPUs; on a CPU they run in Pallas' interpreter)")
    if reason is not None:
        raise ValueError(f"kernel='fused': {reason}; use kernel='auto' or 'portable'")
    return True


# --------------------------------------------------------------------------- kernels


def _tiles(d: int, interpret: bool) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, D padded)``: the padded feature axis stays whole in a tile;
    smaller tiles for wide rows to bound register use (Triton's float64 dot needs
    ``M, K >= 16``)."""
    dp = max(16, 1 << (d - 1).bit_length())
    if interpret:  # the interpreter's cost is per grid step and per op: few, small pads
        return 16, 32, dp
    if dp <= 128:
        return 64, 64, dp
    if dp <= 256:
        return 64, 32, dp
    return 32, 32, dp


def _keep(row_ok, col_ok, ex_a, ex_b, cols):
    """The candidates of a tile: both rows valid, column not one of the row's exclusions
    (its own index when diagonal, its NT-Xent partner; -1: none)."""
    keep = (row_ok != 0)[:, None] & (col_ok != 0)[None, :]
    return keep & (ex_a[:, None] != cols) & (ex_b[:, None] != cols)


def _sums_kernel(x_ref, y_ref, x_ok_ref, y_ok_ref, ex_a_ref, ex_b_ref, out_ref, *,
                 bound: float, block_n: int):
    """``out_x = Σ_y keep_xy·(1+c)/(1-c)``, ``c = clip(⟨X_x, Y_y⟩, -b, b)``, for one block
    of rows of ``X``."""
    x = x_ref[...]
    dtype = x.dtype
    bm = x.shape[0]
    x_ok, ex_a, ex_b = x_ok_ref[...], ex_a_ref[...], ex_b_ref[...]
    b = jnp.asarray(bound, dtype)

    def body(j, acc):
        start = _multiple_of(j * block_n, block_n)
        y = y_ref[_ds(start, block_n), :]
        s = jnp.dot(x, y.T, precision=_HIGHEST, preferred_element_type=dtype)
        cols = start + lax.broadcasted_iota(jnp.int32, (bm, block_n), 1)
        keep = _keep(x_ok, y_ok_ref[_ds(start, block_n)], ex_a, ex_b, cols)
        # dropped entries become c = -1, hence R = 0 exactly (as the core's ratio)
        c = jnp.where(keep, jnp.clip(s, -b, b), jnp.asarray(-1, dtype))
        return acc + jnp.sum((1 + c) / (1 - c), axis=1)

    out_ref[...] = lax.fori_loop(0, y_ref.shape[0] // block_n, body, jnp.zeros((bm,), dtype))


def _grad_kernel(x_ref, y_ref, sx_ref, sy_ref, x_ok_ref, y_ok_ref, ex_a_ref, ex_b_ref,
                 out_ref, *, bound: float, block_n: int):
    """``out_x = Σ_y (s_x + t_y)·keep_xy·2/(1-c_xy)²·Y_y`` for one block of rows of ``X``
    (``c = clip(⟨X_x, Y_y⟩, -b, b)``; 0 where the clip is active, SPEC §2.4)."""
    x = x_ref[...]
    dtype = x.dtype
    bm = x.shape[0]
    sx, x_ok, ex_a, ex_b = sx_ref[...], x_ok_ref[...], ex_a_ref[...], ex_b_ref[...]
    b = jnp.asarray(bound, dtype)

    def body(j, acc):
        start = _multiple_of(j * block_n, block_n)
        y = y_ref[_ds(start, block_n), :]
        s = jnp.dot(x, y.T, precision=_HIGHEST, preferred_element_type=dtype)
        cols = start + lax.broadcasted_iota(jnp.int32, (bm, block_n), 1)
        c = jnp.clip(s, -b, b)
        # φ' is 0 where the clip is active: a clamped pair gets no gradient
        inside = _keep(x_ok, y_ok_ref[_ds(start, block_n)], ex_a, ex_b, cols) & (c == s)
        gap = 1 - jnp.where(inside, c, jnp.zeros_like(c))
        # R·φ' = (1+c)/(1-c) · 2/(1-c²) = 2/(1-c)²
        weight = jnp.where(inside, 2 / (gap * gap), jnp.zeros_like(c))
        weight = weight * (sx[:, None] + sy_ref[_ds(start, block_n)][None, :])
        return acc + jnp.dot(weight, y, precision=_HIGHEST, preferred_element_type=dtype)

    out_ref[...] = lax.fori_loop(0, y_ref.shape[0] // block_n, body, jnp.zeros_like(x))


def _ds(start, size):
    from jax.experimental import pallas as pl

    return pl.ds(start, size)


def _multiple_of(x, m: int):
    from jax.experimental import pallas as pl

    return pl.multiple_of(x, m)


# --------------------------------------------------------------------------- launches


def _pad_rows(v: Array, rows: int, value: Any) -> Array:
    widths = [(0, rows - v.shape[0])] + [(0, 0)] * (v.ndim - 1)
    return jnp.pad(v, widths, constant_values=value)


def _side(u: Array, ok: Array | None, ex: tuple[Array | None, Array | None], rows: int,
          dp: int):
    """One side of a launch, padded: embeddings ``(rows, dp)``, validity and the two
    exclusion vectors ``(rows,)`` as int32 (``engine.exclusions``; padded rows
    invalid, no exclusions)."""
    n = u.shape[0]
    u = jnp.pad(u, ((0, rows - n), (0, dp - u.shape[1])))
    valid = jnp.ones((n,), jnp.int32) if ok is None else ok.astype(jnp.int32)
    ex_a, ex_b = (jnp.full((n,), -1, jnp.int32) if v is None else v.astype(jnp.int32)
                  for v in ex)
    return (u, _pad_rows(valid, rows, 0), _pad_rows(ex_a, rows, -1),
            _pad_rows(ex_b, rows, -1))


def _launch(kernel, x_side, y_side, scales, out_shape, *, bound: float, interpret: bool,
            block_m: int, block_n: int):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pl_triton

    x, x_ok, ex_a, ex_b = x_side
    y, y_ok = y_side[0], y_side[1]
    rows, dp = x.shape
    row_block = pl.BlockSpec((block_m,), lambda i: (i,))
    whole_y = pl.BlockSpec(y.shape, lambda i: (0, 0))
    whole_y_vec = pl.BlockSpec((y.shape[0],), lambda i: (0,))
    x_block = pl.BlockSpec((block_m, dp), lambda i: (i, 0))
    if scales is None:
        operands = (x, y, x_ok, y_ok, ex_a, ex_b)
        specs = [x_block, whole_y, row_block, whole_y_vec, row_block, row_block]
        out_spec = row_block
    else:
        sx, sy = scales
        operands = (x, y, sx, sy, x_ok, y_ok, ex_a, ex_b)
        specs = [x_block, whole_y, row_block, whole_y_vec, row_block, whole_y_vec,
                 row_block, row_block]
        out_spec = x_block
    return pl.pallas_call(
        functools.partial(kernel, bound=bound, block_n=block_n),
        grid=(rows // block_m,),
        in_specs=specs,
        out_specs=out_spec,
        out_shape=jax.ShapeDtypeStruct(out_shape, x.dtype,
                                       manual_axis_type=_varying_over(operands)),
        # Triton, not JAX's default Mosaic GPU lowering (ignored by the interpreter)
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name=kernel.__name__.lstrip("_"),
    )(*operands)


def _varying_over(operands: tuple[Array, ...]) -> Any:
    """The output's replication type inside ``jax.shard_map`` (``check_vma``): varying over
    every mesh axis any operand varies over (on a rank's rows under ``group=``, the local
    anchors and the rank's exclusion indices). Outside ``shard_map``: none."""
    varying = frozenset().union(
        *(jax.typeof(o).manual_axis_type.varying for o in operands))
    return jax.sharding.ManualAxisType(varying=varying)


@dataclass(frozen=True)
class PallasKernel:
    """``engine.TileKernel`` on JAX arrays (see the module docstring); ``interpret``: in
    Pallas' interpreter (a CPU). Hashable: a static argument of the loss."""

    interpret: bool

    def _sides(self, t: Tiling):
        n, m, d = t.anchors.shape[0], t.candidates.shape[0], t.anchors.shape[1]
        block_m, block_n, dp = _tiles(d, self.interpret)
        # one block size per side: each side is X of one launch and Y of the other
        block = max(block_m, block_n)
        rows_a, rows_c = -(-n // block) * block, -(-m // block) * block
        ex_rows, ex_cols = engine.exclusions(t, jnp)
        a = _side(t.anchors, t.where_rows, ex_rows, rows_a, dp)
        c = _side(t.candidates, t.where_cols, ex_cols, rows_c, dp)
        return a, c, (block_m, block_n), (n, m)

    def sums(self, t: Tiling, bound: float, columns: bool) -> tuple[Array, Array | None]:
        a, c, (block_m, block_n), (n, m) = self._sides(t)
        run = functools.partial(_launch, _sums_kernel, scales=None, bound=bound,
                                interpret=self.interpret, block_m=block_m, block_n=block_n)
        rows = run(a, c, out_shape=(a[0].shape[0],))[:n]
        cols = run(c, a, out_shape=(c[0].shape[0],))[:m] if columns else None
        return rows, cols

    def grads(self, t: Tiling, bound: float, row_scale: Array, col_scale: Array | None
              ) -> tuple[Array, Array]:
        a, c, (block_m, block_n), (n, m) = self._sides(t)
        dtype = t.anchors.dtype
        sa = _pad_rows(row_scale.astype(dtype), a[0].shape[0], 0)
        sc = (jnp.zeros((c[0].shape[0],), dtype) if col_scale is None
              else _pad_rows(col_scale.astype(dtype), c[0].shape[0], 0))
        run = functools.partial(_launch, _grad_kernel, bound=bound,
                                interpret=self.interpret, block_m=block_m, block_n=block_n)
        d = t.anchors.shape[1]
        du_a = run(a, c, (sa, sc), out_shape=a[0].shape)[:n, :d]
        du_c = run(c, a, (sc, sa), out_shape=c[0].shape)[:m, :d]
        return du_a, du_c
