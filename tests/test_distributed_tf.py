"""``group=True`` under ``tf.distribute.MirroredStrategy`` over 4 logical CPU devices.

Logical devices must be configured before TensorFlow initialises its runtime, so the checks
run in a subprocess (this file run as a script). Per case: each replica's loss and
``GradientTape`` gradient w.r.t. its local inputs, inside ``strategy.run`` under
``tf.function``, against ``tfree_tf`` on one device on the concatenated batch: the
replicas' losses average to the global loss and each replica's gradient is ``W`` times the
global gradient's slice, so the replicas' mean gradient is the global gradient.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

WORLD = 4
N = 3
D = 6


def _script() -> None:  # pragma: no cover - runs in the subprocess
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(WORLD)])
    import tfree_tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    assert strategy.num_replicas_in_sync == WORLD
    rng = np.random.default_rng(11)
    fns = {"pairs": tfree_tf.info_nce, "nt_xent": tfree_tf.nt_xent, "sup_con": tfree_tf.sup_con,
           "retrieval": tfree_tf.info_nce}
    cases = [
        ("pairs", {}, "float64", {}),
        ("pairs", {"symmetric": True}, "float64", {}),
        ("pairs", {"symmetric": True}, "float32", {}),
        ("pairs", {"symmetric": True, "chunk_size": 2}, "float64", {"n": 5, "labels": True}),
        ("nt_xent", {}, "float64", {}),
        ("nt_xent", {}, "float32", {"where": True}),
        ("sup_con", {}, "float64", {"views": 2}),
        ("sup_con", {}, "float32", {}),
        ("retrieval", {"symmetric": True}, "float64", {"ids": True}),
        ("retrieval", {"chunk_size": 3}, "float32", {"n": 5}),
    ]
    checked = 0
    for layout, kw, dtype, data_kw in cases:
        n = data_kw.get("n", N)
        total = WORLD * n
        views = data_kw.get("views", 0)
        x = rng.standard_normal((total, views, D) if views else (total, D)).astype(dtype)
        if layout == "pairs":
            diff = {"query": x, "key": x + 0.7 * rng.standard_normal(x.shape).astype(dtype)}
        elif layout == "retrieval":
            diff = {"query": x, "key": x + 0.7 * rng.standard_normal(x.shape).astype(dtype),
                    "hard_negatives": rng.standard_normal((total, 2, D)).astype(dtype)}
        elif layout == "nt_xent":
            diff = {"z1": x, "z2": x + 0.8 * rng.standard_normal(x.shape).astype(dtype)}
        else:
            diff = {"features": x}
        static = {}
        if layout == "sup_con" or data_kw.get("labels"):
            labels = rng.integers(0, 3, total)
            labels[-1] = 99
            static["labels"] = labels
        if data_kw.get("where"):
            mask = rng.random(total) > 0.3
            mask[0] = True
            static["where"] = mask
        if data_kw.get("ids"):  # duplicates across the replicas' batches, ragged mining
            static["key_ids"] = rng.integers(0, total // 2, total)
            static["hard_negative_ids"] = rng.integers(0, total, (total, 2))
            static["hard_negative_mask"] = rng.random((total, 2)) > 0.3
        fn = fns[layout]
        names = tuple(diff)
        variables = [tf.Variable(diff[k]) for k in names]
        with tf.GradientTape() as tape:
            loss = fn(**dict(zip(names, variables, strict=True)), **static, **kw)
        grads = tape.gradient(loss, variables)
        tol = {"rtol": 1e-10, "atol": 1e-13} if dtype == "float64" else {
            "rtol": 3e-5, "atol": 1e-6}

        def shard(ctx, n=n, names=names, diff=diff, static=static):
            r = ctx.replica_id_in_sync_group
            rows = slice(r * n, (r + 1) * n)
            return ({k: tf.constant(diff[k][rows]) for k in names},
                    {k: tf.constant(v[rows]) for k, v in static.items()})

        per_replica = strategy.experimental_distribute_values_from_function(shard)

        @tf.function
        def step(inputs, fn=fn, names=names, kw=kw):
            # converted by AutoGraph (strategy.run does): the losses opt out themselves
            def replica(local):
                xs, extra = local
                xs = [xs[k] for k in names]
                with tf.GradientTape() as tape:
                    tape.watch(xs)
                    value = fn(**dict(zip(names, xs, strict=True)), **extra, **kw, group=True)
                return value, tape.gradient(value, xs)

            return strategy.run(replica, args=(inputs,))

        values, local_grads = step(per_replica)
        values = [v.numpy() for v in strategy.experimental_local_results(values)]
        np.testing.assert_allclose(np.mean(values), loss.numpy(), **tol)
        for i, want in enumerate(grads):
            parts = [g.numpy() for g in strategy.experimental_local_results(local_grads[i])]
            got = np.concatenate(parts)
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, WORLD * want.numpy(), **tol)
        checked += 1
    print(f"CHECKED {checked}")


def test_mirrored_strategy_four_logical_devices():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, __file__], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "CHECKED 10" in proc.stdout, proc.stdout[-2000:]


def test_group_outside_a_replica_context_raises():
    import tensorflow as tf
    import tfree_tf

    q = tf.ones((3, 4))
    with pytest.raises(TypeError, match="group"):
        tfree_tf.info_nce(q, q, group="replicas")
    with pytest.raises(ValueError, match="no global batch"):
        tfree_tf.info_nce(q, q, negatives=q, group=True)


if __name__ == "__main__":
    _script()
