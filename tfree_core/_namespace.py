"""Array-namespace plumbing: which library, which device, which compute dtype.

Every public function takes ``xp=None``; ``None`` means "infer it from the arrays"
(:func:`array_api_compat.array_namespace`). Backends always pass ``xp`` explicitly, which
keeps traced code (``jax.jit``, ``torch.compile``, ``tf.function``) free of namespace
sniffing and lets TensorFlow pass its private shim.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

Array = Any
Namespace = Any


def namespace_of(*arrays: Array | None, xp: Namespace | None = None) -> Namespace:
    """Return ``xp`` if given, else the one array namespace shared by ``arrays``.

    Raises ``TypeError`` naming the libraries found when the arrays come from several.
    """
    if xp is not None:
        return xp
    present = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as err:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in present})
        raise TypeError(
            "all arrays must come from one array library with an Array API namespace; "
            f"got {', '.join(kinds)} ({err})"
        ) from None


def device_of(x: Array) -> Any:
    """The device of ``x`` (``None`` where the library cannot tell, e.g. under ``jax.jit``).

    The array's own ``device`` attribute where it has one (torch, NumPy 2, array-api-strict,
    TensorFlow), which a tracer reads as a constant; ``array_api_compat.device`` for JAX,
    whose traced arrays have none. (Inside an ``autograd.Function`` compiled by
    ``torch.compile``, compat's cached class checks would be values of an earlier
    subgraph.)"""
    if not type(x).__module__.startswith(("jax", "jaxlib")):
        device = getattr(x, "device", None)
        if device is not None and not callable(device):
            return device
    try:
        return array_api_compat.device(x)
    except Exception:  # libraries without a compat wrapper (the TF shim's tensors)
        return getattr(x, "device", None)


def fuses_elementwise(xp: Namespace) -> bool:
    """Whether ``xp`` compiles element-wise chains into single passes (JAX's XLA, or a
    namespace whose own ``fuses_elementwise()`` says so, as TensorFlow's shim does while
    tracing), where a clip or a select between two passes costs a materialised temporary
    but ``minimum`` / ``maximum`` / division do not."""
    if array_api_compat.is_jax_namespace(xp):
        return True
    own = getattr(xp, "fuses_elementwise", None)
    return bool(own()) if callable(own) else False


def add_matmul(acc: Array, a: Array, b: Array, xp: Namespace) -> Array:
    """``acc + a @ b``, in place where the namespace offers it (its own
    ``add_matmul(acc, a, b)``, as PyTorch's does with ``addmm_``): a tiled loop adds every
    block's ``Gᵀ·U_a`` into one ``M × D`` gradient, and a separate product would write a
    fresh ``M × D`` array per block and pass over it again to add it."""
    own = getattr(xp, "add_matmul", None)
    if callable(own):
        return own(acc, a, b)
    acc += a @ b
    return acc


def writes_in_place(x: Array, xp: Namespace) -> bool:
    """Whether ``x`` takes writes at integer indices, in place, through a flat view: NumPy
    arrays, and a namespace whose own ``writes_in_place(x)`` says so (PyTorch's, for a
    tensor that no ``torch.func`` transform wraps)."""
    if array_api_compat.is_numpy_namespace(xp):
        return True
    own = getattr(xp, "writes_in_place", None)
    return bool(own(x)) if callable(own) else False


def scalar(value: float, like: Array, xp: Namespace) -> Array:
    """A 0-d array holding ``value`` with the dtype and device of ``like``.

    Array API 2023.12 allows Python scalars in operators but not in ``where``; this keeps
    the core portable to strict namespaces.
    """
    return xp.asarray(value, dtype=like.dtype, device=device_of(like))


def is_float64(dtype: Any, xp: Namespace) -> bool:
    return dtype == xp.float64


def compute_dtype(dtype: Any, xp: Namespace) -> Any:
    """SPEC §2.2: float64 stays float64; every other floating dtype computes in float32."""
    return xp.float64 if is_float64(dtype, xp) else xp.float32


def to_compute(x: Array, xp: Namespace) -> Array:
    """Cast ``x`` up to its compute dtype (never down); no copy when already there."""
    target = compute_dtype(x.dtype, xp)
    return x if x.dtype == target else xp.astype(x, target)


def cast_like(x: Array, dtype: Any, xp: Namespace) -> Array:
    return x if x.dtype == dtype else xp.astype(x, dtype)
