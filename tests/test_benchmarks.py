"""Smoke tests of the benchmark suite (``python -m benchmarks``): it runs, and its table has
the expected rows and columns. Not timed tests: no figure is asserted, only the shape of the
report and that the memory probe sees an allocation it is shown."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import _harness
from benchmarks.__main__ import PACKAGES, _fit_n2

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["backend", "N", "D", "variant", "time (ms)", "time / tfree",
           "peak above inputs (MiB)"]
EXPECTED = {
    "numpy": ["tfree", "tfree untiled", "tfree tiled (256)", "3 GEMMs"],
    "torch": ["tfree", "tfree untiled", "tfree compiled", "tfree tiled (256)", "autodiff eager",
              "autodiff compiled", "3 GEMMs", "PML NTXentLoss"],
    "jax": ["tfree", "tfree compiled", "tfree untiled", "tfree tiled (256)", "autodiff eager",
            "autodiff compiled", "3 GEMMs", "tfree nt_xent compiled", "optax ntxent compiled"],
    "tensorflow": ["tfree", "tfree compiled", "tfree untiled", "tfree tiled (256)",
                   "autodiff eager", "autodiff compiled", "tfree graph", "autodiff graph",
                   "3 GEMMs"],
}


def _run(tmp_path: Path, *extra: str) -> tuple[str, Path, Path]:
    out, plot = tmp_path / "bench.md", tmp_path / "bench.png"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-progress", "--out", str(out),
         "--plot", str(plot), *extra],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, out, plot


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    return header, rows


def _check(text: str, backends: list[str]) -> None:
    header, rows = _table(text)
    assert header == COLUMNS
    for backend in backends:
        mine = [r for r in rows if r[0] == backend]
        assert [r[3] for r in mine] == EXPECTED[backend], backend
        for row in mine:
            assert (row[1], row[2]) == ("128", "16")
            if row[4].startswith("not run"):
                continue
            assert float(row[4]) > 0
            assert float(row[6]) >= 0
        tfree = next(r for r in mine if r[3] == "tfree")
        assert tfree[5] == "1.00"


def test_quick_run_numpy(tmp_path):
    stdout, out, plot = _run(tmp_path, "--backend", "numpy")
    text = out.read_text()
    assert "`python -m benchmarks --quick`" in text
    _check(text, ["numpy"])
    assert "| numpy | 128 | 16 | tfree |" in stdout
    assert plot.stat().st_size > 1000


@pytest.mark.slow
def test_quick_run_every_installed_backend(tmp_path):
    """Every installed framework (a minute or more: each imports in its own process)."""
    backends = [b for b, pkgs in PACKAGES.items()
                if all(importlib.util.find_spec(p) is not None for p in pkgs)]
    _, out, _ = _run(tmp_path)
    _check(out.read_text(), backends)


def test_bad_arguments_are_refused():
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--backend", "mxnet"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "--backend: unknown ['mxnet']" in result.stderr
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--chunk", "0"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "--chunk must be a positive int" in result.stderr


@pytest.mark.skipif(not _harness.memory_supported(), reason="needs /proc/self/clear_refs")
def test_memory_probe_sees_a_temporary():
    """A step that allocates and touches 64 MiB shows a peak of about 64 MiB above the
    resident size before it, even after a larger earlier peak (the peak is reset)."""
    np.ones(2**24).sum()  # an earlier 128 MiB peak that must not count

    def step():
        return np.ones(2**23).sum()  # 64 MiB of float64, touched

    peak = _harness.measure_memory(step, warmup=1)["peak_bytes"] / 2**20
    assert 60 <= peak <= 100, peak


def test_fit_of_quadratic_memory():
    points = [(n, 14.0 * n * n + 5e6) for n in (1024, 2048, 4096)]
    a, b = _fit_n2(points)
    assert a == pytest.approx(14.0)
    assert b == pytest.approx(5e6)
    a, b = _fit_n2(points[:1])
    assert a * 1024**2 == pytest.approx(points[0][1])


def test_interleaved_times_every_step():
    calls: list[str] = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = _harness.interleaved(steps, repeats=3, warmup=1)
    assert set(times) == {"a", "b", "c"}
    assert all(t >= 0 for t in times.values())
    assert calls[:3] == ["a", "b", "c"]  # one warm-up each, in order
    rounds = [calls[i:i + 3] for i in range(3, len(calls), 3)]
    assert len(rounds) == 3
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)


def test_interleaved_orders_are_drawn_afresh_and_seeded():
    """No step always runs after the same one: over 12 repeats of 4 steps the orders
    differ, and the same seed draws the same orders."""
    def run(seed: int) -> list[str]:
        calls: list[str] = []
        steps = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
        samples = _harness.interleaved_samples(steps, repeats=12, warmup=0, seed=seed)
        assert {name: len(t) for name, t in samples.items()} == dict.fromkeys("abcd", 12)
        return calls

    calls = run(0)
    rounds = {tuple(calls[i:i + 4]) for i in range(0, 48, 4)}
    assert len(rounds) > 3
    before_a = {r[r.index("a") - 1] for r in rounds if r[0] != "a"}
    assert len(before_a) > 1
    assert run(0) == calls
    assert run(1) != calls


def test_paired_ratio_cancels_a_slow_spell():
    """A slow spell of the machine that begins between the two calls of repeat 3 and lasts
    to the end: the ratio of medians reads 3.6, the paired ratio still 1.2."""
    ours = [1.0, 1.0, 1.0, 3.0, 3.0]
    reference = [1.2, 1.2, 3.6, 3.6, 3.6]
    assert statistics.median(reference) / statistics.median(ours) == pytest.approx(3.6)
    assert _harness.paired_ratio(ours, reference) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="2 and 1 samples"):
        _harness.paired_ratio([1.0, 1.0], [1.0])


def test_parity_table_has_a_verdict(tmp_path):
    """``python -m benchmarks.parity`` at a tiny size: every row of its table is measured
    and the verdict line matches the exit status (no goal is asserted: tiny sizes say
    nothing about speed)."""
    out = tmp_path / "parity.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.parity", "--n", "64", "--d", "8", "--repeats", "1",
         "--threads", "1", "--backend", "torch", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| PyTorch")]
    assert len(rows) == 3, text
    assert all("| 1 | 64 | 8 |" in row for row in rows)
    verdict = text.strip().splitlines()[-1]
    assert verdict.startswith("PASS" if proc.returncode == 0 else "FAIL"), (verdict, proc.stderr)


def test_suite_plot_draws_one_panel_per_framework_and_size(tmp_path):
    """Every (framework, N, D) that was run gets a panel, two a row: four panels are a
    2 × 2 figure, one panel a single one (no empty panel for what was not run)."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from benchmarks.__main__ import suite_plot

    def row(backend, n, d, variant, seconds):
        return {"status": "ok", "layout": "pairs", "backend": backend, "n": n, "d": d,
                "variant": variant, "seconds": seconds}

    rows = [row(b, n, 8, v, t) for b in ("torch", "jax") for n in (64, 128)
            for v, t in (("tfree", 1.0), ("tfree compiled", 0.5), ("autodiff eager", 2.0))]
    four, one = tmp_path / "four.png", tmp_path / "one.png"
    suite_plot(rows, four)
    suite_plot(rows[:3], one)
    with Image.open(four) as a, Image.open(one) as b:
        assert a.size[0] == 2 * b.size[0]
        assert round(a.size[1] / b.size[1], 1) == round((0.4 + 2 * 3.6) / (0.4 + 3.6), 1)
