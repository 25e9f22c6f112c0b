"""What a layout is: the one place that knows its arrays, their checks, its blocks and its
gradients. The engine (``_evaluate``) asks the layout and never its name.

A layout reduces SPEC §3's candidates ``C(i)`` and positives ``P(i)`` to a
:class:`~tfree_core._blocks.Tiling` (normalised anchors and candidates, index vectors for
the masks) and, for the single-positive kernel, each anchor's positive similarity. The
same set-up serves every evaluation: untiled (one block), tiled (row blocks), sharded
(this device's rows against the candidates gathered from every device, global indices)
and fused (a backend's tile kernels read the same ``Tiling``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .. import _validation as check
from .._blocks import Blocks, Tiling
from .._namespace import Array, Namespace, device_of, to_compute
from .._normalize import normalize, normalize_vjp

if TYPE_CHECKING:
    from .._evaluate import Collectives
    from .._problem import Problem

SEVERAL_POSITIVES = "(several positives per anchor; the fused kernels take one)"

Saved = dict[str, Any]
"""The arrays a layout keeps between its forward and its backward (its
:attr:`Layout.saved` names; ``None`` where a call has no such array)."""


@dataclass(frozen=True)
class Checked:
    """What validation learns of a call's arrays: the dtypes of the differentiable ones,
    SupCon's number of views (0 for ``(N, D)``), whether positives come as a mask, and the
    matrix's static size (``n`` anchors, ``m`` candidates, ``depth``: ``D`` of per-row
    negatives, whose ``(rows, M, D)`` gather is part of a block; ``None``: unknown)."""

    dtypes: tuple[Any, ...]
    masked: bool
    n: int | None
    m: int | None
    depth: int = 0
    views: int = 0


def static(size: object) -> int | None:
    """A size known now, or ``None`` (unknown in a graph, or symbolic under
    ``torch.compile(dynamic=True)``, where reading it would specialise the trace)."""
    return size if type(size) is int else None


def check_rows(names: tuple[str, str], first: Array, second: Array, xp: Namespace) -> None:
    """Two ``(N, D)`` floating inputs of one shape (``query``/``key``, ``z1``/``z2``)."""
    for name, x in zip(names, (first, second), strict=True):
        check.check_floating(name, x, xp)
        check.check_rank(name, x, (2,), "(N, D)")
        check.check_nonempty(name, x, (0, 1), ("row", "feature"))
    n, d = first.shape
    check.check_dim(names[1], second, 0, n, f"{names[0]}'s N")
    check.check_dim(names[1], second, 1, d, f"{names[0]}'s D")


def same_shape(first: Array, second: Array) -> bool:
    """Two ``(N, D)`` arrays of one shape (plain comparisons, see ``sizes_agree``)."""
    return second.shape[0] == first.shape[0] and second.shape[1] == first.shape[1]


def labels_fit(labels: Array | None, first: Array) -> bool:
    return labels is None or labels.shape[0] == first.shape[0]


def normalized(x: Array, xp: Namespace, where: Array | None = None) -> tuple[Array, Array]:
    """``(u, 1/‖x‖)`` of ``x`` taken to its compute dtype (SPEC §2.1-§2.2); rows where
    ``where`` is False first become zero rows (see :func:`drop_rows`)."""
    return normalize(drop_rows(to_compute(x, xp), where, xp), xp)


def drop_rows(x: Array, where: Array | None, xp: Namespace) -> Array:
    """``x`` with the rows where ``where`` is False replaced by zeros, *selected* (not
    multiplied by a mask): a masked row may hold anything, NaN and inf included (padding
    from ``torch.empty``), and must reach no arithmetic that touches other rows (a product
    ``0·NaN`` in ``G·U`` would poison every gradient). A zero row has zero similarity with
    everything and a zero gradient (SPEC §2.1)."""
    if where is None:
        return x
    mask = xp.reshape(where, (where.shape[0],) + (1,) * (len(x.shape) - 1))
    return xp.where(mask, x, xp.zeros_like(x))


def everyone(n: int, like: Array, xp: Namespace) -> Array:
    """``n`` True values (every anchor has its positive)."""
    return xp.arange(n, device=device_of(like)) >= 0


def gather_mask(mask: Array | None, comm: Collectives, xp: Namespace) -> Array | None:
    """A row mask of every device, in rank order. Booleans travel as int32: not every
    engine reduces or gathers booleans (Gloo)."""
    if mask is None or comm.world_size == 1:
        return mask
    return comm.all_gather(xp.astype(mask, xp.int32)) != 0


def gather(x: Array | None, comm: Collectives) -> Array | None:
    """``x`` of every device, in rank order (itself on one device)."""
    return x if x is None or comm.world_size == 1 else comm.all_gather(x)


def row_offset(comm: Collectives, n: int) -> int | Array:
    """The global index of this device's first row of ``n``."""
    return comm.rank * n if comm.world_size > 1 else 0


class Layout:
    """One layout of SPEC §3. Subclasses set the class attributes and implement the methods
    that raise ``NotImplementedError``; the defaults fit the layouts whose loss has one
    value per anchor row."""

    name: ClassVar[str]
    """The layout's name in :class:`~tfree_core._problem.Problem` (``"pairs"``, ...)."""
    function: ClassVar[str]
    """The public function that reaches it, for messages (``"info_nce"``, ...)."""
    arrays: ClassVar[tuple[str, ...]]
    """Its arrays, in the positional order of every engine call; ``where`` last."""
    differentiable: ClassVar[tuple[str, ...]]
    """The leading :attr:`arrays` that get gradients, in the order they are returned."""
    saved: ClassVar[tuple[str, ...]]
    """The keys of :meth:`setup`'s dictionary, in the order the residuals hold them."""
    static_sizes: ClassVar[tuple[tuple[int, int], ...]] = ()
    """``(array, axis)`` sizes that shape the computation itself (SupCon's number of
    views): a tracer with symbolic shapes must specialise on them."""
    shardable: ClassVar[bool] = True
    """Whether it has a global batch to shard over devices (``group=``)."""
    tileable: ClassVar[bool] = True
    """Whether ``chunk_size`` applies (the similarity level's matrix is an input)."""

    # ----------------------------------------------------------------- validation

    def check(self, arrays: tuple[Array | None, ...], xp: Namespace) -> Checked:
        """Check the layout's own arrays (``where`` and devices are checked by the caller),
        raising ``TypeError`` / ``ValueError`` naming the argument."""
        raise NotImplementedError

    def sizes_agree(self, arrays: tuple[Array | None, ...]) -> bool:
        """:meth:`check`'s size relations as plain comparisons (a tracer with symbolic
        shapes turns them into guards): no empty axis of the first array, every size that
        must match matches. The messages come from :meth:`check` once sizes are known."""
        first = arrays[0]
        if any(first.shape[axis] == 0 for axis in range(len(first.shape))):
            return False
        where = arrays[-1]
        return (where is None or where.shape[0] == first.shape[0]) and self._sizes_agree(arrays)

    def _sizes_agree(self, arrays: tuple[Array | None, ...]) -> bool:
        return True

    def check_values(self, arrays: tuple[Array | None, ...], xp: Namespace) -> None:
        """The checks that need concrete values (none by default)."""

    def fused_unsupported(self, problem: Problem, arrays: tuple[Array | None, ...]) -> str | None:
        """Why a backend's fused tile kernels cannot evaluate this call (what to change),
        or ``None``: the kernels take one positive per anchor and candidates shared by all
        rows."""
        return None

    # ----------------------------------------------------------------- evaluation

    def setup(
        self, problem: Problem, arrays: tuple[Array | None, ...], xp: Namespace,
        comm: Collectives,
    ) -> Saved:
        """Normalise this device's rows and gather the candidates (no matrix): the
        :attr:`saved` arrays."""
        raise NotImplementedError

    def blocks(self, problem: Problem, saved: Saved, xp: Namespace, comm: Collectives) -> Blocks:
        """The :class:`~tfree_core._blocks.Tiling` of the call, from the saved arrays."""
        raise NotImplementedError

    def positives(
        self, problem: Problem, saved: Saved, xp: Namespace
    ) -> tuple[Array, Array] | None:
        """The single-positive kernel's ``(s_p, has_positive)`` per local anchor (the
        positive lies outside the matrix); ``None`` for the masked kernel."""
        return None

    def column_positives(
        self, problem: Problem, saved: Saved, single: tuple[Array, Array], xp: Namespace,
        comm: Collectives,
    ) -> tuple[Array, Array]:
        """For a symmetric loss (candidates along the columns as anchors): every column's
        positive similarity and whether it has one, over all ranks' columns."""
        raise NotImplementedError(f"{self.name} has no symmetric form")

    def to_columns(self, local: Array, t: Tiling, comm: Collectives, xp: Namespace) -> Array:
        """A vector over this rank's column anchors (its keys) as a vector over every
        column of every rank (default: the columns are the ranks' keys, in rank order)."""
        return gather(local, comm)

    def local_columns(self, columns: Array, t: Tiling, xp: Namespace) -> Array:
        """The inverse of :meth:`to_columns`: this rank's column anchors' entries of a
        vector over every column (default: the ``n`` from ``row_offset``)."""
        offset = t.row_offset
        if isinstance(offset, int) and offset == 0 and columns.shape[0] == t.n:
            return columns
        rows = xp.arange(t.n, device=device_of(columns))
        rows = rows + (offset if isinstance(offset, int) else xp.astype(offset, rows.dtype))
        return xp.take(columns, rows, axis=0)

    def gradients(
        self, problem: Problem, saved: Saved, du_a: Array, du_c: Array | None,
        g_positive: Array | None, xp: Namespace,
    ) -> tuple[Array, ...]:
        """The gradients of the differentiable inputs (compute dtype) from ``G·U_c`` and
        ``Gᵀ·U_a`` summed over the blocks (this device's candidates' share, when sharded)
        and the positives' ``g_p``: add the positives' terms, then go back through the
        normalisation."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shapes

    def loss_shape(self, problem: Problem, arrays: tuple[Array | None, ...]) -> tuple[int, ...]:
        """Shape of the loss for ``reduction="none"`` (SPEC §2.7)."""
        return (arrays[0].shape[0],)

    def shape_loss(self, problem: Problem, loss: Array, xp: Namespace) -> Array:
        """The per-anchor vector in the loss's ``"none"`` shape."""
        return loss

    def flatten_cotangent(self, problem: Problem, cotangent: Array, xp: Namespace) -> Array:
        """A ``"none"`` cotangent back to one value per anchor row (inverse of
        :meth:`shape_loss`)."""
        return cotangent


def vjp(saved: Saved, unit: str, inverse_norm: str, du: Array, xp: Namespace) -> Array:
    """``dz`` of one normalised input from ``du`` (SPEC §2.1's VJP)."""
    return normalize_vjp(saved[unit], saved[inverse_norm], du, xp)
