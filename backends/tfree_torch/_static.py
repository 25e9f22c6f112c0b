"""The static half of a call (options, validation, the ``Problem``), kept out of traces.

``tfree_core`` validates options with NumPy scalars (``check_for_dtype``) and finds
the clip bound ``b`` with ``fractions.Fraction`` (``clip_bound``): pure functions of Python
constants, which ``torch.compile`` (Dynamo) cannot trace (a NumPy scalar in an ``if`` is
a graph break). So:

* the options carry their clip bounds, computed once per option set in plain Python
  (:class:`BoundOptions`, whose ``clip_bound`` reads them: nothing to compute in
  ``forward``/``backward``);
* in eager mode ``engine.prepare`` validates the real tensors, as the core would;
* while compiling, the ``Problem`` comes from :func:`torch.compiler.assume_constant_result`
  over a description of the inputs (rank, dtype, device; sizes ``None``, which the core's
  checks treat as unknown), so Dynamo runs the core's validation at trace time and bakes
  the result into the graph; the sizes are then checked by the layout's ``sizes_agree``
  in the traced code, where they may be symbolic (dynamic shapes).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from tfree_core import engine
from tfree_core.engine import Options, clip_bound

from ._namespace import xp

__all__ = ["BoundOptions", "assume_constant_result", "options_for", "problem_for"]


def assume_constant_result(fn: Any) -> Any:
    """:func:`torch.compiler.assume_constant_result`, whose effect is this mark, without
    importing ``torch._dynamo`` when ``tfree_torch`` is imported. That import takes seconds
    and pulls in Triton where it is installed, whose LLVM aborts a process that loaded
    TensorFlow's first; Dynamo is imported by ``torch.compile`` itself when it is used."""
    fn._dynamo_marked_constant = True
    return fn


@dataclasses.dataclass(frozen=True)
class BoundOptions(Options):
    """:class:`tfree_core.engine.Options` with the clip bounds ``b`` precomputed for the
    float32 and float64 compute dtypes (``prepare`` still rejects an ``eps`` too small for
    the call's dtype, with the core's message)."""

    bound32: float = float("nan")
    bound64: float = float("nan")

    def clip_bound(self, float64: bool) -> float:
        return self.bound64 if float64 else self.bound32


def options_for(
    logit_map: str, temperature: float | None, eps: float, reduction: str
) -> BoundOptions:
    """Validated options (``engine.make_options``) with their clip bounds (cached)."""
    try:
        hash((logit_map, temperature, eps, reduction))
    except TypeError:  # not a valid option anyway: let the core say why
        engine.make_options(
            logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction
        )
        raise
    # keyed on the types as well: True == 1 and 1 == 1.0 hash alike, but only some of
    # them are valid options
    types = tuple(type(v) for v in (logit_map, temperature, eps, reduction))
    return _options_for(logit_map, temperature, eps, reduction, types)


@functools.lru_cache(maxsize=256)
def _options_for(
    logit_map: str, temperature: float | None, eps: float, reduction: str,
    types: tuple[type, ...],
) -> BoundOptions:
    options = engine.make_options(
        logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction
    )
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(Options)}
    return BoundOptions(
        **fields,
        bound32=clip_bound(options.eps, float64=False),
        bound64=clip_bound(options.eps, float64=True),
    )


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What validation reads of an array: shape (``None`` for a symbolic size), dtype,
    device."""

    shape: tuple[int | None, ...]
    dtype: torch.dtype
    device: torch.device


@functools.lru_cache(maxsize=1024)
def _problem_from_specs(
    layout: str,
    symmetric: bool,
    options: tuple[Any, ...],
    chunk_size: Any,
    specs: tuple[tuple[tuple[int | None, ...], torch.dtype, torch.device] | None, ...],
) -> engine.Problem:
    arrays = tuple(None if s is None else _Spec(*s) for s in specs)
    return engine.prepare(layout, arrays, options=options_for(*options), symmetric=symmetric,
                          chunk_size=chunk_size, xp=xp)


def _fields(obj: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))


def _encode(value: Any) -> Any:
    """A Python number as the hex string of its float: under ``dynamic=True`` Dynamo
    treats float arguments as symbolic, and only ``float.hex`` turns one back into a
    constant (specialising on it)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ("float.hex", float(value).hex())
    return value


def _encode_int(value: Any) -> Any:
    """An int (``chunk_size``) as a constant: ``int()`` specialises a symbolic one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("int", int(value))
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "float.hex":
        return float.fromhex(value[1])
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "int":
        return value[1]
    return value


@assume_constant_result
def _constant_problem(
    layout: str,
    symmetric: bool,
    options: tuple[Any, ...],
    chunk_size: Any,
    specs: tuple[Any, ...],
) -> tuple[tuple[str, Any], ...]:
    """The ``Problem`` as nested tuples of constants (Dynamo bakes constants into the graph;
    a dataclass it did not build itself would need guards it cannot make)."""
    options = tuple(_decode(v) for v in options)
    try:
        problem = _problem_from_specs(layout, symmetric, options, _decode(chunk_size), specs)
    except (TypeError, ValueError) as err:
        # Returned, not raised: Dynamo reports an exception raised in here as its own
        # InternalTorchDynamoError, so the caller raises it in the traced code instead.
        return (("error", (type(err).__name__, str(err))),)
    return tuple(
        (name, _fields(value) if name == "options" else value)
        for name, value in _fields(problem)
    )


def _rebuild(flat: tuple[tuple[str, Any], ...]) -> engine.Problem:
    kwargs = dict(flat)
    kwargs["options"] = BoundOptions(**dict(kwargs["options"]))
    return engine.Problem(**kwargs)


def _spec_shape(spec: engine.Layout, index: int, t: torch.Tensor) -> tuple[int | None, ...]:
    """Sizes are left unknown (``None``: they may be symbolic, and ``sizes_agree`` checks
    them in the graph), except those that shape the computation (SupCon's views)."""
    return tuple(int(t.shape[axis]) if (index, axis) in spec.static_sizes else None
                 for axis in range(t.ndim))


_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}


def _raise_core_error(
    args: tuple[Any, ...],
    arrays: tuple[torch.Tensor | None, ...],
    flat: tuple[tuple[str, Any], ...],
) -> None:
    """Validation failed while compiling: validate again with the sizes and raise the
    core's own error, so that ``torch.compile`` reports the eager type and message."""
    # int(f"{d}"): a symbolic size read as a constant. Dynamo formats the size it traces
    # with (specialising on it; the call is about to fail anyway), where int(d) would stay
    # symbolic and could not be handed to an assume_constant_result function.
    specs = tuple(
        None if a is None else (tuple(int(f"{d}") for d in a.shape), a.dtype, a.device)
        for a in arrays
    )
    sized = _constant_problem(*args, specs)
    if sized[0][0] == "error":
        flat = sized
    if flat[0][0] == "error":
        kind, message = flat[0][1]
        raise _ERRORS[kind](message)
    shapes = ", ".join(str(tuple(a.shape)) for a in arrays if a is not None)
    raise ValueError(f"{args[0]}: the input sizes do not fit together; got shapes {shapes}")


def problem_for(
    layout: str,
    arrays: tuple[torch.Tensor | None, ...],
    *,
    symmetric: bool,
    logit_map: str,
    temperature: float | None,
    eps: float,
    reduction: str,
    chunk_size: int | str | None = None,
    world_size: int = 1,
) -> engine.Problem:
    """Validate a call (``ValueError`` / ``TypeError`` as the core raises them) and return
    its static ``Problem`` (``world_size``: of a sharded call, which runs eagerly only)."""
    if torch.compiler.is_compiling():
        spec = engine.layout(layout)
        specs = tuple(
            None if a is None else (_spec_shape(spec, i, a), a.dtype, a.device)
            for i, a in enumerate(arrays)
        )
        options = (logit_map, temperature, eps, reduction)
        args = (layout, symmetric, tuple(_encode(v) for v in options), _encode_int(chunk_size))
        flat = _constant_problem(*args, specs)
        if flat[0][0] == "error" or not spec.sizes_agree(arrays):  # ranks, dtypes, options
            # before any size, then the sizes
            _raise_core_error(args, arrays, flat)
        return _rebuild(flat)
    options = options_for(logit_map, temperature, eps, reduction)
    return engine.prepare(layout, arrays, options=options, symmetric=symmetric,
                          chunk_size=chunk_size, world_size=world_size, xp=xp)
