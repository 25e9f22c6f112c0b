"""tfree_torch in eager mode: gradcheck, agreement with the NumPy core (1e-12 in float64)
and with torch autograd of a plain transcription, dtypes, errors, double backward."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import tfree_torch  # noqa: E402
from test_torch_cases import cases, torch_call, torch_inputs  # noqa: E402

import tfree_core  # noqa: E402

CASES = cases()
REDUCTIONS = ("mean", "sum", "none")
MAPS = {"arctanh": {}, "temperature": {"logit_map": "temperature", "temperature": 0.3}}
B64 = tfree_core.clip_bound(1e-6, float64=True)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _weights(case, loss: torch.Tensor) -> torch.Tensor | None:
    """A fixed cotangent for ``reduction="none"`` (so every per-anchor loss is checked)."""
    if loss.ndim == 0:
        return None
    gen = torch.Generator().manual_seed(7)
    return torch.rand(loss.shape, generator=gen, dtype=loss.dtype).to(loss.device) + 0.5


# --------------------------------------------------------------------------- the core


@pytest.mark.parametrize("map_name", list(MAPS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_matches_numpy_core(case, reduction, map_name):
    options = {"reduction": reduction, **MAPS[map_name]}
    xs = torch_inputs(case)
    loss = torch_call(case, xs, **options)
    w = _weights(case, loss)
    grads = torch.autograd.grad(loss if w is None else (loss * w).sum(), xs)
    cot = None if w is None else w.numpy()
    core_loss, core_grads = case.value_and_grad(**case.inputs, **case.extra, **options,
                                                cotangent=cot)
    assert loss.dtype == torch.float64
    np.testing.assert_allclose(loss.detach().numpy(), core_loss, rtol=1e-12, atol=1e-12)
    for g, cg in zip(grads, core_grads, strict=True):
        assert g.dtype == torch.float64
        np.testing.assert_allclose(g.numpy(), cg, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    ("reduction", "map_name"),
    [("mean", "arctanh"), ("sum", "arctanh"), ("none", "arctanh"), ("mean", "temperature")],
)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_gradcheck(case, reduction, map_name):
    options = {"reduction": reduction, **MAPS[map_name]}
    xs = torch_inputs(case)
    assert torch.autograd.gradcheck(
        lambda *t: torch_call(case, list(t), **options), xs, eps=1e-6, atol=1e-7, rtol=1e-5
    )


def test_gradcheck_eps_and_grad_of_negatives_only():
    """A user-set eps; gradients requested for one input only (here the negatives)."""
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(
        4, 3, generator=gen, dtype=torch.float64)
    negs = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda n: tfree_torch.info_nce(q, k, negatives=n, eps=1e-3), (negs,)
    )


# --------------------------------------------------------------------------- plain autograd


def _plain_logits(s: torch.Tensor) -> torch.Tensor:
    return 2 * torch.atanh(s.clamp(-B64, B64))


def _plain(layout: str, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor):
    """Plain transcriptions, differentiated by torch autograd."""
    n = z1.shape[0]
    if layout == "pairs":
        s = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
        return F.cross_entropy(_plain_logits(s), torch.arange(n))
    if layout == "pairs_symmetric":
        logits = _plain_logits(F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T)
        target = torch.arange(n)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    if layout == "nt_xent":
        u = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = _plain_logits(u @ u.T)
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), -math.inf)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(logits, target)
    # sup_con, 2-D
    u = F.normalize(z1, dim=1)
    logits = _plain_logits(u @ u.T)
    eye = torch.eye(n, dtype=torch.bool)
    log_prob = logits - torch.logsumexp(logits.masked_fill(eye, -math.inf), dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(1)
    per_anchor = -(log_prob * positive).sum(1) / count.clamp(min=1)
    return per_anchor[count > 0].mean()


@pytest.mark.parametrize("layout", ["pairs", "pairs_symmetric", "nt_xent", "sup_con"])
def test_matches_plain_autograd(layout):
    """Away from clip ties and zero rows, the analytic gradient is autograd's."""
    gen = torch.Generator().manual_seed(11)
    z1 = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    expected = _plain(layout, z1, z2, labels)
    if layout == "pairs":
        got = tfree_torch.info_nce(z1, z2)
    elif layout == "pairs_symmetric":
        got = tfree_torch.info_nce(z1, z2, symmetric=True)
    elif layout == "nt_xent":
        got = tfree_torch.nt_xent(z1, z2)
    else:
        got = tfree_torch.sup_con(z1, labels) + 0 * z2.sum()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got, (z1, z2), allow_unused=True)
    g_exp = torch.autograd.grad(expected, (z1, z2), allow_unused=True)
    for a, b in zip(g_got, g_exp, strict=True):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- dtypes, devices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "pairs-symmetric", "negatives-per-row-where", "nt_xent", "sup_con-3d-where", "similarity",
)], ids=repr)
def test_dtypes(case, dtype, device):
    """Half inputs compute in float32 (SPEC §2.2): loss float32 (float64 for float64),
    gradients in the input dtype, on the input's device, and equal to the float64 core on
    the same rounded inputs up to float32 rounding (plus the cast of the gradient)."""
    xs = torch_inputs(case, dtype, device)
    loss = torch_call(case, xs)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == compute
    assert loss.device.type == device
    grads = torch.autograd.grad(loss, xs)
    rounded = {name: x.detach().cpu().double().numpy() for name, x in zip(case.inputs, xs,
                                                                              strict=True)}
    core_loss, core_grads = case.value_and_grad(**rounded, **case.extra)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2,
           torch.float16: 2e-3}[dtype]
    np.testing.assert_allclose(loss.item(), core_loss, rtol=max(tol, 1e-5) if dtype !=
                               torch.float64 else tol)
    for g, cg in zip(grads, core_grads, strict=True):
        assert g.dtype == dtype
        assert g.device.type == device
        scale = np.abs(cg).max()
        np.testing.assert_allclose(g.double().cpu().numpy(), cg, atol=tol * scale,
                                   rtol=tol)


def test_mixed_dtypes_and_libraries_are_errors():
    q = torch.randn(4, 3)
    with pytest.raises(TypeError, match="same dtype"):
        tfree_torch.info_nce(q, q.double())
    with pytest.raises(TypeError, match="floating"):
        tfree_torch.info_nce(q.long(), q.long())
    with pytest.raises(TypeError, match="integer"):
        tfree_torch.sup_con(q, torch.zeros(4))


def test_layout_conflicts_and_shapes_are_errors():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        tfree_torch.info_nce(q, q, negatives=q, labels=torch.arange(4))
    with pytest.raises(ValueError, match="symmetric"):
        tfree_torch.info_nce(q, q, negatives=q, symmetric=True)
    with pytest.raises(ValueError, match="key"):
        tfree_torch.info_nce(q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="where"):
        tfree_torch.nt_xent(q, q, where=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="eps"):
        tfree_torch.info_nce(q, q, eps=0.7)
    with pytest.raises(ValueError, match="temperature"):
        tfree_torch.info_nce(q, q, temperature=0.1)
    with pytest.raises(TypeError, match="eps"):
        tfree_torch.info_nce(q, q, eps=[1e-6])


def test_similarity_positive_outside_valid_is_an_error():
    s = torch.zeros(3, 4)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[0, 0] = False
    positive = torch.zeros(3, 4, dtype=torch.bool)
    positive[0, 0] = True
    with pytest.raises(ValueError, match="inside valid_mask"):
        tfree_torch.loss_from_similarity(s, positive, valid_mask=valid)


# --------------------------------------------------------------------------- autograd details


def test_double_backward_is_a_clear_error():
    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(tfree_torch.info_nce(q, k), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        (g * g).sum().backward()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.func.grad(lambda x: torch.func.grad(tfree_torch.info_nce)(x, k).sum())(q)


def test_first_order_with_create_graph_still_correct():
    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 3, dtype=torch.float64)
    (g1,) = torch.autograd.grad(tfree_torch.info_nce(q, k), q, create_graph=True)
    (g2,) = torch.autograd.grad(tfree_torch.info_nce(q, k), q)
    torch.testing.assert_close(g1.detach(), g2, rtol=0, atol=0)


def _saved_by(loss_fn):
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    return loss, saved


def test_only_what_the_formula_needs_is_saved():
    """One direction with a scalar reduction: the gradient is computed in the forward, so
    nothing N×N is saved (only the two (N, D) gradients). A symmetric loss keeps one N×N
    float matrix (S) for the backward; the core may add one N×N boolean candidate mask (a
    quarter of S's bytes in float32), nothing more."""
    n = 64
    q = torch.randn(n, 8, requires_grad=True)
    k = torch.randn(n, 8, requires_grad=True)
    loss, saved = _saved_by(lambda: tfree_torch.info_nce(q, k))
    assert not [t for t in saved if t.numel() >= n * n]
    assert sum(t.numel() for t in saved) <= 4 * n * 8  # two gradients (+ the inputs)
    loss.backward()

    loss, saved = _saved_by(lambda: tfree_torch.info_nce(q, k, symmetric=True))
    square = [t for t in saved if t.numel() >= n * n]
    floats = [t for t in square if t.is_floating_point()]
    assert len(floats) == 1, [(tuple(t.shape), t.dtype) for t in square]
    assert floats[0].dtype == torch.float32
    assert len(square) - len(floats) <= 1
    loss.backward()


def test_gradient_in_forward_matches_the_core_backward():
    """The one-pass route (gradient in the forward, scaled by the cotangent in the
    backward) against the core's separate backward, for a non-unit cotangent."""
    from tfree_torch._namespace import xp

    from tfree_core import engine

    torch.manual_seed(3)
    q = torch.randn(37, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(37, 6, dtype=torch.float64, requires_grad=True)
    for chunk in (None, 8):
        loss = tfree_torch.info_nce(q, k, chunk_size=chunk)
        (2.5 * loss).backward()
        problem = engine.prepare("pairs", (q.detach(), k.detach(), None, None),
                                 options=engine.make_options(), chunk_size=chunk, xp=xp)
        value, res = engine.forward(problem, (q.detach(), k.detach(), None, None), xp)
        ref = engine.backward(problem, res, torch.tensor(2.5, dtype=torch.float64), xp)
        torch.testing.assert_close(loss.detach(), value, rtol=1e-14, atol=0)
        torch.testing.assert_close(q.grad, ref[0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(k.grad, ref[1], rtol=1e-12, atol=1e-15)
        q.grad = k.grad = None


def test_no_grad_and_detached_inputs():
    q = torch.randn(4, 3)
    with torch.no_grad():
        loss = tfree_torch.info_nce(q, q)
    assert not loss.requires_grad
    assert not tfree_torch.info_nce(q, q).requires_grad


# --------------------------------------------------------------------------- values


def test_sanity_values():
    """SPEC §4: orthogonal embeddings give log N (pairs) and log(2N - 1) (NT-Xent)."""
    eye = torch.eye(8, dtype=torch.float64)
    assert tfree_torch.info_nce(eye[:4], eye[4:]).item() == pytest.approx(math.log(4))
    assert tfree_torch.nt_xent(eye[:4], eye[4:]).item() == pytest.approx(math.log(7))
    tiny = tfree_torch.info_nce(eye[:4], eye[:4]).item()
    assert tiny == pytest.approx(1.49999962e-6, rel=1e-6)


def test_logits():
    s = torch.tensor([0.5, 0.9, 1.0, -1.0, 0.0], dtype=torch.float64, requires_grad=True)
    out = tfree_torch.logits(s)
    assert out[0].item() == pytest.approx(math.log(3), rel=1e-15)
    assert out[1].item() == pytest.approx(math.log(19), rel=1e-15)
    assert out[2].item() == pytest.approx(14.508657, abs=1e-6)
    assert out[3].item() == pytest.approx(-14.508657, abs=1e-6)
    (g,) = torch.autograd.grad(out.sum(), s)
    assert g[0].item() == pytest.approx(2 / 0.75)
    assert g[2].item() == 0.0
    assert g[4].item() == pytest.approx(2.0)
    half = tfree_torch.logits(torch.tensor([0.5], dtype=torch.bfloat16))
    assert half.dtype == torch.float32
    assert tfree_torch.logits(torch.tensor([1.0])).item() == pytest.approx(14.495466, abs=1e-5)


# --------------------------------------------------------------------------- tiled


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.loss is not tfree_core.loss_from_similarity], ids=repr
)
def test_chunked_equals_untiled(case, reduction):
    """``chunk_size`` (blocks of 2 rows of 5, the last one padded) changes nothing but
    round-off: loss and gradients equal the untiled ones, and the core's tiled path."""
    xs = torch_inputs(case)
    loss = torch_call(case, xs, reduction=reduction, chunk_size=2)
    w = _weights(case, loss)
    grads = torch.autograd.grad(loss if w is None else (loss * w).sum(), xs)
    ys = torch_inputs(case)
    expected = torch_call(case, ys, reduction=reduction)
    expected_grads = torch.autograd.grad(expected if w is None else (expected * w).sum(), ys)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-14)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["pairs-labels-symmetric-where", "negatives-per-row-where",
                                  "sup_con-3d-where"])
def test_chunked_gradcheck(name):
    case = next(c for c in CASES if c.name == name)
    xs = torch_inputs(case)
    assert torch.autograd.gradcheck(
        lambda *t: torch_call(case, list(t), chunk_size=2), xs, eps=1e-6, atol=1e-7
    )


def test_chunked_keeps_no_matrix():
    n = 64
    q = torch.randn(n, 8, requires_grad=True)
    k = torch.randn(n, 8, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = tfree_torch.info_nce(q, k, symmetric=True, chunk_size=16)
    assert all(t.numel() < n * n for t in saved), [tuple(t.shape) for t in saved]
    loss.backward()


def test_chunk_size_errors():
    s = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        tfree_torch.loss_from_similarity(s, s > 0, chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size"):
        tfree_torch.info_nce(s, s, chunk_size=0)
