"""Cached (GradCache) training as a pure function: a contrastive batch larger than the
encoder's activations fit, with the exact full-batch gradient of the encoder's parameters.

With ``E = [E_1; …; E_B]`` the embeddings of ``B`` mini-batches,

    ∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ · ∂L/∂E_b

1. every mini-batch is embedded (``lax.map``: the encoder is traced once);
2. ``jax.value_and_grad`` of the loss w.r.t. the whole batch of embeddings: tfree's
   analytic gradient (``O(N·D)`` memory when tiled);
3. each mini-batch is embedded again under ``jax.vjp`` and its VJP applied to ``dE_b``; the
   parameter cotangents are summed in a ``lax.scan`` carry, so only one mini-batch's
   residuals exist at a time.

The same per-mini-batch key is passed to the encoder in both passes, so dropout draws the
same masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from tfree_core import engine

PyTree = Any
Encoded = tuple[Callable[..., jax.Array], PyTree]
"""``(apply, batch)``: ``apply(params, batch)`` (or ``apply(params, batch, key)`` when a
``key`` is given) returns the embeddings of ``batch``, a pytree of arrays split along
dim 0."""


# --------------------------------------------------------------------------- validation


# how messages name a pair and its encoder
_WORDS = {"pair": "apply, batch", "encoder": "a function apply(params, batch[, key])"}


def _length(batch: PyTree, where: str) -> int:
    """The common length along dim 0 of the batch's leaves."""
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError(f"{where}: the batch holds no array to split along dim 0")
    lengths = {}
    for path, leaf in leaves:
        name = f"batch{jax.tree_util.keystr(path)}"
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) == 0:
            raise ValueError(f"{where}: {name} is {type(leaf).__name__} of shape {shape}; "
                             f"every leaf of a batch is an array split along dim 0 (close "
                             f"over constants in the encoder)")
        lengths[name] = shape[0]
    return engine.common_length(lengths, where, noun="arrays")


def _check_output(out: Any, rows: int, where: str) -> jax.Array:
    shape = getattr(out, "shape", None)
    if shape is None or not hasattr(out, "dtype"):
        raise TypeError(f"{where}: the encoder returned {type(out).__name__}; it must return "
                        f"the embeddings as one array ({rows}, ..., D)")
    if len(shape) < 1 or shape[0] != rows:
        raise ValueError(f"{where}: the encoder returned shape {tuple(shape)} for a "
                         f"mini-batch of {rows} rows; dim 0 must be the rows")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{where}: the encoder returned {out.dtype}; embeddings must be "
                        f"floating point")
    return out


# --------------------------------------------------------------------------- one argument


class _Argument:
    """One ``(apply, batch)`` argument cut into ``full`` mini-batches of ``size`` rows and a
    remainder of ``rest`` rows, with one key per mini-batch (the same in both passes)."""

    def __init__(self, name: str, slot: int, apply: Callable[..., jax.Array], batch: PyTree,
                 size: int, key: jax.Array | None) -> None:
        self.name, self.apply, self.size = name, apply, size
        self.rows = _length(batch, name)
        self.full, self.rest = divmod(self.rows, size)
        cut = self.full * size
        self.head = jax.tree.map(lambda x: x[:cut].reshape(self.full, size, *x.shape[1:]),
                                 batch)
        self.tail = jax.tree.map(lambda x: x[cut:], batch)
        count = self.full + (1 if self.rest else 0)
        self.keys = None if key is None else jax.random.split(jax.random.fold_in(key, slot),
                                                              count)

    def _call(self, params: PyTree, inputs: PyTree, key: jax.Array | None, rows: int):
        out = self.apply(params, inputs) if key is None else self.apply(params, inputs, key)
        return _check_output(out, rows, self.name)

    def _head_keys(self):
        return None if self.keys is None else self.keys[:self.full]

    def _tail_key(self):
        return None if self.keys is None else self.keys[self.full]

    def embed(self, params: PyTree) -> jax.Array:
        """The first pass: ``(rows, ...)`` embeddings, one mini-batch at a time."""
        parts = []
        if self.full:
            def one(xs):
                inputs, key = xs
                return self._call(params, inputs, key, self.size)

            out = lax.map(one, (self.head, self._head_keys()))
            parts.append(out.reshape(self.full * self.size, *out.shape[2:]))
        if self.rest:
            parts.append(self._call(params, self.tail, self._tail_key(), self.rest))
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def pullback(self, params: PyTree, d_out: jax.Array, total: PyTree) -> PyTree:
        """The third pass: ``total + Σ_b (∂E_b/∂θ)ᵀ·dE_b``, one mini-batch's VJP at a time."""
        def vjp(inputs, key, d, rows):
            out, pull = jax.vjp(lambda p: self._call(p, inputs, key, rows), params)
            (grad,) = pull(d.astype(out.dtype))
            return grad

        if self.full:
            cut = self.full * self.size
            d_head = d_out[:cut].reshape(self.full, self.size, *d_out.shape[1:])

            def step(acc, xs):
                inputs, key, d = xs
                return jax.tree.map(jnp.add, acc, vjp(inputs, key, d, self.size)), None

            total, _ = lax.scan(step, total, (self.head, self._head_keys(), d_head))
        if self.rest:
            grad = vjp(self.tail, self._tail_key(), d_out[self.full * self.size:], self.rest)
            total = jax.tree.map(jnp.add, total, grad)
        return total


# --------------------------------------------------------------------------- the function


def cached_value_and_grad(loss: Callable[..., jax.Array], *encoded: Encoded, params: PyTree,
                          mini_batch_size: int, key: jax.Array | None = None,
                          **keywords: Any) -> tuple[jax.Array, PyTree]:
    """A contrastive loss over a batch whose activations do not fit, and the gradient of
    the encoders' parameters, exactly that of the full batch (GradCache: Gao et al. 2021).

    ``∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ · ∂L/∂E_b``: each argument's batch is cut into mini-batches of
    ``mini_batch_size`` rows and embedded one at a time (``lax.map``); ``jax.value_and_grad``
    of ``loss`` w.r.t. the whole batch of embeddings gives ``∂L/∂E`` (tfree's analytic,
    tiled gradient: ``O(N·D)`` memory); then each mini-batch is embedded again under
    ``jax.vjp`` and its VJP applied to ``∂L/∂E_b``, summed in a ``lax.scan``. Peak memory:
    one mini-batch's residuals plus ``O(N·D)``. Pure: call it inside ``jax.jit`` (the
    encoders are traced once per argument, plus once for a last, shorter mini-batch).

    Examples:
        A CLIP step over 32 pairs, 8 rows embedded at a time, dropout drawn from the key:

        ```python
        from functools import partial

        import jax
        import jax.numpy as jnp
        import tfree_jax

        def encode(params, x, key):  # one tower for both sides
            h = jnp.tanh(x @ params["w1"])
            keep = jax.random.bernoulli(key, 0.9, h.shape)
            return jnp.where(keep, h / 0.9, 0) @ params["w2"]

        @jax.jit
        def step(params, q, k, key):
            return tfree_jax.cached_value_and_grad(
                partial(tfree_jax.info_nce, symmetric=True), (encode, q), (encode, k),
                params=params, mini_batch_size=8, key=key)

        k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
        params = {"w1": 0.1 * jax.random.normal(k1, (24, 32)),
                  "w2": 0.1 * jax.random.normal(k2, (32, 16))}
        q, k = jax.random.normal(k3, (2, 32, 24))
        loss, grads = step(params, q, k, k4)
        assert grads["w1"].shape == (24, 32)  # the gradient has the params' structure
        ```

    Args:
        loss: A tfree loss (``tfree_jax.info_nce``, ``nt_xent``, ``sup_con``, or a
            ``functools.partial`` with its options), or any function returning a scalar:
            called once as ``loss(*embeddings, **keywords)``.
        *encoded: The positional embeddings, each an ``(apply, batch)`` pair:
            ``apply(params, batch)`` (``apply(params, batch, key)`` when ``key`` is given)
            returns an array whose dim 0 is the rows (``(n, D)``, or ``(n, H, D)`` for
            per-row hard negatives); ``batch`` is a pytree of arrays (e.g. a dict of token
            ids and masks), all split along dim 0. The same ``apply`` may serve several
            arguments. Constants belong in ``apply``'s closure.
        params: The pytree every ``apply`` receives (both towers' parameters, if two): the
            gradient is w.r.t. it and has its structure.
        mini_batch_size: Rows embedded at a time (positive int).
        key: A PRNG key, or ``None`` (the encoders take no key). Argument ``s`` (positional
            ones first, then keyword pairs, in call order) gets
            ``jax.random.split(jax.random.fold_in(key, s), B_s)``, one key per mini-batch,
            the same in both passes.
        **keywords: The loss's keyword arguments: an ``(apply, batch)`` pair (e.g.
            ``negatives=(encode, h)``) is embedded as above; anything else (``labels``,
            ``where``, ``group``, options) is passed unchanged.

    Returns:
        ``(loss, grads)``: the loss and ``∂L/∂params``.
    """
    engine.check_loss_function(loss, returns="a function returning a scalar",
                               example="tfree_jax.info_nce")
    size = engine.check_mini_batch_size(mini_batch_size)
    pairs = engine.encoded_pairs("cached_value_and_grad", encoded, keywords, **_WORDS)
    constants = {n: v for n, v in keywords.items() if n not in pairs}
    arguments = [_Argument(name, slot, apply, batch, size, key)
                 for slot, (name, (apply, batch)) in enumerate(pairs.items())]
    embeddings = {a.name: a.embed(params) for a in arguments}
    value, d_embeddings = jax.value_and_grad(_on_embeddings(loss, len(encoded), constants))(
        embeddings)
    total = jax.tree.map(jnp.zeros_like, params)
    for argument in arguments:
        total = argument.pullback(params, d_embeddings[argument.name], total)
    return value, total


def _on_embeddings(loss: Callable[..., jax.Array], positional: int,
                   constants: Mapping[str, Any]) -> Callable[[dict], jax.Array]:
    """``loss`` as a function of the dict of embeddings (the argument to differentiate)."""
    def of(embeddings: dict) -> jax.Array:
        args = [embeddings[f"encoded[{i}]"] for i in range(positional)]
        kwargs = {n: e for n, e in embeddings.items() if not n.startswith("encoded[")}
        value = loss(*args, **kwargs, **constants)
        if jnp.shape(value) != ():
            raise ValueError(f"loss must return a scalar (reduction 'mean' or 'sum'), got "
                             f"shape {jnp.shape(value)}")
        return value

    return of
