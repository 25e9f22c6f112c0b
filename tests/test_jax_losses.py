"""tfree_jax: gradients (check_grads), agreement with the NumPy core and with ``jax.grad`` of
a plain transcription, for every layout × reduction × logit map, with and without masks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import tfree_jax  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import tfree_core  # noqa: E402

LAYOUTS = (
    "pairs", "pairs_symmetric", "pairs_labels", "pairs_labels_symmetric", "negatives_shared",
    "negatives_per_row", "nt_xent", "sup_con_2d", "sup_con_3d", "similarity",
)
REDUCTIONS = ("mean", "sum", "none")
MAPS = (("arctanh", None), ("temperature", 0.3))


pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 stays float64 in JAX


@dataclass
class Case:
    """One call: differentiable inputs (in the core's gradient order), the other arguments."""

    layout: str
    jax_fn: Any
    core_fn: Any
    diff: dict[str, np.ndarray]
    other: dict[str, Any] = field(default_factory=dict)

    def jax_call(self, *xs, **kw):
        return self.jax_fn(**dict(zip(self.diff, xs, strict=True)),
                           **{k: _to_jax(v) for k, v in self.other.items()}, **kw)

    def core_value_and_grad(self, **kw):
        return self.core_fn(**self.diff, **self.other, **kw)


def _to_jax(v):
    return jnp.asarray(v) if isinstance(v, np.ndarray) else v


def make_case(layout: str, masked: bool, seed: int = 0) -> Case:
    """Small float64 problems, similarities well inside (-1, 1) (away from clip ties).

    Every layout has 10 anchors, 10×10 similarities and 3 features, so that eager JAX
    reuses its per-operation compilations across layouts.
    """
    rng = np.random.default_rng(seed)
    n, d = 10, 3
    half = rng.standard_normal((n // 2, d))
    q = rng.standard_normal((n, d))
    k = q + 0.8 * rng.standard_normal((n, d))
    labels = np.array([0, 1, 0, 2, 1, 1, 0, 3, 2, 0])
    where = np.arange(n) % 4 != 2 if masked else None
    other: dict[str, Any] = {} if where is None else {"where": where}
    if layout.startswith("pairs"):
        if "labels" in layout:
            other["labels"] = labels
        if "symmetric" in layout:
            other["symmetric"] = True
        return Case(layout, tfree_jax.info_nce, tfree_core.info_nce_value_and_grad,
                    {"query": q, "key": k}, other)
    if layout.startswith("negatives"):
        neg = rng.standard_normal((n - 1, d) if layout == "negatives_shared" else (n, n - 1, d))
        return Case(layout, tfree_jax.info_nce, tfree_core.info_nce_value_and_grad,
                    {"query": q, "key": k, "negatives": neg}, other)
    if layout == "nt_xent":
        other = {} if where is None else {"where": where[: n // 2]}
        return Case(layout, tfree_jax.nt_xent, tfree_core.nt_xent_value_and_grad,
                    {"z1": half, "z2": half + 0.8 * rng.standard_normal((n // 2, d))}, other)
    if layout == "sup_con_2d":
        return Case(layout, tfree_jax.sup_con, tfree_core.sup_con_value_and_grad,
                    {"features": q}, {"labels": labels, **other})
    if layout == "sup_con_3d":
        views = np.stack([half, half + 0.8 * rng.standard_normal((n // 2, d))], axis=1)
        other = {"labels": labels[: n // 2]}
        if masked:
            other["where"] = where[: n // 2]
        return Case(layout, tfree_jax.sup_con, tfree_core.sup_con_value_and_grad,
                    {"features": views}, other)
    s = rng.uniform(-0.9, 0.9, (n, n))
    positive = np.eye(n, dtype=bool)
    positive[0, 3] = True  # a second positive for anchor 0
    valid = positive | (rng.uniform(size=(n, n)) < 0.7)
    return Case(layout, tfree_jax.loss_from_similarity,
                tfree_core.loss_from_similarity_value_and_grad,
                {"similarity": s}, {"positive_mask": positive, "valid_mask": valid, **other})


def _kw(reduction: str, logit_map: str, temperature: float | None) -> dict:
    return {"reduction": reduction, "logit_map": logit_map, "temperature": temperature}


def _cotangent(loss_shape: tuple[int, ...], seed: int = 1) -> np.ndarray | float:
    if not loss_shape:
        return 1.0
    return np.random.default_rng(seed).uniform(0.5, 1.5, loss_shape)


def _jax_value_and_grad(case: Case, cot, **kw):
    loss, vjp = jax.vjp(lambda *ys: case.jax_call(*ys, **kw),
                        *(jnp.asarray(x) for x in case.diff.values()))
    return loss, vjp(jnp.asarray(cot, loss.dtype) * jnp.ones_like(loss))


PARAMS = [
    pytest.param(layout, reduction, logit_map, tau, masked,
                 id=f"{layout}-{reduction}-{logit_map}{'-where' if masked else ''}")
    for layout in LAYOUTS
    for reduction in REDUCTIONS
    for logit_map, tau in MAPS
    for masked in (False, True)
]


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(("layout", "reduction", "logit_map", "tau", "masked"), PARAMS)
def test_check_grads_reverse_mode(layout, reduction, logit_map, tau, masked):
    """Finite differences agree with the custom VJP (float64)."""
    case = make_case(layout, masked)
    kw = _kw(reduction, logit_map, tau)
    check_grads(lambda *xs: case.jax_call(*xs, **kw),
                tuple(jnp.asarray(x) for x in case.diff.values()),
                order=1, modes=["rev"], eps=1e-5, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- the core


@pytest.mark.parametrize(("layout", "reduction", "logit_map", "tau", "masked"), PARAMS)
def test_agrees_with_numpy_core(layout, reduction, logit_map, tau, masked):
    """Loss and gradients equal the NumPy core's to 1e-12 (float64); eager here, under jit in
    test_jax_transforms.py."""
    case = make_case(layout, masked)
    kw = _kw(reduction, logit_map, tau)
    want_loss = case.core_fn(**case.diff, **case.other, **kw, cotangent=None)[0]
    cot = _cotangent(np.shape(want_loss))
    want_loss, want_grads = case.core_value_and_grad(
        **kw, cotangent=cot if np.ndim(cot) == 0 else np.asarray(cot))
    loss, grads = _jax_value_and_grad(case, cot, **kw)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(want_grads)
    for got, want in zip(grads, want_grads, strict=True):
        assert got.dtype == jnp.float64
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- plain autodiff


def _plain_normalize(z):
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def _plain_anchor_losses(s, cand, pos, logit_map, tau, eps=1e-6):
    """SPEC §2.6 written directly: ``-(1/|P|) Σ_p [ℓ_ip - logsumexp_C ℓ_ij]``, 0 if P = ∅."""
    if logit_map == "temperature":
        ell = s / tau
    else:
        b = tfree_core.clip_bound(eps, float64=True)
        ell = 2 * jnp.arctanh(jnp.clip(s, -b, b))
    ell_c = jnp.where(cand, ell, -1e30)
    lse = jax.nn.logsumexp(ell_c, axis=1)
    count = jnp.sum(pos, axis=1)
    mean_pos = jnp.sum(jnp.where(pos, ell, 0.0), axis=1) / jnp.maximum(count, 1)
    return jnp.where(count > 0, lse - mean_pos, 0.0), count


def _plain_reduce(losses, count, reduction):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses)
    return jnp.sum(losses) / jnp.maximum(jnp.sum(count > 0), 1)


def plain_loss(case: Case, *xs, reduction, logit_map, temperature):
    """A transcription of SPEC §2-§3 in plain jax.numpy, differentiated by jax.grad."""
    args = dict(zip(case.diff, xs, strict=True))
    other = {k: _to_jax(v) for k, v in case.other.items()}
    where = other.get("where")
    layout = case.layout

    def losses(s, cand, pos):
        pos = pos & cand
        return _plain_anchor_losses(s, cand, pos, logit_map, temperature)

    def rows_cols(w):
        return w[:, None] & w[None, :]

    if layout.startswith("pairs"):
        s = _plain_normalize(args["query"]) @ _plain_normalize(args["key"]).T
        n = s.shape[0]
        labels = other.get("labels")
        pos = jnp.eye(n, dtype=bool) if labels is None else labels[:, None] == labels[None, :]
        cand = jnp.ones_like(pos) if where is None else rows_cols(where)
        out = _plain_reduce(*losses(s, cand, pos), reduction)
        if other.get("symmetric"):
            out = (out + _plain_reduce(*losses(s.T, cand.T, pos.T), reduction)) / 2
        return out
    if layout.startswith("negatives"):
        uq, uk = _plain_normalize(args["query"]), _plain_normalize(args["key"])
        un = _plain_normalize(args["negatives"])
        s_neg = uq @ un.T if un.ndim == 2 else jnp.einsum("nd,nmd->nm", uq, un)
        s = jnp.concatenate([jnp.sum(uq * uk, axis=1, keepdims=True), s_neg], axis=1)
        pos = jnp.zeros(s.shape, bool).at[:, 0].set(True)
        cand = jnp.ones_like(pos) if where is None else jnp.broadcast_to(where[:, None], s.shape)
        return _plain_reduce(*losses(s, cand, pos), reduction)
    if layout == "nt_xent":
        u = _plain_normalize(jnp.concatenate([args["z1"], args["z2"]]))
        s = u @ u.T
        n2 = s.shape[0]
        idx = jnp.arange(n2)
        pos = idx[None, :] == (idx[:, None] + n2 // 2) % n2
        cand = ~jnp.eye(n2, dtype=bool)
        if where is not None:
            cand = cand & rows_cols(jnp.concatenate([where, where]))
        return _plain_reduce(*losses(s, cand, pos), reduction)
    if layout.startswith("sup_con"):
        feats, labels = args["features"], other["labels"]
        if feats.ndim == 3:
            n, v, d = feats.shape
            feats = jnp.transpose(feats, (1, 0, 2)).reshape(v * n, d)
            labels = jnp.tile(labels, v)
            where = None if where is None else jnp.tile(where, v)
        u = _plain_normalize(feats)
        s = u @ u.T
        cand = ~jnp.eye(s.shape[0], dtype=bool)
        if where is not None:
            cand = cand & rows_cols(where)
        out = _plain_reduce(*losses(s, cand, labels[:, None] == labels[None, :]), reduction)
        if reduction == "none" and args["features"].ndim == 3:
            out = out.reshape(v, n).T
        return out
    s = args["similarity"]
    cand = other["valid_mask"]
    if where is not None:
        cand = cand & where[:, None]
    return _plain_reduce(*losses(s, cand, other["positive_mask"]), reduction)


@pytest.mark.parametrize(("layout", "reduction", "logit_map", "tau", "masked"), [
    p for p in PARAMS if p.values[1] == "none" and p.values[2] == "arctanh" and p.values[-1]
])
def test_agrees_with_autodiff_of_plain_transcription(layout, reduction, logit_map, tau, masked):
    """Away from clip ties, autodiff of the plain formula gives the same per-anchor losses
    and the same gradient under a random cotangent (the temperature-free map, with a row
    mask, which exercises every mask path; the reductions and the temperature map are
    covered by check_grads and by the core)."""
    case = make_case(layout, masked, seed=3)
    kw = _kw(reduction, logit_map, tau)
    xs = tuple(jnp.asarray(x) for x in case.diff.values())
    want, want_vjp = jax.vjp(lambda *ys: plain_loss(case, *ys, **kw), *xs)
    got, got_vjp = jax.vjp(lambda *ys: case.jax_call(*ys, **kw), *xs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)
    cot = jnp.asarray(_cotangent(want.shape), jnp.float64)
    for g, w in zip(got_vjp(cot), want_vjp(cot), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- SPEC §4 values


def test_sanity_values():
    n = 4
    basis = jnp.eye(2 * n, dtype=jnp.float64)
    eye, ortho = basis[:n], basis[n:]  # every query orthogonal to every key: S = 0
    pairs = jax.jit(jax.value_and_grad(tfree_jax.info_nce))
    assert math.isclose(float(pairs(eye, ortho)[0]), math.log(n), rel_tol=1e-14)
    assert math.isclose(float(jax.jit(tfree_jax.nt_xent)(eye, ortho)), math.log(2 * n - 1),
                        rel_tol=1e-14)
    # Identical views: every positive past the cap, every negative at 0.
    same, dq = pairs(eye, eye)
    assert math.isclose(float(same), 1.49999962e-6, rel_tol=1e-7)
    assert 0 < float(jnp.max(jnp.abs(dq))) < 1e-5  # the negatives still push


def test_logits_values_and_caps():
    phi = tfree_jax.logits(jnp.asarray([0.5, 0.9, 1.0, -1.0, 2.0], jnp.float64))
    np.testing.assert_allclose(np.asarray(phi)[:2], [math.log(3), math.log(19)], rtol=1e-15)
    assert math.isclose(float(phi[2]), 14.508657, rel_tol=1e-7)
    assert float(phi[3]) == -float(phi[2])
    assert float(phi[4]) == float(phi[2])
    cap32 = tfree_jax.logits(jnp.asarray([1.0], jnp.float32))
    assert cap32.dtype == jnp.float32
    assert math.isclose(float(cap32[0]), 14.495466, rel_tol=1e-6)


def test_logits_derivative_at_the_bounds_is_the_full_slope():
    b = tfree_core.clip_bound(1e-6, float64=True)
    s = jnp.asarray([0.3, b, -b, np.nextafter(b, 2.0), 1.0], jnp.float64)
    grad = jax.grad(lambda x: jnp.sum(tfree_jax.logits(x)))(s)
    want = [2 / (1 - 0.3**2), 2 / ((1 - b) * (1 + b)), 2 / ((1 - b) * (1 + b)), 0.0, 0.0]
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-15)
    # custom_jvp: forward mode works too and agrees.
    _, tangent = jax.jvp(tfree_jax.logits, (s,), (jnp.ones_like(s),))
    np.testing.assert_allclose(np.asarray(tangent), want, rtol=1e-15)
    np.testing.assert_allclose(np.diag(np.asarray(jax.jacfwd(tfree_jax.logits)(s))), want,
                               rtol=1e-15)


# --------------------------------------------------------------------------- errors


def test_argument_errors():
    q = jnp.ones((3, 2))
    with pytest.raises(ValueError, match="labels"):
        tfree_jax.info_nce(q, q, negatives=q, labels=jnp.arange(3))
    with pytest.raises(ValueError, match="symmetric"):
        tfree_jax.info_nce(q, q, negatives=q, symmetric=True)
    with pytest.raises(TypeError, match="same dtype"):
        tfree_jax.info_nce(q, q.astype(jnp.float32))
    with pytest.raises(ValueError, match="temperature"):
        tfree_jax.nt_xent(q, q, temperature=0.1)
    with pytest.raises(ValueError, match="eps"):
        tfree_jax.logits(q, eps=0.7)
    with pytest.raises(TypeError, match="integer"):
        tfree_jax.sup_con(q, jnp.ones(3))


def test_positive_outside_valid_checked_eagerly_only():
    s = jnp.zeros((2, 2))
    positive = jnp.eye(2, dtype=bool)
    valid = jnp.asarray([[True, True], [True, False]])
    with pytest.raises(ValueError, match="inside valid_mask"):
        tfree_jax.loss_from_similarity(s, positive, valid_mask=valid)
    with pytest.raises(ValueError, match="inside valid_mask"):
        jax.grad(lambda x: tfree_jax.loss_from_similarity(x, positive, valid_mask=valid))(s)
    # Under jit the values are unknown at trace time: the positive outside is ignored.
    jitted = jax.jit(lambda x, p, v: tfree_jax.loss_from_similarity(x, p, valid_mask=v))
    # Anchor 1 keeps no positive: the mean runs over anchor 0 alone.
    assert math.isclose(float(jitted(s, positive, valid)), math.log(2), rel_tol=1e-14)
