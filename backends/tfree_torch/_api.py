"""The public functions: the core's entry points for torch tensors, differentiable through
the core's analytic gradient (one ``torch.autograd.Function``, see ``_function``)."""

from __future__ import annotations

import torch

from tfree_core import DEFAULT_EPS, engine
from tfree_core import logits as _core_logits

from ._function import apply
from ._namespace import xp
from ._static import problem_for

__all__ = ["info_nce", "logits", "loss_from_similarity", "nt_xent", "sup_con"]

Tensor = torch.Tensor

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
        chunk_size: ``None`` (default): build the whole ``N × M`` similarity matrix and keep
            it for the backward, the fastest path while it fits. A positive int: tiled,
            ``chunk_size`` anchors at a time, each block of the matrix recomputed in the
            backward, so no ``N × M`` tensor exists (about 4/3 of the matrix products).
            ``"auto"``: tiled, blocks of at most 64 MiB. Not for
            :func:`loss_from_similarity` (``ValueError``).

    Returns the loss in the compute dtype: float64 for float64 inputs, float32 for float16 /
    bfloat16 / float32 inputs (also under ``torch.autocast``). Gradients flow to the
    embeddings (or the similarity) through the analytic formula of SPEC §2, each in its
    input's dtype and on its device; labels and masks get none. Double backward is not
    supported (``RuntimeError``).
"""


def _in_vmap(t: Tensor) -> bool:
    is_batched = getattr(torch._C._functorch, "is_batchedtensor", None)
    return bool(is_batched is not None and is_batched(t))


def _run(
    layout: str,
    arrays: tuple[Tensor | None, ...],
    *,
    symmetric: bool = False,
    logit_map: str,
    temperature: float | None,
    eps: float,
    reduction: str,
    chunk_size: int | str | None,
) -> Tensor:
    problem = problem_for(layout, arrays, symmetric=symmetric, logit_map=logit_map,
                          temperature=temperature, eps=eps, reduction=reduction,
                          chunk_size=chunk_size)
    # The value check (similarity layout: positives inside the valid mask) reads the masks
    # on the host: eager only, before the Function (never while compiling, never on vmap's
    # batched tensors), so the Function itself never synchronises.
    if (
        layout == "similarity"
        and not torch.compiler.is_compiling()
        and not any(a is not None and _in_vmap(a) for a in arrays)
    ):
        engine.check_values(problem, arrays, xp)
    return apply(problem, arrays)


_negatives_conflicts = engine.check_negatives_conflicts


def info_nce(
    query: Tensor,
    key: Tensor,
    *,
    negatives: Tensor | None = None,
    labels: Tensor | None = None,
    symmetric: bool = False,
    where: Tensor | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = None,
) -> Tensor:
    """The pairs layout (InfoNCE, CLIP) with the temperature-free logit map.

    For query ``i`` the candidates are all keys (plus ``negatives``) and the positive is key
    ``i`` (or, with ``labels``, every key of the same label)::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)],
        ℓ_ij = 2·atanh(clip(⟨q_i, k_j⟩/(‖q_i‖‖k_j‖), -b, b))

    Args:
        query, key: ``(N, D)`` embeddings (not normalised: the loss normalises rows).
        negatives: ``(M, D)`` shared or ``(N, M, D)`` per-row extra negatives (MoCo); not
            with ``labels`` or ``symmetric`` (``ValueError``).
        labels: integer ``(N,)``; keys with the same label as the query are positives.
        symmetric: average both directions, ``½(L_q→k + L_k→q)`` (CLIP).
    """
    _negatives_conflicts(negatives, labels, symmetric)
    kw = {"logit_map": logit_map, "temperature": temperature, "eps": eps,
          "reduction": reduction, "chunk_size": chunk_size}
    if negatives is not None:
        return _run("negatives", (query, key, negatives, where), **kw)
    return _run("pairs", (query, key, labels, where), symmetric=symmetric, **kw)


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    *,
    where: Tensor | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = None,
) -> Tensor:
    """NT-Xent (SimCLR): ``Z = [z1; z2]`` of ``2N`` rows; each row's candidates are the other
    ``2N - 1`` rows and its positive is the other view ``i ± N``::

        L_i = log Σ_{j≠i} exp(ℓ_ij) - ℓ_{i,i±N},   ℓ_ij = 2·atanh(clip(⟨u_i, u_j⟩, -b, b))

    ``reduction="none"`` gives ``(2N,)``, the ``z1`` anchors first."""
    return _run("nt_xent", (z1, z2, where), logit_map=logit_map, temperature=temperature,
                eps=eps, reduction=reduction, chunk_size=chunk_size)


def sup_con(
    features: Tensor,
    labels: Tensor,
    *,
    where: Tensor | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = None,
) -> Tensor:
    """Supervised contrastive loss (SupCon, "outside" average): ``features`` ``(N, D)`` or
    ``(N, V, D)`` (views flattened view-major); candidates are all other rows, positives the
    rows of the same label::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j≠i} exp(ℓ_ij)]

    ``reduction="none"`` gives ``(N,)`` or ``(N, V)``."""
    return _run("sup_con", (features, labels, where), logit_map=logit_map,
                temperature=temperature, eps=eps, reduction=reduction, chunk_size=chunk_size)


def loss_from_similarity(
    similarity: Tensor,
    positive_mask: Tensor,
    *,
    valid_mask: Tensor | None = None,
    where: Tensor | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = None,
) -> Tensor:
    """The loss on a precomputed similarity matrix ``S`` ``(N, M)`` (rows are anchors);
    ``valid_mask`` (default: all) gives the candidates, ``positive_mask`` the positives::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [φ(S_ip) - log Σ_{j∈C(i)} exp(φ(S_ij))]

    Positives outside the valid mask are a ``ValueError``, checked in eager mode only (the
    check reads the masks on the host; it is skipped under ``torch.compile`` and ``vmap``)."""
    return _run("similarity", (similarity, positive_mask, valid_mask, where),
                logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction,
                chunk_size=chunk_size)


for _f in (info_nce, nt_xent, sup_con, loss_from_similarity):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC


def logits(similarity: Tensor, *, eps: float = DEFAULT_EPS) -> Tensor:
    """The temperature-free logit map ``φ(clip(s, -b, b))``, ``φ(s) = log((1+s)/(1-s)) =
    2·atanh(s)``, with ``b`` the largest compute-dtype value ``<= 1 - eps``.

    ``φ(0.5) = ln 3``, ``φ(0.9) = ln 19``; the cap ``φ(b)`` is 14.508657 (float64) and
    14.495466 (float32) at the default ``eps = 1e-6``. Returned in the compute dtype and
    differentiable by torch autograd: ``φ'(s) = 2/(1 - s²)`` inside ``[-b, b]`` (bounds
    included), 0 outside.
    """
    device_type = similarity.device.type if similarity.device.type in ("cuda", "cpu") else "cpu"
    with torch.autocast(device_type, enabled=False):
        return _core_logits(similarity, eps=eps, xp=xp)
