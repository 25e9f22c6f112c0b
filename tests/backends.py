"""Run a public loss on any backend with its gradient, from NumPy inputs (test helper).

``run(backend, function, inputs, **keywords)`` calls ``function`` of ``tfree_core``
(``*_value_and_grad``), ``tfree_torch``, ``tfree_jax`` or ``tfree_tf`` with the
differentiable ``inputs`` (a dict by parameter name, converted to the backend's arrays in
their NumPy dtype) and the keywords (NumPy arrays among them converted too: labels,
masks), and returns the loss and the gradient of ``Σ loss`` w.r.t. every input, in
``inputs``' order, as float64 NumPy arrays. ``compiled=True`` traces the call
(``torch.compile``, ``jax.jit``, ``tf.function``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

BACKENDS = ["core"] + [b for b, module in (("torch", "torch"), ("jax", "jax"),
                                            ("tf", "tensorflow"))
                       if importlib.util.find_spec(module) is not None]

if "torch" in BACKENDS:  # before TensorFlow (tests/conftest.py says why)
    import torch._dynamo  # noqa: F401


def _split(keywords: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {k: v for k, v in keywords.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in keywords.items() if k not in arrays}


def run(backend: str, function: str, inputs: dict[str, np.ndarray], *,
        compiled: bool = False, **keywords: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    arrays, options = _split(keywords)
    names = tuple(inputs)
    return _RUNNERS[backend](function, names, tuple(inputs.values()), arrays, options,
                             compiled)


def _core(function, names, floating, arrays, options, compiled):
    import tfree_core

    fn = getattr(tfree_core, f"{function}_value_and_grad")
    inputs = dict(zip(names, floating, strict=True))
    loss, grads = fn(**inputs, **arrays, **options)
    if np.ndim(loss):
        cotangent = np.ones(np.shape(loss), np.asarray(loss).dtype)
        loss, grads = fn(**inputs, **arrays, **options, cotangent=cotangent)
    return np.asarray(loss, np.float64), [np.asarray(g, np.float64) for g in grads]


def _torch(function, names, floating, arrays, options, compiled):
    import tfree_torch
    import torch

    xs = [torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True) for x in floating]
    kw = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    fn = getattr(tfree_torch, function)
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss = fn(**dict(zip(names, xs, strict=True)), **kw, **options)
    grads = torch.autograd.grad(loss.sum(), xs)
    return loss.detach().double().numpy(), [g.double().numpy() for g in grads]


def _jax(function, names, floating, arrays, options, compiled):
    import jax
    import jax.numpy as jnp
    import tfree_jax

    fn = getattr(tfree_jax, function)
    kw = {k: jnp.asarray(v) for k, v in arrays.items()}

    def total(*xs):
        value = fn(**dict(zip(names, xs, strict=True)), **kw, **options)
        return jnp.sum(value), value

    grad = jax.value_and_grad(total, argnums=tuple(range(len(floating))), has_aux=True)
    if compiled:
        grad = jax.jit(grad)
    (_, loss), grads = grad(*(jnp.asarray(x) for x in floating))
    return np.asarray(loss, np.float64), [np.asarray(g, np.float64) for g in grads]


def _tf(function, names, floating, arrays, options, compiled):
    import tensorflow as tf
    import tfree_tf

    fn = getattr(tfree_tf, function)

    def step(*xs):
        with tf.GradientTape() as tape:
            for x in xs:
                tape.watch(x)
            loss = fn(**dict(zip(names, xs, strict=True)),
                      **{k: tf.constant(v) for k, v in arrays.items()}, **options)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, list(xs))

    if compiled:
        step = tf.function(step, jit_compile=True)
    loss, grads = step(*(tf.constant(x) for x in floating))
    return (np.asarray(tf.cast(loss, tf.float64)),
            [np.asarray(tf.cast(g, tf.float64)) for g in grads])


_RUNNERS = {"core": _core, "torch": _torch, "jax": _jax, "tf": _tf}
