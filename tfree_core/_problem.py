"""The static description of one call (:class:`Problem`) and its validation
(:func:`prepare`), run before any computation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import _strategy
from . import _validation as check
from ._layouts import Layout, layout
from ._namespace import Array, Namespace, device_of
from ._options import AUTO_CHUNK, Options, check_chunk_size, check_for_dtype


@dataclass(frozen=True)
class Problem:
    """Everything static about one call: layout, options, and the input dtypes.

    Hashable, so that backends can use it as a static argument (``jax.jit``,
    ``jax.custom_vjp``'s ``nondiff_argnums``) or a closure constant (``tf.custom_gradient``).
    ``layout`` is the layout's name (a plain constant for every tracer); :attr:`spec` is
    the layout itself.
    """

    layout: str
    options: Options
    symmetric: bool = False
    dtypes: tuple[Any, ...] = ()
    views: int = 0  # sup_con with (N, V, D) features; 0 for (N, D)
    float64: bool = False  # the compute dtype: float64, or float32 for every other float
    masked: bool = False  # positives given by a mask (labels, SupCon, similarity level)
    chunk_size: int | None = None  # rows per block; None: untiled (one block, S kept)

    @property
    def spec(self) -> Layout:
        """The :class:`~tfree_core._layouts.Layout` of this call."""
        return layout(self.layout)

    @property
    def axes(self) -> tuple[int, ...]:
        """Directions: anchors along rows (1), and along columns (0) when symmetric."""
        return (1, 0) if self.symmetric else (1,)


def _static(size: object) -> int:
    """A size known now, else 0 (a graph's or a symbolic dimension)."""
    return size if type(size) is int else 0


def fuses_gradient(problem: Problem) -> bool:
    """Whether the gradient can be computed in the loss's own pass (``value_and_grad``):
    every anchor's statistics are complete within its own block of rows (one direction, no
    column sums, candidates that are embeddings) and the upstream cotangent is a scalar
    (``"mean"`` or ``"sum"``), so the gradient is that scalar times a fixed array."""
    return (problem.spec.tileable and not problem.symmetric
            and problem.options.reduction != "none")


def loss_shape(problem: Problem, arrays: tuple[Array | None, ...]) -> tuple[int, ...]:
    """Shape of the loss for ``reduction="none"`` (SPEC §2.7); ``()`` otherwise."""
    if problem.options.reduction != "none":
        return ()
    return problem.spec.loss_shape(problem, arrays)


def prepare(
    name: str,
    arrays: tuple[Array | None, ...],
    *,
    options: Options,
    symmetric: bool = False,
    chunk_size: int | str | None = None,
    device_kind: str | None = None,
    world_size: int = 1,
    one_pass: bool = True,
    xp: Namespace,
) -> Problem:
    """Validate ``arrays`` for layout ``name`` and return the static description of the
    call (see ``engine.prepare``)."""
    spec = layout(name)
    chunk_size = check_chunk_size(chunk_size)
    if not spec.tileable and chunk_size not in (None, AUTO_CHUNK):
        raise ValueError(
            f"chunk_size does not apply to {spec.function}: the similarity matrix is an "
            f"input, so there is nothing to tile; got chunk_size={chunk_size!r}"
        )
    checked = spec.check(arrays, xp)
    where = arrays[-1]
    if where is not None:
        check.check_mask("where", where, (arrays[0].shape[0],), xp)
    check.check_same_device(list(zip(spec.arrays, arrays, strict=True)))
    float64 = checked.dtypes[0] == xp.float64
    problem = Problem(name, options, symmetric, checked.dtypes, checked.views, float64,
                      checked.masked)
    kind = device_kind or _strategy.device_kind(device_of(arrays[0])) or _strategy.CPU
    m = None if checked.m is None else checked.m * world_size  # a device's rows meet
    # every device's candidates
    fused = one_pass and fuses_gradient(problem) and world_size == 1
    rows = _strategy.resolve_chunk_size(chunk_size, n=checked.n, m=m, depth=checked.depth,
                                        float64=float64, kind=kind, one_pass=fused,
                                        features=_static(arrays[0].shape[-1]))
    check_for_dtype(options, float64)
    return dataclasses.replace(problem, chunk_size=rows)
