"""Batches of unknown size under ``tf.function`` (TensorFlow backend only).

``model.fit`` on TensorFlow traces its step once with the batch dimension unknown when the
data set's size is not a multiple of ``batch_size`` (the last batch is smaller). tfree needs
static shapes, so the batch is padded to a static size ``B`` with rows masked out by
``where`` (SPEC §2.8: neither anchors nor candidates): value and gradients are those of the
unpadded batch, and a ``"none"`` result is cut back to the real rows by the caller.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["pad_rows"]


def pad_rows(
    y_pred: tf.Tensor, labels: tf.Tensor | None, size: int
) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor, tf.Tensor]:
    """``y_pred`` (and ``labels``) padded with zero rows to ``size`` rows, the ``where``
    mask of the real rows and their count ``n``. A batch larger than ``size`` fails when
    the step runs (``tf.errors.InvalidArgumentError`` from the shape assertion)."""
    n = tf.shape(y_pred)[0]
    padding = tf.maximum(size - n, 0)
    widths = [[0, padding]] + [[0, 0]] * (y_pred.shape.rank - 1)
    y_pred = tf.ensure_shape(tf.pad(y_pred, widths), [size, *y_pred.shape[1:]])
    if labels is not None:
        labels = tf.ensure_shape(tf.pad(labels, [[0, padding]]), [size])
    return y_pred, labels, tf.range(size) < n, n
