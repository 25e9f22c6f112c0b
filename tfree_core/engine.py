"""The interface between the core and the framework backends.

A backend calls :func:`prepare` once per call (validation; returns the static
:class:`Problem`), :func:`forward` for the loss and the residuals, and on the backward pass
:func:`backward` with the residuals and the upstream cotangent. The backend holds no math
of its own; the core holds no framework code.

Arrays are passed positionally, per layout:

============  ==========================================================  ==================
layout        arrays                                                      gradients
============  ==========================================================  ==================
pairs         ``(query, key, labels | None, where | None)``               query, key
negatives     ``(query, key, negatives, where | None)``                   query, key, negs
nt_xent       ``(z1, z2, where | None)``                                  z1, z2
sup_con       ``(features, labels, where | None)``                        features
similarity    ``(similarity, positive_mask, valid_mask | None, where)``   similarity
============  ==========================================================  ==================

Tiled evaluation
----------------

``prepare(..., chunk_size=...)`` records the evaluation strategy in the static
``Problem`` (hashable, like everything in it):

* ``None`` (``prepare``'s default): untiled. The whole ``N × M`` matrix ``S`` is built
  once and kept for the backward.
* an int ``c``: anchors are taken ``c`` rows at a time (``min(c, N)``); each block of
  ``S`` is built, used and dropped, and recomputed in the backward. No ``N × M`` array
  exists; extra memory ``O((N + M)·D + c·M)``; about one extra matrix product (4 instead
  of 3). Results equal the untiled ones to round-off for any ``c``.
* ``"auto"`` (the public functions' default): resolved by :func:`prepare` from the static
  shapes and the kind of device into ``None`` or rows per block (``tfree_core._strategy``:
  untiled while ``S`` takes at most 8 MiB on a CPU, 1 GiB on an accelerator; else blocks of
  at most 8 MiB, cache-sized, on a CPU and 64 MiB on an accelerator), so a prepared
  ``Problem`` holds ``None`` or an int. Size-dependent, but static wherever shapes are
  (``jax.jit``, ``tf.function`` with static shapes, ``torch.compile``); a size that is
  unknown or symbolic (``torch.compile(dynamic=True)``) resolves to ``None``, so the
  strategy never forces a specialisation.

A tiled problem has its own residuals (:func:`residual_keys`): the normalised embeddings
and norms, ``labels`` and ``where`` (the vectors the block masks are rebuilt from; ``None``
where a layout has none), and the per-anchor statistics of each direction. The
similarity layout is never tiled (its matrix is an input).

The block loop is pluggable: ``forward(..., loop=driver)`` and ``backward(...,
loop=driver)`` take a driver (default :func:`python_loop`, a Python ``for``)::

    driver(body, n_blocks, carry) -> (carry, stacked)
    body(block_index, carry) -> (carry, outputs)

* ``n_blocks``: a Python int. ``block_index``: a Python int or a 0-d integer array
  (a tracer is fine): the body only computes ``block_index * c + arange(c)`` with it and
  gathers rows with ``xp.take``; no dynamic slicing, no Python control flow on it.
* ``carry``: a tuple of arrays (possibly empty) whose shapes and dtypes never change.
* ``outputs``: a tuple of arrays, of the same shapes for every block (the last block is
  padded to ``c`` rows with dead rows that contribute nothing).
* ``stacked``: a tuple with ``stacked[k]`` of shape ``(n_blocks, *outputs[k].shape)``,
  block ``b`` at index ``b``, whatever order the driver ran them in.
* ``body`` is pure, so a driver may trace it once. The carry only accumulates sums and
  running maxima, so the order of the blocks matters only to round-off.

This is ``jax.lax.scan``'s contract: ``lambda body, n, carry: jax.lax.scan(lambda c, i:
body(i, c), carry, jnp.arange(n))`` is a complete JAX driver (runs under ``jit``; a
Python loop there would be unrolled). TensorFlow: ``tf.while_loop`` over the index with
one ``TensorArray`` per output, stacked at the end. PyTorch: the default Python driver
(eager and ``torch.compile`` both handle a static-length loop).
"""

from __future__ import annotations

from . import _layouts, _sharded, _tiled, _validation
from ._layouts import DIFFERENTIABLE, Problem, Residuals, loss_shape, validate
from ._namespace import Array, Namespace
from ._options import Options, make_options
from ._sharded import SHARDED_LAYOUTS, Collectives
from ._tiled import AUTO_BLOCK_BYTES, Body, Carry, Loop, block_size, python_loop

__all__ = [
    "AUTO_BLOCK_BYTES",
    "DIFFERENTIABLE",
    "SHARDED_LAYOUTS",
    "Body",
    "Carry",
    "Collectives",
    "Loop",
    "Options",
    "Problem",
    "Residuals",
    "backward",
    "block_size",
    "check_negatives_conflicts",
    "check_sharded",
    "check_values",
    "forward",
    "fuses_gradient",
    "loss_shape",
    "make_options",
    "prepare",
    "python_loop",
    "residual_keys",
    "scale_gradients",
    "sharded_backward",
    "sharded_forward",
    "sharded_residual_keys",
    "value_and_grad",
]


def prepare(
    layout: str,
    arrays: tuple[Array | None, ...],
    *,
    options: Options,
    symmetric: bool = False,
    chunk_size: int | str | None = None,
    device_kind: str | None = None,
    world_size: int = 1,
    one_pass: bool = True,
    xp: Namespace,
) -> Problem:
    """Validate ``arrays`` for ``layout`` (before any computation) and return the static
    description of the call. ``chunk_size`` (``None``, ``"auto"`` or rows per block) is
    validated here and recorded in the ``Problem``, ``"auto"`` resolved to ``None`` or rows
    per block (``_strategy``) for ``device_kind`` (``"cpu"`` or ``"accelerator"``; default:
    read from the arrays' device, CPU where it is unknown, as under tracing). A sharded
    call (``sharded_forward``) passes its ``world_size``: each device's rows then meet
    ``world_size`` times as many candidates, which ``"auto"`` must budget for.
    ``one_pass=False``: the backend never calls :func:`value_and_grad`, so ``"auto"``
    budgets for the separate forward and backward even where :func:`fuses_gradient`
    holds."""
    return validate(
        layout, arrays, {"options": options, "symmetric": symmetric, "chunk_size": chunk_size,
                         "device_kind": device_kind, "world_size": world_size,
                         "one_pass": one_pass},
        xp,
    )


def residual_keys(problem: Problem) -> tuple[str, ...]:
    """The names of the residuals of ``problem``, in order: a function of the static problem
    only (tiled problems have their own, matrix-free set)."""
    if problem.chunk_size is None:
        return _layouts.residual_keys(problem)
    return _tiled.residual_keys(problem)


def forward(
    problem: Problem,
    arrays: tuple[Array | None, ...],
    xp: Namespace,
    check_values: bool = True,
    *,
    loop: Loop | None = None,
) -> tuple[Array, Residuals]:
    """The loss (in the compute dtype) and the residuals its analytic gradient needs.

    ``loop`` drives the blocks of a tiled problem (default :func:`python_loop`); ignored
    when ``problem.chunk_size`` is None. ``check_values`` enables the similarity layout's
    eager value check (positives inside the valid mask).
    """
    if problem.chunk_size is None:
        return _layouts.forward(problem, arrays, xp, check_values)
    return _tiled.forward(problem, arrays, xp, loop=loop)


check_negatives_conflicts = _validation.check_negatives_conflicts


def check_values(problem: Problem, arrays: tuple[Array | None, ...], xp: Namespace) -> None:
    """The checks that need concrete values (today: the similarity layout's positives lie
    inside its valid mask). Backends that compile the core run this eagerly, before."""
    if problem.layout == "similarity" and arrays[2] is not None:
        _validation.check_positive_inside_valid(arrays[1], arrays[2], xp)


def backward(
    problem: Problem,
    res: Residuals,
    cotangent: Array,
    xp: Namespace,
    *,
    loop: Loop | None = None,
) -> tuple[Array, ...]:
    """Gradients of ``Σ cotangent · loss`` w.r.t. the differentiable inputs (SPEC §2), each
    cast to its input's dtype; ``loop`` as in :func:`forward`."""
    if problem.chunk_size is None:
        return _layouts.backward(problem, res, cotangent, xp)
    return _tiled.backward(problem, res, cotangent, xp, loop=loop)


# ------------------------------------------------------------ gradient in the forward

fuses_gradient = _tiled.fuses_gradient
"""``fuses_gradient(problem)``: whether :func:`value_and_grad` applies (one direction, a
scalar reduction, not the similarity layout)."""


def value_and_grad(
    problem: Problem,
    arrays: tuple[Array | None, ...],
    xp: Namespace,
    *,
    loop: Loop | None = None,
) -> tuple[Array, tuple[Array, ...]]:
    """The loss and, in the same pass over the blocks of ``S``, its gradients for a unit
    cotangent (compute dtype): three matrix products, each block used while in cache,
    no ``N × M`` residual. For a backend whose forward knows that a backward will follow
    (an autograd tape with inputs that require grad, ``custom_vjp``'s forward rule); the
    backward is then :func:`scale_gradients`. Only where :func:`fuses_gradient` holds."""
    return _tiled.value_and_grad(problem, arrays, xp, loop=loop)


def scale_gradients(
    problem: Problem, grads: tuple[Array, ...], cotangent: Array, xp: Namespace
) -> tuple[Array, ...]:
    """The backward after :func:`value_and_grad`: ``cotangent · grads``, each cast to its
    input's dtype."""
    return _tiled.scale_gradients(problem, grads, cotangent, xp)


# --------------------------------------------------------------------------- distributed

check_sharded = _sharded.check_sharded
"""``check_sharded(problem, world_size)``: ``ValueError`` for a layout without a global
batch (explicit negatives, the similarity level) or a world size that is not a positive
int. Backends call it after :func:`prepare`, before any collective."""


def sharded_residual_keys(problem: Problem) -> tuple[str, ...]:
    """The residual names of :func:`sharded_forward` (static, like :func:`residual_keys`)."""
    return _sharded.residual_keys(problem)


def sharded_forward(
    problem: Problem,
    arrays: tuple[Array | None, ...],
    xp: Namespace,
    comm: Collectives,
    *,
    loop: Loop | None = None,
) -> tuple[Array, Residuals]:
    """Data-parallel forward: this rank's share of the loss of the global batch (the
    ranks' inputs concatenated in rank order) and its residuals.

    ``comm`` supplies ``world_size``, ``rank``, ``all_gather``, ``all_reduce_sum``,
    ``all_reduce_max`` and ``reduce_scatter_sum`` (:class:`Collectives`). The value is
    scaled so that its average over ranks is the single-device loss ("mean": ``W·Σ_local
    L_i / n_global``, "sum": ``W·Σ_local L_i``, "none": the local anchors' ``L_i``);
    ``chunk_size`` tiles the local rows with ``loop`` as in :func:`forward`.
    """
    return _sharded.forward(problem, arrays, xp, comm, loop=loop)


def sharded_backward(
    problem: Problem,
    res: Residuals,
    cotangent: Array,
    xp: Namespace,
    comm: Collectives,
    *,
    loop: Loop | None = None,
) -> tuple[Array, ...]:
    """Gradients of ``Σ_ranks cotangent·loss`` w.r.t. this rank's inputs: every rank calls
    it (collectives inside); averaged over ranks, they give the single-device gradient."""
    return _sharded.backward(problem, res, cotangent, xp, comm, loop=loop)
