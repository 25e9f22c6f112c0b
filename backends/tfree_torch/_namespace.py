"""The array namespace handed to the core: ``array_api_compat.torch`` with two overrides.

* ``asarray`` of a Python scalar builds the 0-d tensor with ``torch.full`` on the target
  device. ``torch.asarray(0.0, device="cuda")`` builds it on the host and copies it with a
  blocking copy (a host synchronisation per scalar); the core makes a handful of 0-d
  constants per call (``where`` fill values), so this keeps the CUDA hot path free of syncs.
* ``clip`` with two Python bounds (float bounds on a floating tensor, int bounds on an
  integer one) is ``torch.clamp`` directly: the compat version's scalar checks cost Python
  time on every call, and its ``math.isnan`` of a symbolic bound (``torch.compile`` with
  dynamic shapes) is a graph break.

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


def _build() -> types.ModuleType:
    module = types.ModuleType(
        "tfree_torch.xp", "array_api_compat.torch with sync-free scalars (see tfree_torch)."
    )
    for name in dir(_compat):
        if not name.startswith("__"):
            setattr(module, name, getattr(_compat, name))
    module.asarray = _asarray  # type: ignore[attr-defined]
    module.clip = _clip  # type: ignore[attr-defined]
    return module


xp = _build()
"""The namespace passed as ``xp=`` to every core call."""
