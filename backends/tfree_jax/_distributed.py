"""Data-parallel losses inside ``jax.shard_map`` / ``jax.pmap``: the ``group=`` keyword
(a mapped axis name) of the public functions.

Each device passes its local rows; the loss gathers the candidates over the named axis
(``lax.all_gather``), evaluates its own anchors' rows (``engine.forward`` with these
:class:`JaxCollectives`), combines per-anchor statistics with ``lax.psum`` / ``lax.pmax``,
and its ``custom_vjp`` backward returns the local inputs' gradients, the candidate
gradients summed over devices and handed back to their owner with ``lax.psum_scatter``.

The value on each device is scaled so that its mean over the axis (``lax.pmean``) is the
single-device loss on the concatenated batch; each device's gradient is
``∂(Σ_devices loss_d)/∂x_d``, so ``lax.pmean`` of the parameter gradients is exactly the
single-device gradient.

With ``kernel="fused"`` each device runs the Pallas kernels (``_pallas``) on its local
anchor rows against the gathered candidates: same collectives, same values, no
``n × W·n`` array.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["JaxCollectives", "axis_size", "checks_replication", "scan_over", "world_size"]


class JaxCollectives:
    """``engine.Collectives`` over a named mapped axis (traced code only)."""

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


def scan_over(axis_name: Hashable | None):
    """The core's block driver (``engine.Loop``) as ``lax.scan``: one compiled block body,
    run sequentially under ``jit`` (a Python loop would be unrolled, and XLA may run the
    blocks at once, which defeats tiling). ``axis_name``: the mapped axis of a sharded
    call, over which the carry varies."""

    def scan(body, n_blocks: int, carry):
        if axis_name is not None:
            carry = tuple(_varying(c, axis_name) for c in carry)
        return jax.lax.scan(lambda c, i: body(i, c), carry, jnp.arange(n_blocks))

    return scan


def world_size(group: Any) -> int:
    """The size of the mapped axis ``group``, or 1 where it is not one (unhashable, or not
    bound): :func:`axis_size` then raises, after the inputs have been validated."""
    try:
        return axis_size(group)
    except (TypeError, ValueError):
        return 1


def axis_size(group: Any) -> int:
    """The size of the mapped axis ``group`` (an axis name bound by an enclosing
    ``shard_map`` / ``pmap``; ``ValueError`` otherwise)."""
    try:
        hash(group)
    except TypeError:
        raise TypeError(
            "group must be a mapped axis name (a str, or a tuple of names) of an enclosing "
            f"jax.shard_map / jax.pmap; got {type(group).__name__}"
        ) from None
    try:
        return int(jax.lax.axis_size(group))
    except NameError:
        raise ValueError(
            f"group={group!r} names no mapped axis here: call the loss inside a "
            "jax.shard_map / jax.pmap over that axis name, or pass group=None"
        ) from None


def checks_replication() -> bool:
    """Whether the enclosing ``jax.shard_map`` checks replication types (``check_vma``,
    its default). Pallas' interpreter lowers its grid to a loop whose carry loses those
    types, so an interpreted kernel cannot run there."""
    from jax._src import config

    flag = getattr(config, "_check_vma", None)
    return bool(flag is not None and flag.value)
