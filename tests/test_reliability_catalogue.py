"""The bad-input catalogue (``bad_inputs.py``) on every installed backend.

For every case and backend: the same exception type and the same message as the core,
raised before any computation, eagerly and under tracing (``jax.jit``, ``tf.function``,
``torch.compile``). Value checks (``check_finite=True``, positives inside ``valid_mask``)
need concrete values; under tracing they behave as documented (see each case's
``traced``). Device cases run eagerly here (torch: ``cpu`` and ``meta``; the core:
``array_api_strict`` devices) and in a subprocess with two JAX and two TensorFlow CPU
devices.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# torch's compiler must be loaded before TensorFlow: the other order aborts the process
# (both register the same LLVM command-line options).
if importlib.util.find_spec("torch") is not None:
    import torch
    import torch._dynamo
else:  # pragma: no cover
    torch = None

import bad_inputs as bad

from tfree_core import _validation as check
from tfree_core import engine

INSTALLED = ["core"] + [
    b for b, mod in (("torch", "torch"), ("jax", "jax"), ("tf", "tensorflow"))
    if importlib.util.find_spec(mod) is not None
]
TRACED = [b for b in INSTALLED if b != "core"]
RAN: dict[str, int] = {}


pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 stays float64 in JAX


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the forward computation starts (normalisation, ``S``)."""
    started = []

    def spy(*args, **kwargs):
        started.append(True)
        raise AssertionError("the forward computation started before validation failed")

    for spec in engine.LAYOUTS.values():  # every evaluation starts with a layout's set-up
        monkeypatch.setattr(type(spec), "setup", spy)
    return started


def _count(kind: str) -> None:
    RAN[kind] = RAN.get(kind, 0) + 1


def _eager_cases(backend: str) -> list:
    cases = []
    for case in bad.CASES:
        if backend not in case.backends:
            continue
        if backend in ("jax", "tf") and "device" in case.tags:
            continue  # one device in this process: see test_device_cases_in_subprocess
        cases.append(pytest.param(case, id=case.id))
    return cases


def _catalogue_params(backends, traced: bool = False):
    out = []
    for backend in backends:
        for param in _eager_cases(backend):
            case = param.values[0]
            if traced and "device" in case.tags and backend != "torch":
                continue  # no device while tracing (jax.jit), or one device (tf)
            if traced and "raw" in case.tags:
                continue  # jax.jit and tf.function convert NumPy arguments themselves
            out.append(pytest.param(backend, case, id=f"{backend}-{case.id}"))
    return out


# --------------------------------------------------------------------------- the core


@pytest.mark.parametrize("case", bad.CASES, ids=repr)
def test_core_raises_with_the_named_words(case):
    """The core (NumPy; ``array_api_strict`` for devices) raises the catalogued type and
    its message names the argument, what it got and what it needs."""
    _, run = bad.call(case, "core")
    with pytest.raises(case.error) as info:
        run()
    message = str(info.value)
    for word in case.words:
        assert word in message, f"{word!r} not in {message!r}"
    assert type(info.value) is case.error
    _count("core")


def test_catalogue_covers_the_issue_list():
    """Every kind of bad input the reliability issue lists has at least one case."""
    ids = " ".join(c.id for c in bad.CASES)
    for kind in ("rank-", "n-", "d-", "empty-", "int-", "complex-", "labels-", "negatives",
                 "foreign-", "device-", "dtype-", "eps-", "reduction", "logit-map",
                 "temperature-", "chunk-size-", "requires-grad", "finite-"):
        assert kind in ids, kind
    functions = {c.function for c in bad.CASES}
    assert functions == set(bad.FUNCTIONS)


# --------------------------------------------------------------------------- eagerly


@pytest.mark.parametrize(("backend", "case"), _catalogue_params(INSTALLED))
def test_eager_same_type_and_message(backend, case, no_work):
    named, run = bad.call(case, backend)
    want = bad.expected(case, backend, named)
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked exactly
        run()
    assert type(info.value) is case.error, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value) == want
    assert not no_work
    _count(f"eager-{backend}")


# --------------------------------------------------------------------------- traced


def _traced_call(case, backend: str):
    """The call with its arrays as traced arguments (foreign arrays closed over: the
    tracing library would reject them itself), hyper-parameters as constants."""
    named, _ = bad.call(case, backend)
    fn = getattr(bad.module(backend), case.function)
    names = bad._positional_names(case.function)
    positional = [n for n in names if n in named]
    traced = {k: v for k, v in named.items()
              if bad.is_array(v) and k not in _foreign_names(case)}
    fixed = {k: v for k, v in named.items() if k not in traced}

    def body(arrays):
        values = {**fixed, **arrays}
        return fn(*(values[n] for n in positional),
                  **{k: v for k, v in values.items() if k not in positional})

    if backend == "jax":
        import jax

        return named, lambda: jax.jit(body)(traced)
    if backend == "tf":
        import tensorflow as tf

        return named, lambda: tf.function(body, autograph=False)(traced)
    # Floating inputs require a gradient, as in training: the autograd.Function is traced.
    traced = {k: v.detach().clone().requires_grad_(True) if v.is_floating_point() else v
              for k, v in traced.items()}
    torch._dynamo.reset()
    # fullgraph=True: tracing stops at the first exception (without it, Dynamo retries the
    # frame around the error, 10x slower); Dynamo then reports the error as Unsupported,
    # quoting it (test_traced_same_type_and_message reads the quote).
    compiled = torch.compile(body, backend="eager", fullgraph=True)
    return named, lambda: compiled(traced)


def _foreign_names(case) -> set[str]:
    names = bad._positional_names(case.function)
    out = {n for n, a in zip(names, case.args, strict=False) if isinstance(a, bad.Foreign)}
    return out | {k for k, v in case.kwargs.items() if isinstance(v, bad.Foreign)}


@pytest.mark.parametrize(("backend", "case"), _catalogue_params(TRACED, traced=True))
def test_traced_same_type_and_message(backend, case):
    """Under ``jax.jit``, ``tf.function`` and ``torch.compile``: the eager error at trace
    time; value checks as documented (skipped, or check_finite's needs-eager error)."""
    named, run = _traced_call(case, backend)
    if case.traced == "skipped":
        run()  # no error: the value check needs concrete values
        _count(f"traced-{backend}")
        return
    if case.traced == "needs_eager":
        error, want = ValueError, check.needs_eager_message(bad.TRACED_MECHANISM[backend])
    else:
        error, want = case.error, bad.expected(case, backend, named)
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked exactly
        run()
    if backend == "torch":  # fullgraph=True: Dynamo's Unsupported, quoting the error
        assert type(info.value) is torch._dynamo.exc.Unsupported, info.value
        assert f"raised exception {error(want)!r}" in str(info.value)
    else:
        assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
        assert str(info.value) == want
    _count(f"traced-{backend}")


@pytest.mark.skipif("tf" not in INSTALLED, reason="tensorflow not installed")
@pytest.mark.parametrize("case_id", ["n-key", "int-query", "eps-zero", "finite-nan-query"])
def test_tf_function_with_autograph_keeps_type_and_message(case_id):
    """With AutoGraph (``tf.function``'s default) TensorFlow prefixes the message with the
    user's traceback ("in user code: ..."); the type and the message itself are kept."""
    import tensorflow as tf

    case = bad.BY_ID[case_id]
    named, _ = bad.call(case, "tf")
    fn = getattr(bad.module("tf"), case.function)
    names = bad._positional_names(case.function)
    arrays = [named[n] for n in names]
    kwargs = {k: v for k, v in named.items() if k not in names}
    with pytest.raises(Exception) as info:  # noqa: PT011
        tf.function(lambda *a: fn(*a, **kwargs))(*arrays)
    want = (check.needs_eager_message("tf.function") if case.traced == "needs_eager"
            else bad.expected(case, "tf", named))
    error = ValueError if case.traced == "needs_eager" else case.error
    assert type(info.value) is error
    assert str(info.value).rstrip().endswith(want)


@pytest.mark.skipif("torch" not in INSTALLED, reason="torch not installed")
@pytest.mark.parametrize("case_id", ["int-query", "eps-zero", "rank-features",
                                     "finite-nan-query"])
def test_compile_without_fullgraph_raises_the_eager_error(case_id):
    """``torch.compile`` without ``fullgraph``: Dynamo gives up on the frame at the error
    and runs it eagerly, so the caller gets the eager exception itself (check_finite
    included: the check then runs on the eager values)."""
    case = bad.BY_ID[case_id]
    named, _ = bad.call(case, "torch")
    fn = getattr(bad.module("torch"), case.function)
    names = bad._positional_names(case.function)
    kwargs = {k: v for k, v in named.items() if k not in names}
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fn(*a, **kwargs), backend="eager")
    with pytest.raises(case.error) as info:
        compiled(*(named[n] for n in names))
    assert type(info.value) is case.error
    assert str(info.value) == bad.expected(case, "torch", named)


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not {"jax", "tf"} & set(INSTALLED), reason="neither jax nor tf")
def test_device_cases_in_subprocess():
    """JAX and TensorFlow with two CPU devices each (configured before they start, hence a
    fresh interpreter): arrays on two devices are a ValueError with the core's message."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "bad_inputs.py"), "devices"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    device_cases = [c for c in bad.CASES if "device" in c.tags]
    for backend in set(INSTALLED) & {"jax", "tf"}:
        for case in device_cases:
            kind, message, want = report[backend][case.id]
            assert kind == "ValueError", (backend, case.id, kind, message)
            assert message == want
            _count(f"eager-{backend}")
    assert report["jax"]["devices"] == ["cpu:0", "cpu:1"]


# --------------------------------------------------------------------------- check_finite


def _finite_inputs():
    rng = np.random.default_rng(3)
    return rng.normal(size=(5, 4)), rng.normal(size=(5, 4))


@pytest.mark.parametrize("backend", INSTALLED)
def test_check_finite_passes_finite_inputs_unchanged(backend):
    """On finite inputs ``check_finite=True`` changes nothing: the same loss, bit for bit."""
    q, k = _finite_inputs()
    convert = bad.converter(backend)
    fn = bad.module(backend).info_nce
    plain = np.asarray(fn(convert(q), convert(k)))
    checked = np.asarray(fn(convert(q), convert(k), check_finite=True))
    assert plain.tobytes() == checked.tobytes()


@pytest.mark.parametrize("backend", INSTALLED)
def test_check_finite_default_reads_no_values(backend):
    """Without ``check_finite`` a NaN input is not rejected (no value is read): the loss
    comes out NaN, as the framework's own losses do."""
    q, k = _finite_inputs()
    q[0, 0] = np.nan
    convert = bad.converter(backend)
    loss = np.asarray(bad.module(backend).info_nce(convert(q), convert(k)))
    assert np.isnan(loss)


def test_check_finite_under_eager_autodiff():
    """Eager autodiff keeps the values concrete: the check runs under ``jax.grad``, a
    ``tf.GradientTape`` and torch autograd."""
    q, k = _finite_inputs()
    q[2, 1] = np.inf
    want = "check_finite=True: query has 1 non-finite values (0 NaN, 1 ±inf)"
    if "jax" in INSTALLED:
        import jax
        import tfree_jax

        with pytest.raises(ValueError, match=want.replace("(", r"\(").replace(")", r"\)")):
            jax.grad(lambda x: tfree_jax.info_nce(x, k, check_finite=True))(q)
        # and under vmap the values are unknown: the needs-eager error
        with pytest.raises(ValueError, match=r"jax\.vmap"):
            jax.vmap(lambda x: tfree_jax.info_nce(x, x, check_finite=True))(q[None])
    if "tf" in INSTALLED:
        import tensorflow as tf
        import tfree_tf

        x = tf.Variable(q)
        with tf.GradientTape(), pytest.raises(ValueError, match=r"^check_finite") as info:
            tfree_tf.info_nce(x, k, check_finite=True)
        assert str(info.value).startswith(want)
    if "torch" in INSTALLED:
        import tfree_torch

        x = torch.tensor(q, requires_grad=True)
        with pytest.raises(ValueError, match=r"^check_finite") as info:
            tfree_torch.info_nce(x, torch.tensor(k), check_finite=True)
        assert str(info.value).startswith(want)
        with pytest.raises(ValueError, match=r"torch\.func\.vmap"):
            torch.func.vmap(lambda a: tfree_torch.info_nce(a, a, check_finite=True))(
                torch.tensor(q)[None])


def test_check_finite_on_the_layer_objects():
    """The torch module and the Keras loss take ``check_finite`` too (Keras: eager only,
    ``run_eagerly=True``; in a traced step it is the needs-eager error)."""
    q, k = _finite_inputs()
    q[1, 1] = np.nan
    if "torch" in INSTALLED:
        import tfree_torch

        module = tfree_torch.TemperatureFreeLoss("info_nce", check_finite=True)
        assert "check_finite=True" in repr(module)
        with pytest.raises(ValueError, match="query has 1 non-finite"):
            module(torch.tensor(q), torch.tensor(k))
        with pytest.raises(TypeError, match="check_finite must be a bool"):
            tfree_torch.TemperatureFreeLoss(check_finite=1)
    if "tf" in INSTALLED:
        import tensorflow as tf
        import tfree_tf

        loss = tfree_tf.TemperatureFreeLoss("nt_xent", check_finite=True)
        assert loss.get_config()["check_finite"] is True
        assert tfree_tf.TemperatureFreeLoss.from_config(loss.get_config()).check_finite
        y_pred = tf.constant(np.stack([q, k], axis=1))
        with pytest.raises(ValueError, match="z1 has 1 non-finite"):
            loss(None, y_pred)
        with pytest.raises(ValueError, match=r"unknown while tf\.function traces"):
            tf.function(lambda y: loss(None, y))(y_pred)


def test_ran_every_case_on_every_backend():
    """Guard against a silently empty parametrisation: runs last in this file (pytest keeps
    the file order) and checks the counters of the tests above."""
    if not RAN:
        pytest.skip("run with the whole file to count the cases")
    assert RAN.get("core") == len(bad.CASES)
    for backend in INSTALLED:
        cases = [case for case in bad.CASES if backend in case.backends]
        assert len(cases) > len(bad.CASES) // 2, (backend, "most cases are for every backend")
        assert RAN.get(f"eager-{backend}", 0) == len(cases), (backend, RAN)
    print("\ncatalogue cases run:", json.dumps(RAN, sort_keys=True))
