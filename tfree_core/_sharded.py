"""Data-parallel evaluation: the loss of a global batch sharded by rows over ``W`` ranks.

The global problem is the concatenation, in rank order, of every rank's inputs (each rank
holds ``n`` rows of every input; uneven shards are padded and masked with ``where=``).
Each rank evaluates the rows of ``S`` whose anchors it holds against *all* candidates,
gathered from every rank, exactly as a tiled evaluation (``_tiled``) evaluates one block
of rows: a local row sees its whole candidate set, so its statistics are complete on its
rank. Only two things cross ranks (``W`` ranks, ``n`` local anchors, ``D`` features):

* the candidates: ``all_gather`` of the normalised embeddings (``W·n × D``), and on the
  backward the candidate gradients ``Gᵀ·U_a`` summed over ranks and handed to their owner
  (``reduce_scatter``, ``W·n × D``);
* per-anchor vectors: the global count of anchors with a positive (``all_reduce``), and
  for a symmetric loss the column statistics. With the temperature-free map every ratio
  is bounded (``[ε/2, 2/ε]``), so the column partition sums of the ranks' row blocks add
  up with one ``all_reduce(SUM)``; the temperature map rescales them to the global column
  maximum first (``all_reduce(MAX)``, then the online-softmax rescaling of ``_tiled``).

Positives and self-pairs use global indices: local row ``i`` of rank ``r`` is global row
``r·n + i`` (pairs: its positive is key ``r·n + i``; NT-Xent: the local rows are
``[z1_local; z2_local]`` and the candidates the ranks' ``[z1; z2]`` blocks in rank order).

What each rank returns (the average over ranks is the single-device value)::

    mean:  W · Σ_{local i} L_i / n_global      (n_global = anchors with a positive, all ranks)
    sum:   W · Σ_{local i} L_i
    none:  L_i for the local anchors (the rank's slice of the global vector)

A symmetric loss is ``½(rows + columns)``, the columns being the keys this rank holds.
The backward on rank ``r`` returns ``∂(Σ_s g_s·loss_s)/∂x_r``: the gradient of the *sum*
over ranks of the returned losses (each with its own cotangent ``g_s``) w.r.t. the local
inputs. With ``g_s = 1`` that is ``W·∂L/∂x_r``, so averaging the parameter gradients over
ranks (DistributedDataParallel, ``pmean``, ``MirroredStrategy``) gives exactly the
single-device gradient of the concatenated batch. Every rank must run the backward
(it holds collectives).

The collectives come from the backend (:class:`Collectives`); within a rank the row block
may itself be tiled (``chunk_size``): the collectives then run before and after the block
loop, never inside it.

A backend's fused tile kernels (``kernel=``, a ``_fused.TileKernel``) may replace the block
loop: ``kernel.sums`` gives the local rows' ``N_i`` and the rank's column partial sums
``N_j`` (all ``W·n`` columns, added over ranks as above), ``kernel.grads`` gives
``dU_a = G·U_c`` and ``Gᵀ·U_a`` over all gathered candidates, reduce-scattered as above.
The kernels see the same candidates as the block loop (:func:`fused_tiling`: global
self-pair and partner indices through ``Tiling.row_offset``); the collectives, the
positives' terms and the scaling are this module's, unchanged. Scope: the arctanh map on
the single-positive layouts (``_fused.unsupported``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._blocks import Tiling, block_rows, similarity
from ._kernel import (
    MaskedStats,
    SingleStats,
    single_finish,
    single_scales,
)
from ._layouts import Problem, Residuals, _load, _partner, _store, combine_directions
from ._maps import make_map
from ._namespace import Array, Namespace, cast_like, device_of, scalar, to_compute
from ._normalize import normalize
from ._reduce import anchor_weights
from ._tiled import (
    Carry,
    Loop,
    _embedding_gradients,
    _finish_columns,
    _finite,
    _unblock,
    block_forward,
    block_gradient,
    block_size,
    python_loop,
)

if TYPE_CHECKING:
    from ._fused import TileKernel

SHARDED_LAYOUTS = ("pairs", "nt_xent", "sup_con")
"""Layouts with a global batch: pairs (with or without labels, symmetric or not), NT-Xent,
SupCon. Explicit negatives and the similarity level have no global batch to gather."""


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


def check_sharded(problem: Problem, world_size: object) -> None:
    """``ValueError`` for a layout without a global batch, ``TypeError`` / ``ValueError``
    for a world size that is not a positive Python int."""
    if problem.layout not in SHARDED_LAYOUTS:
        name = {"negatives": "info_nce with negatives=", "similarity": "loss_from_similarity"}
        raise ValueError(
            f"{name.get(problem.layout, problem.layout)} has no global batch to shard: "
            f"distributed evaluation (group=) supports info_nce (pairs, with or without "
            f"labels, symmetric or not), nt_xent and sup_con; got layout {problem.layout!r}"
        )
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"world_size must be a Python int; got {type(world_size).__name__}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")


# --------------------------------------------------------------------------- the shard


@dataclass(frozen=True)
class Shard:
    """This rank's anchors against the global candidates (``_blocks.similarity`` reads
    ``anchors``, ``candidates`` and ``per_row``).

    ``self_col`` / ``partner``: per local row, the global column to drop (itself; NT-Xent's
    other view). ``where_rows`` (local) / ``where_cols`` (global): row masks.
    ``row_labels`` (local) / ``col_labels`` (global): the masked kernel's labels.
    """

    anchors: Array
    candidates: Array
    self_col: Array | None = None
    partner: Array | None = None
    where_rows: Array | None = None
    where_cols: Array | None = None
    row_labels: Array | None = None
    col_labels: Array | None = None
    per_row: bool = False

    @property
    def n(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def m(self) -> int:
        return int(self.candidates.shape[0])


def _and(mask: Array | None, other: Array, xp: Namespace) -> Array:
    return other if mask is None else xp.logical_and(mask, other)


def _keep(t: Shard, r: Array, live: Array, dead_rows: bool, xp: Namespace) -> Array | None:
    """The candidates of local rows ``r``: no self-pair, no partner, no masked row or
    column, no dead row (as ``_blocks.keep_mask``, with global column indices)."""
    keep = None
    if t.self_col is not None or t.partner is not None:
        cols = xp.arange(t.m, device=device_of(r))[None, :]
        if t.self_col is not None:
            keep = xp.take(t.self_col, r, axis=0)[:, None] != cols
        if t.partner is not None:
            keep = _and(keep, xp.take(t.partner, r, axis=0)[:, None] != cols, xp)
    if t.where_rows is not None:
        keep = _and(keep, xp.take(t.where_rows, r, axis=0)[:, None], xp)
    if t.where_cols is not None:
        keep = _and(keep, t.where_cols[None, :], xp)
    if dead_rows:
        keep = _and(keep, live[:, None], xp)
    return keep


def _masks(
    t: Shard, r: Array, live: Array, dead_rows: bool, xp: Namespace
) -> tuple[Array, Array | None]:
    valid = _keep(t, r, live, dead_rows, xp)
    positive = xp.take(t.row_labels, r, axis=0)[:, None] == t.col_labels[None, :]
    if valid is not None:
        positive = xp.logical_and(positive, valid)
    return positive, valid


def _offset(comm: Collectives, n: int, like: Array, xp: Namespace) -> Array:
    """Global indices ``rank·n + arange(n)`` of this rank's ``n`` rows."""
    idx = xp.arange(n, device=device_of(like))
    rank = comm.rank
    if isinstance(rank, int):
        return idx + rank * n
    return idx + xp.astype(rank, idx.dtype) * n


def _gather_mask(mask: Array, comm: Collectives, xp: Namespace) -> Array:
    # Booleans travel as int32: not every engine reduces or gathers booleans (Gloo).
    return comm.all_gather(xp.astype(mask, xp.int32)) != 0


def _all_true(n: int, like: Array, xp: Namespace) -> Array:
    return xp.arange(n, device=device_of(like)) >= 0


def _setup(problem: Problem, arrays: tuple, comm: Collectives, xp: Namespace):
    """Normalise the local rows, gather the candidates. Returns the residuals so far, the
    single-positive kernel's local ``(s_positive, has_positive)`` (or None), the shard."""
    layout = problem.layout
    res: Residuals = {"labels": None, "where": None, "col_labels": None, "col_where": None}
    single = None
    if layout == "pairs":
        query, key, labels, where = arrays
        uq, nq = normalize(to_compute(query, xp), xp)
        uk, nk = normalize(to_compute(key, xp), xp)
        cands = comm.all_gather(uk)
        res.update(uq=uq, nq=nq, uk=uk, nk=nk, cands=cands, where=where)
        if where is not None:
            res["col_where"] = _gather_mask(where, comm, xp)
        anchors, n = uq, uq.shape[0]
        self_col = None
        if problem.masked:
            res.update(labels=labels, col_labels=comm.all_gather(labels))
        else:
            self_col = _offset(comm, n, uq, xp)
            has = _all_true(n, uq, xp) if where is None else where
            single = (xp.sum(uq * uk, axis=1), has)
        t = Shard(anchors, cands, self_col=self_col, where_rows=where,
                  where_cols=res["col_where"], row_labels=res["labels"],
                  col_labels=res["col_labels"])
        return res, single, t
    if layout == "nt_xent":
        z1, z2, where = arrays
        u, norm = normalize(to_compute(xp.concat([z1, z2], axis=0), xp), xp)
        n2 = u.shape[0]
        cands = comm.all_gather(u)
        res.update(u=u, norm=norm, cands=cands)
        has = _all_true(n2, u, xp)
        if where is not None:
            has = xp.concat([where, where])
            res.update(where=has, col_where=_gather_mask(has, comm, xp))
        local_partner = _partner(n2, u, xp)
        rows = _offset(comm, n2, u, xp)
        single = (xp.sum(u * xp.take(u, local_partner, axis=0), axis=1), has)
        t = Shard(u, cands, self_col=rows, partner=xp.take(rows, local_partner, axis=0),
                  where_cols=res["col_where"])
        return res, single, t
    # sup_con
    features, labels, where = arrays
    flat = to_compute(features, xp)
    if problem.views:
        n, v, d = features.shape
        flat = xp.reshape(xp.permute_dims(flat, (1, 0, 2)), (v * n, d))
        labels = xp.concat([labels] * v)
        where = None if where is None else xp.concat([where] * v)
    u, norm = normalize(flat, xp)
    cands = comm.all_gather(u)
    res.update(u=u, norm=norm, cands=cands, labels=labels, where=where,
               col_labels=comm.all_gather(labels))
    if where is not None:
        res["col_where"] = _gather_mask(where, comm, xp)
    t = Shard(u, cands, self_col=_offset(comm, u.shape[0], u, xp), where_rows=where,
              where_cols=res["col_where"], row_labels=labels, col_labels=res["col_labels"])
    return res, single, t


def _shard(problem: Problem, res: Residuals, comm: Collectives, xp: Namespace) -> Shard:
    """The shard rebuilt from the residuals (backward)."""
    layout = problem.layout
    if layout == "pairs":
        n = res["uq"].shape[0]
        self_col = None if problem.masked else _offset(comm, n, res["uq"], xp)
        return Shard(res["uq"], res["cands"], self_col=self_col, where_rows=res["where"],
                     where_cols=res["col_where"], row_labels=res["labels"],
                     col_labels=res["col_labels"])
    u = res["u"]
    rows = _offset(comm, u.shape[0], u, xp)
    if layout == "nt_xent":
        partner = xp.take(rows, _partner(u.shape[0], u, xp), axis=0)
        return Shard(u, res["cands"], self_col=rows, partner=partner,
                     where_cols=res["col_where"])
    return Shard(u, res["cands"], self_col=rows, where_rows=res["where"],
                 where_cols=res["col_where"], row_labels=res["labels"],
                 col_labels=res["col_labels"])


def fused_tiling(t: Shard, comm: Collectives) -> Tiling:
    """The shard as the fused kernels' :class:`~tfree_core._blocks.Tiling`: the local rows
    are candidates ``rank·n .. rank·n + n - 1`` (``row_offset``), so ``diagonal`` drops
    the global self-pair; ``partner`` already holds global indices."""
    return Tiling(t.anchors, t.candidates, where_rows=t.where_rows, where_cols=t.where_cols,
                  diagonal=t.self_col is not None, partner=t.partner,
                  row_offset=comm.rank * t.n)


def _rows(problem: Problem, t: Shard) -> int:
    """Rows per block: all local rows when untiled, else as ``_tiled`` plans them."""
    if problem.chunk_size is None:
        return t.n
    return block_size(problem, t.n, t.m, 0)


def residual_keys(problem: Problem) -> tuple[str, ...]:
    """Normalised local rows, gathered candidates, index vectors, this rank's ``S`` block
    (``None`` when tiled), per-direction statistics (columns: all ``W·n``), global counts."""
    normalised = ("uq", "nq", "uk", "nk") if problem.layout == "pairs" else ("u", "norm")
    per_axis = ("neg", "pos", "count", "shift") if problem.masked else (
        "neg", "spos", "has", "shift")
    stats = tuple(f"{k}{axis}" for axis in problem.axes for k in per_axis)
    totals = tuple(f"total{axis}" for axis in problem.axes)
    return (*normalised, "cands", "labels", "where", "col_labels", "col_where", "s",
            *stats, *totals)


# --------------------------------------------------------------------------- forward


def _scaled_total(total: Array, count: Array, reduction: str, world: int, xp: Namespace):
    """This rank's share: ``W·Σ_local / n_global`` (mean) or ``W·Σ_local`` (sum)."""
    if reduction == "sum":
        return total * world
    return total * world / xp.maximum(count, scalar(1.0, count, xp))


def _reduce_local(loss: Array, n_global: Array, reduction: str, world: int, xp: Namespace):
    if reduction == "none":
        return loss
    return _scaled_total(xp.sum(loss), n_global, reduction, world, xp)


def _rows_of(stacked: Array) -> tuple[Array, ...]:
    # several vectors travel as one (k, m) array: one collective instead of k
    return tuple(stacked[k, ...] for k in range(stacked.shape[0]))


def _combine_columns(problem, fmap, carry: Carry, comm: Collectives, xp: Namespace) -> Carry:
    """The ranks' column partial sums added up: one ``all_reduce(SUM)`` (bounded ratios);
    the temperature map first moves every rank's sums to the global column maximum."""
    if not fmap.needs_shift:
        return _rows_of(comm.all_reduce_sum(xp.stack(list(carry), axis=0)))
    *sums, m_local = carry
    m_global = comm.all_reduce_max(m_local)
    finite = _finite(m_global, xp)
    factor = xp.exp(m_local - finite)  # 0 where this rank has no entry (m_local = -inf)
    if problem.masked:
        negatives, positives, count, log_sum = sums
        # Σ_p (ℓ_jp - m) moves by -|P(j)|·Δm when the shift moves by Δm
        sums = [negatives * factor, positives * factor, count,
                log_sum - count * (finite - _finite(m_local, xp))]
    else:
        sums = [sums[0] * factor]
    return (*_rows_of(comm.all_reduce_sum(xp.stack(sums, axis=0))), m_global)


def _fused_sums(
    problem: Problem, fmap: Any, t: Shard, single: tuple[Array, Array] | None,
    comm: Collectives, kernel: TileKernel, xp: Namespace,
) -> tuple[list[Array], Carry]:
    """The block loop's outputs from the fused kernels: per local row ``(L_i, N_i)``, and
    the rank's column sums ``N_j`` (symmetric) as the carry."""
    assert single is not None, "fused: single-positive layouts (see _fused.unsupported)"
    assert not fmap.needs_shift, "fused: the arctanh map (see _fused.unsupported)"
    rows, cols = kernel.sums(fused_tiling(t, comm), fmap.bound, problem.symmetric)
    loss, _ = single_finish(rows, single[0], single[1], None, fmap, xp)
    return [loss, rows], (() if cols is None else (cols,))


def forward(
    problem: Problem, arrays: tuple, xp: Namespace, comm: Collectives, *,
    loop: Loop | None = None, kernel: TileKernel | None = None,
) -> tuple[Array, Residuals]:
    """This rank's loss (compute dtype; see the module docstring for its scale) and the
    residuals of its analytic gradient; ``kernel``: a backend's fused tile kernels in
    place of the block loop (``loop`` and ``chunk_size`` are then unused)."""
    res, single, t = _setup(problem, arrays, comm, xp)
    fmap = make_map(problem.options, problem.float64)
    if kernel is not None:
        per_row, carry = _fused_sums(problem, fmap, t, single, comm, kernel, xp)
        res["s"] = None  # nothing of size n × W·n is kept: the backward reruns the kernels
        return _finish(problem, res, single, t, fmap, per_row, carry, comm, arrays, xp)
    rows = _rows(problem, t)
    n_blocks = -(-t.n // rows)
    symmetric = problem.symmetric
    dead_rows = symmetric and t.n % rows != 0
    dtype = t.anchors.dtype
    zeros = xp.zeros((t.m,), dtype=dtype, device=device_of(t.anchors))
    carry: Carry = ()
    if symmetric:
        carry = (zeros,) if not problem.masked else (zeros, zeros, zeros, zeros)
        if fmap.needs_shift:
            carry = (*carry, zeros - float("inf"))
    kept: list[Array] = []

    def body(index: Any, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        r, live = block_rows(index, rows, t.n, t.anchors, xp)
        s, _ = similarity(t, r, xp)
        if n_blocks == 1 and problem.chunk_size is None:
            kept.append(s)  # untiled: the block is the whole local S, kept for the backward
        return block_forward(problem, fmap, s, _masks(t, r, live, dead_rows, xp)
                             if problem.masked else _keep(t, r, live, dead_rows, xp),
                             single, r, carry, xp)

    if problem.chunk_size is None:
        carry, outputs = body(0, carry)
        stacked = tuple(x[None, ...] for x in outputs)
    else:
        carry, stacked = (loop or python_loop(xp))(body, n_blocks, carry)
    res["s"] = kept[0] if kept else None
    per_row = [_unblock(x, t.n, xp) for x in stacked]
    return _finish(problem, res, single, t, fmap, per_row, carry, comm, arrays, xp)


def _finish(
    problem: Problem, res: Residuals, single: tuple[Array, Array] | None, t: Shard,
    fmap: Any, per_row: list[Array], carry: Carry, comm: Collectives, arrays: tuple,
    xp: Namespace,
) -> tuple[Array, Residuals]:
    """From the local rows' statistics and the column partial sums: the global counts,
    the column direction (symmetric), the scaled loss and the residuals."""
    world = comm.world_size
    symmetric = problem.symmetric
    dtype = t.anchors.dtype
    shift = per_row[-1] if fmap.needs_shift else None
    row_stats: SingleStats | MaskedStats
    if problem.masked:
        loss, neg, pos, count = per_row[:4]
        row_stats = MaskedStats(neg, pos, count, shift)
        row_count = count
    else:
        loss, neg = per_row[:2]
        row_stats = SingleStats(neg, single[0], single[1], shift)
        row_count = xp.astype(single[1], dtype)
    directions = [(1, loss, row_stats, comm.all_reduce_sum(xp.sum(xp.astype(
        row_count > 0, dtype))))]
    if symmetric:
        carry = _combine_columns(problem, fmap, carry, comm, xp)
        columns = None
        if not problem.masked:  # the columns' positives: ⟨q_j, k_j⟩ of every rank
            has_all = res["col_where"]
            if has_all is None:
                has_all = _all_true(t.m, t.anchors, xp)
            columns = (comm.all_gather(single[0]), has_all)
        col_loss, col_stats = _finish_columns(problem, fmap, carry, columns, xp)
        col_count = col_stats.count if problem.masked else xp.astype(
            col_stats.has_positive, dtype)
        mine = _offset(comm, t.n, t.anchors, xp)  # this rank's keys are its column anchors
        directions.append((0, xp.take(col_loss, mine, axis=0), col_stats,
                           xp.sum(xp.astype(col_count > 0, dtype))))
    reduction = problem.options.reduction
    losses = []
    for axis, per_anchor, st, n_global in directions:
        losses.append(_reduce_local(per_anchor, n_global, reduction, world, xp))
        _store(res, axis, st)
        res[f"total{axis}"] = n_global
    loss = combine_directions(problem, losses, arrays[0].shape[0], xp)
    return loss, {key: res.get(key) for key in residual_keys(problem)}


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


def backward(
    problem: Problem, res: Residuals, cotangent: Array, xp: Namespace, comm: Collectives, *,
    loop: Loop | None = None, kernel: TileKernel | None = None,
) -> tuple[Array, ...]:
    """Gradients of ``Σ_ranks cotangent·loss`` w.r.t. this rank's differentiable inputs
    (SPEC §2, "Analytic gradient"), each cast to its input's dtype; ``kernel``: as in
    :func:`forward` (``G·U_c`` and ``Gᵀ·U_a`` from ``kernel.grads``)."""
    world = comm.world_size
    t = _shard(problem, res, comm, xp)
    rows = _rows(problem, t)
    n_blocks = -(-t.n // rows)
    fmap = make_map(problem.options, problem.float64)
    dtype = t.anchors.dtype
    reduction = problem.options.reduction
    cotangent = cast_like(cotangent, dtype, xp)
    if reduction == "none" and problem.layout == "sup_con" and problem.views:
        cotangent = xp.reshape(xp.matrix_transpose(cotangent), (-1,))
    symmetric = problem.symmetric
    scale = 0.5 if symmetric else 1.0

    def count_of(st):
        return st.count if problem.masked else xp.astype(st.has_positive, dtype)

    rows_st = _load(res, 1, problem.masked)
    directions = [(1, rows_st, _weights(count_of(rows_st), res["total1"], reduction,
                                        cotangent, scale, world, xp))]
    mine = _offset(comm, t.n, t.anchors, xp)
    if symmetric:
        cols_st = _load(res, 0, problem.masked)
        local = xp.take(count_of(cols_st), mine, axis=0)
        mine_weights = _weights(local, res["total0"], reduction, cotangent, scale, world, xp)
        # every rank's column weights: each rank weighs its own keys with its cotangent
        directions.append((0, cols_st, comm.all_gather(mine_weights)))
    dead_rows = symmetric and t.n % rows != 0
    g_positive = None
    if not problem.masked:
        scales, positive_grads = single_scales(tuple(directions), fmap, xp)
        g_positive = positive_grads[0]
        if symmetric:  # key j's positive is query j: both live on this rank
            g_positive = g_positive + xp.take(positive_grads[1], mine, axis=0)
    if kernel is not None:
        assert not problem.masked, "fused: single-positive layouts (see _fused.unsupported)"
        assert not fmap.needs_shift, "fused: the arctanh map (see _fused.unsupported)"
        du_a, du_c_all = kernel.grads(fused_tiling(t, comm), fmap.bound, scales[0][1],
                                      scales[1][1] if symmetric else None)
        du_c = comm.reduce_scatter_sum(du_c_all)
        grads = _embedding_gradients(problem, res, du_a, du_c, g_positive, xp)
        return tuple(cast_like(gr, dt, xp)
                     for gr, dt in zip(grads, problem.dtypes, strict=True))
    stored = res["s"]

    def body(index: Any, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        r, live = block_rows(index, rows, t.n, t.anchors, xp)
        if stored is not None:
            s, a = stored, t.anchors
        else:
            s, a = similarity(t, r, xp)
        g = block_gradient(problem, fmap, s, _masks(t, r, live, dead_rows, xp)
                           if problem.masked else _keep(t, r, live, dead_rows, xp),
                           directions if problem.masked else scales, r, live, xp)
        return (carry[0] + xp.matrix_transpose(g) @ a,), (g @ t.candidates,)

    carry: Carry = (xp.zeros_like(t.candidates),)
    if stored is not None:
        carry, outputs = body(0, carry)
        stacked = tuple(x[None, ...] for x in outputs)
    else:
        carry, stacked = (loop or python_loop(xp))(body, n_blocks, carry)
    du_a = _unblock(stacked[0], t.n, xp)
    # Gᵀ·U_a of every rank, summed, back to the rank that holds those candidates
    du_c = comm.reduce_scatter_sum(carry[0])
    grads = _embedding_gradients(problem, res, du_a, du_c, g_positive, xp)
    return tuple(cast_like(gr, dt, xp) for gr, dt in zip(grads, problem.dtypes, strict=True))
