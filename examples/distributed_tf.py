"""Data-parallel SupCon with ``tfree_tf`` under ``tf.distribute.MirroredStrategy`` on 4
logical CPU devices.

Inside ``strategy.run`` each replica passes its shard and ``group=True``; the replicas'
mean loss and mean gradient equal the single-device ones on the full batch (checked).

Run: ``python -m examples.distributed_tf`` (about 20 s on a CPU).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

WORLD, N, D_IN, D = 4, 6, 10, 8


def main() -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(WORLD)])
    import tfree_tf

    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((WORLD * N, D_IN)).astype("float32")
    labels = rng.integers(0, 4, WORLD * N)
    with strategy.scope():
        w = tf.Variable(rng.standard_normal((D_IN, D)).astype("float32"))

    def shard(ctx):
        rows = slice(ctx.replica_id_in_sync_group * N, (ctx.replica_id_in_sync_group + 1) * N)
        return tf.constant(x[rows]), tf.constant(labels[rows])

    inputs = strategy.experimental_distribute_values_from_function(shard)

    @tf.function
    def step(inputs):
        def replica(local):
            features, y = local
            with tf.GradientTape() as tape:
                loss = tfree_tf.sup_con(tf.tanh(features @ w), y, group=True)
            return loss, tape.gradient(loss, w)

        loss, grad = strategy.run(replica, args=(inputs,))
        mean = tf.distribute.ReduceOp.MEAN
        return (strategy.reduce(mean, loss, axis=None), strategy.reduce(mean, grad, axis=None))

    loss, grad = step(inputs)
    with tf.GradientTape() as tape:
        ref = tfree_tf.sup_con(tf.tanh(tf.constant(x) @ w), labels)
    ref_grad = tape.gradient(ref, w)
    err = float(tf.reduce_max(tf.abs(grad - ref_grad)))
    print(f"{WORLD} replicas: mean loss {float(loss):.6f}   one device {float(ref):.6f}")
    print(f"max |mean gradient - one-device gradient| = {err:.2e}")
    assert abs(float(loss) - float(ref)) < 1e-5
    assert err < 1e-5


if __name__ == "__main__":
    main()
