"""The fused Pallas path of tfree_jax (``kernel=``), on CPU in Pallas' interpreter.

On a CPU ``kernel="fused"`` runs the same kernels with ``interpret=True``: each call is
compared with the portable core (float64, 1e-12), with central finite differences
(``check_grads``), and the kernels alone with dense sums. Sizes stay small: each new
problem costs seconds of compilation in the interpreter, so the default run takes one case
per layout and the rest is marked ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("jax.experimental.pallas")
jnp = jax.numpy
slow = pytest.mark.slow

import tfree_jax  # noqa: E402
from jax.test_util import check_grads  # noqa: E402
from tfree_jax import _pallas  # noqa: E402

from tfree_core import engine  # noqa: E402
from tfree_core.engine import Tiling  # noqa: E402

pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 stays float64 in JAX


def _rng():
    return np.random.default_rng(20250129)


def _pair_inputs(n, d, m=None):
    rng = _rng()
    q = rng.normal(size=(n, d))
    k = q + 0.7 * rng.normal(size=(n, d))  # correlated: losses well away from log N
    k[1] = q[1]  # one positive past the clip: no gradient through the map
    q[2] = 0.0  # a zero row: zero gradient
    out = [q, k]
    if m is not None:
        out.append(rng.normal(size=(m, d)))
    return out, rng


def _value_and_grads(fn, xs, cotangent=None, **kw):
    loss, vjp = jax.vjp(lambda *ys: fn(*ys, **kw), *xs)
    return loss, vjp(jnp.ones_like(loss) if cotangent is None else cotangent)


def _close(fused, portable, rtol):
    (lf, gf), (lp, gp) = fused, portable
    assert lf.dtype == lp.dtype
    np.testing.assert_allclose(np.asarray(lf), np.asarray(lp), rtol=rtol, atol=rtol)
    for a, b in zip(gf, gp, strict=True):
        assert a.dtype == b.dtype
        b64 = np.asarray(b, np.float64)
        scale = float(np.abs(b64).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a, np.float64), b64, rtol=0, atol=rtol * scale)


# --------------------------------------------------------------------------- options


def test_kernel_keyword_is_validated():
    q, k = jnp.ones((4, 3)), jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"kernel must be one of 'auto', 'fused', "
                                         r"'portable'; got 'pallas'"):
        tfree_jax.info_nce(q, k, kernel="pallas")


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda q, k: tfree_jax.info_nce(q, k, labels=jnp.array([0, 1, 0, 1]),
                                         kernel="fused"), "labels"),
        (lambda q, k: tfree_jax.info_nce(q, k, logit_map="temperature", temperature=0.1,
                                         kernel="fused"), "logit_map='temperature'"),
        (lambda q, k: tfree_jax.info_nce(q, k, negatives=jnp.ones((4, 5, 3)),
                                         kernel="fused"), "per-row negatives"),
        (lambda q, k: tfree_jax.sup_con(q, jnp.array([0, 1, 0, 1]), kernel="fused"),
         "sup_con"),
        (lambda q, k: tfree_jax.loss_from_similarity(q @ k.T, jnp.eye(4, dtype=bool),
                                                     kernel="fused"),
         "loss_from_similarity"),
    ],
)
def test_forcing_fused_on_an_unsupported_call_names_the_option(call, named):
    rng = _rng()
    q, k = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3)))
    with pytest.raises(ValueError, match="kernel='fused'") as err:
        call(q, k)
    assert named in str(err.value)


def test_fused_with_an_unbound_group_raises_as_the_portable_path():
    """``group=`` composes with the kernels (tests/test_fused_distributed.py runs them on
    4 host devices); an axis name outside a mapped function is a ``ValueError`` naming
    ``group``."""
    q = jnp.ones((4, 3))
    for kernel in ("fused", "portable"):
        with pytest.raises(ValueError, match=r"group='batch' names no mapped axis"):
            tfree_jax.info_nce(q, q, group="batch", kernel=kernel)


def _problem(symmetric=True, labels=None):
    q = jnp.ones((4, 3))
    arrays = (q, q, labels, None)
    options = engine.make_options(logit_map="arctanh", eps=1e-6, reduction="mean")
    return engine.prepare("pairs", arrays, options=options, symmetric=symmetric,
                          chunk_size=None, device_kind="accelerator", xp=jnp), arrays


def test_auto_resolves_by_platform_and_support(monkeypatch):
    problem, arrays = _problem()
    assert not _pallas.use_fused("auto", problem, arrays, "gpu")  # not yet verified on a GPU
    monkeypatch.setattr(_pallas, "AUTO_SELECTS_FUSED", True)
    assert _pallas.use_fused("auto", problem, arrays, "gpu")
    assert not _pallas.use_fused("auto", problem, arrays, "cpu")
    assert not _pallas.use_fused("auto", problem, arrays, "gpu", group="batch")
    assert _pallas.use_fused("fused", problem, arrays, "gpu", group="batch")
    assert not _pallas.use_fused("portable", problem, arrays, "gpu")
    assert _pallas.use_fused("fused", problem, arrays, "cpu")
    assert _pallas.interpret_on("cpu")
    assert not _pallas.interpret_on("gpu")
    labelled, arrays = _problem(symmetric=False, labels=jnp.array([0, 1, 0, 1]))
    assert not _pallas.use_fused("auto", labelled, arrays, "gpu")
    with pytest.raises(ValueError, match=r"platform 'tpu'"):
        _pallas.use_fused("fused", problem, arrays, "tpu")


def test_auto_on_cpu_is_the_portable_path(monkeypatch):
    def refuse(*args):
        raise AssertionError("the fused path ran on a CPU under kernel='auto'")

    monkeypatch.setattr(_pallas.PallasKernel, "sums", refuse)
    (q, k), _ = _pair_inputs(6, 5)
    auto = tfree_jax.info_nce(jnp.asarray(q), jnp.asarray(k), symmetric=True)
    portable = tfree_jax.info_nce(jnp.asarray(q), jnp.asarray(k), symmetric=True,
                                  kernel="portable")
    assert jnp.array_equal(auto, portable)
    with pytest.raises(AssertionError, match="fused path ran"):
        tfree_jax.info_nce(jnp.asarray(q), jnp.asarray(k), kernel="fused")


# --------------------------------------------------------------------------- kernels

# (layout, symmetric, where, reduction): every supported layout, each reduction at least
# twice; N = 37 rows (several row blocks, the last one padded), D = 20 (padded to 32).
CASES = [
    ("pairs", False, False, "mean"),
    ("pairs", True, True, "sum"),
    ("nt_xent", False, True, "none"),
    ("negatives", False, True, "mean"),
    *(pytest.param(*case, marks=slow) for case in [
        ("pairs", True, False, "none"),
        ("pairs", False, True, "none"),
        ("nt_xent", False, False, "sum"),
        ("nt_xent", False, True, "mean"),
        ("negatives", False, False, "none"),
        ("pairs", True, True, "mean"),
    ]),
]


@pytest.mark.parametrize(("layout", "symmetric", "where", "reduction"), CASES)
def test_fused_matches_the_portable_core_float64(layout, symmetric, where, reduction):
    n, d = 37, 20
    arrays, rng = _pair_inputs(n, d, m=45 if layout == "negatives" else None)
    xs = [jnp.asarray(a) for a in arrays]
    kw = {"reduction": reduction}
    if where:
        mask = rng.random(n) > 0.3
        mask[0] = False
        kw["where"] = jnp.asarray(mask)
    if layout == "pairs":
        fn = lambda q, k, **kw: tfree_jax.info_nce(q, k, symmetric=symmetric, **kw)  # noqa: E731
    elif layout == "negatives":
        fn = lambda q, k, negs, **kw: tfree_jax.info_nce(q, k, negatives=negs, **kw)  # noqa: E731
    else:
        fn = tfree_jax.nt_xent
    rows = 2 * n if layout == "nt_xent" else n
    cot = jnp.asarray(rng.normal(size=rows)) if reduction == "none" else None
    fused = _value_and_grads(fn, xs, cot, kernel="fused", **kw)
    portable = _value_and_grads(fn, xs, cot, kernel="portable", **kw)
    _close(fused, portable, 1e-12)
    assert bool(jnp.all(fused[1][0][2] == 0)), "a zero row gets a zero gradient"


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=slow),
                                   pytest.param("float16", marks=slow)])
def test_fused_half_and_single_inputs_compute_in_float32(dtype):
    arrays, _ = _pair_inputs(33, 24)
    xs = [jnp.asarray(a).astype(dtype) for a in arrays]
    fused = _value_and_grads(tfree_jax.info_nce, xs, kernel="fused", symmetric=True)
    portable = _value_and_grads(tfree_jax.info_nce, xs, kernel="portable", symmetric=True)
    assert fused[0].dtype == jnp.float32
    assert all(g.dtype == jnp.dtype(dtype) for g in fused[1])
    _close(fused, portable, 1e-5 if dtype == "float32" else 2e-2)


@pytest.mark.parametrize("layout", ["pairs_symmetric", pytest.param("nt_xent", marks=slow),
                                    pytest.param("negatives", marks=slow)])
def test_fused_gradient_matches_finite_differences(layout):
    """``check_grads`` (reverse mode: the analytic VJP against central differences)."""
    rng = _rng()
    xs = [jnp.asarray(rng.normal(size=(9, 6))) for _ in range(2)]
    if layout == "pairs_symmetric":
        def fn(a, b):
            return tfree_jax.info_nce(a, b, symmetric=True, kernel="fused")
    elif layout == "nt_xent":
        def fn(a, b):
            return tfree_jax.nt_xent(a, b, kernel="fused", reduction="sum")
    else:
        xs.append(jnp.asarray(rng.normal(size=(11, 6))))

        def fn(a, b, c):
            return tfree_jax.info_nce(a, b, negatives=c, kernel="fused")
    check_grads(fn, tuple(xs), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)


def test_fused_under_jit_grad_and_vmap():
    """A batch of problems (``jax.vmap`` over Pallas calls) inside ``jax.jit``."""
    rng = _rng()
    q, k = (jnp.asarray(rng.normal(size=(2, 9, 6))) for _ in range(2))

    def grads(kernel):
        loss = lambda a, b: tfree_jax.info_nce(a, b, symmetric=True, kernel=kernel)  # noqa: E731
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))(q, k)

    _close(grads("fused"), grads("portable"), 1e-12)


def test_fused_identical_views_hit_the_cap():
    """SPEC §4: identical orthonormal views, N = 4: L = log(1 + 3·e^(-φ(b)))."""
    q = jnp.eye(4, 8, dtype=jnp.float64)
    loss = tfree_jax.info_nce(q, q, kernel="fused")
    assert float(loss) == pytest.approx(1.49999962e-6, rel=1e-7)


def test_fused_kernel_matches_dense_sums_and_products():
    """The kernels alone, against dense sums, with M not a multiple of the column tile,
    both masks and the NT-Xent partner."""
    rng = _rng()
    n, d, b = 70, 12, 1 - 1e-6
    u = rng.normal(size=(n, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    ok = rng.random(n) > 0.2
    partner = np.roll(np.arange(n), n // 2)
    t = Tiling(jnp.asarray(u), jnp.asarray(u), where_rows=jnp.asarray(ok),
               where_cols=jnp.asarray(ok), diagonal=True, partner=jnp.asarray(partner))
    keep = (~np.eye(n, dtype=bool)) & ok[:, None] & ok[None, :]
    keep &= np.arange(n)[None, :] != partner[:, None]
    c = np.clip(u @ u.T, -b, b)
    ratio = np.where(keep, (1 + c) / (1 - c), 0)
    kernel = _pallas.PallasKernel(interpret=True)
    rows, cols = jax.jit(lambda: kernel.sums(t, b, True))()
    np.testing.assert_allclose(rows, ratio.sum(1), rtol=1e-13)
    np.testing.assert_allclose(cols, ratio.sum(0), rtol=1e-13)
    a, s = rng.random(n), rng.random(n)
    g = np.where(keep, 2 / (1 - c) ** 2, 0) * (a[:, None] + s[None, :])
    du_a, du_c = jax.jit(lambda: kernel.grads(t, b, jnp.asarray(a), jnp.asarray(s)))()
    np.testing.assert_allclose(du_a, g @ u, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(du_c, g.T @ u, rtol=1e-12, atol=1e-12)


def test_fused_kernel_on_a_row_block_drops_global_indices():
    """A device's row block (``group=``): anchors are candidates ``offset .. offset + n - 1``
    of the gathered set, with a traced offset (as ``lax.axis_index`` gives); the self-pair
    and the NT-Xent partner are global indices, in ``S`` and in ``Sᵀ`` alike."""
    rng = _rng()
    n, world, rank, d, b = 10, 3, 2, 12, 1 - 1e-6
    m, offset = world * n, rank * n
    u = rng.normal(size=(m, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    a = u[offset:offset + n]
    ok = rng.random(m) > 0.2
    partner = offset + np.roll(np.arange(n), n // 2)
    cols = np.arange(m)[None, :]
    keep = (cols != offset + np.arange(n)[:, None]) & (cols != partner[:, None])
    keep &= ok[offset:offset + n, None] & ok[None, :]
    c = np.clip(a @ u.T, -b, b)
    ratio = np.where(keep, (1 + c) / (1 - c), 0)
    sa, sc = rng.random(n), rng.random(m)
    g = np.where(keep, 2 / (1 - c) ** 2, 0) * (sa[:, None] + sc[None, :])
    kernel = _pallas.PallasKernel(interpret=True)
    where_rows = jnp.asarray(ok[offset:offset + n])

    @jax.jit
    def run(offset):
        t = Tiling(jnp.asarray(a), jnp.asarray(u), where_rows=where_rows,
                   where_cols=jnp.asarray(ok), diagonal=True, partner=jnp.asarray(partner),
                   row_offset=offset)
        return kernel.sums(t, b, True), kernel.grads(t, b, jnp.asarray(sa), jnp.asarray(sc))

    (rows, col_sums), (du_a, du_c) = run(jnp.int32(offset))
    np.testing.assert_allclose(rows, ratio.sum(1), rtol=1e-13)
    np.testing.assert_allclose(col_sums, ratio.sum(0), rtol=1e-13)
    np.testing.assert_allclose(du_a, g @ u, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(du_c, g.T @ a, rtol=1e-12, atol=1e-12)
