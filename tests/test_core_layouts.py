"""Every layout and option against the float64 transcription of SPEC §2-§3, and the
analytic gradients against central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from cases import call_reference, make_cases

MAPS = [
    {"logit_map": "arctanh"},
    {"logit_map": "arctanh", "eps": 1e-3},
    {"logit_map": "temperature", "temperature": 0.1},
    {"logit_map": "temperature", "temperature": 2.0},
]
REDUCTIONS = ["mean", "sum", "none"]
CASES = make_cases(np.random.default_rng(7))


def _close(actual, expected):
    """Losses agree to ``1e-12·max(|L|, 1)`` (a tiny loss has no meaningful relative error)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.maximum(np.abs(expected), 1.0)
    assert np.all(np.abs(actual - expected) <= 1e-12 * scale), (actual, expected)


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", MAPS, ids=lambda o: "-".join(map(str, o.values())))
def test_loss_matches_transcription(case, reduction, options, to_xp, to_np, xp):
    args = {n: to_xp(a) for n, a in case.inputs.items()}
    extra = {k: (to_xp(v) if isinstance(v, np.ndarray) else v) for k, v in case.extra.items()}
    loss = case.loss(**args, **extra, reduction=reduction, **options)
    assert loss.dtype == xp.float64
    expected = call_reference(case, reduction=reduction, **options)
    _close(to_np(loss), expected)


def _central_difference(f, inputs, names, h=1e-6):
    grads = []
    for name in names:
        x = inputs[name]
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = dict(inputs), dict(inputs)
            plus[name], minus[name] = x.copy(), x.copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            fd[idx] = (f(plus) - f(minus)) / (2 * h)
        grads.append(fd)
    return grads


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", MAPS[::2], ids=lambda o: "-".join(map(str, o.values())))
def test_gradient_matches_finite_differences(case, reduction, options, rng):
    loss, _ = case.value_and_grad(**case.inputs, **case.extra, reduction=reduction,
                                  **options)
    cotangent = rng.normal(size=np.shape(loss)) if reduction == "none" else None
    _, grads = case.value_and_grad(**case.inputs, **case.extra, reduction=reduction,
                                   cotangent=cotangent, **options)
    weight = 1.0 if cotangent is None else cotangent

    def f(inputs):
        return float(np.sum(case.loss(**inputs, **case.extra, reduction=reduction,
                                      **options) * weight))

    expected = _central_difference(f, dict(case.inputs), list(case.inputs))
    assert len(grads) == len(expected)
    for got, want, name in zip(grads, expected, case.inputs, strict=True):
        assert got.shape == case.inputs[name].shape
        assert got.dtype == np.float64
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)
        assert err <= 1e-7, f"d/d{name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", [c for c in CASES if "where" in c.extra], ids=repr)
def test_masked_rows_get_zero_gradient(case):
    where = case.extra["where"]
    _, grads = case.value_and_grad(**case.inputs, **case.extra)
    for g in grads:
        if g.shape[0] == where.shape[0]:
            assert np.all(g[~where] == 0)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_value_and_grad_loss_equals_loss(case, to_xp, to_np):
    args = {n: to_xp(a) for n, a in case.inputs.items()}
    extra = {k: (to_xp(v) if isinstance(v, np.ndarray) else v) for k, v in case.extra.items()}
    loss, grads = case.value_and_grad(**args, **extra)
    assert to_np(loss) == to_np(case.loss(**args, **extra))
    assert [g.shape for g in grads] == [a.shape for a in args.values()]
    for g in grads:
        to_np(g)  # on the inputs' device
