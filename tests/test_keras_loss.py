"""``tfree_keras.TemperatureFreeLoss`` in this process's Keras backend (TensorFlow unless
``KERAS_BACKEND`` says otherwise; the other backends run in tests/test_keras_backends.py):
argument checks, ``sample_weight``'s exact meaning and gradient, the layout table, the
dispatch errors, serialisation and the ``tfree_tf`` alias."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tfree_keras = pytest.importorskip("tfree_keras")

from tfree_keras import TemperatureFreeLoss, _backends, _layouts  # noqa: E402

import tfree_core  # noqa: E402

ops = keras.ops
ON_TF = keras.backend.backend() == "tensorflow"
needs_tf = pytest.mark.skipif(not ON_TF, reason="gradients through tf.GradientTape")

RNG = np.random.default_rng(23)
PAIRS = RNG.normal(size=(6, 2, 5))
LABELS = np.array([0, 1, 0, 2, 1, 7])  # label 7 is alone: a SupCon (N, D) anchor without positive
WEIGHTS = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 1.5])
RETRIEVAL = RNG.normal(size=(6, 4, 5))  # (query, positive, 2 hard negatives) per sample

# id: (layout, keywords, y_pred); y_true is LABELS throughout (ignored where unread)
CASES = {
    "nt_xent": ("nt_xent", {}, PAIRS),
    "info_nce": ("info_nce", {}, PAIRS),
    "clip-labels": ("info_nce", {"symmetric": True, "use_labels": True}, PAIRS),
    "sup_con-2d": ("sup_con", {}, PAIRS[:, 0]),
    "sup_con-3d": ("sup_con", {}, PAIRS),
    "retrieval-sym": ("retrieval", {"symmetric": True}, RETRIEVAL),
}


def _np(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def _core_none(layout: str, kw: dict, y_pred: np.ndarray, *, cotangent=None):
    """tfree_core's per-anchor losses (and, with ``cotangent``, the gradient) in float64."""
    function = "info_nce" if layout == "retrieval" else layout
    if layout == "sup_con":
        args, extra = (y_pred, LABELS), {}
    else:
        args = (y_pred[:, 0], y_pred[:, 1])
        extra = {"labels": LABELS} if kw.get("use_labels") else {}
        if kw.get("symmetric"):
            extra["symmetric"] = True
        if layout == "retrieval":
            extra["hard_negatives"] = y_pred[:, 2:]
    if cotangent is None:
        return getattr(tfree_core, function)(*args, reduction="none", **extra)
    value_and_grad = getattr(tfree_core, f"{function}_value_and_grad")
    _, grads = value_and_grad(*args, reduction="none", cotangent=cotangent, **extra)
    if layout == "retrieval":  # d_query, d_key (N, D) and d_hard_negatives (N, Hn, D)
        return np.concatenate([grads[0][:, None], grads[1][:, None], grads[2]], axis=1)
    return np.stack(grads, axis=1) if layout != "sup_con" else grads[0]


def _has_positive(layout: str, y_pred: np.ndarray) -> np.ndarray:
    if layout != "sup_con" or y_pred.ndim == 3:
        return np.ones(len(y_pred), bool)
    return (LABELS[:, None] == LABELS[None, :]).sum(1) >= 2


def _per_sample(layout: str, loss: np.ndarray) -> np.ndarray:
    return loss.reshape(2, -1).T if layout == "nt_xent" else loss


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("switch", ["symmetric", "use_labels", "check_finite"])
@pytest.mark.parametrize("value", ["False", 0, 1, None, "True"])
def test_switches_must_be_bools(switch, value) -> None:
    with pytest.raises(TypeError, match=switch):
        TemperatureFreeLoss("info_nce", **{switch: value})


def test_numpy_scalars_become_python_values() -> None:
    loss_fn = TemperatureFreeLoss(
        np.str_("info_nce"), symmetric=np.bool_(True), use_labels=np.True_,
        logit_map="temperature", temperature=np.float32(0.25), eps=np.float64(1e-5),
        reduction=np.str_("sum"), chunk_size=np.int64(4), check_finite=np.False_,
        max_batch_size=np.int32(32), dtype=np.float64)
    config = loss_fn.get_config()
    assert json.loads(json.dumps(config)) == config  # plain JSON types only
    expected = {"layout": "info_nce", "symmetric": True, "use_labels": True,
                "temperature": 0.25, "eps": 1e-5, "reduction": "sum", "chunk_size": 4,
                "check_finite": False, "max_batch_size": 32, "dtype": "float64"}
    for key, want in expected.items():
        assert config[key] == want, (key, config[key])
        assert type(config[key]) is type(want), (key, config[key])
    assert loss_fn.dtype == "float64"


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"dtype": "int32"}, TypeError, "dtype"),
    ({"dtype": np.int64}, TypeError, "dtype"),
    ({"dtype": "float33"}, ValueError, "dtype"),
    ({"dtype": True}, ValueError, "dtype"),
    ({"max_batch_size": 0}, ValueError, "max_batch_size"),
    ({"max_batch_size": True}, TypeError, "max_batch_size"),
    ({"max_batch_size": 16.0}, TypeError, "max_batch_size"),
    ({"chunk_size": 2.5}, TypeError, "chunk_size"),
    ({"eps": "1e-6"}, TypeError, "eps"),
    ({"temperature": 0.1}, ValueError, "temperature"),
    ({"reduction": "sum_over_batch_size"}, ValueError, "reduction"),
    ({"name": 3}, TypeError, "name"),
    ({"symmetric": True}, ValueError, "symmetric=True applies to layout 'info_nce'"),
])
def test_bad_arguments_name_themselves(kw, error, match) -> None:
    with pytest.raises(error, match=match):
        TemperatureFreeLoss("nt_xent", **kw)


def test_layout_must_be_known() -> None:
    with pytest.raises(ValueError, match=r"layout must be one of \('nt_xent', 'info_nce'"):
        TemperatureFreeLoss("pairs")
    with pytest.raises(ValueError, match="layout"):
        TemperatureFreeLoss(["nt_xent"])


def test_floating_policies_are_accepted() -> None:
    assert TemperatureFreeLoss(dtype="mixed_bfloat16").dtype == "bfloat16"
    policy = keras.DTypePolicy("float64")
    clone = TemperatureFreeLoss.from_config(TemperatureFreeLoss(dtype=policy).get_config())
    assert clone.dtype == "float64"


def test_shape_and_label_errors() -> None:
    loss_fn = TemperatureFreeLoss("nt_xent")
    with pytest.raises(ValueError, match=r"\(N, 2, D\), the two views stacked"):
        loss_fn(None, np.ones((6, 5), "float32"))
    with pytest.raises(ValueError, match=r"\(N, 2, D\)"):
        loss_fn(None, np.ones((6, 3, 5), "float32"))
    with pytest.raises(ValueError, match="labels"):
        TemperatureFreeLoss("sup_con")(None, np.ones((6, 5), "float32"))
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        loss_fn(None, PAIRS, sample_weight=np.ones((6, 2)))
    # a batch of known size is never padded, so max_batch_size does not bound it
    np.testing.assert_allclose(_np(TemperatureFreeLoss("nt_xent", max_batch_size=4)(None, PAIRS)),
                               _np(loss_fn(None, PAIRS)))


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unit_weights_give_the_unweighted_loss(case, reduction) -> None:
    layout, kw, y_pred = CASES[case]
    loss_fn = TemperatureFreeLoss(layout, reduction=reduction, dtype="float64", **kw)
    plain = _np(loss_fn(LABELS, y_pred))
    weighted = _np(loss_fn(LABELS, y_pred, sample_weight=np.ones(len(y_pred))))
    assert weighted.shape == plain.shape
    np.testing.assert_allclose(weighted, plain, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_reduction_is_the_documented_formula(case, reduction) -> None:
    """Σ_a w_i L_a / Σ_{a with a positive} w_i, from tfree_core's per-anchor losses."""
    layout, kw, y_pred = CASES[case]
    loss_fn = TemperatureFreeLoss(layout, reduction=reduction, dtype="float64", **kw)
    got = _np(loss_fn(LABELS.astype("float32"), y_pred, sample_weight=WEIGHTS[:, None]))
    per = _per_sample(layout, _core_none(layout, kw, y_pred))
    w = WEIGHTS.reshape((-1,) + (1,) * (per.ndim - 1)) * np.ones_like(per)
    if reduction == "none":
        want = (per * w).T.reshape(-1) if layout == "nt_xent" else per * w
    elif reduction == "sum":
        want = (per * w).sum()
    else:
        counted = w * _has_positive(layout, y_pred).reshape((-1,) + (1,) * (per.ndim - 1))
        want = (per * w).sum() / counted.sum()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_zero_weight_drops_the_anchor_but_keeps_the_candidate() -> None:
    loss_fn = TemperatureFreeLoss("info_nce", dtype="float64")
    weights = np.ones(6)
    weights[2] = 0.0
    got = float(_np(loss_fn(None, PAIRS, sample_weight=weights)))
    per_anchor = _core_none("info_nce", {}, PAIRS)
    np.testing.assert_allclose(got, np.delete(per_anchor, 2).mean(), rtol=1e-13)
    # not the loss without row 2: key 2 is still a candidate (a negative) of every query
    without_row = float(tfree_core.info_nce(np.delete(PAIRS[:, 0], 2, 0),
                                            np.delete(PAIRS[:, 1], 2, 0)))
    assert abs(got - without_row) > 1e-3


def test_all_weights_zero_is_zero() -> None:
    got = TemperatureFreeLoss("nt_xent", dtype="float64")(None, PAIRS, sample_weight=np.zeros(6))
    assert float(_np(got)) == 0.0


@needs_tf
@pytest.mark.parametrize("case", CASES)
def test_weighted_gradient_is_the_analytic_gradient_with_cotangent_w(case) -> None:
    """The gradient of the weighted mean is tfree_core's "none" gradient with cotangent
    ``w_a / Σ w`` (each anchor's weight over the counted weight)."""
    import tensorflow as tf

    layout, kw, y_pred = CASES[case]
    loss_fn = TemperatureFreeLoss(layout, dtype="float64", **kw)
    x = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss_fn(LABELS, x, sample_weight=WEIGHTS)
    got = tape.gradient(value, x).numpy()
    per = _per_sample(layout, _core_none(layout, kw, y_pred))
    shape = (-1,) + (1,) * (per.ndim - 1)
    w = WEIGHTS.reshape(shape) * np.ones_like(per)
    denominator = (w * _has_positive(layout, y_pred).reshape(shape)).sum()
    cotangent = w / denominator
    cotangent = cotangent.T.reshape(-1) if layout == "nt_xent" else cotangent
    want = _core_none(layout, kw, y_pred, cotangent=cotangent)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14)


@needs_tf
def test_weighted_gradient_against_finite_differences() -> None:
    import tensorflow as tf

    loss_fn = TemperatureFreeLoss("sup_con", dtype="float64")
    y_pred = PAIRS[:, 0].copy()

    def value(y):
        return float(loss_fn(LABELS, y, sample_weight=WEIGHTS))

    x = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(LABELS, x, sample_weight=WEIGHTS)
    analytic = tape.gradient(loss, x).numpy()
    h = 1e-6
    numeric = np.zeros_like(y_pred)
    for index in np.ndindex(*y_pred.shape):
        up, down = y_pred.copy(), y_pred.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (value(up) - value(down)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@needs_tf
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_padded_batch_with_weights_equals_eager(case, reduction) -> None:
    """TensorFlow's unknown batch size (``fit``'s smaller last batch): padded to
    ``max_batch_size`` with masked rows, weights applied to the real rows only."""
    import tensorflow as tf

    layout, kw, y_pred = CASES[case]
    loss_fn = TemperatureFreeLoss(layout, reduction=reduction, max_batch_size=8,
                                  dtype="float64", **kw)
    import tfree_tf

    previous = tfree_tf.set_jit_core(False)  # op by op: this test is about the padding
    try:
        traced = tf.function(
            lambda y_t, y_p, w: loss_fn(y_t, y_p, sample_weight=w),
            input_signature=[tf.TensorSpec([None], tf.int64),
                             tf.TensorSpec([None, *y_pred.shape[1:]], tf.float64),
                             tf.TensorSpec([None], tf.float64)],
            autograph=False)
        got = traced(tf.constant(LABELS), tf.constant(y_pred), tf.constant(WEIGHTS)).numpy()
    finally:
        tfree_tf.set_jit_core(previous)
    want = _np(loss_fn(LABELS, y_pred, sample_weight=WEIGHTS))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- the table


def test_a_layout_is_one_table_entry(monkeypatch) -> None:
    """A layout needs nothing but its entry in the table."""
    def mined(y_pred, labels, switches):
        return (y_pred[:, 0, :], y_pred[:, 1, :]), {"negatives": y_pred[:, 2:, :]}

    entry = _layouts.KerasLayout("moco_mined", "info_nce", "(N, 2 + M, D)", ranks=(3,),
                                 views=(3, None), labels=False, arguments=mined)
    monkeypatch.setitem(_layouts.LAYOUTS, "moco_mined", entry)
    loss_fn = TemperatureFreeLoss("moco_mined", reduction="none", dtype="float64")
    want = tfree_core.info_nce(RETRIEVAL[:, 0], RETRIEVAL[:, 1], negatives=RETRIEVAL[:, 2:],
                               reduction="none")
    np.testing.assert_allclose(_np(loss_fn(None, RETRIEVAL)), want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 2 \+ M, D\)"):
        loss_fn(None, PAIRS)


@pytest.mark.parametrize("symmetric", [False, True])
def test_retrieval_layout_is_info_nce_with_hard_negatives(symmetric) -> None:
    """``(N, 2 + Hn, D)``: query, positive and hard negatives, each query against every
    positive and every hard negative of the batch (``tfree_core``'s retrieval layout)."""
    assert "retrieval" in tfree_keras.LAYOUTS
    loss_fn = TemperatureFreeLoss("retrieval", symmetric=symmetric, dtype="float64")
    want = tfree_core.info_nce(RETRIEVAL[:, 0], RETRIEVAL[:, 1],
                               hard_negatives=RETRIEVAL[:, 2:], symmetric=symmetric)
    np.testing.assert_allclose(_np(loss_fn(None, RETRIEVAL)), want, rtol=1e-12)
    # the hard negatives are candidates of every query: not the MoCo layout, nor pairs
    pairs = tfree_core.info_nce(RETRIEVAL[:, 0], RETRIEVAL[:, 1], symmetric=symmetric)
    assert abs(want - pairs) > 1e-3
    if not symmetric:
        moco = tfree_core.info_nce(RETRIEVAL[:, 0], RETRIEVAL[:, 1],
                                   negatives=RETRIEVAL[:, 2:])
        assert abs(want - moco) > 1e-3
    temperature = TemperatureFreeLoss("retrieval", symmetric=symmetric, dtype="float64",
                                      logit_map="temperature", temperature=0.05)
    np.testing.assert_allclose(
        _np(temperature(None, RETRIEVAL)),
        tfree_core.info_nce(RETRIEVAL[:, 0], RETRIEVAL[:, 1], hard_negatives=RETRIEVAL[:, 2:],
                            symmetric=symmetric, logit_map="temperature", temperature=0.05),
        rtol=1e-12)


def test_retrieval_layout_shapes() -> None:
    loss_fn = TemperatureFreeLoss("retrieval")
    for bad in (PAIRS, PAIRS[:, 0]):  # no hard negative; rank 2
        with pytest.raises(ValueError, match=r"layout='retrieval' needs y_pred of shape "
                                             r"\(N, 2 \+ Hn, D\), query, positive"):
            loss_fn(None, bad)
    with pytest.raises(ValueError, match="use_labels=True applies to layout 'info_nce'"):
        TemperatureFreeLoss("retrieval", use_labels=True)


# --------------------------------------------------------------------------- dispatch


def test_missing_backend_package_names_it_and_the_extra(monkeypatch) -> None:
    name = keras.backend.backend()
    broken = _backends.Backend(name, "tfree_not_installed", "someframework", "someextra")
    monkeypatch.setitem(_backends.BACKENDS, name, broken)
    with pytest.raises(ImportError, match=r"tfree_not_installed.*pip install 'tfree\[keras,"
                                          r"someextra\]'"):
        TemperatureFreeLoss("nt_xent")(None, PAIRS)


def test_unsupported_keras_backend(monkeypatch) -> None:
    monkeypatch.setattr(keras.backend, "backend", lambda: "openvino")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND"):
        TemperatureFreeLoss("nt_xent")(None, PAIRS)


# --------------------------------------------------------------------------- serialisation


def test_config_and_keras_serialisation_round_trip() -> None:
    loss_fn = TemperatureFreeLoss("info_nce", symmetric=True, use_labels=True,
                                  logit_map="temperature", temperature=0.2, eps=1e-5,
                                  reduction="sum", chunk_size=4, max_batch_size=32,
                                  name="clip_loss", dtype="mixed_float16")
    config = loss_fn.get_config()
    assert TemperatureFreeLoss.from_config(config).get_config() == config
    serialised = keras.saving.serialize_keras_object(loss_fn)
    assert serialised["registered_name"] == "tfree>TemperatureFreeLoss"
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialised)))
    assert isinstance(restored, TemperatureFreeLoss)
    assert restored.get_config() == config
    np.testing.assert_allclose(_np(restored(LABELS, PAIRS)), _np(loss_fn(LABELS, PAIRS)))


def test_old_tfree_tf_saves_still_load() -> None:
    """What ``tfree_tf.TemperatureFreeLoss`` wrote before the class moved (module
    ``tfree_tf._keras``): Keras resolves the registered name, which is unchanged."""
    old = {
        "module": "tfree_tf._keras", "class_name": "TemperatureFreeLoss",
        "registered_name": "tfree>TemperatureFreeLoss",
        "config": {"name": "temperature_free_loss", "reduction": "mean", "layout": "sup_con",
                   "symmetric": False, "use_labels": False, "logit_map": "arctanh",
                   "temperature": None, "eps": 1e-6, "chunk_size": "auto",
                   "check_finite": False, "max_batch_size": None, "dtype": None},
    }
    restored = keras.saving.deserialize_keras_object(old)
    assert isinstance(restored, TemperatureFreeLoss)
    assert restored.layout == "sup_con"


@pytest.mark.skipif(not ON_TF, reason="tfree_tf imports TensorFlow")
def test_tfree_tf_alias() -> None:
    import tfree_tf

    assert tfree_tf.TemperatureFreeLoss is TemperatureFreeLoss
