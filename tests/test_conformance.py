"""The golden vectors under pytest: every installed backend, every case.

The runner (``python -m conformance``) gives each backend its own process; here they share
the test process (torch is imported before TensorFlow, see conftest). Eager mode runs
every case in every dtype; compiled modes a representative subset (``COMPILED_DTYPES``).
Tiled mode (``chunk_size`` not dividing the anchor rows, every layout but similarity) runs
every case in every dtype for numpy, array_api_strict and torch; for JAX and TensorFlow,
whose tiled calls compile one block loop per case (seconds each), tiled and tiled-compiled
run the compiled subset in float32 (the runner runs them all: ``--mode tiled``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.adapters import Unsupported, make_adapter
from conformance.capabilities import CAPABILITIES
from conformance.golden import (
    COMPILED_DTYPES,
    TILED_MODES,
    compiled_subset,
    fused_case,
    load_cases,
    planned,
    tiled_chunk_size,
)
from conformance.worker import check

ROOT = Path(__file__).resolve().parent.parent
CASES = load_cases()
SUBSET = {c.id for c in compiled_subset(CASES)}
_ADAPTERS: dict[str, object] = {}


def _adapter(backend: str):
    if backend not in _ADAPTERS:
        pytest.importorskip(CAPABILITIES[backend].module)
        adapter = make_adapter(backend)
        try:
            adapter.setup()
        except ImportError as err:
            pytest.skip(f"{backend} backend not importable: {err}")
        _ADAPTERS[backend] = adapter
    return _ADAPTERS[backend]


# Tiled calls that compile per case (seconds each) run the compiled subset only.
_TILED_SUBSET_ONLY = ("jax", "tensorflow")


def _params():
    for backend, cap in CAPABILITIES.items():
        for mode in cap.modes:
            if backend == "torch" and mode == "fused":
                continue  # Triton's interpreter needs its own process: see test_fused_torch_rows
            tiled = mode in TILED_MODES
            dtypes = cap.dtypes if mode == "eager" or tiled else COMPILED_DTYPES
            for dtype in dtypes:
                for case in CASES:
                    if mode == "fused" and not fused_case(case):
                        continue  # jax: the kernels' cases of the compiled subset
                    if tiled:
                        if not planned(case, mode, dtype, SUBSET) or (
                                backend in _TILED_SUBSET_ONLY
                                and (case.id not in SUBSET or dtype != "float32")):
                            continue
                    elif not (dtype in case.dtypes and (mode == "eager" or case.id in SUBSET)):
                        continue
                    yield pytest.param(backend, mode, dtype, case,
                                       id=f"{backend}-{mode}-{dtype}-{case.id}")


@pytest.mark.parametrize(("backend", "mode", "dtype", "case"), list(_params()))
def test_golden(backend, mode, dtype, case):
    adapter = _adapter(backend)
    try:
        result = adapter.run(case, dtype, mode, "cpu")
    except Unsupported as err:
        pytest.skip(str(err))
    worst, where = check(case, dtype, result)
    assert worst <= 1, f"{where}: error {worst:.3g} x tolerance"


def test_runner_reports_a_broken_backend():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--adapter", "broken_adapter:Broken",
         "--cases", "pairs-arctanh-mean,nt_xent-arctanh-mean"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "| broken" in out
    assert "FAIL 2/2" in out
    assert "broken/cpu/eager/float64 pairs-arctanh-mean: loss error" in out
    assert "broken/cpu/eager/float32 nt_xent-arctanh-mean: d/dz2 error" in out
    assert "0 passed, 4 failed, 0 skipped" in out


def test_runner_passes_on_the_core():
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--backend", "numpy", "--cases", "pairs-"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| numpy" in result.stdout
    assert " 0 failed" in result.stdout


def test_fused_torch_rows():
    """The fused Triton kernels on every case they support (``golden.fused_case``), float64
    and float32, in Triton's CPU interpreter (the runner's own ``TRITON_INTERPRET=1``
    worker; float16/bfloat16 rows run with ``python -m conformance --mode fused``)."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--backend", "torch", "--mode", "fused",
         "--dtype", "float64,float32", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "| torch             | cpu    | fused" in out
    assert " 0 failed, 0 skipped" in out
    passed = int(out.strip().splitlines()[-1].split()[0])
    assert passed >= 2 * 30, out



def test_tiled_rows_cover_every_tiled_layout_with_padded_blocks():
    """The tiled modes reach every layout but similarity, each with a chunk that leaves a
    padded last block wherever the anchor rows allow one (more than two rows)."""
    from conformance.golden import TILED_LAYOUTS, anchor_rows

    tiled = [c for c in CASES if planned(c, "tiled", "float64", SUBSET)]
    assert {c.layout for c in tiled} == set(TILED_LAYOUTS)
    assert not any(c.layout == "similarity" for c in tiled)
    for case in tiled:
        rows, chunk = anchor_rows(case), tiled_chunk_size(case)
        assert 1 <= chunk < max(rows, 2)
        if rows > 2:
            assert rows % chunk, (case.id, rows, chunk)
    compiled = {c.id for c in CASES if planned(c, "tiled-compiled", "float32", SUBSET)}
    assert compiled
    assert compiled <= SUBSET


def test_runner_runs_the_tiled_mode():
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--backend", "numpy", "--mode", "tiled",
         "--cases", "sup_con-,nt_xent-"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| numpy")]
    assert len(rows) == 1, result.stdout
    assert "| tiled " in rows[0]
    assert "ok " in rows[0]
    assert " 0 failed" in result.stdout
