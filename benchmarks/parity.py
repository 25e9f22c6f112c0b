"""``python -m benchmarks.parity``: is tfree ever slower than the plain formula?

One command, one table: for every installed framework and mode a user trains in, loss +
gradient of the pairs layout (float32, CPU) with tfree's default call against the plain
formula's autodiff in the same mode, and ``chunk_size="auto"`` against ``chunk_size=None``,
at ``N = 4096`` and ``D ∈ {128, 512}``, with the machine's default threads and with one
thread. Each framework runs in a child process of ``python -m benchmarks`` (the variants
of ``bench_torch``, ``bench_tf``, ``bench_jax``; times are medians of interleaved calls,
see ``_harness``); one thread pins the child to one core
(``os.sched_setaffinity``) and sets the framework's own pools to one thread.

Rows (tfree's variant / the reference; the times are medians, and the ratio is the median
over repeats of reference time / tfree time, the two calls of each repeat made moments
apart (``_harness.paired_ratio``), > 1: tfree faster; the goal is the last column):

* PyTorch eager: ``tfree`` / ``autodiff compiled`` (``torch.compile`` of the formula): ≥ 0.95;
* PyTorch eager: ``tfree`` / ``autodiff eager``: ≥ 1;
* TensorFlow eager: ``tfree`` / ``autodiff eager``: ≥ 1;
* TensorFlow ``jit_compile``: ``tfree compiled`` / ``autodiff compiled``: ≥ 1;
* TensorFlow graph (``tf.function``): ``tfree graph`` / ``autodiff graph``: ≥ 1.3;
* JAX ``jit``: ``tfree compiled`` / ``autodiff compiled``: ≥ 1;
* ``"auto"`` against ``chunk_size=None``, every framework (NumPy too): ≥ 0.95.

Run: ``python -m benchmarks.parity [--n 4096] [--d 128,512] [--repeats 5] [--threads 0,1]
[--backend torch,tensorflow,jax,numpy] [--out FILE]`` (``--threads 0``: the default). Exits 1
when a ratio misses its goal, so the verdict is the exit status as well as the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from benchmarks.__main__ import _child, environment, installed
from benchmarks._harness import paired_ratio


@dataclass(frozen=True)
class Row:
    """One comparison: ``ours`` against ``reference`` in ``backend``, and the goal."""

    backend: str
    mode: str
    ours: str
    reference: str
    goal: float


ROWS = (
    Row("torch", "PyTorch eager vs torch.compile(formula)", "tfree", "autodiff compiled", 0.95),
    Row("torch", "PyTorch eager vs eager autograd", "tfree", "autodiff eager", 1.0),
    Row("torch", 'PyTorch "auto" vs chunk_size=None', "tfree", "tfree untiled", 0.95),
    Row("tensorflow", "TensorFlow eager", "tfree", "autodiff eager", 1.0),
    Row("tensorflow", "TensorFlow jit_compile", "tfree compiled", "autodiff compiled", 1.0),
    Row("tensorflow", "TensorFlow tf.function (graph)", "tfree graph", "autodiff graph", 1.3),
    Row("tensorflow", 'TensorFlow "auto" vs chunk_size=None, eager', "tfree", "tfree untiled",
        0.95),
    Row("jax", "JAX jit vs jit(value_and_grad(formula))", "tfree compiled",
        "autodiff compiled", 1.0),
    Row("jax", 'JAX "auto" vs chunk_size=None, jit', "tfree compiled", "tfree untiled", 0.95),
    Row("numpy", 'NumPy "auto" vs chunk_size=None', "tfree", "tfree untiled", 0.95),
)
FRAMEWORKS = ("torch", "tensorflow", "jax", "numpy")


def _timed(backend: str, n: int, d: int, threads: int, repeats: int) -> dict[str, dict]:
    """The child's timing row of each variant (``seconds``: the median; ``samples``)."""
    names = sorted({name for row in ROWS if row.backend == backend
                    for name in (row.ours, row.reference)})
    args = SimpleNamespace(repeats=repeats, chunk=256, peer_max_gib=0.0,
                           threads=threads or None)
    rows = _child(backend, "time", [(n, d)], args, variants=",".join(names), peers=False)
    failed = [r for r in rows if r.get("status") == "error"]
    if failed:
        raise RuntimeError(f"{backend} N={n} D={d}: {failed[0].get('reason')}")
    return {r["variant"]: r for r in rows if r.get("status") == "ok"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="4096")
    parser.add_argument("--d", default="128,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="0,1", help="0: the machine's default")
    parser.add_argument("--backend", default=",".join(FRAMEWORKS))
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    backends = [b for b in args.backend.split(",") if b and installed(b)]
    sizes = [(int(n), int(d)) for n in args.n.split(",") for d in args.d.split(",")]
    settings = [int(t) for t in args.threads.split(",")]
    lines = [f"{environment()}", "",
             f"Times: medians of {args.repeats} interleaved calls; ratio: the median over those "
             "repeats of reference / tfree, each pair timed in the same repeat.", "",
             "| framework, mode | threads | N | D | tfree (ms) | reference (ms) | ratio | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    missed = 0
    for threads in settings:
        label = str(threads) if threads else f"default ({len(os.sched_getaffinity(0))})"
        for backend in backends:
            for n, d in sizes:
                timed = _timed(backend, n, d, threads, args.repeats)
                for row in (r for r in ROWS if r.backend == backend):
                    ours, ref = timed[row.ours]["seconds"], timed[row.reference]["seconds"]
                    ratio = paired_ratio(timed[row.ours]["samples"],
                                         timed[row.reference]["samples"])
                    ok = ratio >= row.goal
                    missed += not ok
                    lines.append(f"| {row.mode} | {label} | {n} | {d} | {ours * 1e3:.1f} | "
                                 f"{ref * 1e3:.1f} | {'' if ok else '**'}{ratio:.2f}×"
                                 f"{'' if ok else '**'} | ≥ {row.goal:g} |")
                print("\n".join(lines[-len([r for r in ROWS if r.backend == backend]):]),
                      flush=True)
    verdict = ("PASS: every ratio meets its goal" if not missed
               else f"FAIL: {missed} ratio(s) below the goal (bold)")
    lines += ["", verdict]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
