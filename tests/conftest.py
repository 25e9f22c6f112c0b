"""Shared fixtures: the array namespaces the core is tested on, skipping what is absent."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conformance.mappings import relieve

if importlib.util.find_spec("torch") is not None:
    # torch.compile's Dynamo imports Triton where it is installed; Triton's LLVM and
    # TensorFlow's abort the process when TensorFlow's is loaded first ("inconsistency in
    # registered CommandLine options"). The suite imports both: Dynamo goes first.
    import torch._dynamo  # noqa: F401

CORE_BACKENDS = ("numpy", "array_api_strict")

_tests_run = [0]


@pytest.fixture(autouse=True)
def _bounded_jax_caches():
    """Below vm.max_map_count: see conformance.mappings (the suite compiles thousands of
    JAX programs in one process)."""
    yield
    _tests_run[0] += 1
    if _tests_run[0] % 20 == 0:
        relieve()


@pytest.fixture(scope="module")
def jax_x64():
    """float64 stays float64 in JAX, as in the other libraries, for one test module
    (``pytestmark = pytest.mark.usefixtures("jax_x64")``); nothing without JAX."""
    if importlib.util.find_spec("jax") is None:
        yield
        return
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="session", autouse=True)
def _strict_2023_12():
    """Pin array-api-strict to the 2023.12 standard the core targets."""
    try:
        import array_api_strict
    except ImportError:
        yield
        return
    array_api_strict.set_array_api_strict_flags(api_version="2023.12")
    yield
    array_api_strict.reset_array_api_strict_flags()


@pytest.fixture(params=CORE_BACKENDS)
def xp(request):
    if request.param == "numpy":
        return np
    return pytest.importorskip("array_api_strict")


@pytest.fixture
def device(xp):
    """A non-default device where the namespace has fake ones (catches device bugs on CPU)."""
    if xp is np:
        return None
    return xp.Device("device1")


@pytest.fixture
def to_xp(xp, device):
    def convert(a):
        if a is None:
            return None
        return xp.asarray(a) if device is None else xp.asarray(a, device=device)

    return convert


@pytest.fixture
def rng():
    return np.random.default_rng(20250129)


@pytest.fixture
def to_np(xp, device):
    """Back to NumPy, checking on the way that the result stayed on the inputs' device."""

    def convert(a):
        if device is None:
            return np.asarray(a)
        assert a.device == device, f"result on {a.device}, inputs on {device}"
        return np.asarray(a.to_device(xp.Device("CPU_DEVICE")))

    return convert
