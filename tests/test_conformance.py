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

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.__main__ import verdict
from conformance.adapters import Unsupported, make_adapter
from conformance.capabilities import CAPABILITIES
from conformance.cases import LAYOUTS
from conformance.golden import (
    COMPILED_DTYPES,
    TILED_MODES,
    compiled_subset,
    fused_case,
    load_cases,
    planned,
    tiled_chunk_size,
)
from conformance.selection import case_kinds, check_kinds, full_plan, representative
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
        [sys.executable, "-m", "conformance", "--full", "--backend", "torch", "--mode", "fused",
         "--dtype", "float64,float32", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "| torch             | cpu    | fused" in out
    assert " 0 failed, 0 skipped" in out
    totals = next(line for line in out.splitlines() if line.endswith(" 0 failed, 0 skipped"))
    assert int(totals.split()[0]) >= 2 * 30, out



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


# --------------------------------------------------------------------------- the runner


def _representative(backend: str):
    cap = CAPABILITIES[backend]
    plan = full_plan(CASES, cap, ["cpu"], cap.modes, cap.dtypes, SUBSET)
    return plan, representative(plan)


@pytest.mark.parametrize("backend", list(CAPABILITIES))
def test_representative_matrix_covers_every_kind_dtype_and_mode(backend):
    """Per mode, the representative checks reach every input dtype and every kind the
    mode's full plan has (eager: every dtype with every function), in a small fraction of
    the checks."""
    plan, chosen = _representative(backend)
    assert {c.mode for c in chosen} == set(CAPABILITIES[backend].modes)
    for mode in CAPABILITIES[backend].modes:
        full = [c for c in plan if c.mode == mode]
        rep = [c for c in chosen if c.mode == mode]
        assert {c.dtype for c in rep} == {c.dtype for c in full}, mode
        assert set().union(*map(check_kinds, rep)) == set().union(*map(check_kinds, full))
    eager = set().union(*(case_kinds(c.case, "eager") for c in chosen if c.mode == "eager"))
    assert {("layout", layout) for layout in LAYOUTS} <= eager
    assert {("reduction", r) for r in ("mean", "sum", "none")} <= eager
    assert {("ranks", "sup_con", (2,)), ("ranks", "sup_con", (3,)), ("keyword", "where"),
            ("keyword", "labels"), ("logit_map", "temperature")} <= eager
    assert len(chosen) <= max(50, len(plan) // 10)


def test_representative_matrix_is_deterministic_and_split_invariant():
    """The same checks every run, whether a backend's modes share one worker or not (the
    runner gives PyTorch's fused mode a worker of its own)."""
    plan, chosen = _representative("torch")
    ids = [(c.mode, c.dtype, c.case.id) for c in chosen]
    assert ids == [(c.mode, c.dtype, c.case.id) for c in representative(plan)]
    fused = representative([c for c in plan if c.mode == "fused"])
    assert [(c.dtype, c.case.id) for c in fused] == [
        (c.dtype, c.case.id) for c in chosen if c.mode == "fused"]


def _rows(*specs):
    return [{"backend": b, "device": "cpu", "mode": m, "dtype": "float32", "case": "x",
             "status": s, "where": "loss", "worst": 0.5} for b, m, s in specs]


def test_verdict_line():
    metas = {"numpy": {"full": 961}, "jax": {"full": 2713}}
    rows = _rows(("numpy", "eager", "passed"), ("jax", "compiled", "passed"),
                 ("jax", "tiled", "passed"))
    assert verdict(rows, metas, [], 161.2, full=False) == (
        "conformance: PASS — 3 checks on numpy, jax (eager, compiled, tiled), 0 failed, "
        "2 min 41 s (representative matrix; --full for all 3 674)")
    rows[1]["status"] = "failed"
    metas["tensorflow"] = {"setup_error": "ImportError: no"}
    line = verdict(rows, metas, ["torch"], 48.0, full=True)
    assert line == (
        "conformance: FAIL (jax, tensorflow did not run) — 3 checks on numpy, jax, tensorflow "
        "(eager, compiled, tiled), 1 failed, 48 s (full matrix); not installed: torch")
    assert verdict([], {"numpy": {}}, [], 1, full=False).startswith(
        "conformance: FAIL (no checks ran) — 0 checks on numpy")


DYING = '''
import os, resource, signal, sys, time

from conformance.adapters import Adapter
from conformance.tolerances import as_float64


class Dying(Adapter):
    """Answers the golden values themselves (no backend involved), until a pairs case."""

    name = "dying"
    dtypes = ("float64",)
    modes = ("eager",)
    how = ""

    def run(self, case, dtype, mode, device):
        if case.layout == "pairs":
            print("about to fail", file=sys.stderr, flush=True)
            {"segv": self.segv, "exit": lambda: os._exit(3), "quiet": lambda: os._exit(0),
             "hang": lambda: time.sleep(60)}[self.how]()
        expected = case.expected_for(dtype)
        return as_float64(expected["loss"]), {
            name: as_float64(grad) for name, grad in expected["grads"].items()}

    def segv(self):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the repository
        os.kill(os.getpid(), signal.SIGSEGV)
'''


@pytest.mark.parametrize(("how", "cause"), [
    ("segv", "killed by SIGSEGV (signal 11)"),
    ("exit", "exit status 3"),
    ("quiet", "exit status 0 before reporting all its checks"),
    ("hang", "no output for 3 s: killed"),
])
def test_runner_reports_a_dying_worker(tmp_path, how, cause):
    """A worker that dies (a signal, an exit status, an early clean exit, a hang) is a
    failure row naming its cause and the check it died in, with its last stderr lines and
    the commands that rerun it alone; the verdict fails."""
    (tmp_path / "dying_adapter.py").write_text(
        DYING + f"\n\nclass Dies(Dying):\n    how = {how!r}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--adapter", "dying_adapter:Dies",
         "--cases", "nt_xent-arctanh-mean,pairs-arctanh-mean", "--stall-timeout", "3"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert (f"dying/cpu/eager/float64 pairs-arctanh-mean: worker died: {cause}, in "
            "cpu/eager/float64 pairs-arctanh-mean, after 1 of 2 checks") in out
    assert "about to fail" in out
    assert "rerun that worker alone:" in out
    assert "-m conformance.worker --backend dying_adapter:Dies --dtypes float64" in out
    assert ("-m conformance --adapter dying_adapter:Dies --full --device cpu --mode eager "
            "--dtype float64 --cases pairs-arctanh-mean") in out
    assert out.strip().splitlines()[-1].startswith(
        "conformance: FAIL (dying) — 2 checks on dying (eager), 1 failed")


def test_docs_report_is_a_full_run_of_every_backend_and_mode():
    """The Conformance page renders ``docs/data/conformance.json``; it must come from a full
    run with rows for every backend and every mode each one has. Regenerate it with
    ``python -m conformance --full --json docs/data/conformance.json``."""
    report = json.loads((ROOT / "docs" / "data" / "conformance.json").read_text())
    regenerate = "regenerate: python -m conformance --full --json docs/data/conformance.json"
    assert report.get("selection", "full") == "full", regenerate
    rows = {(r["backend"], r["mode"]) for r in report["matrix"]}
    missing = [f"{backend} {mode}" for backend, cap in CAPABILITIES.items()
               for mode in cap.modes if (backend, mode) not in rows]
    assert not missing, f"no rows for {', '.join(missing)}; {regenerate}"
