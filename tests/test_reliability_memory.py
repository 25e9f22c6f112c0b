"""Tiled evaluation is bounded in memory where it matters most: a batch whose untiled
similarity matrix would take more than 4 GiB, loss and gradient, in a fresh process (peak
RSS is a process-wide high-water mark).

PyTorch on a CPU once peaked at 5 GiB here (N = 33 000, D = 16): every block's outputs,
kept until the loop's end, sat between the blocks' freed temporaries and fragmented the C
heap; the block loop now writes them into arrays allocated once (``engine.python_loop``).
The bound asserted is 1 GiB above the process's size before the call; measured: +100 MiB.
``TFREE_MEMORY_N=48000 python -m pytest tests/test_reliability_memory.py -s`` runs the
size past 2³¹ matrix entries (minutes) and prints each run's growth.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

N = int(os.environ.get("TFREE_MEMORY_N", "33000"))  # untiled: N² float32 = 4.06 GiB
D = 16
BOUND_MIB = 1024

SCRIPT = textwrap.dedent(f"""
    import resource, sys
    import numpy as np
    backend = sys.argv[1]
    rng = np.random.default_rng(0)
    q, k = (rng.normal(size=({N}, {D})).astype(np.float32) for _ in range(2))
    if backend == "torch":
        import torch, tfree_torch
        q, k = (torch.from_numpy(x).requires_grad_(True) for x in (q, k))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tfree_torch.info_nce(q, k, symmetric=sys.argv[2] == "symmetric").backward()
        finite = bool(torch.isfinite(q.grad).all())
    else:
        import tfree_core
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _, grads = tfree_core.info_nce_value_and_grad(q, k,
                                                      symmetric=sys.argv[2] == "symmetric")
        finite = bool(np.isfinite(grads[0]).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - before) // 1024, finite, peak // 1024)
""")


@pytest.mark.parametrize(("backend", "direction"), [
    ("core", "one"), ("torch", "one"), ("torch", "symmetric")])
def test_tiled_call_stays_far_below_the_matrix(backend, direction):
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")
    result = subprocess.run([sys.executable, "-c", SCRIPT, backend, direction],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    grown, finite, peak = result.stdout.split()
    assert finite == "True"
    print(f"\n{backend} {direction}, N = M = {N}, D = {D}: peak RSS {peak} MiB, "
          f"+{grown} MiB during the call")
    assert int(grown) <= BOUND_MIB, f"peak RSS grew by {grown} MiB"
