"""The catalogue of bad inputs: every way a call can be wrong, written once with NumPy
arrays and converted for each backend (``tfree_core`` on NumPy, ``tfree_torch``,
``tfree_jax``, ``tfree_tf``).

Each case names the public function, its arguments, the exception type and the words the
message must contain. The catalogue test (``test_reliability_catalogue.py``) checks that
every backend raises the core's exception type with the core's exact message, before any
computation, eagerly and under tracing; the device cases also run in a subprocess with
several JAX and TensorFlow CPU devices (``python tests/bad_inputs.py devices``).

Markers stand for what cannot be written with NumPy alone:

* :class:`Foreign`: an array from another library than the backend's (mixed frameworks);
* :class:`OtherDevice`: an array on another device than the first argument's;
* :class:`NeedsGrad`: floating labels that require a gradient (torch) — elsewhere just
  floating labels, with the same message;
* :class:`Raw`: an object passed unconverted (``np.matrix``, a masked array, an object or
  ``longdouble`` array) to the backends that take NumPy arrays.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfree_core import _validation as check

BACKENDS = ("core", "torch", "jax", "tf")
FUNCTIONS = ("info_nce", "nt_xent", "sup_con", "loss_from_similarity")

# The libraries each backend takes (the message of a mixed-framework call names them).
ACCEPTED = {
    "core": ("numpy",),
    "torch": ("torch",),
    "jax": ("jax", "numpy"),
    "tf": ("tensorflow", "numpy"),
}
# Under tracing, how each backend names its tracing mechanism in the check_finite error.
TRACED_MECHANISM = {"torch": "torch.compile", "jax": "jax.jit / jax.vmap",
                    "tf": "tf.function"}


@dataclass(frozen=True)
class Foreign:
    """``array`` converted to a library the backend does not take."""

    array: np.ndarray


@dataclass(frozen=True)
class OtherDevice:
    """``array`` placed on a second device (where the backend has one)."""

    array: np.ndarray


@dataclass(frozen=True)
class Raw:
    """``array`` handed over as it is, unconverted (a NumPy subclass or dtype that a
    backend taking NumPy arrays must refuse before converting it)."""

    array: Any


@dataclass(frozen=True)
class NeedsGrad:
    """Floating ``array`` with ``requires_grad=True`` in torch; a plain array elsewhere."""

    array: np.ndarray


@dataclass
class BadInput:
    """One bad call: ``function(*args, **kwargs)`` raises ``error`` whose message contains
    every one of ``words``.

    ``traced``: what happens when the call is traced (``jax.jit``, ``tf.function``,
    ``torch.compile``): ``"same"`` (the same error at trace time), ``"skipped"`` (a value
    check that needs concrete values, skipped as documented), ``"needs_eager"``
    (``check_finite``: a ``ValueError`` saying it needs eager execution).
    """

    id: str
    function: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: type[Exception]
    words: tuple[str, ...]
    traced: str = "same"
    backends: tuple[str, ...] = BACKENDS
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        return self.id


Q = np.arange(12, dtype=np.float64).reshape(4, 3) / 7 - 0.5
K = np.cos(np.arange(12, dtype=np.float64)).reshape(4, 3)
LAB = np.array([0, 1, 0, 1])
NEG = np.sin(np.arange(15, dtype=np.float64)).reshape(5, 3)
HARD = np.sin(np.arange(24, dtype=np.float64) / 3).reshape(4, 2, 3)
S = np.linspace(-0.9, 0.9, 20).reshape(4, 5)
POS = np.eye(4, 5, dtype=bool)


def _with(x: np.ndarray, index: tuple, value: float) -> np.ndarray:
    out = x.copy()
    out[index] = value
    return out


def _cases() -> list[BadInput]:
    c: list[BadInput] = []

    def add(id_: str, function: str, args: tuple, kwargs: dict, error: type[Exception],
            words: tuple[str, ...], **kw: Any) -> None:
        c.append(BadInput(id_, function, args, kwargs, error, words, **kw))

    # wrong rank
    add("rank-query", "info_nce", (Q[0], K), {}, ValueError, ("query", "(N, D)", "(3,)"))
    add("rank-query-3d", "info_nce", (Q[None], K), {}, ValueError, ("query", "(1, 4, 3)"))
    add("rank-z1", "nt_xent", (Q[0], K[0]), {}, ValueError, ("z1", "(N, D)"))
    add("rank-features", "sup_con", (Q[0], LAB), {}, ValueError, ("features", "(N, V, D)"))
    add("rank-features-4d", "sup_con", (Q[:, None, None], LAB), {}, ValueError,
        ("features", "(4, 1, 1, 3)"))
    add("rank-similarity", "loss_from_similarity", (S[0], POS[0]), {}, ValueError,
        ("similarity", "(N, M)"))
    add("rank-negatives", "info_nce", (Q, K), {"negatives": NEG[0]}, ValueError,
        ("negatives", "(M, D)", "(N, M, D)"))
    add("rank-negatives-4d", "info_nce", (Q, K), {"negatives": NEG[None, None]}, ValueError,
        ("negatives", "(1, 1, 5, 3)"))
    # mismatched N or D
    add("n-key", "info_nce", (Q, K[:3]), {}, ValueError, ("key", "N", "3"))
    add("d-key", "info_nce", (Q, K[:, :2]), {}, ValueError, ("key", "D", "2"))
    add("n-z2", "nt_xent", (Q, K[:2]), {}, ValueError, ("z2", "N", "2"))
    add("d-z2", "nt_xent", (Q, K[:, :1]), {}, ValueError, ("z2", "D", "1"))
    add("d-negatives", "info_nce", (Q, K), {"negatives": NEG[:, :2]}, ValueError,
        ("negatives", "D"))
    add("n-negatives-per-row", "info_nce", (Q, K), {"negatives": np.ones((3, 5, 3))},
        ValueError, ("negatives", "N", "3"))
    # empty batch or axis
    add("empty-query", "info_nce", (Q[:0], K[:0]), {}, ValueError,
        ("query", "at least one row", "(0, 3)"))
    add("empty-features-d", "info_nce", (Q[:, :0], K[:, :0]), {}, ValueError,
        ("query", "at least one feature", "D >= 1"))
    add("empty-z1", "nt_xent", (Q[:0], K[:0]), {}, ValueError, ("z1", "at least one row"))
    add("empty-features", "sup_con", (Q[:0], LAB[:0]), {}, ValueError,
        ("features", "at least one sample"))
    add("empty-views", "sup_con", (np.ones((4, 0, 3)), LAB), {}, ValueError,
        ("features", "at least one view", "V >= 1"))
    add("empty-negatives", "info_nce", (Q, K), {"negatives": NEG[:0]}, ValueError,
        ("negatives", "at least one negative", "M >= 1"))
    add("empty-similarity", "loss_from_similarity", (S[:, :0], POS[:, :0]), {}, ValueError,
        ("similarity", "at least one candidate"))
    # non-floating and complex embeddings
    add("int-query", "info_nce", (Q.astype(np.int64), K), {}, TypeError,
        ("query", "floating", "int64"))
    add("bool-z1", "nt_xent", (Q > 0, K), {}, TypeError, ("z1", "floating", "bool"))
    add("int-features", "sup_con", (Q.astype(np.int32), LAB), {}, TypeError,
        ("features", "int32"))
    add("int-negatives", "info_nce", (Q, K), {"negatives": NEG.astype(np.int64)}, TypeError,
        ("negatives", "floating"))
    add("int-similarity", "loss_from_similarity", (S.astype(np.int64), POS), {}, TypeError,
        ("similarity", "floating"))
    add("complex-query", "info_nce", (Q.astype(np.complex128), K.astype(np.complex128)), {},
        TypeError, ("query", "complex", "complex128"))
    add("complex-key", "info_nce", (Q, K.astype(np.complex128)), {}, TypeError,
        ("key", "complex"))
    add("complex-features", "sup_con", (Q.astype(np.complex64), LAB), {}, TypeError,
        ("features", "complex64"))
    add("complex-negatives", "info_nce", (Q, K), {"negatives": NEG.astype(np.complex128)},
        TypeError, ("negatives", "complex"))
    add("complex-similarity", "loss_from_similarity", (S.astype(np.complex128), POS), {},
        TypeError, ("similarity", "complex"))
    # mixed dtypes across inputs
    add("dtype-key", "info_nce", (Q, K.astype(np.float32)), {}, TypeError,
        ("key", "float64", "float32"))
    add("dtype-key-half", "info_nce", (Q.astype(np.float32), K.astype(np.float16)), {},
        TypeError, ("key", "float32", "float16"))
    add("dtype-z2", "nt_xent", (Q.astype(np.float32), K), {}, TypeError, ("z2", "float64"))
    add("dtype-negatives", "info_nce", (Q, K), {"negatives": NEG.astype(np.float32)},
        TypeError, ("negatives", "float32"))
    # labels
    add("labels-float", "info_nce", (Q, K), {"labels": LAB.astype(np.float64)}, TypeError,
        ("labels", "integer", "float64"))
    add("labels-bool", "sup_con", (Q, LAB.astype(bool)), {}, TypeError, ("labels", "bool"))
    add("labels-short", "info_nce", (Q, K), {"labels": LAB[:3]}, ValueError,
        ("labels", "(N,)", "(3,)"))
    add("labels-2d", "sup_con", (Q, LAB[:, None]), {}, ValueError, ("labels", "(4, 1)"))
    add("labels-requires-grad", "sup_con", (Q, NeedsGrad(LAB.astype(np.float32))), {},
        TypeError, ("labels", "integer", "float32"))
    # row mask and similarity masks
    add("where-float", "info_nce", (Q, K), {"where": np.ones(4)}, TypeError,
        ("where", "bool", "float64"))
    add("where-short", "nt_xent", (Q, K), {"where": np.ones(3, bool)}, ValueError,
        ("where", "(4,)", "(3,)"))
    add("mask-int", "loss_from_similarity", (S, POS.astype(np.int64)), {}, TypeError,
        ("positive_mask", "bool"))
    add("mask-shape", "loss_from_similarity", (S, POS[:, :4]), {}, ValueError,
        ("positive_mask", "(4, 5)", "(4, 4)"))
    add("valid-mask-shape", "loss_from_similarity", (S, POS), {"valid_mask": POS[:3]},
        ValueError, ("valid_mask", "(3, 5)"))
    # conflicting arguments
    add("negatives-labels", "info_nce", (Q, K), {"negatives": NEG, "labels": LAB},
        ValueError, ("negatives", "labels"))
    add("negatives-symmetric", "info_nce", (Q, K), {"negatives": NEG, "symmetric": True},
        ValueError, ("negatives", "symmetric"))
    add("symmetric-str", "info_nce", (Q, K), {"symmetric": "False"}, TypeError,
        ("symmetric", "bool", "str"))
    add("check-finite-str", "nt_xent", (Q, K), {"check_finite": "yes"}, TypeError,
        ("check_finite", "bool", "str"))
    # hyper-parameters
    add("eps-zero", "info_nce", (Q, K), {"eps": 0.0}, ValueError, ("eps", "(0, 0.5)"))
    add("eps-half", "nt_xent", (Q, K), {"eps": 0.5}, ValueError, ("eps", "0.5"))
    add("eps-nan", "info_nce", (Q, K), {"eps": float("nan")}, ValueError, ("eps", "nan"))
    add("eps-str", "info_nce", (Q, K), {"eps": "1e-6"}, TypeError, ("eps", "str"))
    add("eps-too-small-float32", "sup_con", (Q.astype(np.float32), LAB), {"eps": 1e-9},
        ValueError, ("eps", "float32", "rounds"))
    add("reduction", "info_nce", (Q, K), {"reduction": "avg"}, ValueError,
        ("reduction", "avg"))
    add("reduction-none-object", "sup_con", (Q, LAB), {"reduction": None}, ValueError,
        ("reduction", "None"))
    add("logit-map", "nt_xent", (Q, K), {"logit_map": "tanh"}, ValueError,
        ("logit_map", "tanh"))
    add("temperature-without-map", "info_nce", (Q, K), {"temperature": 0.1}, ValueError,
        ("temperature", "arctanh"))
    add("temperature-missing", "info_nce", (Q, K), {"logit_map": "temperature"}, ValueError,
        ("temperature", "None"))
    add("temperature-zero", "sup_con", (Q, LAB), {"logit_map": "temperature",
                                                  "temperature": 0.0},
        ValueError, ("temperature", "> 0"))
    add("temperature-negative", "nt_xent", (Q, K), {"logit_map": "temperature",
                                                    "temperature": -0.5},
        ValueError, ("temperature", "-0.5"))
    add("temperature-inf", "info_nce", (Q, K), {"logit_map": "temperature",
                                                "temperature": float("inf")},
        ValueError, ("temperature", "inf"))
    add("temperature-str", "info_nce", (Q, K), {"logit_map": "temperature",
                                                "temperature": "0.1"},
        TypeError, ("temperature", "str"))
    add("chunk-size-zero", "info_nce", (Q, K), {"chunk_size": 0}, ValueError,
        ("chunk_size", "positive", "0"))
    add("chunk-size-negative", "nt_xent", (Q, K), {"chunk_size": -3}, ValueError,
        ("chunk_size", "-3"))
    add("chunk-size-float", "sup_con", (Q, LAB), {"chunk_size": 2.5}, TypeError,
        ("chunk_size", "float"))
    add("chunk-size-bool", "info_nce", (Q, K), {"chunk_size": True}, TypeError,
        ("chunk_size", "bool"))
    add("chunk-size-str", "info_nce", (Q, K), {"chunk_size": "big"}, ValueError,
        ("chunk_size", "'big'"))
    add("chunk-size-similarity", "loss_from_similarity", (S, POS), {"chunk_size": 2},
        ValueError, ("chunk_size", "loss_from_similarity"))
    # the retrieval layout: hard negatives, their mask, identities
    add("rank-hard-negatives", "info_nce", (Q, K), {"hard_negatives": NEG[:4]}, ValueError,
        ("hard_negatives", "(N, Hn, D)", "(4, 3)"))
    add("n-hard-negatives", "info_nce", (Q, K), {"hard_negatives": HARD[:3]}, ValueError,
        ("hard_negatives", "axis 0", "query's N"))
    add("d-hard-negatives", "info_nce", (Q, K), {"hard_negatives": HARD[..., :2]},
        ValueError, ("hard_negatives", "axis 2", "query's D"))
    add("empty-hard-negatives", "info_nce", (Q, K), {"hard_negatives": HARD[:, :0]},
        ValueError, ("hard_negatives", "at least one hard negative", "Hn >= 1"))
    add("int-hard-negatives", "info_nce", (Q, K),
        {"hard_negatives": HARD.astype(np.int64)}, TypeError,
        ("hard_negatives", "floating", "int64"))
    add("shape-hard-negative-mask", "info_nce", (Q, K),
        {"hard_negatives": HARD, "hard_negative_mask": np.ones((4, 3), bool)}, ValueError,
        ("hard_negative_mask", "(4, 2)", "(4, 3)"))
    add("float-hard-negative-mask", "info_nce", (Q, K),
        {"hard_negatives": HARD, "hard_negative_mask": np.ones((4, 2))}, TypeError,
        ("hard_negative_mask", "boolean", "float64"))
    add("hard-negative-mask-alone", "info_nce", (Q, K),
        {"hard_negative_mask": np.ones((4, 2), bool)}, ValueError,
        ("hard_negative_mask", "needs hard_negatives"))
    add("float-key-ids", "info_nce", (Q, K), {"key_ids": np.arange(4.0)}, TypeError,
        ("key_ids", "integer", "float64"))
    add("bool-key-ids", "info_nce", (Q, K), {"key_ids": np.ones(4, bool)}, TypeError,
        ("key_ids", "integer", "bool"))
    add("shape-key-ids", "info_nce", (Q, K), {"key_ids": np.arange(5)}, ValueError,
        ("key_ids", "(4,)", "(5,)"))
    add("hard-negative-ids-alone", "info_nce", (Q, K),
        {"hard_negatives": HARD, "hard_negative_ids": np.zeros((4, 2), np.int64)},
        ValueError, ("hard_negative_ids", "needs key_ids"))
    add("shape-hard-negative-ids", "info_nce", (Q, K),
        {"hard_negatives": HARD, "key_ids": np.arange(4),
         "hard_negative_ids": np.zeros((4, 3), np.int64)}, ValueError,
        ("hard_negative_ids", "(4, 2)", "(4, 3)"))
    add("hard-negatives-and-negatives", "info_nce", (Q, K),
        {"hard_negatives": HARD, "negatives": NEG}, ValueError,
        ("negatives", "hard_negatives", "different layouts"))
    add("hard-negatives-and-labels", "info_nce", (Q, K),
        {"hard_negatives": HARD, "labels": LAB}, ValueError,
        ("labels", "hard_negatives", "cannot be combined"))
    add("key-ids-and-labels", "info_nce", (Q, K), {"key_ids": np.arange(4), "labels": LAB},
        ValueError, ("labels", "key_ids", "cannot be combined"))
    # mixed frameworks and devices
    add("foreign-key", "info_nce", (Q, Foreign(K)), {}, TypeError,
        ("key", "one array library"), tags=("library",))
    add("foreign-labels", "sup_con", (Q, Foreign(LAB)), {}, TypeError,
        ("labels", "one array library"), tags=("library",))
    add("device-key", "info_nce", (Q, OtherDevice(K)), {}, ValueError,
        ("key", "device", "query"), tags=("device",))
    add("device-labels", "sup_con", (Q, OtherDevice(LAB)), {}, ValueError,
        ("labels", "device", "features"), tags=("device",))
    # required arrays, and NumPy objects whose meaning the loss cannot keep
    numpy_backends = ("core", "jax", "tf")  # torch takes torch tensors only
    add("required-query", "info_nce", (None, K), {}, TypeError, ("query", "required", "None"))
    add("required-labels", "sup_con", (Q, None), {}, TypeError, ("labels", "required"))
    add("required-similarity", "loss_from_similarity", (None, POS), {}, TypeError,
        ("similarity", "required"))
    add("matrix-query", "info_nce", (Raw(np.asmatrix(Q)), K), {}, TypeError,
        ("query", "numpy.matrix", "plain array"), backends=numpy_backends, tags=("raw",))
    add("masked-key", "info_nce", (Q, Raw(np.ma.masked_array(K, mask=K > 0.5))), {},
        TypeError, ("key", "MaskedArray", "where="), backends=numpy_backends,
        tags=("raw",))
    add("object-z1", "nt_xent", (Raw(Q.astype(object)), K), {}, TypeError,
        ("z1", "numbers", "object"), backends=numpy_backends, tags=("raw",))
    add("longdouble-features", "sup_con", (Raw(Q.astype(np.longdouble)), LAB), {}, TypeError,
        ("features", "never casts down", np.dtype(np.longdouble).name),
        backends=numpy_backends, tags=("raw",))
    add("xp-str", "info_nce", (Q, K), {"xp": "numpy"}, TypeError, ("xp", "namespace", "str"),
        backends=("core",))
    add("temperature-below-float32", "sup_con", (Q.astype(np.float32), LAB),
        {"logit_map": "temperature", "temperature": 1e-39}, ValueError,
        ("temperature", "float32", "1.175e-38"))
    add("temperature-below-float64", "nt_xent", (Q, K),
        {"logit_map": "temperature", "temperature": 1e-309}, ValueError,
        ("temperature", "float64", "2.225e-308"))
    # value checks (need concrete values)
    add("positive-outside-valid", "loss_from_similarity", (S, ~POS), {"valid_mask": POS},
        ValueError, ("positive_mask", "inside valid_mask", "16"), traced="skipped")
    add("finite-nan-query", "info_nce", (_with(Q, (1, 2), np.nan), K), {"check_finite": True},
        ValueError, ("check_finite", "query", "1 non-finite", "1 NaN"), traced="needs_eager")
    add("finite-inf-key", "info_nce", (Q, _with(_with(K, (0, 0), np.inf), (3, 1), -np.inf)),
        {"check_finite": True}, ValueError, ("key", "2 non-finite", "2 ±inf"),
        traced="needs_eager")
    add("finite-nan-z2", "nt_xent", (Q, _with(K, (2, 2), np.nan)), {"check_finite": True},
        ValueError, ("z2", "1 non-finite"), traced="needs_eager")
    add("finite-features", "sup_con", (_with(Q, (0, 0), np.inf), LAB), {"check_finite": True},
        ValueError, ("features", "1 non-finite"), traced="needs_eager")
    add("finite-negatives", "info_nce", (Q, K),
        {"negatives": _with(NEG, (4, 2), np.nan), "check_finite": True}, ValueError,
        ("negatives", "1 non-finite", "15 entries"), traced="needs_eager")
    add("finite-similarity", "loss_from_similarity", (_with(S, (0, 0), np.nan), POS),
        {"check_finite": True}, ValueError, ("similarity", "1 non-finite"),
        traced="needs_eager")
    return c


CASES = _cases()
BY_ID = {case.id: case for case in CASES}


def expected(case: BadInput, backend: str, converted: dict[str, Any] | None = None) -> str:
    """The exact message ``backend`` must give for ``case``: the core's own message,
    except for the cases whose message names the backend's libraries or devices (those
    are built from the same template)."""
    if "library" in case.tags:
        assert converted is not None
        name = case.words[0]
        library = check.library_root(type(converted[name]).__module__)
        return check.mixed_library_message(name, library, ACCEPTED[backend])
    if "device" in case.tags:
        from tfree_core._namespace import device_of

        assert converted is not None
        name, first = case.words[0], case.words[2]
        return check.mixed_device_message(name, device_of(converted[name]), first,
                                          device_of(converted[first]))
    message = core_message(case)
    assert message is not None, f"{case.id}: the core raised nothing"
    return message


def core_message(case: BadInput) -> str | None:
    """The core's message on NumPy (for library and device cases: of the NumPy version)."""
    import tfree_core

    args, kwargs = _plain(case.args), {k: _plain(v) for k, v in case.kwargs.items()}
    try:
        getattr(tfree_core, case.function)(*args, **kwargs)
    except (TypeError, ValueError) as err:
        return str(err)
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (Foreign, OtherDevice, NeedsGrad, Raw)):
        return value.array
    return value


# --------------------------------------------------------------------------- conversion


def converter(backend: str, devices: bool = False) -> Callable[[Any], Any]:
    """NumPy → the backend's arrays, resolving the markers (``devices``: the core runs on
    ``array_api_strict``, whose arrays have devices)."""
    if backend == "core" and devices:
        import array_api_strict

        def own(a: np.ndarray) -> Any:
            return array_api_strict.asarray(a)

        def foreign(a: np.ndarray) -> Any:  # pragma: no cover - not combined
            raise NotImplementedError

        def other_device(a: np.ndarray) -> Any:
            return array_api_strict.asarray(a, device=array_api_strict.Device("device1"))
    elif backend == "core":
        def own(a: np.ndarray) -> Any:
            return a

        def foreign(a: np.ndarray) -> Any:
            import array_api_strict

            return array_api_strict.asarray(a)

        def other_device(a: np.ndarray) -> Any:  # pragma: no cover - see devices=True
            raise NotImplementedError
    elif backend == "torch":
        import torch

        def own(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a))

        def foreign(a: np.ndarray) -> Any:
            return a  # a NumPy array: tfree_torch takes torch tensors only

        def other_device(a: np.ndarray) -> Any:
            return own(a).to("meta")
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def own(a: np.ndarray) -> Any:
            return jnp.asarray(a)

        def foreign(a: np.ndarray) -> Any:
            try:
                import torch
            except ImportError:  # pragma: no cover - torch is a test dependency here
                import array_api_strict

                return array_api_strict.asarray(a)
            return torch.from_numpy(np.ascontiguousarray(a))

        def other_device(a: np.ndarray) -> Any:
            return jax.device_put(jnp.asarray(a), jax.devices()[-1])
    else:
        import tensorflow as tf

        def own(a: np.ndarray) -> Any:
            return tf.constant(a)

        def foreign(a: np.ndarray) -> Any:
            try:
                import torch
            except ImportError:  # pragma: no cover
                import array_api_strict

                return array_api_strict.asarray(a)
            return torch.from_numpy(np.ascontiguousarray(a))

        def other_device(a: np.ndarray) -> Any:
            devices = tf.config.list_logical_devices("CPU")
            with tf.device(devices[-1].name):
                return tf.identity(tf.constant(a))

    def convert(value: Any) -> Any:
        if isinstance(value, Raw):
            return value.array
        if isinstance(value, Foreign):
            return foreign(value.array)
        if isinstance(value, OtherDevice):
            return other_device(value.array)
        if isinstance(value, NeedsGrad):
            if backend == "torch":
                return own(value.array).requires_grad_(True)
            return own(value.array)
        if isinstance(value, np.ndarray):
            return own(value)
        return value

    return convert


def module(backend: str) -> Any:
    if backend == "core":
        import tfree_core

        return tfree_core
    if backend == "torch":
        import tfree_torch

        return tfree_torch
    if backend == "jax":
        import tfree_jax

        return tfree_jax
    import tfree_tf

    return tfree_tf


def call(case: BadInput, backend: str) -> tuple[dict[str, Any], Callable[[], Any]]:
    """The converted arguments by name, and the eager call."""
    convert = converter(backend, devices="device" in case.tags)
    args = tuple(convert(a) for a in case.args)
    kwargs = {k: convert(v) for k, v in case.kwargs.items()}
    names = _positional_names(case.function)
    named = {**dict(zip(names, args, strict=False)), **kwargs}
    fn = getattr(module(backend), case.function)
    return named, lambda: fn(*args, **kwargs)


def _positional_names(function: str) -> tuple[str, ...]:
    return {"info_nce": ("query", "key"), "nt_xent": ("z1", "z2"),
            "sup_con": ("features", "labels"),
            "loss_from_similarity": ("similarity", "positive_mask")}[function]


def is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


# --------------------------------------------------------------------------- subprocess


def _device_main() -> int:
    """Run the device cases on JAX and TensorFlow with two CPU devices each (they must be
    configured before either library starts, hence a fresh interpreter). Prints JSON:
    ``{backend: {case: [error type, message, expected words present]}}``."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    results: dict[str, dict[str, Any]] = {}
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        backends = ("jax", "tf")
    except ImportError:  # pragma: no cover
        backends = ("jax",)
    for backend in backends:
        results[backend] = {}
        for case in CASES:
            if "device" not in case.tags:
                continue
            named, run = call(case, backend)
            want = expected(case, backend, named)
            try:
                run()
            except Exception as err:  # reported, judged by the parent test
                results[backend][case.id] = [type(err).__name__, str(err), want]
            else:
                results[backend][case.id] = ["no error", "", want]
        if backend == "jax":
            results[backend]["devices"] = [str(d) for d in jax.devices()]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    if sys.argv[1:] == ["devices"]:
        raise SystemExit(_device_main())
    raise SystemExit(f"usage: python {sys.argv[0]} devices")
