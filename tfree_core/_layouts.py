"""The layouts of SPEC §3, each reduced to the kernel's ``(S, C, P)``.

A layout knows three things: how to check its arrays, how to build the similarity matrix
and the masks from normalised embeddings, and how to send ``G = ∂L/∂S`` back to the
embeddings. Everything else (logit map, softmax, reduction) is shared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import _strategy
from . import _validation as check
from ._kernel import (
    MaskedStats,
    SingleStats,
    masked_gradient,
    masked_losses,
    single_gradient,
    single_losses,
)
from ._maps import make_map
from ._namespace import Array, Namespace, cast_like, device_of, to_compute
from ._normalize import normalize, normalize_vjp
from ._options import AUTO_CHUNK, Options, check_chunk_size, check_eps_for_dtype
from ._reduce import anchor_weights, reduce
from ._strategy import device_kind, resolve_chunk_size

Residuals = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """Everything static about one call: layout, options, and the input dtypes.

    Hashable, so that backends can use it as a static argument (``jax.jit``,
    ``jax.custom_vjp``'s ``nondiff_argnums``) or a closure constant (``tf.custom_gradient``).
    """

    layout: str
    options: Options
    symmetric: bool = False
    dtypes: tuple[Any, ...] = ()
    views: int = 0  # sup_con with (N, V, D) features; 0 for (N, D)
    float64: bool = False  # the compute dtype: float64, or float32 for every other float
    masked: bool = False  # positives given by a mask (labels, SupCon, similarity level)
    chunk_size: int | str | None = None  # rows per block (``_tiled``), "auto", None: untiled

    @property
    def axes(self) -> tuple[int, ...]:
        """Directions: anchors along rows (1), and along columns (0) when symmetric."""
        return (1, 0) if self.symmetric else (1,)


def fuses_gradient(problem: Problem) -> bool:
    """Whether the gradient can be computed in the loss's own pass (``_tiled.value_and_grad``):
    every anchor's statistics are complete within its own block of rows (one direction, no
    column sums) and the upstream cotangent is a scalar (``"mean"`` or ``"sum"``), so the
    gradient is that scalar times a fixed array."""
    return (problem.layout != "similarity" and not problem.symmetric
            and problem.options.reduction != "none")


ARRAY_NAMES = {
    "pairs": ("query", "key", "labels", "where"),
    "negatives": ("query", "key", "negatives", "where"),
    "nt_xent": ("z1", "z2", "where"),
    "sup_con": ("features", "labels", "where"),
    "similarity": ("similarity", "positive_mask", "valid_mask", "where"),
}

# Differentiable inputs of each layout, in the order of the gradients returned.
DIFFERENTIABLE = {
    "pairs": ("query", "key"),
    "negatives": ("query", "key", "negatives"),
    "nt_xent": ("z1", "z2"),
    "sup_con": ("features",),
    "similarity": ("similarity",),
}


def _outer_and(w: Array, xp: Namespace) -> Array:
    return xp.logical_and(w[:, None], w[None, :])


def _index(n: int, like: Array, xp: Namespace) -> Array:
    return xp.arange(n, device=device_of(like))


def _eye_mask(n: int, like: Array, xp: Namespace) -> Array:
    idx = _index(n, like, xp)
    return idx[:, None] == idx[None, :]


# --------------------------------------------------------------------------- validation


def validate(layout: str, arrays: tuple[Array | None, ...], problem_kw: dict, xp: Namespace):
    """Check ``arrays`` for ``layout`` and return the ``Problem`` (dtypes recorded)."""
    options: Options = problem_kw["options"]
    symmetric = problem_kw.get("symmetric", False)
    chunk_size = check_chunk_size(problem_kw.get("chunk_size"))
    if layout == "similarity" and chunk_size not in (None, AUTO_CHUNK):
        raise ValueError(
            "chunk_size does not apply to loss_from_similarity: the similarity matrix is an "
            f"input, so there is nothing to tile; got chunk_size={chunk_size!r}"
        )
    views = 0
    if layout in ("pairs", "negatives"):
        query, key, third, where = arrays
        names = [("query", query), ("key", key)]
        for name, x in names:
            check.check_floating(name, x, xp)
            check.check_rank(name, x, (2,), "(N, D)")
            check.check_nonempty(name, x, (0, 1), ("row", "feature"))
        n, d = query.shape
        check.check_dim("key", key, 0, n, "query's N")
        check.check_dim("key", key, 1, d, "query's D")
        if layout == "pairs" and third is not None:
            check.check_labels("labels", third, n, xp)
        if layout == "negatives":
            check.check_floating("negatives", third, xp)
            check.check_rank("negatives", third, (2, 3), "(M, D) (shared)|(N, M, D) (per row)")
            check.check_nonempty("negatives", third, (-2,), ("negative",))
            check.check_dim("negatives", third, -1, d, "query's D")
            if len(third.shape) == 3:
                check.check_dim("negatives", third, 0, n, "query's N")
            names.append(("negatives", third))
        check.check_same_dtype(names)
        dtypes = tuple(x.dtype for _, x in names)
    elif layout == "nt_xent":
        z1, z2, where = arrays
        for name, x in (("z1", z1), ("z2", z2)):
            check.check_floating(name, x, xp)
            check.check_rank(name, x, (2,), "(N, D)")
            check.check_nonempty(name, x, (0, 1), ("row", "feature"))
        n, d = z1.shape
        check.check_dim("z2", z2, 0, n, "z1's N")
        check.check_dim("z2", z2, 1, d, "z1's D")
        check.check_same_dtype([("z1", z1), ("z2", z2)])
        dtypes = (z1.dtype, z2.dtype)
    elif layout == "sup_con":
        features, labels, where = arrays
        check.check_floating("features", features, xp)
        check.check_rank("features", features, (2, 3), "(N, D)|(N, V, D)")
        check.check_nonempty("features", features, tuple(range(len(features.shape))), (
            ("sample", "feature") if len(features.shape) == 2 else ("sample", "view", "feature")
        ))
        n = features.shape[0]
        check.check_labels("labels", labels, n, xp)
        views = int(features.shape[1]) if len(features.shape) == 3 else 0
        dtypes = (features.dtype,)
    elif layout == "similarity":
        similarity, positive_mask, valid_mask, where = arrays
        check.check_floating("similarity", similarity, xp)
        check.check_rank("similarity", similarity, (2,), "(N, M)")
        check.check_nonempty("similarity", similarity, (0, 1), ("anchor", "candidate"))
        shape = tuple(similarity.shape)
        check.check_mask("positive_mask", positive_mask, shape, xp)
        if valid_mask is not None:
            check.check_mask("valid_mask", valid_mask, shape, xp)
        dtypes = (similarity.dtype,)
    else:  # pragma: no cover - internal misuse
        raise ValueError(f"unknown layout {layout!r}")
    if where is not None:
        check.check_mask("where", where, (arrays[0].shape[0],), xp)
    check.check_same_device(list(zip(ARRAY_NAMES[layout], arrays, strict=True)))
    masked = layout in ("sup_con", "similarity") or (layout == "pairs" and arrays[2] is not None)
    float64 = dtypes[0] == xp.float64
    kind = (problem_kw.get("device_kind") or device_kind(device_of(arrays[0]))
            or _strategy.CPU)
    shape = _matrix_shape(layout, arrays)
    if shape["m"] is not None:  # sharded: the local rows meet every device's candidates
        shape["m"] *= problem_kw.get("world_size", 1)
    problem = Problem(layout, options, symmetric, dtypes, views, float64, masked)
    one_pass = (problem_kw.get("one_pass", True) and fuses_gradient(problem)
                and problem_kw.get("world_size", 1) == 1)
    chunk_size = resolve_chunk_size(chunk_size, **shape, float64=float64, kind=kind,
                                    one_pass=one_pass)
    problem = dataclasses.replace(problem, chunk_size=chunk_size)
    check_eps_for_dtype(options, problem.float64)
    return problem


def _static(size: object) -> int | None:
    """A size known now, or ``None`` (unknown in a graph, or symbolic under
    ``torch.compile(dynamic=True)``, where reading it would specialise the trace)."""
    return size if type(size) is int else None


def _matrix_shape(layout: str, arrays: tuple[Array | None, ...]) -> dict[str, int | None]:
    """``n`` anchors, ``m`` candidates per anchor and the per-row gather depth of ``S``
    (``None`` where a size is not static); the similarity layout is never tiled."""
    first = arrays[0]
    n = _static(first.shape[0])
    if layout == "similarity":
        return {"n": None, "m": None, "depth": 0}
    if layout == "negatives":
        negatives = arrays[2]
        depth = _static(negatives.shape[-1]) if len(negatives.shape) == 3 else 0
        return {"n": n, "m": _static(negatives.shape[-2]), "depth": depth or 0}
    if layout == "nt_xent":
        n = None if n is None else 2 * n
    elif layout == "sup_con" and len(first.shape) == 3:
        views = _static(first.shape[1])
        n = None if n is None or views is None else n * views
    return {"n": n, "m": n, "depth": 0}


def loss_shape(problem: Problem, arrays: tuple[Array | None, ...]) -> tuple[int, ...]:
    """Shape of the loss for ``reduction="none"`` (SPEC §2.7); ``()`` otherwise."""
    if problem.options.reduction != "none":
        return ()
    n = arrays[0].shape[0]
    if problem.layout == "nt_xent":
        return (2 * n,)
    if problem.layout == "sup_con" and problem.views:
        return (n, problem.views)
    return (n,)


# --------------------------------------------------------------------------- residuals

_NORMALISED = {
    "pairs": ("uq", "nq", "uk", "nk"),
    "negatives": ("uq", "nq", "uk", "nk", "un", "nn"),
    "nt_xent": ("u", "norm"),
    "sup_con": ("u", "norm"),
    "similarity": (),
}


def residual_keys(problem: Problem) -> tuple[str, ...]:
    """The names of the residuals of ``problem``, in order (a function of the static
    problem only, so backends can allocate for them before tracing)."""
    per_axis = ("neg", "pos", "count", "shift") if problem.masked else (
        "neg", "spos", "has", "shift")
    matrices = ("s", "positive", "valid") if problem.masked else ("s", "keep")
    stats = tuple(f"{k}{axis}" for axis in problem.axes for k in per_axis)
    return _NORMALISED[problem.layout] + matrices + stats


def _store(res: Residuals, axis: int, stats: SingleStats | MaskedStats) -> None:
    if isinstance(stats, MaskedStats):
        values = {"neg": stats.negatives, "pos": stats.positives, "count": stats.count}
    else:
        values = {"neg": stats.negatives, "spos": stats.s_positive, "has": stats.has_positive}
    values["shift"] = stats.shift
    for key, value in values.items():
        res[f"{key}{axis}"] = value


def _load(res: Residuals, axis: int, masked: bool) -> SingleStats | MaskedStats:
    if masked:
        return MaskedStats(res[f"neg{axis}"], res[f"pos{axis}"], res[f"count{axis}"],
                           res[f"shift{axis}"])
    return SingleStats(res[f"neg{axis}"], res[f"spos{axis}"], res[f"has{axis}"],
                       res[f"shift{axis}"])


def _partner(n2: int, like: Array, xp: Namespace) -> Array:
    """NT-Xent's positive of row ``i``: the other view ``i ± N``."""
    idx = _index(n2, like, xp)
    half = n2 // 2
    return xp.where(idx < half, idx + half, idx - half)


def _all_true(n: int, like: Array, xp: Namespace) -> Array:
    return _index(n, like, xp) >= 0


# --------------------------------------------------------------------------- forward


def _build(problem: Problem, arrays: tuple, xp: Namespace, check_values: bool):
    """Normalise, build ``S`` and the masks. Returns the residuals so far and, for the
    single-positive kernel, ``(s_positive, has_positive)``."""
    res: Residuals = {}
    layout = problem.layout
    single = None
    if layout in ("pairs", "negatives"):
        query, key, third, where = arrays
        uq, nq = normalize(to_compute(query, xp), xp)
        uk, nk = normalize(to_compute(key, xp), xp)
        res.update(uq=uq, nq=nq, uk=uk, nk=nk)
        n = uq.shape[0]
        if layout == "pairs":
            s = uq @ xp.matrix_transpose(uk)
        else:
            un, nn = normalize(to_compute(third, xp), xp)
            res.update(un=un, nn=nn)
            if len(un.shape) == 2:
                s = uq @ xp.matrix_transpose(un)
            else:
                s = (uq[:, None, :] @ xp.matrix_transpose(un))[:, 0, :]
        if problem.masked:  # pairs with labels
            positive = third[:, None] == third[None, :]
            valid = None if where is None else _outer_and(where, xp)
        else:
            has = _all_true(n, s, xp) if where is None else where
            single = (xp.sum(uq * uk, axis=1), has)
            keep = None
            if layout == "pairs":
                keep = xp.logical_not(_eye_mask(n, s, xp))
                if where is not None:  # masked keys drop out of every row and, when
                    # symmetric, masked queries out of every column
                    keep = xp.logical_and(keep, _outer_and(where, xp))
    elif layout == "nt_xent":
        z1, z2, where = arrays
        u, norm = normalize(to_compute(xp.concat([z1, z2], axis=0), xp), xp)
        res.update(u=u, norm=norm)
        s = u @ xp.matrix_transpose(u)
        n2 = s.shape[0]
        idx, partner = _index(n2, s, xp), _partner(n2, s, xp)
        keep = xp.logical_and(idx[:, None] != idx[None, :], idx[None, :] != partner[:, None])
        has = _all_true(n2, s, xp)
        if where is not None:
            has = xp.concat([where, where])
            keep = xp.logical_and(keep, has[None, :])
        single = (xp.sum(u * xp.take(u, partner, axis=0), axis=1), has)
    elif layout == "sup_con":
        features, labels, where = arrays
        flat = to_compute(features, xp)
        if problem.views:
            n, v, d = features.shape
            flat = xp.reshape(xp.permute_dims(flat, (1, 0, 2)), (v * n, d))
            labels = xp.concat([labels] * v)
            where = None if where is None else xp.concat([where] * v)
        u, norm = normalize(flat, xp)
        res.update(u=u, norm=norm)
        s = u @ xp.matrix_transpose(u)
        valid = xp.logical_not(_eye_mask(s.shape[0], s, xp))
        if where is not None:
            valid = xp.logical_and(valid, _outer_and(where, xp))
        positive = labels[:, None] == labels[None, :]
    else:  # similarity
        similarity, positive, valid, where = arrays
        if check_values and valid is not None:
            check.check_positive_inside_valid(positive, valid, xp)
        s = to_compute(similarity, xp)
        if where is not None:
            rows = xp.broadcast_to(where[:, None], s.shape)
            valid = rows if valid is None else xp.logical_and(valid, rows)
    if problem.masked:
        if valid is not None:
            positive = xp.logical_and(positive, valid)
        res.update(s=s, positive=positive, valid=valid)
    else:
        res.update(s=s, keep=keep)
    return res, single


def forward(
    problem: Problem, arrays: tuple, xp: Namespace, check_values: bool = True
) -> tuple[Array, Residuals]:
    """The loss (in the compute dtype) and the residuals its analytic gradient needs."""
    res, single = _build(problem, arrays, xp, check_values)
    fmap = make_map(problem.options, problem.float64)
    reduction = problem.options.reduction
    losses = []
    ratio = None
    for axis in problem.axes:
        stats: SingleStats | MaskedStats
        if problem.masked:
            loss, stats = masked_losses(res["s"], res["positive"], res["valid"], fmap, axis, xp)
            count = stats.count
        else:
            s_positive, has = single
            loss, stats, ratio = single_losses(
                res["s"], s_positive, res["keep"], has, fmap, axis, xp, ratio
            )
            count = xp.astype(has, loss.dtype)
        losses.append(reduce(loss, count, reduction, xp))
        _store(res, axis, stats)
    loss = combine_directions(problem, losses, arrays[0].shape[0], xp)
    return loss, {key: res.get(key) for key in residual_keys(problem)}


def combine_directions(problem: Problem, losses: list[Array], n: int, xp: Namespace) -> Array:
    """``½(L_q→k + L_k→q)`` when symmetric; SupCon's ``"none"`` back to ``(N, V)``."""
    loss = losses[0] if len(losses) == 1 else (losses[0] + losses[1]) / 2
    if problem.options.reduction == "none" and problem.layout == "sup_con" and problem.views:
        loss = xp.matrix_transpose(xp.reshape(loss, (problem.views, n)))
    return loss


# --------------------------------------------------------------------------- backward


def backward(
    problem: Problem, res: Residuals, cotangent: Array, xp: Namespace
) -> tuple[Array, ...]:
    """Gradients of ``Σ cotangent · loss`` w.r.t. the differentiable inputs (SPEC §2,
    "Analytic gradient"), each cast to its input's dtype."""
    s = res["s"]
    fmap = make_map(problem.options, problem.float64)
    directions = load_directions(problem, res, cotangent, s.dtype, xp)
    if problem.masked:
        g = masked_gradient(s, res["positive"], res["valid"], fmap, tuple(directions), xp)
        g_positive = None
    else:
        g, per_direction = single_gradient(s, res["keep"], fmap, tuple(directions), xp)
        g_positive = per_direction[0] if len(per_direction) == 1 else (
            per_direction[0] + per_direction[1])
    grads = _embedding_gradients(problem, res, g, g_positive, xp)
    return tuple(cast_like(gr, dt, xp) for gr, dt in zip(grads, problem.dtypes, strict=True))


def load_directions(
    problem: Problem, res: Residuals, cotangent: Array, dtype: object, xp: Namespace
) -> tuple[tuple[int, SingleStats | MaskedStats, Array], ...]:
    """``(axis, stats, A)`` per direction: the stored statistics and the anchor weights."""
    cotangent = cast_like(cotangent, dtype, xp)
    reduction = problem.options.reduction
    if reduction == "none" and problem.layout == "sup_con" and problem.views:
        cotangent = xp.reshape(xp.matrix_transpose(cotangent), (-1,))
    scale = 0.5 if problem.symmetric else 1.0
    directions = []
    for axis in problem.axes:
        st = _load(res, axis, problem.masked)
        count = st.count if problem.masked else xp.astype(st.has_positive, dtype)
        directions.append((axis, st, anchor_weights(count, reduction, cotangent, scale, xp)))
    return tuple(directions)


def _embedding_gradients(
    problem: Problem, res: Residuals, g: Array, g_positive: Array | None, xp: Namespace
) -> tuple[Array, ...]:
    """Send ``G = ∂L/∂S`` (and the positives' ``g_p``) back through ``S`` and the
    normalisation: ``dU_a = G·U_c``, ``dU_c = Gᵀ·U_a``, ``dz = (du - u⟨u,du⟩)/‖z‖``."""
    layout = problem.layout
    if layout in ("pairs", "negatives"):
        uq, uk = res["uq"], res["uk"]
        if layout == "pairs":
            duq = g @ uk
            duk = xp.matrix_transpose(g) @ uq
        else:
            un = res["un"]
            if len(un.shape) == 2:
                duq = g @ un
                dun = xp.matrix_transpose(g) @ uq
            else:
                duq = (g[:, None, :] @ un)[:, 0, :]
                dun = g[:, :, None] * uq[:, None, :]
            duk = xp.zeros_like(uk)
        if g_positive is not None:  # the positive pair (q_i, k_i), outside the matrix
            duq = duq + g_positive[:, None] * uk
            duk = duk + g_positive[:, None] * uq
        grads = [normalize_vjp(uq, res["nq"], duq, xp), normalize_vjp(uk, res["nk"], duk, xp)]
        if layout == "negatives":
            grads.append(normalize_vjp(un, res["nn"], dun, xp))
        return tuple(grads)
    if layout == "similarity":
        return (g,)
    u = res["u"]
    du = (g + xp.matrix_transpose(g)) @ u
    if g_positive is not None:  # NT-Xent: pair (i, partner(i)) contributes both ways
        partner = _partner(u.shape[0], u, xp)
        both = g_positive + xp.take(g_positive, partner, axis=0)
        du = du + both[:, None] * xp.take(u, partner, axis=0)
    dz = normalize_vjp(u, res["norm"], du, xp)
    if layout == "nt_xent":
        half = dz.shape[0] // 2
        return (dz[:half, :], dz[half:, :])
    if problem.views:
        rows, d = dz.shape
        v = problem.views
        return (xp.permute_dims(xp.reshape(dz, (v, rows // v, d)), (1, 0, 2)),)
    return (dz,)
