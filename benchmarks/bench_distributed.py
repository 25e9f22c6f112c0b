"""Data-parallel cost of ``tfree_torch`` with ``group=`` on CPU (torch.distributed, Gloo):
per-worker time and bytes communicated per step, against open_clip's ``local_loss`` scheme.

Workload: the symmetric pairs layout (CLIP), float32, ``n`` rows per worker, ``D`` features,
``W`` workers (1 and 2), one thread per worker. One step = loss + backward w.r.t. the local
embeddings. Methods, interleaved per repeat, medians reported:

* ``tfree group=``: ``tfree_torch.info_nce(q, k, symmetric=True, group=WORLD)``: gathers
  the keys only (``W·n × D``), evaluates ``n × W·n`` similarities once (both directions
  share them; the column sums are combined with one ``all_reduce`` of ``W·n`` floats), and
  sends the key gradients back with a reduce-scatter (Gloo: an ``all_reduce`` + slice);
* ``open_clip local_loss``: ``gather_features(..., gather_with_grad=True)`` (both
  modalities gathered with ``torch.distributed.nn.functional.all_gather``, whose backward
  all-reduces each ``W·n × D`` gradient) and the two local logit matrices
  ``q_local·k_allᵀ`` and ``k_local·q_allᵀ``, with the temperature-free map and
  ``F.cross_entropy``, differentiated by autograd.

Bytes: the payload each worker hands to the collectives per step (the tensors' sizes, as
logged by ``TorchCollectives`` and counted for open_clip's calls), and the ring-algorithm
estimate of bytes each worker sends: ``(W-1)/W·out`` for an all-gather of an ``out``-byte
result, ``2(W-1)/W·x`` for an all-reduce of ``x`` bytes.

FLOPs (matrix products, ``2·n·W·n·D`` each): ``tfree`` 3 (one ``S`` kept for the
backward, ``G·K``, ``Gᵀ·Q``); open_clip 6 (two logit matrices, two products each in the
backward).

Run: ``python -m benchmarks.bench_distributed [--n 512] [--dim 128] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def _open_clip_local_loss(q, k, rank, world, tfree_torch):
    """open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)`` with the
    temperature-free logit instead of ``logit_scale·s``."""
    from torch.distributed.nn.functional import all_gather

    qa = torch.cat(all_gather(q)) if world > 1 else q
    ka = torch.cat(all_gather(k)) if world > 1 else k
    uq, uk = F.normalize(q, dim=1), F.normalize(k, dim=1)
    uqa, uka = F.normalize(qa, dim=1), F.normalize(ka, dim=1)
    per_q = tfree_torch.logits(uq @ uka.T)
    per_k = tfree_torch.logits(uk @ uqa.T)
    labels = torch.arange(q.shape[0]) + rank * q.shape[0]
    return (F.cross_entropy(per_q, labels) + F.cross_entropy(per_k, labels)) / 2


def _worker(rank: int, world: int, store: str, n: int, dim: int, repeats: int, out: str):
    import tfree_torch
    from tfree_torch._distributed import TorchCollectives

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world)
    group = dist.group.WORLD
    g = torch.Generator().manual_seed(rank)
    q = torch.randn(n, dim, generator=g).requires_grad_()
    k = (q.detach() + 0.5 * torch.randn(n, dim, generator=g)).requires_grad_()

    logged: list[list[tuple[str, int]]] = []
    original = TorchCollectives.__init__

    def spy(self, grp):
        original(self, grp)
        logged.append(self.log)

    TorchCollectives.__init__ = spy  # count the payload of the tfree path's collectives

    def ours():
        if world == 1:
            return tfree_torch.info_nce(q, k, symmetric=True, chunk_size=None)
        return tfree_torch.info_nce(q, k, symmetric=True, chunk_size=None, group=group)

    def theirs():
        return _open_clip_local_loss(q, k, rank, world, tfree_torch)

    times: dict[str, list[float]] = {"tfree group=": [], "open_clip local_loss": []}
    for index in range(repeats + 1):
        for name, fn in (("tfree group=", ours), ("open_clip local_loss", theirs)):
            q.grad = k.grad = None
            dist.barrier()
            start = time.perf_counter()
            fn().backward()
            elapsed = time.perf_counter() - start
            if index:  # the first round warms up
                times[name].append(elapsed)
    payload = sum(b for _, b in logged[-1]) if logged and world > 1 else 0
    ring = 0.0
    if logged and world > 1:
        for op, b in logged[-1]:
            ring += (world - 1) * b if op == "all_gather" else 2 * (world - 1) / world * b
    row_bytes = n * dim * 4
    clip_payload = 0 if world == 1 else 2 * row_bytes + 2 * world * row_bytes
    clip_ring = 0.0 if world == 1 else (
        2 * (world - 1) * row_bytes + 2 * 2 * (world - 1) / world * world * row_bytes)
    if rank == 0:
        with open(out, "w") as fh:
            fh.write(repr({
                "world": world,
                "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
                "payload": {"tfree group=": payload, "open_clip local_loss": clip_payload},
                "ring": {"tfree group=": ring, "open_clip local_loss": clip_ring},
            }))
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512, help="rows per worker")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rows = []
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result")
            mp.spawn(_worker, args=(world, os.path.join(tmp, "store"), args.n, args.dim,
                                    args.repeats, out), nprocs=world, join=True)
            with open(out) as fh:
                rows.append(eval(fh.read()))
    n, d = args.n, args.dim
    print(f"symmetric pairs, float32, n = {n} rows per worker, D = {d}, Gloo, 1 thread "
          f"per worker (torch {torch.__version__}, {sys.platform})\n")
    print("| workers | method | ms / step / worker | payload bytes / step | ring bytes sent "
          "/ worker | GEMM FLOPs / worker |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        w = r["world"]
        for method, gemms in (("tfree group=", 3), ("open_clip local_loss", 6)):
            flops = gemms * 2 * n * (w * n) * d
            print(f"| {w} | {method} | {r['ms'][method]:.1f} | {r['payload'][method]:,} | "
                  f"{r['ring'][method]:,.0f} | {flops / 1e9:.2f} G |")


if __name__ == "__main__":
    main()
