"""The interface between the core and the framework backends: everything a backend uses.

A backend never imports ``tfree_core._*``; it subclasses :class:`Runtime` (the hooks of one
call: library checks, conversion, validation, autodiff wiring) and gets its public
functions from :func:`build`, which are the core's, signature, defaults and docstring,
plus its own keywords. Inside :meth:`Runtime.apply` it calls, with its array namespace:

* :func:`prepare` once per call (validation; returns the static, hashable
  :class:`Problem`),
* :func:`forward` for the loss and the residuals (a flat tuple of arrays and ``None`` entries,
  its structure a function of the ``Problem`` alone), and on the backward pass
  :func:`backward` with the residuals and the upstream cotangent;
* or, where :func:`fuses_gradient` holds and a backward is sure to follow,
  :func:`value_and_grad` (the gradient in the loss's pass) and then
  :func:`scale_gradients`.

Arrays are passed positionally, per layout (``layout(name).arrays``; the leading
``layout(name).differentiable`` get gradients):

============  ==========================================================  ==================
layout        arrays                                                      gradients
============  ==========================================================  ==================
pairs         ``(query, key, labels | None, where | None)``               query, key
negatives     ``(query, key, negatives, where | None)``                   query, key, negs
retrieval     ``(query, key, hard_negatives | None, hard_negative_mask |  query, key, hard
              None, key_ids | None, hard_negative_ids | None, where |     negatives (None
              None)``                                                     when absent)
nt_xent       ``(z1, z2, where | None)``                                  z1, z2
sup_con       ``(features, labels, where | None)``                        features
similarity    ``(similarity, positive_mask, valid_mask | None, where)``   similarity
============  ==========================================================  ==================

Evaluation
----------

``prepare(..., chunk_size=...)`` resolves the strategy into ``Problem.chunk_size``:
``None`` (untiled: one block, ``S`` kept for the backward) or rows per block (tiled: each
block of ``S`` built, used, dropped and recomputed in the backward; no ``N × M`` array).
``"auto"`` resolves from the static shapes and the device kind (``_strategy``); an unknown
or symbolic size resolves to untiled, so the strategy never forces a specialisation.

``forward`` / ``backward`` take three optional plug-ins:

* ``loop``: the block driver (default :func:`python_loop`, a Python ``for``)::

      driver(body, n_blocks, carry) -> (carry, stacked)
      body(block_index, carry) -> (carry, outputs)

  ``n_blocks`` is a Python int; ``block_index`` a Python int or a 0-d integer array (a
  tracer is fine: the body only computes ``block_index * c + arange(c)`` and gathers rows
  with ``xp.take``); ``carry`` a tuple of arrays whose shapes and dtypes never change;
  ``outputs`` a tuple of arrays of the same shapes for every block; ``stacked[k]`` of shape
  ``(n_blocks, *outputs[k].shape)``, block ``b`` at index ``b``. ``body`` is pure. This is
  ``jax.lax.scan``'s contract: ``lambda body, n, carry: jax.lax.scan(lambda c, i: body(i,
  c), carry, jnp.arange(n))`` is a complete JAX driver;
* ``comm``: :class:`Collectives` over a group of devices, each holding its rows of the
  global batch (``group=``): the value is scaled so that its average over ranks is the
  single-device loss (see :mod:`tfree_core._evaluate`); :func:`check_sharded` first;
* ``kernel``: a backend's fused :class:`TileKernel` in place of the block loop, where
  :func:`fused_unsupported` is ``None``.
"""

from __future__ import annotations

from typing import Any

from . import _validation
from ._blocks import Tiling
from ._encoded import (
    check_encoded_pair,
    check_loss_function,
    check_mini_batch_size,
    common_length,
    encoded_pairs,
    is_encoded_pair,
)
from ._evaluate import (
    Body,
    Carry,
    Collectives,
    Loop,
    Residuals,
    backward,
    forward,
    python_loop,
    scale_gradients,
    value_and_grad,
)
from ._fused import TileKernel, exclusions
from ._fused import unsupported as fused_unsupported
from ._layouts import LAYOUTS, Layout, layout
from ._maps import logit_slope, logits
from ._namespace import Array, Namespace
from ._options import (
    AUTO_CHUNK,
    DEFAULT_EPS,
    Options,
    check_chunk_size,
    clip_bound,
    make_options,
)
from ._problem import Problem, fuses_gradient, loss_shape, prepare
from ._runtime import Runtime
from ._surface import (
    BATCHED,
    FUNCTIONS,
    LOSSES,
    SHARED,
    Param,
    PublicFunction,
    Request,
    Variant,
    build,
)

__all__ = [
    "AUTO_CHUNK",
    "BATCHED",
    "DEFAULT_EPS",
    "FUNCTIONS",
    "LAYOUTS",
    "LOSSES",
    "SHARED",
    "Array",
    "Body",
    "Carry",
    "Collectives",
    "Layout",
    "Loop",
    "Namespace",
    "Options",
    "Param",
    "Problem",
    "PublicFunction",
    "Request",
    "Residuals",
    "Runtime",
    "TileKernel",
    "Tiling",
    "Variant",
    "array_types",
    "backward",
    "build",
    "check_chunk_size",
    "check_encoded_pair",
    "check_finite",
    "check_flag",
    "check_loss_function",
    "check_mini_batch_size",
    "check_one_library",
    "check_sharded",
    "check_values",
    "clip_bound",
    "common_length",
    "encoded_pairs",
    "exclusions",
    "forward",
    "fused_unsupported",
    "fuses_gradient",
    "is_encoded_pair",
    "layout",
    "library_error",
    "logit_slope",
    "logits",
    "loss_shape",
    "make_options",
    "needs_eager_message",
    "prepare",
    "python_loop",
    "scale_gradients",
    "value_and_grad",
]

check_finite = _validation.check_finite
check_flag = _validation.check_flag
check_one_library = _validation.check_one_library
library_error = _validation.library_error
array_types = _validation.array_types
needs_eager_message = _validation.needs_eager_message


def check_values(problem: Problem, arrays: tuple[Array | None, ...], xp: Namespace) -> None:
    """The checks that need concrete values (today: the similarity layout's positives lie
    inside its valid mask). Backends that trace the core run this eagerly, before."""
    problem.spec.check_values(arrays, xp)


def check_sharded(problem: Problem, world_size: Any) -> None:
    """``ValueError`` for a layout without a global batch (explicit negatives, the
    similarity level), ``TypeError`` / ``ValueError`` for a world size that is not a
    positive Python int. Backends call it after :func:`prepare`, before any collective."""
    spec = problem.spec
    if not spec.shardable:
        raise ValueError(
            f"{spec.function} has no global batch to shard: distributed evaluation "
            "(group=) supports info_nce (pairs, with or without labels, symmetric or not), "
            f"nt_xent and sup_con; got layout {problem.layout!r}"
        )
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"world_size must be a Python int; got {type(world_size).__name__}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
