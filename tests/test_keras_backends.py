"""``tfree_keras.TemperatureFreeLoss`` on every Keras backend, each in its own process.

Keras fixes its backend at its first import (``KERAS_BACKEND``), so this file runs itself as
a script once per backend (TensorFlow, JAX, PyTorch; NumPy evaluates only). Each process
builds the same tiny two-tower model (two Dense towers whose outputs are stacked as
``(N, 2, D)``) with the same weights and data and reports:

* the model's output and the loss of every layout on it (plain and with sample weights),
  compared here across backends and with ``tfree_core`` (float32 tolerance);
* the gradient of the weighted loss w.r.t. ``y_pred`` through the framework's autodiff
  (``GradientTape``, ``jax.grad`` under ``jax.jit``, ``torch.autograd``), compared with
  tfree_core's analytic gradient with the documented cotangent;
* ``model.fit`` on 40 samples in batches of 16 (the last batch has 8: TensorFlow pads it),
  3 epochs, with sample weights (on TensorFlow also with ``jit_compile=True``, XLA; on JAX
  Keras compiles the step): the loss histories must agree across backends;
* a ``.keras`` save / load round trip of the compiled model.

``torch.compile`` (Keras' ``jit_compile=True`` on PyTorch) costs a minute or more of Dynamo
tracing of Keras' train step, so it has its own, smaller test (marked slow).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

FRAMEWORKS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}
TRAINING = ("tensorflow", "jax", "torch")
N, D_IN, D = 40, 8, 8
BATCH = 16
EPOCHS = 3
EVAL_ROWS = 12  # the rows the loss values and gradients are reported on

# id: (layout, keywords, which y_pred: "pairs" (N, 2, D) or "first" (N, D))
CASES = {
    "nt_xent": ("nt_xent", {}, "pairs"),
    "clip": ("info_nce", {"symmetric": True}, "pairs"),
    "info_nce-labels": ("info_nce", {"use_labels": True}, "pairs"),
    "sup_con-2d": ("sup_con", {}, "first"),
    "sup_con-3d": ("sup_con", {}, "pairs"),
}


def _data():
    """Inputs, labels, weights and model weights, the same in every process."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=N)
    centres = rng.normal(size=(5, D_IN))
    base = centres[labels] + 0.5 * rng.normal(size=(N, D_IN))
    queries = (base + 0.3 * rng.normal(size=(N, D_IN))).astype(np.float32)
    keys = (base + 0.3 * rng.normal(size=(N, D_IN))).astype(np.float32)
    weights = rng.uniform(0.25, 2.0, size=N).astype(np.float32)
    weights[3] = 0.0
    return queries, keys, labels, weights, 8  # the last: the models' weight seed


# --------------------------------------------------------------------------- the worker


def _two_tower(keras, seed):
    """Two Dense towers (queries, keys), outputs stacked on axis 1: ``(N, 2, D)``, with
    weights drawn from ``seed`` (the same on every backend). Built-in layers only, so
    ``.keras`` files load in safe mode."""
    def tower(x):
        hidden = keras.layers.Dense(16, activation="tanh")(x)
        return keras.layers.Reshape((1, D))(keras.layers.Dense(D)(hidden))

    query, key = keras.Input((D_IN,)), keras.Input((D_IN,))
    outputs = keras.layers.Concatenate(axis=1)([tower(query), tower(key)])
    model = keras.Model([query, key], outputs)
    rng = np.random.default_rng(seed)
    model.set_weights([(0.4 * rng.normal(size=w.shape)).astype(np.float32)
                       for w in model.get_weights()])
    return model


def _value_and_grad(backend: str, fn, x: np.ndarray):
    """``fn(x)`` and its gradient through the backend's autodiff, as NumPy."""
    if backend == "tensorflow":
        import tensorflow as tf

        tensor = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            value = fn(tensor)
        return float(value), tape.gradient(value, tensor).numpy()
    if backend == "jax":
        import jax

        value, grad = jax.jit(jax.value_and_grad(fn))(x)
        return float(value), np.asarray(grad)
    import torch

    tensor = torch.tensor(x, requires_grad=True)
    value = fn(tensor)
    value.backward()
    return float(value.detach()), tensor.grad.numpy()


def _worker(backend: str, out: str) -> None:  # pragma: no cover - runs in the subprocess
    if backend == "torch":
        import torch  # noqa: F401  (before TensorFlow, should anything import it)
    import keras
    import tfree_keras
    from tfree_keras import TemperatureFreeLoss

    assert keras.backend.backend() == backend, keras.backend.backend()
    queries, keys, labels, weights, seed = _data()
    y = labels.astype(np.float32)
    model = _two_tower(keras, seed)
    y_pred = keras.ops.convert_to_numpy(model([queries, keys]))
    rows = slice(0, EVAL_ROWS)
    report: dict = {"y_pred": y_pred.tolist(), "losses": {}, "grads": {}}
    for case, (layout, kw, view) in CASES.items():
        x = y_pred[rows] if view == "pairs" else y_pred[rows, 0]
        loss_fn = TemperatureFreeLoss(layout, **kw)
        report["losses"][case] = float(loss_fn(y[rows], x))

        def weighted(t, loss_fn=loss_fn):
            return loss_fn(y[rows], t, sample_weight=weights[rows])

        if backend in TRAINING:
            value, grad = _value_and_grad(backend, weighted, x)
            report["grads"][case] = grad.tolist()
        else:
            value = float(weighted(x))
        report["losses"][case + "-weighted"] = value
    if backend not in TRAINING:  # Keras' NumPy backend cannot train
        Path(out).write_text(json.dumps(report))
        return

    def fit(jit_compile, loss_fn):
        model = _two_tower(keras, seed)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss_fn,
                      jit_compile=jit_compile)
        history = model.fit([queries, keys], y, sample_weight=weights, batch_size=BATCH,
                            epochs=EPOCHS, shuffle=False, verbose=0)
        return model, history.history["loss"]

    # max_batch_size: the padding size of TensorFlow's last, smaller batch; the other
    # backends ignore it, so one loss definition serves all three.
    # JAX: Keras always compiles the step (jit_compile=False would run it op by op);
    # TensorFlow: both, XLA with jit_compile=True; PyTorch: eager (torch.compile has its own
    # test, test_torch_compile_fit).
    jit = backend == "jax"
    clip = TemperatureFreeLoss("info_nce", symmetric=True, max_batch_size=BATCH)
    model, report["history"] = fit(jit, clip)
    if backend == "tensorflow":
        report["history_jit"] = fit(True, clip)[1]
    _, report["history_sup_con"] = fit(jit, TemperatureFreeLoss("sup_con",
                                                                max_batch_size=BATCH))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "two_tower.keras")
        model.save(path)
        loaded = keras.models.load_model(path)  # safe mode: no custom_objects needed
    report["loaded_loss_type"] = type(loaded.loss).__module__ + "." + type(loaded.loss).__name__
    report["loaded_config"] = loaded.loss.get_config()
    report["config"] = clip.get_config()
    report["evaluate"] = [m.evaluate([queries, keys], y, batch_size=N, verbose=0)
                          for m in (model, loaded)]
    report["same_class"] = type(loaded.loss) is tfree_keras.TemperatureFreeLoss
    Path(out).write_text(json.dumps(report))


def _torch_compile_worker(out: str) -> None:  # pragma: no cover - runs in the subprocess
    """One epoch of two batches of 16 with ``jit_compile=True`` (Keras wraps the train step
    in ``torch.compile``) and without. Two full batches: a smaller last one would make
    Dynamo trace Keras' whole step again with symbolic sizes (another minute)."""
    import keras
    import torch  # noqa: F401
    from tfree_keras import TemperatureFreeLoss

    queries, keys, labels, weights, seed = _data()
    histories = []
    for jit_compile in (False, True):
        model = _two_tower(keras, seed)
        model.compile(optimizer=keras.optimizers.Adam(0.01), jit_compile=jit_compile,
                      loss=TemperatureFreeLoss("info_nce", symmetric=True))
        assert model.jit_compile is jit_compile
        rows = slice(0, 2 * BATCH)
        history = model.fit([queries[rows], keys[rows]], labels[rows].astype(np.float32),
                            sample_weight=weights[rows], batch_size=BATCH, epochs=1,
                            shuffle=False, verbose=0)
        histories.append(history.history["loss"])
    Path(out).write_text(json.dumps(histories))


# --------------------------------------------------------------------------- the tests


def _env(backend: str) -> dict[str, str]:
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(FRAMEWORKS[backend]) is not None


def _start(backend: str, mode: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, mode, backend, str(out)],
                            cwd=Path(__file__).resolve().parents[1], env=_env(backend),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(backend: str, proc: subprocess.Popen, out: Path, timeout: int):
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{backend}:\n{stderr[-6000:]}"
    return json.loads(out.read_text())


@functools.cache
def _started() -> tuple[Path, dict[str, subprocess.Popen]]:
    """Every installed backend's worker, started at once (they are independent)."""
    tmp = Path(tempfile.mkdtemp(prefix="tfree-keras-"))
    return tmp, {b: _start(b, "worker", tmp / f"{b}.json") for b in FRAMEWORKS if _installed(b)}


@functools.cache
def _report(backend: str) -> dict:
    if not _installed(backend):
        pytest.skip(f"{FRAMEWORKS[backend]} is not installed")
    tmp, procs = _started()
    return _finish(backend, procs[backend], tmp / f"{backend}.json", timeout=600)


def _core_loss(layout, kw, x, labels, weights=None):
    """tfree_core (NumPy, float64) with the documented weighted reduction."""
    import tfree_core

    extra = {}
    if layout == "sup_con":
        args = (x, labels)
    else:
        args = (x[:, 0], x[:, 1])
        if kw.get("use_labels"):
            extra["labels"] = labels
        if kw.get("symmetric"):
            extra["symmetric"] = True
    fn = getattr(tfree_core, layout)
    if weights is None:
        return fn(*args, **extra)
    per = fn(*args, reduction="none", **extra)
    per = per.reshape(2, -1).T if layout == "nt_xent" else per
    shape = (-1,) + (1,) * (per.ndim - 1)
    w = weights.reshape(shape) * np.ones_like(per)
    has_positive = np.ones(len(x), bool)
    if layout == "sup_con" and x.ndim == 2:
        has_positive = (labels[:, None] == labels[None, :]).sum(1) >= 2
    return (per * w).sum() / (w * has_positive.reshape(shape)).sum()


def _core_weighted_grad(layout, kw, x, labels, weights):
    """The weighted mean's gradient: tfree_core's analytic "none" gradient with the
    cotangent ``w_a / Σ_{a with a positive} w_a`` (tests/test_keras_loss.py checks the
    formula against finite differences)."""
    import tfree_core

    extra, args = {}, (x, labels)
    if layout != "sup_con":
        args = (x[:, 0], x[:, 1])
        extra = {"labels": labels} if kw.get("use_labels") else {}
        extra.update({"symmetric": True} if kw.get("symmetric") else {})
    blocks = 2 if layout == "nt_xent" else 1
    anchors = np.ones((len(x), x.shape[1] if layout == "sup_con" and x.ndim == 3 else 1))
    has_positive = np.ones(len(x), bool)
    if layout == "sup_con" and x.ndim == 2:
        has_positive = (labels[:, None] == labels[None, :]).sum(1) >= 2
    per_anchor = weights[:, None] * anchors * np.ones((1, blocks))
    cotangent = per_anchor / (per_anchor * has_positive[:, None]).sum()
    if layout == "nt_xent":
        cotangent = cotangent.T.reshape(-1)
    elif not (layout == "sup_con" and x.ndim == 3):
        cotangent = cotangent[:, 0]
    _, grads = getattr(tfree_core, f"{layout}_value_and_grad")(
        *args, reduction="none", cotangent=cotangent, **extra)
    return grads[0] if layout == "sup_con" else np.stack(grads, axis=1)


@pytest.mark.parametrize("backend", TRAINING)
def test_fit_two_towers(backend) -> None:
    """``fit`` with a last batch of 8 (TensorFlow pads it to 16), sample weights: finite
    and decreasing; with ``jit_compile=True`` the same history."""
    report = _report(backend)
    for key in ("history", "history_sup_con"):
        history = np.asarray(report[key])
        assert len(history) == EPOCHS, (key, history)
        assert np.all(np.isfinite(history)), (key, history)
        assert history[-1] < 0.9 * history[0], (key, history)
    if "history_jit" in report:
        np.testing.assert_allclose(report["history_jit"], report["history"], rtol=1e-5)


def test_same_weights_and_data_give_the_same_loss_on_every_backend() -> None:
    reports = {backend: _report(backend) for backend in FRAMEWORKS if _installed(backend)}
    assert set(TRAINING) & set(reports), "no Keras backend installed"
    _, _, labels, weights, _ = _data()
    reference = np.asarray(next(iter(reports.values()))["y_pred"])
    rows = slice(0, EVAL_ROWS)
    for backend, report in reports.items():
        np.testing.assert_allclose(report["y_pred"], reference, rtol=1e-5, atol=1e-6,
                                   err_msg=backend)
        for case, (layout, kw, view) in CASES.items():
            x = reference[rows].astype(np.float64)
            x = x if view == "pairs" else x[:, 0]
            want = _core_loss(layout, kw, x, labels[rows])
            want_weighted = _core_loss(layout, kw, x, labels[rows], weights[rows])
            np.testing.assert_allclose(report["losses"][case], want, rtol=2e-5,
                                       err_msg=f"{backend} {case}")
            np.testing.assert_allclose(report["losses"][case + "-weighted"], want_weighted,
                                       rtol=2e-5, err_msg=f"{backend} {case} weighted")
    trained = [b for b in TRAINING if b in reports]
    for backend in trained[1:]:  # same initial weights, data and steps: the same training
        for key in ("history", "history_sup_con"):
            np.testing.assert_allclose(reports[backend][key], reports[trained[0]][key],
                                       rtol=1e-4, err_msg=f"{backend} {key}")


@pytest.mark.parametrize("backend", TRAINING)
def test_weighted_gradient_is_the_analytic_one(backend) -> None:
    """The framework's autodiff through tfree's analytic gradient, scaled by the weights."""
    report = _report(backend)
    _, _, labels, weights, _ = _data()
    rows = slice(0, EVAL_ROWS)
    y_pred = np.asarray(report["y_pred"], np.float64)[rows]
    for case, (layout, kw, view) in CASES.items():
        x = y_pred if view == "pairs" else y_pred[:, 0]
        want = _core_weighted_grad(layout, kw, x, labels[rows], weights[rows])
        np.testing.assert_allclose(report["grads"][case], want, rtol=1e-4, atol=1e-6,
                                   err_msg=f"{backend} {case}")


@pytest.mark.parametrize("backend", TRAINING)
def test_keras_file_round_trip(backend) -> None:
    report = _report(backend)
    assert report["same_class"], report["loaded_loss_type"]
    assert report["loaded_config"] == report["config"]
    assert report["config"]["symmetric"] is True
    assert report["config"]["max_batch_size"] == BATCH
    np.testing.assert_allclose(report["evaluate"][1], report["evaluate"][0], rtol=1e-6)


@pytest.mark.slow
def test_torch_compile_fit(tmp_path) -> None:
    """Keras' ``jit_compile=True`` on PyTorch is ``torch.compile`` of the train step: it
    runs, through tfree_torch's autograd Function, and trains as the eager step does."""
    if not _installed("torch"):
        pytest.skip("torch is not installed")
    out = tmp_path / "torch_compile.json"
    eager, compiled = _finish("torch", _start("torch", "torch_compile", out), out, timeout=900)
    assert np.all(np.isfinite(compiled))
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        _torch_compile_worker(sys.argv[3])
