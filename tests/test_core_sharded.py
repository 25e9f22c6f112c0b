"""The core's data-parallel path (``engine.forward`` / ``backward`` with ``comm=``) on an
in-process collective: ``W`` ranks as threads exchanging arrays through a barrier.

Reference: the single-device core on the concatenated batch. What must hold (see
``tfree_core._evaluate``): the average of the ranks' losses is the global loss (``mean``,
``sum``; ``none``: the ranks' vectors are slices of the global one), and each rank's
gradient is ``∂(Σ_ranks g_r·loss_r)/∂x_r``, i.e. ``W`` times the global gradient's slice for
``mean`` / ``sum`` with unit cotangents. The global gradient itself is checked against
finite differences of the global loss.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tfree_core import engine

WORLD_TIMEOUT = 60.0


class ThreadCollectives:
    """``engine.Collectives`` for ranks run as threads of one process (any namespace)."""

    def __init__(self, hub: _Hub, rank: int, xp) -> None:
        self.hub, self.rank, self.world_size, self.xp = hub, rank, hub.world, xp
        self.calls: list[str] = []

    def _exchange(self, name: str, x):
        self.calls.append(name)
        return self.hub.exchange(self.rank, x)

    def all_gather(self, x):
        return self.xp.concat(self._exchange("all_gather", x), axis=0)

    def all_reduce_sum(self, x):
        parts = self._exchange("all_reduce_sum", x)
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def all_reduce_max(self, x):
        parts = self._exchange("all_reduce_max", x)
        top = parts[0]
        for p in parts[1:]:
            top = self.xp.maximum(top, p)
        return top

    def reduce_scatter_sum(self, x):
        parts = self._exchange("reduce_scatter_sum", x)
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        m = x.shape[0] // self.world_size
        return total[self.rank * m:(self.rank + 1) * m, ...]


class _Hub:
    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world, timeout=WORLD_TIMEOUT)
        self.slots: list = [None] * world

    def exchange(self, rank: int, x):
        self.slots[rank] = x
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out


def run_ranks(world: int, fn, xp=np):
    """``[fn(comm, rank) for rank]``, the ranks running concurrently as threads."""
    hub = _Hub(world)
    results: list = [None] * world
    errors: list = []

    def target(rank: int) -> None:
        try:
            results[rank] = fn(ThreadCollectives(hub, rank, xp), rank)
        except BaseException as err:  # surface the first failure, unblock the others
            errors.append(err)
            hub.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --------------------------------------------------------------------------- cases


def _inputs(layout: str, world: int, n: int, rng, *, labels=False, views=0, where=False,
            hard=True, ids=False, slots=False):
    """Global arrays (engine order) and a function giving rank ``r``'s shard of them."""
    d = 6
    total = world * n
    mask = None
    if where:
        mask = rng.random(total) > 0.25
        mask[0] = True
    if layout == "pairs":
        q = rng.standard_normal((total, d))
        k = q + 0.7 * rng.standard_normal((total, d))
        lab = rng.integers(0, 3, total) if labels else None
        arrays = (q, k, lab, mask)
    elif layout == "nt_xent":
        z1 = rng.standard_normal((total, d))
        arrays = (z1, z1 + 0.8 * rng.standard_normal((total, d)), mask)
    elif layout == "retrieval":
        q = rng.standard_normal((total, d))
        k = q + 0.7 * rng.standard_normal((total, d))
        negatives = rng.standard_normal((total, 2, d)) if hard else None
        hard_mask = rng.random((total, 2)) > 0.3 if hard and slots else None
        key_ids = rng.integers(0, total // 2 + 1, total) if ids else None  # duplicates
        hard_ids = rng.integers(0, total, (total, 2)) if ids and hard else None
        arrays = (q, k, negatives, hard_mask, key_ids, hard_ids, mask)
    else:
        shape = (total, views, d) if views else (total, d)
        lab = rng.integers(0, 4, total)
        lab[-1] = 99  # an anchor without a positive
        arrays = (rng.standard_normal(shape), lab, mask)

    def shard(r: int):
        return tuple(None if a is None else a[r * n:(r + 1) * n] for a in arrays)

    return arrays, shard


def _local_none_to_global(layout: str, parts: list) -> np.ndarray:
    """Concatenate the ranks' ``"none"`` vectors into the global order."""
    if layout == "nt_xent":
        n = parts[0].shape[0] // 2
        return np.concatenate([p[:n] for p in parts] + [p[n:] for p in parts])
    return np.concatenate(parts, axis=0)


def _global_to_local_none(layout: str, g: np.ndarray, world: int) -> list:
    if layout == "nt_xent":
        total = g.shape[0] // 2
        n = total // world
        return [np.concatenate([g[r * n:(r + 1) * n], g[total + r * n:total + (r + 1) * n]])
                for r in range(world)]
    n = g.shape[0] // world
    return [g[r * n:(r + 1) * n] for r in range(world)]


def _slice_grads(layout: str, grads: tuple, r: int, n: int) -> tuple:
    return tuple(None if g is None else g[r * n:(r + 1) * n] for g in grads)


def _check(layout, world, n, rng, *, symmetric=False, labels=False, views=0, where=False,
           reduction="mean", chunk_size=None, logit_map="arctanh", temperature=None,
           rtol=1e-11, **shape):
    arrays, shard = _inputs(layout, world, n, rng, labels=labels, views=views, where=where,
                            **shape)
    options = engine.make_options(reduction=reduction, logit_map=logit_map,
                                  temperature=temperature)
    problem = engine.prepare(layout, arrays, options=options, symmetric=symmetric, xp=np)
    loss, res = engine.forward(problem, arrays, np)
    if reduction == "none":
        g_global = rng.standard_normal(loss.shape)
        g_local = _global_to_local_none(layout, g_global, world)
    else:
        g_global = np.asarray(1.0)
        g_local = [np.asarray(1.0)] * world
    grads = engine.backward(problem, res, g_global, np)

    def rank_fn(comm, r):
        local = shard(r)
        p = engine.prepare(layout, local, options=options, symmetric=symmetric,
                           chunk_size=chunk_size, xp=np)
        engine.check_sharded(p, comm.world_size)
        value, residuals = engine.forward(p, local, np, comm=comm)
        assert isinstance(residuals, tuple)
        return value, engine.backward(p, residuals, g_local[r], np, comm=comm)

    out = run_ranks(world, rank_fn)
    values = [v for v, _ in out]
    if reduction == "none":
        np.testing.assert_allclose(_local_none_to_global(layout, values), loss, rtol=rtol,
                                   atol=1e-14)
        factor = 1.0
    else:
        np.testing.assert_allclose(np.mean(values), loss, rtol=rtol, atol=1e-14)
        factor = float(world)  # ∂(Σ_ranks loss_r)/∂x_r = W·∂L/∂x_r
    for r, (_, local_grads) in enumerate(out):
        expected = _slice_grads(layout, grads, r, n)
        assert len(local_grads) == len(expected)
        for got, want in zip(local_grads, expected, strict=True):
            if want is None:  # an optional input that is absent (no hard negatives)
                assert got is None
                continue
            np.testing.assert_allclose(got, factor * want, rtol=rtol, atol=1e-13)
    return arrays, problem, loss, grads


CASES = [
    pytest.param("pairs", {}, id="pairs"),
    pytest.param("pairs", {"symmetric": True}, id="pairs-symmetric"),
    pytest.param("pairs", {"labels": True}, id="pairs-labels"),
    pytest.param("pairs", {"labels": True, "symmetric": True}, id="pairs-labels-symmetric"),
    pytest.param("nt_xent", {}, id="nt_xent"),
    pytest.param("sup_con", {}, id="sup_con"),
    pytest.param("sup_con", {"views": 2}, id="sup_con-views"),
    pytest.param("retrieval", {}, id="retrieval"),
    pytest.param("retrieval", {"symmetric": True, "ids": True, "slots": True},
                 id="retrieval-symmetric-ids-slots"),
    pytest.param("retrieval", {"ids": True, "hard": False}, id="pairs-ids"),
]


@pytest.mark.parametrize(("layout", "kw"), CASES)
@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_single_device(layout, kw, world, reduction, rng):
    _check(layout, world, 4, rng, reduction=reduction, **kw)


@pytest.mark.parametrize(("layout", "kw"), CASES)
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_tiled_shards_match(layout, kw, chunk_size, rng):
    """Each rank's rows tiled (3 rows of 5: a padded last block) give the same values."""
    _check(layout, 2, 5, rng, chunk_size=chunk_size, where=True, **kw)


@pytest.mark.parametrize(("layout", "kw"), CASES)
def test_row_mask(layout, kw, rng):
    _check(layout, 4, 3, rng, where=True, **kw)


@pytest.mark.parametrize(("layout", "kw"), CASES)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_temperature_map(layout, kw, chunk_size, rng):
    """The baseline map: column sums moved to the global maximum (all_reduce MAX) before
    they are added; τ = 0.05 makes the unshifted ratios overflow-prone (e^20)."""
    _check(layout, 3, 3, rng, logit_map="temperature", temperature=0.05,
           chunk_size=chunk_size, where=True, **kw)


def test_float32_round_off(rng):
    """float32 inputs: equal to the float64 single-device result to float32 round-off."""
    arrays, shard = _inputs("pairs", 4, 8, rng)
    options = engine.make_options()
    problem = engine.prepare("pairs", arrays, options=options, symmetric=True, xp=np)
    loss, res = engine.forward(problem, arrays, np)
    grads = engine.backward(problem, res, np.asarray(1.0), np)

    def rank_fn(comm, r):
        local = tuple(None if a is None else a.astype(np.float32) for a in shard(r))
        p = engine.prepare("pairs", local, options=options, symmetric=True, xp=np)
        value, residuals = engine.forward(p, local, np, comm=comm)
        return value, engine.backward(p, residuals, np.float32(1.0), np, comm=comm)

    out = run_ranks(4, rank_fn)
    assert all(v.dtype == np.float32 for v, _ in out)
    np.testing.assert_allclose(np.mean([float(v) for v, _ in out]), loss, rtol=2e-6)
    for r, (_, (dq, dk)) in enumerate(out):
        assert dq.dtype == np.float32
        np.testing.assert_allclose(dq, 4 * grads[0][r * 8:(r + 1) * 8], rtol=2e-4, atol=2e-6)
        np.testing.assert_allclose(dk, 4 * grads[1][r * 8:(r + 1) * 8], rtol=2e-4, atol=2e-6)


def test_global_gradient_finite_differences(rng):
    """The reference itself: the single-device gradient against central differences."""
    arrays, _ = _inputs("pairs", 2, 3, rng)
    options = engine.make_options()

    def value(q):
        a = (q, *arrays[1:])
        p = engine.prepare("pairs", a, options=options, symmetric=True, xp=np)
        return float(engine.forward(p, a, np)[0])

    problem = engine.prepare("pairs", arrays, options=options, symmetric=True, xp=np)
    _, res = engine.forward(problem, arrays, np)
    dq = engine.backward(problem, res, np.asarray(1.0), np)[0]
    h = 1e-6
    fd = np.zeros_like(arrays[0])
    for idx in np.ndindex(arrays[0].shape):
        up, down = arrays[0].copy(), arrays[0].copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (value(up) - value(down)) / (2 * h)
    np.testing.assert_allclose(dq, fd, rtol=1e-6, atol=1e-8)


def test_ddp_averaging_gives_the_exact_gradient(rng):
    """A linear model ``x = inputs·θ`` on every rank: the ranks' parameter gradients,
    averaged (what DistributedDataParallel does), equal the single-device gradient."""
    world, n, d_in, d = 3, 4, 5, 6
    xs = rng.standard_normal((world * n, d_in))
    ys = rng.standard_normal((world * n, d_in))
    theta = rng.standard_normal((d_in, d))
    options = engine.make_options()
    arrays = (xs @ theta, ys @ theta, None, None)
    problem = engine.prepare("pairs", arrays, options=options, symmetric=True, xp=np)
    _, res = engine.forward(problem, arrays, np)
    dq, dk = engine.backward(problem, res, np.asarray(1.0), np)
    single = xs.T @ dq + ys.T @ dk

    def rank_fn(comm, r):
        x, y = xs[r * n:(r + 1) * n], ys[r * n:(r + 1) * n]
        local = (x @ theta, y @ theta, None, None)
        p = engine.prepare("pairs", local, options=options, symmetric=True, xp=np)
        _, residuals = engine.forward(p, local, np, comm=comm)
        gq, gk = engine.backward(p, residuals, np.asarray(1.0), np, comm=comm)
        return x.T @ gq + y.T @ gk

    averaged = np.mean(run_ranks(world, rank_fn), axis=0)
    np.testing.assert_allclose(averaged, single, rtol=1e-11, atol=1e-14)


def test_communication_pattern(rng):
    """Symmetric pairs: one gather of the keys, one count and one column all_reduce in the
    forward; one gather of column weights and one reduce-scatter in the backward."""
    _, shard = _inputs("pairs", 2, 3, rng)
    options = engine.make_options()
    calls = {}

    def rank_fn(comm, r):
        local = shard(r)
        p = engine.prepare("pairs", local, options=options, symmetric=True, xp=np)
        _, residuals = engine.forward(p, local, np, comm=comm)
        calls["forward"] = list(comm.calls)
        engine.backward(p, residuals, np.asarray(1.0), np, comm=comm)
        calls["backward"] = comm.calls[len(calls["forward"]):]

    run_ranks(2, rank_fn)
    assert calls["forward"] == ["all_gather", "all_reduce_sum", "all_reduce_sum", "all_gather"]
    assert calls["backward"] == ["all_gather", "reduce_scatter_sum"]


def test_array_api_strict(rng):
    """The sharded path uses only the standard (array-api-strict, a non-default device)."""
    xps = pytest.importorskip("array_api_strict")
    device = xps.Device("device1")
    arrays, shard = _inputs("sup_con", 2, 4, rng, where=True)
    options = engine.make_options()
    problem = engine.prepare("sup_con", arrays, options=options, xp=np)
    loss, res = engine.forward(problem, arrays, np)
    (grad,) = engine.backward(problem, res, np.asarray(1.0), np)

    def rank_fn(comm, r):
        local = tuple(xps.asarray(a, device=device) for a in shard(r))
        p = engine.prepare("sup_con", local, options=options, chunk_size=3, xp=xps)
        value, residuals = engine.forward(p, local, xps, comm=comm)
        one = xps.asarray(1.0, dtype=xps.float64, device=device)
        (g,) = engine.backward(p, residuals, one, xps, comm=comm)
        assert g.device == device
        cpu = xps.Device("CPU_DEVICE")
        return float(np.asarray(value.to_device(cpu))), np.asarray(g.to_device(cpu))

    out = run_ranks(2, rank_fn, xp=xps)
    np.testing.assert_allclose(np.mean([v for v, _ in out]), loss, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([g for _, g in out]), 2 * grad, rtol=1e-11,
                               atol=1e-14)


@pytest.mark.parametrize("layout", ["negatives", "similarity"])
def test_layouts_without_a_global_batch_raise(layout, rng):
    options = engine.make_options()
    if layout == "negatives":
        arrays = (rng.standard_normal((3, 4)), rng.standard_normal((3, 4)),
                  rng.standard_normal((5, 4)), None)
    else:
        arrays = (rng.uniform(-1, 1, (3, 3)), np.eye(3, dtype=bool), None, None)
    problem = engine.prepare(layout, arrays, options=options, xp=np)
    with pytest.raises(ValueError, match="no global batch"):
        engine.check_sharded(problem, 2)


def test_bad_world_size(rng):
    arrays, _ = _inputs("pairs", 1, 3, rng)
    problem = engine.prepare("pairs", arrays, options=engine.make_options(), xp=np)
    with pytest.raises(TypeError, match="world_size"):
        engine.check_sharded(problem, 2.0)
    with pytest.raises(ValueError, match="world_size"):
        engine.check_sharded(problem, 0)
