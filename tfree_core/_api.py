"""The public functions of the core: the loss in every layout of SPEC §3, its analytic
gradient, and the logit map itself."""

from __future__ import annotations

from typing import Any

from . import _validation as check
from ._layouts import ARRAY_NAMES
from ._namespace import Array, Namespace, device_of, namespace_of, scalar, to_compute
from ._options import DEFAULT_EPS, check_eps_for_dtype, clip_bound, make_options
from .engine import (
    DIFFERENTIABLE,
    backward,
    check_values,
    forward,
    fuses_gradient,
    loss_shape,
    prepare,
    scale_gradients,
    value_and_grad,
)

_COMMON_DOC = """
    Common keywords (SPEC §2):
        where: optional boolean ``(N,)``; rows where it is False are neither anchors nor
            candidates, as if absent (padding), and get a zero gradient.
        logit_map: ``"arctanh"`` (default, ``ℓ = 2·atanh(clip(s, -b, b))``, no temperature)
            or ``"temperature"`` (InfoNCE, ``ℓ = s/τ``; for comparisons).
        temperature: ``τ > 0``, only with ``logit_map="temperature"``.
        eps: the clip ``b = largest value <= 1 - eps`` in the compute dtype (default 1e-6,
            logit cap 14.5087 in float64, 14.4955 in float32).
        reduction: ``"mean"`` over anchors with a positive (0 if none), ``"sum"``, or
            ``"none"`` (per-anchor losses, 0 for anchors without a positive).
        chunk_size: ``"auto"`` (default): chosen from the static shapes and the device:
            the whole ``N × M`` similarity matrix while it is small (up to 8 MiB on a CPU,
            1 GiB on an accelerator), else tiled in blocks of at most 8 MiB (CPU: they stay
            in cache) or 64 MiB. ``None``: always the whole matrix, kept for the gradient
            (three matrix products). A positive int: tiled, ``chunk_size`` anchors at a
            time, each block of the matrix recomputed in the gradient, so no ``N × M``
            array exists (extra memory ``O((N + M)·D + chunk_size·M)``, four matrix
            products instead of three). Results agree to round-off whatever the choice.
            :func:`loss_from_similarity` is never tiled (its matrix is an input): an int
            there is a ``ValueError``.
            Where the gradient is asked for (``*_value_and_grad``), one direction (not
            ``symmetric``) with ``"mean"`` or ``"sum"`` computes its gradient in the
            same pass as the loss, block by block while each block is in cache: three
            matrix products and no ``N × M`` residual whatever ``chunk_size`` is.
        check_finite: ``True``: count the NaN and ±inf values of the floating inputs first
            and raise ``ValueError`` (naming the input and the count) if there are any. A
            value check: it reads the arrays, so it costs a pass over them and needs
            concrete values. Default ``False``: no value is read.
        xp: the array namespace; inferred from the arrays when None.

    The loss is returned in the compute dtype: float64 for float64 inputs, float32 for
    float16 / bfloat16 / float32 inputs.
"""


def _run(
    layout: str,
    arrays: tuple[Array | None, ...],
    *,
    symmetric: bool = False,
    logit_map: str,
    temperature: float | None,
    eps: float,
    reduction: str,
    chunk_size: int | str | None = "auto",
    xp: Namespace | None,
    with_grad: bool = False,
    cotangent: Any = None,
    check_finite: bool = False,
):
    check.check_flag("check_finite", check_finite)
    if xp is None:  # one library, named per argument before the namespace is inferred
        check.check_one_library(list(zip(ARRAY_NAMES[layout], arrays, strict=True)))
    xp = namespace_of(*arrays, xp=xp)
    options = make_options(
        logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction
    )
    problem = prepare(
        layout, arrays, options=options, symmetric=symmetric, chunk_size=chunk_size, xp=xp
    )
    shape = loss_shape(problem, arrays)
    if with_grad and cotangent is not None and not isinstance(cotangent, (int, float)):
        namespace_of(arrays[0], cotangent)
        check.check_cotangent(cotangent, shape, reduction, xp)
    if check_finite:
        names = DIFFERENTIABLE[layout]
        check.check_finite(list(zip(names, arrays[: len(names)], strict=True)), xp)
    check_values(problem, arrays, xp)  # value checks too before any work
    if with_grad and fuses_gradient(problem):  # one pass: the gradient with the loss
        loss, residuals = value_and_grad(problem, arrays, xp)
        finish = scale_gradients
    else:
        loss, residuals = forward(problem, arrays, xp, check_values=False)
        finish = backward
    if not with_grad:
        return loss
    if cotangent is None:
        cotangent = xp.ones(shape, dtype=loss.dtype, device=device_of(loss))
    elif isinstance(cotangent, (int, float)):
        if shape:
            raise TypeError(
                f"cotangent must be an array of shape {shape} for reduction='none'; got a scalar"
            )
        cotangent = scalar(float(cotangent), loss, xp)
    return loss, finish(problem, residuals, cotangent, xp)


_negatives_conflicts = check.check_negatives_conflicts


def info_nce(
    query: Array,
    key: Array,
    *,
    negatives: Array | None = None,
    labels: Array | None = None,
    symmetric: bool = False,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> Array:
    """The pairs layout (InfoNCE, CLIP) with the temperature-free logit map.

    For query ``i`` the candidates are all keys (plus ``negatives``) and the positive is key
    ``i`` (or, with ``labels``, every key of the same label)::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)],
        ℓ_ij = 2·atanh(clip(⟨q_i, k_j⟩/(‖q_i‖‖k_j‖), -b, b))

    Args:
        query, key: ``(N, D)`` embeddings (not normalised: the loss normalises rows).
        negatives: ``(M, D)`` shared or ``(N, M, D)`` per-row extra negatives (MoCo).
        labels: integer ``(N,)``; keys with the same label as the query are positives.
        symmetric: average both directions, ``½(L_q→k + L_k→q)`` (CLIP).
    """
    _negatives_conflicts(negatives, labels, symmetric)
    if negatives is not None:
        return _run("negatives", (query, key, negatives, where), logit_map=logit_map,
                    temperature=temperature, eps=eps, reduction=reduction,
                    chunk_size=chunk_size, xp=xp, check_finite=check_finite)
    return _run("pairs", (query, key, labels, where), symmetric=symmetric, logit_map=logit_map,
                temperature=temperature, eps=eps, reduction=reduction, chunk_size=chunk_size,
                xp=xp, check_finite=check_finite)


def info_nce_value_and_grad(
    query: Array,
    key: Array,
    *,
    negatives: Array | None = None,
    labels: Array | None = None,
    symmetric: bool = False,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    cotangent: Any = None,
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> tuple[Array, tuple[Array, ...]]:
    """:func:`info_nce` and its analytic gradient ``(d_query, d_key[, d_negatives])``.

    The gradient is that of ``Σ cotangent · loss`` (``cotangent`` defaults to 1, or to ones
    of the loss's shape for ``reduction="none"``), computed by the formulas of SPEC §2, each
    cast to its input's dtype.
    """
    _negatives_conflicts(negatives, labels, symmetric)
    if negatives is not None:
        return _run("negatives", (query, key, negatives, where), logit_map=logit_map,
                    temperature=temperature, eps=eps, reduction=reduction,
                    chunk_size=chunk_size, xp=xp,
                    check_finite=check_finite, with_grad=True, cotangent=cotangent)
    return _run("pairs", (query, key, labels, where), symmetric=symmetric, logit_map=logit_map,
                temperature=temperature, eps=eps, reduction=reduction, chunk_size=chunk_size,
                xp=xp, check_finite=check_finite, with_grad=True, cotangent=cotangent)


def nt_xent(
    z1: Array,
    z2: Array,
    *,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> Array:
    """NT-Xent (SimCLR): ``Z = [z1; z2]`` of ``2N`` rows; each row's candidates are the other
    ``2N - 1`` rows and its positive is the other view ``i ± N``. ``reduction="none"`` gives
    ``(2N,)``, the ``z1`` anchors first."""
    return _run("nt_xent", (z1, z2, where), logit_map=logit_map, temperature=temperature,
                eps=eps, reduction=reduction, chunk_size=chunk_size, xp=xp,
                check_finite=check_finite)


def nt_xent_value_and_grad(
    z1: Array,
    z2: Array,
    *,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    cotangent: Any = None,
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> tuple[Array, tuple[Array, ...]]:
    """:func:`nt_xent` and its analytic gradient ``(d_z1, d_z2)``."""
    return _run("nt_xent", (z1, z2, where), logit_map=logit_map, temperature=temperature,
                eps=eps, reduction=reduction, chunk_size=chunk_size, xp=xp,
                check_finite=check_finite, with_grad=True,
                cotangent=cotangent)


def sup_con(
    features: Array,
    labels: Array,
    *,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> Array:
    """Supervised contrastive loss (SupCon, "outside" average): ``features`` ``(N, D)`` or
    ``(N, V, D)`` (views flattened view-major); candidates are all other rows, positives the
    rows of the same label. ``reduction="none"`` gives ``(N,)`` or ``(N, V)``."""
    return _run("sup_con", (features, labels, where), logit_map=logit_map,
                temperature=temperature, eps=eps, reduction=reduction, chunk_size=chunk_size,
                xp=xp, check_finite=check_finite)


def sup_con_value_and_grad(
    features: Array,
    labels: Array,
    *,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    cotangent: Any = None,
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> tuple[Array, tuple[Array, ...]]:
    """:func:`sup_con` and its analytic gradient ``(d_features,)``."""
    return _run("sup_con", (features, labels, where), logit_map=logit_map,
                temperature=temperature, eps=eps, reduction=reduction, chunk_size=chunk_size,
                xp=xp, check_finite=check_finite, with_grad=True, cotangent=cotangent)


def loss_from_similarity(
    similarity: Array,
    positive_mask: Array,
    *,
    valid_mask: Array | None = None,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> Array:
    """The loss on a precomputed similarity matrix ``S`` ``(N, M)`` (rows are anchors);
    ``valid_mask`` (default: all) gives the candidates, ``positive_mask`` the positives,
    which must lie inside the valid mask (``ValueError`` otherwise, checked eagerly)."""
    return _run("similarity", (similarity, positive_mask, valid_mask, where),
                logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction,
                chunk_size=chunk_size, xp=xp, check_finite=check_finite)


def loss_from_similarity_value_and_grad(
    similarity: Array,
    positive_mask: Array,
    *,
    valid_mask: Array | None = None,
    where: Array | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    cotangent: Any = None,
    check_finite: bool = False,
    xp: Namespace | None = None,
) -> tuple[Array, tuple[Array, ...]]:
    """:func:`loss_from_similarity` and its analytic gradient ``(d_similarity,)``."""
    return _run("similarity", (similarity, positive_mask, valid_mask, where),
                logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction,
                chunk_size=chunk_size, xp=xp,
                check_finite=check_finite, with_grad=True, cotangent=cotangent)


for _f in (info_nce, nt_xent, sup_con, loss_from_similarity):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC


def logits(similarity: Array, *, eps: float = DEFAULT_EPS, xp: Namespace | None = None) -> Array:
    """The temperature-free logit map ``φ(clip(s, -b, b))``, ``φ(s) = log((1+s)/(1-s)) =
    2·atanh(s)``, with ``b`` the largest compute-dtype value ``<= 1 - eps``.

    ``φ(0.5) = ln 3``, ``φ(0.9) = ln 19``; the cap ``φ(b)`` is 14.508657 (float64) and
    14.495466 (float32) at the default ``eps = 1e-6``. Returned in the compute dtype.
    """
    xp = namespace_of(similarity, xp=xp)
    options = make_options(eps=eps)
    check.check_floating("similarity", similarity, xp)
    float64 = similarity.dtype == xp.float64
    check_eps_for_dtype(options, float64)
    bound = clip_bound(options.eps, float64=float64)
    c = xp.clip(to_compute(similarity, xp), -bound, bound)
    return xp.log1p(c) - xp.log1p(-c)
