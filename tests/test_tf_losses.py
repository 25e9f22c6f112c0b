"""``tfree_tf``'s functions: the core's values and analytic gradients through
``tf.custom_gradient``, in every layout, reduction and logit map, eagerly, under
``tf.function`` and under XLA, for every floating dtype.

Checks, all in float64 unless a dtype is under test:

* agreement with the NumPy core (loss and gradients) to 1e-12;
* directional central finite differences of the TF forward against the TF gradient;
* agreement with ``tf.GradientTape`` autodiff of a plain TF transcription of SPEC §2-§3
  (inputs away from clip ties, where autodiff and the analytic gradient coincide);
* the custom gradient really runs (a keyword-only call of a ``tf.custom_gradient``
  function silently drops it): a zero row, where autodiff gives ~1e11 and SPEC gives 0,
  and a spy on ``engine.backward``.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import Case, make_cases

import tfree_core as core

tf = pytest.importorskip("tensorflow")
tfree_tf = pytest.importorskip("tfree_tf")
from tfree_tf import _runtime as _tf_runtime  # noqa: E402

from tfree_core import engine  # noqa: E402

CASES = make_cases(np.random.default_rng(7))
BY_NAME = {case.name: case for case in CASES}
MAPS = [{"logit_map": "arctanh"}, {"logit_map": "temperature", "temperature": 0.3}]
REDUCTIONS = ["mean", "sum", "none"]
TF_LOSS = {
    core.info_nce: tfree_tf.info_nce,
    core.nt_xent: tfree_tf.nt_xent,
    core.sup_con: tfree_tf.sup_con,
    core.loss_from_similarity: tfree_tf.loss_from_similarity,
}


def _map_id(options: dict) -> str:
    return options["logit_map"]


def _extra(case: Case) -> dict:
    return {k: tf.constant(v) if isinstance(v, np.ndarray) else v for k, v in case.extra.items()}


def _cotangent(case: Case, reduction: str, seed: int = 3) -> np.ndarray | None:
    """A random upstream gradient of the loss's shape for ``"none"`` (None otherwise)."""
    if reduction != "none":
        return None
    shape = np.shape(case.loss(**case.inputs, **case.extra, reduction="none"))
    return np.random.default_rng(seed).normal(size=shape)


def tf_value_and_grad(
    case: Case,
    inputs: dict[str, np.ndarray],
    *,
    mode: str = "eager",
    cotangent: np.ndarray | None = None,
    **options,
):
    """The TF loss and ``tape.gradient(loss, inputs, output_gradients=cotangent)``."""
    fn = TF_LOSS[case.loss]
    names = list(inputs)
    extra = _extra(case)

    def run(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = fn(**dict(zip(names, xs, strict=True)), **extra, **options)
        out_grad = None if cotangent is None else tf.constant(cotangent, loss.dtype)
        return loss, tape.gradient(loss, list(xs), output_gradients=out_grad)

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla", autograph=False)
    loss, grads = run(*[tf.constant(x) for x in inputs.values()])
    return loss, grads


def _assert_close(got, want, tol: float = 1e-12) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


# --------------------------------------------------------------------------- the core


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", MAPS, ids=_map_id)
def test_matches_core(case: Case, reduction: str, options: dict) -> None:
    cot = _cotangent(case, reduction)
    loss, grads = tf_value_and_grad(case, case.inputs, cotangent=cot, reduction=reduction,
                                    **options)
    want, want_grads = case.value_and_grad(
        **case.inputs, **case.extra, reduction=reduction, cotangent=cot, **options
    )
    assert loss.dtype == tf.float64
    _assert_close(loss, want)
    assert len(grads) == len(want_grads)
    for got, expected, x in zip(grads, want_grads, case.inputs.values(), strict=True):
        assert got.dtype == tf.float64
        assert got.shape == x.shape
        _assert_close(got, expected)


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", MAPS, ids=_map_id)
def test_gradient_matches_finite_differences(case: Case, reduction: str, options: dict) -> None:
    """``Σ_x ⟨∂f/∂x, v_x⟩ = (f(x + h·v) - f(x - h·v)) / 2h`` for a random direction ``v``
    through every differentiable input, with ``f = Σ w·L`` (``w`` a random cotangent for
    ``"none"``)."""
    cot = _cotangent(case, reduction)
    weight = 1.0 if cot is None else cot
    _, grads = tf_value_and_grad(case, case.inputs, cotangent=cot, reduction=reduction,
                                 **options)
    fn, extra = TF_LOSS[case.loss], _extra(case)
    directions = {n: np.random.default_rng(11).normal(size=x.shape)
                  for n, x in case.inputs.items()}
    h = 1e-6

    def f(t: float) -> float:
        moved = {n: tf.constant(x + t * directions[n]) for n, x in case.inputs.items()}
        loss = fn(**moved, **extra, reduction=reduction, **options)
        return float(np.sum(weight * loss.numpy()))

    numeric = (f(h) - f(-h)) / (2 * h)
    analytic = sum(float(np.sum(g.numpy() * v))
                   for g, v in zip(grads, directions.values(), strict=True))
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)


# --------------------------------------------------------------------------- autodiff


def _plain_normalize(z):
    return z / tf.maximum(tf.norm(z, axis=-1, keepdims=True), tf.constant(1e-12, z.dtype))


def _plain_anchor_losses(s, cand, pos, logit_map, eps=1e-6, temperature=None):
    """``L_i = -(1/|P|) Σ_p [ℓ_ip - logsumexp_{C(i)} ℓ_ij]`` (0 without positives), with
    ``ℓ = 2·atanh(clip(S, -b, b))`` or ``S/τ``, by TF ops that autodiff understands."""
    if logit_map == "temperature":
        ell = s / temperature
    else:
        b = core.clip_bound(eps, float64=True)
        ell = 2 * tf.atanh(tf.clip_by_value(s, -b, b))
    neg_inf = tf.constant(-np.inf, s.dtype)
    lse = tf.reduce_logsumexp(tf.where(cand, ell, neg_inf), axis=1)
    count = tf.reduce_sum(tf.cast(pos, s.dtype), axis=1)
    pos_sum = tf.reduce_sum(tf.where(pos, ell, tf.zeros_like(ell)), axis=1)
    safe = tf.maximum(count, 1.0)
    has = count > 0
    lse = tf.where(has, lse, tf.zeros_like(lse))
    return tf.where(has, lse - pos_sum / safe, tf.zeros_like(lse)), has


def _plain_reduce(losses_and_has, reduction):
    losses, has = losses_and_has
    if reduction == "none":
        return losses
    if reduction == "sum":
        return tf.reduce_sum(losses)
    return tf.reduce_sum(losses) / tf.maximum(tf.reduce_sum(tf.cast(has, losses.dtype)), 1.0)


def _plain_retrieval(case: Case, xs: list, reduction: str, **options):
    """In-batch plus hard negatives: query ``i`` against every live key and every live,
    unmasked hard negative, minus the duplicates of its positive (the candidates whose id
    is ``key_ids[i]``); symmetric: key ``i`` against the live queries, the same way."""
    extra = dict(case.extra)
    n = xs[0].shape[0]
    live = np.ones(n, bool) if extra.get("where") is None else np.asarray(extra["where"])
    key_ids = extra.get("key_ids")
    uq, uk = _plain_normalize(xs[0]), _plain_normalize(xs[1])
    columns, col_live, col_ids = [uk], [live], [key_ids]
    if len(xs) == 3:
        hn = xs[2].shape[1]
        columns.append(_plain_normalize(tf.reshape(xs[2], (n * hn, -1))))
        mask = np.ones((n, hn), bool) if extra.get("hard_negative_mask") is None \
            else np.asarray(extra["hard_negative_mask"])
        col_live.append((mask & live[:, None]).reshape(-1))
        hard_ids = extra.get("hard_negative_ids")
        col_ids.append(None if hard_ids is None else np.asarray(hard_ids).reshape(-1))
    s = tf.matmul(uq, tf.concat(columns, axis=0), transpose_b=True)
    cand = live[:, None] & np.concatenate(col_live)[None, :]
    pos = np.zeros(cand.shape, bool)
    pos[np.arange(n), np.arange(n)] = True
    if key_ids is not None:
        ids = np.concatenate([np.full(n * hn, -1) if i is None else i for i in col_ids[1:]]
                             ) if len(col_ids) > 1 else np.zeros(0, int)
        duplicate = np.asarray(key_ids)[:, None] == np.concatenate([key_ids, ids])[None, :]
        cand &= ~duplicate | pos
    forward = _plain_reduce(_plain_anchor_losses(s, cand, pos & cand, **options), reduction)
    if not extra.get("symmetric"):
        return forward
    back_cand = live[:, None] & live[None, :]
    if key_ids is not None:
        back_cand &= ~(np.asarray(key_ids)[:, None] == np.asarray(key_ids)[None, :]) \
            | np.eye(n, dtype=bool)
    back_pos = np.eye(n, dtype=bool) & back_cand
    st = tf.matmul(uk, uq, transpose_b=True)
    backward = _plain_reduce(_plain_anchor_losses(st, back_cand, back_pos, **options),
                             reduction)
    return (forward + backward) / 2


def plain_transcription(case: Case, xs: list, reduction: str, **options):
    """SPEC §2-§3 for ``case`` in plain TF (no analytic gradient, no tricks)."""
    extra = dict(case.extra)
    where = extra.get("where")
    red = _plain_reduce
    if "hard_negatives" in case.inputs or extra.get("key_ids") is not None:
        return _plain_retrieval(case, xs, reduction, **options)
    if case.name.startswith("pairs"):
        uq, uk = _plain_normalize(xs[0]), _plain_normalize(xs[1])
        s = tf.matmul(uq, uk, transpose_b=True)
        n = s.shape[0]
        labels = extra.get("labels")
        pos = np.eye(n, dtype=bool) if labels is None else labels[:, None] == labels[None, :]
        cand = np.ones((n, n), dtype=bool)
        if where is not None:
            cand &= where[:, None] & where[None, :]
        pos &= cand
        forward = red(_plain_anchor_losses(s, cand, pos, **options), reduction)
        if not extra.get("symmetric"):
            return forward
        st = tf.transpose(s)
        backward = red(_plain_anchor_losses(st, cand.T, pos.T, **options), reduction)
        return (forward + backward) / 2
    if case.name.startswith("negatives"):
        uq, uk, un = (_plain_normalize(x) for x in xs)
        s_pos = tf.reduce_sum(uq * uk, axis=1, keepdims=True)
        if len(un.shape) == 2:
            s_neg = tf.matmul(uq, un, transpose_b=True)
        else:
            s_neg = tf.einsum("nd,nmd->nm", uq, un)
        s = tf.concat([s_pos, s_neg], axis=1)
        cand = np.ones(s.shape, dtype=bool)
        if where is not None:
            cand &= where[:, None]
        pos = np.zeros_like(cand)
        pos[:, 0] = True
        return red(_plain_anchor_losses(s, cand, pos & cand, **options), reduction)
    if case.name.startswith("nt_xent"):
        u = _plain_normalize(tf.concat(xs, axis=0))
        s = tf.matmul(u, u, transpose_b=True)
        n2 = s.shape[0]
        idx = np.arange(n2)
        cand = ~np.eye(n2, dtype=bool)
        pos = np.zeros_like(cand)
        pos[idx, (idx + n2 // 2) % n2] = True
        if where is not None:
            w = np.concatenate([where, where])
            cand &= w[:, None] & w[None, :]
        return red(_plain_anchor_losses(s, cand, pos & cand, **options), reduction)
    if case.name.startswith("sup_con"):
        features, labels = xs[0], extra["labels"]
        if len(features.shape) == 3:
            n, v, d = features.shape
            flat = tf.reshape(tf.transpose(features, (1, 0, 2)), (v * n, d))
            labels = np.tile(labels, v)
            where = None if where is None else np.tile(where, v)
        else:
            flat = features
        u = _plain_normalize(flat)
        s = tf.matmul(u, u, transpose_b=True)
        cand = ~np.eye(s.shape[0], dtype=bool)
        if where is not None:
            cand &= where[:, None] & where[None, :]
        pos = (labels[:, None] == labels[None, :]) & cand
        out = red(_plain_anchor_losses(s, cand, pos, **options), reduction)
        if reduction == "none" and len(features.shape) == 3:
            out = tf.transpose(tf.reshape(out, (features.shape[1], features.shape[0])))
        return out
    s = xs[0]
    valid = extra.get("valid_mask")
    cand = np.ones(s.shape, dtype=bool) if valid is None else valid.copy()
    if where is not None:
        cand &= where[:, None]
    pos = extra["positive_mask"] & cand
    return red(_plain_anchor_losses(s, cand, pos, **options), reduction)


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("options", MAPS, ids=_map_id)
def test_matches_gradient_tape_of_plain_transcription(
    case: Case, reduction: str, options: dict
) -> None:
    cot = _cotangent(case, reduction)
    loss, grads = tf_value_and_grad(case, case.inputs, cotangent=cot, reduction=reduction,
                                    **options)
    xs = [tf.constant(x) for x in case.inputs.values()]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        want = plain_transcription(case, xs, reduction, **options)
    want_grads = tape.gradient(
        want, xs, output_gradients=None if cot is None else tf.constant(cot)
    )
    _assert_close(loss, want, 1e-12)
    for got, expected in zip(grads, want_grads, strict=True):
        _assert_close(got, expected, 1e-10)


# --------------------------------------------------------------------------- graph and XLA

# (case, reduction, options): every layout, with masks, "none" with a cotangent and the
# temperature map, traced into one function per mode (an XLA compilation costs seconds).
MODE_CASES = [
    ("pairs-symmetric-where", "mean", MAPS[0]),
    ("pairs-labels-symmetric-where", "none", MAPS[0]),
    ("negatives-per-row-where", "sum", MAPS[0]),
    ("nt_xent-where", "mean", MAPS[0]),
    ("sup_con-3d-where", "none", MAPS[0]),
    ("similarity", "mean", MAPS[0]),
    ("pairs-symmetric", "mean", MAPS[1]),
    ("sup_con-2d", "none", MAPS[1]),
]


@pytest.fixture
def jit_core_off():
    previous = tfree_tf.set_jit_core(False)
    yield
    tfree_tf.set_jit_core(previous)


@pytest.mark.parametrize("mode", ["graph", "graph-op-by-op", "xla"])
def test_tf_function_and_xla_match_core(mode: str, request: pytest.FixtureRequest) -> None:
    """``graph``: ``tf.function`` with the core compiled by XLA inside it (the default);
    ``graph-op-by-op``: the same with :func:`tfree_tf.set_jit_core` off; ``xla``: all of
    it in ``tf.function(jit_compile=True)``."""
    if mode == "graph-op-by-op":
        request.getfixturevalue("jit_core_off")
    # With the core compiled per call (default "graph"), each case costs two XLA
    # compilations: a single-positive, a masked and a "none" case cover that wiring.
    chosen = MODE_CASES[::3] if mode == "graph" else MODE_CASES
    cases = [(BY_NAME[name], reduction, options) for name, reduction, options in chosen]
    cotangents = [_cotangent(case, reduction) for case, reduction, _ in cases]

    def run(*flat):
        out, i = [], 0
        for (case, reduction, options), cot in zip(cases, cotangents, strict=True):
            xs = flat[i:i + len(case.inputs)]
            i += len(case.inputs)
            with tf.GradientTape() as tape:
                tape.watch(xs)
                loss = TF_LOSS[case.loss](**dict(zip(case.inputs, xs, strict=True)),
                                          **_extra(case), reduction=reduction, **options)
            out_grad = None if cot is None else tf.constant(cot)
            out.append((loss, tape.gradient(loss, list(xs), output_gradients=out_grad)))
        return out

    flat = [tf.constant(x) for case, _, _ in cases for x in case.inputs.values()]
    results = tf.function(run, jit_compile=mode == "xla", autograph=False)(*flat)
    for (case, reduction, options), cot, (loss, grads) in zip(
        cases, cotangents, results, strict=True
    ):
        want, want_grads = case.value_and_grad(
            **case.inputs, **case.extra, reduction=reduction, cotangent=cot, **options
        )
        _assert_close(loss, want)
        for got, expected in zip(grads, want_grads, strict=True):
            _assert_close(got, expected)


def test_gradient_taken_outside_tf_function() -> None:
    """The tape outside, the loss inside a compiled function: TF differentiates the
    function call, which must still use the custom gradient."""
    case = BY_NAME["nt_xent-where"]
    loss_fn = tf.function(
        lambda a, b: tfree_tf.nt_xent(a, b, **_extra(case)), jit_compile=True, autograph=False
    )
    xs = [tf.constant(x) for x in case.inputs.values()]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        loss = loss_fn(*xs)
    grads = tape.gradient(loss, xs)
    want, want_grads = case.value_and_grad(**case.inputs, **case.extra)
    _assert_close(loss, want)
    for got, expected in zip(grads, want_grads, strict=True):
        _assert_close(got, expected)


# --------------------------------------------------------------------------- tiled

TILED_CASES = [
    ("pairs-symmetric-where", "none", MAPS[0]),
    ("negatives-per-row-where", "sum", MAPS[0]),
    ("nt_xent-where", "mean", MAPS[1]),
    ("sup_con-3d-where", "mean", MAPS[1]),
]


@pytest.mark.parametrize("mode", ["eager", "graph-op-by-op", "xla"])
def test_tiled_matches_core(mode: str, request: pytest.FixtureRequest) -> None:
    """``chunk_size=2`` (blocks of 2 anchors, the last one padded): a Python loop eagerly,
    a ``tf.while_loop`` in graphs; the values and gradients of the untiled core."""
    if mode == "graph-op-by-op":
        request.getfixturevalue("jit_core_off")
    # Traced while loops are slow to build and compile: two cases (both kernels, a
    # symmetric carry and the temperature map's online softmax) outside eager mode.
    chosen = TILED_CASES if mode == "eager" else TILED_CASES[::3]
    cases = [(BY_NAME[name], reduction, options) for name, reduction, options in chosen]
    cotangents = [_cotangent(case, reduction) for case, reduction, _ in cases]

    def run(*flat):
        out, i = [], 0
        for (case, reduction, options), cot in zip(cases, cotangents, strict=True):
            xs = flat[i:i + len(case.inputs)]
            i += len(case.inputs)
            with tf.GradientTape() as tape:
                tape.watch(xs)
                loss = TF_LOSS[case.loss](**dict(zip(case.inputs, xs, strict=True)),
                                          **_extra(case), reduction=reduction, chunk_size=2,
                                          **options)
            out_grad = None if cot is None else tf.constant(cot)
            out.append((loss, tape.gradient(loss, list(xs), output_gradients=out_grad)))
        return out

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla", autograph=False)
    results = run(*[tf.constant(x) for case, _, _ in cases for x in case.inputs.values()])
    for (case, reduction, options), cot, (loss, grads) in zip(
        cases, cotangents, results, strict=True
    ):
        want, want_grads = case.value_and_grad(
            **case.inputs, **case.extra, reduction=reduction, cotangent=cot, **options
        )
        _assert_close(loss, want)
        for got, expected in zip(grads, want_grads, strict=True):
            _assert_close(got, expected)


# --------------------------------------------------------------------------- dtypes

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


GRAD_TOL = {tf.float16: 2e-3, tf.bfloat16: 1e-2, tf.float32: 1e-5, tf.float64: 1e-12}


def _check_dtype(case: Case, dtype, rounded: dict, loss, grads) -> None:
    """Loss in float32 for half inputs (float64 for float64), each gradient in its input's
    dtype, values as the core's on the same (rounded) inputs computed in float64."""
    exact = {n: tf.cast(x, tf.float64).numpy() for n, x in rounded.items()}
    assert loss.dtype == (tf.float64 if dtype == tf.float64 else tf.float32)
    want, want_grads = case.value_and_grad(**exact, **case.extra)
    _assert_close(loss, want, 1e-12 if dtype == tf.float64 else 1e-5)
    for got, expected, x in zip(grads, want_grads, rounded.values(), strict=True):
        assert got.dtype == dtype
        assert got.shape == x.shape
        _assert_close(got, expected, GRAD_TOL[dtype])


def _dtype_run(case: Case, names: list[str]):
    fn, extra = TF_LOSS[case.loss], _extra(case)

    def run(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = fn(**dict(zip(names, xs, strict=True)), **extra)
        return loss, tape.gradient(loss, list(xs))

    return run


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("name", ["pairs-symmetric", "negatives-shared", "sup_con-3d-where"])
def test_dtypes_eager(dtype, name: str) -> None:
    case = BY_NAME[name]
    rounded = {n: tf.cast(x, dtype) for n, x in case.inputs.items()}
    loss, grads = _dtype_run(case, list(rounded))(*rounded.values())
    _check_dtype(case, dtype, rounded, loss, grads)


def test_half_dtypes_xla() -> None:
    """float16 and bfloat16 in one XLA-compiled function (NT-Xent); float32 and float64
    run under XLA in the tests above."""
    case = BY_NAME["nt_xent-where"]
    run_one = _dtype_run(case, list(case.inputs))
    dtypes = [tf.float16, tf.bfloat16]
    inputs = {d: {n: tf.cast(x, d) for n, x in case.inputs.items()} for d in dtypes}

    def run(*flat):
        return [run_one(*flat[2 * i:2 * i + 2]) for i in range(len(dtypes))]

    flat = [x for d in dtypes for x in inputs[d].values()]
    results = tf.function(run, jit_compile=True, autograph=False)(*flat)
    for dtype, (loss, grads) in zip(dtypes, results, strict=True):
        _check_dtype(case, dtype, inputs[dtype], loss, grads)


def test_identical_views_cap_float32() -> None:
    """SPEC §4: orthonormal identical views, N = 4: every positive past the cap."""
    q = tf.eye(4, 8, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(q)
        loss = tfree_tf.info_nce(q, q)
    grad = tape.gradient(loss, q)
    b = core.clip_bound(1e-6, float64=False)
    cap = np.log1p(np.float64(b)) - np.log1p(-np.float64(b))
    np.testing.assert_allclose(loss.numpy(), np.log1p(3 * np.exp(-cap)), rtol=1e-4)
    assert np.all(np.isfinite(grad.numpy()))


# --------------------------------------------------------------------------- custom gradient


def _zero_row_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    q, k = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    q[2] = 0.0  # a zero row: SPEC §2.1 gives it a zero gradient; autodiff ~1e11
    return q, k


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_custom_gradient_is_used(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if the analytic gradient were bypassed: ``engine.backward`` must run, and the
    zero row's gradient must be SPEC's exact 0 (autodiff of the forward gives ~1e11, and
    a keyword-only ``tf.custom_gradient`` call would give ``None``)."""
    calls = []
    original = engine.backward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "backward", spy)
    _tf_runtime._compiled.cache_clear()  # the compiled backward must be traced anew
    q, k = _zero_row_inputs()

    def run(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = tfree_tf.info_nce(a, b, symmetric=True)
        return tape.gradient(loss, [a, b])

    if mode == "graph":
        run = tf.function(run, autograph=False)
    dq, dk = run(tf.constant(q), tf.constant(k))
    assert calls, "engine.backward was not called: the custom gradient was bypassed"
    assert dq is not None
    assert dk is not None
    assert np.all(np.isfinite(dq.numpy()))
    assert np.all(dq.numpy()[2] == 0.0)
    _, (want_q, want_k) = core.info_nce_value_and_grad(q, k, symmetric=True)
    _assert_close(dq, want_q)
    _assert_close(dk, want_k)


def test_autodiff_of_the_forward_differs_at_a_zero_row() -> None:
    """Keeps the guard above meaningful: plain autodiff of the same forward gives the
    zero row ``du/δ ≈ 1e11``, so a silently dropped custom gradient cannot pass it."""
    from tfree_tf import _xp

    q, k = _zero_row_inputs()
    xs = [tf.constant(q), tf.constant(k)]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        arrays = (*xs, None, None)
        problem = engine.prepare("pairs", arrays, options=engine.make_options(), xp=_xp)
        loss, _ = engine.forward(problem, arrays, _xp)
    dq = tape.gradient(loss, xs[0]).numpy()
    assert np.max(np.abs(dq[2])) > 1e6  # du/δ with δ = 1e-12


def test_variables_receive_the_gradient() -> None:
    q, k = _zero_row_inputs()
    vq, vk = tf.Variable(q), tf.Variable(k)
    with tf.GradientTape() as tape:
        loss = tfree_tf.info_nce(vq, vk)
    dq, dk = tape.gradient(loss, [vq, vk])
    _, (want_q, want_k) = core.info_nce_value_and_grad(q, k)
    _assert_close(dq, want_q)
    _assert_close(dk, want_k)


def test_labels_and_masks_get_no_gradient() -> None:
    case = BY_NAME["similarity"]
    s = tf.constant(case.inputs["similarity"])
    positive = tf.constant(case.extra["positive_mask"])
    valid = tf.constant(case.extra["valid_mask"])
    labels = tf.constant([0.0, 1.0, 0.0, 1.0, 2.0], tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s, labels])
        loss = tfree_tf.loss_from_similarity(s, positive, valid_mask=valid)
        sup = tfree_tf.sup_con(s, tf.cast(labels, tf.int64))
    assert tape.gradient(loss, s) is not None
    assert tape.gradient(sup, labels) is None
    assert tape.gradient(loss, [positive, valid]) == [None, None]


# --------------------------------------------------------------------------- errors


def test_unknown_batch_dimension_raises() -> None:
    fn = tf.function(
        tfree_tf.nt_xent,
        input_signature=[tf.TensorSpec([None, 4], tf.float32)] * 2,
        autograph=False,
    )
    with pytest.raises(ValueError, match="static shapes"):
        fn.get_concrete_function()


def test_validation_errors() -> None:
    q = tf.ones((3, 2), tf.float32)
    with pytest.raises(ValueError, match="negatives cannot be combined"):
        tfree_tf.info_nce(q, q, negatives=q, labels=tf.constant([0, 1, 2]))
    with pytest.raises(TypeError, match="same dtype"):
        tfree_tf.info_nce(q, tf.ones((3, 2), tf.float64))
    with pytest.raises(ValueError, match="temperature"):
        tfree_tf.nt_xent(q, q, temperature=0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        tfree_tf.loss_from_similarity(tf.zeros((2, 2)), tf.eye(2) > 0, chunk_size=2)
    with pytest.raises(ValueError, match="inside valid_mask"):
        tfree_tf.loss_from_similarity(
            tf.zeros((2, 2)), tf.constant([[True, False], [False, True]]),
            valid_mask=tf.constant([[False, True], [True, True]]),
        )


def test_numpy_inputs_keep_their_dtype() -> None:
    case = BY_NAME["pairs"]
    loss = tfree_tf.info_nce(case.inputs["query"], case.inputs["key"])
    assert loss.dtype == tf.float64
    _assert_close(loss, core.info_nce(case.inputs["query"], case.inputs["key"]))


# --------------------------------------------------------------------------- logits


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_logits_values_and_gradient(mode: str) -> None:
    b64 = core.clip_bound(1e-6, float64=True)
    s = np.array([0.5, 0.9, -0.3, b64, 1.0, -1.0, np.nextafter(b64, 1.0)])

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tfree_tf.logits(x)
        return value, tape.gradient(value, x)

    if mode == "xla":
        run = tf.function(run, jit_compile=True, autograph=False)
    value, grad = run(tf.constant(s))
    value, grad = value.numpy(), grad.numpy()
    np.testing.assert_allclose(value[:2], [np.log(3), np.log(19)], rtol=1e-15)
    np.testing.assert_allclose(value[4], 14.508657, rtol=1e-7)
    slope = 2 / ((1 - s[:4]) * (1 + s[:4]))
    np.testing.assert_allclose(grad[:4], slope, rtol=1e-12)  # the bound b included
    assert np.all(grad[4:] == 0.0)  # clamped entries: no gradient


def test_logits_half_precision() -> None:
    s = tf.constant([0.5, 0.9999], tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch(s)
        value = tfree_tf.logits(s)
    grad = tape.gradient(value, s)
    assert value.dtype == tf.float32
    assert grad.dtype == tf.bfloat16
    assert np.all(np.isfinite(value.numpy()))
