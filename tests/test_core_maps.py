"""The logit maps' element-wise formulas: the form written for fusing compilers (JAX)
gives the very same ratios as the in-place form, bit for bit."""

from __future__ import annotations

import array_api_compat.numpy as xnp
import numpy as np
import pytest

from tfree_core._maps import ArctanhMap
from tfree_core._options import make_options

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _grid(real, bound):
    """Every region of the clip: inside, the bounds and their neighbours, beyond, ±1."""
    b = real(bound)
    edges = [b, -b, 1, -1, 0, -0.0, 1.5, -1.5]
    for e in (b, -b):
        edges += [np.nextafter(e, real(2)), np.nextafter(e, real(-2))]
    return np.concatenate([np.linspace(-1, 1, 100_001, dtype=real),
                           np.asarray(edges, dtype=real)])


@pytest.mark.parametrize(("real", "float64"), [(np.float32, False), (np.float64, True)])
@pytest.mark.parametrize("eps", [1e-6, 1e-3, 0.25])
def test_fused_ratio_is_bit_identical(x64, real, float64, eps):
    fmap = ArctanhMap(make_options(eps=eps), float64)
    s = _grid(real, fmap.bound)
    keep = np.arange(s.size) % 7 != 0
    expected = fmap.ratio(s, None, keep, xnp)
    fused = np.asarray(fmap.ratio(jnp.asarray(s), None, jnp.asarray(keep), jnp))
    assert fused.dtype == expected.dtype == real
    np.testing.assert_array_equal(fused, expected)
    assert np.all(expected[~keep] == 0)
    inside = np.abs(s) <= fmap.bound
    np.testing.assert_allclose(expected[keep & inside],
                               ((1 + s) / (1 - s))[keep & inside], rtol=4 * np.finfo(real).eps)


@pytest.mark.parametrize(("real", "float64"), [(np.float32, False), (np.float64, True)])
def test_fused_ratio_in_tensorflow_graphs(real, float64):
    """TensorFlow's shim reports fusing only while tracing; both forms agree bit for bit."""
    tf = pytest.importorskip("tensorflow")
    from tfree_tf import _xp as shim

    from tfree_core._namespace import fuses_elementwise

    fmap = ArctanhMap(make_options(), float64)
    s = _grid(real, fmap.bound)
    keep = np.arange(s.size) % 5 != 0
    assert not fuses_elementwise(shim)
    traced = []

    @tf.function(autograph=False)
    def ratio(s, keep):
        traced.append(fuses_elementwise(shim))
        return fmap.ratio(s, None, keep, shim)

    fused = ratio(tf.constant(s), tf.constant(keep)).numpy()
    assert traced == [True]
    np.testing.assert_array_equal(fused, fmap.ratio(s, None, keep, xnp))
    np.testing.assert_array_equal(fmap.ratio(tf.constant(s), None, tf.constant(keep), shim).numpy(),
                                  fused)


@pytest.mark.parametrize(("real", "float64"), [(np.float32, False), (np.float64, True)])
@pytest.mark.parametrize("eps", [1e-6, 0.25])
@pytest.mark.parametrize("masked", [False, True])
def test_ratio_and_weight_equal_ratio_and_weight(real, float64, eps, masked):
    """The one-clip form of the gradient-in-forward pass gives :meth:`ratio` and
    :meth:`weight` bit for bit (NumPy and PyTorch: in place), dropped entries 0 in both."""
    fmap = ArctanhMap(make_options(eps=eps), float64)
    s = _grid(real, fmap.bound)
    keep = (np.arange(s.size) % 7 != 0) if masked else None
    namespaces = [(xnp, lambda a: a)]
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xtorch
    namespaces.append((xtorch, torch.from_numpy))
    for xp, convert in namespaces:
        args = (convert(s), None if keep is None else convert(keep))
        ratio, weight = (np.asarray(v) for v in fmap.ratio_and_weight(args[0], args[1], xp))
        np.testing.assert_array_equal(ratio, np.asarray(fmap.ratio(args[0], None, args[1], xp)))
        np.testing.assert_array_equal(weight, np.asarray(fmap.weight(args[0], None, args[1], xp)))
        np.testing.assert_array_equal(np.asarray(args[0]), _grid(real, fmap.bound))  # not mutated
        if keep is not None:
            assert np.all(ratio[~keep] == 0)
            assert np.all(weight[~keep] == 0)
