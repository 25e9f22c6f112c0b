"""Argument checks, run before any computation (shapes and dtypes are static: they cost
nothing at run time and work under tracing). Each failure names the argument, what it
got and what it needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._namespace import Array, Namespace


def _shape(x: Array) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in x.shape)


def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + (
        ",)" if len(shape) == 1 else ")"
    )


def _same(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None)
    return str(name) if name is not None else str(dtype).replace("torch.", "")


def check_required(named: Sequence[tuple[str, Any]]) -> None:
    """The positional arrays of a call are there (``TypeError`` for ``None``)."""
    for name, x in named:
        if x is None:
            raise TypeError(f"{name} is required: an array; got None")


def check_plain_numpy(named: Sequence[tuple[str, Any]]) -> None:
    """NumPy arrays given to any backend are plain NumPy arrays of a numeric dtype:
    ``np.matrix`` (``*`` is a matrix product), masked arrays (their mask would be
    ignored) and object arrays have meanings the loss cannot keep (``TypeError``)."""
    import numpy as np

    for name, x in named:
        if not isinstance(x, np.ndarray):
            continue
        if type(x) is not np.ndarray:
            raise TypeError(
                f"{name} is a {type(x).__module__}.{type(x).__name__}, an ndarray subclass "
                "with semantics of its own; pass a plain array (np.asarray(...)), with "
                "masked rows given as where="
            )
        if x.dtype == object:
            raise TypeError(f"{name} must be an array of numbers; got dtype object")
        if x.dtype.kind == "f" and dtype_name(x.dtype) not in _FLOATS:
            raise TypeError(_cast_down_message(name, x.dtype))  # before a backend casts it


# Floating dtypes the loss computes with (SPEC §2.2): anything else would be cast down.
_FLOATS = ("float16", "bfloat16", "float32", "float64")


def check_floating(name: str, x: Array, xp: Namespace) -> None:
    if xp.isdtype(x.dtype, "complex floating"):
        raise TypeError(
            f"{name} must be a real floating-point array (float16, bfloat16, float32 or "
            f"float64); got complex dtype {dtype_name(x.dtype)}"
        )
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must be a real floating-point array (float16, bfloat16, float32 or "
            f"float64); got dtype {dtype_name(x.dtype)}"
        )
    if dtype_name(x.dtype).rsplit(".", 1)[-1] not in _FLOATS:  # array_api_strict.float32
        raise TypeError(_cast_down_message(name, x.dtype))


def _cast_down_message(name: str, dtype: Any) -> str:
    return (f"{name} must be float16, bfloat16, float32 or float64 (the loss computes in "
            f"float32 or float64 and never casts down); got dtype {dtype_name(dtype)}: "
            "cast it explicitly")


def check_rank(name: str, x: Array, ranks: tuple[int, ...], layout: str) -> None:
    if len(x.shape) not in ranks:
        wanted = " or ".join(layout.split("|"))
        raise ValueError(f"{name} must have shape {wanted}; got shape {_fmt(_shape(x))}")


# The letter of each axis kind in the messages (``(N, V, D)``, ``(M, D)``, ``(N, M)``).
_AXIS_LETTER = {"row": "N", "sample": "N", "anchor": "N", "view": "V", "feature": "D",
                "negative": "M", "candidate": "M", "hard negative": "Hn"}


def check_nonempty(name: str, x: Array, axes: Sequence[int], what: Sequence[str]) -> None:
    shape = _shape(x)
    for axis, label in zip(axes, what, strict=True):
        if shape[axis] == 0:
            raise ValueError(
                f"{name} must have at least one {label} ({_AXIS_LETTER.get(label, '?')} >= 1);"
                f" got shape {_fmt(shape)}"
            )


def check_same_dtype(named: Sequence[tuple[str, Array]]) -> None:
    first_name, first = named[0]
    for name, x in named[1:]:
        if x.dtype != first.dtype:
            raise TypeError(
                f"{name} must have the same dtype as {first_name} "
                f"({dtype_name(first.dtype)}); got {dtype_name(x.dtype)}. "
                "Cast explicitly: the loss never casts its inputs down."
            )


def check_dim(name: str, x: Array, axis: int, expected: int | None, what: str) -> None:
    got = _shape(x)[axis]
    if not _same(got, expected):
        raise ValueError(
            f"{name} has shape {_fmt(_shape(x))}: its axis {axis} must match {what} "
            f"({expected}); got {got}"
        )


def check_labels(name: str, labels: Array, n: int | None, xp: Namespace) -> None:
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(
            f"{name} must be an integer array of class ids; got dtype {dtype_name(labels.dtype)}"
        )
    shape = _shape(labels)
    if len(shape) != 1 or not _same(shape[0], n):
        raise ValueError(f"{name} must have shape (N,) with N = {n}; got shape {_fmt(shape)}")


def check_ids(name: str, ids: Array, shape: tuple[int | None, ...], xp: Namespace) -> None:
    """Integer identities of a given shape (document ids)."""
    if not xp.isdtype(ids.dtype, "integral"):
        raise TypeError(
            f"{name} must be an integer array of identities; got dtype {dtype_name(ids.dtype)}"
        )
    got = _shape(ids)
    if len(got) != len(shape) or not all(_same(a, b) for a, b in zip(got, shape, strict=True)):
        raise ValueError(f"{name} must have shape {_fmt(shape)}; got shape {_fmt(got)}")


def check_mask(name: str, mask: Array, shape: tuple[int | None, ...], xp: Namespace) -> None:
    if not xp.isdtype(mask.dtype, "bool"):
        raise TypeError(f"{name} must be a boolean array; got dtype {dtype_name(mask.dtype)}")
    got = _shape(mask)
    if len(got) != len(shape) or not all(_same(a, b) for a, b in zip(got, shape, strict=True)):
        raise ValueError(f"{name} must have shape {_fmt(shape)}; got shape {_fmt(got)}")


def check_cotangent(
    cotangent: Array, shape: tuple[int | None, ...], reduction: str, xp: Namespace
) -> None:
    if not xp.isdtype(cotangent.dtype, "real floating"):
        raise TypeError(
            "cotangent must be a real floating-point array; "
            f"got dtype {dtype_name(cotangent.dtype)}"
        )
    got = _shape(cotangent)
    if len(got) != len(shape) or not all(_same(a, b) for a, b in zip(got, shape, strict=True)):
        raise ValueError(
            f"cotangent must have the shape of the loss, {_fmt(shape)} for "
            f"reduction={reduction!r}; got shape {_fmt(got)}"
        )


def check_positive_inside_valid(positive: Array, valid: Array, xp: Namespace) -> None:
    """A value check (needs concrete arrays): skipped by backends while tracing."""
    outside = xp.logical_and(positive, xp.logical_not(valid))
    if bool(xp.any(outside)):
        raise ValueError(
            "positive_mask must lie inside valid_mask (SPEC §3): "
            f"{int(xp.sum(xp.astype(outside, xp.int64)))} positive entries are not valid"
        )


def check_same_device(named: Sequence[tuple[str, Array | None]]) -> None:
    """All arrays on one device, where the library can tell (not under ``jax.jit``)."""
    from ._namespace import device_of

    present = [(name, x, device_of(x)) for name, x in named if x is not None]
    # None under jax.jit, "" for a TensorFlow graph tensor placed nowhere yet: unknown
    known = [(name, dev) for name, _, dev in present if dev is not None and dev != ""]
    for name, dev in known[1:]:
        if dev != known[0][1]:
            raise ValueError(mixed_device_message(name, dev, *known[0]))


def mixed_device_message(name: str, device: Any, first_name: str, first_device: Any) -> str:
    """The one message for arrays of one call on different devices."""
    return (
        f"{name} is on device {device} but {first_name} is on device {first_device}; "
        "all arrays of one call must share a device"
    )


def check_negatives_conflicts(negatives: Array | None, labels: Array | None, symmetric: bool):
    """SPEC §3: explicit negatives with labels or with a symmetric loss are undefined.
    Also checks that ``symmetric`` is a bool (every ``info_nce`` runs this first)."""
    check_flag("symmetric", symmetric)
    if negatives is None:
        return
    if labels is not None:
        raise ValueError(
            "negatives cannot be combined with labels (SPEC §3: undefined); got both"
        )
    if symmetric:
        raise ValueError(
            "negatives cannot be combined with symmetric=True (SPEC §3: undefined)"
        )


def check_retrieval_conflicts(given: str, negatives: Array | None,
                              labels: Array | None) -> None:
    """The retrieval layout (``given``: its first keyword present) is neither MoCo's
    ``negatives`` nor ``labels``' positives."""
    if negatives is not None:
        raise ValueError(
            f"negatives (MoCo: each query against its own key and the negatives) and {given} "
            "(in-batch retrieval: every key and hard negative of the batch) are different "
            "layouts; got both"
        )
    if labels is not None:
        raise ValueError(
            f"labels (same-label keys are positives) cannot be combined with {given} "
            "(identities drop duplicates of the one positive); got both"
        )


def check_flag(name: str, value: object) -> None:
    """A switch (``symmetric``, ``check_finite``) must be a real bool: a string such as
    ``"False"`` would otherwise be truthy and silently switch it on."""
    if not isinstance(value, bool) and type(value).__name__ not in ("bool_", "bool"):  # NumPy
        raise TypeError(f"{name} must be a bool (True or False); got {type(value).__name__}")


# --------------------------------------------------------------------------- libraries

# Array libraries whose arrays a backend recognises as foreign (by the top-level module of
# the array's type); anything else is left to the backend's own conversion.
_LIBRARY_ALIASES = {"jaxlib": "jax"}


def library_root(module: str) -> str:
    """The array library of a type defined in ``module``: its top-level package
    (``jaxlib`` counts as ``jax``), e.g. ``"numpy"``, ``"torch"``, ``"tensorflow"``."""
    root = module.split(".", 1)[0]
    return _LIBRARY_ALIASES.get(root, root)


def mixed_library_message(name: str, got: str, accepted: Sequence[str]) -> str:
    """The one message for an array from the wrong library, in the core and every backend
    (``got``: a library from :func:`library_root`, or ``"Python <type>"``)."""
    what = f"a {got}" if got.startswith("Python ") else f"a {got} array"
    return (
        f"{name} is {what}, but this call takes {' or '.join(accepted)} arrays: all "
        "arrays of one call must come from one array library"
    )


def library_error(
    types: Sequence[tuple[str, str, str]],
    accepted: Sequence[str] | None = None,
    also: Sequence[str] = (),
) -> str:
    """The mixed-library message for arrays given as ``(name, type's module, type's name)``
    (absent arrays left out), or ``""`` when they are fine; see :func:`check_one_library`.
    Works on strings only, so that ``torch.compile`` can evaluate it as a constant."""
    if not types:
        return ""
    if accepted is None:
        accepted = (library_root(types[0][1]),)
    for name, module, type_name in types:
        got = library_root(module)
        if got not in accepted and got not in also:
            if got == "builtins":
                got = f"Python {type_name}"
            return mixed_library_message(name, got, accepted)
    return ""


def array_types(named: Sequence[tuple[str, Array | None]]) -> tuple[tuple[str, str, str], ...]:
    """``(name, type's module, type's name)`` of the arrays present, for
    :func:`library_error`."""
    return tuple((name, type(x).__module__, type(x).__name__)
                 for name, x in named if x is not None)


def check_one_library(
    named: Sequence[tuple[str, Array | None]],
    accepted: Sequence[str] | None = None,
    also: Sequence[str] = (),
) -> None:
    """All arrays of one call from one library, before anything reads them (``TypeError``).

    ``accepted``: the libraries a backend takes (``("torch",)``; ``("jax", "numpy")``:
    JAX and TensorFlow convert NumPy arrays themselves); ``None`` (the core): the library of
    the first array. ``also``: further accepted roots not named in the message (Python
    lists and numbers, ``"builtins"``, which JAX and TensorFlow convert).
    """
    message = library_error(array_types(named), accepted, also)
    if message:
        raise TypeError(message)


# --------------------------------------------------------------------------- values


def count_nonfinite(x: Array, xp: Namespace) -> tuple[int, int]:
    """``(NaN count, ±inf count)`` of a floating array; reads its values (eager only)."""
    nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int64)))
    inf = int(xp.sum(xp.astype(xp.isinf(x), xp.int64)))
    return nan, inf


def check_finite(named: Sequence[tuple[str, Array | None]], xp: Namespace) -> None:
    """``check_finite=True``: every floating input free of NaN and ±inf (a value check: the
    arrays must be concrete). Raises ``ValueError`` naming the first offending input and
    how many non-finite values it holds."""
    for name, x in named:
        if x is None or not xp.isdtype(x.dtype, "real floating"):
            continue
        nan, inf = count_nonfinite(x, xp)
        if nan or inf:
            size = 1
            for d in x.shape:
                size *= int(d)
            raise ValueError(
                f"check_finite=True: {name} has {nan + inf} non-finite values ({nan} NaN, "
                f"{inf} ±inf) among its {size} entries; the loss needs finite inputs"
            )


def needs_eager_message(mechanism: str) -> str:
    """The one message for ``check_finite=True`` where the values are not known."""
    return (
        f"check_finite=True reads the input values, which are unknown while {mechanism} "
        "traces the call: call the loss eagerly to check its inputs, or pass "
        f"check_finite=False under {mechanism}"
    )
