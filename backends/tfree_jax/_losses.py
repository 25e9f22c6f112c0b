"""The temperature-free contrastive losses as pure JAX functions (optax style).

Each public function validates its arguments with the core (``engine.prepare``: shapes and
dtypes are static, so this runs at trace time and costs nothing under ``jax.jit``), then
calls one ``jax.custom_vjp`` primitive whose forward is ``engine.forward`` and whose
backward is the core's analytic gradient ``engine.backward`` (SPEC §2, "Analytic
gradient"), both traced with ``jax.numpy`` as the array namespace. The static
:class:`tfree_core.engine.Problem` (hyper-parameters, layout, dtypes) is the only
non-differentiable argument; labels and masks are ordinary arguments whose cotangent is
``None`` (zero).

Matrix products run at ``Precision.HIGHEST`` (SPEC §2.3: no TF32 / bf16 passes on GPUs).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp

import tfree_core
from tfree_core import DEFAULT_EPS, engine
from tfree_core import _validation as check
from tfree_core._layouts import ARRAY_NAMES
from tfree_core._maps import make_map

from ._distributed import distributed_loss, world_size
from ._pallas import check_kernel, fused_loss, interpret_on, use_fused

Array = jax.Array

__all__ = ["ForwardModeError", "info_nce", "logits", "loss_from_similarity", "nt_xent",
           "sup_con"]

_FORWARD_MODE_MESSAGE = (
    "tfree_jax losses support reverse-mode differentiation only (jax.grad, jax.vjp, "
    "jax.value_and_grad, jax.jacrev): their gradient is the analytic one of SPEC §2 through "
    "jax.custom_vjp, which has no forward mode. Forward mode (jax.jvp, jax.jacfwd, "
    "jax.linearize, jax.hessian) is not supported."
)


class ForwardModeError(TypeError):
    """Raised when forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) meets a tfree loss."""


def _is_traced(arrays: Sequence[Array | None]) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def _precise():
    """Full-precision matrix products while tracing (no TF32 on GPUs, SPEC §2.3)."""
    return jax.default_matmul_precision("highest")


# --------------------------------------------------------------------------- custom_vjp


def _scan(body, n_blocks: int, carry):
    """The core's block driver (``engine.Loop``) as ``lax.scan``: one compiled block body,
    run sequentially under ``jit`` (a Python loop would be unrolled, and XLA may run the
    blocks at once, which defeats tiling)."""
    return jax.lax.scan(lambda c, i: body(i, c), carry, jnp.arange(n_blocks))


# The core is compiled once per (problem, shapes): an eager call then costs one dispatch
# instead of a compilation per primitive; under an outer ``jit`` these are inlined.
@functools.partial(jax.jit, static_argnums=(0,))
def _forward(problem: engine.Problem, arrays: tuple[Array | None, ...]):
    with _precise():
        return engine.forward(problem, arrays, jnp, check_values=False, loop=_scan)


@functools.partial(jax.jit, static_argnums=(0,))
def _backward(problem: engine.Problem, residuals, cotangent: Array):
    with _precise():
        return engine.backward(problem, residuals, cotangent, jnp, loop=_scan)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _loss(problem: engine.Problem, *arrays: Array | None) -> Array:
    """``L(arrays)`` of ``problem``'s layout (engine.forward); the VJP is engine.backward."""
    return _forward(problem, arrays)[0]


@functools.partial(jax.jit, static_argnums=(0,))
def _value_and_grad(problem: engine.Problem, arrays: tuple[Array | None, ...]):
    with _precise():
        return engine.value_and_grad(problem, arrays, jnp, loop=_scan)


@functools.partial(jax.jit, static_argnums=(0,))
def _scale(problem: engine.Problem, grads: tuple[Array, ...], cotangent: Array):
    return engine.scale_gradients(problem, grads, cotangent, jnp)


def _loss_fwd(problem: engine.Problem, *arrays: Array | None):
    # The forward rule runs only when a VJP will follow: where the statistics of each
    # anchor are complete within its block (engine.fuses_gradient), the gradient is
    # computed in the same pass over S, and the backward only scales it.
    if engine.fuses_gradient(problem):
        loss, residuals = _value_and_grad(problem, arrays)
    else:
        loss, residuals = _forward(problem, arrays)
    # The core's residuals (a dict of arrays, or the unit-cotangent gradients; ``None``
    # entries are empty pytrees) and the argument count, to give labels and masks their
    # ``None`` cotangents.
    return loss, (residuals, len(arrays))


def _loss_bwd(problem: engine.Problem, saved, cotangent: Array):
    residuals, n_arrays = saved
    if engine.fuses_gradient(problem):
        grads = _scale(problem, residuals, cotangent)
    else:
        grads = _backward(problem, residuals, cotangent)
    # The differentiable arrays lead every layout's argument tuple (see engine's table);
    # labels, masks and absent (None) arguments get a None (zero) cotangent.
    return (*grads, *([None] * (n_arrays - len(grads))))


_loss.defvjp(_loss_fwd, _loss_bwd)


def _check_finite(layout: str, arrays: tuple[Array | None, ...]) -> None:
    """``check_finite=True``: count the non-finite values of the differentiable inputs.
    Their values are concrete eagerly (also under an eager ``jax.grad``), not while
    ``jax.jit`` or ``jax.vmap`` traces: a ``ValueError`` there, never a silent skip."""
    names = engine.DIFFERENTIABLE[layout]
    try:
        check.check_finite(list(zip(names, arrays[: len(names)], strict=True)), jnp)
    except jax.errors.ConcretizationTypeError:
        raise ValueError(check.needs_eager_message("jax.jit / jax.vmap")) from None


def _call(
    layout: str,
    arrays: tuple[Array | None, ...],
    *,
    symmetric: bool = False,
    logit_map: str,
    temperature: float | None,
    eps: float,
    reduction: str,
    chunk_size: int | str | None = "auto",
    group: Hashable | None = None,
    check_finite: bool = False,
    kernel: str = "auto",
) -> Array:
    # Before conversion: jnp.asarray would take a torch tensor through NumPy silently.
    check.check_one_library(list(zip(ARRAY_NAMES[layout], arrays, strict=True)),
                            ("jax", "numpy"), also=("builtins",))
    check.check_flag("check_finite", check_finite)
    check_kernel(kernel)
    arrays = tuple(None if a is None else jnp.asarray(a) for a in arrays)
    options = engine.make_options(
        logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction
    )
    # Traced arrays carry no device: the computation runs on the default backend. XLA fuses
    # the element-wise work on a CPU too, which moves the point where tiling pays off.
    platform = (jax.default_backend() if _is_traced(arrays)
                else next(iter(arrays[0].devices())).platform)
    kind = "fused_cpu" if platform == "cpu" else "accelerator"
    problem = engine.prepare(layout, arrays, options=options, symmetric=symmetric,
                             chunk_size=chunk_size, device_kind=kind,
                             world_size=1 if group is None else world_size(group), xp=jnp)
    # The value checks read the masks only, which stay concrete under an eager jax.grad.
    if not _is_traced(arrays[len(engine.DIFFERENTIABLE[layout]):]):
        engine.check_values(problem, arrays, jnp)
    if check_finite:
        _check_finite(layout, arrays)
    fused = use_fused(kernel, problem, arrays, platform, group)
    if group is not None:
        return distributed_loss(problem, arrays, group, fused=fused,
                                interpret=interpret_on(platform))
    try:
        if fused:
            return fused_loss(problem, interpret_on(platform), *arrays)
        return _loss(problem, *arrays)
    except TypeError as err:
        if "forward-mode" in str(err):  # custom_vjp under jax.jvp / jax.jacfwd
            raise ForwardModeError(_FORWARD_MODE_MESSAGE) from err
        raise


_negatives_conflicts = engine.check_negatives_conflicts


_COMMON_DOC = """
    Common keywords (SPEC §2); all but ``where`` are static Python values (hyper-parameters,
    fixed at trace time):
        where: optional boolean array ``(N,)``; rows where it is False are neither anchors
            nor candidates, as if absent (padding), and get a zero gradient.
        logit_map: ``"arctanh"`` (default, ``ℓ = 2·atanh(clip(s, -b, b))``, no temperature)
            or ``"temperature"`` (InfoNCE, ``ℓ = s/τ``; for comparisons).
        temperature: ``τ > 0``, only with ``logit_map="temperature"``.
        eps: the clip ``b`` = largest compute-dtype value ``<= 1 - eps`` (default 1e-6,
            logit cap 14.5087 in float64, 14.4955 in float32).
        reduction: ``"mean"`` over anchors with a positive (0 if none), ``"sum"``, or
            ``"none"`` (per-anchor losses, 0 for anchors without a positive).
        chunk_size: ``"auto"`` (default): chosen from the static shapes and the backend
            (``jax.default_backend()`` under ``jit``): the whole ``N × M`` similarity matrix
            while it takes at most 256 MiB on a CPU (XLA fuses the element-wise work there,
            so tiling pays off only for memory) or 1 GiB on an accelerator, else tiled in
            blocks of at most 64 MiB. ``None``: always
            the whole matrix, kept for the gradient (three matrix products). A positive
            int: tiled, ``chunk_size`` anchors at a time (a ``lax.scan``), each block of the
            matrix recomputed in the gradient, so no ``N × M`` array exists (extra memory
            ``O((N + M)·D + chunk_size·M)``, four matrix products instead of three).
            Results agree to round-off whatever the choice. :func:`loss_from_similarity`
            is never tiled (its matrix is an input): an int there is a ``ValueError``.
            Where the call is differentiated (``jax.grad``, ``jax.vjp``), one direction
            (not ``symmetric``) with ``"mean"`` or ``"sum"`` computes its gradient in
            the same pass as the loss, block by block while each block is in cache:
            three matrix products and no ``N × M`` residual whatever ``chunk_size`` is.
        group: (``info_nce`` without ``negatives``, ``nt_xent``, ``sup_con``) the name of
            a mapped axis of an enclosing ``jax.shard_map`` / ``jax.pmap`` to shard the
            batch over (data parallel; see the Distributed page), or ``None`` (default):
            one device. Each device passes its local rows; the value is scaled so that its
            ``lax.pmean`` is the loss of the concatenated batch, and ``lax.pmean`` of the
            gradients is exactly its gradient. Composes with ``chunk_size``.
        check_finite: ``True``: count the NaN and ±inf values of the floating inputs first
            and raise ``ValueError`` naming the input and the count. Eager only (also
            under an eager ``jax.grad``): under ``jax.jit`` or ``jax.vmap`` the values are
            unknown at trace time and it is a ``ValueError`` (use ``jax.debug_nans`` or
            ``jax.experimental.checkify`` there). Default ``False``.
        kernel: ``"auto"`` (default): the portable core. Once the fused Pallas kernels
            (tiles of ``S`` reduced on chip, no ``N × M`` array; see the Performance page)
            are verified compiled on a GPU (so far: in Pallas' interpreter), ``"auto"``
            will pick them when the call runs on a GPU and is supported (the arctanh map
            on ``info_nce`` without ``labels``, with shared ``(M, D)`` ``negatives`` or
            none, and ``nt_xent``; without ``group``).
            ``"portable"``: always the core. ``"fused"``: always the kernels, a
            ``ValueError`` naming the option that prevents it otherwise; on a CPU they run
            in Pallas' interpreter (``interpret=True``), which is slow and meant for tests.
            With ``group``, ``"fused"`` runs them on each device's rows against the
            gathered candidates (``info_nce`` without ``labels`` or ``negatives``,
            ``nt_xent``).
            Composes with ``jax.jit``, ``jax.grad`` and ``jax.vmap``.

    Returns the loss in the compute dtype: float64 for float64 inputs (with
    ``jax_enable_x64``), float32 for float16 / bfloat16 / float32 inputs. Gradients
    (``jax.grad``, ``jax.vjp``; reverse mode only) are the analytic ones of SPEC §2,
    returned in each input's dtype; ``jax.jit`` and ``jax.vmap`` (a batch of problems)
    compose. Forward mode (``jax.jvp``, ``jax.jacfwd``) raises :class:`ForwardModeError`.
"""


# --------------------------------------------------------------------------- public API


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
    group: Hashable | None = None,
    check_finite: bool = False,
    kernel: str = "auto",
) -> Array:
    """The pairs layout (InfoNCE, CLIP) with the temperature-free logit map
    (Kim & Kim, arXiv:2501.17683).

    For query ``i`` the candidates are all keys (plus ``negatives``) and the positive is key
    ``i`` (or, with ``labels``, every key of the same label)::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)],
        ℓ_ij = 2·atanh(clip(⟨q_i, k_j⟩/(‖q_i‖‖k_j‖), -b, b))

    Args:
        query, key: ``(N, D)`` embeddings (not normalised: the loss normalises rows).
        negatives: ``(M, D)`` shared or ``(N, M, D)`` per-row extra negatives (MoCo);
            not combinable with ``labels`` or ``symmetric`` (``ValueError``).
        labels: integer ``(N,)``; keys with the same label as the query are positives.
        symmetric: average both directions, ``½(L_q→k + L_k→q)`` (CLIP).
    """
    _negatives_conflicts(negatives, labels, symmetric)
    common = {"logit_map": logit_map, "temperature": temperature, "eps": eps,
              "reduction": reduction, "chunk_size": chunk_size, "check_finite": check_finite,
              "kernel": kernel}
    if negatives is not None:
        return _call("negatives", (query, key, negatives, where), group=group, **common)
    return _call("pairs", (query, key, labels, where), symmetric=symmetric, group=group,
                 **common)


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
    group: Hashable | None = None,
    check_finite: bool = False,
    kernel: str = "auto",
) -> Array:
    """NT-Xent (SimCLR): ``Z = [z1; z2]`` of ``2N`` rows; each row's candidates are the other
    ``2N - 1`` rows and its positive is the other view ``i ± N``::

        L_i = log Σ_{j≠i} exp(ℓ_ij) - ℓ_{i,i±N},   ℓ_ij = 2·atanh(clip(cos(z_i, z_j), -b, b))

    ``reduction="none"`` gives ``(2N,)``, the ``z1`` anchors first; ``where`` masks pairs
    ``(z1_i, z2_i)`` together.
    """
    return _call("nt_xent", (z1, z2, where), logit_map=logit_map, temperature=temperature,
                 eps=eps, reduction=reduction, chunk_size=chunk_size, group=group,
                 check_finite=check_finite, kernel=kernel)


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
    group: Hashable | None = None,
    check_finite: bool = False,
    kernel: str = "auto",
) -> Array:
    """Supervised contrastive loss (SupCon, "outside" average): ``features`` ``(N, D)`` or
    ``(N, V, D)`` (views flattened view-major); candidates are all other rows, positives
    the rows of the same label::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j≠i} exp(ℓ_ij)]

    ``reduction="none"`` gives ``(N,)`` or ``(N, V)`` like the input.
    """
    return _call("sup_con", (features, labels, where), logit_map=logit_map,
                 temperature=temperature, eps=eps, reduction=reduction, chunk_size=chunk_size,
                 group=group, check_finite=check_finite, kernel=kernel)


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
    kernel: str = "auto",
) -> Array:
    """The loss on a precomputed similarity matrix ``S`` ``(N, M)`` (rows are anchors)::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [φ(S_ip) - log Σ_{j∈C(i)} exp(φ(S_ij))]

    ``valid_mask`` (default: all) gives the candidates ``C``, ``positive_mask`` the
    positives ``P``, which must lie inside ``C``: a ``ValueError`` when the masks are
    concrete (eager calls); under ``jax.jit`` the check is skipped (values are unknown at
    trace time) and positives outside ``C`` are ignored.
    """
    return _call("similarity", (similarity, positive_mask, valid_mask, where),
                 logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction,
                 chunk_size=chunk_size, check_finite=check_finite, kernel=kernel)


for _f in (info_nce, nt_xent, sup_con, loss_from_similarity):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC


# --------------------------------------------------------------------------- logit map


def logits(similarity: Array, *, eps: float = DEFAULT_EPS) -> Array:
    """The temperature-free logit map ``φ(clip(s, -b, b))``, ``φ(s) = log((1+s)/(1-s)) =
    2·atanh(s)``, with ``b`` the largest compute-dtype value ``<= 1 - eps``.

    ``φ(0.5) = ln 3``, ``φ(0.9) = ln 19``; the cap ``φ(b)`` is 14.508657 (float64) and
    14.495466 (float32) at the default ``eps = 1e-6``. Returned in the compute dtype.
    Differentiable in both modes (``jax.custom_jvp``) with SPEC §2.4's derivative
    ``φ'(s) = 2/(1 - s²)`` for ``-b <= s <= b`` (bounds included) and 0 outside (autodiff
    of ``clip`` would give ``½·φ'(b)`` at the bounds).
    """
    engine.make_options(eps=eps)  # a clear error for a bad eps before any tracing
    return _logits(jnp.asarray(similarity), eps)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _logits(similarity: Array, eps: float) -> Array:
    return tfree_core.logits(similarity, eps=eps, xp=jnp)


@_logits.defjvp
def _logits_jvp(eps: float, primals: tuple[Array], tangents: tuple[Array]):
    (similarity,) = primals
    (tangent,) = tangents
    value = _logits(similarity, eps)
    float64 = similarity.dtype == jnp.float64
    fmap = make_map(engine.make_options(eps=eps), float64)
    s = similarity.astype(value.dtype)
    return value, fmap.slope(s, jnp) * tangent.astype(value.dtype)
