"""Long runs (``soak.py``), sized for CI: a few hundred optimisation steps in every
framework and mode (eager, compiled, tiled, two Gloo ranks), no NaN, and no growth of
live Python objects, JAX device arrays or resident memory after the warm-up.

The CI size is ``TFREE_SOAK_STEPS`` (default 200); the long setting is
``python tests/soak.py`` (10 000 steps per run; see docs/guarantees.md for its figures).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("torch") is not None:  # before TensorFlow (see soak.py)
    import torch._dynamo  # noqa: F401

import soak

STEPS = int(os.environ.get("TFREE_SOAK_STEPS", "200"))
# After the warm-up the loop allocates nothing that outlives a step: a leak of one object
# per step would add STEPS - warmup (150) objects. A few come and go (caches, frames).
MAX_OBJECT_GROWTH = 40
# Allocators keep freed pages and grow their pools in steps of a few MiB; a leak of one
# small batch (8 KiB) per step would be 1.2 MiB here, which the object count catches
# first; this bound catches leaks outside Python (framework buffers).
MAX_RSS_GROWTH_MIB = float(os.environ.get("TFREE_SOAK_MAX_RSS_MIB", "16"))

_NEEDS = {"torch": "torch", "jax": "jax", "tf": "tensorflow"}


def _available(run: str) -> bool:
    framework = run.split("-", 1)[0]
    if importlib.util.find_spec(_NEEDS[framework]) is None:
        return False
    if run == "torch-distributed":
        import torch.distributed as dist

        return dist.is_available() and dist.is_gloo_available()
    return True


@pytest.mark.parametrize("run", [r for r in soak.RUNS if _available(r)])
def test_soak(run):
    results = soak.run(run, STEPS)
    assert results
    for r in results:
        report = (f"{r.run}: {r.steps} steps, mean loss of the first and last "
                  f"{soak.WINDOW} steps {r.first_mean:.4f} -> {r.last_mean:.4f}, "
                  f"RSS +{r.rss_growth_mib:.2f} MiB, objects {r.object_growth:+d}, {r.extra}")
        assert r.steps == STEPS
        assert r.nonfinite_steps == 0, report
        assert r.last_mean < r.first_mean, report  # it trains
        assert r.object_growth <= MAX_OBJECT_GROWTH, report
        assert r.rss_growth_mib <= MAX_RSS_GROWTH_MIB, report
        if "probe_end" in r.extra:  # JAX: live device arrays
            assert r.extra["probe_end"] <= r.extra["probe_warm"], report
        print("\n" + report)


@pytest.mark.long
@pytest.mark.parametrize("run", [r for r in soak.RUNS if _available(r)])
def test_soak_ten_thousand_steps(run):
    """The long setting (``pytest -m long``; minutes per run): 10 000 steps, the same
    checks; RSS growth within the CI bound, objects within a few."""
    for r in soak.run(run, 10_000):
        report = (f"{r.run}: {r.steps} steps, RSS +{r.rss_growth_mib:.2f} MiB, objects "
                  f"{r.object_growth:+d}, {r.extra}")
        assert r.nonfinite_steps == 0, report
        assert r.last_mean < r.first_mean, report
        assert r.object_growth <= MAX_OBJECT_GROWTH, report
        assert r.rss_growth_mib <= MAX_RSS_GROWTH_MIB, report
        print("\n" + report)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_soak_detects_a_leak(monkeypatch):
    """The detector is not blind: a loss that keeps one tensor per step is caught."""
    import tfree_torch

    kept = []
    real = tfree_torch.nt_xent

    def leaky(*args, **kwargs):
        loss = real(*args, **kwargs)
        kept.append(loss.detach().clone())
        return loss

    monkeypatch.setattr(tfree_torch, "nt_xent", leaky)
    result = soak.soak_torch(150, "plain")
    measured_steps = 150 - soak.warmup_steps(150)
    # one kept tensor per measured step; the warm snapshot may fall either side of a step
    assert result.object_growth >= measured_steps - 1 > MAX_OBJECT_GROWTH


def test_nan_is_counted():
    """A step whose loss is NaN is reported (not silently averaged away)."""
    monitor = soak._Monitor(10)
    for i, value in enumerate([1.0, float("nan"), 0.5, float("inf")] + [0.4] * 6):
        monitor.step(i, value)
    assert monitor.result("probe").nonfinite_steps == 2
