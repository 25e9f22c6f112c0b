"""The layouts of SPEC §3, each reduced to the kernel's ``(S, C, P)``.

A layout knows three things: how to check its arrays, how to build the similarity matrix
and the masks from normalised embeddings, and how to send ``G = ∂L/∂S`` back to the
embeddings. Everything else (logit map, softmax, reduction) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _validation as check
from ._kernel import AnchorStats, anchor_losses, similarity_gradient
from ._maps import make_map
from ._namespace import Array, Namespace, cast_like, device_of, to_compute
from ._normalize import normalize, normalize_vjp
from ._options import Options, check_eps_for_dtype
from ._reduce import anchor_weights, reduce

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


def _restrict(positive: Array, valid: Array | None, xp: Namespace) -> Array:
    return positive if valid is None else xp.logical_and(positive, valid)


def _stats_to_residuals(res: Residuals, stats: list[tuple[int, AnchorStats]]) -> None:
    for axis, st in stats:
        for key, value in zip(("neg", "pos", "count", "shift", "spos"), st.arrays(), strict=True):
            res[f"{key}{axis}"] = value


def _stats_from_residuals(res: Residuals, axis: int) -> AnchorStats:
    return AnchorStats(*(res[f"{k}{axis}"] for k in ("neg", "pos", "count", "shift", "spos")))


# --------------------------------------------------------------------------- validation


def validate(layout: str, arrays: tuple[Array | None, ...], problem_kw: dict, xp: Namespace):
    """Check ``arrays`` for ``layout`` and return the ``Problem`` (dtypes recorded)."""
    options: Options = problem_kw["options"]
    symmetric = problem_kw.get("symmetric", False)
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
    problem = Problem(layout, options, symmetric, dtypes, views, dtypes[0] == xp.float64)
    check_eps_for_dtype(options, problem.float64)
    return problem


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


# --------------------------------------------------------------------------- forward


def _matrix(problem: Problem, arrays: tuple, xp: Namespace, check_values: bool):
    """Normalised embeddings, ``S``, masks, directions; also the residuals to keep."""
    res: Residuals = {}
    layout = problem.layout
    if layout == "pairs":
        query, key, labels, where = arrays
        uq, nq = normalize(to_compute(query, xp), xp)
        uk, nk = normalize(to_compute(key, xp), xp)
        s = uq @ xp.matrix_transpose(uk)
        if labels is None:
            positive = _eye_mask(s.shape[0], s, xp)
        else:
            positive = labels[:, None] == labels[None, :]
        valid = None if where is None else _outer_and(where, xp)
        res.update(uq=uq, nq=nq, uk=uk, nk=nk)
        axes = (1, 0) if problem.symmetric else (1,)
        single = labels is None
    elif layout == "negatives":
        query, key, negatives, where = arrays
        uq, nq = normalize(to_compute(query, xp), xp)
        uk, nk = normalize(to_compute(key, xp), xp)
        un, nn = normalize(to_compute(negatives, xp), xp)
        s_pos = xp.sum(uq * uk, axis=1)
        if len(negatives.shape) == 2:
            s_neg = uq @ xp.matrix_transpose(un)
        else:
            s_neg = (uq[:, None, :] @ xp.matrix_transpose(un))[:, 0, :]
        s = xp.concat([s_pos[:, None], s_neg], axis=1)
        n, m = s.shape
        positive = xp.broadcast_to(_index(m, s, xp)[None, :] == 0, (n, m))
        valid = None if where is None else xp.broadcast_to(where[:, None], (n, m))
        res.update(uq=uq, nq=nq, uk=uk, nk=nk, un=un, nn=nn)
        axes, single = (1,), True
    elif layout == "nt_xent":
        z1, z2, where = arrays
        u, norm = normalize(to_compute(xp.concat([z1, z2], axis=0), xp), xp)
        s = u @ xp.matrix_transpose(u)
        n2 = s.shape[0]
        idx = _index(n2, s, xp)
        half = n2 // 2
        partner = xp.where(idx < half, idx + half, idx - half)
        positive = idx[None, :] == partner[:, None]
        valid = idx[:, None] != idx[None, :]
        if where is not None:
            valid = xp.logical_and(valid, _outer_and(xp.concat([where, where]), xp))
        res.update(u=u, norm=norm)
        axes, single = (1,), True
    elif layout == "sup_con":
        features, labels, where = arrays
        flat = to_compute(features, xp)
        if problem.views:
            n, v, d = features.shape
            flat = xp.reshape(xp.permute_dims(flat, (1, 0, 2)), (v * n, d))
            labels = xp.concat([labels] * v)
            where = None if where is None else xp.concat([where] * v)
        u, norm = normalize(flat, xp)
        s = u @ xp.matrix_transpose(u)
        not_self = xp.logical_not(_eye_mask(s.shape[0], s, xp))
        valid = not_self if where is None else xp.logical_and(not_self, _outer_and(where, xp))
        positive = labels[:, None] == labels[None, :]
        res.update(u=u, norm=norm)
        axes, single = (1,), False
    else:  # similarity
        similarity, positive, valid, where = arrays
        if check_values and valid is not None:
            check.check_positive_inside_valid(positive, valid, xp)
        s = to_compute(similarity, xp)
        if where is not None:
            rows = xp.broadcast_to(where[:, None], s.shape)
            valid = rows if valid is None else xp.logical_and(valid, rows)
        axes, single = (1,), False
    positive = _restrict(positive, valid, xp)
    res.update(s=s, positive=positive, valid=valid)
    return res, axes, single


def forward(
    problem: Problem, arrays: tuple, xp: Namespace, check_values: bool = True
) -> tuple[Array, Residuals]:
    """The loss (in the compute dtype) and the residuals its analytic gradient needs."""
    res, axes, single = _matrix(problem, arrays, xp, check_values)
    fmap = make_map(problem.options, problem.float64)
    reduction = problem.options.reduction
    losses, stats = [], []
    for axis in axes:
        loss, st = anchor_losses(res["s"], res["positive"], res["valid"], fmap, axis, single, xp)
        losses.append(reduce(loss, st.count, reduction, xp))
        stats.append((axis, st))
    _stats_to_residuals(res, stats)
    loss = losses[0] if len(losses) == 1 else (losses[0] + losses[1]) / 2
    if reduction == "none" and problem.layout == "sup_con" and problem.views:
        n = arrays[0].shape[0]
        loss = xp.matrix_transpose(xp.reshape(loss, (problem.views, n)))
    return loss, res


# --------------------------------------------------------------------------- backward


def backward(
    problem: Problem, res: Residuals, cotangent: Array, xp: Namespace
) -> tuple[Array, ...]:
    """Gradients of ``Σ cotangent · loss`` w.r.t. the differentiable inputs (SPEC §2,
    "Analytic gradient"), each cast to its input's dtype."""
    s = res["s"]
    cotangent = cast_like(cotangent, s.dtype, xp)
    reduction = problem.options.reduction
    if reduction == "none" and problem.layout == "sup_con" and problem.views:
        cotangent = xp.reshape(xp.matrix_transpose(cotangent), (-1,))
    axes = (1, 0) if "count0" in res else (1,)
    scale = 0.5 if len(axes) == 2 else 1.0
    directions = []
    for axis in axes:
        st = _stats_from_residuals(res, axis)
        directions.append((axis, st, anchor_weights(st.count, reduction, cotangent, scale, xp)))
    fmap = make_map(problem.options, problem.float64)
    g = similarity_gradient(s, res["positive"], res["valid"], fmap, tuple(directions), xp)
    layout = problem.layout
    if layout == "pairs":
        dq = normalize_vjp(res["uq"], res["nq"], g @ res["uk"], xp)
        dk = normalize_vjp(res["uk"], res["nk"], xp.matrix_transpose(g) @ res["uq"], xp)
        grads: tuple[Array, ...] = (dq, dk)
    elif layout == "negatives":
        uq, uk, un = res["uq"], res["uk"], res["un"]
        g_pos, g_neg = g[:, 0:1], g[:, 1:]
        if len(un.shape) == 2:
            duq_neg = g_neg @ un
            dun = xp.matrix_transpose(g_neg) @ uq
        else:
            duq_neg = (g_neg[:, None, :] @ un)[:, 0, :]
            dun = g_neg[:, :, None] * uq[:, None, :]
        dq = normalize_vjp(uq, res["nq"], g_pos * uk + duq_neg, xp)
        dk = normalize_vjp(uk, res["nk"], g_pos * uq, xp)
        grads = (dq, dk, normalize_vjp(un, res["nn"], dun, xp))
    elif layout in ("nt_xent", "sup_con"):
        u = res["u"]
        dz = normalize_vjp(u, res["norm"], (g + xp.matrix_transpose(g)) @ u, xp)
        if layout == "nt_xent":
            half = dz.shape[0] // 2
            grads = (dz[:half, :], dz[half:, :])
        elif problem.views:
            rows, d = dz.shape
            v = problem.views
            grads = (xp.permute_dims(xp.reshape(dz, (v, rows // v, d)), (1, 0, 2)),)
        else:
            grads = (dz,)
    else:
        grads = (g,)
    return tuple(cast_like(gr, dt, xp) for gr, dt in zip(grads, problem.dtypes, strict=True))
