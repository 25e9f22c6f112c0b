"""The golden vectors under pytest: every installed backend, every case.

The runner (``python -m conformance``) gives each backend its own process; here they share
the test process (torch is imported before TensorFlow, see conftest). Eager mode runs
every case in every dtype; compiled modes a representative subset (``COMPILED_DTYPES``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.adapters import Unsupported, make_adapter
from conformance.capabilities import CAPABILITIES
from conformance.golden import COMPILED_DTYPES, compiled_subset, load_cases
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


def _params():
    for backend, cap in CAPABILITIES.items():
        for mode in cap.modes:
            dtypes = cap.dtypes if mode == "eager" else COMPILED_DTYPES
            for dtype in dtypes:
                for case in CASES:
                    if dtype in case.dtypes and (mode == "eager" or case.id in SUBSET):
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
