"""Soak test: many optimisation steps of a small model with the temperature-free loss, in
each framework, watching memory and NaN.

    python tests/soak.py                              # 10 000 steps, every run below
    python tests/soak.py --steps 2000 --runs torch-plain jax-tiled
    TFREE_SOAK_STEPS=500 python tests/soak.py

Runs (``framework-mode``):

* ``torch-plain``: eager PyTorch, ``nt_xent``; ``torch-tiled``: ``info_nce(symmetric=True,
  chunk_size=8)``; ``torch-distributed``: two Gloo ranks (``torch.multiprocessing``), a
  ``DistributedDataParallel`` model and ``nt_xent(..., group=...)``;
* ``jax-plain`` / ``jax-tiled``: the same losses in a ``jax.jit`` train step;
* ``tf-eager``: eager TensorFlow (the Python path of every call); ``tf-plain`` /
  ``tf-tiled``: a ``tf.function`` train step.

Each run trains a linear encoder (16 → 8) on a fixed pool of batches (32 rows, two noisy
views) with SGD and momentum. After a warm-up (a fifth of the steps, at least 50), it
records the resident set size (RSS, ``/proc/self/statm``) and the number of live Python
objects (after ``gc.collect()``; JAX also: live device arrays) and compares them at the
end: a leak of one object, or of a few bytes per step, shows as growth proportional to the
steps. Every loss is checked finite. The report is one JSON line per run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

RUNS = ("torch-plain", "torch-tiled", "torch-distributed", "jax-plain", "jax-tiled",
        "tf-eager", "tf-plain", "tf-tiled")
DEFAULT_STEPS = 10_000
BATCH, D_IN, D_OUT, POOL, CHUNK = 32, 16, 8, 8, 8
LR, MOMENTUM = 0.05, 0.9
WINDOW = 25


@dataclass
class SoakResult:
    run: str
    steps: int
    warmup: int
    seconds: float
    first_loss: float
    last_loss: float
    first_mean: float  # mean loss of the first WINDOW steps
    last_mean: float  # and of the last WINDOW steps (single steps are noisy)
    nonfinite_steps: int
    rss_warm_mib: float
    rss_end_mib: float
    objects_warm: int
    objects_end: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_end_mib - self.rss_warm_mib

    @property
    def object_growth(self) -> int:
        return self.objects_end - self.objects_warm


def rss_mib() -> float:
    """The current resident set size in MiB (Linux ``/proc``; else the peak from
    ``resource``, which can only grow)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def warmup_steps(steps: int) -> int:
    return max(50, steps // 5)


def _pool(seed: int = 0) -> np.ndarray:
    """A fixed pool of input batches (the data never changes, so memory should not)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(POOL, BATCH, D_IN)).astype(np.float32)


class _Monitor:
    """Counts non-finite losses and takes the memory readings at warm-up and at the end."""

    def __init__(self, steps: int, probe=None) -> None:
        self.steps, self.warmup = steps, warmup_steps(steps)
        self.nonfinite = 0
        self.first = self.last = float("nan")
        self.head: list[float] = []
        self.tail: list[float] = []
        self.rss_warm = self.objects_warm = 0
        self.probe = probe
        self.probe_warm: Any = None
        self.start = time.perf_counter()

    def step(self, index: int, loss: float) -> None:
        if not math.isfinite(loss):
            self.nonfinite += 1
        if index == 0:
            self.first = loss
        self.last = loss
        if index < WINDOW:
            self.head.append(loss)
        if index >= self.steps - WINDOW:
            self.tail.append(loss)
        if index + 1 == self.warmup:
            self.objects_warm = live_objects()
            self.rss_warm = rss_mib()
            self.probe_warm = self.probe() if self.probe else None

    def result(self, run: str) -> SoakResult:
        objects_end = live_objects()
        extra = {}
        if self.probe:
            extra = {"probe_warm": self.probe_warm, "probe_end": self.probe()}
        return SoakResult(run, self.steps, self.warmup, time.perf_counter() - self.start,
                          self.first, self.last, float(np.mean(self.head)),
                          float(np.mean(self.tail)), self.nonfinite, self.rss_warm,
                          rss_mib(), self.objects_warm, objects_end, extra)


# --------------------------------------------------------------------------- torch


def _torch_step_fn(mode: str, group: Any = None):
    import tfree_torch

    def loss_fn(z1, z2):
        if mode == "tiled":
            return tfree_torch.info_nce(z1, z2, symmetric=True, chunk_size=CHUNK)
        if group is not None:
            return tfree_torch.nt_xent(z1, z2, group=group)
        return tfree_torch.nt_xent(z1, z2)

    return loss_fn


def soak_torch(steps: int, mode: str) -> SoakResult:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a busy machine
    try:
        return _soak_torch(steps, mode)
    finally:
        torch.set_num_threads(threads)


def _soak_torch(steps: int, mode: str) -> SoakResult:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(D_IN, D_OUT)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    pool = torch.from_numpy(_pool())
    gen = torch.Generator().manual_seed(1)
    loss_fn = _torch_step_fn(mode)
    mon = _Monitor(steps)
    for i in range(steps):
        x = pool[i % POOL]
        z1 = model(x + 0.1 * torch.randn(x.shape, generator=gen))
        z2 = model(x + 0.1 * torch.randn(x.shape, generator=gen))
        loss = loss_fn(z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mon.step(i, float(loss.detach()))
    return mon.result(f"torch-{mode}")


def _torch_distributed_worker(rank: int, world: int, steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)  # the same initial model on every rank
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(D_IN, D_OUT))
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        pool = torch.from_numpy(_pool())
        gen = torch.Generator().manual_seed(1 + rank)
        loss_fn = _torch_step_fn("plain", group=dist.group.WORLD)
        rows = BATCH // world
        mon = _Monitor(steps)
        for i in range(steps):
            x = pool[i % POOL][rank * rows:(rank + 1) * rows]  # this rank's shard
            z1 = model(x + 0.1 * torch.randn(x.shape, generator=gen))
            z2 = model(x + 0.1 * torch.randn(x.shape, generator=gen))
            loss = loss_fn(z1, z2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mon.step(i, float(loss.detach()))
        result = mon.result(f"torch-distributed-rank{rank}")
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(asdict(result), f)
    finally:
        dist.destroy_process_group()


def soak_torch_distributed(steps: int, world: int = 2) -> list[SoakResult]:
    """Two Gloo ranks on CPU, each reporting its own readings."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_torch_distributed_worker, args=(world, steps, out), nprocs=world,
                 join=True)
        results = []
        for rank in range(world):
            with open(os.path.join(out, f"rank{rank}.json")) as f:
                results.append(SoakResult(**json.load(f)))
    return results


# --------------------------------------------------------------------------- jax


def soak_jax(steps: int, mode: str) -> SoakResult:
    import jax
    import jax.numpy as jnp
    import tfree_jax

    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (D_IN, D_OUT), jnp.float32) / math.sqrt(D_IN)
    params = {"w": w, "b": jnp.zeros(D_OUT, jnp.float32)}
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
    pool = jnp.asarray(_pool())

    def loss_fn(p, x, k):
        k1, k2 = jax.random.split(k)
        z1 = (x + 0.1 * jax.random.normal(k1, x.shape)) @ p["w"] + p["b"]
        z2 = (x + 0.1 * jax.random.normal(k2, x.shape)) @ p["w"] + p["b"]
        if mode == "tiled":
            return tfree_jax.info_nce(z1, z2, symmetric=True, chunk_size=CHUNK)
        return tfree_jax.nt_xent(z1, z2)

    @jax.jit
    def step(p, v, x, k):
        loss, g = jax.value_and_grad(loss_fn)(p, x, k)
        v = jax.tree_util.tree_map(lambda vi, gi: MOMENTUM * vi + gi, v, g)
        p = jax.tree_util.tree_map(lambda pi, vi: pi - LR * vi, p, v)
        return p, v, loss

    mon = _Monitor(steps, probe=lambda: len(jax.live_arrays()))
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, velocity, loss = step(params, velocity, pool[i % POOL], sub)
        mon.step(i, float(loss))
    return mon.result(f"jax-{mode}")


# --------------------------------------------------------------------------- tensorflow


def soak_tf(steps: int, mode: str) -> SoakResult:
    import tensorflow as tf
    import tfree_tf

    tf.random.set_seed(0)
    w = tf.Variable(tf.random.normal((D_IN, D_OUT)) / math.sqrt(D_IN))
    b = tf.Variable(tf.zeros(D_OUT))
    opt = tf.keras.optimizers.SGD(learning_rate=LR, momentum=MOMENTUM)
    pool = tf.constant(_pool())
    gen = tf.random.Generator.from_seed(1)

    def train_step(x):
        with tf.GradientTape() as tape:
            z1 = (x + 0.1 * gen.normal(x.shape)) @ w + b
            z2 = (x + 0.1 * gen.normal(x.shape)) @ w + b
            if mode == "tiled":
                loss = tfree_tf.info_nce(z1, z2, symmetric=True, chunk_size=CHUNK)
            else:
                loss = tfree_tf.nt_xent(z1, z2)
        grads = tape.gradient(loss, [w, b])
        opt.apply_gradients(zip(grads, [w, b], strict=True))
        return loss

    step = train_step if mode == "eager" else tf.function(train_step)
    mon = _Monitor(steps)
    for i in range(steps):
        mon.step(i, float(step(pool[i % POOL])))
    return mon.result(f"tf-{mode}")


# --------------------------------------------------------------------------- driver


def run(name: str, steps: int) -> list[SoakResult]:
    framework, mode = name.split("-", 1)
    if framework == "torch":
        if mode == "distributed":
            return soak_torch_distributed(steps)
        return [soak_torch(steps, mode)]
    if framework == "jax":
        return [soak_jax(steps, mode)]
    return [soak_tf(steps, mode)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int,
                        default=int(os.environ.get("TFREE_SOAK_STEPS", DEFAULT_STEPS)))
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=RUNS)
    args = parser.parse_args(argv)
    if any(r.startswith("torch") for r in args.runs):
        import torch._dynamo  # noqa: F401 - before TensorFlow: the other order aborts
    failed = False
    for name in args.runs:
        for result in run(name, args.steps):
            row = asdict(result)
            row.update(rss_growth_mib=round(result.rss_growth_mib, 2),
                       object_growth=result.object_growth)
            print(json.dumps(row), flush=True)
            failed |= result.nonfinite_steps > 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
