"""Data-parallel NT-Xent with ``tfree_jax`` on 4 host devices under ``jax.shard_map``.

Each device holds a quarter of the batch; ``nt_xent(..., group="batch")`` uses the global
batch as negatives; the gradient of ``lax.pmean`` of the devices' losses is the
single-device gradient on the full batch (checked at the end).

Run: ``python -m examples.distributed_jax`` (sets 4 host devices itself; about 10 s).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import tfree_jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def encode(w, x):
    return jnp.tanh(x @ w)


def main() -> None:
    devices = jax.device_count()
    mesh = jax.make_mesh((devices,), ("batch",))
    key = jax.random.key(0)
    kx, kn, kw = jax.random.split(key, 3)
    x1 = jax.random.normal(kx, (8 * devices, 10))
    x2 = x1 + 0.3 * jax.random.normal(kn, x1.shape)
    w = jax.random.normal(kw, (10, 8))

    def local_step(w, x1, x2):
        def loss_fn(w):
            # pmean of the devices' values is the loss of the whole batch; under shard_map
            # the gradient of the replicated w is summed over devices by JAX itself
            local = tfree_jax.nt_xent(encode(w, x1), encode(w, x2), group="batch")
            return jax.lax.pmean(local, "batch")

        return jax.value_and_grad(loss_fn)(w)

    step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P("batch"), P("batch")),
                                 out_specs=(P(), P())))
    rows = NamedSharding(mesh, P("batch"))
    loss, grad = step(w, jax.device_put(x1, rows), jax.device_put(x2, rows))

    def single(w):
        return tfree_jax.nt_xent(encode(w, x1), encode(w, x2))

    ref_loss, ref_grad = jax.value_and_grad(single)(w)
    err = float(np.max(np.abs(np.asarray(grad) - np.asarray(ref_grad))))
    print(f"{devices} devices: pmean loss {float(loss):.6f}   one device {float(ref_loss):.6f}")
    print(f"max |pmean gradient - one-device gradient| = {err:.2e}")
    assert abs(float(loss) - float(ref_loss)) < 1e-5
    assert err < 1e-5


if __name__ == "__main__":
    main()
