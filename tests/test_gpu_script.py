"""The prepared GPU run (``benchmarks/gpu.sh``) in its dry mode: the same steps on the CPU at
tiny sizes, into a temporary directory. Asserted: the verdict, that every file the GPU run
writes is there with its keys, that the values it checked agree (with the float64 formula,
the fused kernels with the portable path, across variants at full size), that what cannot
run on a CPU is recorded as skipped with a reason, and that TFLOP/s is ``8·N²·D / seconds``.
No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench_gpu import DTYPES, FULL_SIZE_RTOL, TOLERANCE

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
FILES = ("environment.json", "conformance.json", "kernels.json", "benchmark.json",
         "benchmark.md", "summary.json")
TRITON = importlib.util.find_spec("triton") is not None


def _gpu_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("TFREE_GPU_DRY", "TRITON_INTERPRET")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=180,
                          env={**base, "PYTHON": sys.executable, **(env or {})})


def _read(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("gpu")
    return out, _gpu_sh("--dry", "--out", str(out))


def test_dry_run_passes_and_writes_every_file(dry):
    out, proc = dry
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu.sh --dry: PASS"), last
    for name in FILES:
        assert (out / name).is_file(), name
    summary = _read(out, "summary.json")
    assert summary["verdict"] == last
    assert summary["mode"] == "dry"
    assert set(summary["steps"]) == {"env", "conformance", "kernels", "bench"}
    assert all(s["rc"] == 0 and s["status"] == "ok" for s in summary["steps"].values())
    assert all((out / "logs" / f"{step}.log").is_file() for step in summary["steps"])


def test_benchmark_throughput_is_8_n2_d_over_seconds(dry):
    out, _ = dry
    report = _read(out, "benchmark.json")
    config = report["config"]
    n, d = config["n"], config["d"]
    assert (n, d, config["device"], config["dry"]) == (256, 32, "cpu", True)
    assert config["flop_count"] == "8*N^2*D"
    assert config["flops"] == 8 * n * n * d
    timed = [r for r in report["results"] if r["status"] == "ok"]
    assert {r["name"] for r in timed} >= {"tfree", "tfree untiled", "plain PyTorch"}
    for r in timed:
        assert r["seconds"] > 0
        assert math.isclose(r["tflops"], 8 * n * n * d / r["seconds"] / 1e12, rel_tol=1e-12)
        assert math.isclose(r["ms"], r["seconds"] * 1e3, rel_tol=1e-12)
        assert r["repeats"] == config["repeats_run"] >= 1
    markdown = (out / "benchmark.md").read_text()
    assert "| method | dtype | ms | TFLOP/s |" in markdown
    for r in report["results"]:
        assert f"| {r['name']} | {r['dtype']} |" in markdown


def test_benchmark_losses_agree(dry):
    out, _ = dry
    report = _read(out, "benchmark.json")
    assert report["verdict"] == "PASS"
    ran = [r for r in report["checks"] if r["status"] != "skipped"]
    assert {(r["name"], r["dtype"]) for r in ran} >= {
        (name, dtype) for name in ("tfree", "tfree untiled", "plain PyTorch") for dtype in DTYPES}
    for r in ran:
        tol = TOLERANCE[r["dtype"]]
        assert r["status"] == "ok", r
        assert abs(r["loss"] - r["reference"]) <= tol["loss"] * abs(r["reference"])
        assert r["grad_rel_err"] <= tol["grad"]
    timed = [r for r in report["results"] if r["status"] == "ok"]
    reference = next(r["loss"] for r in timed if (r["name"], r["dtype"]) == ("tfree", "float32"))
    for r in timed:
        assert r["agrees"] is True
        assert abs(r["loss"] - reference) <= FULL_SIZE_RTOL[r["dtype"]] * reference
    if TRITON:  # the fused variant: checked in Triton's interpreter, not timed
        fused = [r for r in report["checks"] if r["name"] == "tfree fused"]
        assert [r["status"] for r in fused] == ["ok"] * len(DTYPES)


def test_benchmark_skips_carry_reasons(dry):
    out, _ = dry
    report = _read(out, "benchmark.json")
    rows = report["checks"] + report["results"]
    for r in rows:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "skipped":
            assert r["reason"].strip(), r
    results = {(r["name"], r["dtype"]): r for r in report["results"]}
    for (name, dtype), r in results.items():
        if dtype == "bfloat16":
            assert r["status"] == "skipped"
        if dtype == "bfloat16" and name in ("tfree", "tfree untiled", "plain PyTorch"):
            assert "bfloat16 on a CPU" in r["reason"]
    fused = results["tfree fused", "float32"]
    assert fused["status"] == "skipped"
    assert ("interpreter" if TRITON else "Triton is not installed") in fused["reason"]
    inf_cl = results["Inf-CL cal_inf_loss", "float32"]
    assert inf_cl["status"] == "skipped"
    if importlib.util.find_spec("inf_cl") is None:
        assert "inf_cl not installed" in inf_cl["reason"]
    assert report["config"]["peak_memory"]["status"] == "skipped"


def test_kernels_agree_with_the_portable_path(dry):
    out, _ = dry
    report = _read(out, "kernels.json")
    assert report["status"] == "ok"
    for backend, package in (("torch", "tfree_torch"), ("jax", "tfree_jax")):
        entry = report["backends"][backend]
        if importlib.util.find_spec(package) is None or (backend == "torch" and not TRITON):
            assert entry["status"] == "skipped"
            assert entry["reason"]
            continue
        assert entry["status"] == "ok", entry
        assert entry["compiled"]["status"] == "skipped"
        assert "interpreter" in entry["compiled"]["reason"]
        cases = {(c["case"], c["dtype"]) for c in entry["cases"]}
        assert cases == {(c, t) for c in ("pairs", "pairs symmetric") for t in DTYPES}
        for c in entry["cases"]:
            assert c["status"] == "ok", c
            tol = TOLERANCE[c["dtype"]]
            assert abs(c["loss_fused"] - c["loss_portable"]) <= tol["loss"] * abs(
                c["loss_portable"])
            assert c["grad_rel_err"] <= tol["grad"]


def test_conformance_and_environment_records(dry):
    out, _ = dry
    conformance = _read(out, "conformance.json")
    assert conformance["verdict"].startswith("conformance: PASS")
    assert conformance["results"]
    assert {(r["backend"], r["device"], r["mode"], r["dtype"]) for r in conformance["results"]} \
        == {("torch", "cpu", "eager", "float32")}
    assert all(r["status"] == "passed" for r in conformance["results"])
    summary = _read(out, "summary.json")
    assert summary["conformance"]["backends"]["torch"]["passed"] == len(conformance["results"])
    env = _read(out, "environment.json")
    assert {"gpus", "cuda", "versions", "git", "python"} <= set(env)
    assert env["versions"]["torch"] != "not installed"
    if isinstance(env["gpus"], dict):  # no nvidia-smi here
        assert env["gpus"]["status"] == "skipped"
        assert env["gpus"]["reason"]


STAND_IN = '''\
"""A stand-in for Inf-CL's interface (cal_inf_loss), in plain PyTorch: CPU-only tests."""
import torch
import torch.nn.functional as F


def cal_inf_loss(q, k, labels=None, scale=None, head_dim=256):
    assert q.shape[1] % head_dim == 0
    labels = torch.arange(q.shape[0]) if labels is None else labels
    return F.cross_entropy((q @ k.T).float(), labels)
'''


def test_inf_cl_checked_when_importable(tmp_path):
    """With ``inf_cl`` importable (``--inf-cl-path``; here a stand-in with its signature), the
    benchmark checks ``cal_inf_loss`` against the CLIP formula; on a CPU it does not time it.
    The dry mode is also selected by ``TFREE_GPU_DRY=1``."""
    pytest.importorskip("torch")
    (tmp_path / "pkg" / "inf_cl").mkdir(parents=True)
    (tmp_path / "pkg" / "inf_cl" / "__init__.py").write_text(STAND_IN)
    out = tmp_path / "out"
    proc = _gpu_sh("--steps", "bench", "--out", str(out), "--inf-cl-path",
                   str(tmp_path / "pkg"), env={"TFREE_GPU_DRY": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu.sh --dry: PASS")
    report = _read(out, "benchmark.json")
    checks = [r for r in report["checks"] if r["name"] == "Inf-CL cal_inf_loss"]
    assert [r["status"] for r in checks] == ["ok"] * len(DTYPES)
    for r in checks:
        assert abs(r["loss"] - r["reference"]) <= TOLERANCE[r["dtype"]]["loss"] * r["reference"]
    timed = [r for r in report["results"] if r["name"] == "Inf-CL cal_inf_loss"]
    assert all(r["status"] == "skipped" and "not timed on a CPU" in r["reason"] for r in timed)
    assert not (out / "conformance.json").exists()


def test_usage_and_refusals(tmp_path):
    usage = _gpu_sh("--help")
    assert usage.returncode == 0
    assert usage.stdout.startswith("usage: bash benchmarks/gpu.sh")
    bad = _gpu_sh("--bogus")
    assert bad.returncode == 2
    assert "unknown option '--bogus'" in bad.stderr
    assert _gpu_sh("--dry", "--steps", "env,warp").returncode == 2
    # a dry run never replaces the GPU's numbers in the docs
    docs = _gpu_sh("--dry", "--out", str(ROOT / "docs" / "data" / "gpu"))
    assert docs.returncode == 2
    assert "never writes into docs/data/gpu" in docs.stderr
