"""The TensorFlow runtime of the public functions: the core's analytic gradient through
``tf.custom_gradient``, on TF tensors through the private Array API namespace
:mod:`tfree_tf._xp`.

Each call converts its arguments to tensors and validates them with the core (shapes and
dtypes are static, so this runs at trace time under ``tf.function`` and costs nothing per
step), then calls one ``tf.custom_gradient`` function whose forward is ``engine.forward``
and whose gradient is ``engine.backward``. Three TensorFlow rules shape the code:

* a ``tf.custom_gradient`` function called with keyword arguments silently drops the custom
  gradient (eagerly) or raises (in graphs). The decorated function therefore takes the
  differentiable tensors positionally (``*arrays``, no keywords possible) and closes over
  everything else: the static ``Problem`` and the labels and masks, which thereby get no
  gradient (``None``);
* AutoGraph would convert the core's Python code on every trace (seconds, for code without
  tensor-dependent control flow): the core calls run under
  ``tf.autograph.experimental.do_not_convert``;
* without XLA, TF runs each element-wise operation of the core on the ``N×M`` similarity
  matrix as its own kernel, one pass over memory each. When traced, the core's forward and
  backward therefore run as two ``tf.function(jit_compile=True)`` functions (one pair per
  problem and shapes), which XLA fuses; so do eager calls of at least
  :data:`EAGER_JIT_ROWS` rows (smaller ones run op by op); :func:`set_jit_core` turns
  this off.

``tf.custom_gradient`` cannot tell whether a tape will ask for the gradient, so the forward
never computes it (``engine.value_and_grad``): ``"auto"`` budgets for two passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from tfree_core import engine

from . import _xp as xp
from ._distributed import TFCollectives, replica_context, world_size
from ._loops import loop

__all__ = ["RUNTIME", "TFRuntime", "set_jit_core"]

Tensor = tf.Tensor
TensorLike = Any  # tf.Tensor, tf.Variable, NumPy array or nested Python numbers


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


# --------------------------------------------------------------------------- the core's ops


@tf.autograph.experimental.do_not_convert
def _forward_ops(problem: engine.Problem, arrays: tuple[Tensor | None, ...], comm: Any):
    return engine.forward(problem, arrays, xp, comm=comm, loop=loop)


@tf.autograph.experimental.do_not_convert
def _backward_ops(problem: engine.Problem, residuals: engine.Residuals, cotangent: Tensor,
                  comm: Any) -> tuple[Tensor, ...]:
    return engine.backward(problem, residuals, cotangent, xp, comm=comm, loop=loop)


_JIT_CORE = [True]

EAGER_JIT_ROWS = 1024
"""An eager call with at least this many rows (anchors, or rows of a given similarity
matrix) runs the core compiled too: op by op, each element-wise step on the ``N × M``
matrix is a TensorFlow kernel and a fresh tensor; compiled, loss + gradient of the pairs
layout at ``N = 4096``, ``D = 128`` took 116 ms against 269 ms (2-core CPU, float32). A
smaller eager call is not worth a compilation (a few hundred milliseconds, once per
problem and shape)."""


def _compiles(arrays: tuple[Tensor | None, ...], group: Any) -> bool:
    """Whether the core's forward and backward of this call run as the XLA-compiled pair
    of :func:`_compiled`: with :func:`set_jit_core` on, one device, and traced or eager
    with at least :data:`EAGER_JIT_ROWS` rows."""
    if not _JIT_CORE[0] or group is not None:
        return False
    return not tf.executing_eagerly() or arrays[0].shape[0] >= EAGER_JIT_ROWS


def set_jit_core(enabled: bool) -> bool:
    """Whether the core's forward and backward run as XLA-compiled functions when a
    ``tfree_tf`` loss is traced (``tf.function``, Keras' ``fit``) or called eagerly on a
    batch of at least 1024 rows; returns the previous setting. On by default.

    Without XLA, TensorFlow runs the core's element-wise work on the ``N×M`` similarity
    matrix as one kernel (one pass over memory) per operation; XLA fuses them: loss and
    gradient of the pairs layout ran 1.4-1.7× faster at N = 4096, D = 128 and 1.3× at
    D = 512 (float32, 2-core CPU; ``python -m benchmarks.bench_tf``). The cost is one XLA
    compilation per problem and shape (seconds for large ``N``). Inside
    ``tf.function(jit_compile=True)`` the whole function is compiled anyway; an eager
    call is compiled too from 1024 rows (smaller ones run op by op), and a sharded call
    (``group=``) is never compiled separately. The setting is read when a function is
    traced, and at every eager call.

    Args:
        enabled: ``True``: compile the core's work when traced (the default); ``False``:
            run it as ordinary TensorFlow operations in the traced graph.

    Returns:
        The previous setting, to restore it.

    Examples:
        ```python
        import tensorflow as tf
        import tfree_tf

        previous = tfree_tf.set_jit_core(False)  # e.g. to profile op by op
        try:
            loss = tf.function(tfree_tf.nt_xent)(tf.random.normal((8, 16)),
                                                 tf.random.normal((8, 16)))
        finally:
            tfree_tf.set_jit_core(previous)
        ```
    """
    previous = _JIT_CORE[0]
    _JIT_CORE[0] = bool(enabled)
    return previous


@functools.lru_cache(maxsize=128)
def _compiled(problem: engine.Problem, shapes: tuple):
    """The core's forward and backward of ``problem`` as XLA-compiled functions (one per
    static ``shapes``, so a function never retraces)."""

    def forward(arrays):
        return _forward_ops(problem, arrays, None)

    def backward(residuals, cotangent):
        return _backward_ops(problem, residuals, cotangent, None)

    return (tf.function(forward, jit_compile=True, autograph=False),
            tf.function(backward, jit_compile=True, autograph=False))


def _shapes(arrays: tuple[Tensor | None, ...]) -> tuple:
    return tuple(None if a is None else tuple(a.shape.as_list()) for a in arrays)


def _differentiable(
    problem: engine.Problem, arrays: tuple[Tensor | None, ...], comm: Any = None
) -> tuple[Callable[..., Tensor], tuple[Tensor, ...]]:
    """The custom-gradient function of ``problem`` and the tensors to call it with.

    The differentiable inputs lead every layout's argument tuple (engine's table); the
    rest (labels, masks, ``None``) are closed over.
    """
    count = len(problem.spec.differentiable)
    present = [i for i in range(count) if arrays[i] is not None]  # optional inputs
    rest = arrays[count:]

    @tf.custom_gradient
    def loss_with_analytic_gradient(*differentiable: Tensor):
        # Eagerly, tf.custom_gradient leaves an enclosing tape recording the forward, which
        # would keep every intermediate alive for an autodiff path that is never taken.
        given = dict(zip(present, differentiable, strict=True))
        arrays = (*(tf.stop_gradient(given[i]) if i in given else None for i in range(count)),
                  *rest)
        compiled = _compiles(arrays, comm)
        shapes = _shapes(arrays)
        if compiled:
            loss, residuals = _compiled(problem, shapes)[0](arrays)
        else:
            loss, residuals = _forward_ops(problem, arrays, comm)

        def gradient(cotangent: Tensor) -> tuple[Tensor, ...]:
            if compiled:
                grads = _compiled(problem, shapes)[1](residuals, cotangent)
            else:
                grads = _backward_ops(problem, residuals, cotangent, comm)
            return tuple(grads[i] for i in present)

        return loss, gradient

    return loss_with_analytic_gradient, tuple(arrays[i] for i in present)


# --------------------------------------------------------------------------- runtime

_GROUP = engine.Param(
    "group", None, "bool | tf.distribute.ReplicaContext | None",
    "Inside ``strategy.run``: ``True`` (the current replica context) or a "
    "``tf.distribute.ReplicaContext``, to shard the batch over the replicas (data parallel; "
    "see the Distributed page); ``None`` (default): one device. Each replica passes its "
    "local rows; the value is scaled so that its mean over the replicas is the loss of the "
    "concatenated batch, and the replicas' mean gradient is exactly its gradient. Composes "
    "with ``chunk_size``; not with ``negatives`` (no global batch).",
    functions=engine.BATCHED)

_NOTES = {
    "chunk_size": (
        '``"auto"`` budgets: untiled up to an 8 MiB matrix on a CPU, 1 GiB on an '
        "accelerator; else blocks of at most 8 MiB (CPU: they stay in cache) or 64 MiB, a "
        "``tf.while_loop`` in graphs."),
    "check_finite": (
        "Eager only: inside ``tf.function`` (and Keras' compiled ``fit``) it is a "
        "``ValueError`` at trace time, the values being unknown there "
        "(``tf.debugging.enable_check_numerics`` checks graphs)."),
    "returns:loss": (
        "Inputs may be tensors, variables or NumPy arrays, with static shapes (under "
        "``tf.function`` an unknown dimension is a ``ValueError``); hyper-parameters are "
        "static Python values (part of a trace). Gradients (``tf.GradientTape``) are the "
        "analytic ones of SPEC §2 through ``tf.custom_gradient``, in each input's dtype; "
        "labels and masks get ``None``. Works eagerly, under ``tf.function`` and "
        "``tf.function(jit_compile=True)``. On NVIDIA GPUs TF computes float32 products in "
        "TF32 unless ``tf.config.experimental.enable_tensor_float_32_execution(False)`` is "
        "set (a global switch this function does not touch)."),
    "returns:logits": (
        "Its gradient (``tf.custom_gradient``) is SPEC §2.4's derivative, in the input's "
        "dtype."),
}


@tf.autograph.experimental.do_not_convert
def _logits_value(similarity: Tensor, eps: float) -> Tensor:
    return engine.logits(similarity, eps, xp)


@tf.autograph.experimental.do_not_convert
def _logits_slope(similarity: Tensor, eps: float) -> Tensor:
    return engine.logit_slope(similarity, eps, xp)


class TFRuntime(engine.Runtime):
    """``tfree_core.engine.Runtime`` for TensorFlow (tensors, variables, NumPy arrays)."""

    array_type = TensorLike
    return_type = tf.Tensor
    extras = (_GROUP,)
    notes = _NOTES
    examples: Mapping[str, str] = {
        "info_nce": """
            import tensorflow as tf
            import tfree_tf

            query = tf.Variable(tf.random.normal((8, 16), seed=1))
            key = tf.Variable(tf.random.normal((8, 16), seed=2))
            with tf.GradientTape() as tape:
                loss = tfree_tf.info_nce(query, key)
            d_query, d_key = tape.gradient(loss, [query, key])  # the analytic gradient
            clip = tfree_tf.info_nce(query, key, symmetric=True)
            assert d_query.shape == (8, 16) and clip.shape == ()
        """,
        "nt_xent": """
            import tensorflow as tf
            import tfree_tf

            z1, z2 = tf.random.normal((8, 16), seed=1), tf.random.normal((8, 16), seed=2)
            per_anchor = tfree_tf.nt_xent(z1, z2, reduction="none")
            assert per_anchor.shape == (16,)  # the z1 anchors first
        """,
        "sup_con": """
            import tensorflow as tf
            import tfree_tf

            views = tf.random.normal((8, 2, 16), seed=1)  # (N, V, D)
            labels = tf.constant([0, 0, 0, 1, 1, 2, 2, 2])
            per_anchor = tfree_tf.sup_con(views, labels, reduction="none")
            assert per_anchor.shape == (8, 2)
        """,
        "loss_from_similarity": """
            import numpy as np
            import tensorflow as tf
            import tfree_tf

            similarity = tf.Variable(tf.random.uniform((4, 6), -1, 1, seed=1))
            positive_mask = tf.eye(4, 6, dtype=tf.bool)
            valid_mask = np.ones((4, 6), dtype=bool)
            valid_mask[0, 5] = False
            with tf.GradientTape() as tape:
                loss = tfree_tf.loss_from_similarity(similarity, positive_mask,
                                                     valid_mask=valid_mask)
            assert tape.gradient(loss, similarity)[0, 5] == 0  # no candidate, no gradient
        """,
        "logits": """
            import math

            import tensorflow as tf
            import tfree_tf

            phi = tfree_tf.logits(tf.constant([0.0, 0.5, 1.0], dtype=tf.float64))
            assert phi[0] == 0 and math.isclose(phi[1], math.log(3))
            assert math.isclose(phi[2], 14.508657, rel_tol=1e-7)  # the cap at eps = 1e-6
        """,
    }
    libraries = ("tensorflow", "numpy")
    also = ("builtins", "keras")
    tracing = "tf.function"
    one_pass = False
    xp = xp

    def convert(self, named):
        return tuple(_to_tensor(name, value) for name, value in named)

    def device_kind(self, arrays, extras) -> str | None:
        # graph tensors report no device: assume the one TensorFlow places ops on
        device = arrays[0].device or (
            "GPU" if tf.config.list_logical_devices("GPU") else "CPU")
        if "cpu" not in device.lower():
            return "accelerator"
        # XLA fuses the element-wise work, which moves where tiling pays off (as in JAX)
        return "fused_cpu" if _compiles(arrays, extras.get("group")) else "cpu"

    def world_size(self, extras) -> int:
        group = extras.get("group")
        return 1 if group is None else world_size(group)

    def concrete(self, arrays) -> bool:
        return tf.executing_eagerly()

    def apply(self, problem, arrays, extras, xp) -> Tensor:
        comm = None
        if extras.get("group") is not None:
            comm = TFCollectives(replica_context(extras["group"]))
            engine.check_sharded(problem, comm.world_size)
        function, differentiable = _differentiable(problem, arrays, comm)
        return function(*differentiable)  # positionally: keywords would drop the gradient

    def logit_map(self, similarity, eps, extras) -> Tensor:
        engine.make_options(eps=eps)  # a clear error for a bad eps before any tracing
        tensor = _to_tensor("similarity", similarity)

        @tf.custom_gradient
        def logits_with_gradient(s: Tensor):
            value = _logits_value(s, eps)

            def gradient(cotangent: Tensor) -> Tensor:
                return tf.cast(_logits_slope(s, eps) * cotangent, s.dtype)

            return value, gradient

        return logits_with_gradient(tensor)


RUNTIME = TFRuntime()
