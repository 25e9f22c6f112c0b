"""``group=`` on real ``torch.distributed`` processes: 2 and 4 Gloo ranks on CPU.

Each run is ``python tests/test_distributed_torch.py WORLD OUT`` in a subprocess, which
starts ``WORLD`` ranks with ``torch.multiprocessing.spawn`` (file-store rendezvous); every
rank evaluates each case on its shard of a global batch built from a fixed seed and saves
its losses and input gradients. The test compares them with ``tfree_torch`` on one device
on the concatenated batch (itself checked against the core and finite differences in the
other test files): the ranks' losses average to the global loss and each rank's gradient
is ``W`` times the global gradient's slice (``∂(Σ_ranks loss_r)/∂x_r``), to float32
round-off for float32 inputs and tightly for float64. A ``DistributedDataParallel`` step
must give exactly the single-device parameter gradient.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

N = 4  # rows per rank
D = 8

# name -> (layout, keywords, dtype, rows per rank)
CASES = {
    "pairs": ("pairs", {}, "float64", N),
    "pairs-symmetric": ("pairs", {"symmetric": True}, "float64", N),
    "pairs-labels-symmetric": ("pairs", {"symmetric": True, "labels": True}, "float64", N),
    "pairs-sum": ("pairs", {"symmetric": True, "reduction": "sum"}, "float64", N),
    "nt_xent": ("nt_xent", {}, "float64", N),
    "nt_xent-none-where": ("nt_xent", {"reduction": "none", "where": True}, "float64", N),
    "sup_con-views": ("sup_con", {"views": 2}, "float64", N),
    "pairs-symmetric-f32": ("pairs", {"symmetric": True}, "float32", N),
    "nt_xent-f32": ("nt_xent", {}, "float32", N),
    "sup_con-f32": ("sup_con", {}, "float32", N),
    "pairs-symmetric-chunked": ("pairs", {"symmetric": True, "chunk_size": 2}, "float64", 5),
    "sup_con-chunked": ("sup_con", {"chunk_size": 3, "where": True}, "float64", 5),
    "pairs-temperature": ("pairs", {"symmetric": True, "logit_map": "temperature",
                                    "temperature": 0.1}, "float64", N),
    "retrieval": ("retrieval", {}, "float64", N),
    "retrieval-symmetric-ids-chunked": ("retrieval", {"symmetric": True, "ids": True,
                                                      "slots": True, "chunk_size": 3},
                                        "float64", 5),
    "retrieval-temperature-f32": ("retrieval", {"logit_map": "temperature",
                                                "temperature": 0.05}, "float32", N),
}


def case_inputs(name: str, world: int):
    """Global inputs (dict of tensors), the loss function and its keywords, from a seed."""
    import tfree_torch

    layout, kw, dtype, n = CASES[name]
    kw = dict(kw)
    dtype = getattr(torch, dtype)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 17 * world)
    total = world * n
    inputs = {}
    where = kw.pop("where", False)
    if where:
        inputs["where"] = torch.rand(total, generator=g) > 0.3
    if layout == "pairs":
        q = torch.randn(total, D, generator=g, dtype=dtype)
        inputs.update(query=q, key=q + 0.7 * torch.randn(total, D, generator=g, dtype=dtype))
        if kw.pop("labels", False):
            inputs["labels"] = torch.randint(0, 3, (total,), generator=g)
        fn = tfree_torch.info_nce
    elif layout == "retrieval":
        q = torch.randn(total, D, generator=g, dtype=dtype)
        inputs.update(query=q, key=q + 0.7 * torch.randn(total, D, generator=g, dtype=dtype),
                      hard_negatives=torch.randn(total, 3, D, generator=g, dtype=dtype))
        if kw.pop("slots", False):
            inputs["hard_negative_mask"] = torch.rand(total, 3, generator=g) > 0.3
        if kw.pop("ids", False):  # duplicate documents across the ranks' batches
            inputs["key_ids"] = torch.randint(0, total // 2, (total,), generator=g)
            inputs["hard_negative_ids"] = torch.randint(0, total, (total, 3), generator=g)
        fn = tfree_torch.info_nce
    elif layout == "nt_xent":
        z1 = torch.randn(total, D, generator=g, dtype=dtype)
        inputs.update(z1=z1, z2=z1 + 0.8 * torch.randn(total, D, generator=g, dtype=dtype))
        fn = tfree_torch.nt_xent
    else:
        views = kw.pop("views", 0)
        shape = (total, views, D) if views else (total, D)
        labels = torch.randint(0, 4, (total,), generator=g)
        labels[-1] = 99  # an anchor without a positive
        inputs.update(features=torch.randn(*shape, generator=g, dtype=dtype), labels=labels)
        fn = tfree_torch.sup_con
    return inputs, fn, kw, n


DIFFERENTIABLE = ("query", "key", "hard_negatives", "z1", "z2", "features")


def cotangent(name: str, loss_shape, world: int, rank: int | None, dtype):
    """Random cotangents for ``reduction="none"`` (global order; a rank's slice if given)."""
    g = torch.Generator().manual_seed(99)
    full = torch.randn(loss_shape, generator=g, dtype=dtype)
    if rank is None:
        return full
    layout = CASES[name][0]
    if layout == "nt_xent":  # global [z1 rows; z2 rows], local [z1_local; z2_local]
        total = full.shape[0] // 2
        n = total // world
        return torch.cat([full[rank * n:(rank + 1) * n], full[total + rank * n:][:n]])
    n = full.shape[0] // world
    return full[rank * n:(rank + 1) * n]


# --------------------------------------------------------------------------- the ranks


def _worker(rank: int, world: int, out: str) -> None:
    import tfree_torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=world)
    group = dist.group.WORLD
    results = {}
    for name in CASES:
        inputs, fn, kw, n = case_inputs(name, world)
        local = {k: v[rank * n:(rank + 1) * n].clone() for k, v in inputs.items()}
        for k in DIFFERENTIABLE:
            if k in local:
                local[k].requires_grad_(True)
        loss = fn(**local, **kw, group=group)
        if loss.ndim:
            global_shape = (world * loss.shape[0], *loss.shape[1:])
            loss.backward(cotangent(name, global_shape, world, rank, loss.dtype))
        else:
            loss.backward()
        results[name] = (loss.detach(),
                         {k: v.grad for k, v in local.items() if k in DIFFERENTIABLE})
    # DistributedDataParallel: a linear encoder, one step, averaged parameter gradients
    lin = torch.nn.Linear(6, D, dtype=torch.float64)
    _init(lin)
    model = torch.nn.parallel.DistributedDataParallel(lin)
    x, y = ddp_batch(world)
    rows = slice(rank * N, (rank + 1) * N)
    loss = tfree_torch.info_nce(model(x[rows]), model(y[rows]), symmetric=True, group=group)
    loss.backward()
    results["ddp"] = (loss.detach(), {"weight": lin.weight.grad, "bias": lin.bias.grad})
    try:
        tfree_torch.info_nce(x[rows], y[rows], negatives=x[:2], group=group)
    except ValueError as err:
        results["negatives-error"] = str(err)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _init(lin) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=lin.weight.dtype))
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g, dtype=lin.bias.dtype))


def ddp_batch(world: int):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(world * N, 6, generator=g, dtype=torch.float64)
    return x, x + 0.5 * torch.randn(world * N, 6, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- the test


def _run_world(world: int, tmp_path: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, __file__, str(world), str(tmp_path)], cwd=root, env=env,
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ranks_match_one_device(world, tmp_path):
    import tfree_torch

    ranks = _run_world(world, tmp_path)
    for name, (_, _, dtype, _) in CASES.items():
        inputs, fn, kw, n = case_inputs(name, world)
        leaves = {k: v.clone().requires_grad_(k in DIFFERENTIABLE) for k, v in inputs.items()}
        loss = fn(**leaves, **kw)
        none = loss.ndim > 0
        loss.backward(cotangent(name, loss.shape, world, None, loss.dtype) if none else None)
        f32 = dtype == "float32"
        tol = {"rtol": 3e-5, "atol": 1e-6} if f32 else {"rtol": 1e-10, "atol": 1e-13}
        values = [r[name][0] for r in ranks]
        if none:
            if CASES[name][0] == "nt_xent":
                got = torch.cat([v[:n] for v in values] + [v[n:] for v in values])
            else:
                got = torch.cat(values)
        else:
            got = torch.stack(values).mean()
            assert all(v.dtype == loss.dtype for v in values)
        torch.testing.assert_close(got, loss.detach(), **tol, msg=name)
        factor = 1.0 if none else float(world)
        for key, leaf in leaves.items():
            if key not in DIFFERENTIABLE:
                continue
            for r, rank in enumerate(ranks):
                grad = rank[name][1][key]
                assert grad.dtype == leaf.dtype
                want = factor * leaf.grad[r * n:(r + 1) * n]
                torch.testing.assert_close(grad, want, **tol, msg=f"{name} {key} rank {r}")
    # DDP: the averaged gradient is the single-device one
    lin = torch.nn.Linear(6, D, dtype=torch.float64)
    _init(lin)
    x, y = ddp_batch(world)
    tfree_torch.info_nce(lin(x), lin(y), symmetric=True).backward()
    for r in ranks:
        torch.testing.assert_close(r["ddp"][1]["weight"], lin.weight.grad, rtol=1e-10,
                                   atol=1e-13)
        torch.testing.assert_close(r["ddp"][1]["bias"], lin.bias.grad, rtol=1e-10, atol=1e-13)
        assert "no global batch" in r["negatives-error"]


def test_group_validation():
    import tfree_torch

    q = torch.randn(3, 4)
    with pytest.raises((TypeError, RuntimeError), match="group"):
        tfree_torch.info_nce(q, q, group="world")


if __name__ == "__main__":
    import torch.multiprocessing as mp

    _world, _out = int(sys.argv[1]), sys.argv[2]
    mp.spawn(_worker, args=(_world, _out), nprocs=_world, join=True)
