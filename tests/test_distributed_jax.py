"""``group=`` (a mapped axis name) on 4 host devices, under ``jax.shard_map`` and ``jax.pmap``.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX is imported,
so the checks run in a subprocess (this file run as a script). Per case: every device's
loss and ``jax.grad`` w.r.t. its local inputs, inside the mapped function, against
``tfree_jax`` on one device on the concatenated batch: the devices' losses average to the
global loss and each device's gradient is ``W`` times the global gradient's slice
(``∂(Σ_devices loss_d)/∂x_d``), so ``lax.pmean`` of the gradients is the global gradient.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

WORLD = 4
N = 3
D = 6


def _script() -> None:  # pragma: no cover - runs in the subprocess
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import tfree_jax
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() == WORLD, jax.devices()
    mesh = jax.make_mesh((WORLD,), ("d",))
    rng = np.random.default_rng(7)

    def data(layout, dtype, n=N, views=0, where=False):
        total = WORLD * n
        x = rng.standard_normal((total, views, D) if views else (total, D))
        arrays = {}
        if layout == "pairs":
            arrays = {"query": x, "key": x + 0.7 * rng.standard_normal(x.shape)}
        elif layout == "retrieval":
            arrays = {"query": x, "key": x + 0.7 * rng.standard_normal(x.shape),
                      "hard_negatives": rng.standard_normal((total, 2, D))}
        elif layout == "nt_xent":
            arrays = {"z1": x, "z2": x + 0.8 * rng.standard_normal(x.shape)}
        else:
            arrays = {"features": x}
        arrays = {k: jnp.asarray(v, dtype) for k, v in arrays.items()}
        static = {}
        if layout == "sup_con" or where == "labels":
            labels = rng.integers(0, 3, total)
            labels[-1] = 99
            static["labels"] = jnp.asarray(labels)
        if where is True:
            mask = rng.random(total) > 0.3
            mask[0] = True
            static["where"] = jnp.asarray(mask)
        if where == "ids":  # duplicates across the devices' batches, ragged mining
            static["key_ids"] = jnp.asarray(rng.integers(0, total // 2, total))
            static["hard_negative_ids"] = jnp.asarray(rng.integers(0, total, (total, 2)))
            static["hard_negative_mask"] = jnp.asarray(rng.random((total, 2)) > 0.3)
        return arrays, static

    fns = {"pairs": tfree_jax.info_nce, "nt_xent": tfree_jax.nt_xent,
           "sup_con": tfree_jax.sup_con, "retrieval": tfree_jax.info_nce}
    cases = [
        ("pairs", {}, {}),
        ("pairs", {"symmetric": True}, {}),
        ("pairs", {"symmetric": True}, {"where": "labels"}),
        ("pairs", {"symmetric": True, "chunk_size": 2}, {"n": 5, "where": True}),
        ("pairs", {"symmetric": True, "reduction": "sum"}, {}),
        ("nt_xent", {}, {}),
        ("nt_xent", {"chunk_size": 4}, {"where": True}),
        ("sup_con", {}, {"views": 2}),
        ("sup_con", {"logit_map": "temperature", "temperature": 0.1}, {}),
        ("retrieval", {}, {}),
        ("retrieval", {"symmetric": True, "chunk_size": 2}, {"n": 5, "where": "ids"}),
    ]
    checked = 0
    for dtype in (jnp.float64, jnp.float32):
        tol = {"rtol": 1e-10, "atol": 1e-13} if dtype == jnp.float64 else {
            "rtol": 3e-5, "atol": 1e-6}
        # float32: the three layouts once each (compilation dominates the run time)
        for layout, kw, data_kw in (cases if dtype == jnp.float64 else cases[1:2] + cases[5:6]
                                    + cases[7:8]):
            n = data_kw.get("n", N)
            arrays, static = data(layout, dtype, **data_kw)
            names = tuple(arrays)
            fn = fns[layout]

            def global_loss(*xs, fn=fn, names=names, static=static, kw=kw):
                return fn(**dict(zip(names, xs, strict=True)), **static, **kw)

            xs = tuple(arrays.values())
            loss, grads = jax.value_and_grad(global_loss, argnums=tuple(range(len(xs))))(*xs)

            k_count, static_keys = len(names), sorted(static)

            def local(*parts, fn=fn, names=names, kw=kw, k=k_count, keys=static_keys):
                def f(*ys):
                    named = dict(zip(names, ys, strict=True))
                    extra = dict(zip(keys, parts[k:], strict=True))
                    return fn(**named, **extra, **kw, group="d")

                value, g = jax.value_and_grad(f, argnums=tuple(range(k)))(*parts[:k])
                return value[None], g

            extra = tuple(static[key] for key in sorted(static))
            specs = tuple(P("d") for _ in xs + extra)
            mapped = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs,
                                           out_specs=(P("d"), tuple(P("d") for _ in xs))))
            sharding = jax.sharding.NamedSharding(mesh, P("d"))
            values, local_grads = mapped(*(jax.device_put(x, sharding) for x in xs + extra))
            np.testing.assert_allclose(np.mean(values), loss, **tol)
            for got, want in zip(local_grads, grads, strict=True):
                assert got.dtype == want.dtype
                np.testing.assert_allclose(got, WORLD * want, **tol)
            checked += 1
            if layout == "nt_xent" and not kw:  # the same under pmap
                stacked = tuple(x.reshape(WORLD, n, *x.shape[1:]) for x in xs)
                pv, pg = jax.pmap(local, axis_name="d")(*stacked)
                np.testing.assert_allclose(np.mean(pv), loss, **tol)
                for got, want in zip(pg, grads, strict=True):
                    np.testing.assert_allclose(got.reshape(want.shape), WORLD * want, **tol)
                checked += 1
    # explicit negatives have no global batch
    q = jnp.ones((WORLD * N, D))

    def bad(q):
        return tfree_jax.info_nce(q, q, negatives=q, group="d")[None]

    message = ""
    try:
        jax.shard_map(bad, mesh=mesh, in_specs=P("d"), out_specs=P("d"))(
            jax.device_put(q, jax.sharding.NamedSharding(mesh, P("d"))))
    except ValueError as err:
        message = str(err)
    checked += "no global batch" in message
    print(f"CHECKED {checked}")


def test_four_host_devices():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__], cwd=root, env=env, capture_output=True,
                          text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "CHECKED 17" in proc.stdout, proc.stdout[-2000:]


def test_group_outside_a_mapped_axis_raises():
    import jax.numpy as jnp
    import tfree_jax

    q = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"group='nowhere' names no mapped axis"):
        tfree_jax.info_nce(q, q, group="nowhere")
    with pytest.raises(TypeError, match="group"):
        tfree_jax.info_nce(q, q, group=["d"])


if __name__ == "__main__":
    _script()
