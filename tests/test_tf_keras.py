"""``tfree_tf.TemperatureFreeLoss`` (the class of ``tfree_keras``) in Keras 3 on the
TensorFlow backend: values equal to the functional API, SPEC's reduction untouched by
Keras, padding of batches of unknown size, serialisation, and real ``model.fit`` runs whose
loss decreases (with ``sample_weight`` and ``class_weight`` too). The other backends:
tests/test_keras_backends.py."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tfree_tf = pytest.importorskip("tfree_tf")

TemperatureFreeLoss = tfree_tf.TemperatureFreeLoss

RNG = np.random.default_rng(17)
PAIRS = RNG.normal(size=(6, 2, 5))
FEATURES3 = RNG.normal(size=(6, 2, 5))
LABELS = np.array([0, 1, 0, 2, 1, 2])


def _functional(layout: str, y_pred, labels, **kw):
    """The same loss through the functional API."""
    if layout == "sup_con":
        return tfree_tf.sup_con(y_pred, labels, **kw)
    first, second = y_pred[:, 0], y_pred[:, 1]
    if layout == "nt_xent":
        return tfree_tf.nt_xent(first, second, **kw)
    return tfree_tf.info_nce(first, second, labels=labels, **kw)


CONFIGS = [
    ("nt_xent", {}, PAIRS, None),
    ("info_nce", {}, PAIRS, None),
    ("info_nce", {"symmetric": True, "use_labels": True}, PAIRS, LABELS),
    ("sup_con", {}, FEATURES3, LABELS),
    ("sup_con", {}, FEATURES3[:, 0], LABELS),
]
CONFIG_IDS = ["nt_xent", "info_nce", "info_nce-symmetric-labels", "sup_con-3d", "sup_con-2d"]


@pytest.mark.parametrize(("layout", "kw", "y_pred", "labels"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_gradient_match_functional(layout, kw, y_pred, labels, reduction) -> None:
    loss_fn = TemperatureFreeLoss(layout, reduction=reduction, dtype="float64", **kw)
    x = tf.constant(y_pred)
    y_true = np.zeros(len(y_pred)) if labels is None else labels.astype(np.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = loss_fn(y_true, x)
        functional_kw = {"symmetric": True} if kw.get("symmetric") else {}
        want = _functional(layout, x, None if labels is None else tf.constant(labels),
                           reduction=reduction, **functional_kw)
    assert got.dtype == tf.float64
    assert got.shape == want.shape  # Keras adds no reduction of its own
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-13, atol=0)
    np.testing.assert_allclose(tape.gradient(got, x).numpy(), tape.gradient(want, x).numpy(),
                               rtol=1e-12, atol=1e-15)


@pytest.fixture
def jit_core_off():
    """The core op by op in traced functions: these tests are about the padding, and an XLA
    compilation per case would cost seconds (the ``fit`` tests below keep the default)."""
    previous = tfree_tf.set_jit_core(False)
    yield
    tfree_tf.set_jit_core(previous)


@pytest.mark.usefixtures("jit_core_off")
@pytest.mark.parametrize(("layout", "kw", "y_pred", "labels"), CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_batches_of_unknown_size_are_padded(layout, kw, y_pred, labels, reduction) -> None:
    """A trace with an unknown batch dimension (``model.fit``'s last, smaller batch) gives
    the value and gradients of the unpadded batch."""
    loss_fn = TemperatureFreeLoss(layout, reduction=reduction, max_batch_size=8,
                                  dtype="float64", **kw)
    x = tf.constant(y_pred)
    y_true = tf.zeros(len(y_pred), tf.int64) if labels is None else tf.constant(labels)

    def value_and_grad(y_t, y_p):
        with tf.GradientTape() as tape:
            tape.watch(y_p)
            loss = loss_fn(y_t, y_p)
        return loss, tape.gradient(loss, y_p)

    unknown = tf.function(
        value_and_grad,
        input_signature=[tf.TensorSpec([None], tf.int64),
                         tf.TensorSpec([None, *y_pred.shape[1:]], tf.float64)],
        autograph=False,
    )
    got, got_grad = unknown(y_true, x)
    want, want_grad = value_and_grad(y_true, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-13, atol=0)
    np.testing.assert_allclose(got_grad.numpy(), want_grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.usefixtures("jit_core_off")
def test_batch_larger_than_the_bound_fails() -> None:
    loss_fn = TemperatureFreeLoss("nt_xent", max_batch_size=4)
    fn = tf.function(loss_fn, input_signature=[tf.TensorSpec([None]),
                                                tf.TensorSpec([None, 2, 5])], autograph=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(tf.zeros(6), tf.constant(PAIRS, tf.float32))


def test_unknown_size_without_a_bound_raises() -> None:
    loss_fn = TemperatureFreeLoss("nt_xent")
    fn = tf.function(loss_fn, input_signature=[tf.TensorSpec([None]),
                                                tf.TensorSpec([None, 2, 3])], autograph=False)
    with pytest.raises(ValueError, match="max_batch_size"):
        fn.get_concrete_function()


def test_config_round_trip() -> None:
    loss_fn = TemperatureFreeLoss("info_nce", symmetric=True, use_labels=True,
                                  logit_map="temperature", temperature=0.2, eps=1e-5,
                                  reduction="sum", chunk_size=4, max_batch_size=32,
                                  name="clip_loss")
    config = loss_fn.get_config()
    clone = TemperatureFreeLoss.from_config(config)
    assert clone.get_config() == config
    assert config["layout"] == "info_nce"
    assert config["symmetric"] is True
    assert config["temperature"] == 0.2
    assert config["reduction"] == "sum"
    assert config["chunk_size"] == 4
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss_fn))
    assert isinstance(restored, TemperatureFreeLoss)
    assert restored.get_config() == config
    y_pred = tf.constant(PAIRS, tf.float32)
    y_true = tf.constant(LABELS)
    np.testing.assert_allclose(restored(y_true, y_pred).numpy(), loss_fn(y_true, y_pred).numpy())


def test_errors() -> None:
    with pytest.raises(ValueError, match="layout"):
        TemperatureFreeLoss("pairs")
    with pytest.raises(ValueError, match="info_nce"):
        TemperatureFreeLoss("nt_xent", symmetric=True)
    with pytest.raises(ValueError, match="temperature"):
        TemperatureFreeLoss("nt_xent", temperature=0.1)
    with pytest.raises(ValueError, match="reduction"):
        TemperatureFreeLoss("nt_xent", reduction="sum_over_batch_size")
    loss_fn = TemperatureFreeLoss("nt_xent")
    with pytest.raises(ValueError, match="sample_weight"):
        loss_fn(None, tf.constant(PAIRS), sample_weight=tf.ones((6, 2)))
    with pytest.raises(ValueError, match=r"\(N, 2, D\)"):
        loss_fn(None, tf.ones((6, 5)))
    with pytest.raises(ValueError, match="labels"):
        TemperatureFreeLoss("sup_con")(None, tf.ones((6, 5)))


def _two_view_data(n: int, d: int, seed: int):
    """``n`` samples, each seen twice with independent noise: ``(n, 2, d)``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, d))
    return (base + 0.3 * rng.normal(size=(n, 2, d))).astype(np.float32)


def _fit(model, loss_fn, x, y, *, epochs: int, batch_size: int, jit_compile):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss_fn, jit_compile=jit_compile)
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False,
                     verbose=0).history["loss"]


def test_fit_nt_xent_loss_decreases() -> None:
    """SimCLR-style: a Dense encoder applied to both views. 60 samples in batches of 16:
    Keras traces the step with an unknown batch size, so the padded path runs (hence
    ``max_batch_size``). Keras reports SPEC's mean, not a re-reduction of it."""
    keras.utils.set_random_seed(0)
    x = _two_view_data(60, 8, seed=1)
    model = keras.Sequential([keras.Input((2, 8)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(8)])
    loss_fn = TemperatureFreeLoss("nt_xent", max_batch_size=16)
    history = _fit(model, loss_fn, x, np.zeros(60), epochs=8, batch_size=16, jit_compile=False)
    assert loss_fn._largest_batch == 0  # every trace had an unknown batch size: padded
    assert history[-1] < 0.9 * history[0], history
    assert np.all(np.isfinite(history))
    evaluated = model.evaluate(x, np.zeros(60), batch_size=60, verbose=0)
    direct = loss_fn(None, model(x)).numpy()
    np.testing.assert_allclose(evaluated, direct, rtol=1e-5)


def test_fit_without_a_bound_on_a_ragged_data_set_asks_for_max_batch_size() -> None:
    """TensorFlow's ``fit`` traces with an unknown batch size from the first step when the
    data set's size is not a multiple of ``batch_size``: the error says what to pass."""
    x = _two_view_data(20, 4, seed=3)
    model = keras.Sequential([keras.Input((2, 4)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="max_batch_size=batch_size"):
        _fit(model, TemperatureFreeLoss("nt_xent"), x, np.zeros(20), epochs=1, batch_size=8,
             jit_compile=False)


def test_fit_with_sample_and_class_weights() -> None:
    """``fit``'s ``sample_weight`` and ``class_weight`` reach the loss as per-anchor
    weights: the reported loss is the weighted mean of the documented formula."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=24)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    loss_fn = TemperatureFreeLoss("sup_con")
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss_fn)  # weights stay put
    weights = rng.uniform(0.5, 2.0, size=24).astype(np.float32)
    y = labels.astype(np.float32)
    reported = model.evaluate(x, y, sample_weight=weights, batch_size=24, verbose=0)
    per_anchor = tfree_tf.sup_con(model(x), labels, reduction="none").numpy()
    np.testing.assert_allclose(reported, (weights * per_anchor).sum() / weights.sum(),
                               rtol=1e-5)
    class_weight = {0: 1.0, 1: 0.0, 2: 3.0}
    history = model.fit(x, y, class_weight=class_weight, batch_size=24, epochs=1,
                        verbose=0).history["loss"]
    w = np.array([class_weight[c] for c in labels])
    np.testing.assert_allclose(history[0], (w * per_anchor).sum() / w.sum(), rtol=1e-5)


def test_fit_sup_con_under_xla_loss_decreases() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=64)
    centres = rng.normal(size=(4, 8))
    x = (centres[labels] + 0.8 * rng.normal(size=(64, 8))).astype(np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(8)])
    history = _fit(model, TemperatureFreeLoss("sup_con"), x, labels.astype(np.float32),
                   epochs=6, batch_size=32, jit_compile=True)
    assert history[-1] < 0.95 * history[0], history
