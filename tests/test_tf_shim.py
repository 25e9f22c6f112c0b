"""The TF backend's Array API namespace (``tfree_tf._xp``) against NumPy.

Each function runs on random inputs plus edge values (signed zeros, infinities, NaN,
the limits of the dtype), eagerly and, for a representative set, traced and compiled
with ``tf.function(jit_compile=True)``. NumPy 2 follows the standard's promotion rules
for the dtypes both share, so it is the reference; bfloat16 and the cases where the
standard makes this namespace raise are spelt out. The namespace exports only the names
the code uses, and ``test_namespace_exports_exactly_the_used_names`` pins that set;
dtypes it does not export are spelt as ``tf.<dtype>`` here.
"""

from __future__ import annotations

import ast
import importlib
import math
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
xp = importlib.import_module("tfree_tf._xp")
ROOT = Path(__file__).resolve().parents[1]

MODES = ["eager", "xla"]
INF, NAN = math.inf, math.nan


def run(mode: str, fn, *arrays):
    """``fn`` on the arrays as tensors: eagerly, in a graph, or traced and XLA-compiled.

    AutoGraph is off: the shim has no Python control flow on tensors to convert, and
    parsing the tests' lambdas is slow (``test_dynamic_shapes_in_graphs`` keeps it on).
    """
    args = [tf.constant(a) for a in arrays]
    if mode in ("graph", "xla"):
        fn = tf.function(fn, jit_compile=mode == "xla", autograph=False)
    return fn(*args)


def assert_like(got, want, *, rtol: float | None = None, atol: float | None = None) -> None:
    """Same dtype, shape and values (NaN where NumPy has NaN)."""
    want = np.asarray(want)
    assert isinstance(got, tf.Tensor)
    assert np.dtype(got.dtype.as_numpy_dtype) == want.dtype, (got.dtype, want.dtype)
    got = got.numpy()
    assert got.shape == want.shape
    if want.dtype.kind in "fc":
        fi = np.finfo(want.dtype)
        rtol = 8 * float(fi.eps) if rtol is None else rtol
        # TF and XLA flush subnormal results to zero on CPU: allow that much.
        atol = float(fi.smallest_normal) if atol is None else atol
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


def sample(dtype=np.float32, n: int = 32, seed: int = 0) -> np.ndarray:
    """Edge values of ``dtype`` followed by ``n`` random normals (scaled by 3)."""
    fi = np.finfo(dtype)
    edges = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, INF, -INF, NAN]
    edges += [fi.smallest_normal, -fi.smallest_normal, fi.max, fi.min, 1 - fi.eps, -1 + fi.eps]
    rng = np.random.default_rng(seed)
    return np.concatenate([np.array(edges, dtype), (3 * rng.standard_normal(n)).astype(dtype)])


# ---------------------------------------------------------------------------------------
# Namespace surface, isdtype
# ---------------------------------------------------------------------------------------

def used_names() -> set[str]:
    """Every ``xp.NAME`` in the core and in ``tfree_tf`` (the shim itself excluded)."""
    files = sorted((ROOT / "tfree_core").rglob("*.py"))
    files += sorted(p for p in (ROOT / "backends" / "tfree_tf").glob("*.py") if p.name != "_xp.py")
    used = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "xp"
            ):
                used.add(node.attr)
    return used


def test_namespace_exports_exactly_the_used_names():
    # Neither dead functions in the shim nor a name the code uses that the shim lacks.
    used = used_names()
    assert used, "no xp.NAME found: has the layout of tfree_core / tfree_tf changed?"
    assert set(xp.__all__) - {"__array_api_version__"} == used
    assert "__array_api_version__" in xp.__all__
    assert xp.__array_api_version__ == "2023.12"
    assert all(hasattr(xp, name) for name in xp.__all__)
    assert callable(xp.fuses_elementwise)  # outside the standard: read through getattr


@pytest.mark.parametrize(
    ("dtype", "kind", "expected"),
    [
        ("bool", "bool", True),
        ("bool", "numeric", False),
        ("int8", "signed integer", True),
        ("uint8", "signed integer", False),
        ("uint8", "unsigned integer", True),
        ("uint8", "integral", True),
        ("int64", "real floating", False),
        ("float16", "real floating", True),
        ("bfloat16", "real floating", True),
        ("float64", "real floating", True),
        ("complex64", "real floating", False),
        ("complex128", "complex floating", True),
        ("bfloat16", "numeric", True),
        ("int32", "numeric", True),
        ("float32", "float32", True),
        ("float32", "float64", False),
        ("float32", ("integral", "float32"), True),
        ("int16", ("bool", "real floating"), False),
    ],
)
def test_isdtype(dtype, kind, expected):
    def resolve(k):
        return tuple(map(resolve, k)) if isinstance(k, tuple) else getattr(xp, k, k)

    kind = resolve(kind)
    assert xp.isdtype(getattr(tf, dtype), kind) is expected


def test_isdtype_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown dtype kind"):
        xp.isdtype(xp.float32, "floating")


# ---------------------------------------------------------------------------------------
# Type promotion: the standard's table, TypeError across kinds, Python scalars
# ---------------------------------------------------------------------------------------

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "float16", "bfloat16"]
DTYPES += ["float32", "float64", "complex64", "complex128"]
_KIND = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "float", "V": "float"}


def _expected_promotion(a: str, b: str) -> str | None:
    ka = _KIND[np.dtype(getattr(tf, a).as_numpy_dtype).kind]
    kb = _KIND[np.dtype(getattr(tf, b).as_numpy_dtype).kind]
    if ka != kb:
        return None  # bool / integer / floating do not mix: TypeError
    if "bfloat16" in (a, b):
        other = b if a == "bfloat16" else a
        return {
            "bfloat16": "bfloat16",
            "float16": "float32",
            "float32": "float32",
            "float64": "float64",
            "complex64": "complex64",
            "complex128": "complex128",
        }[other]
    return np.result_type(np.dtype(a), np.dtype(b)).name  # NumPy 2 agrees with the table


@pytest.mark.parametrize("a", DTYPES)
@pytest.mark.parametrize("b", DTYPES)
def test_promotion_table(a, b):
    x1, x2 = xp.ones((2, 1), dtype=getattr(tf, a)), xp.zeros((3,), dtype=getattr(tf, b))
    expected = _expected_promotion(a, b)
    if expected is None:
        with pytest.raises(TypeError, match="no type promotion"):
            xp.where(xp.asarray(True), x1, x2)
        return
    out = xp.where(xp.asarray(True), x1, x2)
    assert out.dtype == getattr(tf, expected)
    assert out.shape == (2, 3)
    assert xp.concat([xp.reshape(x1, (-1,)), x2]).dtype == out.dtype
    assert xp.stack([x1[:, 0], x2[:2]]).dtype == out.dtype
    if xp.isdtype(out.dtype, ("integral", "real floating")):
        assert xp.maximum(x1, x2).dtype == out.dtype


def test_promotion_uint64_with_signed_raises():
    big = xp.sum(xp.ones(3, dtype=tf.uint8))  # sum widens uint8 to uint64
    assert big.dtype == tf.uint64
    with pytest.raises(TypeError, match="no type promotion"):
        xp.maximum(big, xp.ones(3, dtype=tf.int8))


@pytest.mark.parametrize(
    ("dtype", "scalar", "expected"),
    [
        ("int8", 3, "int8"),
        ("uint8", 255, "uint8"),
        ("int64", -(2**63), "int64"),
        ("float16", 2, "float16"),
        ("float16", 0.5, "float16"),
        ("bfloat16", 1.5, "bfloat16"),
        ("float32", 3, "float32"),
        ("float64", 0.1, "float64"),
        ("complex64", 1j, "complex64"),
        ("complex128", 2.5, "complex128"),
        ("bool", True, "bool"),
    ],
)
def test_python_scalar_takes_array_dtype(dtype, scalar, expected):
    dt = getattr(tf, dtype)
    x = xp.ones(3, dtype=dt)
    cond = [True, False, True]
    out = xp.where(xp.asarray(cond), x, scalar)
    assert out.dtype == getattr(tf, expected)
    assert xp.where(xp.asarray(cond), scalar, x).dtype == getattr(tf, expected)
    np_dtype = np.dtype(dt.as_numpy_dtype)
    want = np.where(cond, np.ones(3, np_dtype), np.asarray(scalar).astype(np_dtype))
    np.testing.assert_array_equal(out.numpy(), want)
    if xp.isdtype(dt, ("integral", "real floating")):
        assert xp.maximum(x, scalar).dtype == getattr(tf, expected)


@pytest.mark.parametrize(
    ("dtype", "scalar", "error"),
    [
        ("int32", 0.5, TypeError),
        ("int32", 1j, TypeError),
        ("int32", True, TypeError),
        ("bool", 1, TypeError),
        ("float32", 1j, TypeError),
        ("float32", False, TypeError),
        ("int8", 128, OverflowError),
        ("uint8", -1, OverflowError),
    ],
)
def test_python_scalar_outside_the_standard_raises(dtype, scalar, error):
    with pytest.raises(error):
        xp.where(xp.asarray(True), xp.ones(3, dtype=getattr(tf, dtype)), scalar)


def test_two_python_scalars_use_default_dtypes():
    cond = xp.asarray([True, False])
    assert xp.where(cond, 1, 2).dtype == xp.int64
    assert xp.where(cond, 1, 2.5).dtype == xp.float32
    assert xp.where(cond, True, False).dtype == tf.bool
    assert xp.where(cond, 1j, 2).dtype == tf.complex64


def test_numpy_scalars_are_arrays_not_weak_scalars():
    out = xp.maximum(xp.ones(2, dtype=xp.float32), np.float64(2.0))
    assert out.dtype == xp.float64


# ---------------------------------------------------------------------------------------
# Creation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (True, "bool"),
        ([1, 2], "int64"),
        (2**40, "int64"),
        ([1.0, 2], "float32"),
        (1 + 2j, "complex64"),
        (np.arange(3, dtype=np.int16), "int16"),
        (np.ones(2), "float64"),
        (np.float16(1), "float16"),
        (np.ones(2, np.dtype(tf.bfloat16.as_numpy_dtype)), "bfloat16"),
    ],
)
def test_asarray_default_dtypes(obj, expected):
    out = xp.asarray(obj)
    assert out.dtype == getattr(tf, expected)
    np.testing.assert_array_equal(out.numpy(), np.asarray(obj))


def test_asarray_dtype_and_copy():
    exact = xp.asarray([0.1, 1 / 3], dtype=xp.float64)  # not rounded through float32
    np.testing.assert_array_equal(exact.numpy(), [0.1, 1 / 3])
    x = xp.asarray([1.5, 2.5])
    assert xp.asarray(x) is x
    assert xp.asarray(x, dtype=xp.float32, copy=False) is x
    assert xp.asarray(x, dtype=xp.float64).dtype == xp.float64
    assert xp.asarray(np.ones(2), dtype=tf.bfloat16).dtype == tf.bfloat16
    np.testing.assert_array_equal(xp.asarray(x, copy=True).numpy(), x.numpy())
    with pytest.raises(ValueError, match="copy=False"):
        xp.asarray(x, dtype=xp.float64, copy=False)
    v = tf.Variable([1.0, 2.0])
    assert isinstance(xp.asarray(v), tf.Tensor)


def test_device_arguments_take_tensor_device_strings():
    x = xp.asarray([1.0, 2.0])
    device = x.device
    creations = [
        xp.asarray(x, device=device),
        xp.asarray([1, 2], device=device),
        xp.zeros(2, device=device),
        xp.ones((2,), device=device),
        xp.full(2, 1.0, device=device),
        xp.zeros_like(x, device=device),
        xp.arange(3, device=device),
        xp.astype(x, xp.float64, device=device),
    ]
    assert all(t.device == device for t in creations)


@pytest.mark.parametrize("mode", MODES)
def test_zeros_ones_full(mode):
    def fn(x):
        return (
            xp.zeros((2, 3)),
            xp.ones(4, dtype=tf.int8),
            xp.full((2,), 7),
            xp.full((1, 2), 0.5, dtype=xp.float64),
            xp.full(3, True),
            xp.zeros_like(x),
        )

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = run(mode, fn, x)
    want = (
        np.zeros((2, 3), np.float32),
        np.ones(4, np.int8),
        np.full(2, 7, np.int64),
        np.full((1, 2), 0.5),
        np.full(3, True),
        np.zeros_like(x),
    )
    for g, w in zip(got, want, strict=True):
        assert_like(g, w)


@pytest.mark.parametrize(
    ("args", "dtype"),
    [
        ((5,), None),
        ((0,), None),
        ((2, 9, 3), None),
        ((9, 2, -2), None),
        ((5, 1), None),
        ((-3, 3), "int8"),
        ((0, 200, 7), "uint8"),
        ((0.0, 1.0, 0.1), None),
        ((1.0, -1.0, -0.25), "float64"),
        ((3,), "float16"),
        ((0, 5), "bfloat16"),
        ((0.5, 3), None),
    ],
)
def test_arange(args, dtype):
    out = xp.arange(*args, dtype=None if dtype is None else getattr(tf, dtype))
    np_dtype = None if dtype is None else np.dtype(getattr(tf, dtype).as_numpy_dtype)
    want = np.arange(*args, dtype=np_dtype)
    if dtype is None:  # NumPy's defaults are float64 / int64; the standard's here float32
        want = want.astype(np.float32 if want.dtype.kind == "f" else np.int64)
    rtol = 1e-2 if dtype in ("float16", "bfloat16") else 1e-6
    assert_like(out, want, rtol=rtol, atol=1e-7)


def test_astype():
    x = xp.asarray([-1.5, 0.0, 2.7, NAN])
    assert_like(xp.astype(x, tf.bool), np.array([-1.5, 0.0, 2.7, NAN]).astype(bool))
    assert_like(xp.astype(x[:3], xp.int32), np.array([-1, 0, 2], np.int32))
    assert_like(xp.astype(xp.asarray([True, False]), tf.float16), np.array([1, 0], np.float16))
    assert_like(xp.astype(xp.asarray([1 + 2j]), tf.complex128), np.array([1 + 2j]))
    assert xp.astype(x, xp.float32, copy=False) is x
    assert xp.astype(x, xp.float32) is not x
    with pytest.raises(TypeError, match="real part"):
        xp.astype(xp.asarray([1 + 2j]), xp.float32)


# ---------------------------------------------------------------------------------------
# Element-wise functions
# ---------------------------------------------------------------------------------------

UNARY = {
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "log1p": np.log1p,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_float(name, dtype, mode):
    x = sample(dtype)
    with np.errstate(all="ignore"):
        want = UNARY[name](x)
    # XLA's float64 log1p is a few dozen ulp off NumPy's (TF's kernel is not).
    rtol = 1e-13 if mode == "xla" and dtype == np.float64 else None
    assert_like(run(mode, getattr(xp, name), x), want, rtol=rtol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["isnan", "isinf", "isfinite"])
def test_classification(name, mode):
    x = sample(np.float32)
    z = np.empty((x.size, x.size), np.complex64)  # every pairing of NaN / inf / finite parts
    z.real, z.imag = x[:, None], x[None, :]
    i = np.array([0, -5, 127], np.int8)
    fn = getattr(xp, name)
    ref = getattr(np, name)
    assert_like(run(mode, fn, x), ref(x))
    assert_like(run(mode, fn, z), ref(z))
    assert_like(run(mode, fn, i), ref(i))


@pytest.mark.parametrize("mode", MODES)
def test_unary_complex(mode):
    # Moderate magnitudes only: TF's complex log / sqrt form |z|**2 naively, so they
    # overflow or underflow near the dtype's limits (log(1e308 + 0j) is NaN there).
    x = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e-100, 1e100, 3.7, -0.3])
    z = (x[:, None] + 1j * x[None, :]).ravel()
    for name in ("exp", "log", "sqrt"):
        with np.errstate(all="ignore"):
            want = UNARY[name](z)
        ok = np.isfinite(want) & (np.abs(want) < 1e150)  # exp overflows to inf+nanj
        assert_like(run(mode, getattr(xp, name), z[ok]), want[ok], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_unary_half_precision_keeps_dtype(dtype):
    np_dtype = np.dtype(getattr(tf, dtype).as_numpy_dtype)
    x = np.array([0.25, 0.5, 1.0, 2.0, 3.0], np_dtype)
    for name in ("sqrt", "exp", "log", "log1p"):
        out = getattr(xp, name)(x)
        assert out.dtype == getattr(tf, dtype)
        want = UNARY[name](x.astype(np.float32))
        np.testing.assert_allclose(out.numpy().astype(np.float32), want, rtol=1e-2)


@pytest.mark.parametrize(
    ("name", "x"),
    [
        ("sqrt", [1, 2]),
        ("exp", [1]),
        ("log", [True]),
        ("log1p", [3]),
        ("logical_not", [1]),
    ],
)
def test_unary_wrong_kind_raises_type_error(name, x):
    with pytest.raises(TypeError):
        getattr(xp, name)(xp.asarray(x))


BINARY = {
    "maximum": np.maximum,
    "minimum": np.minimum,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_float_grid(name, mode):
    # Every pairing of edge values (and some random ones), through broadcasting.
    x = sample(np.float64, n=8)
    x1, x2 = x[:, None], x[None, :]
    with np.errstate(all="ignore"):
        want = BINARY[name](x1, x2)
    assert_like(run(mode, getattr(xp, name), x1, x2), want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_mixed_dtypes_and_scalars(name, mode):
    a = np.array([[0.5], [-2.0], [3.0]], np.float32)
    b = np.array([1.5, 2.0, -0.25, 4.0], np.float64)
    with np.errstate(all="ignore"):
        want = BINARY[name](a.astype(np.float64), b)
        want_scalar = BINARY[name](a, np.float32(2))
    assert_like(run(mode, getattr(xp, name), a, b), want)
    assert_like(run(mode, lambda t: getattr(xp, name)(t, 2), a), want_scalar)


@pytest.mark.parametrize("mode", MODES)
def test_binary_integers(mode):
    i = np.array([-128, -7, 0, 3, 127], np.int8)
    j = np.array([3, -2, 5, 1, 1], np.int8)
    u = np.array([0, 1, 2, 200, 255], np.uint8)

    def fn(i, j, u):
        outs = []
        for name in sorted(BINARY):
            f = getattr(xp, name)
            outs += [f(i, j), f(i, u), f(u, 3)]  # int8 with uint8 -> int16
        return tuple(outs)

    want = []
    for name in sorted(BINARY):
        ref = BINARY[name]
        want += [ref(i, j), ref(i, u), ref(u, np.uint8(3))]
    for g, w in zip(run(mode, fn, i, j, u), want, strict=True):
        assert_like(g, w)


def test_binary_mixing_int_and_float_arrays_raises():
    for name in BINARY:
        with pytest.raises(TypeError):
            getattr(xp, name)(xp.asarray([1.0]), xp.asarray([1]))


def test_logic_and_kinds():
    p = np.array([True, True, False, False])
    q = np.array([True, False, True, False])
    assert_like(xp.logical_and(p, q), p & q)
    assert_like(xp.logical_and(p, True), p & True)
    assert_like(xp.logical_not(p), ~p)
    with pytest.raises(TypeError):
        xp.logical_and(xp.asarray([1]), xp.asarray([0]))
    with pytest.raises(TypeError):
        xp.maximum(xp.asarray([1j]), xp.asarray([2j]))


@pytest.mark.parametrize("mode", [*MODES, "graph"])
def test_maximum_minimum_propagate_nan(mode):
    # XLA on CPU returns the other operand for max(1, nan); the standard wants NaN.
    a = np.array([NAN, 1.0, NAN, -INF], np.float32)
    b = np.array([1.0, NAN, NAN, NAN], np.float32)
    assert_like(run(mode, xp.maximum, a, b), np.maximum(a, b))
    assert_like(run(mode, xp.minimum, a, b), np.minimum(a, b))


@pytest.mark.parametrize("mode", MODES)
def test_clip(mode):
    x = sample(np.float32)
    lo = np.linspace(-2, 0, x.size).astype(np.float16)  # float16 bound promotes to float32
    m = np.arange(12, dtype=np.float64).reshape(3, 4)
    lo2 = np.array([[1.0], [5.0], [9.0]])  # bounds broadcast against x
    i = np.array([-128, 0, 100, 127], np.int8)

    def fn(x, lo, m, lo2, i):
        return (
            xp.clip(x, -1.5, 2),
            xp.clip(x, min=0),
            xp.clip(x, max=-0.5),
            xp.clip(x),
            xp.clip(x, lo, xp.asarray(1.0)),
            xp.clip(m, lo2, 10),
            xp.clip(i, -5, 50),
        )

    want = (
        np.clip(x, -1.5, 2),
        np.clip(x, 0, None),
        np.clip(x, None, -0.5),
        x,
        np.clip(x, lo.astype(np.float32), 1.0),
        np.clip(m, lo2, 10),
        np.clip(i, -5, 50),
    )
    for g, w in zip(run(mode, fn, x, lo, m, lo2, i), want, strict=True):
        assert_like(g, w)


def test_clip_bounds_must_not_change_dtype():
    with pytest.raises(TypeError, match="clip bound"):
        xp.clip(xp.ones(2, dtype=xp.float32), xp.zeros(2, dtype=xp.float64))
    with pytest.raises(TypeError):
        xp.clip(xp.ones(2, dtype=xp.float32), xp.zeros(2, dtype=xp.int32))
    with pytest.raises(TypeError):
        xp.clip(xp.ones(2, dtype=xp.int32), 0.5)


@pytest.mark.parametrize("mode", MODES)
def test_where(mode):
    cond = np.array([[True], [False]])
    a = np.arange(3, dtype=np.float32)
    b = np.array([[-1.0, -2.0, -3.0]], np.float64)
    assert_like(run(mode, xp.where, cond, a, b), np.where(cond, a.astype(np.float64), b))
    assert_like(run(mode, lambda c, t: xp.where(c, t, 0), cond, a), np.where(cond, a, 0))
    assert_like(run(mode, lambda c, t: xp.where(c, -1, t), cond, a), np.where(cond, -1, a))
    assert_like(
        run(mode, lambda c: xp.where(c, 1.5, 0.0), cond), np.where(cond, 1.5, 0.0).astype("f4")
    )
    with pytest.raises(TypeError):
        xp.where(xp.asarray([1, 0]), a, a)


# ---------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------

REDUCTIONS = {
    "sum": np.sum,
    "max": np.max,
    "min": np.min,
    "any": np.any,
}
AXES = [None, 0, -1, (0, 2), (2, 0, 1), ()]


def _reduction_input() -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x[0, 1, 2] = 0.0
    x[1, :, 0] = 0.0
    x[2, 3, :] = INF
    x[2, 0, 4] = NAN
    return x


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_eager(name, axis, keepdims):
    x = _reduction_input()
    with np.errstate(all="ignore"):
        want = REDUCTIONS[name](x, axis=axis, keepdims=keepdims)
    assert_like(getattr(xp, name)(x, axis=axis, keepdims=keepdims), want, rtol=1e-5)


@pytest.mark.parametrize("mode", ["graph", "xla"])
@pytest.mark.parametrize("axis", [None, 1, (0, 2)])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_traced(name, axis, mode):
    # NaN must survive max / min under XLA too (XLA's reduce-max drops it on CPU).
    x = _reduction_input()
    with np.errstate(all="ignore"):
        want = REDUCTIONS[name](x, axis=axis, keepdims=True)
    got = run(mode, lambda t: getattr(xp, name)(t, axis=axis, keepdims=True), x)
    assert_like(got, want, rtol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "sum_dtype"),
    [
        ("bool", "int64"),
        ("int8", "int64"),
        ("int32", "int64"),
        ("uint8", "uint64"),
        ("int64", "int64"),
        ("float16", "float16"),
        ("bfloat16", "bfloat16"),
        ("float32", "float32"),
        ("complex64", "complex64"),
    ],
)
def test_sum_dtypes(dtype, sum_dtype):
    x = xp.ones((2, 3), dtype=getattr(tf, dtype))
    assert xp.sum(x).dtype == getattr(tf, sum_dtype)
    assert xp.sum(x, axis=0).dtype == getattr(tf, sum_dtype)
    assert xp.sum(x, dtype=xp.float64).dtype == xp.float64


def test_reduction_values_for_integers_and_bools():
    i = np.array([[100, 100, 100], [-128, 127, 1]], np.int8)  # would wrap in int8
    assert_like(xp.sum(i, axis=1), i.sum(axis=1, dtype=np.int64))
    assert_like(xp.sum(np.array([True, True, False])), np.int64(2))
    assert_like(xp.max(i, axis=0), i.max(axis=0))
    assert_like(xp.any(i == 1, axis=1), (i == 1).any(axis=1))
    f = np.array([1.0, 2.0], np.float32)
    assert_like(xp.sum(f, dtype=xp.float64), np.float64(3.0))


def test_empty_reductions():
    e = np.zeros((0, 3), np.float32)
    assert_like(xp.sum(e, axis=0), np.zeros(3, np.float32))
    assert_like(xp.sum(e), np.float32(0))
    assert_like(xp.any(e), np.False_)


# ---------------------------------------------------------------------------------------
# Linear algebra and manipulation
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_manipulation(mode):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    cases = [
        (lambda t: xp.matrix_transpose(t), np.swapaxes(x, -1, -2)),
        (lambda t: xp.permute_dims(t, (2, 0, 1)), np.transpose(x, (2, 0, 1))),
        (lambda t: xp.reshape(t, (4, -1)), x.reshape(4, -1)),
        (
            lambda t: xp.broadcast_to(t[:, :1], (5, 2, 3, 4)),
            np.broadcast_to(x[:, :1], (5, 2, 3, 4)),
        ),
        (lambda t: xp.concat([t, t[:1]]), np.concatenate([x, x[:1]])),
        (lambda t: xp.concat([t, t], axis=-1), np.concatenate([x, x], axis=-1)),
        (lambda t: xp.concat([t, t[0]], axis=None), np.concatenate([x, x[0]], axis=None)),
        (lambda t: xp.stack([t, t + 1]), np.stack([x, x + 1])),
        (lambda t: xp.stack([t, t], axis=-1), np.stack([x, x], axis=-1)),
    ]
    # One traced function for all cases: one XLA compilation instead of one per case.
    got = run(mode, lambda t: tuple(fn(t) for fn, _ in cases), x)
    for g, (_, want) in zip(got, cases, strict=True):
        assert_like(g, want)


def test_concat_and_stack_promote():
    a, b = np.ones(2, np.float16), np.zeros(3, np.float64)
    assert_like(xp.concat([a, b]), np.concatenate([a, b]))
    assert_like(xp.stack([a, b[:2]]), np.stack([a, b[:2]]))
    with pytest.raises(TypeError):
        xp.concat([a, np.zeros(2, np.int32)])


@pytest.mark.parametrize("mode", MODES)
def test_take(mode):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    v = np.arange(5, dtype=np.int8)
    idx = np.array([0, -1, 2, -4, 3], np.int64)
    assert_like(run(mode, lambda t, i: xp.take(t, i, axis=1), x, idx), np.take(x, idx, axis=1))
    assert_like(
        run(mode, lambda t, i: xp.take(t, i, axis=0), x, idx[:3]), np.take(x, idx[:3], axis=0)
    )
    i32 = np.array([-1, 0], np.int32)
    assert_like(run(mode, lambda t, i: xp.take(t, i), v, i32), np.take(v, i32))
    u8 = np.array([4, 1], np.uint8)
    assert_like(run(mode, lambda t, i: xp.take(t, i), v, u8), np.take(v, u8))


def test_take_needs_axis_for_nd_and_integer_indices():
    with pytest.raises(ValueError, match="axis"):
        xp.take(xp.ones((2, 2)), xp.asarray([0]))
    with pytest.raises(TypeError):
        xp.take(xp.ones(3), xp.asarray([0.0]))


def test_dynamic_shapes_in_graphs():
    # Unknown dimensions under tf.function: nothing may depend on a Python-level size.
    spec = tf.TensorSpec([None, None], tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([None], tf.int64)])
    def fn(x, i):
        return (
            xp.take(x, i, axis=1),
            xp.matrix_transpose(x),
            xp.max(x, axis=1, keepdims=True),
            xp.clip(x, 0, 1),
            xp.sum(x, axis=(0, 1)),
        )

    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    i = np.array([-1, 0])
    got = fn(x, i)
    want = (
        np.take(x, i, axis=1),
        x.T,
        np.max(x, axis=1, keepdims=True),
        np.clip(x, 0, 1),
        np.sum(x),
    )
    for g, w in zip(got, want, strict=True):
        assert_like(g, w)
