"""Cached (GradCache) training for TensorFlow / Keras: a contrastive batch larger than the
encoder's activations fit, with the exact full-batch gradient of the encoder's variables.

With ``E = [E_1; …; E_B]`` the embeddings of ``B`` mini-batches,

    ∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ · ∂L/∂E_b

1. every mini-batch is embedded without a tape (a ``tf.while_loop``);
2. one ``GradientTape`` over the loss on the whole batch of embeddings gives ``∂L/∂E``
   (tfree's analytic gradient, ``O(N·D)`` memory when tiled);
3. each mini-batch is embedded again under its own ``GradientTape`` and
   ``tape.gradient(E_b, variables, output_gradients=dE_b)`` is summed in the loop's carry,
   so only one mini-batch's activations exist at a time.

Randomness is replayed: the states of the Keras ``SeedGenerator``s inside the encoder
(``Dropout``, ``GaussianNoise``, … and every layer built on them) are recorded before each
mini-batch's first pass and restored for its second; a plain callable gets a per-mini-batch
stateless seed instead (``seed=``). Works eagerly, under ``tf.function`` and
``tf.function(jit_compile=True)``, so it fits a Keras ``train_step``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from tfree_core import engine

Encoded = tuple[Callable[..., tf.Tensor], Any]
"""``(encoder, batch)``: a Keras model / layer (called as ``encoder(batch, training=True)``)
or a callable (``encoder(batch)``, ``encoder(batch, seed)`` with ``seed=``), and its inputs:
a tensor or a nest (dict, tuple) of tensors, all split along dim 0."""

_STATE = "seed_generator_state"  # the name Keras 3 gives a SeedGenerator's state variable


# --------------------------------------------------------------------------- validation


# how messages name a pair and its encoder
_WORDS = {"pair": "encoder, batch", "encoder": "a Keras model or a callable"}


def _keras_layer(encoder: object) -> Any:
    """The Keras layer behind ``encoder`` (itself, a ``functools.partial`` of one, a bound
    method of one), or ``None``."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    for candidate in (encoder, getattr(encoder, "func", None),
                      getattr(encoder, "__self__", None)):
        if isinstance(candidate, keras.layers.Layer):
            return candidate
    return None


def _rows(batch: Any, where: str) -> tf.Tensor | int:
    """The batch's length along dim 0: an int where static, else a scalar tensor."""
    leaves = [tf.convert_to_tensor(x) for x in tf.nest.flatten(batch)]
    if not leaves:
        raise ValueError(f"{where}: the batch holds no tensor to split along dim 0")
    static = {}
    for i, leaf in enumerate(leaves):
        if leaf.shape.rank == 0:
            raise ValueError(f"{where}: leaf {i} of the batch is a scalar; every tensor of a "
                             f"batch is split along dim 0")
        static[i] = leaf.shape[0]
    known = {f"leaf {i}": n for i, n in static.items() if n is not None}
    n = engine.common_length(known, where, noun="tensors")
    return tf.shape(leaves[0])[0] if n is None else n


def _check_output(out: Any, rows: int, where: str) -> tf.Tensor:
    if not isinstance(out, (tf.Tensor, tf.Variable)) and not hasattr(out, "shape"):
        raise TypeError(f"{where}: the encoder returned {type(out).__name__}; it must return "
                        f"the embeddings as one tensor ({rows}, ..., D)")
    out = tf.convert_to_tensor(out)
    if out.shape.rank is not None and (out.shape.rank < 1 or
                                       out.shape[0] not in (None, rows)):
        raise ValueError(f"{where}: the encoder returned shape {tuple(out.shape)} for a "
                         f"mini-batch of {rows} rows; dim 0 must be the rows")
    if not out.dtype.is_floating:
        raise TypeError(f"{where}: the encoder returned {out.dtype.name}; embeddings must be "
                        f"floating point")
    return out


# --------------------------------------------------------------------------- one argument


class _Argument:
    """One ``(encoder, batch)`` argument cut into ``count`` mini-batches of ``size`` rows.

    The last mini-batch is completed with rows from the start of the batch (whose
    embeddings are dropped and whose output gradient is zero), so every mini-batch has one
    static shape: one trace of the encoder, XLA-compatible, whatever the batch size."""

    def __init__(self, name: str, slot: int, encoder: Callable[..., tf.Tensor], batch: Any,
                 size: int, seed: tf.Tensor | None) -> None:
        self.name, self.slot, self.encoder, self.size = name, slot, encoder, size
        self.layer = _keras_layer(encoder)
        if seed is not None and self.layer is encoder:
            raise TypeError(f"{name}: seed= is for plain callables encoder(batch, seed); a "
                            f"Keras model's randomness is replayed from its SeedGenerators")
        self.batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
        self.rows = _rows(self.batch, name)
        self.count = -(-self.rows // size) if isinstance(self.rows, int) \
            else (self.rows + size - 1) // size
        self.seed = seed

    def states(self) -> list[Any]:
        """The encoder's SeedGenerator state variables (empty for a plain callable)."""
        if self.layer is None:
            return []
        return [v for v in self.layer.non_trainable_variables if v.name.endswith(_STATE)]

    def mini_batch(self, b: tf.Tensor | int) -> Any:
        rows = (b * self.size + tf.range(self.size)) % self.rows  # a static (size,) shape
        return tf.nest.map_structure(lambda x: tf.gather(x, rows), self.batch)

    def call(self, b: tf.Tensor | int) -> tf.Tensor:
        inputs = self.mini_batch(b)
        if self.layer is self.encoder:
            out = self.encoder(inputs, training=True)
        elif self.seed is not None:
            fold = tf.random.experimental.stateless_fold_in
            out = self.encoder(inputs, fold(fold(self.seed, self.slot), b))
        else:
            out = self.encoder(inputs)
        return _check_output(out, self.size, self.name)

    def embed(self) -> tuple[tf.Tensor, list[tf.TensorArray]]:
        """The first pass: the ``(rows, ...)`` embeddings and, per SeedGenerator, its state
        before each mini-batch."""
        states = self.states()
        recorded = [tf.TensorArray(v.dtype, size=self.count).write(0, tf.identity(v.value))
                    for v in states]
        first = self.call(0)  # outside the loop: builds the layers, gives the output's spec
        # later SeedGenerators are those a first call created
        states = self.states()
        if len(recorded) != len(states):
            raise RuntimeError(f"{self.name}: the encoder created its random layers in the "
                               f"cached pass; build it (call it once) before")
        outs = tf.TensorArray(first.dtype, size=self.count, element_shape=first.shape)
        outs = outs.write(0, first)

        def body(b, outs, recorded):
            recorded = [r.write(b, tf.identity(v.value)) for r, v in zip(recorded, states,
                                                                          strict=True)]
            return b + 1, outs.write(b, self.call(b)), recorded

        _, outs, recorded = tf.while_loop(lambda b, *_: b < self.count, body,
                                          (tf.constant(1), outs, recorded))
        stacked = outs.stack()
        flat = tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], 0))
        return flat[:self.rows], recorded

    def pullback(self, d_out: tf.Tensor, recorded: list[tf.TensorArray],
                 variables: Sequence[tf.Variable], total: list[tf.Tensor]) -> list[tf.Tensor]:
        """The third pass: ``total + Σ_b (∂E_b/∂θ)ᵀ·dE_b``, one mini-batch's tape at a time."""
        states = self.states()
        pad = self.count * self.size - self.rows
        d_out = tf.concat([d_out, tf.zeros(tf.concat([[pad], tf.shape(d_out)[1:]], 0),
                                           d_out.dtype)], 0)
        d_out = tf.reshape(d_out, tf.concat([[self.count, self.size], tf.shape(d_out)[1:]], 0))

        def body(b, total):
            for v, r in zip(states, recorded, strict=True):
                v.assign(r.read(b))
            with tf.GradientTape() as tape:
                out = self.call(b)
            d_b = tf.cast(tf.gather(d_out, b), out.dtype)
            grads = tape.gradient(out, variables, output_gradients=d_b,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return b + 1, [t + tf.cast(tf.convert_to_tensor(g), t.dtype)
                           for t, g in zip(total, grads, strict=True)]

        _, total = tf.while_loop(lambda b, _: b < self.count, body, (tf.constant(0), total))
        return total


# --------------------------------------------------------------------------- the function


def cached_value_and_grad(loss: Callable[..., tf.Tensor], *encoded: Encoded,
                          mini_batch_size: int, variables: Sequence[tf.Variable] | None = None,
                          seed: tf.Tensor | Sequence[int] | None = None,
                          **keywords: Any) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """A contrastive loss over a batch whose activations do not fit, and the gradients of
    the encoders' variables, exactly those of the full batch (GradCache: Gao et al. 2021).

    ``∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ · ∂L/∂E_b``: each argument's batch is cut into mini-batches of
    ``mini_batch_size`` rows and embedded one at a time (a ``tf.while_loop``); a
    ``GradientTape`` over ``loss`` on the whole batch of embeddings gives ``∂L/∂E`` (tfree's
    analytic gradient); then each mini-batch is embedded again under its own tape and
    ``tape.gradient(E_b, variables, output_gradients=dE_b)`` is summed. Peak memory: one
    mini-batch's activations plus ``O(N·D)``. Eager, ``tf.function`` (and
    ``jit_compile=True``) alike: call it in a Keras ``train_step`` and apply the gradients
    with the optimizer.

    Examples:
        One compiled step over 32 pairs, 8 rows embedded at a time, with dropout (its
        masks replayed in the second pass). In a Keras ``train_step`` the call is the
        same, with ``variables=self.trainable_variables``.

        ```python
        import keras
        import tensorflow as tf
        import tfree_tf

        encoder = keras.Sequential([keras.Input((24,)), keras.layers.Dense(16),
                                    keras.layers.Dropout(0.1)])
        optimizer = keras.optimizers.SGD(0.1)

        @tf.function
        def step(q, k):
            loss, grads = tfree_tf.cached_value_and_grad(
                tfree_tf.info_nce, (encoder, q), (encoder, k), mini_batch_size=8)
            optimizer.apply_gradients(zip(grads, encoder.trainable_variables))
            return loss

        q, k = tf.random.normal((32, 24), seed=1), tf.random.normal((32, 24), seed=2)
        loss = step(q, k)
        ```

    Args:
        loss: A tfree loss (``tfree_tf.info_nce``, ``nt_xent``, ``sup_con``, or a
            ``functools.partial`` with its options), or any function returning a scalar:
            called once as ``loss(*embeddings, **keywords)``.
        *encoded: The positional embeddings, each an ``(encoder, batch)`` pair. A Keras
            model or layer is called as ``encoder(batch, training=True)`` and its
            ``SeedGenerator`` states (``Dropout`` and every Keras 3 random layer) are
            replayed; a plain callable as ``encoder(batch)``, or ``encoder(batch, seed_b)``
            with ``seed=`` (a ``functools.partial`` or bound method of a Keras model is a
            callable whose model's SeedGenerators are replayed too). ``batch``: a tensor or
            a nest (dict, tuple) of tensors, split along dim 0 (a static length under
            tracing, as tfree_tf's losses need: in Keras, ``drop_remainder=True``). The
            encoder returns a tensor whose dim 0 is the rows (``(n, D)``, or ``(n, H, D)``
            for per-row hard negatives).
        mini_batch_size: Rows embedded at a time (positive int). The last mini-batch is
            completed with rows from the start of the batch (embedded, then dropped).
        variables: The variables to differentiate; default: the trainable variables of the
            Keras encoders, in order of appearance.
        seed: A shape ``(2,)`` integer seed for plain callables: argument ``s``'s mini-batch
            ``b`` gets ``stateless_fold_in(stateless_fold_in(seed, s), b)`` in both passes
            (for ``tf.random.stateless_*`` ops).
        **keywords: The loss's keyword arguments: an ``(encoder, batch)`` pair (e.g.
            ``negatives=(encoder, h)``) is embedded as above; anything else (``labels``,
            ``where``, ``group``, options) is passed unchanged.

    Returns:
        ``(loss, grads)``: the loss and one gradient per variable (dense tensors), in the
        order of ``variables``.
    """
    engine.check_loss_function(loss, returns="a function returning a scalar",
                               example="tfree_tf.info_nce")
    size = engine.check_mini_batch_size(mini_batch_size)
    pairs = engine.encoded_pairs("cached_value_and_grad", encoded, keywords, **_WORDS)
    constants = {n: v for n, v in keywords.items() if n not in pairs}
    if seed is not None:
        seed = tf.convert_to_tensor(seed)
        if seed.shape != (2,) or not seed.dtype.is_integer:
            raise ValueError(f"seed must be a shape (2,) integer tensor, got {seed.dtype.name} "
                             f"of shape {tuple(seed.shape)}")
    arguments = [_Argument(name, slot, encoder, batch, size, seed)
                 for slot, (name, (encoder, batch)) in enumerate(pairs.items())]
    first = [a.embed() for a in arguments]  # also builds unbuilt Keras encoders
    variables = _variables(arguments) if variables is None else list(variables)
    embeddings = {a.name: e for a, (e, _) in zip(arguments, first, strict=True)}
    after = [[tf.identity(v.value) for v in a.states()] for a in arguments]
    value, d_embeddings = _loss_and_gradients(loss, len(encoded), constants, embeddings)
    total = [tf.zeros(v.shape, v.dtype) for v in variables]
    for argument, (_, recorded) in zip(arguments, first, strict=True):
        total = argument.pullback(d_embeddings[argument.name], recorded, variables, total)
    for argument, values in zip(arguments, after, strict=True):  # as after the first pass
        for v, x in zip(argument.states(), values, strict=True):
            v.assign(x)
    return value, total


def _variables(arguments: list[_Argument]) -> list[tf.Variable]:
    found: dict[int, tf.Variable] = {}
    for a in arguments:
        if a.layer is None:
            raise TypeError(f"{a.name}: variables= is needed: the encoder "
                            f"{type(a.encoder).__name__} is not a Keras model, so its "
                            f"trainable variables are unknown")
        for v in a.layer.trainable_variables:
            found.setdefault(id(v), v)
    return list(found.values())


def _loss_and_gradients(loss: Callable[..., tf.Tensor], positional: int,
                        constants: Mapping[str, Any], embeddings: dict[str, tf.Tensor]
                        ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The loss on the whole batch and ``∂L/∂E`` per argument (tfree's analytic one)."""
    names = list(embeddings)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([embeddings[n] for n in names])
        args = [embeddings[f"encoded[{i}]"] for i in range(positional)]
        kwargs = {n: e for n, e in embeddings.items() if not n.startswith("encoded[")}
        value = loss(*args, **kwargs, **constants)
    value = tf.convert_to_tensor(value)
    if value.shape.rank != 0:
        raise ValueError(f"loss must return a scalar (reduction 'mean' or 'sum'), got shape "
                         f"{tuple(value.shape)}")
    grads = tape.gradient(value, [embeddings[n] for n in names],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, dict(zip(names, grads, strict=True))
