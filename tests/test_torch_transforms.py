"""tfree_torch under torch transforms: ``torch.compile(fullgraph=True)``, ``torch.func.grad``
and ``vmap``, ``torch.autocast``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tfree_torch  # noqa: E402
from test_torch_cases import cases, torch_call, torch_extra, torch_inputs  # noqa: E402

CASES = {c.name: c for c in cases()}


@pytest.fixture(autouse=True)
def _quiet_dynamo():
    # Dynamo warns about the functools.lru_cache helpers of array_api_compat.device
    # (reached through tfree_core's device_of); harmless, but noisy.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lru_cache.*", category=UserWarning)
        yield


# --------------------------------------------------------------------------- compile


@pytest.mark.parametrize(
    ("name", "backend", "chunk"),
    [
        ("pairs-symmetric-where", "inductor", {}),
        ("sup_con-3d-where", "aot_eager", {}),
        ("nt_xent-where", "aot_eager", {"chunk_size": 5}),
        ("similarity", "aot_eager", {}),
    ],
)
def test_compile_fullgraph_matches_eager(name, backend, chunk):
    """No graph break (``fullgraph=True``); Inductor once (slow to compile), Dynamo +
    AOTAutograd (``aot_eager``, the part a custom Function can break) for the others."""
    case = CASES[name]
    torch._dynamo.reset()
    fn = getattr(tfree_torch, case.loss.__name__)
    names = list(case.inputs)
    extra = torch_extra(case)
    compiled = torch.compile(
        lambda *xs: fn(**dict(zip(names, xs, strict=True)), **extra, **chunk,
                       reduction="none"),
        fullgraph=True,
        backend=backend,
    )
    xs = torch_inputs(case, torch.float32)
    loss = compiled(*xs)
    grads = torch.autograd.grad(loss.sum(), xs)
    ys = torch_inputs(case, torch.float32)
    expected = torch_call(case, ys, reduction="none")
    expected_grads = torch.autograd.grad(expected.sum(), ys)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "backend", "kw"),
    [
        ("pairs", "inductor", {}),
        ("negatives-per-row-where", "aot_eager", {"reduction": "sum"}),
        ("nt_xent-where", "aot_eager", {"chunk_size": 5}),
        ("sup_con-3d-where", "aot_eager", {}),
    ],
)
def test_compile_fullgraph_gradient_in_forward(name, backend, kw):
    """One direction, scalar reduction: the route that computes the gradient in the
    forward compiles without a graph break and gives the eager values and gradients."""
    case = CASES[name]
    torch._dynamo.reset()
    fn = getattr(tfree_torch, case.loss.__name__)
    names = list(case.inputs)
    extra = torch_extra(case)
    compiled = torch.compile(lambda *xs: fn(**dict(zip(names, xs, strict=True)), **extra, **kw),
                             fullgraph=True, backend=backend)
    xs = torch_inputs(case, torch.float32)
    loss = compiled(*xs)
    grads = torch.autograd.grad(3.0 * loss, xs)
    ys = torch_inputs(case, torch.float32)
    expected = fn(**dict(zip(names, ys, strict=True)), **extra, **kw)
    expected_grads = torch.autograd.grad(3.0 * expected, ys)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("no_grad", [False, True])
def test_compile_fullgraph_without_gradient(no_grad):
    """An evaluation step (inputs that need no gradient, or ``torch.no_grad``) compiles
    with ``fullgraph=True``: no autograd.Function is involved then."""
    case = CASES["pairs-symmetric-where"]
    torch._dynamo.reset()
    names = list(case.inputs)
    extra = torch_extra(case)
    compiled = torch.compile(
        lambda *xs: tfree_torch.info_nce(**dict(zip(names, xs, strict=True)), **extra),
        fullgraph=True, backend="aot_eager")
    xs = torch_inputs(case, torch.float32, grad=no_grad)
    if no_grad:
        with torch.no_grad():
            loss = compiled(*xs)
    else:
        loss = compiled(*xs)
    assert not loss.requires_grad
    expected = tfree_torch.info_nce(**dict(zip(names, xs, strict=True)), **extra)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-6)


def test_compile_dynamic_shapes_and_half():
    """A second batch size reuses the graph with symbolic sizes; bf16 in, float32 out."""
    torch._dynamo.reset()

    def step(q, k):
        return tfree_torch.info_nce(q, k, symmetric=True)

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (6, 9):
        gen = torch.Generator().manual_seed(n)
        q = torch.randn(n, 4, generator=gen).bfloat16().requires_grad_()
        k = torch.randn(n, 4, generator=gen).bfloat16().requires_grad_()
        loss = compiled(q, k)
        assert loss.dtype == torch.float32
        gq, gk = torch.autograd.grad(loss, (q, k))
        assert gq.dtype == gk.dtype == torch.bfloat16
        q2, k2 = q.detach().requires_grad_(), k.detach().requires_grad_()
        expected = step(q2, k2)
        eq, ek = torch.autograd.grad(expected, (q2, k2))
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gq, eq, rtol=2e-2, atol=1e-3)
        torch.testing.assert_close(gk, ek, rtol=2e-2, atol=1e-3)
    with pytest.raises(Exception, match=r"key has shape \(7, 4\): its axis 0 must match"):
        compiled(torch.randn(6, 4), torch.randn(7, 4))


# --------------------------------------------------------------------------- torch.func


def test_func_grad_matches_autograd():
    case = CASES["pairs-labels-symmetric-where"]
    xs = torch_inputs(case)
    extra = torch_extra(case)
    grads = torch.func.grad(
        lambda q, k: tfree_torch.info_nce(q, k, **extra), argnums=(0, 1)
    )(*[x.detach() for x in xs])
    expected = torch.autograd.grad(torch_call(case, xs), xs)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(("name", "chunk"), [
    ("pairs-symmetric", {}), ("negatives-per-row-where", {}), ("nt_xent-where", {}),
    ("sup_con-3d-where", {}), ("similarity", {}), ("pairs-labels-symmetric-where",
                                                   {"chunk_size": 2}),
])
def test_vmap_over_a_batch_of_problems(name, chunk):
    """``vmap`` over a leading batch of independent problems equals a Python loop, for the
    loss (``reduction="none"``) and for ``vmap(grad)``."""
    case = CASES[name]
    fn = getattr(tfree_torch, case.loss.__name__)
    names = list(case.inputs)
    extra = torch_extra(case)
    batch = [torch_inputs(case, grad=False)]
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        batch.append([x + 0.1 * torch.randn(x.shape, generator=gen, dtype=x.dtype)
                      for x in batch[0]])
    if name == "similarity":
        batch = [[x.clamp(-0.99, 0.99) for x in xs] for xs in batch]
    stacked = [torch.stack(xs) for xs in zip(*batch, strict=True)]

    def loss(*xs, reduction="mean"):
        return fn(**dict(zip(names, xs, strict=True)), **extra, **chunk, reduction=reduction)

    per_anchor = torch.func.vmap(lambda *xs: loss(*xs, reduction="none"))(*stacked)
    torch.testing.assert_close(
        per_anchor, torch.stack([loss(*xs, reduction="none") for xs in batch]),
        rtol=1e-12, atol=1e-13,
    )
    argnums = tuple(range(len(names)))
    grads = torch.func.vmap(torch.func.grad(loss, argnums=argnums))(*stacked)
    for i, xs in enumerate(batch):
        expected = torch.func.grad(loss, argnums=argnums)(*xs)
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g[i], e, rtol=1e-11, atol=1e-13)


def test_vmap_of_the_similarity_check_is_skipped():
    """The positives-inside-valid check reads values: eager only, not on batched tensors."""
    s = torch.rand(2, 3, 4) * 1.8 - 0.9
    positive = torch.zeros(3, 4, dtype=torch.bool)
    positive[:, 0] = True
    out = torch.func.vmap(
        lambda x: tfree_torch.loss_from_similarity(
            x, positive, valid_mask=torch.ones(3, 4, dtype=torch.bool)
        )
    )(s)
    assert out.shape == (2,)


# --------------------------------------------------------------------------- autocast


def test_autocast_bfloat16_linear():
    """Under CPU autocast a Linear gives bf16 embeddings; the loss computes them in float32
    (autocast is off inside), returns float32 and back-propagates into the Linear."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 5)
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k = encoder(x1), encoder(x2)
        assert q.dtype == torch.bfloat16
        loss = tfree_torch.info_nce(q, k, symmetric=True)
    assert loss.dtype == torch.float32
    loss.backward()
    assert encoder.weight.grad is not None
    assert encoder.weight.grad.dtype == torch.float32
    assert torch.isfinite(encoder.weight.grad).all()
    expected = tfree_torch.info_nce(q.detach().float(), k.detach().float(), symmetric=True)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=1e-6)
    # the same under autocast and under compile
    out = torch.compile(lambda a, b: tfree_torch.nt_xent(a, b), fullgraph=True,
                        backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = out(encoder(x1), encoder(x2))
    assert value.dtype == torch.float32
    np.testing.assert_allclose(
        value.item(), tfree_torch.nt_xent(q.detach(), k.detach()).item(), rtol=1e-5
    )
