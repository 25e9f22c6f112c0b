"""The array namespace handed to the core: ``array_api_compat.torch`` with four additions.

* ``asarray`` of a Python scalar builds the 0-d tensor with ``torch.full`` on the target
  device. ``torch.asarray(0.0, device="cuda")`` builds it on the host and copies it with a
  blocking copy (a host synchronisation per scalar); the core makes a handful of 0-d
  constants per call (``where`` fill values), so this keeps the CUDA hot path free of syncs.
* ``clip`` with two Python bounds (float bounds on a floating tensor, int bounds on an
  integer one) is ``torch.clamp`` directly: the compat version's scalar checks cost Python
  time on every call, and its ``math.isnan`` of a symbolic bound (``torch.compile`` with
  dynamic shapes) is a graph break.

* ``add_matmul(acc, a, b)`` (the core's accumulation of a tiled loop's ``Gᵀ·U_a``) is
  ``acc.addmm_(a, b)``: one pass, no ``M × D`` temporary per block. A tensor wrapped by
  ``torch.func`` (``vmap``, ``grad``), or traced by ``torch.compile``, takes the
  out-of-place sum instead;
* ``writes_in_place(x)``: whether the core may write a block's self-pairs at their
  indices rather than select with a mask (not for a wrapped or traced tensor).

Everything else is the compat namespace itself. The object is a real module, so
``torch.compile`` resolves its attributes as constants.
"""

from __future__ import annotations

import types
from typing import Any

import array_api_compat.torch as _compat
import torch

__all__ = ["xp"]


def _asarray(
    obj: Any,
    /,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    copy: bool | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    if dtype is not None and not kwargs and isinstance(obj, (float, int)):
        return torch.full((), obj, dtype=dtype, device=device)
    return _compat.asarray(obj, dtype=dtype, device=device, copy=copy, **kwargs)


def _clip(x: torch.Tensor, /, min: Any = None, max: Any = None, **kwargs: Any) -> torch.Tensor:
    numbers = (
        not kwargs
        and isinstance(min, (int, float))
        and isinstance(max, (int, float))
        and not isinstance(min, bool)
        and not isinstance(max, bool)
    )
    if numbers and x.is_floating_point() and min == min and max == max:  # not NaN
        return torch.clamp(x, min, max)
    if numbers and not x.is_floating_point() and isinstance(min, int) and isinstance(max, int):
        return torch.clamp(x, min, max)
    return _compat.clip(x, min, max, **kwargs)


def _wrapped(*tensors: torch.Tensor) -> bool:
    """Whether a ``torch.func`` transform wraps one of ``tensors``, or ``torch.compile``
    traces them (Dynamo cannot trace the check; the compiler fuses the plain form)."""
    if torch.compiler.is_compiling():
        return True
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return acc + a @ b if _wrapped(acc, a, b) else acc.addmm_(a, b)


def _writes_in_place(x: torch.Tensor) -> bool:
    return not _wrapped(x)


def _build() -> types.ModuleType:
    module = types.ModuleType(
        "tfree_torch.xp", "array_api_compat.torch with sync-free scalars (see tfree_torch)."
    )
    for name in dir(_compat):
        if not name.startswith("__"):
            setattr(module, name, getattr(_compat, name))
    module.asarray = _asarray  # type: ignore[attr-defined]
    module.clip = _clip  # type: ignore[attr-defined]
    module.add_matmul = _add_matmul  # type: ignore[attr-defined]
    module.writes_in_place = _writes_in_place  # type: ignore[attr-defined]
    return module


xp = _build()
"""The namespace passed as ``xp=`` to every core call."""
