"""Regressions of what a hostile user broke, one test per case (the error-message cases
of the same round live in the catalogue, ``tests/bad_inputs.py``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import tfree_core as core

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax not installed")

if HAS_TORCH:  # before TensorFlow (tests/conftest.py)
    import tfree_torch
    import torch
    import torch._dynamo

Q = np.random.default_rng(5).normal(size=(6, 4))
K = np.random.default_rng(6).normal(size=(6, 4))


def test_core_cotangent_true_is_not_one():
    with pytest.raises(TypeError, match="cotangent must be a real number or an array; got bool"):
        core.info_nce_value_and_grad(Q, K, cotangent=True)
    _, grads = core.info_nce_value_and_grad(Q, K, cotangent=2)
    _, unit = core.info_nce_value_and_grad(Q, K)
    np.testing.assert_allclose(grads[0], 2 * unit[0], rtol=1e-15)


def test_numpy_scalar_options_are_their_python_values():
    """``np.float32`` eps, ``np.int64`` chunk size, ``np.True_`` switches: as their Python
    values, everywhere (also 0-d arrays, which a tracer cannot tell from scalars)."""
    want = core.info_nce(Q, K, eps=float(np.float32(1e-6)), chunk_size=2, symmetric=True)
    got = core.info_nce(Q, K, eps=np.float32(1e-6), chunk_size=np.int64(2),
                        symmetric=np.True_, check_finite=np.False_)
    assert float(got) == float(want)
    assert float(core.info_nce(Q, K, chunk_size=np.array(2))) == float(
        core.info_nce(Q, K, chunk_size=2))


@needs_jax
def test_jax_refuses_labels_that_int32_would_wrap():
    import jax
    import tfree_jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        q = Q.astype(np.float32)
        with pytest.raises(ValueError, match=r"labels holds values from 0 to 4294967296"):
            tfree_jax.sup_con(q, np.array([0, 2**32, 1, 1, 0, 2]))
        with pytest.raises(ValueError, match="do not fit in int32"):
            tfree_jax.info_nce(q, q, labels=np.array([-2**40, 0, 1, 1, 0, 2]))
        # small int64 labels are fine, and equal to their int32 copies
        small = np.array([0, 3, 1, 1, 0, 2], np.int64)
        assert float(tfree_jax.sup_con(q, small)) == float(
            tfree_jax.sup_con(q, small.astype(np.int32)))
    finally:
        jax.config.update("jax_enable_x64", previous)


@needs_jax
def test_jax_group_outside_a_mapped_axis_names_group():
    import tfree_jax

    with pytest.raises(ValueError, match=r"group='batch' names no mapped axis"):
        tfree_jax.nt_xent(Q.astype(np.float32), K.astype(np.float32), group="batch")


# --------------------------------------------------------------------------- torch


@needs_torch
def test_torch_option_cache_keys_on_types():
    """``temperature=True`` is refused even after ``temperature=1`` was used (``True ==
    1`` hash alike)."""
    q, k = torch.from_numpy(Q), torch.from_numpy(K)
    tfree_torch.info_nce(q, k, logit_map="temperature", temperature=1)
    with pytest.raises(TypeError, match="temperature must be a Python float"):
        tfree_torch.info_nce(q, k, logit_map="temperature", temperature=True)
    tfree_torch.info_nce(q, k, eps=1e-6)
    with pytest.raises(TypeError, match="eps must be a Python float"):
        tfree_torch.info_nce(q, k, eps=True)


@needs_torch
def test_torch_numpy_options_under_compile():
    """Eagerly and under ``torch.compile`` without ``fullgraph`` (Dynamo hands the call back
    to eager execution) NumPy options work; with ``fullgraph=True`` the error names the
    option and says what to pass (Dynamo traces NumPy scalars as tensors)."""
    q, k = torch.from_numpy(Q), torch.from_numpy(K)
    want = float(tfree_torch.info_nce(q, k, eps=1e-6, chunk_size=2))
    options = {"eps": np.float32(1e-6), "chunk_size": np.int64(2)}
    assert float(tfree_torch.info_nce(q, k, **options)) == pytest.approx(want, rel=1e-12)
    torch._dynamo.reset()
    lenient = torch.compile(lambda a, b: tfree_torch.info_nce(a, b, **options),
                            backend="eager")
    assert float(lenient(q, k)) == pytest.approx(want, rel=1e-12)
    torch._dynamo.reset()
    strict = torch.compile(lambda a, b: tfree_torch.info_nce(a, b, **options),
                           backend="eager", fullgraph=True)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="must be a Python scalar under"):
        strict(q, k)


@needs_torch
def test_two_losses_in_one_dynamic_graph():
    """``torch.compile(dynamic=True)`` of a step with two tfree losses, at two batch sizes,
    loss and gradient as eager."""
    def step(a, b):
        return tfree_torch.info_nce(a, b) + tfree_torch.nt_xent(a, b)

    torch._dynamo.reset()
    compiled = torch.compile(step, dynamic=True, fullgraph=True, backend="aot_eager")
    for n in (6, 9):
        a = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(n, 4, dtype=torch.float64)
        loss = compiled(a, b)
        (grad,) = torch.autograd.grad(loss, a)
        a0 = a.detach().clone().requires_grad_(True)
        want = step(a0, b)
        (want_grad,) = torch.autograd.grad(want, a0)
        assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
        torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-14)


@needs_torch
def test_torch_refuses_what_it_cannot_compute():
    q = torch.from_numpy(Q)
    with pytest.raises(TypeError, match="similarity is a Python float"):
        tfree_torch.logits(2.0)
    with pytest.raises(TypeError, match=r"key is a torch.sparse_coo tensor.*to_dense"):
        tfree_torch.info_nce(q, q.to_sparse())
    nested = torch.nested.nested_tensor([q[:3], q[:2]])
    with pytest.raises(TypeError, match="query is a nested tensor"):
        tfree_torch.info_nce(nested, nested)
    module = tfree_torch.TemperatureFreeLoss(symmetric=np.True_)
    assert module.symmetric is True
    with pytest.raises(TypeError, match="symmetric must be a bool"):
        tfree_torch.TemperatureFreeLoss(symmetric="False")


@needs_torch
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None
                    or importlib.util.find_spec("triton") is None,
                    reason="needs tensorflow and triton")
def test_fused_after_tensorflow_is_an_error_not_an_abort():
    """Triton's LLVM aborts a process that loaded TensorFlow's first; ``kernel="fused"``
    says so before touching Triton, and ``"auto"`` stays portable."""
    code = (
        "import tensorflow, torch, tfree_torch, sys\n"
        "q = torch.randn(4, 3)\n"
        "float(tfree_torch.info_nce(q, q))\n"
        "try:\n"
        "    tfree_torch.info_nce(q, q, kernel='fused')\n"
        "except ValueError as err:\n"
        "    print('refused:', err)\n"
        "assert 'triton' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: kernel='fused': Triton after TensorFlow" in result.stdout
