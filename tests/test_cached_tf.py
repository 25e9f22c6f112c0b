"""``tfree_tf.cached_value_and_grad`` (GradCache): the encoders' variable gradients equal
those of one ``GradientTape`` over the whole batch (full-batch autodiff), in float64 with
Keras ``Dropout`` active, eagerly, under ``tf.function`` and under XLA, and in a Keras
``train_step``.

The reference embeds the same mini-batches (the last one completed with rows from the
start of the batch, as documented) in the same order from the same SeedGenerator state,
under one tape: the dropout masks are the same draws. XLA draws other random numbers than
TensorFlow's kernels, so the compiled run is compared with a compiled reference.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("torch")  # torch before TensorFlow in one process (see conftest)
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("Keras runs on another backend", allow_module_level=True)

import tfree_tf  # noqa: E402

RTOL = 1e-12
D_IN, D = 6, 8


class MLP(keras.Model):
    """A 2-layer MLP with Keras Dropout, float64; any leading shape (``(n, D_IN)``, or
    ``(n, H, D_IN)`` for per-row negatives)."""

    def __init__(self, seed: int, rate: float) -> None:
        super().__init__(dtype="float64")
        self.hidden = keras.layers.Dense(16, activation="tanh", dtype="float64")
        self.drop = keras.layers.Dropout(rate, seed=seed + 1, dtype="float64")
        self.out = keras.layers.Dense(D, dtype="float64")

    def call(self, x, training=False):
        return self.out(self.drop(self.hidden(x), training=training))


def mlp(seed: int = 0, rate: float = 0.25):
    keras.utils.set_random_seed(seed)
    model = MLP(seed, rate)
    model(tf.zeros((1, D_IN), tf.float64))  # built
    return model


def data(*shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape))


def seed_states(model):
    return [v for v in model.non_trainable_variables if v.name.endswith("seed_generator_state")]


def padded(x, size):
    """The documented mini-batches: the last one completed from the start of the batch."""
    n = x.shape[0]
    count = -(-n // size)
    rows = np.arange(count * size) % n
    return [tf.gather(x, rows[b * size:(b + 1) * size]) for b in range(count)]


def reference(loss, model, sides, size, keywords=None, pair_keywords=None):
    with tf.GradientTape() as tape:
        embed = [tf.concat([model(mb, training=True) for mb in padded(x, size)], 0)[:x.shape[0]]
                 for x in sides]
        kw = {n: tf.concat([model(mb, training=True) for mb in padded(x, size)], 0)[:x.shape[0]]
              for n, x in (pair_keywords or {}).items()}
        value = loss(*embed, **kw, **(keywords or {}))
    return value, tape.gradient(value, model.trainable_variables)


def assert_same(got, want, rtol=RTOL):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= rtol * np.abs(b).max(), np.abs(a - b).max()


def compare(loss, model, sides, size, keywords=None, pair_keywords=None, mode="eager"):
    """The cached gradient vs the reference from the same initial SeedGenerator states;
    after the call, the states are as after the reference (one draw per mini-batch)."""
    states = seed_states(model)
    start = [v.numpy() for v in states]

    def cached(*xs):
        kw = {n: (model, x) for n, x in zip(pair_keywords or {}, xs[len(sides):], strict=True)}
        return tfree_tf.cached_value_and_grad(loss, *[(model, x) for x in xs[:len(sides)]],
                                              mini_batch_size=size, **(keywords or {}), **kw)

    def ref(*xs):
        kw = dict(zip(pair_keywords or {}, xs[len(sides):], strict=True))
        return reference(loss, model, xs[:len(sides)], size, keywords, kw)

    if mode != "eager":
        jit = mode == "xla"
        cached, ref = (tf.function(f, jit_compile=jit) for f in (cached, ref))
    inputs = [*sides, *(pair_keywords or {}).values()]
    value, grads = cached(*inputs)
    after = [v.numpy() for v in states]
    for v, x in zip(states, start, strict=True):
        v.assign(x)
    want_value, want = ref(*inputs)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(after, states, strict=True))
    np.testing.assert_allclose(float(value), float(want_value), rtol=RTOL)
    assert_same(grads, want)
    return grads


@pytest.mark.parametrize("size", [4, 13, 64])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_keras_dropout_model_both_sides(mode, size):
    compare(functools.partial(tfree_tf.info_nce, symmetric=True), mlp(),
            [data(13, D_IN, seed=1), data(13, D_IN, seed=2)], size, mode=mode)


def test_dropout_is_active():
    model = mlp()
    sides = [data(12, D_IN, seed=1), data(12, D_IN, seed=2)]
    a = compare(tfree_tf.info_nce, model, sides, 4)
    b = compare(tfree_tf.info_nce, model, sides, 4)  # the states moved on: new masks
    assert np.abs(np.asarray(a[0]) - np.asarray(b[0])).max() > 1e-3


def test_labels_where_and_per_row_negatives():
    model = mlp()
    labels = tf.constant([0, 1, 2, 0, 1, 2, 0, 1, 3])
    compare(functools.partial(tfree_tf.info_nce, symmetric=True), model,
            [data(9, D_IN, seed=1), data(9, D_IN, seed=2)], 4,
            keywords={"labels": labels, "where": labels != 3})
    compare(tfree_tf.info_nce, model, [data(10, D_IN, seed=1), data(10, D_IN, seed=2)], 4,
            pair_keywords={"negatives": data(10, 3, D_IN, seed=3)})


def test_plain_callable_with_a_stateless_seed():
    w1, w2 = (tf.Variable(data(D_IN, 16, seed=5)), tf.Variable(data(16, D, seed=6)))

    def encode(x, seed):
        h = tf.tanh(x @ w1)
        keep = tf.random.stateless_uniform(tf.shape(h), seed, dtype=h.dtype) > 0.25
        return tf.where(keep, h / 0.75, 0.0) @ w2

    q, k = data(10, D_IN, seed=1), data(10, D_IN, seed=2)
    seed = tf.constant([3, 4], tf.int64)
    value, grads = tfree_tf.cached_value_and_grad(tfree_tf.info_nce, (encode, q), (encode, k),
                                                  mini_batch_size=4, variables=[w1, w2],
                                                  seed=seed)
    fold = tf.random.experimental.stateless_fold_in
    with tf.GradientTape() as tape:
        embed = [tf.concat([encode(mb, fold(fold(seed, s), b))
                            for b, mb in enumerate(padded(x, 4))], 0)[:10]
                 for s, x in enumerate((q, k))]
        want_value = tfree_tf.info_nce(*embed)
    np.testing.assert_allclose(float(value), float(want_value), rtol=RTOL)
    assert_same(grads, tape.gradient(want_value, [w1, w2]))


def test_keras_train_step():
    """A custom train_step: one SGD step of fit equals the eager cached gradient."""

    class Contrastive(keras.Model):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def train_step(self, data):
            q, k = data
            loss, grads = tfree_tf.cached_value_and_grad(
                tfree_tf.info_nce, (self.encoder, q), (self.encoder, k), mini_batch_size=4,
                variables=self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
            return {"contrastive_loss": loss}  # Keras reports "loss" from its own tracker

    encoder = mlp()
    q, k = data(12, D_IN, seed=1), data(12, D_IN, seed=2)
    states = seed_states(encoder)
    start = [v.numpy() for v in states]
    weights = [v.numpy() for v in encoder.trainable_variables]
    _, grads = tfree_tf.cached_value_and_grad(tfree_tf.info_nce, (encoder, q), (encoder, k),
                                              mini_batch_size=4)
    for v, x in zip(states, start, strict=True):
        v.assign(x)
    model = Contrastive(encoder)
    # a rate exact in float32 (Keras keeps it in float32); eager kernels' random numbers
    model.compile(optimizer=keras.optimizers.SGD(0.25), jit_compile=False)
    history = model.fit(tf.data.Dataset.from_tensors((q, k)), epochs=1, verbose=0,
                        shuffle=False)
    assert np.isfinite(history.history["contrastive_loss"][0])
    assert_same([v.numpy() for v in encoder.trainable_variables],
                [w - 0.25 * np.asarray(g) for w, g in zip(weights, grads, strict=True)])


def test_errors_name_the_argument():
    model, x = mlp(), data(4, D_IN)
    cached = functools.partial(tfree_tf.cached_value_and_grad, tfree_tf.info_nce)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"mini_batch_size must be a positive int.*{bad!r}"):
            cached((model, x), (model, x), mini_batch_size=bad)
    with pytest.raises(TypeError, match=r"encoded\[1\] must be a pair \(encoder, batch\)"):
        cached((model, x), x, mini_batch_size=2)
    with pytest.raises(ValueError, match=r"encoded\[0\]: the batch's tensors have different "
                                         r"lengths.*leaf 0 4, leaf 1 3"):
        cached((lambda b: b["a"], {"a": x, "b": x[:3]}), mini_batch_size=2, variables=[])
    with pytest.raises(TypeError, match=r"encoded\[0\]: variables= is needed"):
        cached((lambda b: model(b), x), mini_batch_size=2)
    with pytest.raises(ValueError, match=r"encoded\[1\]: the encoder returned shape \(8,\)"):
        cached((model, x), (lambda b: tf.reduce_sum(model(b), 0), x), mini_batch_size=2)
    with pytest.raises(TypeError, match="seed= is for plain callables"):
        cached((model, x), mini_batch_size=2, seed=[1, 2])
    with pytest.raises(ValueError, match=r"seed must be a shape \(2,\) integer tensor"):
        cached((model, x), mini_batch_size=2, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="loss must return a scalar"):
        tfree_tf.cached_value_and_grad(functools.partial(tfree_tf.info_nce, reduction="none"),
                                       (model, x), (model, x), mini_batch_size=2)
