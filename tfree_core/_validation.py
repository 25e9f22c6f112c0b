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


def check_rank(name: str, x: Array, ranks: tuple[int, ...], layout: str) -> None:
    if len(x.shape) not in ranks:
        wanted = " or ".join(layout.split("|"))
        raise ValueError(f"{name} must have shape {wanted}; got shape {_fmt(_shape(x))}")


def check_nonempty(name: str, x: Array, axes: Sequence[int], what: Sequence[str]) -> None:
    shape = _shape(x)
    for axis, label in zip(axes, what, strict=True):
        if shape[axis] == 0:
            raise ValueError(
                f"{name} must have at least one {label} ({'N' if axis == 0 else 'D'} >= 1); "
                f"got shape {_fmt(shape)}"
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
    known = [(name, dev) for name, _, dev in present if dev is not None]
    for name, dev in known[1:]:
        if dev != known[0][1]:
            raise ValueError(
                f"{name} is on device {dev} but {known[0][0]} is on device {known[0][1]}; "
                "all arrays of one call must share a device"
            )


def check_negatives_conflicts(negatives: Array | None, labels: Array | None, symmetric: bool):
    """SPEC §3: explicit negatives with labels or with a symmetric loss are undefined."""
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
