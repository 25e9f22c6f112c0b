"""SPEC §4 sanity values and the hard corners of SPEC §2: clip, zero rows, extreme norms,
half-precision inputs, tiny losses."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tfree_core as core

CAP64, CAP32 = 14.508657238495339, 14.495465663302808


def test_logit_sanity_values():
    s = np.array([0.5, 0.9, 1.0, -1.0, 0.0])
    got = core.logits(s)
    assert got[0] == pytest.approx(math.log(3), rel=1e-15)
    assert got[1] == pytest.approx(math.log(19), rel=1e-15)
    assert got[2] == pytest.approx(CAP64, rel=1e-15)
    assert got[3] == -got[2]
    assert got[4] == 0.0
    cap32 = core.logits(np.array([1.0], dtype=np.float32))
    assert cap32.dtype == np.float32
    assert abs(float(cap32[0]) - CAP32) < 1e-5


def test_clip_bound_is_the_largest_value_below_one_minus_eps():
    b64, b32 = core.clip_bound(1e-6, float64=True), core.clip_bound(1e-6, float64=False)
    assert b64 <= 1 - 1e-6 < np.nextafter(b64, 2.0)
    assert math.log((1 + b64) / (1 - b64)) == pytest.approx(14.508657, abs=1e-6)
    assert math.log((1 + b32) / (1 - b32)) == pytest.approx(14.495466, abs=1e-6)
    assert np.float32(b32) == b32
    assert np.nextafter(np.float32(b32), np.float32(2)) > 1 - 1e-6


@pytest.mark.parametrize("n", [1, 4, 9])
def test_orthogonal_pairs_give_log_n(n):
    q, k = np.eye(2 * n)[:n], np.eye(2 * n)[n:]  # every S = 0
    assert core.info_nce(q, k) == pytest.approx(math.log(n), rel=1e-15)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_orthogonal_nt_xent_gives_log_2n_minus_1(n):
    z = np.eye(2 * n)
    assert core.nt_xent(z[:n], z[n:]) == pytest.approx(math.log(2 * n - 1), rel=1e-15)


def test_identical_orthonormal_views_sit_past_the_cap():
    n = 4
    q = np.eye(n)
    loss, (dq, dk) = core.info_nce_value_and_grad(q, q)
    expected = math.log1p((n - 1) * math.exp(-CAP64))
    assert loss == pytest.approx(expected, rel=1e-12)
    assert loss == pytest.approx(1.49999962e-6, rel=1e-8)
    # the positives are clamped (no gradient through the map) but the negatives still push,
    # with a gradient of order 2·e^(-14.5)/N
    assert np.all(np.isfinite(dq))
    assert np.all(np.isfinite(dk))
    assert 0 < np.max(np.abs(dq)) < 10 * 2 * math.exp(-CAP64) / n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiny_loss_keeps_relative_precision(dtype):
    # one negative at similarity -1: L = log1p(R_neg/R_pos), far below float eps
    q = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=dtype)
    loss = core.info_nce(q, q)
    cap = CAP64 if dtype == np.float64 else CAP32
    expected = math.log1p(math.exp(-2 * cap))
    assert float(loss) == pytest.approx(expected, rel=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("scale", [1e-30, 1e-5, 1.0, 1e5, 1e30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_norms_are_finite_and_scale_invariant(scale, dtype, rng):
    q, k = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    base = core.info_nce(q, k)
    loss, grads = core.info_nce_value_and_grad((q * scale).astype(dtype), (k * scale).astype(dtype))
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in grads)
    if scale >= 1e-5:  # 1e-30 rows are zero rows (norm < 1e-12): S = 0 by SPEC §2.1
        assert float(loss) == pytest.approx(base, rel=1e-5 if dtype == np.float32 else 1e-12)
    else:
        assert float(loss) == pytest.approx(math.log(6), rel=1e-6)
        assert all(np.all(g == 0) for g in grads)


def test_huge_float64_norms():
    q = np.array([[1e300, -1e300], [1e-300, 3e-300]])
    k = np.array([[1e300, 1e300], [2e300, 1e300]])
    loss, grads = core.info_nce_value_and_grad(q, k)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_zero_rows_get_zero_gradient(rng):
    q, k = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    q[2] = 0.0
    k[1] = 1e-14
    loss, (dq, dk) = core.info_nce_value_and_grad(q, k, symmetric=True)
    assert np.isfinite(loss)
    assert np.all(dq[2] == 0)
    assert np.all(dk[1] == 0)
    assert np.any(dq[0] != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_similarities_exactly_plus_minus_one(dtype):
    s = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 0.3]], dtype=dtype)
    pos = np.array([[True, False, True], [False, True, False]])
    for logit_map in ({}, {"logit_map": "temperature", "temperature": 0.01}):
        loss, (ds,) = core.loss_from_similarity_value_and_grad(s, pos, **logit_map)
        assert np.isfinite(loss)
        assert np.all(np.isfinite(ds))
        assert ds.dtype == dtype


def test_clamped_entries_get_no_gradient_and_the_bound_itself_does():
    b = core.clip_bound(1e-6, float64=True)
    above = np.nextafter(b, 2.0)
    s = np.array([[b, 0.2, above, -above, -b]])
    pos = np.array([[True, False, False, False, False]])
    _, (ds,) = core.loss_from_similarity_value_and_grad(s, pos)
    assert ds[0, 0] != 0
    assert ds[0, 4] != 0
    assert ds[0, 2] == 0
    assert ds[0, 3] == 0


def test_positive_pull_does_not_cancel_near_alignment():
    # 1 - P₊ is tiny; computed as N/Z it keeps full relative precision
    s = np.array([[1 - 1e-5, -0.99, -0.99]])
    pos = np.array([[True, False, False]])
    _, (ds,) = core.loss_from_similarity_value_and_grad(s, pos)
    r = lambda x: (1 + x) / (1 - x)  # noqa: E731
    z = r(s[0, 0]) + 2 * r(-0.99)
    expected = -(2 * r(-0.99) / z) * 2 / (1 - s[0, 0] ** 2)
    assert ds[0, 0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_inputs_compute_in_float32(half):
    torch = pytest.importorskip("torch")
    xp = pytest.importorskip("array_api_compat.torch")
    q = torch.randn(6, 4, dtype=getattr(torch, half))
    k = torch.randn(6, 4, dtype=getattr(torch, half))
    loss, (dq, dk) = core.info_nce_value_and_grad(q, k, xp=xp)
    assert loss.dtype == torch.float32
    assert dq.dtype == q.dtype
    assert dk.dtype == k.dtype
    expected = core.info_nce(q.float(), k.float(), xp=xp)
    assert float(loss) == float(expected)


def test_mean_without_any_positive_is_zero_with_zero_gradient(rng):
    f = rng.normal(size=(4, 3))
    labels = np.arange(4)
    loss, (df,) = core.sup_con_value_and_grad(f, labels)
    assert loss == 0.0
    assert np.all(df == 0)
    none = core.sup_con(f, labels, reduction="none")
    assert np.all(none == 0)


def test_single_anchor():
    q, k = np.array([[1.0, 2.0]]), np.array([[0.5, -1.0]])
    loss, (dq, dk) = core.info_nce_value_and_grad(q, k)
    assert loss == 0.0
    assert np.all(dq == 0)
    assert np.all(dk == 0)
    assert core.nt_xent(q, k) == 0.0  # the only candidate is the positive


def test_multi_positive_loss_is_at_least_log_of_positive_count():
    f = np.ones((4, 3))  # all identical, all one label: every similarity at the cap
    loss = core.sup_con(f, np.zeros(4, dtype=np.int64))
    assert loss == pytest.approx(math.log(3), rel=1e-12)


def test_determinism(rng):
    q, k = rng.normal(size=(64, 16)), rng.normal(size=(64, 16))
    first = core.info_nce_value_and_grad(q.astype(np.float32), k.astype(np.float32))
    second = core.info_nce_value_and_grad(q.astype(np.float32), k.astype(np.float32))
    assert first[0] == second[0]
    for a, b in zip(first[1], second[1], strict=True):
        assert np.array_equal(a, b)
