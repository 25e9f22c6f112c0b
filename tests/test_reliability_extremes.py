"""What a hostile user feeds the loss, on every backend: masked rows holding NaN and inf,
finite rows whose norm exceeds the dtype's range, the smallest valid temperature, huge
similarities under the temperature map. The rules (the Guarantees page):

* a row masked out with ``where`` reaches no arithmetic that touches other rows: the loss
  and every other row's gradient are those of the same batch with anything else in that
  row, and its own gradient is exactly 0;
* a finite row is normalised exactly whatever its norm: the loss is that of the same
  directions at a moderate scale, and no NaN or inf appears;
* ``temperature`` down to the compute dtype's smallest normal number gives a finite loss
  and finite gradients wherever the exact values are in range; below it, a ``ValueError``
  (the catalogue, ``tests/bad_inputs.py``); a similarity far outside ``[-1, 1]`` never
  gives NaN, and ``inf`` only where the exact loss exceeds the range.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends import BACKENDS, run

pytestmark = pytest.mark.usefixtures("jax_x64")


N, D, M = 6, 4, 3
RNG = np.random.default_rng(18)
Q, K = RNG.normal(size=(N, D)), RNG.normal(size=(N, D))
NEG_SHARED, NEG_ROWS = RNG.normal(size=(M, D)), RNG.normal(size=(N, M, D))
VIEWS = RNG.normal(size=(N, 2, D))
LABELS = np.array([0, 1, 0, 1, 1, 0])
WHERE = np.array([True, False, True, True, False, True])
S = np.tanh(RNG.normal(size=(N, N + 1)))
POSITIVE = np.eye(N, N + 1, dtype=bool)

# (function, differentiable inputs by name, other keywords, whether chunk_size applies)
LAYOUTS = {
    "pairs": ("info_nce", {"query": Q, "key": K}, {}, True),
    "symmetric": ("info_nce", {"query": Q, "key": K}, {"symmetric": True}, True),
    "labels-symmetric": ("info_nce", {"query": Q, "key": K},
                         {"labels": LABELS, "symmetric": True}, True),
    "negatives-shared": ("info_nce", {"query": Q, "key": K, "negatives": NEG_SHARED}, {},
                         True),
    "negatives-per-row": ("info_nce", {"query": Q, "key": K, "negatives": NEG_ROWS}, {},
                          True),
    "nt_xent": ("nt_xent", {"z1": Q, "z2": K}, {}, True),
    "sup_con": ("sup_con", {"features": Q}, {"labels": LABELS}, True),
    "sup_con-views": ("sup_con", {"features": VIEWS}, {"labels": LABELS}, True),
    "similarity": ("loss_from_similarity", {"similarity": S}, {"positive_mask": POSITIVE},
                   False),
}
MAPS = {"arctanh": {}, "temperature": {"logit_map": "temperature", "temperature": 0.3}}


def _call(backend, layout, inputs, keywords):
    function, _, fixed, _ = LAYOUTS[layout]
    return run(backend, function, inputs, **fixed, **keywords)


def _poison(x: np.ndarray) -> np.ndarray:
    """The masked rows of ``x`` filled with NaN, +inf and -inf (as from ``torch.empty``)."""
    out = x.copy()
    masked = np.flatnonzero(~WHERE)
    out[masked[0]] = np.nan
    out[masked[1]] = np.inf
    out[masked[1], ..., 0] = -np.inf
    return out


def _rows_mask(x: np.ndarray) -> np.ndarray:
    return WHERE.reshape((N,) + (1,) * (x.ndim - 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("logit_map", list(MAPS))
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_masked_rows_may_hold_anything(backend, layout, logit_map, chunk_size):
    _, inputs, _, tileable = LAYOUTS[layout]
    if chunk_size is not None and not tileable:
        pytest.skip("a given similarity matrix is never tiled")
    keywords = {"where": WHERE, "chunk_size": chunk_size, **MAPS[logit_map]}
    # shared negatives belong to no row: only the rows' own inputs are poisoned
    owned = {name: x is not NEG_SHARED for name, x in inputs.items()}
    other = {name: np.where(_rows_mask(x), x, 7.0) if owned[name] else x
             for name, x in inputs.items()}
    poisoned = {name: _poison(x) if owned[name] else x for name, x in inputs.items()}
    want_loss, want_grads = _call(backend, layout, other, keywords)
    loss, grads = _call(backend, layout, poisoned, keywords)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-14)
    for g, want, x, own in zip(grads, want_grads, inputs.values(), owned.values(),
                               strict=True):
        assert np.all(np.isfinite(g)), (layout, g)
        if own:
            rows = _rows_mask(x)
            assert np.all(np.where(rows, 0.0, g) == 0.0), "masked rows get exactly 0"
            np.testing.assert_allclose(np.where(rows, g, 0.0), np.where(rows, want, 0.0),
                                       rtol=1e-12, atol=1e-14)
        else:
            np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- huge norms

BIG = {"float32": 3e38, "float64": 1e308}  # entries finite, the row norm beyond the range


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["pairs", "symmetric", "nt_xent", "sup_con"])
def test_rows_whose_norm_overflows_keep_their_direction(backend, dtype, layout):
    _, inputs, _, _ = LAYOUTS[layout]
    directions = {name: x / np.max(np.abs(x), axis=-1, keepdims=True)
                  for name, x in inputs.items()}
    huge = {name: x.copy() for name, x in directions.items()}
    first = next(iter(huge))
    huge[first][:2] *= BIG[dtype]  # two rows with every entry up to ±BIG
    loss, grads = _call(backend, layout, {k: v.astype(dtype) for k, v in huge.items()}, {})
    want_loss, want_grads = _call("core", layout, directions, {})
    assert np.all(np.isfinite(loss))
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(loss, want_loss, rtol=tol)
    for g in grads:
        assert np.all(np.isfinite(g))
    # the rows of moderate norm train as they would at any scale of the huge rows; the
    # huge rows' gradients are of order 1/‖z‖, at most a subnormal
    np.testing.assert_allclose(grads[0][2:], want_grads[0][2:], rtol=50 * tol, atol=1e-6)
    assert np.all(np.abs(grads[0][:2]) < 1e-30)


# --------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_smallest_temperature_stays_finite(backend, dtype, symmetric, chunk_size):
    """At the smallest valid ``τ`` the logits reach ``2/τ``, near the dtype's maximum: the
    loss (about ``(max_j s_ij - s_ii)/τ``) and the gradients stay finite and match the
    float64 core at the same ``τ``."""
    tau = float(np.finfo(dtype).tiny)
    q, k = (x[:4] / np.linalg.norm(x[:4], axis=1, keepdims=True) for x in (Q, K))
    keywords = {"logit_map": "temperature", "temperature": tau, "symmetric": symmetric,
                "chunk_size": chunk_size}
    with np.errstate(over="ignore"):
        loss, grads = _call(backend, "pairs", {"query": q.astype(dtype),
                                               "key": k.astype(dtype)}, keywords)
    assert np.all(np.isfinite(loss)), loss
    for g in grads:
        assert not np.any(np.isnan(g))
    # τ·loss is the loss at τ = 1 of logits s/τ... in the limit: the largest similarity gap
    s = q @ k.T
    gaps = np.max(s, axis=1) - np.diag(s)
    expected = np.mean(gaps) if not symmetric else (
        np.mean(gaps) + np.mean(np.max(s, axis=0) - np.diag(s))) / 2
    np.testing.assert_allclose(loss * tau, expected, rtol=1e-3 if dtype == "float32" else 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_similarities_under_the_temperature_map(backend):
    """``loss_from_similarity`` takes any ``S``: with entries ±3e38 and ``τ = 0.1`` no NaN;
    a positive at the row maximum has a finite loss, a positive 6e38 below it an infinite
    one (the exact loss, 6e39, exceeds float32)."""
    s = np.array([[3e38, -3e38, 1.0], [0.5, 3e38, -3e38]], np.float32)
    keywords = {"logit_map": "temperature", "temperature": 0.1}
    with np.errstate(over="ignore"):
        loss, (g,) = run(backend, "loss_from_similarity", {"similarity": s},
                         positive_mask=np.eye(2, 3, dtype=bool), reduction="none", **keywords)
        far, (g_far,) = run(backend, "loss_from_similarity", {"similarity": s},
                            positive_mask=np.eye(2, 3, dtype=bool)[:, ::-1].copy(),
                            reduction="none", **keywords)
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    assert not np.any(np.isnan(g))
    assert np.isinf(far[0])
    assert not np.any(np.isnan(g_far))
    np.testing.assert_allclose(g_far[0], [10.0, 0.0, -10.0], rtol=1e-6)
