"""The block driver of tiled problems on TensorFlow (``engine.Loop``)."""

from __future__ import annotations

import tensorflow as tf

from tfree_core import engine

__all__ = ["loop"]


def loop(
    body: engine.Body, n_blocks: int, carry: engine.Carry
) -> tuple[engine.Carry, tuple[tf.Tensor, ...]]:
    """Eagerly a Python loop; in graphs a ``tf.while_loop`` (compact, and compiled as one
    loop by XLA) with one ``TensorArray`` per output. Block 0 runs before the loop, which
    gives the outputs' dtypes and shapes for the tensor arrays at no extra cost."""
    if tf.executing_eagerly() or n_blocks == 1:  # tensors are immutable: stack at the end
        per_block = []
        for index in range(n_blocks):
            carry, outputs = body(index, carry)
            per_block.append(outputs)
        return carry, tuple(tf.stack(list(parts), axis=0) for parts in zip(*per_block, strict=True))
    carry, first = body(0, carry)
    arrays = tuple(
        tf.TensorArray(out.dtype, size=n_blocks, element_shape=out.shape).write(0, out)
        for out in first
    )

    def step(index, carry, arrays):
        carry, outputs = body(index, carry)
        position = tf.cast(index, tf.int32)  # TensorArray indices are int32
        arrays = tuple(a.write(position, out) for a, out in zip(arrays, outputs, strict=True))
        return index + 1, carry, arrays

    _, carry, arrays = tf.while_loop(
        lambda index, *_: index < n_blocks,
        step,
        (tf.constant(1, tf.int64), tuple(carry), arrays),
        maximum_iterations=n_blocks - 1,
    )
    return tuple(carry), tuple(a.stack() for a in arrays)
