"""``python -m examples.hf_trainer_retrieval``: a transformers ``Trainer`` whose
``compute_loss`` is ``tfree_torch.info_nce(q, d, symmetric=True, group=...)`` on a tiny
BertModel built from a config; one process, and two under ``torchrun`` (Gloo, DDP)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", reason="needs the hf-trainer extra")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path: Path, launcher: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, *launcher, "-m", "examples.hf_trainer_retrieval", "--steps", "3",
         "--out", str(tmp_path)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((tmp_path / "results.json").read_text())


def test_trainer_runs_with_the_loss(tmp_path):
    result = run(tmp_path, [])
    assert result["steps"] == 3
    losses = result["losses"]
    assert len(losses) == 3
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert losses[-1] < losses[0]
    assert result["world_size"] == 1
    assert result["loss_sharded"] == pytest.approx(result["loss_global"], rel=1e-6)
    assert result["grad_max_rel_err"] < 1e-5
    assert losses[0] == pytest.approx(result["loss_global"], rel=1e-6)  # what the Trainer logs


@pytest.mark.slow
def test_trainer_under_torchrun_on_two_processes(tmp_path):
    result = run(tmp_path, ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", str(_free_port())])
    assert result["steps"] == 3
    assert result["world_size"] == 2
    # the ranks' mean loss is the global batch's (32 rows, 2 × 16), and each rank's rows get
    # 2 × that loss's gradient (DDP halves the parameters' sum): the global gradient
    assert result["loss_sharded"] == pytest.approx(result["loss_global"], rel=1e-5)
    assert result["grad_max_rel_err"] < 1e-4  # float32
    # the Trainer logs the mean over the ranks: at the first step, the global batch's loss
    assert result["losses"][0] == pytest.approx(result["loss_global"], rel=1e-5)
    assert all(math.isfinite(v) and v > 0 for v in result["losses"])
