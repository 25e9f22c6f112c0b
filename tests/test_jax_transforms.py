"""tfree_jax under JAX's transformations: jit, vmap, every dtype, and forward mode (refused
with a clear error)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import tfree_jax  # noqa: E402

import tfree_core  # noqa: E402

N, D = 6, 4


pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 stays float64 in JAX


def _data(seed: int = 0, batch: tuple[int, ...] = ()):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((*batch, N, D))
    k = q + 0.7 * rng.standard_normal((*batch, N, D))
    labels = rng.integers(0, 3, (*batch, N))
    where = rng.uniform(size=(*batch, N)) < 0.8
    return q, k, labels, where


# Each layout as (tfree_jax function, core value-and-grad, differentiable inputs, others).
def _layouts():
    q, k, labels, where = _data()
    neg = np.random.default_rng(1).standard_normal((N, 3, D))
    s = np.random.default_rng(2).uniform(-0.95, 0.95, (N, N))
    pos = np.eye(N, dtype=bool)
    return {
        "pairs": (tfree_jax.info_nce, tfree_core.info_nce_value_and_grad,
                  {"query": q, "key": k}, {"where": where}),
        "pairs_labels_symmetric": (tfree_jax.info_nce, tfree_core.info_nce_value_and_grad,
                                   {"query": q, "key": k},
                                   {"labels": labels, "symmetric": True, "where": where}),
        "negatives": (tfree_jax.info_nce, tfree_core.info_nce_value_and_grad,
                      {"query": q, "key": k, "negatives": neg}, {"where": where}),
        "nt_xent": (tfree_jax.nt_xent, tfree_core.nt_xent_value_and_grad,
                    {"z1": q, "z2": k}, {"where": where}),
        "sup_con_3d": (tfree_jax.sup_con, tfree_core.sup_con_value_and_grad,
                       {"features": np.stack([q, k], axis=1)}, {"labels": labels}),
        "similarity": (tfree_jax.loss_from_similarity,
                       tfree_core.loss_from_similarity_value_and_grad,
                       {"similarity": s}, {"positive_mask": pos, "valid_mask": (s > -0.5) | pos}),
    }


LAYOUTS = _layouts()


def _jaxify(other):
    return {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in other.items()}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_jit_value_and_grad_matches_core(name):
    fn, core, diff, other = LAYOUTS[name]
    names = list(diff)

    @jax.jit
    def run(xs, arrays, cot):
        def f(*ys):
            return fn(**dict(zip(names, ys, strict=True)), **arrays, reduction="none")

        loss, vjp = jax.vjp(f, *xs)
        return loss, vjp(cot)

    arrays = {k: v for k, v in _jaxify(other).items() if not isinstance(v, bool)}
    static = {k: v for k, v in other.items() if isinstance(v, bool)}
    if static:  # bools are hyper-parameters: close over them
        inner = fn
        fn = lambda **kw: inner(**kw, **static)  # noqa: E731
    want_loss = core(**diff, **other, reduction="none")[0]
    cot = np.random.default_rng(5).uniform(0.5, 1.5, want_loss.shape)
    want_loss, want_grads = core(**diff, **other, reduction="none", cotangent=cot)
    loss, grads = run(tuple(jnp.asarray(x) for x in diff.values()), arrays, jnp.asarray(cot))
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-12, atol=1e-13)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- vmap


def test_vmap_batch_of_problems():
    """vmap over a batch of independent problems (embeddings, labels and masks batched)
    equals the per-problem results, for the loss and its gradient (under jit: eager vmap
    compiles every batched operation separately, which only costs test time)."""
    batch = 3
    q, k, labels, where = _data(seed=7, batch=(batch,))

    def loss(q, k, labels, where):
        return tfree_jax.info_nce(q, k, labels=labels, where=where, symmetric=True)

    vg = jax.value_and_grad(loss, argnums=(0, 1))
    losses, (dq, dk) = jax.jit(jax.vmap(vg))(*(jnp.asarray(a) for a in (q, k, labels, where)))
    assert losses.shape == (batch,)
    assert dq.shape == q.shape
    assert dk.shape == k.shape
    for b in range(batch):
        want, (wq, wk) = tfree_core.info_nce_value_and_grad(
            q[b], k[b], labels=labels[b], where=where[b], symmetric=True)
        np.testing.assert_allclose(float(losses[b]), want, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(dq[b]), wq, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(np.asarray(dk[b]), wk, rtol=1e-12, atol=1e-13)


def test_vmap_shared_keys_and_per_anchor_losses():
    """in_axes=(0, None): a batch of queries against one key matrix, reduction="none"."""
    q, k, _, _ = _data(seed=8, batch=(2,))
    key = jnp.asarray(k[0])
    per_anchor = jax.vmap(lambda x: tfree_jax.nt_xent(x, key, reduction="none"))
    out = jax.jit(per_anchor)(jnp.asarray(q))
    assert out.shape == (2, 2 * N)
    for b in range(2):
        np.testing.assert_allclose(np.asarray(out[b]),
                                   tfree_core.nt_xent(q[b], k[0], reduction="none"), rtol=1e-12)
    grads = jax.jit(jax.grad(lambda x: jnp.sum(per_anchor(x))))(jnp.asarray(q))
    want = tfree_core.nt_xent_value_and_grad(q[1], k[0], reduction="none")[1][0]
    np.testing.assert_allclose(np.asarray(grads[1]), want, rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(("dtype", "rtol"), [
    ("float64", 1e-13), ("float32", 2e-5), ("bfloat16", 2e-2), ("float16", 2e-3),
])
def test_dtypes(dtype, rtol):
    """Loss in the compute dtype (float32 for half inputs), gradients in the input dtype, and
    the values of the float64 computation on the same (rounded) inputs."""
    q, k, labels, _where = _data(seed=11)
    dt = getattr(jnp, dtype)
    xq, xk = jnp.asarray(q).astype(dt), jnp.asarray(k).astype(dt)
    f = jax.jit(jax.value_and_grad(
        lambda a, b: tfree_jax.info_nce(a, b, labels=jnp.asarray(labels)), argnums=(0, 1)))
    loss, (dq, dk) = f(xq, xk)
    assert loss.dtype == (jnp.float64 if dtype == "float64" else jnp.float32)
    assert dq.dtype == dt
    assert dk.dtype == dt
    exact_q, exact_k = np.asarray(xq.astype(jnp.float64)), np.asarray(xk.astype(jnp.float64))
    want, (wq, wk) = tfree_core.info_nce_value_and_grad(exact_q, exact_k, labels=labels)
    np.testing.assert_allclose(float(loss), want, rtol=rtol)
    scale = float(np.max(np.abs(wq)))
    np.testing.assert_allclose(np.asarray(dq.astype(jnp.float64)), wq, rtol=rtol,
                               atol=rtol * scale)
    np.testing.assert_allclose(np.asarray(dk.astype(jnp.float64)), wk, rtol=rtol,
                               atol=rtol * scale)


def test_half_precision_similarity_keeps_float32_logits():
    """A bfloat16 similarity at 1 - 2^-8 is not rounded to 1 before the map (cap, no inf)."""
    s = jnp.asarray([[0.99609375, 0.0], [0.0, 1.0]], jnp.bfloat16)
    loss, grad = jax.jit(jax.value_and_grad(
        lambda x: tfree_jax.loss_from_similarity(x, jnp.eye(2, dtype=bool))))(s)
    assert loss.dtype == jnp.float32
    assert grad.dtype == jnp.bfloat16
    assert bool(jnp.isfinite(loss))
    assert bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32))))


def test_x64_disabled_float64_becomes_float32():
    """Without jax_enable_x64, float64 input arrives as float32 and computes in float32."""
    q, k, _, _ = _data(seed=12)
    with jax.enable_x64(False):
        loss, dq = jax.jit(jax.value_and_grad(tfree_jax.info_nce))(q, k)
        assert loss.dtype == jnp.float32
        assert dq.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), tfree_core.info_nce(q, k), rtol=1e-5)


# --------------------------------------------------------------------------- forward mode


def test_forward_mode_raises_a_clear_error():
    q, k, _, _ = _data()
    q, k = jnp.asarray(q), jnp.asarray(k)

    def f(x):
        return tfree_jax.info_nce(x, k)

    with pytest.raises(tfree_jax.ForwardModeError, match=r"(?i)forward mode .* is not supported"):
        jax.jvp(f, (q,), (q,))
    with pytest.raises(tfree_jax.ForwardModeError, match="reverse-mode"):
        jax.jacfwd(f)(q)
    with pytest.raises(TypeError, match="forward-mode"):  # JAX's own message through jit
        jax.jvp(jax.jit(f), (q,), (q,))
    # Reverse mode of the same loss is fine.
    jacobian = jax.jit(jax.jacrev(lambda x: tfree_jax.info_nce(x, k, reduction="none")))(q)
    assert jacobian.shape == (N, N, D)
