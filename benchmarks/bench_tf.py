"""Loss + gradient timings of ``tfree_tf`` against the plain TensorFlow formula (CPU, float32,
pairs layout: query ``i``'s positive is key ``i``, its candidates all ``N`` keys).

Methods, measured side by side in one process, interleaved (each repeat runs every method
once, in turn), reported as medians; each is one ``tf.function`` returning the loss and
both gradients:

* ``tfree``: ``tfree_tf.info_nce(q, k)`` under ``tf.GradientTape`` (analytic gradient
  through ``tf.custom_gradient``), in a plain ``tf.function``: the core's forward and
  backward run as XLA-compiled functions inside it (the default, ``set_jit_core(True)``);
* ``tfree op-by-op``: the same traced with ``tfree_tf.set_jit_core(False)``: every core
  operation is one TF kernel;
* ``tfree XLA``: the ``tfree`` step in ``tf.function(jit_compile=True)``;
* ``plain``: ``tf.GradientTape`` autodiff of the plain formula
  ``mean(sparse_softmax_cross_entropy(2·atanh(clip(Uq·Ukᵀ, -b, b)), arange(N)))`` with
  ``U = z / max(‖z‖, δ)``;
* ``plain XLA``: the same, ``tf.function(jit_compile=True)``;
* ``3 GEMMs``: the floor: ``Uq·Ukᵀ``, ``G·Uk``, ``Gᵀ·Uq`` of the same shapes.

Run: ``python -m benchmarks.bench_tf [--quick] [--repeats R]``. Prints a Markdown table of
the times (ms) and the ratios ``method / tfree`` (> 1: tfree is faster). ``--profile``
also prints, for N = 4096, D = 128, the time of the main stages of the ``tfree`` path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tfree_tf

from tfree_core import clip_bound

BOUND32 = clip_bound(1e-6, float64=False)
tf.get_logger().setLevel("ERROR")  # one tf.function per size: retracing notes are expected

Step = Callable[[tf.Tensor, tf.Tensor], object]


def _normalize(z: tf.Tensor) -> tf.Tensor:
    return z / tf.maximum(tf.norm(z, axis=1, keepdims=True), 1e-12)


def plain_loss(q: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """The plain transcription: cross-entropy of ``2·atanh(clip(S, -b, b))``."""
    s = tf.matmul(_normalize(q), _normalize(k), transpose_b=True)
    logits = 2 * tf.atanh(tf.clip_by_value(s, -BOUND32, BOUND32))
    target = tf.range(tf.shape(q)[0])
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
    )


def tfree_loss(q: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    return tfree_tf.info_nce(q, k)


def _value_and_grad(loss_fn: Callable[..., tf.Tensor], jit_compile: bool) -> Step:
    def step(q: tf.Tensor, k: tf.Tensor):
        with tf.GradientTape() as tape:
            tape.watch([q, k])
            loss = loss_fn(q, k)
        return loss, tape.gradient(loss, [q, k])

    return tf.function(step, jit_compile=jit_compile, autograph=False)


def _gemm_floor(n: int) -> Step:
    g = tf.random.normal((n, n), seed=1)

    def step(q: tf.Tensor, k: tf.Tensor):
        return (tf.matmul(q, k, transpose_b=True), tf.matmul(g, k),
                tf.matmul(g, q, transpose_a=True))

    return tf.function(step, autograph=False)


def _run(step: Step, q: tf.Tensor, k: tf.Tensor) -> float:
    start = time.perf_counter()
    out = step(q, k)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
    return time.perf_counter() - start


def variants(n: int, d: int, *, chunk: int | str = 256, peer_max_gib: float = 0.0,
             seed: int = 0, peers: bool = True) -> list:
    """The candidates of ``python -m benchmarks`` for TensorFlow (float32, CPU): tfree eager
    (``GradientTape``, the core's forward and backward XLA-compiled inside) / in
    ``tf.function(jit_compile=True)`` / tiled (eager: a Python loop over the blocks), autodiff
    of the plain formula eager / in ``tf.function(jit_compile=True)``, both in a plain
    ``tf.function`` (graph mode: ``tfree graph``, ``autodiff graph``), three GEMMs in a
    ``tf.function``. No peer library: TensorFlow has no NT-Xent loss of its own."""
    from benchmarks._harness import Variant

    del peer_max_gib, peers
    rng = np.random.default_rng(seed * 7919 + n * 1000 + d)
    q = tf.constant(rng.normal(size=(n, d)), tf.float32)
    k = tf.constant(rng.normal(size=(n, d)), tf.float32)

    def eager(loss_fn: Callable[..., tf.Tensor]) -> Callable[[], float]:
        def step(a: tf.Tensor, b: tf.Tensor):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = loss_fn(a, b)
            return loss, tape.gradient(loss, [a, b])

        return lambda: _run(step, q, k)

    def bind(step: Step) -> Callable[[], float]:
        return lambda: _run(step, q, k)

    def tiled(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tfree_tf.info_nce(a, b, chunk_size=chunk)

    def untiled(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tfree_tf.info_nce(a, b, chunk_size=None)

    return [
        Variant("tfree", lambda: eager(tfree_loss)),
        Variant("tfree compiled", lambda: bind(_value_and_grad(tfree_loss, True))),
        Variant("tfree untiled", lambda: eager(untiled)),
        Variant(f"tfree tiled ({chunk})", lambda: eager(tiled)),
        Variant("autodiff eager", lambda: eager(plain_loss)),
        Variant("autodiff compiled", lambda: bind(_value_and_grad(plain_loss, True))),
        Variant("tfree graph", lambda: bind(_value_and_grad(tfree_loss, False))),
        Variant("autodiff graph", lambda: bind(_value_and_grad(plain_loss, False))),
        Variant("3 GEMMs", lambda: bind(_gemm_floor(n))),
    ]


def bench(n: int, d: int, repeats: int, warmup: int) -> dict[str, float]:
    rng = np.random.default_rng(n * 1000 + d)
    q = tf.constant(rng.normal(size=(n, d)), tf.float32)
    k = tf.constant(rng.normal(size=(n, d)), tf.float32)
    methods: dict[str, Step] = {
        "tfree": _value_and_grad(tfree_loss, False),
        "tfree op-by-op": _value_and_grad(tfree_loss, False),
        "tfree XLA": _value_and_grad(tfree_loss, True),
        "plain": _value_and_grad(plain_loss, False),
        "plain XLA": _value_and_grad(plain_loss, True),
        "3 GEMMs": _gemm_floor(n),
    }
    for name, step in methods.items():
        # The jit-core setting is read when the step is traced, at its first call.
        previous = tfree_tf.set_jit_core(name != "tfree op-by-op")
        for _ in range(warmup):
            _run(step, q, k)
        tfree_tf.set_jit_core(previous)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, step in methods.items():
            times[name].append(_run(step, q, k))
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, N = 1024 only")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = [1024] if args.quick else [1024, 4096]
    repeats = args.repeats or (5 if args.quick else 11)
    warmup = 2
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"tensorflow {tf.__version__}, {threads} intra-op threads, float32, CPU, "
          f"loss + gradient, median of {repeats} interleaved repeats\n")
    rows = []
    names: list[str] = []
    for n in sizes:
        for d in (128, 512):
            result = bench(n, d, repeats, warmup)
            names = list(result)
            rows.append((n, d, result))
    others = [m for m in names if m != "tfree"]
    header = "| N | D | " + " | ".join(f"{m} (ms)" for m in names)
    header += " | " + " | ".join(f"{m} / tfree" for m in others) + " |"
    print(header)
    print("|" + "---|" * (2 + len(names) + len(others)))
    for n, d, result in rows:
        base = result["tfree"]
        cells = [f"{result[m]:.1f}" for m in names]
        ratios = [f"{result[m] / base:.2f}" for m in others]
        print(f"| {n} | {d} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
