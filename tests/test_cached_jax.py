"""``tfree_jax.cached_value_and_grad`` (GradCache): the encoders' parameter gradients equal
``jax.value_and_grad`` of the loss through the whole batch (full-batch autodiff), in
float64 with dropout active, eagerly and under ``jax.jit``.

The reference embeds the same mini-batches with the same per-mini-batch keys (the
documented derivation: ``split(fold_in(key, s), B_s)``) in one differentiated function, so
the dropout masks are the same draws and only the summation order differs.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import tfree_jax  # noqa: E402

RTOL = 1e-12
D_IN, D = 6, 8


pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 stays float64 in JAX


def init(seed: int = 0):
    k = jax.random.split(jax.random.key(seed), 3)
    return {"w1": jax.random.normal(k[0], (D_IN, 16), jnp.float64),
            "b1": jax.random.normal(k[1], (16,), jnp.float64),
            "w2": jax.random.normal(k[2], (16, D), jnp.float64)}


def encode(params, x, key, p=0.25):
    """A 2-layer MLP with dropout (any leading shape: ``(n, D_IN)`` or ``(n, H, D_IN)``)."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    keep = jax.random.bernoulli(key, 1 - p, h.shape)
    return jnp.where(keep, h / (1 - p), 0) @ params["w2"]


def data(*shape, seed=0):
    return jax.random.normal(jax.random.key(100 + seed), shape, jnp.float64)


def mini_batches(batch, size):
    n = jax.tree.leaves(batch)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i:i + size], batch) for i in range(0, n, size)]


def reference(loss, pairs, params, size, key, keywords=None, pair_keywords=None):
    """Full-batch autodiff with the same per-mini-batch keys."""
    named = list(enumerate(pairs)) + list(enumerate((pair_keywords or {}).items(), len(pairs)))

    def of(params):
        out = {}
        for slot, item in named:
            name, (apply, batch) = (slot, item) if slot < len(pairs) else item
            chunks = mini_batches(batch, size)
            if key is None:
                parts = [apply(params, mb) for mb in chunks]
            else:
                keys = jax.random.split(jax.random.fold_in(key, slot), len(chunks))
                parts = [apply(params, mb, keys[b]) for b, mb in enumerate(chunks)]
            out[name] = jnp.concatenate(parts)
        args = [out[i] for i in range(len(pairs))]
        kwargs = {n: v for n, v in out.items() if isinstance(n, str)}
        return loss(*args, **kwargs, **(keywords or {}))

    return jax.jit(jax.value_and_grad(of))(params)


def assert_same(got, want, rtol=RTOL):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        err = float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-300))
        assert err <= rtol, err


def compare(loss, pairs, params, size, key="default", keywords=None, pair_keywords=None,
            jit=True):
    key = jax.random.key(7) if key == "default" else key

    def run(params, key):
        return tfree_jax.cached_value_and_grad(loss, *pairs, params=params, mini_batch_size=size,
                                               key=key, **(keywords or {}),
                                               **(pair_keywords or {}))

    value, grads = (jax.jit(run) if jit else run)(params, key)
    want_value, want = reference(loss, pairs, params, size, key, keywords, pair_keywords)
    np.testing.assert_allclose(value, want_value, rtol=RTOL, atol=0)
    assert_same(grads, want)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    return grads


@pytest.mark.parametrize("size", [4, 64])  # 3 mini-batches and a remainder; one short one
def test_same_encoder_both_sides(size):
    compare(functools.partial(tfree_jax.info_nce, symmetric=True),
            [(encode, data(13, D_IN, seed=1)), (encode, data(13, D_IN, seed=2))], init(), size)


def test_eager_and_jit_agree_and_dropout_matters():
    pairs = [(encode, data(12, D_IN, seed=1)), (encode, data(12, D_IN, seed=2))]
    a = compare(tfree_jax.info_nce, pairs, init(), 4, jit=False)
    b = compare(tfree_jax.info_nce, pairs, init(), 4)
    assert_same(a, b)
    c = compare(tfree_jax.info_nce, pairs, init(), 4, key=jax.random.key(8))
    assert float(jnp.max(jnp.abs(c["w1"] - a["w1"]))) > 1e-3


def test_two_towers_in_one_params_tree_and_tiled_loss():
    params = {"image": init(1), "text": init(2)}
    image = lambda p, x, k: encode(p["image"], x, k)  # noqa: E731
    text = lambda p, x, k: encode(p["text"], x, k)  # noqa: E731
    compare(functools.partial(tfree_jax.info_nce, symmetric=True, chunk_size=3),
            [(image, data(12, D_IN, seed=1)), (text, data(12, D_IN, seed=2))], params, 4)


def test_sup_con_labels_and_where():
    labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1, 3])
    compare(functools.partial(tfree_jax.info_nce, symmetric=True),
            [(encode, data(9, D_IN, seed=4)), (encode, data(9, D_IN, seed=5))], init(), 3,
            keywords={"labels": labels, "where": labels != 3})


def test_per_row_negatives_and_a_fake_hard_negatives_loss():
    pairs = [(encode, data(10, D_IN, seed=1)), (encode, data(10, D_IN, seed=2))]
    compare(tfree_jax.info_nce, pairs, init(), 5,
            pair_keywords={"negatives": (encode, data(10, 3, D_IN, seed=3))})

    def retrieval(query, key, *, hard_negatives, weight=1.0):
        assert hard_negatives.shape[:2] == (query.shape[0], 3)
        return tfree_jax.info_nce(query, key) + weight * tfree_jax.info_nce(
            query, key, negatives=hard_negatives)

    compare(retrieval, pairs, init(), 5, keywords={"weight": 0.5},
            pair_keywords={"hard_negatives": (encode, data(10, 3, D_IN, seed=3))})


def test_dict_batch_and_no_key():
    table = jax.random.normal(jax.random.key(3), (20, D_IN), jnp.float64)

    def tokens_encoder(params, batch):
        x = table[batch["ids"]] * batch["mask"][..., None]
        return jnp.tanh(x.sum(1) @ params["w1"]) @ params["w2"]

    g = np.random.default_rng(0)
    batch = {"ids": jnp.asarray(g.integers(0, 20, (11, 5))),
             "mask": jnp.asarray((g.random((11, 5)) > 0.3).astype(np.float64))}
    compare(tfree_jax.info_nce, [(tokens_encoder, batch), (tokens_encoder, batch)], init(), 4,
            key=None)


def test_errors_name_the_argument():
    x, params = data(4, D_IN), init()
    cached = functools.partial(tfree_jax.cached_value_and_grad, tfree_jax.info_nce,
                               params=params)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"mini_batch_size must be a positive int.*{bad!r}"):
            cached((encode, x), (encode, x), mini_batch_size=bad)
    with pytest.raises(TypeError, match=r"encoded\[1\] must be a pair \(apply, batch\)"):
        cached((encode, x), x, mini_batch_size=2)
    with pytest.raises(TypeError, match=r"encoded\[0\]: the encoder .*got ArrayImpl"):
        cached((x, x), mini_batch_size=2)
    with pytest.raises(ValueError, match=r"encoded\[0\]: the batch's arrays have different "
                                         r"lengths.*\['a'\] 4.*\['b'\] 3"):
        cached((lambda p, b, k: b["a"], {"a": x, "b": x[:3]}), mini_batch_size=2,
               key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"encoded\[1\]: the encoder returned shape \(8,\)"):
        cached((encode, x), (lambda p, b, k: encode(p, b, k).sum(0), x), mini_batch_size=2,
               key=jax.random.key(0))
    with pytest.raises(ValueError, match="loss must return a scalar"):
        tfree_jax.cached_value_and_grad(functools.partial(tfree_jax.info_nce, reduction="none"),
                                        (encode, x), (encode, x), params=params,
                                        mini_batch_size=2, key=jax.random.key(0))
    with pytest.raises(TypeError, match="loss must be a function"):
        tfree_jax.cached_value_and_grad("x", (encode, x), params=params, mini_batch_size=2)
