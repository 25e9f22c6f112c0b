"""Smoke test of ``python -m benchmarks.bench_cached`` at N = 256: it runs offline, its table
has a row per method, and full-batch autodiff's peak grows past the cached step's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run(tmp_path):
    out = tmp_path / "table.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_cached", "--sizes", "256",
                             "--mini-batch", "16", "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in out.read_text().splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("256", m) for m in ("tfree cached", "full-batch autodiff", "ST CachedMNRL")], rows
    assert all(not r[3].startswith("not run") for r in rows), rows
    peak = {(r[0], r[1]): float(r[4]) for r in rows}
    assert peak["256", "full-batch autodiff"] > 2 * peak["256", "tfree cached"], peak
