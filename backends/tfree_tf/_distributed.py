"""Data-parallel losses under ``tf.distribute`` (``MirroredStrategy`` and other strategies
with a replica context): the ``group=`` keyword of the public functions.

Inside ``strategy.run``, each replica passes its local rows and ``group=True`` (the current
replica context) or a ``tf.distribute.ReplicaContext``. The loss gathers the candidates
over the replicas (``ReplicaContext.all_gather``), evaluates its own anchors' rows
(``tfree_core._sharded``), adds per-anchor statistics with ``all_reduce(SUM)``, and its
``tf.custom_gradient`` returns the local inputs' gradients, the candidate gradients summed
over replicas and sliced back to their owner (TensorFlow has no reduce-scatter in the
replica context: an all-reduce and a slice).

The value on each replica is scaled so that its mean over replicas is the single-device
loss on the concatenated batch (replicas in ``replica_id_in_sync_group`` order); each
replica's gradient is ``∂(Σ_replicas loss_r)/∂x_r``, so averaging the gradients over
replicas (``ReduceOp.MEAN``) gives exactly the single-device gradient.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfree_core import engine

from . import _xp as xp

__all__ = ["TFCollectives", "distributed_loss"]


class TFCollectives:
    """``tfree_core.engine.Collectives`` over the replicas of a ``ReplicaContext``."""

    def __init__(self, context: tf.distribute.ReplicaContext) -> None:
        self.context = context
        self.world_size = int(context.num_replicas_in_sync)
        self.rank = context.replica_id_in_sync_group

    def all_gather(self, x: tf.Tensor) -> tf.Tensor:
        out = self.context.all_gather(x, axis=0)
        # the gathered size is static (the core builds index vectors from it)
        return tf.reshape(out, (self.world_size * x.shape[0], *x.shape[1:]))

    def all_reduce_sum(self, x: tf.Tensor) -> tf.Tensor:
        return self.context.all_reduce(tf.distribute.ReduceOp.SUM, x)

    def all_reduce_max(self, x: tf.Tensor) -> tf.Tensor:
        # ReduceOp has SUM and MEAN only: gather the (small) per-replica vectors instead
        return tf.reduce_max(self.all_gather(x[None, ...]), axis=0)

    def reduce_scatter_sum(self, x: tf.Tensor) -> tf.Tensor:
        total = self.all_reduce_sum(x)
        m = x.shape[0] // self.world_size
        blocks = tf.reshape(total, (self.world_size, m, *x.shape[1:]))
        return tf.gather(blocks, tf.cast(self.rank, tf.int32), axis=0)


def _context(group: Any) -> tf.distribute.ReplicaContext:
    context = tf.distribute.get_replica_context() if group is True else group
    if context is None:
        raise ValueError(
            "group=True needs a replica context (call the loss inside strategy.run); "
            "the current context is the cross-replica one"
        )
    if not isinstance(context, tf.distribute.ReplicaContext):
        raise TypeError(
            "group must be True (the current tf.distribute replica context), a "
            f"tf.distribute.ReplicaContext, or None; got {type(group).__name__}"
        )
    return context


def world_size(group: Any) -> int:
    """The number of replicas of ``group``, or 1 where it names no replica context:
    :func:`distributed_loss` then raises, after the inputs have been validated."""
    try:
        return int(_context(group).num_replicas_in_sync)
    except (TypeError, ValueError):
        return 1


@tf.autograph.experimental.do_not_convert
def _forward(problem, arrays, comm):
    from ._losses import _loop

    return engine.sharded_forward(problem, arrays, xp, comm, loop=_loop)


@tf.autograph.experimental.do_not_convert
def _backward(problem, res, cotangent, comm):
    from ._losses import _loop

    return engine.sharded_backward(problem, res, cotangent, xp, comm, loop=_loop)


def distributed_loss(
    problem: engine.Problem, arrays: tuple[tf.Tensor | None, ...], group: Any
) -> tf.Tensor:
    """The loss of ``problem`` sharded over the replicas of ``group`` (validated here,
    before any collective)."""
    comm = TFCollectives(_context(group))
    engine.check_sharded(problem, comm.world_size)
    count = len(engine.DIFFERENTIABLE[problem.layout])
    rest = arrays[count:]

    @tf.custom_gradient
    def loss_with_analytic_gradient(*differentiable: tf.Tensor):
        local = (*(tf.stop_gradient(x) for x in differentiable), *rest)
        loss, res = _forward(problem, local, comm)

        def gradient(cotangent: tf.Tensor) -> tuple[tf.Tensor, ...]:
            return _backward(problem, res, cotangent, comm)

        return loss, gradient

    return loss_with_analytic_gradient(*arrays[:count])  # positionally (see _losses)
