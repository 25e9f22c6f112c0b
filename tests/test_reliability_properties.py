"""Adversarial numerics on every backend and dtype (Hypothesis).

Inputs are built to hit the corners: identical rows, near-duplicates (1 − s ≈ 1e-5),
antipodal rows, zero rows, row norms across each dtype's range (float16 1e-2 to 6e4;
bfloat16 and float32 1e-30 to 1e30; float64 1e-150 to 1e150), all-equal labels and
anchors without any positive. For every example:

* the loss and the gradients have no NaN, the loss is finite and ≥ 0, and a gradient is
  infinite only where the exact gradient exceeds the input dtype's range (float16: 65504);
* they agree with the float64 core evaluated on the same (rounded) inputs, with the clip
  bound of the backend's compute dtype, within the conformance tolerances
  (``conformance/tolerances.py``) plus the first-order effect of rounding ``S`` in the
  compute dtype: ``φ'(s) = 2/(1 − s²)`` turns the unavoidable error ``δS ≈ (D + 2)·u``
  of a similarity into a logit error ``φ'·δS`` (for 1 − s ≈ 1e-5 in float32: about 1e-2).
  The bound is computed from the exact similarities by an independent float64
  transcription of SPEC §2-§3 (which must itself agree with the core), and every example
  records whether it needed it.

The number of examples run per backend and dtype is counted and checked at the end.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if importlib.util.find_spec("torch") is not None:  # before TensorFlow (see the catalogue)
    import torch
    import torch._dynamo

import tfree_core as core
from conformance.tolerances import TOLERANCES

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - comes with jax
    BFLOAT16 = None

BACKENDS = ["core"] + [
    b for b, mod in (("torch", "torch"), ("jax", "jax"), ("tf", "tensorflow"))
    if importlib.util.find_spec(mod) is not None
]
DTYPES = ("float16", "bfloat16", "float32", "float64")
LAYOUTS = ("pairs", "pairs_symmetric", "pairs_labels", "negatives", "nt_xent", "sup_con")
EXAMPLES = 30  # per backend and dtype
N, D, M = 4, 3, 3  # fixed shapes: JAX compiles once per layout, reduction and dtype
LOG_NORMS = {"float16": (-2.0, np.log10(6e4)), "bfloat16": (-30.0, 30.0),
             "float32": (-30.0, 30.0), "float64": (-150.0, 150.0)}
EPS = 1e-6
DELTA = 1e-12  # SPEC §2.1's zero-row threshold
RAN: dict[str, int] = {}
CONDITIONED: dict[str, int] = {}  # examples that needed the rounding term of S
WORST: dict[str, float] = {}  # largest error / tolerance seen


pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 stays float64 in JAX


# --------------------------------------------------------------------------- inputs


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.normal(size=d)
    return v / np.linalg.norm(v)


def _near(u: np.ndarray, gap: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector ``v`` with ``1 − ⟨u, v⟩ = gap`` (exactly, before rounding)."""
    w = _unit(rng, u.shape[0])
    w = w - u * (w @ u)
    w /= np.linalg.norm(w)
    theta = np.arccos(1.0 - gap)
    return np.cos(theta) * u + np.sin(theta) * w


def _rows(rng, kinds, log_norms, base=None):
    """Rows of the requested kinds, each scaled to its norm (zero rows stay zero)."""
    first = _unit(rng, D) if base is None else base
    out = []
    for kind, log_norm in zip(kinds, log_norms, strict=True):
        if kind == "random":
            u = _unit(rng, D)
        elif kind == "same":
            u = first
        elif kind == "near":
            u = _near(first, 10.0 ** rng.uniform(-5.5, -4.5), rng)
        elif kind == "antipodal":
            u = -first
        else:  # zero
            out.append(np.zeros(D))
            continue
        out.append(u * 10.0**log_norm)
    return np.array(out)


def _avoid_floor(log_norm: float) -> float:
    """Keep norms away from the zero-row threshold 1e-12, where the float32 and float64
    norms of one row could fall on either side."""
    return log_norm if abs(log_norm + 12.0) > 0.05 else log_norm + 0.1


@dataclass
class Example:
    backend: str
    dtype: str
    layout: str
    reduction: str
    inputs: dict[str, np.ndarray]  # float64 values exactly representable in ``dtype``
    labels: np.ndarray | None

    @property
    def kind(self) -> str:
        return f"{self.backend}-{self.dtype}"


KINDS = ("random", "same", "near", "antipodal", "zero")


@st.composite
def examples(draw, backend: str, dtype: str) -> Example:
    layout = draw(st.sampled_from(LAYOUTS))
    reduction = draw(st.sampled_from(("mean", "sum", "none")))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = LOG_NORMS[dtype]
    shared = draw(st.booleans())  # one norm for every row, or one per row

    def norms(count: int) -> list[float]:
        if shared:
            value = _avoid_floor(draw(st.floats(lo, hi)))
            return [value] * count
        return [_avoid_floor(draw(st.floats(lo, hi))) for _ in range(count)]

    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=N, max_size=N))
    first = _rows(rng, kinds, norms(N))
    base = first[0] / max(np.linalg.norm(first[0]), 1e-300) if kinds[0] != "zero" else None
    second_kind = draw(st.sampled_from(("copy", "near", "antipodal", "permuted", "own")))
    if second_kind == "copy":
        second = first.copy()
    elif second_kind == "permuted":
        second = first[rng.permutation(N)]
    elif second_kind == "own":
        second = _rows(rng, draw(st.lists(st.sampled_from(KINDS), min_size=N, max_size=N)),
                       norms(N), base)
    else:
        second = _rows(rng, [second_kind if k != "zero" else "zero" for k in kinds],
                       norms(N), base)
    labels_kind = draw(st.sampled_from(("random", "equal", "distinct")))
    labels = {"random": rng.integers(0, 2, N), "equal": np.zeros(N, np.int64),
              "distinct": np.arange(N)}[labels_kind].astype(np.int64)
    if layout == "pairs" or layout == "pairs_symmetric" or layout == "nt_xent":
        inputs = {"a": first, "b": second}
        labels = None
    elif layout == "pairs_labels":
        inputs = {"a": first, "b": second}
    elif layout == "negatives":
        negatives = _rows(rng, draw(st.lists(st.sampled_from(KINDS), min_size=M, max_size=M)),
                          norms(M), base)
        inputs = {"a": first, "b": second, "negatives": negatives}
        labels = None
    else:
        inputs = {"a": first}
    rounded = {k: _round(v, dtype) for k, v in inputs.items()}
    return Example(backend, dtype, layout, reduction, rounded, labels)


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` (finite: norms stay within the dtype's range), as float64."""
    if dtype == "bfloat16":
        return x.astype(BFLOAT16).astype(np.float64)
    return x.astype(dtype).astype(np.float64)


# --------------------------------------------------------------------------- reference


def _normalise(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``u = z / max(‖z‖, δ)`` in float64 without overflow (SPEC §2.1)."""
    scale = np.max(np.abs(z), axis=1, keepdims=True)
    safe = np.where(scale > 0, scale, 1.0)
    norm = (safe * np.sqrt(np.sum((z / safe) ** 2, axis=1, keepdims=True)))[:, 0]
    norm = np.where(scale[:, 0] > 0, norm, 0.0)
    return z / np.maximum(norm, DELTA)[:, None], norm


@dataclass
class Direction:
    s: np.ndarray
    valid: np.ndarray
    positive: np.ndarray
    rows: np.ndarray  # global row of each anchor
    cols: np.ndarray  # global row of each candidate


def _directions(ex: Example) -> tuple[list[Direction], np.ndarray, np.ndarray]:
    """SPEC §3: each layout as anchors × candidates over the global rows (all embedding
    rows stacked), with its candidate and positive masks."""
    names = [k for k in ("a", "b", "negatives") if k in ex.inputs]
    z = np.concatenate([ex.inputs[k] for k in names])
    u, norm = _normalise(z)
    idx = np.arange(N)
    if ex.layout in ("nt_xent", "sup_con"):
        count = z.shape[0]
        s = u @ u.T
        valid = ~np.eye(count, dtype=bool)
        if ex.layout == "nt_xent":
            partner = np.concatenate([idx + N, idx])
            positive = np.zeros_like(valid)
            positive[np.arange(count), partner] = True
        else:
            positive = (ex.labels[:, None] == ex.labels[None, :]) & valid
        rows = np.arange(count)
        return [Direction(s, valid, positive, rows, rows)], z, norm
    q, k = u[:N], u[N:2 * N]
    if ex.layout == "negatives":
        neg = u[2 * N:]
        s = np.concatenate([q @ k.T, q @ neg.T], axis=1)
        valid = np.concatenate([np.eye(N, dtype=bool), np.ones((N, M), bool)], axis=1)
        positive = np.concatenate([np.eye(N, dtype=bool), np.zeros((N, M), bool)], axis=1)
        return [Direction(s, valid, positive, idx, np.arange(N, 2 * N + M))], z, norm
    s = q @ k.T
    valid = np.ones((N, N), bool)
    positive = (np.eye(N, dtype=bool) if ex.labels is None
                else ex.labels[:, None] == ex.labels[None, :])
    out = [Direction(s, valid, positive, idx, idx + N)]
    if ex.layout == "pairs_symmetric":
        out.append(Direction(s.T, valid, positive.T, idx + N, idx))
    return out, z, norm


def _compute_bound(dtype: str) -> float:
    return float(np.float64(1.0) - core.clip_bound(EPS, float64=dtype == "float64"))


@dataclass
class Reference:
    loss: np.ndarray
    loss_bound: np.ndarray  # first-order effect of rounding S, per loss element
    grad_scale: np.ndarray  # per global row: Σ|∂L/∂S| over its pairs / ‖z‖ (conformance)
    grad_bound: np.ndarray  # per global row: first-order effect of rounding S
    unit: float  # the unit round-off of the compute dtype the bounds assume


def reference(ex: Example) -> Reference:
    """An independent float64 transcription of SPEC §2 on the exact similarities, with
    the clip bound of the backend's compute dtype; the bounds use ``δS = (D + 2)·u``."""
    eps = _compute_bound(ex.dtype)
    b = 1.0 - eps
    u_c = 2.0**-53 if ex.dtype == "float64" else 2.0**-24
    delta = (D + 2) * u_c
    dirs, z, norm = _directions(ex)
    rows_total = z.shape[0]
    half = 0.5 if len(dirs) == 2 else 1.0
    losses, bounds = [], []
    g_abs = np.zeros(rows_total)
    g_err = np.zeros(rows_total)
    for d in dirs:
        s = d.s
        a = np.abs(s)
        firm = a >= b + delta  # clamped whatever the rounding: no logit change
        near = (~firm) & (a >= b - delta)
        sc = np.clip(s, -b, b)
        slope = np.where(a <= b, 2.0 / (1.0 - sc**2), 0.0)  # φ' (0 outside the clip)
        w = np.where(firm, 0.0, np.where(near, 2.0 / (1.0 - b * b), 2.0 / (1 - sc**2)))
        curv = np.where(firm, 0.0, 4.0 * np.abs(sc) / (1.0 - sc**2) ** 2)  # |φ''|
        ell = np.log1p(sc) - np.log1p(-sc)
        ell = np.where(d.valid, ell, -np.inf)
        top = np.max(ell, axis=1, keepdims=True)
        p = np.where(d.valid, np.exp(ell - top), 0.0)
        p /= p.sum(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.sum(np.where(d.valid, np.exp(ell - top), 0.0), axis=1))
        count = d.positive.sum(axis=1)
        has = count > 0
        pos_sum = np.where(d.positive, ell, 0.0).sum(axis=1)
        per_anchor = np.where(has, lse - pos_sum / np.maximum(count, 1), 0.0)
        kappa = np.where(has, 2.0 * np.max(np.where(d.valid, w, 0.0), axis=1), 0.0) * delta
        n_pos = max(int(has.sum()), 1)
        if ex.reduction == "mean":
            weight = np.where(has, half / n_pos, 0.0)
            losses.append(per_anchor.sum() / n_pos)
            bounds.append(kappa.sum() / n_pos)
        elif ex.reduction == "sum":
            weight = np.where(has, half, 0.0)
            losses.append(per_anchor.sum())
            bounds.append(kappa.sum())
        else:
            weight = np.where(has, half, 0.0)
            losses.append(per_anchor)
            bounds.append(kappa)
        y = np.where(d.positive, 1.0 / np.maximum(count, 1)[:, None], 0.0)
        g = weight[:, None] * (p - y) * slope * d.valid
        pw = np.sum(p * np.where(d.valid, w, 0.0), axis=1, keepdims=True)
        dg = weight[:, None] * delta * d.valid * (p * w * (w + pw) + np.abs(p - y) * curv)
        np.add.at(g_abs, d.rows, np.abs(g).sum(axis=1))
        np.add.at(g_abs, d.cols, np.abs(g).sum(axis=0))
        np.add.at(g_err, d.rows, dg.sum(axis=1))
        np.add.at(g_err, d.cols, dg.sum(axis=0))
    loss = losses[0] if len(losses) == 1 else (losses[0] + losses[1]) / 2
    bound = bounds[0] if len(bounds) == 1 else (bounds[0] + bounds[1]) / 2
    live = norm >= DELTA  # zero rows get no gradient (SPEC §2.1)
    scale = np.where(live, g_abs / np.maximum(norm, DELTA), 0.0)
    err = np.where(live, g_err / np.maximum(norm, DELTA), 0.0)
    return Reference(np.asarray(loss, float), np.asarray(bound, float), scale, err, u_c)


def core_float64(ex: Example) -> tuple[np.ndarray, list[np.ndarray]]:
    """The float64 core on the rounded inputs, clipped at the compute dtype's bound."""
    loss, grads = _call(core, ex, {k: v for k, v in ex.inputs.items()},
                        eps=_compute_bound(ex.dtype), with_grad=True)
    return np.asarray(loss, np.float64), [np.asarray(g, np.float64) for g in grads]


def _call(module, ex: Example, arrays: dict, labels=None, *, eps: float = EPS,
          with_grad: bool = False):
    if labels is None:
        labels = ex.labels
    kw = {"reduction": ex.reduction, "eps": eps}
    suffix = "_value_and_grad" if with_grad else ""
    a, b = arrays.get("a"), arrays.get("b")
    if ex.layout.startswith("pairs"):
        return getattr(module, "info_nce" + suffix)(
            a, b, symmetric=ex.layout == "pairs_symmetric",
            labels=labels if ex.layout == "pairs_labels" else None, **kw)
    if ex.layout == "negatives":
        return getattr(module, "info_nce" + suffix)(a, b, negatives=arrays["negatives"], **kw)
    if ex.layout == "nt_xent":
        return getattr(module, "nt_xent" + suffix)(a, b, **kw)
    return getattr(module, "sup_con" + suffix)(a, labels, **kw)


# --------------------------------------------------------------------------- backends


def run_backend(ex: Example) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Loss, gradients of Σ loss (as float64, cast losslessly) and the gradients' dtypes."""
    names = list(ex.inputs)
    if ex.backend == "core":
        arrays = {k: v.astype(ex.dtype) for k, v in ex.inputs.items()}
        loss, grads = _call(core, ex, arrays, with_grad=True)
        return (np.asarray(loss, np.float64), [np.asarray(g, np.float64) for g in grads],
                [str(g.dtype) for g in grads])
    if ex.backend == "torch":
        import tfree_torch

        dt = getattr(torch, ex.dtype)
        xs = {k: torch.tensor(v, dtype=torch.float64).to(dt).requires_grad_(True)
              for k, v in ex.inputs.items()}
        labels = None if ex.labels is None else torch.from_numpy(ex.labels)
        loss = _call(tfree_torch, ex, xs, labels)
        grads = torch.autograd.grad(loss.sum(), [xs[k] for k in names])
        return (loss.detach().double().numpy(), [g.double().numpy() for g in grads],
                [str(g.dtype).replace("torch.", "") for g in grads])
    if ex.backend == "jax":
        import jax
        import jax.numpy as jnp
        import tfree_jax

        dt = {"bfloat16": jnp.bfloat16}.get(ex.dtype, ex.dtype)
        xs = {k: jnp.asarray(v, dtype=jnp.float64).astype(dt) for k, v in ex.inputs.items()}
        labels = None if ex.labels is None else jnp.asarray(ex.labels)

        def total(values):
            value = _call(tfree_jax, ex, values, labels)
            return jnp.sum(value), value

        (_, loss), grads = jax.value_and_grad(total, has_aux=True)(xs)
        return (np.asarray(loss, np.float64),
                [np.asarray(grads[k].astype(jnp.float64)) for k in names],
                [str(grads[k].dtype) for k in names])
    import tensorflow as tf
    import tfree_tf

    xs = {k: tf.cast(tf.constant(v, tf.float64), ex.dtype) for k, v in ex.inputs.items()}
    labels = None if ex.labels is None else tf.constant(ex.labels)
    with tf.GradientTape() as tape:
        for x in xs.values():
            tape.watch(x)
        loss = _call(tfree_tf, ex, xs, labels)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, [xs[k] for k in names])
    return (tf.cast(loss, tf.float64).numpy(), [tf.cast(g, tf.float64).numpy() for g in grads],
            [g.dtype.name for g in grads])


def check_example(ex: Example) -> None:
    loss, grads, grad_dtypes = run_backend(ex)
    want_loss, want_grads = core_float64(ex)
    ref = reference(ex)
    tol_l, tol_g = TOLERANCES[ex.dtype]["loss"], TOLERANCES[ex.dtype]["grad"]

    # the independent transcription agrees with the float64 core (a check of both)
    # (both in float64: the rounding term with float64's unit round-off)
    ref_tol = TOLERANCES["float64"]["loss"]
    assert np.all(np.abs(ref.loss - want_loss) <= ref_tol.rtol * max(
        float(np.max(np.abs(want_loss))), 1.0) + ref.loss_bound * 2.0**-53 / ref.unit), (
        ref.loss, want_loss)

    # finite, non-negative loss; gradients in the input dtype, no NaN
    assert np.all(np.isfinite(loss)), loss
    assert np.all(loss >= 0), loss
    assert all(dt == ex.dtype for dt in grad_dtypes), grad_dtypes
    for g in grads:
        assert not np.any(np.isnan(g)), g

    # agreement: conformance tolerance (normwise for the loss, per row for the gradients)
    # plus the first-order effect of rounding S in the compute dtype
    size = max(float(np.max(np.abs(want_loss))), 1.0)
    err_l = np.abs(loss - want_loss)
    tol_plain = tol_l.atol + tol_l.rtol * size
    assert np.all(err_l <= tol_plain + ref.loss_bound), (loss, want_loss, ref.loss_bound)
    needed = bool(np.any(err_l > tol_plain))
    ratio = float(np.max(err_l / (tol_plain + ref.loss_bound)))
    start = 0
    top = float(ml_dtypes.finfo(BFLOAT16).max if ex.dtype == "bfloat16"
                else np.finfo(ex.dtype).max)
    for g, want in zip(grads, want_grads, strict=True):
        rows = want.shape[0]
        scale = ref.grad_scale[start:start + rows][:, None]
        bound = ref.grad_bound[start:start + rows][:, None]
        start += rows
        overflow = np.abs(want) + bound >= top  # exact gradient beyond the dtype's range
        inf = np.isinf(g)
        assert np.all(overflow[inf]), (g, want)
        assert np.all(np.sign(g[inf]) == np.sign(want[inf]))
        ok = ~inf
        tol = tol_g.atol + tol_g.rtol * scale
        err = np.abs(g - want)
        assert np.all((err <= tol + bound)[ok]), (g, want, scale, bound)
        needed |= bool(np.any((err > tol)[ok]))
        if np.any(ok):
            ratio = max(ratio, float(np.max((err / (tol + bound))[ok])))
    RAN[ex.kind] = RAN.get(ex.kind, 0) + 1
    CONDITIONED[ex.kind] = CONDITIONED.get(ex.kind, 0) + int(needed)
    WORST[ex.kind] = max(WORST.get(ex.kind, 0.0), ratio)


# --------------------------------------------------------------------------- tests


def _supported(backend: str, dtype: str) -> bool:
    if dtype == "bfloat16":
        return backend != "core" and BFLOAT16 is not None  # NumPy has no bfloat16
    return True


PARAMS = [pytest.param(b, d, id=f"{b}-{d}") for b in BACKENDS for d in DTYPES
          if _supported(b, d)]


@pytest.mark.parametrize(("backend", "dtype"), PARAMS)
def test_adversarial_inputs(backend, dtype):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(ex=examples(backend, dtype))
    def run(ex):
        check_example(ex)

    run()
    assert RAN.get(f"{backend}-{dtype}", 0) >= EXAMPLES // 2


def test_every_corner_is_drawn():
    """The strategy reaches every corner the issue lists (not a vacuous property)."""
    seen: set[str] = set()

    @settings(max_examples=EXAMPLES * 4, deadline=None, derandomize=True, database=None)
    @given(ex=examples("core", "float64"))
    def probe(ex):
        dirs, _, norm = _directions(ex)
        for d in dirs:
            s = d.s[d.valid]
            if np.any(np.abs(s) >= 1 - 1e-12):
                seen.add("identical or antipodal")
            if np.any((1 - np.abs(s) > 1e-6) & (1 - np.abs(s) < 1e-4)):
                seen.add("near-duplicate")
            if not d.positive.any():
                seen.add("no positives")
        if np.any(norm == 0):
            seen.add("zero row")
        if np.any(norm > 1e100) or np.any((norm > 0) & (norm < 1e-100)):
            seen.add("extreme norm")
        if ex.labels is not None and np.all(ex.labels == ex.labels[0]):
            seen.add("all-equal labels")

    probe()
    assert seen == {"identical or antipodal", "near-duplicate", "no positives", "zero row",
                    "extreme norm", "all-equal labels"}, seen


def test_examples_ran():
    """Runs last: every backend × dtype ran its examples; prints the counts."""
    if not RAN:
        pytest.skip("run with the whole file to count the examples")
    for param in PARAMS:
        backend, dtype = param.values
        assert RAN.get(f"{backend}-{dtype}", 0) >= EXAMPLES // 2, RAN
    print("\nexamples:", json.dumps(RAN, sort_keys=True))
    print("needed the rounding term of S:", json.dumps(CONDITIONED, sort_keys=True))
    print("worst error / tolerance:", json.dumps({k: round(v, 3) for k, v in WORST.items()},
                                                 sort_keys=True))
    print("total:", sum(RAN.values()))
