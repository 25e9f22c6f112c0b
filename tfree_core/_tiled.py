"""Tiled evaluation: the loss and its analytic gradient by row blocks of ``S``.

Same formulas as the untiled path (``_layouts`` + ``_kernel``), never an N×M array. The
anchors are cut into blocks of ``c`` rows; each block of ``S = U_a·U_cᵀ`` (``c × M``) is
built, used and dropped. Extra memory is ``O((N + M)·D + c·M)``.

Forward, per block: the kernel on the block gives every statistic of its rows (a row
sees all its candidates at once): ``N_i`` (and ``s_p``, ``has``) for the single-positive
kernel, ``N_i, Q_i, |P(i)|`` for the masked one, plus the temperature map's shift. A
symmetric loss also needs the *column* statistics, summed over blocks in the loop's carry:

* ``arctanh``: plain sums ``N_j += Σ_{i∈block} R_ij`` (bounded ratios, no shift);
* ``temperature``: a running maximum ``m_j`` with rescaling (online softmax)::

      m' = max(m, max_{i∈block} ℓ_ij),   N_j ← N_j·e^(m - m') + Σ_{i∈block} e^(ℓ_ij - m'),
      Σ_p log R_jp ← Σ_p log R_jp - |P(j)|·(m' - m) + Σ_{p∈block} (ℓ_jp - m').

Backward, per block: recompute ``S[r]``, its weights and ``G[r] = ∂L/∂S[r]`` (the
kernel's ``single_weights`` / ``masked_gradient`` with the block's rows of the per-anchor
factors and, when symmetric, the full column factors), then
``dU_a[r] = G[r]·U_c`` (a per-block output) and ``dU_c += G[r]ᵀ·U_a[r]`` (the carry).

The loop is pluggable (see :func:`python_loop` and ``engine``): a backend passes a
driver that runs ``body`` natively (``lax.scan``, ``tf.while_loop``). Every block has the
same shape (the last is padded with dead rows), so such drivers need no dynamic shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._blocks import Tiling, block_rows, keep_mask, masks, similarity
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
from ._layouts import (
    _NORMALISED,
    Problem,
    Residuals,
    _partner,
    _store,
    combine_directions,
    fuses_gradient,
    load_directions,
)
from ._maps import LogitMap, make_map
from ._namespace import Array, Namespace, cast_like, device_of, scalar, to_compute
from ._normalize import normalize, normalize_vjp
from ._options import AUTO_CHUNK
from ._reduce import reduce

AUTO_BLOCK_BYTES = 64 * 2**20
"""``chunk_size="auto"``: the most rows whose block of ``S`` takes at most 64 MiB
(a block's few same-sized temporaries then stay within a few hundred MiB)."""

Carry = tuple[Array, ...]
Body = Callable[[Any, Carry], tuple[Carry, tuple[Array, ...]]]
Loop = Callable[[Body, int, Carry], tuple[Carry, tuple[Array, ...]]]


def python_loop(xp: Namespace) -> Loop:
    """The default driver: a Python ``for`` over the blocks, in order.

    ``loop(body, n_blocks, carry) -> (carry, stacked)`` calls ``carry, out = body(b, carry)``
    for ``b = 0 .. n_blocks - 1`` and stacks each output over the blocks (a new leading
    axis of length ``n_blocks``), as ``jax.lax.scan`` does.
    """

    def loop(body: Body, n_blocks: int, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        per_block = []
        for index in range(n_blocks):
            carry, outputs = body(index, carry)
            per_block.append(outputs)
        return carry, tuple(xp.stack(list(parts), axis=0) for parts in zip(*per_block, strict=True))

    return loop


def block_size(problem: Problem, n: int, m: int, depth: int) -> int:
    """Rows per block: ``chunk_size`` (at most ``n``), or for ``"auto"`` the most rows whose
    block takes ``<= AUTO_BLOCK_BYTES`` (``m`` similarities per row, times ``1 + D`` with
    per-row negatives, whose ``(c, M, D)`` block is gathered too; ``depth`` is that ``D``)."""
    if problem.chunk_size == AUTO_CHUNK:
        per_row = m * (8 if problem.float64 else 4) * (1 + depth)
        return max(1, min(n, AUTO_BLOCK_BYTES // per_row))
    assert isinstance(problem.chunk_size, int)
    return min(problem.chunk_size, n)


def residual_keys(problem: Problem) -> tuple[str, ...]:
    """The normalised embeddings, the index vectors that rebuild the masks, the stats."""
    per_axis = ("neg", "pos", "count", "shift") if problem.masked else (
        "neg", "spos", "has", "shift")
    stats = tuple(f"{k}{axis}" for axis in problem.axes for k in per_axis)
    return (*_NORMALISED[problem.layout], "labels", "where", *stats)


# --------------------------------------------------------------------------- set-up


def _setup(problem: Problem, arrays: tuple, xp: Namespace):
    """Normalise and collect the vectors the blocks need (no matrix). Returns the residuals
    so far and, for the single-positive kernel, ``(s_positive, has_positive)``."""
    layout = problem.layout
    res: Residuals = {"labels": None, "where": None}
    single = None
    if layout in ("pairs", "negatives"):
        query, key, third, where = arrays
        uq, nq = normalize(to_compute(query, xp), xp)
        uk, nk = normalize(to_compute(key, xp), xp)
        res.update(uq=uq, nq=nq, uk=uk, nk=nk)
        if layout == "negatives":
            un, nn = normalize(to_compute(third, xp), xp)
            res.update(un=un, nn=nn)
        elif problem.masked:
            res["labels"] = third
        if layout == "pairs":
            res["where"] = where
        if not problem.masked:
            has = (xp.arange(uq.shape[0], device=device_of(uq)) >= 0) if where is None else where
            single = (xp.sum(uq * uk, axis=1), has)
    elif layout == "nt_xent":
        z1, z2, where = arrays
        u, norm = normalize(to_compute(xp.concat([z1, z2], axis=0), xp), xp)
        res.update(u=u, norm=norm)
        n2 = u.shape[0]
        has = xp.arange(n2, device=device_of(u)) >= 0
        if where is not None:
            has = xp.concat([where, where])
            res["where"] = has
        single = (xp.sum(u * xp.take(u, _partner(n2, u, xp), axis=0), axis=1), has)
    else:  # sup_con (the similarity layout is never tiled)
        features, labels, where = arrays
        flat = to_compute(features, xp)
        if problem.views:
            n, v, d = features.shape
            flat = xp.reshape(xp.permute_dims(flat, (1, 0, 2)), (v * n, d))
            labels = xp.concat([labels] * v)
            where = None if where is None else xp.concat([where] * v)
        u, norm = normalize(flat, xp)
        res.update(u=u, norm=norm, labels=labels, where=where)
    return res, single


def _tiling(problem: Problem, res: Residuals, xp: Namespace) -> Tiling:
    layout, where = problem.layout, res["where"]
    if layout == "pairs":
        return Tiling(res["uq"], res["uk"], where_rows=where, where_cols=where,
                      labels=res["labels"], diagonal=not problem.masked)
    if layout == "negatives":
        return Tiling(res["uq"], res["un"], per_row=len(res["un"].shape) == 3)
    u = res["u"]
    if layout == "nt_xent":
        return Tiling(u, u, where_cols=where, diagonal=True, partner=_partner(u.shape[0], u, xp))
    return Tiling(u, u, where_rows=where, where_cols=where, labels=res["labels"], diagonal=True)


def _plan(problem: Problem, t: Tiling) -> tuple[int, int]:
    """``(rows per block, number of blocks)``."""
    depth = int(t.candidates.shape[-1]) if t.per_row else 0
    rows = block_size(problem, t.n, t.m, depth)
    return rows, -(-t.n // rows)


def _unblock(stacked: Array, n: int, xp: Namespace) -> Array:
    """``(blocks, c, ...)`` back to ``(n, ...)``: the padded rows sit at the very end."""
    blocks, rows = stacked.shape[0], stacked.shape[1]
    return xp.reshape(stacked, (blocks * rows, *stacked.shape[2:]))[:n, ...]


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
    return m_new, finite, xp.exp(m_old - finite)  # e^(-inf) = 0 while m is still empty


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
    # Σ_p (ℓ_jp - m) moves by -|P(j)|·Δm when the shift moves by Δm
    return (negatives * factor + neg, positives * factor + pos, count + cnt,
            log_sum - count * (finite - _finite(m_old, xp)) + logs, m_new)


def block_gradient(
    problem: Problem,
    fmap: LogitMap,
    s: Array,
    block_masks: Any,
    per_direction: Any,
    r: Array,
    live: Array,
    xp: Namespace,
) -> Array:
    """``G[r] = ∂L/∂S[r]`` of one block: the row direction's factors taken at the rows
    ``r`` (0 on dead rows), the column direction's (symmetric) whole. ``per_direction``:
    the masked kernel's ``(axis, stats, A)`` or the single-positive kernel's scales.
    Shared by the tiled and the sharded backward."""
    zero = scalar(0.0, s, xp)
    if problem.masked:
        positive, valid = block_masks
        _, st, coef = per_direction[0]
        blk = [(1, _take_stats(st, r, xp), xp.where(live, xp.take(coef, r, axis=0), zero))]
        return masked_gradient(s, positive, valid, fmap, (*blk, *per_direction[1:]), xp)
    _, scaled, shift = per_direction[0]
    blk = [(1, xp.where(live, xp.take(scaled, r, axis=0), zero),
            None if shift is None else xp.take(shift, r, axis=0))]
    return single_weights(s, block_masks, fmap, (*blk, *per_direction[1:]), xp)


# --------------------------------------------------------------------------- forward


def block_forward(
    problem: Problem,
    fmap: LogitMap,
    s: Array,
    block_masks: Any,
    single: tuple[Array, Array] | None,
    r: Array,
    carry: Carry,
    xp: Namespace,
) -> tuple[Carry, tuple[Array, ...]]:
    """The statistics of the rows ``r`` of one block ``s`` of ``S`` (``block_masks``:
    ``(positive, valid)`` for the masked kernel, ``keep`` for the single-positive one) and,
    when symmetric, the column sums added to ``carry``. Shared by the tiled and the sharded
    evaluations, which differ only in how a block and its masks are made."""
    if problem.masked:
        positive, valid = block_masks
        loss, st = masked_losses(s, positive, valid, fmap, 1, xp)
        out = (loss, st.negatives, st.positives, st.count)
        if problem.symmetric:
            carry = _masked_columns(fmap, carry, s, positive, valid, xp)
    else:
        assert single is not None
        keep = block_masks
        s_pos, has = (xp.take(v, r, axis=0) for v in single)
        loss, st, ratio = single_losses(s, s_pos, keep, has, fmap, 1, xp)
        out = (loss, st.negatives)
        if problem.symmetric:
            carry = _single_columns(fmap, carry, s, keep, ratio, xp)
    return carry, out + ((st.shift,) if fmap.needs_shift else ())


def forward(
    problem: Problem, arrays: tuple, xp: Namespace, *, loop: Loop | None = None
) -> tuple[Array, Residuals]:
    """The loss (compute dtype) and the tiled residuals (no matrix among them)."""
    res, single = _setup(problem, arrays, xp)
    t = _tiling(problem, res, xp)
    rows, n_blocks = _plan(problem, t)
    fmap = make_map(problem.options, problem.float64)
    symmetric = problem.symmetric
    dead_rows = symmetric and t.n % rows != 0
    dtype = t.anchors.dtype
    zeros = xp.zeros((t.m,), dtype=dtype, device=device_of(t.anchors))
    carry: Carry = ()
    if symmetric:
        carry = (zeros,) if not problem.masked else (zeros, zeros, zeros, zeros)
        if fmap.needs_shift:
            carry = (*carry, zeros - float("inf"))

    def body(index: Any, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        r, live = block_rows(index, rows, t.n, t.anchors, xp)
        s, _ = similarity(t, r, xp)
        return block_forward(problem, fmap, s, masks(t, r, live, dead_rows, xp)
                             if problem.masked else keep_mask(t, r, live, dead_rows, xp),
                             single, r, carry, xp)

    carry, stacked = (loop or python_loop(xp))(body, n_blocks, carry)
    per_row = [_unblock(x, t.n, xp) for x in stacked]
    shift = per_row[-1] if fmap.needs_shift else None
    row_stats: SingleStats | MaskedStats
    if problem.masked:
        loss, neg, pos, count = per_row[:4]
        row_stats = MaskedStats(neg, pos, count, shift)
    else:
        loss, neg = per_row[:2]
        row_stats = SingleStats(neg, single[0], single[1], shift)
    directions = [(1, loss, row_stats)]
    if symmetric:
        directions.append((0, *_finish_columns(problem, fmap, carry, single, xp)))
    reduction = problem.options.reduction
    losses = []
    for axis, loss, st in directions:
        count = st.count if problem.masked else xp.astype(st.has_positive, dtype)
        losses.append(reduce(loss, count, reduction, xp))
        _store(res, axis, st)
    loss = combine_directions(problem, losses, arrays[0].shape[0], xp)
    return loss, {key: res.get(key) for key in residual_keys(problem)}


def _finish_columns(
    problem: Problem,
    fmap: LogitMap,
    carry: Carry,
    single: tuple[Array, Array] | None,
    xp: Namespace,
) -> tuple[Array, SingleStats | MaskedStats]:
    """The column direction's losses and statistics from the summed carry."""
    if problem.masked:
        if fmap.needs_shift:
            *sums, m = carry
            return masked_finish(*sums, _finite(m, xp), fmap, xp)
        return masked_finish(*carry, None, fmap, xp)
    assert single is not None
    s_positive, has = single
    negatives = carry[0]
    shift = None
    if fmap.needs_shift:  # as the untiled kernel: max(kept maximum, positive logit)
        m = carry[1]  # -inf for a column without negatives, where N = 0
        shift = fmap.single_shift(m, s_positive, xp)
        negatives = negatives * xp.exp(m - shift)  # N was summed relative to m (finite)
    return single_finish(negatives, s_positive, has, shift, fmap, xp)


# --------------------------------------------------------------------------- backward


def _take_stats(
    st: SingleStats | MaskedStats, r: Array, xp: Namespace
) -> SingleStats | MaskedStats:
    """The statistics of rows ``r``."""
    def take(v: Array | None) -> Array | None:
        return None if v is None else xp.take(v, r, axis=0)

    if isinstance(st, MaskedStats):
        return MaskedStats(take(st.negatives), take(st.positives), take(st.count),
                           take(st.shift))
    return SingleStats(take(st.negatives), take(st.s_positive), take(st.has_positive),
                       take(st.shift))


def backward(
    problem: Problem, res: Residuals, cotangent: Array, xp: Namespace, *,
    loop: Loop | None = None,
) -> tuple[Array, ...]:
    """Gradients of ``Σ cotangent · loss`` from the tiled residuals (SPEC §2, "Analytic
    gradient"), each cast to its input's dtype."""
    t = _tiling(problem, res, xp)
    rows, n_blocks = _plan(problem, t)
    fmap = make_map(problem.options, problem.float64)
    dtype = t.anchors.dtype
    directions = load_directions(problem, res, cotangent, dtype, xp)
    symmetric = problem.symmetric
    dead_rows = symmetric and t.n % rows != 0
    g_positive = None
    if not problem.masked:
        scales, positive_grads = single_scales(directions, fmap, xp)
        g_positive = positive_grads[0] if len(positive_grads) == 1 else (
            positive_grads[0] + positive_grads[1])
    carry: Carry = () if t.per_row else (xp.zeros_like(t.candidates),)

    def body(index: Any, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        r, live = block_rows(index, rows, t.n, t.anchors, xp)
        s, a = similarity(t, r, xp)
        g = block_gradient(problem, fmap, s, masks(t, r, live, dead_rows, xp)
                           if problem.masked else keep_mask(t, r, live, dead_rows, xp),
                           directions if problem.masked else scales, r, live, xp)
        return _products(t, g, r, a, carry, xp)

    carry, stacked = (loop or python_loop(xp))(body, n_blocks, carry)
    du_a = _unblock(stacked[0], t.n, xp)
    du_c = _unblock(stacked[1], t.n, xp) if t.per_row else carry[0]
    grads = _embedding_gradients(problem, res, du_a, du_c, g_positive, xp)
    return tuple(cast_like(gr, dt, xp) for gr, dt in zip(grads, problem.dtypes, strict=True))


def _products(
    t: Tiling, g: Array, r: Array, a: Array, carry: Carry, xp: Namespace
) -> tuple[Carry, tuple[Array, ...]]:
    """One block's share of the embedding gradients from ``G[r]``: ``dU_a[r] = G[r]·U_c``
    (a per-block output) and ``dU_c += G[r]ᵀ·U_a[r]`` (the carry, updated in place where
    arrays are mutable: the carry is the loop's own); with per-row negatives ``dU_c[r]``
    is a per-block output too."""
    if t.per_row:
        c = xp.take(t.candidates, r, axis=0)
        return carry, ((g[:, None, :] @ c)[:, 0, :], g[:, :, None] * a[:, None, :])
    du_c = carry[0]
    du_c += xp.matrix_transpose(g) @ a
    return (du_c,), (g @ t.candidates,)


def _embedding_gradients(
    problem: Problem, res: Residuals, du_a: Array, du_c: Array, g_positive: Array | None,
    xp: Namespace,
) -> tuple[Array, ...]:
    """As ``_layouts._embedding_gradients``, from ``G·U_c`` and ``Gᵀ·U_a`` summed over the
    blocks: add the positives' terms, then go back through the normalisation."""
    layout = problem.layout
    if layout in ("pairs", "negatives"):
        uq, uk = res["uq"], res["uk"]
        duq = du_a
        duk = du_c if layout == "pairs" else xp.zeros_like(uk)
        if g_positive is not None:  # the positive pair (q_i, k_i), outside the matrix
            duq = duq + g_positive[:, None] * uk
            duk = duk + g_positive[:, None] * uq
        grads = [normalize_vjp(uq, res["nq"], duq, xp), normalize_vjp(uk, res["nk"], duk, xp)]
        if layout == "negatives":
            grads.append(normalize_vjp(res["un"], res["nn"], du_c, xp))
        return tuple(grads)
    u = res["u"]
    du = du_a + du_c  # anchors and candidates are the same rows: (G + Gᵀ)·U
    if g_positive is not None:  # NT-Xent: pair (i, partner(i)) contributes both ways
        partner = _partner(u.shape[0], u, xp)
        both = g_positive + xp.take(g_positive, partner, axis=0)
        du = du + both[:, None] * xp.take(u, partner, axis=0)
    dz = normalize_vjp(u, res["norm"], du, xp)
    if layout == "nt_xent":
        half = dz.shape[0] // 2
        return (dz[:half, :], dz[half:, :])
    if problem.views:
        total, d = dz.shape
        v = problem.views
        return (xp.permute_dims(xp.reshape(dz, (v, total // v, d)), (1, 0, 2)),)
    return (dz,)


# --------------------------------------------------------------------------- value and gradient


def value_and_grad(
    problem: Problem, arrays: tuple, xp: Namespace, *, loop: Loop | None = None
) -> tuple[Array, tuple[Array, ...]]:
    """The loss and its gradients w.r.t. the differentiable inputs, in one pass over the
    blocks of ``S`` (for problems where :func:`fuses_gradient` holds).

    Each block's rows see all their candidates, so right after a block's statistics
    (``N_i``, ``Z_i``) are summed, the same block gives ``G[r] = ∂L/∂S[r]`` with the anchor
    weights ``A_i = 1`` (0 without a positive), then ``dU_a[r] = G[r]·U_c`` and
    ``dU_c += G[r]ᵀ·U_a[r]``: three matrix products in all, as untiled, with every block
    used while it is in cache and no ``N × M`` array. ``"mean"`` divides the result by the
    number of anchors with a positive afterwards (the gradient is linear in a uniform
    ``A``). Gradients come back in the compute dtype, for ``cotangent = 1``: the caller
    scales them (:func:`scale_gradients`) once the cotangent is known. ``chunk_size=None``
    takes all rows as one block.
    """
    assert fuses_gradient(problem)
    res, single = _setup(problem, arrays, xp)
    t = _tiling(problem, res, xp)
    rows, n_blocks = (t.n, 1) if problem.chunk_size is None else _plan(problem, t)
    fmap = make_map(problem.options, problem.float64)
    dtype = t.anchors.dtype
    zero = scalar(0.0, t.anchors, xp)
    one = scalar(1.0, t.anchors, xp)
    carry: Carry = () if t.per_row else (xp.zeros_like(t.candidates),)

    def body(index: Any, carry: Carry) -> tuple[Carry, tuple[Array, ...]]:
        r, live = block_rows(index, rows, t.n, t.anchors, xp)
        s, a = similarity(t, r, xp)
        if problem.masked:
            block_masks = masks(t, r, live, False, xp)
            loss, st = masked_losses(s, *block_masks, fmap, 1, xp)
            count = st.count
            coef = xp.where(xp.logical_and(live, count > 0), one, zero)
            g = masked_gradient(s, *block_masks, fmap, ((1, st, coef),), xp)
            extra: tuple[Array, ...] = ()
        else:
            assert single is not None
            keep = keep_mask(t, r, live, False, xp)
            s_pos, has = (xp.take(v, r, axis=0) for v in single)
            ratio = weight = None
            if not fmap.needs_shift:
                ratio, weight = fmap.ratio_and_weight(s, keep, xp)
            loss, st, _ = single_losses(s, s_pos, keep, has, fmap, 1, xp, ratio=ratio)
            count = xp.astype(has, dtype)
            coef = xp.where(xp.logical_and(live, has), one, zero)
            scales, positive_grads = single_scales(((1, st, coef),), fmap, xp)
            g = single_weights(s, keep, fmap, scales, xp, weight=weight)
            extra = (positive_grads[0],)
        carry, products = _products(t, g, r, a, carry, xp)
        return carry, (loss, count, *products, *extra)

    carry, stacked = (loop or python_loop(xp))(body, n_blocks, carry)
    per_row = [_unblock(x, t.n, xp) for x in stacked]
    losses, count, du_a = per_row[:3]
    du_c = per_row[3] if t.per_row else carry[0]
    g_positive = None if problem.masked else per_row[-1]
    reduction = problem.options.reduction
    loss = combine_directions(problem, [reduce(losses, count, reduction, xp)],
                              arrays[0].shape[0], xp)
    grads = _embedding_gradients(problem, res, du_a, du_c, g_positive, xp)
    if reduction == "mean":
        anchors = xp.sum(xp.astype(count > 0, dtype))
        factor = 1 / xp.maximum(anchors, scalar(1.0, anchors, xp))
        grads = tuple(gr * factor for gr in grads)
    return loss, grads


def scale_gradients(
    problem: Problem, grads: tuple[Array, ...], cotangent: Array, xp: Namespace
) -> tuple[Array, ...]:
    """``cotangent · grads`` (the gradients of :func:`value_and_grad`), each cast to its
    input's dtype."""
    return tuple(cast_like(g * cast_like(cotangent, g.dtype, xp), dt, xp)
                 for g, dt in zip(grads, problem.dtypes, strict=True))
