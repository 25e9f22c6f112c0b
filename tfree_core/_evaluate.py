"""The one block engine: the loss and its analytic gradient, block by block of ``S``.

Every evaluation is the same walk over row blocks of ``S = U_a·U_cᵀ`` (SPEC §2): the
layout (``_layouts``) normalises and describes the blocks (``_blocks``), the kernel
(``_kernel``) turns a block into per-anchor statistics and ``G = ∂L/∂S``, and this module
runs the walk:

* **untiled** (``chunk_size=None``): one block of every row; ``S`` and its masks are kept
  for the backward (three matrix products in all);
* **tiled** (``chunk_size=c``): blocks of ``c`` rows, each built, used and dropped, and
  recomputed in the backward; no ``N × M`` array (four matrix products);
* **sharded** (``comm``, a backend's :class:`Collectives`): this device's rows against the
  candidates gathered from every device, untiled or tiled as above;
* **fused** (``kernel``, a backend's ``_fused.TileKernel``): the kernels stream the blocks
  themselves and return only row and column sums and the two products.

A block's rows see all their candidates, so its rows' statistics are complete. A symmetric
loss also needs column statistics, summed over blocks in the loop's carry and over devices
with one ``all_reduce``:

* ``arctanh``: plain sums ``N_j += Σ_{i∈block} R_ij`` (bounded ratios, no shift);
* ``temperature``: a running maximum ``m_j`` with rescaling (online softmax)::

      m' = max(m, max_{i∈block} ℓ_ij),   N_j ← N_j·e^(m - m') + Σ_{i∈block} e^(ℓ_ij - m'),
      Σ_p log R_jp ← Σ_p log R_jp - |P(j)|·(m' - m) + Σ_{p∈block} (ℓ_jp - m').

Backward, per block: ``G[r]`` from the block's rows of the per-anchor factors (and, when
symmetric, the whole column factors), then ``dU_a[r] = G[r]·U_c`` and
``dU_c += G[r]ᵀ·U_a[r]``; sharded, ``dU_c`` of every device is summed and handed to the
device that holds those candidates (``reduce_scatter``).

What a sharded call returns (the average over devices is the single-device value)::

    mean:  W · Σ_{local i} L_i / n_global      (n_global = anchors with a positive, all ranks)
    sum:   W · Σ_{local i} L_i
    none:  L_i for the local anchors (the rank's slice of the global vector)

and its backward the gradient of the *sum* over ranks of the returned losses w.r.t. the
local inputs, so averaging parameter gradients over ranks gives exactly the single-device
gradient. One device is the case ``W = 1``.

The block loop is pluggable (``loop``; contract in ``engine``): a backend passes a driver
that runs ``body`` natively (``lax.scan``, ``tf.while_loop``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._blocks import Blocks, Rows, Tiling, block_rows, take
from ._kernel import (
    MaskedStats,
    SingleStats,
    masked_finish,
    masked_gradient,
    masked_losses,
    masked_sums,
    single_finish,
    single_losses,
    single_scales,
    single_weights,
)
from ._maps import LogitMap, make_map
from ._namespace import Array, Namespace, cast_like, device_of, scalar, writes_in_place
from ._problem import Problem, fuses_gradient
from ._reduce import anchor_weights

if TYPE_CHECKING:
    from ._fused import TileKernel

Carry = tuple[Array, ...]
Body = Callable[[Any, Carry], tuple[Carry, tuple[Array, ...]]]
Loop = Callable[[Body, int, Carry], tuple[Carry, tuple[Array, ...]]]
Residuals = tuple[Any, ...]
"""What :func:`forward` hands to :func:`backward`: a flat tuple of arrays and ``None``s
whose structure is a function of the static :class:`Problem` alone."""


class Collectives(Protocol):
    """The collectives a backend supplies, over the ``world_size`` ranks of one group.

    ``world_size`` is a Python int (static); ``rank`` a Python int or a 0-d integer array
    (a tracer is fine: it is only used in index arithmetic). Every method is called by all
    ranks in the same order, with arrays of the same shape and dtype on every rank:

    * ``all_gather(x)``: ``(m, ...) -> (W·m, ...)``, the ranks' arrays concatenated in rank
      order along axis 0 (integer and floating dtypes);
    * ``all_reduce_sum(x)`` / ``all_reduce_max(x)``: elementwise sum / maximum over ranks;
    * ``reduce_scatter_sum(x)``: ``(W·m, ...) -> (m, ...)``, rows ``r·m .. (r+1)·m`` of the
      sum over ranks, on rank ``r``.

    None of them is differentiated: the core's analytic backward calls them itself.
    """

    world_size: int
    rank: Any

    def all_gather(self, x: Array) -> Array: ...

    def all_reduce_sum(self, x: Array) -> Array: ...

    def all_reduce_max(self, x: Array) -> Array: ...

    def reduce_scatter_sum(self, x: Array) -> Array: ...


class _OneDevice:
    """The collectives of a single device: every one is the identity."""

    world_size = 1
    rank = 0

    def all_gather(self, x: Array) -> Array:
        return x

    all_reduce_sum = all_reduce_max = reduce_scatter_sum = all_gather


ONE_DEVICE = _OneDevice()


def python_loop(xp: Namespace) -> Loop:
    """The default driver, for namespaces whose arrays are mutable (NumPy, PyTorch,
    array-api-strict): a Python ``for`` over the blocks, in order.

    ``loop(body, n_blocks, carry) -> (carry, stacked)`` calls ``carry, out = body(b, carry)``
    for ``b = 0 .. n_blocks - 1`` and writes each output into row ``b`` of an array with a
    new leading axis of length ``n_blocks``, as ``jax.lax.scan`` stacks them. The stacked
    outputs are allocated once, after the first block, so no allocation outlives a block:
    kept per-block outputs between the blocks' large temporaries fragment the C heap
    (glibc kept gigabytes of freed blocks of ``S`` that way in PyTorch on a CPU).
    """

    def loop(body: Body, n_blocks: int, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        stacked: tuple[Array, ...] | None = None
        for index in range(n_blocks):
            carry, outputs = body(index, carry)
            if stacked is None:  # made from the first outputs: batched under torch.vmap
                stacked = tuple(xp.stack([out] * n_blocks) for out in outputs)
            for target, out in zip(stacked, outputs, strict=True):
                target[index, ...] = out
        return carry, stacked or ()

    return loop


# --------------------------------------------------------------------------- residuals

Stats = SingleStats | MaskedStats


@dataclass
class _Kept:
    """The residuals, structured: the layout's saved arrays, each direction's statistics
    and global anchor count, and the untiled block's matrix and masks (``None`` when
    tiled or fused)."""

    saved: dict[str, Any]
    stats: tuple[Stats, ...]
    totals: tuple[Array, ...]
    matrix: Array | None
    masks: tuple[Array | None, ...]

    def flat(self, problem: Problem) -> Residuals:
        stats = tuple(v for st in self.stats for v in st.values())
        return (*(self.saved[k] for k in problem.spec.saved), *stats, *self.totals,
                self.matrix, *self.masks)

    @classmethod
    def unflat(cls, problem: Problem, flat: Residuals) -> _Kept:
        names = problem.spec.saved
        saved = dict(zip(names, flat[: len(names)], strict=True))
        kind = MaskedStats if problem.masked else SingleStats
        width = kind.WIDTH
        rest = flat[len(names):]
        stats = tuple(kind(*rest[k * width:(k + 1) * width]) for k in range(len(problem.axes)))
        rest = rest[len(problem.axes) * width:]
        totals, rest = rest[: len(problem.axes)], rest[len(problem.axes):]
        return cls(saved, stats, tuple(totals), rest[0], tuple(rest[1:]))


def _mask_slots(problem: Problem) -> int:
    return 2 if problem.masked else 1


def _as_tuple(block_masks: Any, problem: Problem) -> tuple[Array | None, ...]:
    return tuple(block_masks) if problem.masked else (block_masks,)


def _from_tuple(masks: tuple[Array | None, ...], problem: Problem) -> Any:
    return masks if problem.masked else masks[0]


# --------------------------------------------------------------------------- blocks


def _unblock(stacked: Array, n: int, xp: Namespace) -> Array:
    """``(blocks, c, ...)`` back to ``(n, ...)``: the padded rows sit at the very end."""
    blocks, rows = stacked.shape[0], stacked.shape[1]
    return xp.reshape(stacked, (blocks * rows, *stacked.shape[2:]))[:n, ...]


def _block_masks(problem: Problem, t: Blocks, r: Rows, live: Array | None, dead_rows: bool,
                 xp: Namespace) -> Any:
    if problem.masked:
        return t.masks(r, live, dead_rows, xp)
    return t.keep(r, live, dead_rows, xp)


def _walk(
    problem: Problem, t: Blocks, step: Callable[..., tuple[Carry, tuple[Array, ...]]],
    carry: Carry, loop: Loop | None, xp: Namespace, *, masks: bool = True,
) -> tuple[Carry, list[Array], tuple[Array, Any] | None]:
    """Run ``step(s, a, block_masks, r, live, carry)`` over the blocks of ``t``: once over
    every row when untiled (then also returns that block's ``(S, masks)``), else over
    blocks of ``chunk_size`` rows with ``loop``. Returns the carry and each output per row.
    ``masks=False``: no masks are built (``block_masks`` is ``None``)."""

    def block_masks_of(r: Rows, live: Any, dead_rows: bool) -> Any:
        return _block_masks(problem, t, r, live, dead_rows, xp) if masks else None

    if problem.chunk_size is None:
        s, a = t.similarity(None, xp)
        block_masks = block_masks_of(None, None, False)
        carry, outputs = step(s, a, block_masks, None, None, carry)
        return carry, list(outputs), (s, block_masks)
    rows = min(problem.chunk_size, t.n)
    dead_rows = problem.symmetric and t.n % rows != 0

    def body(index: Any, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        r, live = block_rows(index, rows, t.n, t.like, xp)
        s, a = t.similarity(r, xp)
        return step(s, a, block_masks_of(r, live, dead_rows), r, live, carry)

    carry, stacked = (loop or python_loop(xp))(body, -(-t.n // rows), carry)
    return carry, [_unblock(x, t.n, xp) for x in stacked], None


# --------------------------------------------------------------------------- column sums


def _finite(m: Array, xp: Namespace) -> Array:
    """A running maximum made usable as a shift: 0 where it is still ``-inf`` (no entry)."""
    return xp.where(xp.isfinite(m), m, scalar(0.0, m, xp))


def _merge_shift(
    fmap: LogitMap, m_old: Array, s: Array, keep: Array | None, xp: Namespace
) -> tuple[Array, Array, Array]:
    """Online softmax: ``(m', m' made finite, e^(m - m'))`` for one more block of rows."""
    m_new = xp.maximum(m_old, fmap.block_max(s, keep, 0, xp))
    finite = _finite(m_new, xp)
    return m_new, finite, fmap.rescale(m_old, finite, xp)  # 0 while m is still -inf


def _single_columns(
    fmap: LogitMap, carry: Carry, s: Array, keep: Array | None, ratio: Array, xp: Namespace
) -> Carry:
    """Add one block's rows to the column sums ``N_j`` (and running max ``m_j``)."""
    if not fmap.needs_shift:  # the rows' ratios are shift-free: reuse them
        return (carry[0] + xp.sum(ratio, axis=0),)
    negatives, m_old = carry
    m_new, finite, factor = _merge_shift(fmap, m_old, s, keep, xp)
    block = xp.sum(fmap.ratio(s, finite[None, :], keep, xp), axis=0)
    return (negatives * factor + block, m_new)


def _masked_columns(
    fmap: LogitMap, carry: Carry, s: Array, positive: Array, valid: Array | None,
    xp: Namespace,
) -> Carry:
    """Add one block's rows to the column sums ``(N_j, Q_j, |P(j)|, Σ log R_jp)``."""
    if not fmap.needs_shift:
        sums = masked_sums(s, positive, valid, None, fmap, 0, xp)
        return tuple(acc + part for acc, part in zip(carry, sums, strict=True))
    negatives, positives, count, log_sum, m_old = carry
    m_new, finite, factor = _merge_shift(fmap, m_old, s, valid, xp)
    neg, pos, cnt, logs = masked_sums(s, positive, valid, finite[None, :], fmap, 0, xp)
    # Σ_p (ℓ_jp - m/τ) moves by -|P(j)|·Δm/τ when the shift moves by Δm
    return (negatives * factor + neg, positives * factor + pos, count + cnt,
            log_sum - count * fmap.logit(finite - _finite(m_old, xp), xp) + logs, m_new)


def _column_carry(problem: Problem, fmap: LogitMap, t: Blocks, xp: Namespace) -> Carry:
    """The empty column sums of a symmetric loss (none otherwise)."""
    if not problem.symmetric:
        return ()
    zeros = xp.zeros((t.m,), dtype=t.dtype, device=device_of(t.like))
    carry = (zeros,) if not problem.masked else (zeros, zeros, zeros, zeros)
    return (*carry, zeros - float("inf")) if fmap.needs_shift else carry


def _rows_of(stacked: Array) -> tuple[Array, ...]:
    return tuple(stacked[k, ...] for k in range(stacked.shape[0]))


def _combine_columns(
    problem: Problem, fmap: LogitMap, carry: Carry, comm: Collectives, xp: Namespace
) -> Carry:
    """The ranks' column partial sums added up: one ``all_reduce(SUM)`` (bounded ratios;
    several vectors travel as one ``(k, m)`` array); the temperature map first moves every
    rank's sums to the global column maximum."""
    if comm.world_size == 1:
        return carry
    if not fmap.needs_shift:
        return _rows_of(comm.all_reduce_sum(xp.stack(list(carry), axis=0)))
    *sums, m_local = carry
    m_global = comm.all_reduce_max(m_local)
    finite = _finite(m_global, xp)
    factor = fmap.rescale(m_local, finite, xp)  # 0 where this rank has no entry
    if problem.masked:
        negatives, positives, count, log_sum = sums
        sums = [negatives * factor, positives * factor, count,
                log_sum - count * fmap.logit(finite - _finite(m_local, xp), xp)]
    else:
        sums = [sums[0] * factor]
    return (*_rows_of(comm.all_reduce_sum(xp.stack(sums, axis=0))), m_global)


def _finish_columns(
    problem: Problem, fmap: LogitMap, carry: Carry, single: tuple[Array, Array] | None,
    xp: Namespace,
) -> tuple[Array, Stats]:
    """The column direction's losses and statistics from the summed carry (``single``:
    every column's positive similarity and whether it has one)."""
    if problem.masked:
        if fmap.needs_shift:
            *sums, m = carry
            return masked_finish(*sums, _finite(m, xp), fmap, xp)
        return masked_finish(*carry, None, fmap, xp)
    assert single is not None
    s_positive, has = single
    negatives = carry[0]
    shift = None
    if fmap.needs_shift:  # as the row direction: max(kept maximum, positive)
        m = carry[1]  # -inf for a column without negatives, where N = 0
        shift = fmap.single_shift(m, s_positive, xp)
        negatives = negatives * fmap.rescale(m, shift, xp)  # N was summed relative to m
    return single_finish(negatives, s_positive, has, shift, fmap, xp)


# --------------------------------------------------------------------------- forward


def _block_forward(
    problem: Problem, fmap: LogitMap, single: tuple[Array, Array] | None, xp: Namespace,
) -> Callable[..., tuple[Carry, tuple[Array, ...]]]:
    """The forward step of one block: its rows' statistics and, when symmetric, the column
    sums added to the carry."""

    def step(s: Array, a: Any, block_masks: Any, r: Rows, live: Any, carry: Carry):
        if problem.masked:
            positive, valid = block_masks
            loss, st = masked_losses(s, positive, valid, fmap, 1, xp)
            out = (loss, st.negatives, st.positives, st.count)
            if problem.symmetric:
                carry = _masked_columns(fmap, carry, s, positive, valid, xp)
        else:
            assert single is not None
            keep = block_masks
            s_pos, has = (take(v, r, xp) for v in single)
            loss, st, ratio = single_losses(s, s_pos, keep, has, fmap, 1, xp)
            out = (loss, st.negatives)
            if problem.symmetric:
                carry = _single_columns(fmap, carry, s, keep, ratio, xp)
        return carry, out + ((st.shift,) if fmap.needs_shift else ())

    return step


def _scaled_total(total: Array, count: Array, reduction: str, world: int, xp: Namespace):
    """This rank's share of a scalar: ``W·total / n_global`` (mean) or ``W·total`` (sum)."""
    if reduction == "sum":
        return total * world
    return total * world / xp.maximum(count, scalar(1.0, count, xp))


def _reduced(per_anchor: Array, count: Array, reduction: str, world: int, xp: Namespace):
    """This rank's loss: ``W·Σ_local L_i / n_global`` (mean; as ``Σ_local (L_i/n)``, which
    stays finite whenever the mean does) or ``W·Σ_local L_i`` (sum)."""
    if reduction == "sum":
        return xp.sum(per_anchor) * world
    return xp.sum(per_anchor / xp.maximum(count, scalar(1.0, count, xp))) * world


def forward(
    problem: Problem, arrays: tuple, xp: Namespace, *, comm: Collectives | None = None,
    loop: Loop | None = None, kernel: TileKernel | None = None,
) -> tuple[Array, Residuals]:
    """The loss (compute dtype) and the residuals of its analytic gradient."""
    comm = comm or ONE_DEVICE
    spec = problem.spec
    saved = spec.setup(problem, arrays, xp, comm)
    t = spec.blocks(problem, saved, xp, comm)
    single = spec.positives(problem, saved, xp)
    fmap = make_map(problem.options, problem.float64)
    kept = None
    if kernel is not None:
        assert single is not None, "one positive per anchor: see Layout.fused_unsupported"
        assert not fmap.needs_shift, "the arctanh map: see _fused.unsupported"
        rows, cols = kernel.sums(t, fmap.bound, problem.symmetric)
        loss, _ = single_finish(rows, single[0], single[1], None, fmap, xp)
        per_row, carry = [loss, rows], (() if cols is None else (cols,))
    else:
        carry, per_row, kept = _walk(problem, t, _block_forward(problem, fmap, single, xp),
                                     _column_carry(problem, fmap, t, xp), loop, xp)
    shift = per_row[-1] if fmap.needs_shift else None
    dtype = t.dtype
    row_stats: Stats
    if problem.masked:
        losses, neg, pos, count = per_row[:4]
        row_stats = MaskedStats(neg, pos, count, shift)
    else:
        losses, neg = per_row[:2]
        row_stats = SingleStats(neg, single[0], single[1], shift)
        count = xp.astype(single[1], dtype)
    directions = [(losses, row_stats, comm.all_reduce_sum(xp.sum(xp.astype(count > 0, dtype))))]
    if problem.symmetric:
        directions.append(_columns(problem, fmap, carry, saved, single, t, comm, xp))
    reduction = problem.options.reduction
    world = comm.world_size
    values = [per_anchor if reduction == "none" else
              _reduced(per_anchor, total, reduction, world, xp)
              for per_anchor, _, total in directions]
    loss = values[0] if len(values) == 1 else (values[0] + values[1]) / 2
    if reduction == "none":
        loss = spec.shape_loss(problem, loss, xp)
    matrix, masks = (None, (None,) * _mask_slots(problem)) if kept is None else (
        kept[0], _as_tuple(kept[1], problem))
    residuals = _Kept(saved, tuple(st for _, st, _ in directions),
                      tuple(total for _, _, total in directions), matrix, masks)
    return loss, residuals.flat(problem)


def _columns(
    problem: Problem, fmap: LogitMap, carry: Carry, saved: dict, single: Any, t: Blocks,
    comm: Collectives, xp: Namespace,
) -> tuple[Array, Stats, Array]:
    """The column direction of a symmetric loss: ``(this rank's column losses, every
    column's statistics, the global count of columns with a positive)``."""
    carry = _combine_columns(problem, fmap, carry, comm, xp)
    columns = None if problem.masked else problem.spec.column_positives(
        problem, saved, single, xp, comm)
    col_loss, col_stats = _finish_columns(problem, fmap, carry, columns, xp)
    col_count = col_stats.count if problem.masked else xp.astype(col_stats.has_positive,
                                                                   t.dtype)
    total = xp.sum(xp.astype(col_count > 0, t.dtype))
    return problem.spec.local_columns(col_loss, t, xp), col_stats, total


# --------------------------------------------------------------------------- backward


def _weights(
    count: Array, total: Array, reduction: str, cotangent: Array, scale: float, world: int,
    xp: Namespace,
) -> Array:
    """``A_i`` of this rank's anchors: ``g·W/n_global`` (mean), ``g·W`` (sum), ``g_i``
    (none); times ``scale``; 0 without a positive."""
    if reduction == "none":
        return anchor_weights(count, "none", cotangent, scale, xp)
    return anchor_weights(
        count, "sum", _scaled_total(cotangent, total, reduction, world, xp), scale, xp)


def _block_gradient(
    problem: Problem, fmap: LogitMap, factors: Any, like: Array, xp: Namespace
) -> Callable[[Array, Any, Rows, Any], Array]:
    """``G[r] = ∂L/∂S[r]`` of one block: the row direction's factors taken at the rows
    ``r`` (0 on dead rows), the column direction's (symmetric) whole. ``factors``: the
    masked kernel's ``(axis, stats, A)`` per direction or the single-positive kernel's
    scales."""
    zero = scalar(0.0, like, xp)

    def rows_of(v: Array, r: Rows, live: Any) -> Array:
        v = take(v, r, xp)
        return v if live is None else xp.where(live, v, zero)

    def gradient(s: Array, block_masks: Any, r: Rows, live: Any) -> Array:
        if problem.masked:
            positive, valid = block_masks
            _, st, coef = factors[0]
            row = (1, _take_stats(st, r, xp), rows_of(coef, r, live))
            return masked_gradient(s, positive, valid, fmap, (row, *factors[1:]), xp)
        _, scaled, shift = factors[0]
        row = (1, rows_of(scaled, r, live), take(shift, r, xp))
        return single_weights(s, block_masks, fmap, (row, *factors[1:]), xp)

    return gradient


def _take_stats(st: Stats, r: Rows, xp: Namespace) -> Stats:
    """The statistics of rows ``r``."""
    return type(st)(*(take(v, r, xp) for v in st.values()))


def backward(
    problem: Problem, residuals: Residuals, cotangent: Array, xp: Namespace, *,
    comm: Collectives | None = None, loop: Loop | None = None,
    kernel: TileKernel | None = None,
) -> tuple[Array, ...]:
    """Gradients of ``Σ cotangent · loss`` w.r.t. the differentiable inputs (SPEC §2,
    "Analytic gradient"), each cast to its input's dtype; sharded, of the sum over ranks."""
    comm = comm or ONE_DEVICE
    spec = problem.spec
    kept = _Kept.unflat(problem, residuals)
    t = spec.blocks(problem, kept.saved, xp, comm)
    fmap = make_map(problem.options, problem.float64)
    dtype = t.dtype
    world = comm.world_size
    reduction = problem.options.reduction
    cotangent = cast_like(cotangent, dtype, xp)
    if reduction == "none":
        cotangent = spec.flatten_cotangent(problem, cotangent, xp)
    scale = 0.5 if problem.symmetric else 1.0

    def count_of(st: Stats) -> Array:
        return st.count if problem.masked else xp.astype(st.has_positive, dtype)

    rows_st = kept.stats[0]
    directions = [(1, rows_st, _weights(count_of(rows_st), kept.totals[0], reduction,
                                        cotangent, scale, world, xp))]
    if problem.symmetric:
        cols_st = kept.stats[1]
        mine = _weights(spec.local_columns(count_of(cols_st), t, xp), kept.totals[1],
                        reduction, cotangent, scale, world, xp)
        # every rank's column weights: each rank weighs its own keys with its cotangent
        directions.append((0, cols_st, spec.to_columns(mine, t, comm, xp)))
    g_positive = None
    factors: Any = tuple(directions)
    if not problem.masked:
        factors, positive_grads = single_scales(tuple(directions), fmap, xp)
        g_positive = positive_grads[0]
        if problem.symmetric:  # key j's positive is query j: both live on this rank
            g_positive = g_positive + spec.local_columns(positive_grads[1], t, xp)
    if kernel is not None:
        du_a, du_c = kernel.grads(t, fmap.bound, factors[0][1],
                                  factors[1][1] if problem.symmetric else None)
    else:
        gradient = _block_gradient(problem, fmap, factors, t.like, xp)
        if kept.matrix is not None:  # untiled: the kept block
            g = gradient(kept.matrix, _from_tuple(kept.masks, problem), None, None)
            carry, outputs = t.products(g, None, t.anchor_rows(None, xp), t.product_carry(xp),
                                        xp)
            per_row = list(outputs)
        else:
            def step(s, a, block_masks, r, live, carry):
                return t.products(gradient(s, block_masks, r, live), r, a, carry, xp)

            carry, per_row, _ = _walk(problem, t, step, t.product_carry(xp), loop, xp)
        du_a = per_row[0]
        du_c = per_row[1] if t.per_row else (carry[0] if carry else None)
    if du_c is not None and not t.per_row and world > 1:
        # Gᵀ·U_a of every rank, summed, back to the rank that holds those candidates
        du_c = comm.reduce_scatter_sum(du_c)
    grads = spec.gradients(problem, kept.saved, du_a, du_c, g_positive, xp)
    return _in_dtypes(grads, problem, xp)


def _in_dtypes(grads: tuple[Array | None, ...], problem: Problem, xp: Namespace,
               factor: Array | None = None) -> tuple[Array | None, ...]:
    """Each gradient (times ``factor``) cast to its input's dtype; ``None`` for an optional
    differentiable input that is absent (``hard_negatives=None``)."""
    return tuple(None if gr is None else cast_like(gr if factor is None else gr * factor,
                                                   dt, xp)
                 for gr, dt in zip(grads, problem.dtypes, strict=True))


# --------------------------------------------------------------------------- one pass


def value_and_grad(
    problem: Problem, arrays: tuple, xp: Namespace, *, loop: Loop | None = None
) -> tuple[Array, tuple[Array, ...]]:
    """The loss and its gradients w.r.t. the differentiable inputs, in one pass over the
    blocks of ``S`` (one device, where :func:`fuses_gradient` holds).

    Each block's rows see all their candidates, so right after a block's statistics
    (``N_i``, ``Z_i``) are summed, the same block gives ``G[r] = ∂L/∂S[r]`` with the anchor
    weights ``A_i = 1`` (0 without a positive), then ``dU_a[r] = G[r]·U_c`` and
    ``dU_c += G[r]ᵀ·U_a[r]``: three matrix products in all, every block used while it is
    in cache, no ``N × M`` array. ``"mean"`` divides the result by the number of anchors
    with a positive afterwards (the gradient is linear in a uniform ``A``). Gradients come
    back in the compute dtype, for ``cotangent = 1`` (:func:`scale_gradients`).
    """
    assert fuses_gradient(problem)
    spec = problem.spec
    saved = spec.setup(problem, arrays, xp, ONE_DEVICE)
    t = spec.blocks(problem, saved, xp, ONE_DEVICE)
    single = spec.positives(problem, saved, xp)
    fmap = make_map(problem.options, problem.float64)
    dtype = t.dtype
    zero = scalar(0.0, t.like, xp)
    one = scalar(1.0, t.like, xp)

    def unit(live: Any, has: Array) -> Array:
        return xp.where(has if live is None else xp.logical_and(live, has), one, zero)

    # The self-pairs as the only dropped entries (pairs, retrieval without identities):
    # written at their indices into the block's fresh arrays, exactly the values the mask
    # gives (a ratio and a weight of 0; -inf before the temperature map's maximum),
    # instead of a block-sized mask and a selection through it.
    direct = (not problem.masked and isinstance(t, Tiling) and t.drops_only_self_pairs()
              and writes_in_place(t.like, xp))

    def step(s: Array, a: Array, block_masks: Any, r: Rows, live: Any, carry: Carry):
        if problem.masked:
            loss, st = masked_losses(s, *block_masks, fmap, 1, xp)
            count = st.count
            g = masked_gradient(s, *block_masks, fmap, ((1, st, unit(live, count > 0)),), xp)
            extra: tuple[Array, ...] = ()
        else:
            assert single is not None
            keep = block_masks
            s_pos, has = (take(v, r, xp) for v in single)
            ratio = weight = None
            self_pairs = t.self_pairs(r, xp) if direct else None
            if fmap.needs_shift and self_pairs is not None:
                _write_at(s, self_pairs, -float("inf"), xp)
            if not fmap.needs_shift:
                ratio, weight = fmap.ratio_and_weight(s, keep, xp)
                if self_pairs is not None:
                    _write_at(ratio, self_pairs, 0.0, xp)
                    _write_at(weight, self_pairs, 0.0, xp)
            loss, st, ratio = single_losses(s, s_pos, keep, has, fmap, 1, xp, ratio=ratio)
            count = xp.astype(has, dtype)
            scales, positive_grads = single_scales(((1, st, unit(live, has)),), fmap, xp)
            if fmap.needs_shift:  # R of this very shift is at hand: G = (A/Z)·R/τ, in place
                weight = ratio
            g = single_weights(s, keep, fmap, scales, xp, weight=weight)
            extra = (positive_grads[0],)
        carry, products = t.products(g, r, a, carry, xp)
        return carry, (loss, count, *products, *extra)

    carry, per_row, _ = _walk(problem, t, step, t.product_carry(xp), loop, xp,
                              masks=not direct)
    losses, count, du_a = per_row[:3]
    du_c = per_row[3] if t.per_row else carry[0]
    g_positive = None if problem.masked else per_row[-1]
    reduction = problem.options.reduction
    loss = _reduced(losses, xp.sum(xp.astype(count > 0, dtype)), reduction, 1, xp)
    grads = spec.gradients(problem, saved, du_a, du_c, g_positive, xp)
    if reduction == "mean":
        anchors = xp.sum(xp.astype(count > 0, dtype))
        factor = 1 / xp.maximum(anchors, scalar(1.0, anchors, xp))
        grads = tuple(None if gr is None else gr * factor for gr in grads)
    return loss, grads


def _write_at(x: Array, flat_index: Array, value: float, xp: Namespace) -> None:
    """``x.flat[flat_index] = value``, in place (``x`` a fresh C-contiguous array of a
    namespace that :func:`writes_in_place`)."""
    flat = xp.reshape(x, (-1,))
    flat[flat_index] = value


def scale_gradients(
    problem: Problem, grads: tuple[Array, ...], cotangent: Array, xp: Namespace
) -> tuple[Array, ...]:
    """``cotangent · grads`` (the gradients of :func:`value_and_grad`), each cast to its
    input's dtype."""
    present = next(g for g in grads if g is not None)
    return _in_dtypes(grads, problem, xp, cast_like(cotangent, present.dtype, xp))
