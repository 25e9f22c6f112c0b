"""The TF backend's Array API namespace (``tfree_tf._xp``) against NumPy.

Each function runs on random inputs plus edge values (signed zeros, infinities, NaN,
the limits of the dtype), eagerly and, for a representative set, traced and compiled
with ``tf.function(jit_compile=True)``. NumPy 2 follows the standard's promotion rules
for the dtypes both share, so it is the reference; bfloat16 and the cases where the
standard makes this namespace raise are spelt out.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
xp = importlib.import_module("tfree_tf._xp")

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
# Namespace surface, dtypes, isdtype, finfo / iinfo
# ---------------------------------------------------------------------------------------

EXPOSED = {
    "__array_api_version__",
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "isdtype",
    "finfo",
    "iinfo",
    "asarray",
    "zeros",
    "ones",
    "zeros_like",
    "ones_like",
    "full",
    "full_like",
    "arange",
    "eye",
    "astype",
    "abs",
    "sqrt",
    "square",
    "exp",
    "expm1",
    "log",
    "log1p",
    "atanh",
    "sign",
    "negative",
    "add",
    "subtract",
    "multiply",
    "divide",
    "pow",
    "maximum",
    "minimum",
    "clip",
    "equal",
    "not_equal",
    "less",
    "less_equal",
    "greater",
    "greater_equal",
    "logical_and",
    "logical_or",
    "logical_not",
    "isfinite",
    "isnan",
    "isinf",
    "where",
    "sum",
    "max",
    "min",
    "mean",
    "prod",
    "any",
    "all",
    "matmul",
    "matrix_transpose",
    "permute_dims",
    "reshape",
    "concat",
    "stack",
    "expand_dims",
    "squeeze",
    "broadcast_to",
    "take",
    "tile",
    "repeat",
    "flip",
    "argmax",
}


def test_namespace_exposes_exactly_the_listed_names():
    assert set(xp.__all__) == EXPOSED
    assert xp.__array_api_version__ == "2023.12"
    assert all(hasattr(xp, name) for name in EXPOSED)


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
    assert xp.isdtype(getattr(xp, dtype), kind) is expected


def test_isdtype_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown dtype kind"):
        xp.isdtype(xp.float32, "floating")


@pytest.mark.parametrize("name", ["float16", "float32", "float64", "complex64", "complex128"])
def test_finfo_matches_numpy(name):
    fi, ref = xp.finfo(getattr(xp, name)), np.finfo(np.dtype(name))
    assert (fi.bits, fi.eps, fi.max, fi.min) == (ref.bits, ref.eps, ref.max, ref.min)
    assert fi.tiny == fi.smallest_normal == ref.smallest_normal
    assert np.dtype(fi.dtype.as_numpy_dtype) == ref.dtype
    assert xp.finfo(xp.zeros(2, dtype=getattr(xp, name))) == fi  # arrays are accepted too


def test_finfo_bfloat16():
    fi = xp.finfo(xp.bfloat16)
    assert (fi.bits, fi.eps, fi.tiny, fi.dtype) == (16, 2.0**-7, 2.0**-126, xp.bfloat16)
    assert fi.max == -fi.min == (2 - 2.0**-7) * 2.0**127


@pytest.mark.parametrize("name", ["int8", "int16", "int32", "int64", "uint8"])
def test_iinfo_matches_numpy(name):
    ii, ref = xp.iinfo(getattr(xp, name)), np.iinfo(name)
    assert (ii.bits, ii.min, ii.max) == (ref.bits, ref.min, ref.max)
    assert ii.dtype == getattr(xp, name)


def test_info_rejects_wrong_kind():
    with pytest.raises(TypeError):
        xp.finfo(xp.int32)
    with pytest.raises(TypeError):
        xp.iinfo(xp.float32)


# ---------------------------------------------------------------------------------------
# Type promotion: the standard's table, TypeError across kinds, Python scalars
# ---------------------------------------------------------------------------------------

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "float16", "bfloat16"]
DTYPES += ["float32", "float64", "complex64", "complex128"]
_KIND = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "float", "V": "float"}


def _expected_promotion(a: str, b: str) -> str | None:
    ka = _KIND[np.dtype(getattr(xp, a).as_numpy_dtype).kind]
    kb = _KIND[np.dtype(getattr(xp, b).as_numpy_dtype).kind]
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
    x1, x2 = xp.ones((2, 1), dtype=getattr(xp, a)), xp.zeros((3,), dtype=getattr(xp, b))
    expected = _expected_promotion(a, b)
    if expected is None:
        with pytest.raises(TypeError, match="no type promotion"):
            xp.where(xp.asarray(True), x1, x2)
        return
    out = xp.where(xp.asarray(True), x1, x2)
    assert out.dtype == getattr(tf, expected)
    assert out.shape == (2, 3)
    if a != "bool" and b != "bool":
        assert xp.add(x1, x2).dtype == out.dtype
        assert xp.equal(x1, x2).dtype == xp.bool
        assert xp.concat([xp.reshape(x1, (-1,)), x2]).dtype == out.dtype


def test_promotion_uint64_with_signed_raises():
    big = xp.sum(xp.ones(3, dtype=xp.uint8))  # sum widens uint8 to uint64
    assert big.dtype == tf.uint64
    with pytest.raises(TypeError, match="no type promotion"):
        xp.add(big, xp.ones(3, dtype=xp.int8))


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
    dt = getattr(xp, dtype)
    x = xp.ones(3, dtype=dt)
    assert xp.where(xp.asarray([True, False, True]), x, scalar).dtype == getattr(xp, expected)
    assert xp.equal(scalar, x).dtype == xp.bool
    if dtype != "bool":
        out = xp.multiply(x, scalar)
        assert out.dtype == getattr(xp, expected)
        np_dtype = np.dtype(dt.as_numpy_dtype)
        want = np.ones(3, np_dtype) * np.asarray(scalar).astype(np_dtype)
        np.testing.assert_array_equal(out.numpy(), want)


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
        xp.where(xp.asarray(True), xp.ones(3, dtype=getattr(xp, dtype)), scalar)


def test_two_python_scalars_use_default_dtypes():
    cond = xp.asarray([True, False])
    assert xp.where(cond, 1, 2).dtype == xp.int64
    assert xp.where(cond, 1, 2.5).dtype == xp.float32
    assert xp.where(cond, True, False).dtype == xp.bool
    assert xp.where(cond, 1j, 2).dtype == xp.complex64


def test_numpy_scalars_are_arrays_not_weak_scalars():
    out = xp.multiply(xp.ones(2, dtype=xp.float32), np.float64(2.0))
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
        (np.ones(2, np.dtype(xp.bfloat16.as_numpy_dtype)), "bfloat16"),
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
    assert xp.asarray(np.ones(2), dtype=xp.bfloat16).dtype == xp.bfloat16
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
        xp.ones_like(x, device=device),
        xp.full_like(x, 3, device=device),
        xp.arange(3, device=device),
        xp.eye(2, device=device),
        xp.astype(x, xp.float64, device=device),
    ]
    assert all(t.device == device for t in creations)


@pytest.mark.parametrize("mode", MODES)
def test_zeros_ones_full(mode):
    def fn(x):
        return (
            xp.zeros((2, 3)),
            xp.ones(4, dtype=xp.int8),
            xp.full((2,), 7),
            xp.full((1, 2), 0.5, dtype=xp.float64),
            xp.full(3, True),
            xp.zeros_like(x),
            xp.ones_like(x, dtype=xp.int64),
            xp.full_like(x, 2),
            xp.full_like(x, 2.5, dtype=xp.float64),
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
        np.ones_like(x, np.int64),
        np.full_like(x, 2),
        np.full_like(x, 2.5, np.float64),
    )
    for g, w in zip(got, want, strict=True):
        assert_like(g, w)


def test_full_like_keeps_dynamic_shapes_in_graphs():
    fn = tf.function(
        lambda x: xp.full_like(x, 1), input_signature=[tf.TensorSpec([None, 3], tf.float32)]
    )
    assert_like(fn(tf.zeros((5, 3))), np.ones((5, 3), np.float32))


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
    out = xp.arange(*args, dtype=None if dtype is None else getattr(xp, dtype))
    np_dtype = None if dtype is None else np.dtype(getattr(xp, dtype).as_numpy_dtype)
    want = np.arange(*args, dtype=np_dtype)
    if dtype is None:  # NumPy's defaults are float64 / int64; the standard's here float32
        want = want.astype(np.float32 if want.dtype.kind == "f" else np.int64)
    rtol = 1e-2 if dtype in ("float16", "bfloat16") else 1e-6
    assert_like(out, want, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("k", [-3, -1, 0, 1, 2, 5])
@pytest.mark.parametrize("cols", [None, 2, 5])
def test_eye(k, cols):
    assert_like(xp.eye(4, cols, k=k), np.eye(4, cols, k=k, dtype=np.float32))


def test_eye_dtypes_and_xla():
    assert_like(xp.eye(3, dtype=xp.bool), np.eye(3, dtype=bool))
    assert_like(xp.eye(2, 3, k=1, dtype=xp.complex64), np.eye(2, 3, k=1, dtype=np.complex64))
    fn = tf.function(lambda: xp.eye(3, 4, k=-1, dtype=xp.int8), jit_compile=True, autograph=False)
    assert_like(fn(), np.eye(3, 4, k=-1, dtype=np.int8))


def test_astype():
    x = xp.asarray([-1.5, 0.0, 2.7, NAN])
    assert_like(xp.astype(x, xp.bool), np.array([-1.5, 0.0, 2.7, NAN]).astype(bool))
    assert_like(xp.astype(x[:3], xp.int32), np.array([-1, 0, 2], np.int32))
    assert_like(xp.astype(xp.asarray([True, False]), xp.float16), np.array([1, 0], np.float16))
    assert_like(xp.astype(xp.asarray([1 + 2j]), xp.complex128), np.array([1 + 2j]))
    assert xp.astype(x, xp.float32, copy=False) is x
    assert xp.astype(x, xp.float32) is not x
    with pytest.raises(TypeError, match="real part"):
        xp.astype(xp.asarray([1 + 2j]), xp.float32)


# ---------------------------------------------------------------------------------------
# Element-wise functions
# ---------------------------------------------------------------------------------------

UNARY = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "square": np.square,
    "exp": np.exp,
    "expm1": np.expm1,
    "log": np.log,
    "log1p": np.log1p,
    "atanh": np.arctanh,
    "sign": np.sign,
    "negative": np.negative,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_float(name, dtype, mode):
    x = sample(dtype)
    with np.errstate(all="ignore"):
        want = UNARY[name](x)
    # XLA's float64 log1p / atanh are a few dozen ulp off NumPy's (TF's kernels are not).
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
    # Moderate magnitudes only: TF's complex log / sqrt / sign form |z|**2 naively, so they
    # overflow or underflow near the dtype's limits (log(1e308 + 0j) is NaN there).
    x = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e-100, 1e100, 3.7, -0.3])
    z = (x[:, None] + 1j * x[None, :]).ravel()
    for name in ("abs", "square", "exp", "log", "sqrt", "sign", "negative"):
        with np.errstate(all="ignore"):
            want = UNARY[name](z)
        ok = np.isfinite(want) & (np.abs(want) < 1e150)  # exp / square overflow to inf+nanj
        assert_like(run(mode, getattr(xp, name), z[ok]), want[ok], rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_unary_integers(mode):
    i = np.array([-128, -3, 0, 5, 127], np.int8)
    u = np.array([0, 1, 200, 255], np.uint8)
    for name in ("abs", "square", "sign", "negative"):
        fn = getattr(xp, name)
        assert_like(run(mode, fn, i), UNARY[name](i))
        assert_like(run(mode, fn, u), UNARY[name](u))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_unary_half_precision_keeps_dtype(dtype):
    np_dtype = np.dtype(getattr(xp, dtype).as_numpy_dtype)
    x = np.array([0.25, 0.5, 1.0, 2.0, 3.0], np_dtype)
    for name in ("sqrt", "exp", "expm1", "log", "log1p", "abs", "square"):
        out = getattr(xp, name)(x)
        assert out.dtype == getattr(xp, dtype)
        want = UNARY[name](x.astype(np.float32))
        np.testing.assert_allclose(out.numpy().astype(np.float32), want, rtol=1e-2)


@pytest.mark.parametrize(
    ("name", "x"),
    [
        ("sqrt", [1, 2]),
        ("exp", [1]),
        ("log", [True]),
        ("atanh", [3]),
        ("abs", [True]),
        ("negative", [True]),
        ("logical_not", [1]),
    ],
)
def test_unary_wrong_kind_raises_type_error(name, x):
    with pytest.raises(TypeError):
        getattr(xp, name)(xp.asarray(x))


BINARY = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_float_grid(name, mode):
    # Every pairing of edge values (and some random ones), through broadcasting.
    x = sample(np.float64, n=8)
    x1, x2 = x[:, None], x[None, :]
    with np.errstate(all="ignore"):
        want = BINARY[name](x1, x2)
    got = run(mode, getattr(xp, name), x1, x2)
    if name == "pow" and mode == "xla":
        # XLA's pow loses a few ulp for huge results; special values must still agree.
        assert_like(got, want, rtol=1e-12)
    else:
        assert_like(got, want)


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
    e = np.array([0, 1, 2, 3, 7], np.int8)
    names = ("add", "subtract", "multiply", "maximum", "minimum", "less", "equal")

    def fn(i, j, u, e):
        outs = []
        for name in names:
            f = getattr(xp, name)
            outs += [f(i, j), f(i, u), f(u, 3)]  # int8 with uint8 -> int16
        return (*outs, xp.pow(i, e), xp.pow(u, u % 4))

    want = []
    for name in names:
        ref = BINARY[name]
        want += [ref(i, j), ref(i, u), ref(u, np.uint8(3))]
    want += [np.power(i, e), np.power(u, u % 4)]
    for g, w in zip(run(mode, fn, i, j, u, e), want, strict=True):
        assert_like(g, w)
    assert xp.isdtype(xp.divide(xp.asarray([1, 2]), 2).dtype, "real floating")


def test_binary_mixing_int_and_float_arrays_raises():
    for name in BINARY:
        with pytest.raises(TypeError):
            getattr(xp, name)(xp.asarray([1.0]), xp.asarray([1]))


def test_comparisons_between_bools_and_logic():
    p = np.array([True, True, False, False])
    q = np.array([True, False, True, False])
    assert_like(xp.equal(p, q), p == q)
    assert_like(xp.not_equal(p, True), p != True)  # noqa: E712
    assert_like(xp.logical_and(p, q), p & q)
    assert_like(xp.logical_or(p, q), p | q)
    assert_like(xp.logical_not(p), ~p)
    with pytest.raises(TypeError):
        xp.logical_and(xp.asarray([1]), xp.asarray([0]))
    with pytest.raises(TypeError):
        xp.less(xp.asarray([1j]), xp.asarray([2j]))


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
    "prod": np.prod,
    "mean": np.mean,
    "max": np.max,
    "min": np.min,
    "any": np.any,
    "all": np.all,
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
def test_sum_and_prod_dtypes(dtype, sum_dtype):
    x = xp.ones((2, 3), dtype=getattr(xp, dtype))
    assert xp.sum(x).dtype == getattr(tf, sum_dtype)
    assert xp.prod(x, axis=0).dtype == getattr(tf, sum_dtype)
    assert xp.sum(x, dtype=xp.float64).dtype == xp.float64


def test_reduction_values_for_integers_and_bools():
    i = np.array([[100, 100, 100], [-128, 127, 1]], np.int8)  # would wrap in int8
    assert_like(xp.sum(i, axis=1), i.sum(axis=1, dtype=np.int64))
    assert_like(xp.prod(i), i.prod(dtype=np.int64))
    assert_like(xp.sum(np.array([True, True, False])), np.int64(2))
    assert_like(xp.max(i, axis=0), i.max(axis=0))
    assert_like(xp.any(i == 1, axis=1), (i == 1).any(axis=1))
    f = np.array([1.0, 2.0], np.float32)
    assert_like(xp.sum(f, dtype=xp.float64), np.float64(3.0))


def test_mean_half_precision_does_not_overflow():
    x = xp.full((1000,), 100.0, dtype=xp.float16)
    assert_like(xp.mean(x), np.float16(100.0))
    with pytest.raises(TypeError):
        xp.mean(xp.asarray([1, 2]))


def test_empty_reductions():
    e = np.zeros((0, 3), np.float32)
    assert_like(xp.sum(e, axis=0), np.zeros(3, np.float32))
    assert_like(xp.prod(e, axis=0), np.ones(3, np.float32))
    assert_like(xp.any(e), np.False_)
    assert_like(xp.all(e), np.True_)


@pytest.mark.parametrize("mode", MODES)
def test_argmax(mode):
    x = np.array([[1.0, 3.0, 3.0], [-INF, -5.0, -INF], [2.0, 0.0, 2.0]], np.float32)
    i = np.array([5, -2, 5, 9, 9], np.int16)
    configs = [(axis, keepdims) for axis in (None, 0, 1, -1) for keepdims in (False, True)]

    def fn(t, u):
        outs = [xp.argmax(t, axis=axis, keepdims=keepdims) for axis, keepdims in configs]
        return (*outs, xp.argmax(u))

    want = [np.argmax(x, axis=axis, keepdims=keepdims) for axis, keepdims in configs]
    for g, w in zip(run(mode, fn, x, i), [*want, np.argmax(i)], strict=True):
        assert_like(g, w)


# ---------------------------------------------------------------------------------------
# Linear algebra and manipulation
# ---------------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (4, 5)),
    ((4,), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 6)),
    ((6, 3, 4), (4,)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("s1", "s2"), MATMUL_SHAPES)
def test_matmul_shapes(s1, s2, mode):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(s1)
    b = rng.standard_normal(s2).astype(np.float32)
    # float64 with float32 promotes to float64: compare with NumPy's float64 product.
    assert_like(run(mode, xp.matmul, a, b), np.matmul(a, b.astype(np.float64)), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_matmul_float32_is_full_precision(mode):
    # A TF32 product (10-bit mantissa) would be off by ~1e-3 relative.
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 256)).astype(np.float32)
    b = rng.standard_normal((256, 32)).astype(np.float32)
    got = run(mode, xp.matmul, a, b).numpy()
    want = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.max(np.abs(got - want) / scale) < 1e-5


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int64, np.float16])
def test_matmul_other_dtypes(dtype):
    a = np.array([[100, 2], [3, 4]], dtype)
    b = np.array([[3, 1], [1, 0]], dtype)
    want = np.matmul(a, b)  # NumPy wraps int8 / uint8 around, as the shim does
    assert_like(xp.matmul(a, b), want)
    with pytest.raises(TypeError):
        xp.matmul(xp.asarray([[True]]), xp.asarray([[False]]))


@pytest.mark.parametrize("mode", MODES)
def test_manipulation(mode):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    cases = [
        (lambda t: xp.matrix_transpose(t), np.swapaxes(x, -1, -2)),
        (lambda t: xp.permute_dims(t, (2, 0, 1)), np.transpose(x, (2, 0, 1))),
        (lambda t: xp.reshape(t, (4, -1)), x.reshape(4, -1)),
        (lambda t: xp.expand_dims(t, axis=-1), x[..., None]),
        (lambda t: xp.expand_dims(t, axis=1), x[:, None]),
        (lambda t: xp.squeeze(t[:, :1, None], axis=(1, 2)), x[:, 0]),
        (lambda t: xp.squeeze(t[:1], axis=0), x[0]),
        (lambda t: xp.squeeze(t[:, :1], axis=()), x[:, :1]),  # axis=() drops nothing
        (
            lambda t: xp.broadcast_to(t[:, :1], (5, 2, 3, 4)),
            np.broadcast_to(x[:, :1], (5, 2, 3, 4)),
        ),
        (lambda t: xp.flip(t), np.flip(x)),
        (lambda t: xp.flip(t, axis=1), np.flip(x, axis=1)),
        (lambda t: xp.flip(t, axis=(0, -1)), np.flip(x, axis=(0, -1))),
        (lambda t: xp.tile(t, (2, 1, 1)), np.tile(x, (2, 1, 1))),
        (lambda t: xp.tile(t, (2,)), np.tile(x, (2,))),
        (lambda t: xp.tile(t, (2, 1, 1, 3)), np.tile(x, (2, 1, 1, 3))),
        (lambda t: xp.repeat(t, 2), np.repeat(x, 2)),
        (lambda t: xp.repeat(t, 3, axis=1), np.repeat(x, 3, axis=1)),
        (lambda t: xp.repeat(t, xp.asarray([1, 0]), axis=0), np.repeat(x, [1, 0], axis=0)),
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
            xp.argmax(x, keepdims=True),
            xp.matmul(x, xp.matrix_transpose(x)),
            xp.tile(x[0], (2, 1)),
            xp.max(x, axis=1, keepdims=True),
            xp.clip(x, 0, 1),
            xp.sum(x, axis=(0, 1)),
        )

    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    i = np.array([-1, 0])
    got = fn(x, i)
    want = (
        np.take(x, i, axis=1),
        np.argmax(x, keepdims=True),
        x @ x.T,
        np.tile(x[0], (2, 1)),
        np.max(x, axis=1, keepdims=True),
        np.clip(x, 0, 1),
        np.sum(x),
    )
    for g, w in zip(got, want, strict=True):
        assert_like(g, w)
