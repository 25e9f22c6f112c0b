"""The public functions: the core's entry points for torch tensors, differentiable through
the core's analytic gradient (one ``torch.autograd.Function``, see ``_function``)."""

from __future__ import annotations

from typing import Any

import torch

from tfree_core import DEFAULT_EPS, engine
from tfree_core import _validation as check
from tfree_core import logits as _core_logits
from tfree_core._layouts import ARRAY_NAMES

from ._distributed import apply_distributed, world_size
from ._function import apply
from ._namespace import xp
from ._static import assume_constant_result, problem_for
from ._triton import apply as apply_fused
from ._triton import check_kernel, use_fused

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
            Where autograd records the call (an input requires grad), one direction (not
            ``symmetric``) with ``"mean"`` or ``"sum"`` computes its gradient in the
            same pass as the loss, block by block while each block is in cache: three
            matrix products and no ``N × M`` residual whatever ``chunk_size`` is.
        group: (``info_nce`` without ``negatives``, ``nt_xent``, ``sup_con``) a
            ``torch.distributed.ProcessGroup`` to shard the batch over (data parallel,
            eager only; see the Distributed page), or ``None`` (default): one device. Each
            rank passes its local rows; the value is scaled so that its average over the
            ranks is the loss of the concatenated batch, so DDP's gradient averaging gives
            exactly its gradient. Composes with ``chunk_size``.
        kernel: ``"auto"`` (default): the portable core. Once the fused kernels are
            verified compiled on a GPU (so far: in Triton's interpreter), ``"auto"`` will
            pick them on CUDA tensors when Triton is installed and the call is supported
            (the arctanh map on ``info_nce`` without ``labels``, with shared ``(M, D)``
            ``negatives`` or none, and ``nt_xent``; eager; without ``group``).
            ``"portable"``: always the core. ``"fused"``: always the kernels, a
            ``ValueError`` naming what prevents it otherwise (CPU tensors run them only
            in Triton's interpreter, ``TRITON_INTERPRET=1`` set before Triton is imported).
            With ``group``, ``"fused"`` runs them on each rank's rows against the gathered
            candidates (``info_nce`` without ``labels`` or ``negatives``, ``nt_xent``).
        check_finite: ``True``: count the NaN and ±inf values of the floating inputs first
            (one host synchronisation) and raise ``ValueError`` naming the input and the
            count. Eager only: under ``torch.func.vmap`` and ``torch.compile(fullgraph=True)``
            it is an error (the values are unknown while tracing; Dynamo reports it as
            ``torch._dynamo.exc.Unsupported`` quoting the ``ValueError``); under
            ``torch.compile`` without ``fullgraph`` Dynamo runs the call eagerly instead,
            where the check runs. Default ``False``.

    Returns the loss in the compute dtype: float64 for float64 inputs, float32 for float16 /
    bfloat16 / float32 inputs (also under ``torch.autocast``). Gradients flow to the
    embeddings (or the similarity) through the analytic formula of SPEC §2, each in its
    input's dtype and on its device; labels and masks get none. Double backward is not
    supported (``RuntimeError``).
"""


def _in_vmap(t: Tensor) -> bool:
    is_batched = getattr(torch._C._functorch, "is_batchedtensor", None)
    return bool(is_batched is not None and is_batched(t))


@assume_constant_result
def _library_error(types: tuple[tuple[str, str, str], ...]) -> str:
    """Tensors only (no NumPy arrays: torch's own functions take none either). A constant
    under ``torch.compile``, which cannot trace the string handling."""
    return check.library_error(types, ("torch",))


def _check_finite(layout: str, arrays: tuple[Tensor | None, ...]) -> None:
    """``check_finite=True``: count the non-finite values of the differentiable inputs (one
    host synchronisation). Values are unknown while ``torch.compile`` or ``vmap`` traces:
    a ``ValueError`` there (under ``torch.compile`` without ``fullgraph``, Dynamo then
    runs the call eagerly, where the check runs)."""
    if torch.compiler.is_compiling():
        raise ValueError(check.needs_eager_message("torch.compile"))
    if any(a is not None and _in_vmap(a) for a in arrays):
        raise ValueError(check.needs_eager_message("torch.func.vmap"))
    names = engine.DIFFERENTIABLE[layout]
    check.check_finite(list(zip(names, arrays[: len(names)], strict=True)), xp)


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
    group: Any = None,
    kernel: str = "auto",
    check_finite: bool = False,
) -> Tensor:
    if not all(a is None or isinstance(a, torch.Tensor) for a in arrays):
        message = _library_error(check.array_types(list(zip(ARRAY_NAMES[layout], arrays,
                                                            strict=True))))
        raise TypeError(message)
    check.check_flag("check_finite", check_finite)
    check_kernel(kernel)
    problem = problem_for(layout, arrays, symmetric=symmetric, logit_map=logit_map,
                          temperature=temperature, eps=eps, reduction=reduction,
                          chunk_size=chunk_size,
                          world_size=1 if group is None else world_size(group))
    # The value check (similarity layout: positives inside the valid mask) reads the masks
    # on the host: eager only, before the Function (never while compiling, never on vmap's
    # batched tensors), so the Function itself never synchronises.
    if (
        layout == "similarity"
        and not torch.compiler.is_compiling()
        and not any(a is not None and _in_vmap(a) for a in arrays)
    ):
        engine.check_values(problem, arrays, xp)
    if check_finite:
        _check_finite(layout, arrays)
    if group is not None:
        return apply_distributed(problem, arrays, group, kernel)
    if use_fused(kernel, problem, arrays):
        return apply_fused(problem, arrays)
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
    chunk_size: int | str | None = "auto",
    group: Any = None,
    kernel: str = "auto",
    check_finite: bool = False,
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
          "reduction": reduction, "chunk_size": chunk_size, "kernel": kernel,
          "check_finite": check_finite}
    if negatives is not None:
        return _run("negatives", (query, key, negatives, where), group=group, **kw)
    return _run("pairs", (query, key, labels, where), symmetric=symmetric, group=group, **kw)


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    *,
    where: Tensor | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    group: Any = None,
    kernel: str = "auto",
    check_finite: bool = False,
) -> Tensor:
    """NT-Xent (SimCLR): ``Z = [z1; z2]`` of ``2N`` rows; each row's candidates are the other
    ``2N - 1`` rows and its positive is the other view ``i ± N``::

        L_i = log Σ_{j≠i} exp(ℓ_ij) - ℓ_{i,i±N},   ℓ_ij = 2·atanh(clip(⟨u_i, u_j⟩, -b, b))

    ``reduction="none"`` gives ``(2N,)``, the ``z1`` anchors first."""
    return _run("nt_xent", (z1, z2, where), logit_map=logit_map, temperature=temperature,
                eps=eps, reduction=reduction, chunk_size=chunk_size, group=group, kernel=kernel,
                check_finite=check_finite)


def sup_con(
    features: Tensor,
    labels: Tensor,
    *,
    where: Tensor | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    group: Any = None,
    kernel: str = "auto",
    check_finite: bool = False,
) -> Tensor:
    """Supervised contrastive loss (SupCon, "outside" average): ``features`` ``(N, D)`` or
    ``(N, V, D)`` (views flattened view-major); candidates are all other rows, positives the
    rows of the same label::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j≠i} exp(ℓ_ij)]

    ``reduction="none"`` gives ``(N,)`` or ``(N, V)``."""
    return _run("sup_con", (features, labels, where), logit_map=logit_map,
                temperature=temperature, eps=eps, reduction=reduction, chunk_size=chunk_size,
                group=group, kernel=kernel,
                check_finite=check_finite)


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
    chunk_size: int | str | None = "auto",
    kernel: str = "auto",
    check_finite: bool = False,
) -> Tensor:
    """The loss on a precomputed similarity matrix ``S`` ``(N, M)`` (rows are anchors);
    ``valid_mask`` (default: all) gives the candidates, ``positive_mask`` the positives::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [φ(S_ip) - log Σ_{j∈C(i)} exp(φ(S_ij))]

    Positives outside the valid mask are a ``ValueError``, checked in eager mode only (the
    check reads the masks on the host; it is skipped under ``torch.compile`` and ``vmap``)."""
    return _run("similarity", (similarity, positive_mask, valid_mask, where),
                logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction,
                chunk_size=chunk_size, kernel=kernel,
                check_finite=check_finite)


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
