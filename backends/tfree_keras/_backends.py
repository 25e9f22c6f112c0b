"""Which tfree package computes the loss under the running Keras backend.

Keras fixes its backend when it is first imported (``KERAS_BACKEND``); the loss looks it up
at call time (``keras.backend.backend()``) and calls that framework's own tfree package, so
each backend keeps tfree's analytic gradient (``jax.custom_vjp``, ``torch.autograd``,
``tf.custom_gradient``) and Keras' autodiff only scales it (by the sample weights).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import keras

__all__ = ["BACKENDS", "Backend", "current", "package"]


@dataclass(frozen=True)
class Backend:
    """A Keras backend and the tfree package that computes the loss on its tensors.

    ``unknown_batch``: whether a trace can see a batch dimension of unknown size
    (``tf.function`` in ``fit`` when the last batch is smaller). tfree needs static shapes,
    so the loss then pads the batch (``_padding``). JAX and PyTorch trace with concrete
    shapes (``jax.jit`` retraces per shape; Dynamo's symbolic sizes are not ``None``).
    ``trainable``: whether Keras can train on it (NumPy: ``evaluate`` / ``predict`` only).
    """

    keras_name: str
    package: str
    framework: str
    extra: str | None
    unknown_batch: bool = False
    trainable: bool = True

    def install_hint(self) -> str:
        extras = "keras" if self.extra is None else f"keras,{self.extra}"
        return f"pip install 'tfree[{extras}]'"


BACKENDS: dict[str, Backend] = {b.keras_name: b for b in (
    Backend("tensorflow", "tfree_tf", "tensorflow", "tensorflow", unknown_batch=True),
    Backend("jax", "tfree_jax", "jax", "jax"),
    Backend("torch", "tfree_torch", "torch", "torch"),
    # Keras' NumPy backend evaluates and predicts (no gradients): tfree_core is NumPy-native.
    Backend("numpy", "tfree_core", "numpy", None, trainable=False),
)}
"""Keras backend name -> :class:`Backend`."""

_IMPORTED: dict[str, ModuleType] = {}  # package name -> module, after its first import


def current() -> Backend:
    """The running Keras backend's entry; ``RuntimeError`` for one tfree does not support."""
    name = keras.backend.backend()
    try:
        return BACKENDS[name]
    except KeyError:
        raise RuntimeError(
            f"TemperatureFreeLoss supports the Keras backends {tuple(BACKENDS)}; Keras runs "
            f"on {name!r}. Set KERAS_BACKEND to one of them before the first import of keras"
        ) from None


def package(backend: Backend) -> ModuleType:
    """The tfree package of ``backend``, imported on first use.

    ``ImportError`` naming the package, the framework and the pip extra when it cannot be
    imported (Keras can run on a framework whose tfree package is absent or broken).
    """
    module = _IMPORTED.get(backend.package)
    if module is not None:
        return module
    try:
        module = importlib.import_module(backend.package)
    except ImportError as error:
        raise ImportError(
            f"TemperatureFreeLoss on Keras' {backend.keras_name!r} backend computes with "
            f"{backend.package}, which needs {backend.framework}; importing it failed "
            f"({error}). Install it with {backend.install_hint()}"
        ) from error
    _IMPORTED[backend.package] = module
    return module
