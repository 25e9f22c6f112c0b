"""A minimal Python Array API (2023.12) namespace over raw TensorFlow ops.

TensorFlow ships no Array API namespace (array-api-compat does not cover it and
``tf.Tensor`` has no ``__array_namespace__``), so the TF backend hands this module to the
core as ``xp=``. It holds only the names the core uses (``tests/test_tf_shim.py`` derives
that set from the ``xp.NAME`` accesses in ``tfree_core`` and ``tfree_tf`` and pins
``__all__`` to it), each following the standard:

- type promotion between arrays per the standard's table; mixing kinds (bool, integer,
  floating) raises ``TypeError`` and nothing is ever cast down implicitly;
- a Python scalar combined with an array takes the array's dtype when the standard allows
  the pair (``int`` with integer or floating arrays, ``float`` with floating ones,
  ``complex`` with complex ones, ``bool`` with bool ones) and raises ``TypeError`` otherwise;
- ``axis`` as an int, a tuple or ``None``, and ``keepdims``, as the standard says.

Everything is traceable: no Python control flow on tensor values and static shapes
wherever TF knows them, so the same calls run eagerly, under ``tf.function`` and under
``tf.function(jit_compile=True)``.

Default dtypes: ``float32`` (as TF, torch and JAX) and ``int64`` (as NumPy and torch).
Only ``float32``, ``float64``, ``int32`` and ``int64`` are exported as dtype objects, but
arrays of any TF dtype (bool, signed and unsigned integers, float16, bfloat16, complex)
are classified by ``isdtype`` and promoted by the table. ``bfloat16`` is an extension and
counts as "real floating"; ``bfloat16`` with ``float16`` promotes to ``float32``.

Private to ``tfree_tf``: swap it for an upstream namespace if array-api-compat ever
supports TensorFlow.
"""

from __future__ import annotations

import builtins
import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__array_api_version__ = "2023.12"


def fuses_elementwise() -> builtins.bool:
    """Not part of the standard: tells the core (its namespace helpers) whether
    element-wise chains are fused, as in the graphs that ``tfree_tf`` compiles with XLA
    (eager TensorFlow runs one kernel per operation)."""
    return not tf.executing_eagerly()


Array = tf.Tensor
DType = tf.DType
Device = str
Scalar = builtins.bool | int | float | complex
Axis = int | tuple[int, ...] | None

__all__ = [
    "__array_api_version__",
    "any",
    "arange",
    "asarray",
    "astype",
    "broadcast_to",
    "clip",
    "concat",
    "exp",
    "float32",
    "float64",
    "full",
    "int32",
    "int64",
    "isdtype",
    "isfinite",
    "isinf",
    "isnan",
    "log",
    "log1p",
    "logical_and",
    "logical_not",
    "matrix_transpose",
    "max",
    "maximum",
    "min",
    "minimum",
    "ones",
    "permute_dims",
    "reshape",
    "sqrt",
    "stack",
    "sum",
    "take",
    "where",
    "zeros",
    "zeros_like",
]

# ---------------------------------------------------------------------------------------
# Data types: only those the core names are exported; the tables below cover every TF
# dtype an input array may have. Function names shadow builtins (`any`, `max`, `sum`,
# ...) as the standard requires; the code below reaches the builtins through `builtins.`.
# ---------------------------------------------------------------------------------------

int32 = tf.int32
int64 = tf.int64
float32 = tf.float32
float64 = tf.float64

_DEFAULT_FLOAT = tf.float32
_DEFAULT_INT = tf.int64
_DEFAULT_COMPLEX = tf.complex64

# Bit widths of the integer dtypes TF has (wider unsigned ones appear as `sum` results).
_SIGNED = {tf.int8: 8, tf.int16: 16, tf.int32: 32, tf.int64: 64}
_UNSIGNED = {tf.uint8: 8, tf.uint16: 16, tf.uint32: 32, tf.uint64: 64}
_INT_BY_BITS = {8: tf.int8, 16: tf.int16, 32: tf.int32, 64: tf.int64}
# Precision level of the floating dtypes (complex by their component): float16 and
# bfloat16 share level 1 but neither holds the other, so together they give float32.
_REAL = {tf.float16: 1, tf.bfloat16: 1, tf.float32: 2, tf.float64: 3}
_COMPLEX = {tf.complex64: 2, tf.complex128: 3}
_KINDS: dict[str, frozenset[DType]] = {
    "bool": frozenset({tf.bool}),
    "signed integer": frozenset(_SIGNED),
    "unsigned integer": frozenset(_UNSIGNED),
    "integral": frozenset(_SIGNED) | frozenset(_UNSIGNED),
    "real floating": frozenset(_REAL),
    "complex floating": frozenset(_COMPLEX),
    "numeric": frozenset(_SIGNED) | frozenset(_UNSIGNED) | frozenset(_REAL) | frozenset(_COMPLEX),
}
_FLOATING = ("real floating", "complex floating")
_REAL_NUMERIC = ("integral", "real floating")


def _as_dtype(dtype: Any) -> DType:
    return dtype if isinstance(dtype, tf.DType) else tf.as_dtype(dtype)


def isdtype(dtype: DType, kind: DType | str | tuple[DType | str, ...]) -> builtins.bool:
    """Whether ``dtype`` is of ``kind``: a kind name, a dtype, or a tuple of those."""
    dtype = _as_dtype(dtype)
    for k in kind if isinstance(kind, tuple) else (kind,):
        if isinstance(k, str):
            if k not in _KINDS:
                raise ValueError(f"unknown dtype kind {k!r}")
            if dtype in _KINDS[k]:
                return True
        elif dtype == _as_dtype(k):
            return True
    return False


# ---------------------------------------------------------------------------------------
# Type promotion (the standard's table, no value-based casting) and operand conversion.
# ---------------------------------------------------------------------------------------


def _result_type(a: DType, b: DType) -> DType:
    if a == b:
        return a
    if a in _KINDS["integral"] and b in _KINDS["integral"]:
        if (a in _SIGNED) == (b in _SIGNED):
            widths = _SIGNED if a in _SIGNED else _UNSIGNED
            return a if widths[a] >= widths[b] else b
        s, u = (a, b) if a in _SIGNED else (b, a)
        # A signed type holds the unsigned one only if it is wider; uint64 has no partner.
        bits = _SIGNED[s] if _SIGNED[s] > _UNSIGNED[u] else 2 * _UNSIGNED[u]
        if bits <= 64:
            return _INT_BY_BITS[bits]
    elif a in _KINDS["numeric"] and b in _KINDS["numeric"]:
        levels = {**_REAL, **_COMPLEX}
        if a in levels and b in levels:
            level = builtins.max(levels[a], levels[b], 2)  # float16 with bfloat16 -> level 2
            if a in _COMPLEX or b in _COMPLEX:
                return {2: tf.complex64, 3: tf.complex128}[level]
            return {2: tf.float32, 3: tf.float64}[level]
    raise TypeError(
        f"no type promotion between {a.name} and {b.name} in the array API standard; "
        "cast one of them explicitly with astype"
    )


def _is_scalar(v: Any) -> builtins.bool:
    # NumPy scalars count as 0-D arrays with their own dtype (NumPy's NEP 50 does too).
    return isinstance(v, (builtins.bool, int, float, complex)) and not isinstance(v, np.generic)


def _scalar(v: Scalar, dtype: DType) -> Array:
    """A Python scalar as a tensor of the array's dtype, where the standard allows it."""
    if isinstance(v, builtins.bool):
        ok = dtype == tf.bool
    elif isinstance(v, int):
        ok = isdtype(dtype, "numeric")
        if isdtype(dtype, "integral"):
            info = np.iinfo(dtype.as_numpy_dtype)
            if not int(info.min) <= v <= int(info.max):
                # tf.constant would wrap around silently (300 -> 44 for int8).
                raise OverflowError(f"Python int {v} is out of bounds for {dtype.name}")
    elif isinstance(v, float):
        ok = isdtype(dtype, _FLOATING)
    else:
        ok = isdtype(dtype, "complex floating")
    if not ok:
        raise TypeError(f"Python {type(v).__name__} cannot combine with a {dtype.name} array")
    return tf.constant(v, dtype=dtype)


def _default_dtype(scalars: Sequence[Scalar]) -> DType:
    if builtins.any(isinstance(v, complex) for v in scalars):
        return _DEFAULT_COMPLEX
    if builtins.any(isinstance(v, float) for v in scalars):
        return _DEFAULT_FLOAT
    if builtins.all(isinstance(v, builtins.bool) for v in scalars):
        return tf.bool
    return _DEFAULT_INT


def _tensor(x: Any, kind: str | tuple[str, ...] | None = None, name: str = "") -> Array:
    """``x`` as a tensor, checking its dtype kind (TF's own errors differ by mode)."""
    t = x if isinstance(x, tf.Tensor) else asarray(x)
    if kind is not None and not isdtype(t.dtype, kind):
        raise TypeError(f"{name} does not accept {t.dtype.name} arrays (needs {kind})")
    return t


def _promote(*args: Any, kind: str | tuple[str, ...] | None = None, name: str = "") -> list[Array]:
    """Tensors of the common dtype of the array arguments; scalars take that dtype."""
    tensors = [None if _is_scalar(a) else _tensor(a) for a in args]
    dtype = None
    for t in tensors:
        if t is not None:
            # TF interns dtypes: `is` skips the slow DType.__eq__ in the common case.
            dtype = t.dtype if dtype is None or t.dtype is dtype else _result_type(dtype, t.dtype)
    if dtype is None:
        dtype = _default_dtype(args)
    if kind is not None and not isdtype(dtype, kind):
        raise TypeError(f"{name} does not accept {dtype.name} arrays (needs {kind})")
    return [
        _scalar(a, dtype) if t is None else (t if t.dtype is dtype else tf.cast(t, dtype))
        for a, t in zip(args, tensors, strict=True)
    ]


def _on(device: Device | None) -> contextlib.AbstractContextManager[Any]:
    # Symbolic tensors report device "" under tf.function: treat it as "no preference".
    return tf.device(device) if device else contextlib.nullcontext()


def _axes(axis: Axis) -> list[int] | None:
    if axis is None:
        return None
    if isinstance(axis, (int, np.integer)):
        return [int(axis)]
    return [int(a) for a in axis]


def _in_graph() -> builtins.bool:
    return not tf.executing_eagerly()


def _nan_where(mask: Array, result: Array) -> Array:
    # TF's own min/max kernels propagate NaN, but XLA (CPU at least) may return the other
    # operand: max(1, nan) = 1 and reduce_max([nan, 1]) = 1 under jit_compile. The standard
    # wants NaN, so graphs, which XLA may compile, put it back (fused, cheap under XLA).
    return tf.where(mask, tf.constant(math.nan, result.dtype), result)


# ---------------------------------------------------------------------------------------
# Creation. `device` is None or a string as in `tensor.device`.
# ---------------------------------------------------------------------------------------


def asarray(
    obj: Any,
    /,
    *,
    dtype: DType | None = None,
    device: Device | None = None,
    copy: builtins.bool | None = None,
) -> Array:
    """Tensor from a tensor, variable, NumPy array, Python scalar or nested sequence.

    Without ``dtype``: tensors and NumPy arrays keep theirs; Python data gets the default
    dtypes (bool, int64, float32, complex64), as the standard asks.
    """
    dtype = None if dtype is None else _as_dtype(dtype)
    with _on(device):
        if tf.is_tensor(obj):
            t = tf.convert_to_tensor(obj)  # reads a tf.Variable; a tensor is returned as is
        elif isinstance(obj, (np.ndarray, np.generic)):
            # NumPy data keeps its dtype; with `dtype`, NumPy casts (bfloat16 included).
            t = tf.convert_to_tensor(obj if dtype is None else obj.astype(dtype.as_numpy_dtype))
        elif dtype is not None:
            t = tf.convert_to_tensor(obj, dtype=dtype)  # rounds Python floats only once
        else:
            t = tf.convert_to_tensor(obj)
            # TF infers int32 and complex128 from Python data; the defaults here differ.
            if t.dtype == tf.int32:
                t = tf.cast(t, _DEFAULT_INT)
            elif t.dtype == tf.complex128:
                t = tf.cast(t, _DEFAULT_COMPLEX)
        if dtype is not None and t.dtype != dtype:
            if copy is False:
                raise ValueError("asarray(copy=False) cannot change the dtype")
            return astype(t, dtype)
        if device or (copy and t is obj):
            t = tf.identity(t)  # places the tensor on `device` / returns a new tensor
        return t


def zeros(
    shape: int | Sequence[int], *, dtype: DType | None = None, device: Device | None = None
) -> Array:
    with _on(device):
        return tf.zeros(shape, dtype=_DEFAULT_FLOAT if dtype is None else _as_dtype(dtype))


def ones(
    shape: int | Sequence[int], *, dtype: DType | None = None, device: Device | None = None
) -> Array:
    with _on(device):
        return tf.ones(shape, dtype=_DEFAULT_FLOAT if dtype is None else _as_dtype(dtype))


def full(
    shape: int | Sequence[int],
    fill_value: Scalar,
    *,
    dtype: DType | None = None,
    device: Device | None = None,
) -> Array:
    with _on(device):
        value = asarray(fill_value, dtype=dtype)
        return tf.fill([shape] if isinstance(shape, int) else list(shape), value)


def zeros_like(x: Array, /, *, dtype: DType | None = None, device: Device | None = None) -> Array:
    with _on(device):
        return tf.zeros_like(x, dtype=None if dtype is None else _as_dtype(dtype))


def arange(
    start: int | float,
    /,
    stop: int | float | None = None,
    step: int | float = 1,
    *,
    dtype: DType | None = None,
    device: Device | None = None,
) -> Array:
    """``start + i * step`` for ``i < ceil((stop - start) / step)``; empty if that is <= 0.

    Computed in int64 or float64 and cast once: tf.range rejects empty ranges
    (start > stop) and has no kernel for small integer types.
    """
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        floaty = builtins.any(isinstance(v, float) for v in (start, stop, step))
        dtype = _DEFAULT_FLOAT if floaty else _DEFAULT_INT
    dtype = _as_dtype(dtype)
    if builtins.all(isinstance(v, int) for v in (start, stop, step)):
        n = -((start - stop) // step)  # exact ceil for Python ints of any size
    else:
        n = math.ceil((stop - start) / step)
    n = builtins.max(n, 0)
    with _on(device):
        work = tf.int64 if isdtype(dtype, "integral") else tf.float64
        i = tf.range(n, dtype=work)
        return tf.cast(i * tf.constant(step, work) + tf.constant(start, work), dtype)


def astype(
    x: Array, dtype: DType, /, *, copy: builtins.bool = True, device: Device | None = None
) -> Array:
    """Explicit cast. Complex to real raises, as the standard says (tf.cast would drop the
    imaginary part with only a log warning)."""
    x = _tensor(x)
    dtype = _as_dtype(dtype)
    if isdtype(x.dtype, "complex floating") and not isdtype(dtype, ("complex floating", "bool")):
        raise TypeError(f"cannot cast {x.dtype.name} to {dtype.name}; take the real part")
    with _on(device):
        if x.dtype != dtype:
            return tf.cast(x, dtype)
        return tf.identity(x) if copy or device else x


# ---------------------------------------------------------------------------------------
# Element-wise functions. Unary: the kind the standard names for each, TypeError otherwise.
# ---------------------------------------------------------------------------------------


def sqrt(x: Array, /) -> Array:
    return tf.sqrt(_tensor(x, _FLOATING, "sqrt"))


def exp(x: Array, /) -> Array:
    return tf.exp(_tensor(x, _FLOATING, "exp"))


def log(x: Array, /) -> Array:
    return tf.math.log(_tensor(x, _FLOATING, "log"))


def log1p(x: Array, /) -> Array:
    return tf.math.log1p(_tensor(x, _FLOATING, "log1p"))


def isnan(x: Array, /) -> Array:
    x = _tensor(x, "numeric", "isnan")
    if isdtype(x.dtype, "complex floating"):
        return tf.math.is_nan(tf.math.real(x)) | tf.math.is_nan(tf.math.imag(x))
    if isdtype(x.dtype, "real floating"):
        return tf.math.is_nan(x)
    return tf.zeros_like(x, dtype=tf.bool)  # TF has no integer kernel


def isinf(x: Array, /) -> Array:
    x = _tensor(x, "numeric", "isinf")
    if isdtype(x.dtype, "complex floating"):
        return tf.math.is_inf(tf.math.real(x)) | tf.math.is_inf(tf.math.imag(x))
    if isdtype(x.dtype, "real floating"):
        return tf.math.is_inf(x)
    return tf.zeros_like(x, dtype=tf.bool)


def isfinite(x: Array, /) -> Array:
    x = _tensor(x, "numeric", "isfinite")
    if isdtype(x.dtype, "complex floating"):
        return tf.math.is_finite(tf.math.real(x)) & tf.math.is_finite(tf.math.imag(x))
    if isdtype(x.dtype, "real floating"):
        return tf.math.is_finite(x)
    return tf.ones_like(x, dtype=tf.bool)


def logical_not(x: Array, /) -> Array:
    return tf.logical_not(_tensor(x, "bool", "logical_not"))


# Binary: promotion per the standard, broadcasting by TF (same rules as the standard).


def maximum(x1: Array | Scalar, x2: Array | Scalar, /) -> Array:
    a, b = _promote(x1, x2, kind=_REAL_NUMERIC, name="maximum")
    out = tf.maximum(a, b)
    if _in_graph() and isdtype(out.dtype, "real floating"):
        out = _nan_where(tf.math.is_nan(a) | tf.math.is_nan(b), out)
    return out


def minimum(x1: Array | Scalar, x2: Array | Scalar, /) -> Array:
    a, b = _promote(x1, x2, kind=_REAL_NUMERIC, name="minimum")
    out = tf.minimum(a, b)
    if _in_graph() and isdtype(out.dtype, "real floating"):
        out = _nan_where(tf.math.is_nan(a) | tf.math.is_nan(b), out)
    return out


def clip(
    x: Array, /, min: Array | Scalar | None = None, max: Array | Scalar | None = None
) -> Array:
    """``x`` clamped to ``[min, max]``, in ``x``'s dtype; NaN in ``x`` stays NaN.

    Array bounds must promote to ``x``'s dtype (a float64 bound does not downcast and
    does not upcast a float32 ``x``: TypeError)."""
    x = _tensor(x, _REAL_NUMERIC, "clip")
    out = x
    for bound, op in ((min, tf.maximum), (max, tf.minimum)):
        if bound is None:
            continue
        b = _scalar(bound, x.dtype) if _is_scalar(bound) else _tensor(bound)
        if _result_type(x.dtype, b.dtype) != x.dtype:
            raise TypeError(f"clip bound of dtype {b.dtype.name} would change {x.dtype.name}")
        out = op(out, tf.cast(b, x.dtype))  # `out` first: XLA then keeps its NaN too
    if out is not x and _in_graph() and isdtype(x.dtype, "real floating"):
        out = tf.where(tf.math.is_nan(x), x, out)
    return out


def logical_and(x1: Array | Scalar, x2: Array | Scalar, /) -> Array:
    return tf.logical_and(*_promote(x1, x2, kind="bool", name="logical_and"))


def where(condition: Array, x1: Array | Scalar, x2: Array | Scalar, /) -> Array:
    """Elements of ``x1`` where ``condition`` holds, else of ``x2``; all three broadcast."""
    condition = _tensor(condition, "bool", "where (condition)")
    return tf.where(condition, *_promote(x1, x2))


# ---------------------------------------------------------------------------------------
# Reductions: `axis` int, tuple or None (all axes); `axis=()` reduces nothing.
# ---------------------------------------------------------------------------------------


def _sum_dtype(dtype: DType) -> DType:
    # The standard: integer sums widen to the default integer (uint64 for
    # unsigned ones); bool counts in the default integer, as NumPy does.
    if dtype == tf.bool or dtype in _SIGNED:
        return _DEFAULT_INT
    if dtype in _UNSIGNED:
        return tf.uint64
    return dtype


def sum(
    x: Array,
    /,
    *,
    axis: Axis = None,
    dtype: DType | None = None,
    keepdims: builtins.bool = False,
) -> Array:
    x = _tensor(x, ("numeric", "bool"), "sum")
    x = tf.cast(x, _sum_dtype(x.dtype) if dtype is None else _as_dtype(dtype))
    return tf.reduce_sum(x, axis=_axes(axis), keepdims=keepdims)


def max(x: Array, /, *, axis: Axis = None, keepdims: builtins.bool = False) -> Array:
    x = _tensor(x, _REAL_NUMERIC, "max")
    out = tf.reduce_max(x, axis=_axes(axis), keepdims=keepdims)
    if _in_graph() and isdtype(x.dtype, "real floating"):
        out = _nan_where(tf.reduce_any(tf.math.is_nan(x), _axes(axis), keepdims), out)
    return out


def min(x: Array, /, *, axis: Axis = None, keepdims: builtins.bool = False) -> Array:
    x = _tensor(x, _REAL_NUMERIC, "min")
    out = tf.reduce_min(x, axis=_axes(axis), keepdims=keepdims)
    if _in_graph() and isdtype(x.dtype, "real floating"):
        out = _nan_where(tf.reduce_any(tf.math.is_nan(x), _axes(axis), keepdims), out)
    return out


def _truth(x: Array) -> Array:
    # Non-bool arrays count as `x != 0` (NaN is true), as the standard says.
    return x if x.dtype == tf.bool else tf.not_equal(x, tf.zeros([], x.dtype))


def any(x: Array, /, *, axis: Axis = None, keepdims: builtins.bool = False) -> Array:
    return tf.reduce_any(_truth(_tensor(x)), axis=_axes(axis), keepdims=keepdims)


# ---------------------------------------------------------------------------------------
# Linear algebra and manipulation.
# ---------------------------------------------------------------------------------------


def matrix_transpose(x: Array, /) -> Array:
    return tf.linalg.matrix_transpose(_tensor(x))  # swaps the last two axes, no conjugate


def permute_dims(x: Array, /, axes: tuple[int, ...]) -> Array:
    return tf.transpose(_tensor(x), perm=list(axes))


def reshape(x: Array, /, shape: tuple[int, ...], *, copy: builtins.bool | None = None) -> Array:
    # TF tensors are immutable, so copy / no copy cannot be told apart: `copy` is ignored.
    return tf.reshape(_tensor(x), shape)


def concat(arrays: Sequence[Array], /, *, axis: int | None = 0) -> Array:
    tensors = _promote(*arrays)
    if axis is None:
        return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
    return tf.concat(tensors, axis=axis)


def stack(arrays: Sequence[Array], /, *, axis: int = 0) -> Array:
    return tf.stack(_promote(*arrays), axis=axis)


def broadcast_to(x: Array, /, shape: tuple[int, ...]) -> Array:
    return tf.broadcast_to(_tensor(x), shape)


def take(x: Array, indices: Array, /, *, axis: int | None = None) -> Array:
    """Elements of ``x`` at integer ``indices`` (1-D) along ``axis``; negative ones count
    from the end (tf.gather rejects them). ``axis`` may be omitted for 1-D ``x`` only."""
    x = _tensor(x)
    i = _tensor(indices, "integral", "take (indices)")
    if axis is None:
        if x.shape.rank != 1:
            raise ValueError("take needs `axis` for arrays that are not 1-D")
        axis = 0
    if i.dtype not in (tf.int32, tf.int64):
        i = tf.cast(i, tf.int64)
    if isdtype(i.dtype, "signed integer"):
        n = x.shape[axis]
        n = tf.shape(x, out_type=i.dtype)[axis] if n is None else tf.constant(n, i.dtype)
        i = tf.where(i < 0, i + n, i)
    return tf.gather(x, i, axis=axis)


# AutoGraph (on by default in tf.function) would otherwise convert every function above on
# the first trace: seconds of work, for code without tensor-dependent control flow.
for _name in __all__:
    if not isinstance(globals()[_name], (tf.DType, str)):
        globals()[_name] = tf.autograph.experimental.do_not_convert(globals()[_name])
del _name
