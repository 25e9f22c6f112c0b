"""Determinism on CPU: the same inputs give bit-identical losses and gradients, call after
call and process after process, in every backend, untiled and tiled.

Inputs are large enough (N = 96, D = 48) for the matrix products to take the libraries'
blocked, multi-threaded paths, where a reduction order that depended on scheduling would
show. ``python tests/test_reliability_determinism.py`` prints the fingerprints (SHA-256
of the bytes of every loss and gradient) as JSON; the test compares a fresh interpreter's
with this one's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("torch") is not None:  # before TensorFlow (see the catalogue)
    import torch
    import torch._dynamo

BACKENDS = ["core"] + [
    b for b, mod in (("torch", "torch"), ("jax", "jax"), ("tf", "tensorflow"))
    if importlib.util.find_spec(mod) is not None
]
N, D, M, REPEATS = 96, 48, 32, 3
CASES = {
    # name: (function, keywords)
    "pairs-symmetric-labels": ("info_nce", {"symmetric": True, "labels": True}),
    "negatives-none": ("info_nce", {"negatives": True, "reduction": "none"}),
    "sup_con-views-sum": ("sup_con", {"views": 2, "reduction": "sum"}),
}
FIRST: dict[str, str] = {}  # this interpreter's fingerprints, by key
# (dtype, tiling): float32 both ways, float64 untiled (each is one JAX compilation)
MODES = {"float32/untiled": ("float32", None), "float32/tiled": ("float32", 20),
         "float64/untiled": ("float64", None)}


def _inputs(name: str, dtype: str) -> tuple[list[np.ndarray], dict]:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    function, kw = CASES[name]
    kw = dict(kw)
    q = rng.normal(size=(N, D))
    labels = rng.integers(0, 6, N)
    if function == "sup_con":
        views = kw.pop("views")
        return [rng.normal(size=(N, views, D)).astype(dtype)], {"labels": labels, **kw}
    arrays = [q.astype(dtype), (q + 0.5 * rng.normal(size=(N, D))).astype(dtype)]
    if kw.pop("labels", False):
        kw["labels"] = labels
    if kw.pop("negatives", False):
        arrays.append(rng.normal(size=(M, D)).astype(dtype))
    return arrays, kw


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def fingerprint(backend: str, name: str, dtype: str, chunk: int | None) -> str:
    """SHA-256 of the loss and the gradients of ``Σ loss`` for one case (fresh arrays)."""
    arrays, kw = _inputs(name, dtype)
    function = CASES[name][0]
    diff_names = {"info_nce": ["query", "key", "negatives"], "nt_xent": ["z1", "z2"],
                  "sup_con": ["features"]}[function][: len(arrays)]
    kw = {**kw, "chunk_size": chunk}
    if backend == "core":
        import tfree_core

        named = dict(zip(diff_names, arrays, strict=True))
        extra = dict(kw)
        if function == "info_nce":
            loss, grads = tfree_core.info_nce_value_and_grad(
                named["query"], named["key"], negatives=named.get("negatives"), **extra)
        elif function == "nt_xent":
            loss, grads = tfree_core.nt_xent_value_and_grad(named["z1"], named["z2"], **extra)
        else:
            loss, grads = tfree_core.sup_con_value_and_grad(named["features"], **extra)
        return _digest([np.asarray(loss), *grads])
    if backend == "torch":
        import tfree_torch

        xs = [torch.tensor(a, requires_grad=True) for a in arrays]
        extra = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in kw.items()}
        fn = getattr(tfree_torch, function)
        loss = fn(**dict(zip(diff_names, xs, strict=True)), **extra)
        grads = torch.autograd.grad(loss.sum(), xs)
        return _digest([loss.detach().numpy(), *(g.numpy() for g in grads)])
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        import tfree_jax

        fn = getattr(tfree_jax, function)
        extra = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}

        def total(xs):
            value = fn(**dict(zip(diff_names, xs, strict=True)), **extra)
            return jnp.sum(value), value

        (_, loss), grads = jax.value_and_grad(total, has_aux=True)(
            [jnp.asarray(a) for a in arrays])
        return _digest([np.asarray(loss), *(np.asarray(g) for g in grads)])
    import tensorflow as tf
    import tfree_tf

    fn = getattr(tfree_tf, function)
    xs = [tf.constant(a) for a in arrays]
    extra = {k: tf.constant(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    with tf.GradientTape() as tape:
        for x in xs:
            tape.watch(x)
        loss = fn(**dict(zip(diff_names, xs, strict=True)), **extra)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, xs)
    return _digest([loss.numpy(), *(g.numpy() for g in grads)])


def all_fingerprints(backends) -> dict[str, str]:
    out = {}
    for backend in backends:
        for name in CASES:
            for mode, (dtype, chunk) in MODES.items():
                out[f"{backend}/{name}/{mode}"] = fingerprint(backend, name, dtype, chunk)
    return out


pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 stays float64 in JAX


@pytest.fixture(scope="module")
def fresh_process():
    """A second interpreter computing every fingerprint, started first so that it runs
    while this one repeats its calls."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, __file__, *BACKENDS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).parent)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_calls_are_bit_identical(backend, fresh_process):
    """``REPEATS`` calls on fresh copies of the same inputs: identical bytes every time."""
    for name in CASES:
        for mode, (dtype, chunk) in MODES.items():
            first = fingerprint(backend, name, dtype, chunk)
            for _ in range(REPEATS - 1):
                assert fingerprint(backend, name, dtype, chunk) == first, (backend, name, mode)
            FIRST[f"{backend}/{name}/{mode}"] = first


def test_fresh_process_gives_the_same_bits(fresh_process):
    """A second interpreter (new thread pools, new compilation caches) reproduces every
    fingerprint of this one (computed by the test above, or here when run alone)."""
    here = FIRST if len(FIRST) == _expected_count() else all_fingerprints(BACKENDS)
    out, err = fresh_process.communicate(timeout=600)
    assert fresh_process.returncode == 0, err[-3000:]
    there = json.loads(out.strip().splitlines()[-1])
    assert there == here
    assert len(here) == _expected_count()


def _expected_count() -> int:
    return len(BACKENDS) * len(CASES) * len(MODES)


if __name__ == "__main__":
    if "jax" in sys.argv[1:]:
        import jax

        jax.config.update("jax_enable_x64", True)
    print(json.dumps(all_fingerprints(sys.argv[1:] or BACKENDS)))
