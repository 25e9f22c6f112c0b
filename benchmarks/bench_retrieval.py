"""The retrieval layout against sentence-transformers' own computation, loss + gradient of
the embeddings, PyTorch on a CPU.

One batch: ``N`` queries, their ``N`` positive documents and ``Hn`` mined hard negatives
per row, ``D`` features, float32. Every variant computes the same loss (the temperature
map, ``scale = 1/τ = 20``, sentence-transformers' default, so the values agree) and the
gradient w.r.t. queries, documents and hard negatives:

* ``tfree``: ``info_nce(q, d, hard_negatives=h, logit_map="temperature", temperature=0.05)``
  (default ``chunk_size="auto"``), its analytic gradient;
* ``tfree tiled``: the same with ``chunk_size=128`` (no ``N × N(1+Hn)`` array);
* ``ST formula, eager``: ``MultipleNegativesRankingLoss``'s computation on embeddings,
  written out as it does it (``cos_sim(q, cat([d, h_1, …, h_Hn])) · scale``, then
  ``cross_entropy`` against ``arange(N)``), differentiated by autograd;
* ``ST formula, compiled``: the same under ``torch.compile``;
* ``ST loss``: sentence-transformers' own ``MultipleNegativesRankingLoss
  .compute_loss_from_embeddings`` (when installed), eager autograd;
* ``3 matrix products``: the floor, not a loss: the forward product ``S = q·Cᵀ`` and the
  two backward products ``S·C``, ``Sᵀ·q`` on the same shapes, nothing else.

Times: medians of interleaved calls (``benchmarks._harness.interleaved``); peak memory:
each variant in a fresh process, the growth of the peak resident set during one call
(``benchmarks._harness.measure_memory``, with ``MALLOC_MMAP_THRESHOLD_`` pinned).

Run: ``python -m benchmarks.bench_retrieval [--n 1024] [--hn 7] [--d 768] [--repeats 7]
[--threads 2] [--no-memory]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks._harness import CHILD_ENV, MEMORY_ENV, interleaved, measure_memory, mib

VARIANTS = ("tfree", "tfree tiled", "ST formula, eager", "ST formula, compiled", "ST loss",
            "3 matrix products")
FLOOR = "3 matrix products"
"""Not a loss: ``S = q·Cᵀ``, ``S·C`` and ``Sᵀ·q`` alone, the products that every variant
computes; no loss + gradient can take less (the time that bounds every speed-up)."""
TAU = 0.05


def _steps(n: int, hn: int, d: int, names: tuple[str, ...]) -> dict[str, object]:
    import tfree_torch
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    leaves = [torch.randn(*shape, requires_grad=True)
              for shape in ((n, d), (n, d), (n, hn, d))]

    def zero() -> None:
        for x in leaves:
            x.grad = None

    def tfree(chunk_size: int | str = "auto"):
        def step() -> None:
            zero()
            q, k, h = leaves
            tfree_torch.info_nce(q, k, hard_negatives=h, logit_map="temperature",
                                 temperature=TAU, chunk_size=chunk_size).backward()
        return step

    def st_formula(q, k, h):
        candidates = torch.cat([k, *h.unbind(dim=1)], dim=0)
        scores = F.normalize(q, dim=-1) @ F.normalize(candidates, dim=-1).T / TAU
        return F.cross_entropy(scores, torch.arange(q.shape[0]))

    compiled = torch.compile(st_formula)

    def formula(fn):
        def step() -> None:
            zero()
            fn(*leaves).backward()
        return step

    with torch.no_grad():
        flat = torch.cat([leaves[1], leaves[2].reshape(n * hn, d)]).detach()
        query = leaves[0].detach()

    def floor() -> None:
        s = query @ flat.T
        s @ flat
        s.T @ query

    steps: dict[str, object] = {"tfree": tfree(), "tfree tiled": tfree(128),
                                FLOOR: floor,
                                "ST formula, eager": formula(st_formula),
                                "ST formula, compiled": formula(compiled)}
    try:
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )
    except ImportError:
        pass
    else:
        loss = MultipleNegativesRankingLoss(torch.nn.Identity(), scale=1 / TAU)

        def st_loss() -> None:
            zero()
            q, k, h = leaves
            loss.compute_loss_from_embeddings([q, k, *h.unbind(dim=1)], None).backward()

        steps["ST loss"] = st_loss
    return {name: step for name, step in steps.items() if name in names}


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    steps = _steps(args.n, args.hn, args.d, tuple(args.variants.split("|")))
    if args.task == "time":
        seconds = interleaved(steps, args.repeats)
        for name, value in seconds.items():
            print(json.dumps({"variant": name, "seconds": value}), flush=True)
    else:
        (name, step), = steps.items()
        print(json.dumps({"variant": name, **measure_memory(step)}), flush=True)


def _run_child(args: argparse.Namespace, task: str, variants: list[str]) -> list[dict]:
    env = {**os.environ, **CHILD_ENV, **(MEMORY_ENV if task == "memory" else {})}
    command = [sys.executable, "-m", "benchmarks.bench_retrieval", "--child", "--task", task,
               "--variants", "|".join(variants), "--n", str(args.n), "--hn", str(args.hn),
               "--d", str(args.d), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_retrieval",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--hn", type=int, default=7)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="time", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default="|".join(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    times = {row["variant"]: row["seconds"] for row in _run_child(args, "time", list(VARIANTS))}
    memory = {}
    if not args.no_memory:
        for name in (name for name in times if name != FLOOR):
            (row,) = _run_child(args, "memory", [name])
            memory[name] = row["peak_bytes"]
    base = times["ST formula, eager"]
    print(f"retrieval: N = {args.n}, Hn = {args.hn}, D = {args.d}, float32, loss + gradient, "
          f"{args.threads} threads, median of {args.repeats}")
    print("| variant | ms | vs ST eager | peak memory (MiB) |\n|---|---:|---:|---:|")
    for name, seconds in times.items():
        peak = f"{mib(memory[name]):.0f}" if name in memory else "—"
        print(f"| {name} | {seconds * 1e3:.1f} | {base / seconds:.2f}× | {peak} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
