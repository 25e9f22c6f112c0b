"""Backend adapters: run one golden case through a backend's public function and its
gradient machinery (the framework's autodiff for the framework backends, which is what
wires the core's analytic gradient in), returning float64 NumPy results.

Each adapter imports its framework lazily; the runner gives each backend its own process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from conformance.golden import GoldenCase, differentiable_order, tiled_kwargs

Result = tuple[np.ndarray, dict[str, np.ndarray]]


class Unsupported(Exception):
    """The backend cannot run this combination (reported as skipped, with the reason)."""


class Adapter:
    name = ""

    def setup(self) -> None:
        """Import the framework and force full-precision float32 matmuls."""

    def devices(self) -> list[str]:
        return ["cpu"]

    def run(self, case: GoldenCase, dtype: str, mode: str, device: str) -> Result:
        raise NotImplementedError


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- array API


class CoreAdapter(Adapter):
    """``tfree_core``'s own ``*_value_and_grad`` on an Array API namespace."""

    def __init__(self, name: str) -> None:
        self.name = name
        # The namespace is fixed here: a subclass may rename itself (tests/broken_adapter.py).
        self.namespace = name

    def setup(self) -> None:
        if self.namespace == "numpy":
            self.xp = np
        else:
            import array_api_strict

            array_api_strict.set_array_api_strict_flags(api_version="2023.12")
            self.xp = array_api_strict
        import tfree_core

        self.core = tfree_core

    def run(self, case: GoldenCase, dtype: str, mode: str, device: str) -> Result:
        xp = self.xp
        fn = getattr(self.core, f"{case.function}_value_and_grad")
        inputs = {k: xp.asarray(v.astype(dtype)) for k, v in case.inputs.items()}
        kwargs = {k: xp.asarray(v) if isinstance(v, np.ndarray) else v
                  for k, v in tiled_kwargs(case, mode).items()}
        cot = None if case.cotangent is None else xp.asarray(case.cotangent.astype(
            "float64" if dtype == "float64" else "float32"))
        loss, grads = fn(**inputs, **kwargs, cotangent=cot)
        names = differentiable_order(case)
        return _f64(loss), {n: _f64(g) for n, g in zip(names, grads, strict=True)}


# --------------------------------------------------------------------------- torch


class TorchAdapter(Adapter):
    name = "torch"

    def setup(self) -> None:
        import torch

        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch._dynamo.config.cache_size_limit = 256
        import tfree_torch

        self.torch, self.backend = torch, tfree_torch
        self.compiled: dict[str, Callable] = {}

    def devices(self) -> list[str]:
        return ["cpu"] + (["cuda"] if self.torch.cuda.is_available() else [])

    def run(self, case: GoldenCase, dtype: str, mode: str, device: str) -> Result:
        torch = self.torch
        fn = getattr(self.backend, case.function, None)
        if fn is None:
            raise Unsupported(f"tfree_torch has no {case.function}")
        names = differentiable_order(case)
        tdtype = getattr(torch, dtype)
        inputs = [torch.tensor(case.inputs[n], device=device).to(tdtype).requires_grad_()
                  for n in names]
        kwargs = {k: torch.as_tensor(v, device=device) if isinstance(v, np.ndarray) else v
                  for k, v in tiled_kwargs(case, mode).items()}
        if mode == "fused":
            from tfree_torch import _triton

            if device == "cpu" and not _triton.interpreting():
                raise Unsupported("fused on cpu runs in Triton's interpreter: TRITON_INTERPRET=1 "
                                  "before import (the runner sets it for the fused mode)")
            kwargs["kernel"] = "fused"
        compute = torch.float64 if dtype == "float64" else torch.float32
        cot = None if case.cotangent is None else torch.tensor(
            case.cotangent, device=device, dtype=compute)

        def value_and_grad(*xs: Any, **kw: Any) -> tuple[Any, ...]:
            loss = fn(**dict(zip(names, xs, strict=True)), **kw)
            out = loss if cot is None else (loss * cot).sum()
            return (loss, *torch.autograd.grad(out, xs))

        if mode == "compiled":
            key = f"{case.function}:{','.join(names)}"
            if key not in self.compiled:
                self.compiled[key] = torch.compile(
                    lambda *xs, **kw: fn(**dict(zip(names, xs, strict=True)), **kw),
                    fullgraph=True, dynamic=False)
            forward = self.compiled[key]
            loss = forward(*inputs, **kwargs)
            out = loss if cot is None else (loss * cot).sum()
            grads = torch.autograd.grad(out, inputs)
        else:
            loss, *grads = value_and_grad(*inputs, **kwargs)
        return (_f64(loss.detach().cpu().double()),
                {n: _f64(g.detach().cpu().double()) for n, g in zip(names, grads, strict=True)})


# --------------------------------------------------------------------------- JAX


class JaxAdapter(Adapter):
    name = "jax"

    def setup(self) -> None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax

        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_default_matmul_precision", "float32")
        import tfree_jax

        self.jax, self.backend = jax, tfree_jax

    def devices(self) -> list[str]:
        try:
            gpus = self.jax.devices("gpu")
        except RuntimeError:
            gpus = []
        return ["cpu"] + (["cuda"] if gpus else [])

    def run(self, case: GoldenCase, dtype: str, mode: str, device: str) -> Result:
        jax = self.jax
        jnp = jax.numpy
        fn = getattr(self.backend, case.function, None)
        if fn is None:
            raise Unsupported(f"tfree_jax has no {case.function}")
        names = differentiable_order(case)
        target = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        put = lambda a: jax.device_put(a, target)  # noqa: E731
        inputs = [put(jnp.asarray(case.inputs[n]).astype(getattr(jnp, dtype))) for n in names]
        kwargs = {k: put(jnp.asarray(v)) if isinstance(v, np.ndarray) else v
                  for k, v in tiled_kwargs(case, mode).items()}
        if mode == "fused":  # Pallas; on a CPU in its interpreter (interpret=True)
            kwargs["kernel"] = "fused"
        compute = jnp.float64 if dtype == "float64" else jnp.float32
        cot = None if case.cotangent is None else put(jnp.asarray(case.cotangent, compute))
        arrays = {k: v for k, v in kwargs.items() if not isinstance(v, (str, float, int, bool))
                  and v is not None}
        static = {k: v for k, v in kwargs.items() if k not in arrays}

        def value_and_grad(xs, arrs):
            def f(*ys):
                return fn(**dict(zip(names, ys, strict=True)), **arrs, **static)

            loss, vjp = jax.vjp(f, *xs)
            return loss, vjp(jnp.ones_like(loss) if cot is None else cot)

        if mode in ("compiled", "tiled-compiled"):
            value_and_grad = jax.jit(value_and_grad)
        loss, grads = value_and_grad(inputs, arrays)
        return _f64(loss), {n: _f64(g.astype(jnp.float64)) for n, g in
                            zip(names, grads, strict=True)}


# --------------------------------------------------------------------------- TensorFlow


class TensorFlowAdapter(Adapter):
    name = "tensorflow"

    def setup(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
        import tfree_tf

        self.tf, self.backend = tf, tfree_tf

    def devices(self) -> list[str]:
        return ["cpu"] + (["cuda"] if self.tf.config.list_physical_devices("GPU") else [])

    def run(self, case: GoldenCase, dtype: str, mode: str, device: str) -> Result:
        tf = self.tf
        fn = getattr(self.backend, case.function, None)
        if fn is None:
            raise Unsupported(f"tfree_tf has no {case.function}")
        names = differentiable_order(case)
        with tf.device("/GPU:0" if device == "cuda" else "/CPU:0"):
            inputs = [tf.cast(tf.constant(case.inputs[n]), getattr(tf, dtype)) for n in names]
            kwargs = {k: tf.constant(v) if isinstance(v, np.ndarray) else v
                      for k, v in tiled_kwargs(case, mode).items()}
            compute = tf.float64 if dtype == "float64" else tf.float32
            cot = None if case.cotangent is None else tf.constant(case.cotangent, compute)

            def value_and_grad(*xs):
                with tf.GradientTape() as tape:
                    for x in xs:
                        tape.watch(x)
                    loss = fn(**dict(zip(names, xs, strict=True)), **kwargs)
                    out = loss if cot is None else tf.reduce_sum(loss * cot)
                return (loss, *tape.gradient(out, list(xs)))

            if mode in ("compiled", "tiled-compiled"):
                value_and_grad = tf.function(value_and_grad, jit_compile=True)
            loss, *grads = value_and_grad(*inputs)
        return (_f64(tf.cast(loss, tf.float64).numpy()),
                {n: _f64(tf.cast(g, tf.float64).numpy()) for n, g in
                 zip(names, grads, strict=True)})


def load_adapter(spec: str) -> Adapter:
    """An adapter of your own implementation, given as ``module:Class`` (an ``Adapter``
    subclass with ``name``, ``dtypes`` and ``modes`` attributes)."""
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)()


def make_adapter(backend: str) -> Adapter:
    if ":" in backend:
        return load_adapter(backend)
    if backend in ("numpy", "array_api_strict"):
        return CoreAdapter(backend)
    return {"torch": TorchAdapter, "jax": JaxAdapter, "tensorflow": TensorFlowAdapter}[backend]()
