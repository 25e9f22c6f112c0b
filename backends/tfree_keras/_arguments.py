"""The loss's constructor arguments, checked once and converted to plain Python values.

Every value the loss keeps is a Python ``bool`` / ``int`` / ``float`` / ``str`` / ``None``
(or a Keras dtype policy): ``get_config`` is then JSON-serialisable and the values are
constants to every tracer. NumPy scalars are accepted wherever the Python type is.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfree_core import engine

__all__ = ["check_dtype", "check_flag", "check_name", "check_optional_size", "plain_str"]


def check_flag(name: str, value: object) -> bool:
    """A switch must be a real bool (Python or NumPy): ``"False"`` would be truthy."""
    engine.check_flag(name, value)
    return bool(value)


def plain_str(value: object) -> object:
    """A ``str`` (NumPy's ``str_`` included) as a plain ``str``; anything else unchanged,
    for the check that follows to name it."""
    return str(value) if isinstance(value, str) else value


def check_optional_size(name: str, value: object) -> int | None:
    """``None`` or a positive integer (Python or NumPy), as a Python ``int``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int or None; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int or None; got {value!r}")
    return int(value)


def check_name(name: object) -> str | None:
    if name is None or isinstance(name, str):
        return None if name is None else str(name)
    raise TypeError(f"name must be a str or None; got {type(name).__name__}")


def check_dtype(dtype: Any) -> Any:
    """``None``, a floating dtype (``"float32"``, ``np.float64``, ...) or a Keras dtype
    policy (``"mixed_float16"``, ``keras.DTypePolicy``) whose compute dtype is floating.

    Returns what ``get_config`` stores: the policy or name as given, a dtype object
    converted to its name.
    """
    if dtype is None:
        return None
    if isinstance(dtype, keras.DTypePolicy):
        policy, kept = dtype, dtype
    else:
        try:
            kept = str(dtype) if isinstance(dtype, str) else keras.backend.standardize_dtype(dtype)
            policy = keras.dtype_policies.get(kept)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"dtype must be a floating dtype (float16, bfloat16, float32, float64) or a "
                f"Keras dtype policy; got {dtype!r} ({error})"
            ) from None
    if not keras.backend.is_float_dtype(policy.compute_dtype):
        raise TypeError(
            "dtype must be a floating dtype (float16, bfloat16, float32, float64) or a "
            f"Keras dtype policy with a floating compute dtype; got {dtype!r} (compute "
            f"dtype {policy.compute_dtype})"
        )
    return kept
