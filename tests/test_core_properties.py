"""Property tests: over adversarial inputs the loss is finite and >= 0 and the gradients
are finite, in float32 and float64 (SPEC §2: no NaN or inf from finite input)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfree_core as core

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def embeddings(draw, n_max=6, d_max=5):
    """Rows built to hit the corners: identical, antipodal, near-duplicate, zero rows and
    norms across the float range, mixed with random ones."""
    n = draw(st.integers(1, n_max))
    d = draw(st.integers(1, d_max))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    kinds = draw(st.lists(st.sampled_from(["random", "same", "antipodal", "near", "zero"]),
                          min_size=n, max_size=n))
    for i, kind in enumerate(kinds):
        if kind == "same":
            base[i] = base[0]
        elif kind == "antipodal":
            base[i] = -base[0]
        elif kind == "near":
            base[i] = base[0] + 1e-5 * rng.normal(size=d)
        elif kind == "zero":
            base[i] = 0.0
    log_scale = draw(st.floats(-30, 30))
    return base * 10.0**log_scale


def _finite(loss, grads):
    assert np.all(np.isfinite(loss)), loss
    assert np.all(np.asarray(loss) >= 0), loss
    for g in grads:
        assert np.all(np.isfinite(g)), g


@SETTINGS
@given(q=embeddings(), data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       symmetric=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_pairs_finite(q, data, dtype, symmetric, reduction):
    k = data.draw(st.sampled_from([q, -q, q[::-1].copy(), np.zeros_like(q)]))
    loss, grads = core.info_nce_value_and_grad(q.astype(dtype), k.astype(dtype),
                                               symmetric=symmetric, reduction=reduction)
    _finite(loss, grads)


@SETTINGS
@given(z=embeddings(), dtype=st.sampled_from([np.float32, np.float64]),
       labels_seed=st.integers(0, 3))
def test_sup_con_and_nt_xent_finite(z, dtype, labels_seed):
    labels = np.random.default_rng(labels_seed).integers(0, 2, size=z.shape[0])
    _finite(*core.sup_con_value_and_grad(z.astype(dtype), labels))
    _finite(*core.nt_xent_value_and_grad(z.astype(dtype), z[::-1].astype(dtype)))


@SETTINGS
@given(z=embeddings(), dtype=st.sampled_from([np.float32, np.float64]),
       tau=st.sampled_from([0.01, 0.05, 1.0, 10.0]))
def test_temperature_map_finite(z, dtype, tau):
    labels = np.zeros(z.shape[0], dtype=np.int64)
    _finite(*core.sup_con_value_and_grad(z.astype(dtype), labels, logit_map="temperature",
                                         temperature=tau))


@SETTINGS
@given(s=st.lists(st.sampled_from([-1.0, -0.999999, -0.5, 0.0, 0.5, 0.999999, 1.0, 2.0, -3.0]),
                  min_size=12, max_size=12),
       mask_seed=st.integers(0, 2**16), dtype=st.sampled_from([np.float32, np.float64]))
def test_similarity_level_finite(s, mask_seed, dtype):
    rng = np.random.default_rng(mask_seed)
    s = np.asarray(s, dtype=dtype).reshape(3, 4)
    valid = rng.random((3, 4)) < 0.8
    positive = valid & (rng.random((3, 4)) < 0.5)
    _finite(*core.loss_from_similarity_value_and_grad(s, positive, valid_mask=valid))


def test_property_suite_ran():
    """Guard: the strategies above produce every corner kind (not vacuous)."""
    kinds = set()

    @settings(max_examples=200, deadline=None)
    @given(z=embeddings())
    def probe(z):
        norms = np.linalg.norm(z, axis=1)
        if np.any(norms == 0):
            kinds.add("zero")
        if z.shape[0] > 1 and np.any(np.all(z[1:] == -z[0], axis=1)) and np.any(z[0] != 0):
            kinds.add("antipodal")

    probe()
    assert {"zero", "antipodal"} <= kinds, kinds


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identical_rows_everywhere(dtype):
    z = np.ones((5, 3), dtype=dtype)
    for loss, grads in (core.info_nce_value_and_grad(z, z),
                        core.nt_xent_value_and_grad(z, z),
                        core.sup_con_value_and_grad(z, np.zeros(5, dtype=np.int64))):
        _finite(loss, grads)
