"""``python -m examples.lightning_ddp``: a LightningModule trained with
``tfree_torch.nt_xent(..., group=WORLD)`` under Lightning's DDP on two CPU processes (Gloo)
instead of ``self.all_gather``; the example checks that the ranks' mean loss is the gathered
batch's loss and that DDP's averaged gradient is that loss's gradient."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning", reason="needs the lightning extra")

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, devices: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "examples.lightning_ddp", "--devices", str(devices),
         "--steps", "4", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow
def test_ddp_on_two_processes(tmp_path):
    result = run(tmp_path, devices=2)
    print(result)
    assert result["world_size"] == 2
    assert result["loss_sharded"] == pytest.approx(result["loss_global"], rel=1e-5)
    assert result["grad_max_rel_err"] < 1e-4  # float32
    losses = result["losses"]
    assert len(losses) == 4
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_one_process(tmp_path):
    result = run(tmp_path, devices=1)
    assert result["world_size"] == 1
    assert result["loss_sharded"] == pytest.approx(result["loss_global"], rel=1e-6)
    assert result["grad_max_rel_err"] < 1e-5
    assert len(result["losses"]) == 4
