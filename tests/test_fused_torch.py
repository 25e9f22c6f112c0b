"""The fused Triton path of tfree_torch (``kernel=``), checked on CPU in Triton's interpreter.

Triton picks its interpreter only when ``TRITON_INTERPRET=1`` is set before it is first
imported, and ``import tfree_torch`` imports it (through ``torch._dynamo``). So this
module runs twice: in the test process, where the kernels are compiled-mode (and there
is no GPU), it checks the option handling and launches itself in a fresh process with
``TRITON_INTERPRET=1`` (:func:`test_interpreter_suite`); there, the kernels run and are
compared with the portable core and with finite differences.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import tfree_torch  # noqa: E402
from tfree_torch import _triton  # noqa: E402
from tfree_torch._static import problem_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INTERPRETING = _triton.interpreting()
interpreted = pytest.mark.skipif(
    not INTERPRETING, reason="kernels run in the TRITON_INTERPRET=1 process "
    "(test_interpreter_suite)")


def _rng():
    return np.random.default_rng(20250129)


def _tensor(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


# --------------------------------------------------------------------------- options


def test_interpreter_suite():
    """Run this module's kernel tests with the kernels in Triton's CPU interpreter."""
    if INTERPRETING:
        pytest.skip("already in the interpreter process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider",
         "-x"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert " passed" in out, out[-2000:]
    assert "failed" not in out, out[-2000:]


def test_kernel_keyword_is_validated():
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"kernel must be one of 'auto', 'fused', "
                                         r"'portable'; got 'triton'"):
        tfree_torch.info_nce(q, k, kernel="triton")


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda q, k: tfree_torch.info_nce(q, k, labels=torch.tensor([0, 1, 0, 1]),
                                           kernel="fused"), "labels"),
        (lambda q, k: tfree_torch.info_nce(q, k, logit_map="temperature", temperature=0.1,
                                           kernel="fused"), "logit_map='temperature'"),
        (lambda q, k: tfree_torch.info_nce(q, k, negatives=torch.randn(4, 5, 3),
                                           kernel="fused"), "per-row negatives"),
        (lambda q, k: tfree_torch.sup_con(q, torch.tensor([0, 1, 0, 1]), kernel="fused"),
         "sup_con"),
        (lambda q, k: tfree_torch.loss_from_similarity(q @ k.T, torch.eye(4, dtype=bool),
                                                       kernel="fused"),
         "loss_from_similarity"),
    ],
)
def test_forcing_fused_on_an_unsupported_call_names_the_option(call, named):
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="kernel='fused'") as err:
        call(q, k)
    assert named in str(err.value)


def test_fused_with_a_group_validates_the_group_first():
    """``group=`` composes with the kernels (tests/test_fused_distributed.py runs them on
    Gloo ranks); an unusable group is refused as on the portable path."""
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    for kernel in ("fused", "portable"):
        with pytest.raises(RuntimeError, match="group= needs an initialised"):
            tfree_torch.info_nce(q, k, group=object(), kernel=kernel)


def test_forcing_fused_on_cpu_needs_the_interpreter():
    if INTERPRETING:
        pytest.skip("CPU tensors are accepted in the interpreter")
    with pytest.raises(ValueError, match=r"tensors on cpu.*TRITON_INTERPRET=1"):
        tfree_torch.nt_xent(torch.randn(4, 3), torch.randn(4, 3), kernel="fused")


def test_auto_on_cpu_is_the_portable_path(monkeypatch):
    def refuse(*args):
        raise AssertionError("the fused path ran for CPU tensors under kernel='auto'")

    monkeypatch.setattr(_triton.TritonKernel, "sums", refuse)
    rng = _rng()
    q, k = _tensor(rng.normal(size=(6, 5))), _tensor(rng.normal(size=(6, 5)))
    auto = tfree_torch.info_nce(q, k, symmetric=True)
    portable = tfree_torch.info_nce(q, k, symmetric=True, kernel="portable")
    assert torch.equal(auto, portable)


def _fake_cuda_call():
    """A supported call whose first tensor claims to be on CUDA (``use_fused`` reads the
    device and the static problem only)."""
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    problem = problem_for("pairs", (q, k, None, None), symmetric=True, logit_map="arctanh",
                          temperature=None, eps=1e-6, reduction="mean")
    fake = SimpleNamespace(device=torch.device("cuda"), shape=q.shape)
    return problem, (fake, k, None, None)


def test_auto_on_cuda_uses_the_kernels_when_triton_is_there(monkeypatch):
    problem, arrays = _fake_cuda_call()
    monkeypatch.setattr(_triton, "available", lambda: True)
    assert not _triton.use_fused("auto", problem, arrays)  # not yet verified on a GPU
    monkeypatch.setattr(_triton, "AUTO_SELECTS_FUSED", True)
    assert _triton.use_fused("auto", problem, arrays)
    assert not _triton.use_fused("portable", problem, arrays)


def test_auto_falls_back_without_triton(monkeypatch):
    problem, arrays = _fake_cuda_call()
    monkeypatch.setattr(_triton, "AUTO_SELECTS_FUSED", True)
    monkeypatch.setattr(_triton, "available", lambda: False)
    assert not _triton.use_fused("auto", problem, arrays)
    with pytest.raises(ValueError, match="Triton is not installed"):
        _triton.use_fused("fused", problem, arrays)


def test_auto_falls_back_on_unsupported_options(monkeypatch):
    monkeypatch.setattr(_triton, "available", lambda: True)
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    problem = problem_for("pairs", (q, k, torch.tensor([0, 1, 0, 1]), None), symmetric=False,
                          logit_map="arctanh", temperature=None, eps=1e-6, reduction="mean")
    fake = SimpleNamespace(device=torch.device("cuda"), shape=q.shape)
    assert not _triton.use_fused("auto", problem, (fake, k, torch.tensor([0, 1, 0, 1]), None))


# --------------------------------------------------------------------------- kernels


def _value_and_grads(fn, inputs, cotangent=None, **kw):
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    loss = fn(*xs, **kw)
    out = loss.sum() if cotangent is None else (loss * cotangent).sum()
    return loss.detach(), [g.detach() for g in torch.autograd.grad(out, xs)]


def _close(fused, portable, dtype):
    (lf, gf), (lp, gp) = fused, portable
    assert lf.dtype == lp.dtype
    for a, b in zip(gf, gp, strict=True):
        assert a.dtype == b.dtype
    rtol = 1e-12 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 2e-2)
    torch.testing.assert_close(lf, lp, rtol=rtol, atol=rtol)
    for a, b in zip(gf, gp, strict=True):
        scale = b.double().abs().max().item() or 1.0
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=rtol * scale)


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


CASES = [
    # (name, function, kwargs builder) over N=37 rows (two row blocks, D=20 padded to 32)
    ("pairs", False, None),
    ("pairs", True, None),
    ("pairs", True, "where"),
    ("pairs", False, "where"),
    ("nt_xent", False, None),
    ("nt_xent", False, "where"),
    ("negatives", False, "where"),
]


@interpreted
@pytest.mark.parametrize(("layout", "symmetric", "where"), CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_matches_the_portable_core_float64(layout, symmetric, where, reduction):
    n, d = 37, 20
    arrays, rng = _pair_inputs(n, d, m=70 if layout == "negatives" else None)
    xs = [_tensor(a) for a in arrays]
    kw = {"reduction": reduction}
    if where is not None:
        mask = rng.random(n) > 0.3
        mask[0] = False
        kw["where"] = torch.tensor(mask)
    if layout == "pairs":
        fn = lambda q, k, **kw: tfree_torch.info_nce(q, k, symmetric=symmetric, **kw)  # noqa: E731
    elif layout == "negatives":
        fn = lambda q, k, negs, **kw: tfree_torch.info_nce(q, k, negatives=negs, **kw)  # noqa: E731
    else:
        fn = tfree_torch.nt_xent
    rows = 2 * n if layout == "nt_xent" else n
    cot = _tensor(rng.normal(size=rows)) if reduction == "none" else None
    fused = _value_and_grads(fn, xs, cot, kernel="fused", **kw)
    portable = _value_and_grads(fn, xs, cot, kernel="portable", **kw)
    _close(fused, portable, torch.float64)
    assert torch.all(fused[1][0][2] == 0), "a zero row gets a zero gradient"


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_half_and_single_inputs_compute_in_float32(dtype):
    arrays, _ = _pair_inputs(33, 24)
    xs = [_tensor(a, dtype) for a in arrays]
    fused = _value_and_grads(tfree_torch.info_nce, xs, kernel="fused", symmetric=True)
    portable = _value_and_grads(tfree_torch.info_nce, xs, kernel="portable", symmetric=True)
    assert fused[0].dtype == torch.float32
    assert all(g.dtype == dtype for g in fused[1])
    _close(fused, portable, dtype)


@interpreted
@pytest.mark.parametrize("layout", ["pairs_symmetric", "nt_xent"])
def test_fused_gradient_matches_finite_differences(layout):
    """Directional derivatives of the fused loss against central differences (float64)."""
    rng = _rng()
    z1, z2 = (_tensor(rng.normal(size=(9, 6))) for _ in range(2))
    fn = (lambda a, b: tfree_torch.info_nce(a, b, symmetric=True, kernel="fused")) if (
        layout == "pairs_symmetric") else (lambda a, b: tfree_torch.nt_xent(a, b, kernel="fused"))
    _, grads = _value_and_grads(fn, [z1, z2])
    h = 1e-6
    for _ in range(2):
        v1, v2 = (_tensor(rng.normal(size=(9, 6))) for _ in range(2))
        with torch.no_grad():
            diff = (fn(z1 + h * v1, z2 + h * v2) - fn(z1 - h * v1, z2 - h * v2)) / (2 * h)
        analytic = (grads[0] * v1).sum() + (grads[1] * v2).sum()
        assert abs(diff.item() - analytic.item()) <= 1e-7 * max(1.0, abs(analytic.item()))


@interpreted
def test_fused_identical_views_hit_the_cap():
    """SPEC §4: identical orthonormal views, N = 4: L = log(1 + 3·e^(-φ(b)))."""
    q = torch.eye(4, 8, dtype=torch.float64)
    loss = tfree_torch.info_nce(q, q.clone(), kernel="fused")
    assert loss.item() == pytest.approx(1.49999962e-6, rel=1e-7)


@interpreted
def test_fused_is_differentiable_once():
    q = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad(tfree_torch.info_nce(q, k, kernel="fused"), q,
                               create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.sum().backward()


@interpreted
def test_fused_kernel_sums_match_a_dense_reference():
    """The kernels alone, against dense sums, with M not a multiple of the column tile
    and both masks and the NT-Xent partner."""
    from tfree_core.engine import Tiling

    rng = _rng()
    n, d, b = 70, 12, 1 - 1e-6
    u = torch.nn.functional.normalize(_tensor(rng.normal(size=(n, d))), dim=1)
    ok = torch.tensor(rng.random(n) > 0.2)
    partner = torch.arange(n).roll(n // 2)
    t = Tiling(u, u, where_rows=ok, where_cols=ok, diagonal=True, partner=partner)
    keep = (~torch.eye(n, dtype=bool)) & ok[:, None] & ok[None, :]
    keep &= torch.arange(n)[None, :] != partner[:, None]
    c = (u @ u.T).clamp(-b, b)
    ratio = torch.where(keep, (1 + c) / (1 - c), 0)
    rows, cols = _triton.KERNEL.sums(t, b, True)
    torch.testing.assert_close(rows, ratio.sum(1), rtol=1e-13, atol=0)
    torch.testing.assert_close(cols, ratio.sum(0), rtol=1e-13, atol=0)
    a, s = _tensor(rng.random(n)), _tensor(rng.random(n))
    g = torch.where(keep, 2 / (1 - c) ** 2, 0) * (a[:, None] + s[None, :])
    du_a, du_c = _triton.KERNEL.grads(t, b, a, s)
    torch.testing.assert_close(du_a, g @ u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(du_c, g.T @ u, rtol=1e-12, atol=1e-12)


@interpreted
def test_fused_kernel_on_a_row_block_drops_global_indices():
    """A rank's row block (``group=``): anchors are candidates ``offset .. offset + n - 1``
    of the gathered set; the self-pair and the NT-Xent partner are global indices, in
    ``S`` (the sums and ``G·U_c``) and in ``Sᵀ`` (``Gᵀ·U_a``) alike."""
    from tfree_core.engine import Tiling

    rng = _rng()
    n, world, rank, d, b = 10, 3, 1, 12, 1 - 1e-6
    m, offset = world * n, rank * n
    u = torch.nn.functional.normalize(_tensor(rng.normal(size=(m, d))), dim=1)
    a = u[offset:offset + n]
    ok = torch.tensor(rng.random(m) > 0.2)
    partner = offset + torch.arange(n).roll(n // 2)  # i ± n/2 within the block
    t = Tiling(a, u, where_rows=ok[offset:offset + n], where_cols=ok, diagonal=True,
               partner=partner, row_offset=offset)
    cols = torch.arange(m)[None, :]
    keep = (cols != offset + torch.arange(n)[:, None]) & (cols != partner[:, None])
    keep &= ok[offset:offset + n, None] & ok[None, :]
    c = (a @ u.T).clamp(-b, b)
    ratio = torch.where(keep, (1 + c) / (1 - c), 0)
    rows, col_sums = _triton.KERNEL.sums(t, b, True)
    torch.testing.assert_close(rows, ratio.sum(1), rtol=1e-13, atol=0)
    torch.testing.assert_close(col_sums, ratio.sum(0), rtol=1e-13, atol=0)
    sa, sc = _tensor(rng.random(n)), _tensor(rng.random(m))
    g = torch.where(keep, 2 / (1 - c) ** 2, 0) * (sa[:, None] + sc[None, :])
    du_a, du_c = _triton.KERNEL.grads(t, b, sa, sc)
    torch.testing.assert_close(du_a, g @ u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(du_c, g.T @ a, rtol=1e-12, atol=1e-12)
