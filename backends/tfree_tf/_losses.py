"""The temperature-free contrastive losses as TensorFlow functions with the core's analytic
gradient (``tf.custom_gradient``).

Each public function converts its arguments to tensors, validates them with the core
(``engine.prepare``: shapes and dtypes are static, so this runs at trace time under
``tf.function`` and costs nothing per step), then calls one ``tf.custom_gradient`` function
whose forward is ``engine.forward`` and whose gradient is ``engine.backward`` (SPEC §2,
"Analytic gradient"), both run on TF tensors through the private Array API namespace
:mod:`tfree_tf._xp`.

Two TensorFlow rules shape the code:

* a ``tf.custom_gradient`` function called with keyword arguments silently drops the custom
  gradient (eagerly) or raises (in graphs). The decorated function therefore takes the
  differentiable tensors positionally (``*arrays``, no keywords possible) and closes over
  everything else: the static :class:`tfree_core.engine.Problem` and the labels and masks,
  which thereby get no gradient (``None``);
* AutoGraph would convert the core's Python code on every trace (seconds, for code without
  tensor-dependent control flow): the core calls run under
  ``tf.autograph.experimental.do_not_convert``;
* without XLA, TF runs each element-wise operation of the core on the ``N×M`` similarity
  matrix as its own kernel, one pass over memory each. When traced, the core's forward and
  backward therefore run as two ``tf.function(jit_compile=True)`` functions (one pair per
  problem and shapes), which XLA fuses; :func:`set_jit_core` turns this off. Eager calls
  run op by op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf

import tfree_core
from tfree_core import DEFAULT_EPS, engine
from tfree_core import _validation as check
from tfree_core._maps import make_map

from . import _xp as xp
from ._distributed import distributed_loss, world_size

Tensor = tf.Tensor
TensorLike = Any  # tf.Tensor, tf.Variable, NumPy array or nested Python numbers

__all__ = ["info_nce", "logits", "loss_from_similarity", "nt_xent", "set_jit_core", "sup_con"]


# --------------------------------------------------------------------------- helpers


def _to_tensor(name: str, value: TensorLike | None) -> Tensor | None:
    """``value`` as a tensor with its own dtype (a NumPy float64 array stays float64;
    Python floats become float32, TF's default); a ``tf.Variable`` is read here, outside
    the custom-gradient function, so the tape routes its gradient through the read."""
    if value is None:
        return None
    tensor = tf.convert_to_tensor(value)
    shape = tensor.shape
    if shape.rank is None or any(dim is None for dim in shape.as_list()):
        raise ValueError(
            f"tfree_tf needs static shapes, but {name} has shape {shape} under tracing. "
            "Give tf.function a fixed input_signature (or none, so each shape is traced "
            "on its own), and in Keras use batches of one size (e.g. "
            "dataset.batch(n, drop_remainder=True)): the core builds its index vectors "
            "from the static batch size."
        )
    return tensor


def _executing_eagerly() -> bool:
    return tf.executing_eagerly()


def _loop(
    body: engine.Body, n_blocks: int, carry: engine.Carry
) -> tuple[engine.Carry, tuple[Tensor, ...]]:
    """The block driver of tiled problems (``chunk_size``; contract in ``engine``).

    Eagerly a Python loop; in graphs a ``tf.while_loop`` (compact, and compiled as one
    loop by XLA) with one ``TensorArray`` per output. Block 0 runs before the loop, which
    gives the outputs' dtypes and shapes for the ``TensorArray``s at no extra cost.
    """
    if _executing_eagerly() or n_blocks == 1:
        return engine.python_loop(xp)(body, n_blocks, carry)
    carry, first = body(0, carry)
    arrays = tuple(
        tf.TensorArray(out.dtype, size=n_blocks, element_shape=out.shape).write(0, out)
        for out in first
    )

    def step(index, carry, arrays):
        carry, outputs = body(index, carry)
        position = tf.cast(index, tf.int32)  # TensorArray indices are int32
        arrays = tuple(a.write(position, out) for a, out in zip(arrays, outputs, strict=True))
        return index + 1, carry, arrays

    _, carry, arrays = tf.while_loop(
        lambda index, *_: index < n_blocks,
        step,
        (tf.constant(1, tf.int64), tuple(carry), arrays),
        maximum_iterations=n_blocks - 1,
    )
    return tuple(carry), tuple(a.stack() for a in arrays)


@tf.autograph.experimental.do_not_convert
def _forward_ops(problem: engine.Problem, arrays: tuple[Tensor | None, ...], checks: bool):
    return engine.forward(problem, arrays, xp, check_values=checks, loop=_loop)


@tf.autograph.experimental.do_not_convert
def _backward_ops(
    problem: engine.Problem, residuals: engine.Residuals, cotangent: Tensor
) -> tuple[Tensor, ...]:
    return engine.backward(problem, residuals, cotangent, xp, loop=_loop)


_JIT_CORE = [True]


def set_jit_core(enabled: bool) -> bool:
    """Whether the core's forward and backward run as XLA-compiled functions when a
    ``tfree_tf`` loss is traced (``tf.function``, Keras' ``fit``); returns the previous
    setting. On by default.

    Without XLA, TensorFlow runs the core's element-wise work on the ``N×M`` similarity
    matrix as one kernel (one pass over memory) per operation; XLA fuses them: loss and
    gradient of the pairs layout ran 1.4-1.7× faster at N = 4096, D = 128 and 1.3× at
    D = 512 (float32, 2-core CPU; ``python -m benchmarks.bench_tf``). The cost is one XLA
    compilation per problem and shape (seconds for large ``N``). Inside
    ``tf.function(jit_compile=True)`` the whole function is compiled anyway, and eager
    calls always run op by op. The setting is read when a function is traced.
    """
    previous = _JIT_CORE[0]
    _JIT_CORE[0] = bool(enabled)
    return previous


@functools.lru_cache(maxsize=128)
def _compiled(problem: engine.Problem, shapes: tuple):
    """The core's forward and backward of ``problem`` as XLA-compiled functions (one per
    static ``shapes``, so a function never retraces)."""

    def forward(arrays):
        return _forward_ops(problem, arrays, False)

    def backward(residuals, cotangent):
        return _backward_ops(problem, residuals, cotangent)

    return (tf.function(forward, jit_compile=True, autograph=False),
            tf.function(backward, jit_compile=True, autograph=False))


def _shapes(arrays: tuple[Tensor | None, ...]) -> tuple:
    return tuple(None if a is None else tuple(a.shape.as_list()) for a in arrays)


def _forward(problem: engine.Problem, arrays: tuple[Tensor | None, ...], compiled: bool):
    """``engine.forward`` on tensors: op by op eagerly (with the value checks), as an
    XLA-compiled function when traced with ``compiled`` (see :func:`set_jit_core`)."""
    if _executing_eagerly():  # the value checks ran in _call, before any work
        return _forward_ops(problem, arrays, False)
    if compiled:
        return _compiled(problem, _shapes(arrays))[0](arrays)
    return _forward_ops(problem, arrays, False)


def _backward(
    problem: engine.Problem,
    residuals: engine.Residuals,
    cotangent: Tensor,
    shapes: tuple,
    compiled: bool,
) -> tuple[Tensor, ...]:
    """``engine.backward``: the gradients of ``Σ cotangent · loss`` in the input dtypes,
    compiled when the forward was."""
    if compiled:
        return _compiled(problem, shapes)[1](residuals, cotangent)
    return _backward_ops(problem, residuals, cotangent)


def _differentiable(
    problem: engine.Problem, arrays: tuple[Tensor | None, ...]
) -> tuple[Callable[..., Tensor], tuple[Tensor, ...]]:
    """The custom-gradient function of ``problem`` and the tensors to call it with.

    The differentiable inputs lead every layout's argument tuple (engine's table); the
    rest (labels, masks, ``None``) are closed over.
    """
    count = len(engine.DIFFERENTIABLE[problem.layout])
    rest = arrays[count:]

    @tf.custom_gradient
    def loss_with_analytic_gradient(*differentiable: Tensor):
        # Eagerly, tf.custom_gradient leaves an enclosing tape recording the forward, which
        # would keep every intermediate alive for an autodiff path that is never taken.
        arrays = (*(tf.stop_gradient(x) for x in differentiable), *rest)
        compiled = _JIT_CORE[0] and not _executing_eagerly()
        loss, residuals = _forward(problem, arrays, compiled)
        shapes = _shapes(arrays)

        def gradient(cotangent: Tensor) -> tuple[Tensor, ...]:
            return _backward(problem, residuals, cotangent, shapes, compiled)

        return loss, gradient

    return loss_with_analytic_gradient, arrays[:count]


def _call(
    layout: str,
    named: tuple[tuple[str, TensorLike | None], ...],
    *,
    symmetric: bool = False,
    logit_map: str,
    temperature: float | None,
    eps: float,
    reduction: str,
    chunk_size: int | str | None,
    group: Any = None,
    check_finite: bool = False,
) -> Tensor:
    # Before conversion: tf.convert_to_tensor would take a torch tensor through NumPy.
    check.check_one_library(named, ("tensorflow", "numpy"), also=("builtins", "keras"))
    check.check_flag("check_finite", check_finite)
    options = engine.make_options(
        logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction
    )
    arrays = tuple(_to_tensor(name, value) for name, value in named)
    # Graph tensors report no device: assume the one TensorFlow places ops on by default.
    kind = None if arrays[0].device else (
        "accelerator" if tf.config.list_logical_devices("GPU") else "cpu")
    # tf.custom_gradient cannot tell whether a tape will ask for the gradient, so the
    # forward never computes it (engine.value_and_grad): "auto" budgets for two passes.
    problem = engine.prepare(layout, arrays, options=options, symmetric=symmetric,
                             chunk_size=chunk_size, device_kind=kind,
                             world_size=1 if group is None else world_size(group),
                             one_pass=False, xp=xp)
    if check_finite:
        # A value check: eager only. In a graph the values are unknown while tracing, and a
        # silent skip would leave the user believing the inputs were checked.
        if not _executing_eagerly():
            raise ValueError(check.needs_eager_message("tf.function"))
        names = engine.DIFFERENTIABLE[layout]
        check.check_finite(list(zip(names, arrays[: len(names)], strict=True)), xp)
    if group is not None:
        return distributed_loss(problem, arrays, group)
    if _executing_eagerly():  # value checks (positives inside valid_mask): eager only
        engine.check_values(problem, arrays, xp)
    function, differentiable = _differentiable(problem, arrays)
    return function(*differentiable)  # positionally: keywords would drop the gradient


_negatives_conflicts = engine.check_negatives_conflicts


_COMMON_DOC = """
    Common keywords (SPEC §2), all static Python values (part of a ``tf.function`` trace):
        where: optional boolean ``(N,)``; rows where it is False are neither anchors nor
            candidates, as if absent (padding), and get a zero gradient.
        logit_map: ``"arctanh"`` (default, ``ℓ = 2·atanh(clip(s, -b, b))``, no temperature)
            or ``"temperature"`` (InfoNCE, ``ℓ = s/τ``; for comparisons).
        temperature: ``τ > 0``, only with ``logit_map="temperature"``.
        eps: the clip ``b`` = largest compute-dtype value ``<= 1 - eps`` (default 1e-6,
            logit cap 14.5087 in float64, 14.4955 in float32).
        reduction: ``"mean"`` over anchors with a positive (0 if none), ``"sum"``, or
            ``"none"`` (per-anchor losses, 0 for anchors without a positive).
        chunk_size: ``"auto"`` (default): chosen from the static shapes and the device:
            the whole ``N × M`` similarity matrix while it is small (up to 8 MiB on a CPU,
            1 GiB on an accelerator), else tiled in blocks of at most 8 MiB (CPU: they stay
            in cache) or 64 MiB. ``None``: always the whole matrix, kept for the gradient
            (three matrix products). A positive int: tiled, ``chunk_size`` anchors at a
            time (a ``tf.while_loop`` in graphs), each block of the matrix recomputed in
            the gradient, so no ``N × M`` array exists (extra memory
            ``O((N + M)·D + chunk_size·M)``, four matrix products instead of three).
            Results agree to round-off whatever the choice. :func:`loss_from_similarity`
            is never tiled (its matrix is an input): an int there is a ``ValueError``.
        group: (``info_nce`` without ``negatives``, ``nt_xent``, ``sup_con``) inside
            ``strategy.run``: ``True`` (the current replica context) or a
            ``tf.distribute.ReplicaContext``, to shard the batch over the replicas (data
            parallel; see the Distributed page); ``None`` (default): one device. Each
            replica passes its local rows; the value is scaled so that its mean over the
            replicas is the loss of the concatenated batch, and the replicas' mean
            gradient is exactly its gradient. Composes with ``chunk_size``.
        check_finite: ``True``: count the NaN and ±inf values of the floating inputs first
            and raise ``ValueError`` naming the input and the count. Eager only: inside
            ``tf.function`` (and Keras' compiled ``fit``) it is a ``ValueError`` at trace
            time, the values being unknown there (``tf.debugging.enable_check_numerics``
            checks graphs). Default ``False``.

    Inputs may be tensors, variables or NumPy arrays, with static shapes (under
    ``tf.function`` an unknown dimension is a ``ValueError``). Returns the loss in the
    compute dtype: float64 for float64 inputs, float32 for float16 / bfloat16 / float32.
    Gradients (``tf.GradientTape``) are the analytic ones of SPEC §2 through
    ``tf.custom_gradient``, in each input's dtype; labels and masks get ``None``. Works
    eagerly, under ``tf.function`` and ``tf.function(jit_compile=True)``. On NVIDIA GPUs
    TF computes float32 products in TF32 unless
    ``tf.config.experimental.enable_tensor_float_32_execution(False)`` is set (a global
    switch this function does not touch).
"""


# --------------------------------------------------------------------------- public API
# Called from a function AutoGraph converts (a tf.function, a Keras train step, the replica
# function of strategy.run), the losses' Python validation would be rewritten into graph
# control flow; they have no tensor-dependent control flow, so they opt out of conversion.


@tf.autograph.experimental.do_not_convert
def info_nce(
    query: TensorLike,
    key: TensorLike,
    *,
    negatives: TensorLike | None = None,
    labels: TensorLike | None = None,
    symmetric: bool = False,
    where: TensorLike | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    group: Any = None,
    check_finite: bool = False,
) -> Tensor:
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
              "reduction": reduction, "chunk_size": chunk_size, "check_finite": check_finite}
    if negatives is not None:
        named = (("query", query), ("key", key), ("negatives", negatives), ("where", where))
        return _call("negatives", named, group=group, **common)
    named = (("query", query), ("key", key), ("labels", labels), ("where", where))
    return _call("pairs", named, symmetric=symmetric, group=group, **common)


@tf.autograph.experimental.do_not_convert
def nt_xent(
    z1: TensorLike,
    z2: TensorLike,
    *,
    where: TensorLike | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    group: Any = None,
    check_finite: bool = False,
) -> Tensor:
    """NT-Xent (SimCLR): ``Z = [z1; z2]`` of ``2N`` rows; each row's candidates are the other
    ``2N - 1`` rows and its positive is the other view ``i ± N``::

        L_i = log Σ_{j≠i} exp(ℓ_ij) - ℓ_{i,i±N},   ℓ_ij = 2·atanh(clip(cos(z_i, z_j), -b, b))

    ``reduction="none"`` gives ``(2N,)``, the ``z1`` anchors first; ``where`` masks pairs
    ``(z1_i, z2_i)`` together.
    """
    named = (("z1", z1), ("z2", z2), ("where", where))
    return _call("nt_xent", named, logit_map=logit_map, temperature=temperature, eps=eps,
                 reduction=reduction, chunk_size=chunk_size, group=group,
                 check_finite=check_finite)


@tf.autograph.experimental.do_not_convert
def sup_con(
    features: TensorLike,
    labels: TensorLike,
    *,
    where: TensorLike | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    group: Any = None,
    check_finite: bool = False,
) -> Tensor:
    """Supervised contrastive loss (SupCon, "outside" average): ``features`` ``(N, D)`` or
    ``(N, V, D)`` (views flattened view-major); candidates are all other rows, positives
    the rows of the same label::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j≠i} exp(ℓ_ij)]

    ``reduction="none"`` gives ``(N,)`` or ``(N, V)`` like the input.
    """
    named = (("features", features), ("labels", labels), ("where", where))
    return _call("sup_con", named, logit_map=logit_map, temperature=temperature, eps=eps,
                 reduction=reduction, chunk_size=chunk_size, group=group,
                 check_finite=check_finite)


@tf.autograph.experimental.do_not_convert
def loss_from_similarity(
    similarity: TensorLike,
    positive_mask: TensorLike,
    *,
    valid_mask: TensorLike | None = None,
    where: TensorLike | None = None,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = DEFAULT_EPS,
    reduction: str = "mean",
    chunk_size: int | str | None = "auto",
    check_finite: bool = False,
) -> Tensor:
    """The loss on a precomputed similarity matrix ``S`` ``(N, M)`` (rows are anchors)::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [φ(S_ip) - log Σ_{j∈C(i)} exp(φ(S_ij))]

    ``valid_mask`` (default: all) gives the candidates ``C``, ``positive_mask`` the
    positives ``P``, which must lie inside ``C``: a ``ValueError`` when called eagerly;
    under ``tf.function`` the check is skipped (values are unknown while tracing) and
    positives outside ``C`` are ignored.
    """
    named = (("similarity", similarity), ("positive_mask", positive_mask),
             ("valid_mask", valid_mask), ("where", where))
    return _call("similarity", named, logit_map=logit_map, temperature=temperature, eps=eps,
                 reduction=reduction, chunk_size=chunk_size, check_finite=check_finite)


for _f in (info_nce, nt_xent, sup_con, loss_from_similarity):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC


# --------------------------------------------------------------------------- logit map


@tf.autograph.experimental.do_not_convert
def _logits_value(similarity: Tensor, eps: float) -> Tensor:
    return tfree_core.logits(similarity, eps=eps, xp=xp)


@tf.autograph.experimental.do_not_convert
def _logits_slope(similarity: Tensor, value: Tensor, eps: float) -> Tensor:
    fmap = make_map(engine.make_options(eps=eps), value.dtype == tf.float64)
    return fmap.slope(xp.astype(similarity, value.dtype, copy=False), xp)


def logits(similarity: TensorLike, *, eps: float = DEFAULT_EPS) -> Tensor:
    """The temperature-free logit map ``φ(clip(s, -b, b))``, ``φ(s) = log((1+s)/(1-s)) =
    2·atanh(s)``, with ``b`` the largest compute-dtype value ``<= 1 - eps``.

    ``φ(0.5) = ln 3``, ``φ(0.9) = ln 19``; the cap ``φ(b)`` is 14.508657 (float64) and
    14.495466 (float32) at the default ``eps = 1e-6``. Returned in the compute dtype.
    Its gradient (``tf.custom_gradient``) is SPEC §2.4's ``φ'(s) = 2/(1 - s²)`` for
    ``-b <= s <= b`` (bounds included) and 0 outside, in the input's dtype.
    """
    engine.make_options(eps=eps)  # a clear error for a bad eps before any tracing
    tensor = _to_tensor("similarity", similarity)
    assert tensor is not None

    @tf.custom_gradient
    def logits_with_gradient(s: Tensor):
        value = _logits_value(s, eps)

        def gradient(cotangent: Tensor) -> Tensor:
            grad = _logits_slope(s, value, eps) * cotangent
            return tf.cast(grad, s.dtype)

        return value, gradient

    return logits_with_gradient(tensor)
