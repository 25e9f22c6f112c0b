"""Tiled evaluation (``chunk_size``): equal to the untiled path for every layout, map,
reduction, row mask and chunk size; the pluggable block driver; validation; memory."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from cases import make_cases

import tfree_core as core
from tfree_core import _strategy as strategy
from tfree_core import engine

CASES = [c for c in make_cases(np.random.default_rng(11), n=11, d=4)
         if not c.name.startswith("similarity")]
MAPS = [
    {"logit_map": "arctanh"},
    {"logit_map": "temperature", "temperature": 0.1},
    {"logit_map": "temperature", "temperature": 0.01},  # exp(1/τ) overflows: shifts matter
]
REDUCTIONS = ["mean", "sum", "none"]
CHUNKS = [1, 3, 11, 64, "auto"]  # 11 rows (22 for NT-Xent and 2-view SupCon)


def _map_id(options):
    return "-".join(map(str, options.values()))


def _assert_close(actual, expected, rtol, what=""):
    """``|a - e| <= rtol·max(|e|_max, 1)``, per array (gradients are compared as a whole)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    if expected.ndim == 0:
        scale = max(scale, 1.0)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.0e}"


def _cotangent(case, reduction, options, rng):
    if reduction != "none":
        return None
    loss = case.loss(**case.inputs, **case.extra, reduction=reduction, **options)
    return rng.normal(size=np.shape(loss))


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", MAPS, ids=_map_id)
def test_tiled_equals_untiled_float64(case, reduction, options, xp, to_xp, to_np, rng):
    cotangent = _cotangent(case, reduction, options, rng)

    def run(chunk_size):
        args = {n: to_xp(a) for n, a in case.inputs.items()}
        extra = {k: (to_xp(v) if isinstance(v, np.ndarray) else v)
                 for k, v in case.extra.items()}
        cot = None if cotangent is None else to_xp(cotangent)
        loss, grads = case.value_and_grad(**args, **extra, reduction=reduction,
                                          chunk_size=chunk_size, cotangent=cot, **options)
        return to_np(loss), [to_np(g) for g in grads]

    loss0, grads0 = run(None)
    for chunk in CHUNKS:
        loss, grads = run(chunk)
        _assert_close(loss, loss0, 1e-12, f"loss, chunk {chunk}")
        for name, g, g0 in zip(case.inputs, grads, grads0, strict=True):
            _assert_close(g, g0, 1e-12, f"d/d{name}, chunk {chunk}")
        plain = case.loss(**case.inputs, **case.extra, reduction=reduction,
                          chunk_size=chunk, **options)
        _assert_close(plain, loss0, 1e-12, f"loss without gradient, chunk {chunk}")


def _float32_problem(case, rng, d):
    """The case at N = 37 rows of ``d`` features, float32 (float64 copies for a reference)."""
    big = {n: rng.normal(size=(37, *a.shape[1:-1], d)) for n, a in case.inputs.items()}
    if "negatives" in big and case.inputs["negatives"].ndim == 2:
        big["negatives"] = rng.normal(size=(23, d))
    extra = dict(case.extra)
    if "labels" in extra:
        extra["labels"] = rng.integers(0, 5, size=37)
    if "where" in extra:
        extra["where"] = rng.random(37) < 0.8
    if "hard_negative_mask" in extra:
        extra["hard_negative_mask"] = rng.random((37, extra["hard_negative_mask"].shape[1])) < 0.7
    if "key_ids" in extra:
        extra["key_ids"] = rng.integers(0, 30, size=37)  # with duplicates
    if "hard_negative_ids" in extra:
        per_row = extra["hard_negative_ids"].shape[1]
        extra["hard_negative_ids"] = rng.integers(0, 60, size=(37, per_row))
    return {n: a.astype(np.float32) for n, a in big.items()}, extra


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("options", MAPS[:2], ids=_map_id)
def test_tiled_equals_untiled_float32(case, options):
    """Cosines away from ±1 (D = 16): tiled and untiled agree to 1e-5."""
    inputs, extra = _float32_problem(case, np.random.default_rng(3), 16)
    loss0, grads0 = case.value_and_grad(**inputs, **extra, **options)
    for chunk in (1, 5, 8, 36, 37, 100, "auto"):
        loss, grads = case.value_and_grad(**inputs, **extra, chunk_size=chunk, **options)
        assert loss.dtype == np.float32
        _assert_close(loss, loss0, 1e-5, f"loss, chunk {chunk}")
        for g, g0 in zip(grads, grads0, strict=True):
            assert g.dtype == np.float32
            _assert_close(g, g0, 1e-5, f"gradient, chunk {chunk}")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_tiled_float32_error_is_the_untiled_one(case):
    """Cosines near 1 (D = 4): ``φ'`` amplifies the last bit of ``S`` (relative
    sensitivity ``2δs/(1 - s)``), so the tiled and untiled float32 results each differ from
    the float64 truth by ~1e-5: a one-row block's ``S`` comes from another BLAS kernel
    (a matrix-vector product) with its own rounding. The tiled error stays within 3× the
    untiled one, or within that scale (``2·D·u/(1 - s)`` ≈ 6e-5 for ``1 - s`` ≈ 2e-2)."""
    inputs, extra = _float32_problem(case, np.random.default_rng(3), 4)
    loss64, grads64 = case.value_and_grad(
        **{n: a.astype(np.float64) for n, a in inputs.items()}, **extra)

    def error(loss, grads):
        worst = abs(float(loss) - float(loss64)) / max(abs(float(loss64)), 1.0)
        for g, g64 in zip(grads, grads64, strict=True):
            worst = max(worst, float(np.max(np.abs(g - g64)) / np.max(np.abs(g64))))
        return worst

    untiled = error(*case.value_and_grad(**inputs, **extra))
    for chunk in (1, 5, 36):
        tiled = error(*case.value_and_grad(**inputs, **extra, chunk_size=chunk))
        assert tiled <= max(3 * untiled, 6e-5), (chunk, tiled, untiled)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "pairs-symmetric-where", "pairs-labels-symmetric-where", "negatives-per-row-where",
    "nt_xent-where", "sup_con-3d-where")], ids=repr)
@pytest.mark.parametrize("options", MAPS[:2], ids=_map_id)
def test_tiled_gradient_matches_finite_differences(case, options):
    h = 1e-6
    _, grads = case.value_and_grad(**case.inputs, **case.extra, chunk_size=4, **options)
    for name, got in zip(case.inputs, grads, strict=True):
        x = case.inputs[name]
        want = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = dict(case.inputs), dict(case.inputs)
            plus[name], minus[name] = x.copy(), x.copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            want[idx] = (float(case.loss(**plus, **case.extra, chunk_size=4, **options))
                         - float(case.loss(**minus, **case.extra, chunk_size=4, **options))
                         ) / (2 * h)
        _assert_close(got, want, 1e-7, f"d/d{name}")


# --------------------------------------------------------------------------- SPEC §4


@pytest.mark.parametrize("chunk", [1, 3, "auto"])
def test_sanity_values(chunk):
    eye = np.eye(16)
    for symmetric in (False, True):  # every S = 0: log N, both directions
        loss = core.info_nce(eye[:8], eye[8:], symmetric=symmetric, chunk_size=chunk)
        assert float(loss) == pytest.approx(math.log(8), rel=1e-15)
    assert float(core.nt_xent(eye[:4], eye[4:8], chunk_size=chunk)) == pytest.approx(
        math.log(7), rel=1e-15)
    q = np.eye(4)  # identical orthonormal views: every positive past the cap
    loss, (dq, dk) = core.info_nce_value_and_grad(q, q, chunk_size=chunk)
    assert float(loss) == pytest.approx(1.49999962e-6, rel=1e-8)
    cap = float(core.logits(np.asarray(1.0)))
    assert 0 < np.max(np.abs(dq)) < 10 * 2 * math.exp(-cap) / 4
    assert np.all(np.isfinite(dk))


def test_single_anchor_and_extreme_temperature():
    q = np.array([[1.0, 0.0]])
    for chunk in (None, 1, 5):
        assert float(core.info_nce(q, q, chunk_size=chunk)) == 0.0
    rng = np.random.default_rng(5)
    q = rng.normal(size=(9, 3))
    k = -q + 0.01 * rng.normal(size=(9, 3))  # far-off positives: logits near -1/τ
    for symmetric in (False, True):
        kw = {"logit_map": "temperature", "temperature": 0.005, "symmetric": symmetric}
        loss0, grads0 = core.info_nce_value_and_grad(q, k, **kw)
        loss, grads = core.info_nce_value_and_grad(q, k, chunk_size=2, **kw)
        assert np.isfinite(loss)
        _assert_close(loss, loss0, 1e-12)
        for g, g0 in zip(grads, grads0, strict=True):
            _assert_close(g, g0, 1e-12)


@pytest.mark.parametrize("chunk", [None, 1])
def test_far_off_lone_positive_under_the_temperature_map(chunk):
    """An anchor whose only candidate is its positive has ``L = 0`` however far the
    positive: the shift is the positive's own logit (``Q = 1``), not a 0 fallback, which
    would round ``(Q - 1) + N`` to -1 and give ``log1p(-1) = -inf``."""
    kw = {"logit_map": "temperature", "temperature": 0.01, "chunk_size": chunk}
    q, k = np.array([[1.0, 0.0]]), np.array([[-0.5, 0.75**0.5]])  # s = -0.5: ℓ = -50
    loss, grads = core.info_nce_value_and_grad(q, k, **kw)
    assert float(loss) == 0.0
    assert all(np.all(g == 0) for g in grads)
    q2, k2 = np.vstack([q, [[0.0, 1.0]]]), np.vstack([k, [[1.0, 0.0]]])
    where = np.array([True, False])  # the other row is padding: no negatives left
    for symmetric in (False, True):
        loss = core.info_nce(q2, k2, where=where, symmetric=symmetric, **kw)
        assert float(loss) == 0.0


# --------------------------------------------------------------------------- the driver


def _reverse_loop(body, n_blocks, carry):
    """Runs the blocks last to first, with 0-d array indices (as a tracing driver would)."""
    outputs = [None] * n_blocks
    for index in reversed(range(n_blocks)):
        carry, outputs[index] = body(np.asarray(index), carry)
    return carry, tuple(np.stack(parts) for parts in zip(*outputs, strict=True))


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("options", MAPS[:2], ids=_map_id)
def test_driver_order_does_not_matter(case, options):
    layout = {"info_nce_value_and_grad": "pairs", "nt_xent_value_and_grad": "nt_xent",
              "sup_con_value_and_grad": "sup_con"}[case.value_and_grad.__name__]
    extra = dict(case.extra)
    if "negatives" in case.inputs:
        layout = "negatives"
    arrays = {
        "pairs": lambda: (case.inputs["query"], case.inputs["key"], extra.get("labels"),
                          extra.get("where")),
        "negatives": lambda: (case.inputs["query"], case.inputs["key"],
                              case.inputs["negatives"], extra.get("where")),
        "nt_xent": lambda: (case.inputs["z1"], case.inputs["z2"], extra.get("where")),
        "sup_con": lambda: (case.inputs["features"], extra["labels"], extra.get("where")),
    }[layout]()
    opts = engine.make_options(**options)
    symmetric = bool(extra.get("symmetric", False))
    plain = engine.prepare(layout, arrays, options=opts, symmetric=symmetric, xp=np)
    tiled = engine.prepare(layout, arrays, options=opts, symmetric=symmetric, chunk_size=3,
                           xp=np)
    assert hash(tiled) != hash(plain)
    assert tiled.chunk_size == 3
    loss0, res0 = engine.forward(plain, arrays, np)
    loss, res = engine.forward(tiled, arrays, np, loop=_reverse_loop)
    assert isinstance(res, tuple)
    assert len(res) == len(res0)
    _assert_close(loss, loss0, 1e-12)
    one = np.asarray(1.0)
    grads0 = engine.backward(plain, res0, one, np)
    grads = engine.backward(tiled, res, one, np, loop=_reverse_loop)
    for g, g0 in zip(grads, grads0, strict=True):
        _assert_close(g, g0, 1e-12)


def test_tiled_residuals_hold_no_matrix():
    rng = np.random.default_rng(2)
    q, k, labels = rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), rng.integers(0, 4, 40)
    for lay, arrays, sym in (("pairs", (q, k, None, None), True),
                             ("pairs", (q, k, labels, None), True),
                             ("nt_xent", (q, k, None), False),
                             ("sup_con", (q, labels, None), False)):
        problem = engine.prepare(lay, arrays, options=engine.make_options(), symmetric=sym,
                                 chunk_size=7, xp=np)
        _, res = engine.forward(problem, arrays, np)
        for index, value in enumerate(res):
            assert value is None or value.size <= 80 * 3, index


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(("value", "error"), [
    (0, ValueError), (-3, ValueError), ("big", ValueError),
    (2.0, TypeError), (True, TypeError), (np.array([4]), TypeError),
])
def test_invalid_chunk_size(value, error):
    q = np.ones((3, 2))
    with pytest.raises(error, match="chunk_size"):
        core.info_nce(q, q, chunk_size=value)
    with pytest.raises(error, match="chunk_size"):
        core.sup_con_value_and_grad(q, np.arange(3), chunk_size=value)


def test_chunk_size_accepts_numpy_integers_and_auto():
    q = np.random.default_rng(0).normal(size=(5, 2))
    problem = engine.prepare("pairs", (q, q, None, None), options=engine.make_options(),
                             chunk_size=np.int64(2), xp=np)
    assert problem.chunk_size == 2
    assert type(problem.chunk_size) is int
    assert float(core.nt_xent(q, q, chunk_size="auto")) == pytest.approx(
        float(core.nt_xent(q, q)), rel=1e-12)


def test_similarity_layout_rejects_chunk_size():
    s = np.zeros((3, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        core.loss_from_similarity(s, np.eye(3, dtype=bool), chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size"):
        core.loss_from_similarity_value_and_grad(s, np.eye(3, dtype=bool), chunk_size=1)
    # "auto" (the default) lets the library choose, and the only choice here is untiled
    problem = engine.prepare("similarity", (s, np.eye(3, dtype=bool), None, None),
                             options=engine.make_options(), chunk_size="auto", xp=np)
    assert problem.chunk_size is None


def _resolved(layout, arrays, kind=None, reduction="none", **kw):
    """``"auto"`` resolved; ``reduction="none"`` by default: the two-pass budgets (a scalar
    reduction of one direction computes its gradient in the loss's pass, with its own)."""
    return engine.prepare(layout, arrays, options=engine.make_options(reduction=reduction),
                          chunk_size="auto", device_kind=kind, xp=np, **kw).chunk_size


@pytest.mark.parametrize(("n", "kind", "expected"), [
    (1448, "cpu", None),  # 1448² float32 = 7.998 MiB: untiled
    (1449, "cpu", 725),  # just above 8 MiB: two balanced blocks, not 1447 + 2
    (4096, "cpu", 512),  # 8 MiB blocks: 512 rows of 4096 float32
    (4096, "accelerator", None),  # 64 MiB: untiled up to 1 GiB on an accelerator
    (4096, "fused_cpu", None),  # XLA on a CPU: untiled up to 256 MiB
    (16384, "fused_cpu", 1024),  # 1 GiB: 64 MiB blocks
    (65536, "cpu", 128),  # never fewer than MIN_ROWS rows per block
])
def test_auto_resolves_from_shapes_and_device(n, kind, expected):
    q = np.zeros((n, 2), np.float32)
    assert _resolved("pairs", (q, q, None, None), kind) == expected
    assert _resolved("pairs", (q, q, None, None), kind, "mean", symmetric=True) == expected


@pytest.mark.parametrize(("n", "d", "kind", "expected"), [
    (4096, 256, "cpu", 512),  # 8 MiB blocks already hold more than D rows
    (4096, 768, "cpu", 683),  # at least D rows: six balanced blocks of 683, not eight of 512
    (16384, 768, "fused_cpu", 1024),  # other kinds: blocks by bytes alone
])
def test_auto_blocks_take_at_least_d_rows_on_a_cpu(n, d, kind, expected):
    """Each block reads the ``M × D`` candidates and updates their gradient: on a CPU a
    block has at least ``D`` rows, so that traffic stays below the block's own."""
    q = np.zeros((n, d), np.float32)
    assert _resolved("pairs", (q, q, None, None), kind) == expected


@pytest.mark.parametrize(("n", "kind", "expected"), [
    (1448, "cpu", None),  # untiled: the same threshold
    (4096, "cpu", 256),  # 4 MiB blocks on a CPU: 256 rows of 4096 float32
    (4096, "fused_cpu", None),
    (16384, "fused_cpu", 1024),  # other kinds: the same 64 MiB blocks
    (65536, "cpu", 128),
])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_auto_one_pass_blocks(n, kind, expected, reduction):
    """One direction with a scalar reduction (gradient in the loss's pass): a CPU block
    holds its ratios and weights at once, so it takes 4 MiB, not 8."""
    q = np.zeros((n, 2), np.float32)
    assert _resolved("pairs", (q, q, None, None), kind, reduction) == expected
    two_pass = _resolved("pairs", (q, q, None, None), kind, "none")
    assert _resolved("pairs", (q, q, None, None), kind, reduction, one_pass=False) == two_pass


def test_auto_counts_the_layouts_matrix():
    q = np.zeros((1024, 2), np.float32)
    assert _resolved("pairs", (q, q, None, None)) is None  # 1024 × 1024: 4 MiB
    assert _resolved("nt_xent", (q, q, None)) == 1024  # 2048 × 2048: 16 MiB, two blocks
    assert _resolved("pairs", (q.astype(np.float64), q.astype(np.float64), None, None)) is None
    assert _resolved("sup_con", (np.zeros((1024, 2, 2), np.float32), np.zeros(1024, int),
                                 None)) == 1024
    q8 = np.zeros((1024, 8), np.float32)
    negatives = np.zeros((1024, 512, 8), np.float32)  # per row, the (c, M, D) gather counts:
    assert _resolved("negatives", (q8, q8, negatives, None)) == 342  # 455 rows at most
    assert _resolved("negatives", (q, q, np.zeros((40000, 2), np.float32), None)) == 128


def test_auto_budgets_for_the_candidates_of_every_device():
    """Sharded, each device's rows meet ``world_size`` times its own candidates."""
    q = np.zeros((1024, 4), np.float32)
    sizes = [engine.prepare("pairs", (q, q, None, None), options=engine.make_options(),
                            chunk_size="auto", world_size=w, xp=np).chunk_size
             for w in (1, 2, 8)]
    assert sizes == [None, None, 256]  # 1024 × 8192 float32 = 32 MiB: four 8 MiB blocks


def test_auto_reads_the_device_kind():
    assert strategy.device_kind("cpu") == "cpu"
    assert strategy.device_kind("/job:localhost/replica:0/task:0/device:CPU:0") == "cpu"
    assert strategy.device_kind("cuda:0") == "accelerator"
    assert strategy.device_kind(None) is None
    assert strategy.device_kind("") is None
    q = np.zeros((4096, 2), np.float32)
    assert _resolved("pairs", (q, q, None, None)) == 512  # NumPy arrays live on the CPU
    assert _resolved("pairs", (q, q, None, None), reduction="mean") == 256
    with pytest.raises(ValueError, match="device_kind"):
        _resolved("pairs", (q, q, None, None), "tpu")


# --------------------------------------------------------------------------- memory


def _peak(f) -> int:
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tiled_memory_stays_below_one_matrix():
    """NumPy reports its allocations to tracemalloc: untiled, the peak exceeds one N×N
    float64 matrix; tiled with 128-row blocks it stays a small fraction of one."""
    n = 2048
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(n, 16)), rng.normal(size=(n, 16))
    matrix = n * n * 8
    untiled = _peak(lambda: core.info_nce_value_and_grad(q, k, symmetric=True,
                                                    chunk_size=None))
    tiled = _peak(lambda: core.info_nce_value_and_grad(q, k, symmetric=True, chunk_size=128))
    assert untiled > matrix
    assert tiled < matrix / 4, f"tiled peak {tiled / 2**20:.1f} MiB"


# ------------------------------------------------------------ gradient in the forward


def _engine_problems(rng):
    """Every layout ``engine.value_and_grad`` takes, as ``(layout, arrays)`` (13 rows)."""
    def pair():
        return rng.standard_normal((13, 5)), rng.standard_normal((13, 5))

    yield "pairs", (*pair(), None, None)
    yield "pairs-labels", (*pair(), rng.integers(0, 3, 13), None)
    yield "pairs-where", (*pair(), None, rng.random(13) > 0.3)
    yield "negatives-shared", (*pair(), rng.standard_normal((7, 5)), None)
    yield "negatives-per-row", (*pair(), rng.standard_normal((13, 4, 5)), rng.random(13) > 0.2)
    yield "nt_xent", (*pair(), None)
    yield "nt_xent-where", (*pair(), rng.random(13) > 0.3)
    yield "sup_con", (pair()[0], rng.integers(0, 3, 13), None)
    yield "sup_con-views", (rng.standard_normal((13, 2, 5)), rng.integers(0, 3, 13),
                            rng.random(13) > 0.2)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("options", MAPS[:2], ids=_map_id)
@pytest.mark.parametrize("chunk", [None, 4, 13, "auto"])
def test_value_and_grad_equals_forward_then_backward(reduction, options, chunk):
    """One pass (the gradient computed with the loss, then scaled by the cotangent) gives
    the loss and gradients of the separate forward and backward, float64, to 1e-12."""
    import array_api_compat.numpy as xp

    cotangent = xp.asarray(1.7)
    for name, arrays in _engine_problems(np.random.default_rng(5)):
        layout = name.split("-")[0]
        opts = engine.make_options(reduction=reduction, **options)
        problem = engine.prepare(layout, arrays, options=opts, chunk_size=chunk, xp=xp)
        assert engine.fuses_gradient(problem)
        loss, res = engine.forward(problem, arrays, xp)
        expected = engine.backward(problem, res, cotangent, xp)
        value, grads = engine.value_and_grad(problem, arrays, xp)
        grads = engine.scale_gradients(problem, grads, cotangent, xp)
        _assert_close(value, loss, 1e-12, f"{name}: loss")
        for g, e in zip(grads, expected, strict=True):
            _assert_close(g, e, 1e-12, f"{name}: gradient")


def test_fuses_gradient_only_for_one_direction_and_a_scalar_reduction():
    import array_api_compat.numpy as xp

    q = np.ones((3, 2))
    arrays = (q, q, None, None)

    def problem(**kw):
        reduction = kw.pop("reduction", "mean")
        return engine.prepare("pairs", arrays, options=engine.make_options(reduction=reduction),
                              xp=xp, **kw)

    assert engine.fuses_gradient(problem())
    assert engine.fuses_gradient(problem(reduction="sum"))
    assert not engine.fuses_gradient(problem(reduction="none"))
    assert not engine.fuses_gradient(problem(symmetric=True))
    similarity = engine.prepare("similarity", (np.eye(3) * 0.5, np.eye(3, dtype=bool), None, None),
                                options=engine.make_options(), xp=xp)
    assert not engine.fuses_gradient(similarity)
