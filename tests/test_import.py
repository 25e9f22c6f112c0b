"""Importing the core imports no deep-learning framework."""

import subprocess
import sys


def test_core_import_is_framework_free():
    code = (
        "import sys, tfree_core; "
        "bad = [m for m in ('torch', 'jax', 'tensorflow', 'keras') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"tfree_core imported {result.stdout.strip()}"


def test_version():
    import tfree_core

    assert tfree_core.__version__.count(".") == 2


def test_torch_backend_import_leaves_the_compiler_alone():
    """``import tfree_torch`` does not import ``torch._dynamo`` (seconds, and Triton where it
    is installed, whose LLVM aborts a process that loaded TensorFlow's first): TensorFlow
    and tfree_torch then import in either order. The compile-time mark it sets instead is
    the one ``torch.compiler.assume_constant_result`` sets."""
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    code = (
        "import sys, tensorflow, tfree_torch, torch; "
        "assert 'torch._dynamo' not in sys.modules and 'triton' not in sys.modules; "
        "print(float(tfree_torch.info_nce(torch.eye(3), torch.eye(3))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # identical unit rows: log1p(2·(1 - b)/(1 + b)) with b = 1 - 1e-6 in float32
    assert 0.9e-6 < float(result.stdout.strip().splitlines()[-1]) < 1.1e-6

    import torch
    from tfree_torch._static import assume_constant_result

    def probe():
        return 1

    def reference():
        return 1

    assume_constant_result(probe)
    torch.compiler.assume_constant_result(reference)
    marks = {k for k in vars(reference) if "dynamo" in k}
    assert marks
    assert all(getattr(probe, k) == getattr(reference, k) for k in marks)
