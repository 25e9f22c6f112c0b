"""The build hooks of the docs compute what their pages claim."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

HOOKS = Path(__file__).resolve().parent.parent / "docs" / "hooks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures():
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install '.[docs]')")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    return _load("figures")


@pytest.fixture(scope="module")
def tables():
    return _load("tables")


@pytest.mark.parametrize("tau", [0.1, 1.0, None])
def test_positive_gradient_matches_the_formula(figures, tau):
    s_pos, s_neg, k = np.array([-0.5, 0.0, 0.7, 0.99]), 0.2, 15
    got = figures.positive_gradient(s_pos, s_neg, k, tau)
    if tau is None:
        r_pos, r_neg = (1 + s_pos) / (1 - s_pos), (1 + s_neg) / (1 - s_neg)
        slope = 2 / (1 - s_pos**2)
    else:
        r_pos, r_neg, slope = np.exp(s_pos / tau), np.exp(s_neg / tau), 1 / tau
    p_pos = r_pos / (r_pos + k * r_neg)
    np.testing.assert_allclose(got, -(1 - p_pos) * slope, rtol=1e-12)


def test_floor_matches_the_formula(figures):
    for tau in (0.1, 0.5, 1.0):
        loss = figures.loss_at(1.0, -1.0, 255, tau)[0]
        assert loss == pytest.approx(math.log1p(255 * math.exp(-2 / tau)), rel=1e-12)
    assert figures.loss_at(1.0, -1.0, 255, None)[0] < 1e-9
    table = figures.floor_table()
    assert table.count("\n") == len(figures.TAUS) + 2


def test_figures_are_png(figures):
    for make in figures.FIGURES.values():
        assert make().startswith(b"\x89PNG")


REPORT = {
    "environment": {"python": "3.11", "machine": "x86_64", "cpus": 2,
                    "versions": {"numpy": "2"}},
    "backends": {"torch": {"crash": "worker exited with 1"}},
    "matrix": [
        {"backend": "torch", "device": "cpu", "mode": "eager", "dtype": "float32",
         "passed": 3, "failed": 1, "skipped": 0, "worst": 0.5, "skip_reasons": []},
        {"backend": "numpy", "device": "cpu", "mode": "eager", "dtype": "float64",
         "passed": 7, "failed": 0, "skipped": 0, "worst": 0.25, "skip_reasons": []},
        {"backend": "jax", "device": "cuda", "mode": "eager", "dtype": "float64",
         "passed": 0, "failed": 0, "skipped": 2, "worst": 0.0, "skip_reasons": ["no GPU"]},
    ],
}


def test_matrix_table_renders_a_report(tables):
    text = tables.matrix_table(REPORT)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["backend", "numpy", "torch", "jax"]
    assert "7 ok (0.25)" in text
    assert "**FAIL** 1/4" in text
    assert "jax on cuda, skipped: no GPU" in text
    assert "torch did not run: worker exited with 1" in text


def test_conformance_placeholder_without_report(tables, tmp_path, monkeypatch):
    monkeypatch.delenv(tables.REPORT_ENV, raising=False)
    assert "filled from `python -m conformance --json`" in tables.conformance_matrix(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "conformance.json").write_text(json.dumps(REPORT))
    assert "7 ok (0.25)" in tables.conformance_matrix(tmp_path)


def test_tolerance_and_capability_tables(tables):
    pytest.importorskip("conformance.tolerances")
    assert "| float64 | 1e-12 |" in tables.tolerance_table()
    assert "| torch |" in tables.capability_table()
