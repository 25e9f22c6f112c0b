"""Data-parallel losses inside ``jax.shard_map`` / ``jax.pmap``: the ``group=`` keyword
(a mapped axis name) of the public functions.

Each device passes its local rows; the loss gathers the candidates over the named axis
(``lax.all_gather``), evaluates its own anchors' rows (``tfree_core._sharded``), combines
per-anchor statistics with ``lax.psum`` / ``lax.pmax``, and its ``custom_vjp`` backward
returns the local inputs' gradients, the candidate gradients summed over devices and
handed back to their owner with ``lax.psum_scatter``.

The value on each device is scaled so that its mean over the axis (``lax.pmean``) is the
single-device loss on the concatenated batch; each device's gradient is
``∂(Σ_devices loss_d)/∂x_d``, so ``lax.pmean`` of the parameter gradients is exactly the
single-device gradient.

With ``kernel="fused"`` each device runs the Pallas kernels (``_pallas``) on its local
anchor rows against the gathered candidates (``tfree_core._fused.sharded_forward``): same
collectives, same values, no ``n × W·n`` array.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp

from tfree_core import _fused, engine

from ._pallas import PallasKernel

Array = jax.Array

__all__ = ["JaxCollectives", "distributed_loss"]


class JaxCollectives:
    """``tfree_core.engine.Collectives`` over a named mapped axis (traced code only)."""

    def __init__(self, axis_name: Hashable) -> None:
        self.axis_name = axis_name
        self.world_size = int(jax.lax.axis_size(axis_name))
        self.rank = jax.lax.axis_index(axis_name)

    def all_gather(self, x: Array) -> Array:
        return jax.lax.all_gather(x, self.axis_name, axis=0, tiled=True)

    def all_reduce_sum(self, x: Array) -> Array:
        return jax.lax.psum(x, self.axis_name)

    def all_reduce_max(self, x: Array) -> Array:
        return jax.lax.pmax(x, self.axis_name)

    def reduce_scatter_sum(self, x: Array) -> Array:
        return jax.lax.psum_scatter(x, self.axis_name, scatter_dimension=0, tiled=True)


def _varying(x: Array, axis_name: Hashable) -> Array:
    """``x`` typed as varying over the mapped axes (``shard_map``'s replication types):
    the tiled loop's carry starts as zeros, invariant, and ends varying."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    try:
        return jax.lax.pcast(x, names, to="varying")
    except ValueError:  # already varying (or no replication types: pmap, check_vma=False)
        return x


def _scan_over(axis_name: Hashable):
    """The core's block driver as ``lax.scan`` (one compiled body, run sequentially)."""

    def scan(body, n_blocks: int, carry):
        carry = tuple(_varying(c, axis_name) for c in carry)
        return jax.lax.scan(lambda c, i: body(i, c), carry, jnp.arange(n_blocks))

    return scan


def _precise():
    return jax.default_matmul_precision("highest")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _loss(problem: engine.Problem, axis_name: Hashable, *arrays: Array | None) -> Array:
    return _fwd(problem, axis_name, *arrays)[0]


def _fwd(problem: engine.Problem, axis_name: Hashable, *arrays: Array | None):
    with _precise():
        loss, res = engine.sharded_forward(problem, arrays, jnp, JaxCollectives(axis_name),
                                           loop=_scan_over(axis_name))
    return loss, (res, len(arrays))


def _bwd(problem: engine.Problem, axis_name: Hashable, saved, cotangent: Array):
    res, n_arrays = saved
    with _precise():
        grads = engine.sharded_backward(problem, res, cotangent, jnp,
                                        JaxCollectives(axis_name), loop=_scan_over(axis_name))
    return (*grads, *([None] * (n_arrays - len(grads))))


_loss.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused_loss(problem: engine.Problem, axis_name: Hashable, interpret: bool,
                *arrays: Array | None) -> Array:
    """As ``_loss``, the matrix work in the Pallas kernels (``interpret``: Pallas'
    interpreter, on a CPU)."""
    return _fused_fwd(problem, axis_name, interpret, *arrays)[0]


def _fused_fwd(problem: engine.Problem, axis_name: Hashable, interpret: bool,
               *arrays: Array | None):
    with _precise():
        loss, res = _fused.sharded_forward(problem, arrays, jnp, JaxCollectives(axis_name),
                                           PallasKernel(interpret))
    return loss, (res, len(arrays))


def _fused_bwd(problem: engine.Problem, axis_name: Hashable, interpret: bool, saved,
               cotangent: Array):
    res, n_arrays = saved
    with _precise():
        grads = _fused.sharded_backward(problem, res, cotangent, jnp,
                                        JaxCollectives(axis_name), PallasKernel(interpret))
    return (*grads, *([None] * (n_arrays - len(grads))))


_fused_loss.defvjp(_fused_fwd, _fused_bwd)


def world_size(group: Any) -> int:
    """The size of the mapped axis ``group``, or 1 where it is not one (unhashable, or not
    bound): :func:`distributed_loss` then raises, after the inputs have been validated."""
    try:
        return _axis_size(group)
    except (TypeError, NameError):
        return 1


def _axis_size(group: Any) -> int:
    """The size of the mapped axis ``group`` (an axis name bound by an enclosing
    ``shard_map`` / ``pmap``; a ``NameError`` from JAX otherwise)."""
    try:
        hash(group)
    except TypeError:
        raise TypeError(
            "group must be a mapped axis name (a str, or a tuple of names) of an enclosing "
            f"jax.shard_map / jax.pmap; got {type(group).__name__}"
        ) from None
    return int(jax.lax.axis_size(group))


def _checks_replication() -> bool:
    """Whether the enclosing ``jax.shard_map`` checks replication types (``check_vma``,
    its default). Pallas' interpreter lowers its grid to a loop whose carry loses those
    types, so an interpreted kernel cannot run there."""
    from jax._src import config

    flag = getattr(config, "_check_vma", None)
    return bool(flag is not None and flag.value)


def distributed_loss(problem: engine.Problem, arrays: tuple[Array | None, ...],
                     group: Any, *, fused: bool = False, interpret: bool = False) -> Array:
    """The loss of ``problem`` sharded over the mapped axis ``group`` (see
    :func:`_axis_size`); ``fused``: through the Pallas kernels (the caller checked
    ``_pallas.use_fused``), in Pallas' interpreter when ``interpret``."""
    engine.check_sharded(problem, _axis_size(group))
    if fused:
        if interpret and _checks_replication():
            raise ValueError(
                "kernel='fused' with group= on a CPU runs the Pallas kernels in Pallas' "
                "interpreter, which does not support jax.shard_map's replication checks: "
                "pass check_vma=False to jax.shard_map (or use jax.pmap), or use "
                "kernel='auto' or 'portable'")
        return _fused_loss(problem, group, interpret, *arrays)
    return _loss(problem, group, *arrays)
