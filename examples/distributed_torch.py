"""Data-parallel CLIP-style training step with ``tfree_torch`` on 2 CPU processes (Gloo).

Each rank encodes its own half of the batch; ``info_nce(..., group=WORLD)`` uses the whole
global batch as negatives, and ``DistributedDataParallel`` averages the gradients, which
then equal the single-process gradient on the full batch (checked at the end).

Run: ``python -m examples.distributed_torch`` (about 10 s on a CPU).
"""

from __future__ import annotations

import os
import tempfile

import tfree_torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD, N, D_IN, D = 2, 16, 10, 8


def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * N, D_IN, generator=g)
    texts = images + 0.3 * torch.randn(WORLD * N, D_IN, generator=g)
    return images, texts


def model():
    torch.manual_seed(1)
    return torch.nn.ModuleDict({"image": torch.nn.Linear(D_IN, D),
                                "text": torch.nn.Linear(D_IN, D)})


def worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD)
    net = torch.nn.parallel.DistributedDataParallel(model())
    images, texts = batch()
    mine = slice(rank * N, (rank + 1) * N)  # this rank's shard of the global batch
    q = net.module["image"](images[mine])
    k = net.module["text"](texts[mine])
    loss = tfree_torch.info_nce(q, k, symmetric=True, group=dist.group.WORLD)
    loss.backward()
    # DDP's hooks only fire through net(...); average the gradients as DDP does
    for p in net.parameters():
        dist.all_reduce(p.grad)
        p.grad /= WORLD
    value = loss.detach().clone()
    dist.all_reduce(value)
    if rank == 0:
        torch.save({"loss": value / WORLD, "grad": net.module["image"].weight.grad}, out)
    dist.destroy_process_group()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.spawn(worker, args=(os.path.join(tmp, "store"), out), nprocs=WORLD, join=True)
        got = torch.load(out)
    single = model()
    images, texts = batch()
    loss = tfree_torch.info_nce(single["image"](images), single["text"](texts), symmetric=True)
    loss.backward()
    err = (got["grad"] - single["image"].weight.grad).abs().max().item()
    print(f"mean over ranks: {got['loss'].item():.6f}   one process: {loss.item():.6f}")
    print(f"max |averaged gradient - one-process gradient| = {err:.2e}")
    assert abs(got["loss"].item() - loss.item()) < 1e-5
    assert err < 1e-5


if __name__ == "__main__":
    main()
