"""Data-parallel losses under ``tf.distribute`` (``MirroredStrategy`` and other strategies
with a replica context): the ``group=`` keyword of the public functions.

Inside ``strategy.run``, each replica passes its local rows and ``group=True`` (the current
replica context) or a ``tf.distribute.ReplicaContext``. The loss gathers the candidates
over the replicas (``ReplicaContext.all_gather``), evaluates its own anchors' rows
(``engine.forward`` with these :class:`TFCollectives`), adds per-anchor statistics with
``all_reduce(SUM)``, and its
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

__all__ = ["TFCollectives", "replica_context", "world_size"]


class TFCollectives:
    """``engine.Collectives`` over the replicas of a ``ReplicaContext``."""

    def __init__(self, context: tf.distribute.ReplicaContext) -> None:
        self.context = context
        self.world_size = int(context.num_replicas_in_sync)
        self.rank = context.replica_id_in_sync_group

    def all_gather(self, x: tf.Tensor) -> tf.Tensor:
        if x.dtype == tf.bool:  # the collective gathers numbers only (masks are bool)
            return tf.cast(self.all_gather(tf.cast(x, tf.int32)), tf.bool)
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


def replica_context(group: Any) -> tf.distribute.ReplicaContext:
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
    :func:`replica_context` then raises, after the inputs have been validated."""
    try:
        return int(replica_context(group).num_replicas_in_sync)
    except (TypeError, ValueError):
        return 1
