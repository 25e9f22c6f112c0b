"""``kernel="fused"`` with ``group=``: each rank runs the fused kernels on its row block.

PyTorch: 2 Gloo ranks (``torch.multiprocessing.spawn``, file-store rendezvous) with the
Triton kernels in Triton's CPU interpreter (``TRITON_INTERPRET=1`` set in the environment
of the subprocess, so every rank imports Triton in interpreter mode). JAX: 4 host devices
(``XLA_FLAGS`` set before JAX is imported) under ``jax.shard_map`` (``check_vma=False``:
Pallas' interpreter cannot carry replication types) and ``jax.pmap``, the Pallas kernels
with ``interpret=True``. Both run as this file executed as a script in a subprocess.

Every case is compared with the single-device portable loss on the concatenated batch
(itself checked against finite differences in the other test files): the ranks' values
average to the global loss (``"none"``: they are its slices) and each rank's gradient is
``W`` times the global gradient's slice (``"none"`` with the rank's slice of a global
cotangent: the slice itself), within 1e-10 relative for float64 inputs and 3e-5 for
float32. The global batch has a positive past the clip and a zero row on two ranks, so
the global self-pair and partner indices of every rank's block are exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
D = 8

# name -> (layout, keywords, dtype); "where": a row mask; reduction "none" takes a cotangent
CASES = {
    "pairs": ("pairs", {}, "float64"),
    "pairs-symmetric": ("pairs", {"symmetric": True}, "float64"),
    "pairs-symmetric-where-sum": ("pairs", {"symmetric": True, "where": True,
                                            "reduction": "sum"}, "float64"),
    "pairs-where-none": ("pairs", {"where": True, "reduction": "none"}, "float64"),
    "nt_xent": ("nt_xent", {}, "float64"),
    "nt_xent-where-none": ("nt_xent", {"where": True, "reduction": "none"}, "float64"),
    "pairs-symmetric-f32": ("pairs", {"symmetric": True}, "float32"),
    "nt_xent-f32": ("nt_xent", {}, "float32"),
}


def case_data(name: str, world: int, n: int):
    """Global NumPy inputs (float64, cast by the caller), keywords, the ``"none"``
    cotangent (or ``None``), from a seed."""
    layout, kw, _ = CASES[name]
    kw = dict(kw)
    rng = np.random.default_rng(zlib.crc32(name.encode()) + world)
    total = world * n
    x = rng.normal(size=(total, D))
    y = x + 0.7 * rng.normal(size=(total, D))
    y[1] = x[1]  # a positive past the clip (pairs): no gradient through the map
    y[n + 1] = x[n + 1]
    x[2] = 0.0  # zero rows: zero gradient
    x[n + 2] = 0.0
    arrays = {"query": x, "key": y} if layout == "pairs" else {"z1": x, "z2": y}
    static = {}
    if kw.pop("where", False):
        mask = rng.random(total) > 0.3
        mask[0] = mask[n] = False
        static["where"] = mask
    cot = None
    if kw.get("reduction") == "none":
        cot = rng.normal(size=2 * total if layout == "nt_xent" else total)
    return arrays, static, kw, cot


def local_rows(v: np.ndarray, rank: int, n: int, nt_xent_loss: bool = False) -> np.ndarray:
    """Rank ``rank``'s rows of a global array; NT-Xent's per-anchor vectors (``2N``, the
    ``z1`` anchors first) locally are ``[z1_local; z2_local]``."""
    if nt_xent_loss:
        total = v.shape[0] // 2
        return np.concatenate([v[rank * n:(rank + 1) * n], v[total + rank * n:][:n]])
    return v[rank * n:(rank + 1) * n]


def global_order(values: list[np.ndarray], nt_xent: bool) -> np.ndarray:
    """The ranks' ``"none"`` losses back in the global order."""
    if nt_xent:
        half = values[0].shape[0] // 2
        return np.concatenate([v[:half] for v in values] + [v[half:] for v in values])
    return np.concatenate(values)


def tolerance(dtype: str) -> dict:
    return {"rtol": 3e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-10,
                                                                      "atol": 1e-13}


# --------------------------------------------------------------------------- PyTorch

TORCH_WORLD = 2
TORCH_N = 6


def _torch_worker(rank: int, world: int, out: str) -> None:  # pragma: no cover - subprocess
    import tfree_torch
    import torch
    import torch.distributed as dist
    from tfree_torch import _triton

    torch.set_num_threads(1)
    assert _triton.interpreting(), "TRITON_INTERPRET=1 must reach the ranks"
    launches = []
    kernel_sums = _triton.KERNEL.sums

    def counted(*args, **kwargs):
        launches.append(1)
        return kernel_sums(*args, **kwargs)

    _triton.KERNEL.sums = counted
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=world)
    group = dist.group.WORLD
    fns = {"pairs": tfree_torch.info_nce, "nt_xent": tfree_torch.nt_xent}
    results: dict = {}
    n = TORCH_N
    for name, (layout, _, dtype) in CASES.items():
        arrays, static, kw, cot = case_data(name, world, n)
        xs = {k: torch.tensor(local_rows(v, rank, n), dtype=getattr(torch, dtype),
                              requires_grad=True) for k, v in arrays.items()}
        extra = {k: torch.tensor(local_rows(v, rank, n)) for k, v in static.items()}
        before = len(launches)
        loss = fns[layout](**xs, **extra, **kw, group=group, kernel="fused")
        if cot is None:
            loss.backward()
        else:
            local = local_rows(cot, rank, n, nt_xent_loss=layout == "nt_xent")
            loss.backward(torch.tensor(local, dtype=loss.dtype))
        results[name] = (loss.detach().double().numpy(),
                         {k: x.grad.double().numpy() for k, x in xs.items()},
                         str(loss.dtype), {k: str(x.grad.dtype) for k, x in xs.items()},
                         len(launches) > before)
    # kernel="auto" with group= stays on the portable block loop
    q = torch.randn(n, D, dtype=torch.float64)
    before = len(launches)
    tfree_torch.info_nce(q, q + 1, symmetric=True, group=group)
    results["auto-launches"] = len(launches) - before
    errors = {}
    labels = torch.arange(n) % 2
    for what, call in {
        "sup_con": lambda: tfree_torch.sup_con(q, labels, group=group, kernel="fused"),
        "labels": lambda: tfree_torch.info_nce(q, q, labels=labels, group=group,
                                               kernel="fused"),
        "negatives": lambda: tfree_torch.info_nce(q, q, negatives=q, group=group,
                                                  kernel="fused"),
    }.items():
        try:
            call()
            errors[what] = "no error"
        except ValueError as err:
            errors[what] = str(err)
    results["errors"] = errors
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_torch_gloo_ranks_run_the_triton_kernels(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    import tfree_torch

    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, "torch", str(TORCH_WORLD), str(tmp_path)], cwd=ROOT,
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
             for r in range(TORCH_WORLD)]
    fns = {"pairs": tfree_torch.info_nce, "nt_xent": tfree_torch.nt_xent}
    world, n = TORCH_WORLD, TORCH_N
    for name, (layout, _, dtype) in CASES.items():
        arrays, static, kw, cot = case_data(name, world, n)
        leaves = {k: torch.tensor(v, dtype=getattr(torch, dtype), requires_grad=True)
                  for k, v in arrays.items()}
        extra = {k: torch.tensor(v) for k, v in static.items()}
        loss = fns[layout](**leaves, **extra, **kw, kernel="portable")
        loss.backward(None if cot is None else torch.tensor(cot, dtype=loss.dtype))
        tol = tolerance(dtype)
        values = [r[name][0] for r in ranks]
        assert all(r[name][4] for r in ranks), f"{name}: the kernels did not run"
        assert all(r[name][2] == str(loss.dtype) for r in ranks)
        if cot is None:
            np.testing.assert_allclose(np.mean(values), loss.item(), **tol, err_msg=name)
        else:
            np.testing.assert_allclose(global_order(values, layout == "nt_xent"),
                                       loss.detach().double().numpy(), **tol, err_msg=name)
        factor = 1.0 if cot is not None else float(world)
        for key, leaf in leaves.items():
            want = factor * leaf.grad.double().numpy()
            for r, rank in enumerate(ranks):
                assert rank[name][3][key] == str(leaf.dtype)
                np.testing.assert_allclose(rank[name][1][key], local_rows(want, r, n),
                                           **tol, err_msg=f"{name} {key} rank {r}")
    for rank in ranks:
        assert rank["auto-launches"] == 0
        errors = rank["errors"]
        for what, named in (("sup_con", "sup_con"), ("labels", "labels")):
            assert "kernel='fused'" in errors[what], errors[what]
            assert named in errors[what], errors[what]
        assert "no global batch" in errors["negatives"], errors["negatives"]


# --------------------------------------------------------------------------- JAX

JAX_WORLD = 4
JAX_N = 3


def _jax_script() -> None:  # pragma: no cover - runs in the subprocess
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import tfree_jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    from tfree_jax import _pallas

    world, n = JAX_WORLD, JAX_N
    assert jax.device_count() == world, jax.devices()
    mesh = jax.make_mesh((world,), ("d",))
    sharded = NamedSharding(mesh, P("d"))
    launches = []
    kernel_sums = _pallas.PallasKernel.sums

    def counted(self, *args, **kwargs):
        launches.append(1)
        return kernel_sums(self, *args, **kwargs)

    _pallas.PallasKernel.sums = counted
    fns = {"pairs": tfree_jax.info_nce, "nt_xent": tfree_jax.nt_xent}
    checked = 0
    for name, (layout, _, dtype) in CASES.items():
        arrays, static, kw, cot = case_data(name, world, n)
        xs = tuple(jnp.asarray(v, dtype) for v in arrays.values())
        names, keys = tuple(arrays), tuple(static)
        extra = tuple(jnp.asarray(static[k]) for k in keys)
        fn = fns[layout]
        nt = layout == "nt_xent"

        def global_loss(*ys, fn=fn, names=names, keys=keys, extra=extra, kw=kw):
            return fn(**dict(zip(names, ys, strict=True)), **dict(zip(keys, extra, strict=True)),
                      **kw, kernel="portable")

        loss, vjp = jax.vjp(global_loss, *xs)
        grads = vjp(jnp.ones_like(loss) if cot is None else jnp.asarray(cot, loss.dtype))
        # the "none" cotangent travels as its z1 and z2 halves (NT-Xent), each sharded
        cots = () if cot is None else (
            tuple(jnp.asarray(c, loss.dtype) for c in np.split(cot, 2)) if nt
            else (jnp.asarray(cot, loss.dtype),))

        def local(*parts, fn=fn, names=names, keys=keys, kw=kw, none=cot is not None):
            k = len(names)
            static_parts = dict(zip(keys, parts[k:k + len(keys)], strict=True))

            def f(*ys):
                return fn(**dict(zip(names, ys, strict=True)), **static_parts, **kw,
                          group="d", kernel="fused")

            value, pull = jax.vjp(f, *parts[:k])
            ct = jnp.concatenate(parts[k + len(keys):]) if none else jnp.ones_like(value)
            return (value if none else value[None]), pull(ct)

        operands = xs + extra + cots
        before = len(launches)
        mapped = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=tuple(P("d") for _ in operands),
                                       out_specs=(P("d"), tuple(P("d") for _ in xs)),
                                       check_vma=False))
        values, local_grads = mapped(*(jax.device_put(x, sharded) for x in operands))
        assert len(launches) > before, f"{name}: the kernels did not run"
        tol = tolerance(dtype)
        if cot is None:
            np.testing.assert_allclose(np.mean(values), loss, **tol, err_msg=name)
            factor = world
        else:
            per_rank = np.split(np.asarray(values), world)
            np.testing.assert_allclose(global_order(per_rank, nt), loss, **tol, err_msg=name)
            factor = 1
        assert values.dtype == loss.dtype
        for got, want in zip(local_grads, grads, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, factor * want, **tol, err_msg=name)
        checked += 1
        if name == "nt_xent":  # the same under pmap (no replication types)
            stacked = tuple(x.reshape(world, n, *x.shape[1:]) for x in xs)
            pv, pg = jax.pmap(local, axis_name="d")(*stacked)
            np.testing.assert_allclose(np.mean(pv), loss, **tol)
            for got, want in zip(pg, grads, strict=True):
                np.testing.assert_allclose(got.reshape(want.shape), world * want, **tol)
            checked += 1
    # shard_map's replication checks (check_vma=True) with interpreted kernels: named
    q = jax.device_put(jnp.ones((world * n, D)), sharded)

    def message(call) -> str:
        try:
            jax.shard_map(lambda q: call(q)[None], mesh=mesh, in_specs=P("d"),
                          out_specs=P("d"))(q)
        except ValueError as err:
            return str(err)
        return "no error"

    vma = message(lambda q: tfree_jax.nt_xent(q, q + 1, group="d", kernel="fused"))
    checked += "check_vma=False" in vma and "kernel='fused'" in vma
    labels = message(lambda q: tfree_jax.info_nce(q, q, labels=jnp.arange(n) % 2, group="d",
                                                  kernel="fused"))
    checked += "kernel='fused'" in labels and "labels" in labels
    negatives = message(lambda q: tfree_jax.info_nce(q, q, negatives=q, group="d",
                                                     kernel="fused"))
    checked += "no global batch" in negatives
    print(f"CHECKED {checked}")


def test_jax_devices_run_the_pallas_kernels():
    pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={JAX_WORLD}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__, "jax"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"CHECKED {len(CASES) + 4}" in proc.stdout, proc.stdout[-2000:]


def test_jax_fused_with_group_is_selected_only_when_asked_for():
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("jax.experimental.pallas")
    from tfree_jax import _pallas

    from tfree_core import engine

    q = jnp.ones((4, 3))
    arrays = (q, q, None, None)
    options = engine.make_options(logit_map="arctanh", eps=1e-6, reduction="mean")
    problem = engine.prepare("pairs", arrays, options=options, symmetric=True,
                             chunk_size=None, device_kind="accelerator", xp=jnp)
    assert _pallas.use_fused("fused", problem, arrays, "cpu", group="batch")
    assert _pallas.use_fused("fused", problem, arrays, "gpu", group="batch")
    assert not _pallas.use_fused("auto", problem, arrays, "gpu", group="batch")


if __name__ == "__main__":
    if sys.argv[1] == "torch":
        import torch.multiprocessing as mp

        _world, _out = int(sys.argv[2]), sys.argv[3]
        mp.spawn(_torch_worker, args=(_world, _out), nprocs=_world, join=True)
    else:
        _jax_script()
