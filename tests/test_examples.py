"""Smoke test of ``python -m examples.temperature_sweep --quick`` (the examples extra)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(
        [sys.executable, "-m", "examples.temperature_sweep", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, json.loads((out / "results.json").read_text())


def test_outputs_exist(quick_run: tuple[Path, dict]) -> None:
    out, results = quick_run
    for name in ("results.md", "curves.png", *(f"sweep_{s}.png" for s in results["settings"])):
        assert (out / name).stat().st_size > 0, name
    table = (out / "results.md").read_text()
    assert "temperature-free" in table
    assert "InfoNCE τ = 0.1" in table


def test_every_run_is_recorded(quick_run: tuple[Path, dict]) -> None:
    _, results = quick_run
    losses = [None, *results["temperatures"]]
    expected = {(s, t, seed) for s in results["settings"] for t in losses
                for seed in results["seeds"]}
    assert {(r["setting"], r["temperature"], r["seed"]) for r in results["runs"]} == expected
    assert len(results["seeds"]) >= 2


def test_metrics_are_sane(quick_run: tuple[Path, dict]) -> None:
    _, results = quick_run
    for r in results["runs"]:
        m = r["metrics"]
        assert all(math.isfinite(v) for v in m.values()), r
        # 10 classes: chance is 10 %; even a few epochs give a useful encoder.
        assert m["probe"] > 0.8, r
        assert m["probe_10"] > 0.5, r
        assert m["knn"] > 0.5, r
        assert 0.0 <= m["align"] <= 4.0, r  # squared distance of unit vectors
        assert -4.0 <= m["uniform"] <= 0.0, r
        assert len(r["curve"]) == results["settings"][r["setting"]]["epochs"]
        assert all(math.isfinite(v) and v > 0 for v in r["curve"]), r


def test_ci95(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # ``examples`` is not installed, it runs from ROOT
    from examples._report import ci95

    mean, half = ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, 2) · s / √n
    assert math.isnan(ci95([1.0])[1])
