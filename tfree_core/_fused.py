"""Fused evaluation: the loss and its analytic gradient from a backend's tile kernels.

The temperature-free map makes the softmax numerators rational and bounded (``_maps``):
``R_ij = (1+c)/(1-c)`` with ``c = clip(S_ij, -b, b)``, so every ratio lies in
``[ε/2, 2/ε]`` and partition sums need no running maximum. A kernel can therefore stream
tiles of ``S = U_a·U_cᵀ`` once, keep them in registers and write only per-row and
per-column sums: no ``N × M`` array ever reaches memory (extra memory ``O(N + M)``).

This module is the framework-free contract of that path: the engine (``_evaluate``, with
``kernel=``) normalises, finishes the per-anchor losses from the sums, reduces, and
assembles the embedding gradients exactly as for its own block loop; the matrix work is
delegated to a backend's :class:`TileKernel` (Triton for PyTorch, Pallas for JAX), which
needs two operations, both over the candidate set ``keep_ij`` given by a
:class:`~tfree_core._blocks.Tiling` (no self-pair when ``diagonal``, no partner
``j = partner_i``, ``where_rows_i`` and ``where_cols_j``):

* ``sums(t, bound, columns)``: ``N_i = Σ_j keep_ij·R_ij`` and, when ``columns``,
  ``N_j = Σ_i keep_ij·R_ij`` (the column direction of a symmetric loss), one pass;
* ``grads(t, bound, row_scale, col_scale)``: with
  ``G_ij = (a_i + b_j)·keep_ij·R_ij·φ'(S_ij) = (a_i + b_j)·keep_ij·2/(1-c)²`` (0 where the
  clip is active) and ``a = row_scale``, ``b = col_scale`` (``None``: 0), the products
  ``dU_a = G·U_c`` and ``dU_c = Gᵀ·U_a``.

``a_i = A_i/Z_i`` and ``b_j`` are the kernel's per-anchor factors (``single_scales``), so
``G`` is SPEC §2's ``∂L/∂S`` on the candidates; the positives' terms ``g_p`` and the
normalisation's VJP are added here, as in the untiled path.

Scope: the arctanh map on the single-positive layouts with a shared candidate set: pairs
(with or without ``symmetric`` and ``where``), NT-Xent, and explicit negatives shared by
all rows ``(M, D)``. :func:`unsupported` names what is outside it.

Distributed (``group=``): each rank runs the same two kernels on its local anchor rows
against the candidates gathered from every rank; the engine does everything else (the
collectives, the scaling of the returned value) exactly as for its portable block loop.
The rank's rows are candidates ``rank·n + i`` (``Tiling.row_offset``), so the kernels drop
the global self-pair; :func:`exclusions` gives both sides' dropped indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ._blocks import Tiling
from ._namespace import Array, Namespace, device_of

if TYPE_CHECKING:
    from ._problem import Problem

__all__ = ["TileKernel", "exclusions", "unsupported"]


class TileKernel(Protocol):
    """A backend's fused tile kernels (see the module docstring for the formulas)."""

    def sums(self, t: Tiling, bound: float, columns: bool) -> tuple[Array, Array | None]:
        """``(N_i, N_j or None)``: row (and column) sums of the kept ratios."""
        ...

    def grads(
        self, t: Tiling, bound: float, row_scale: Array, col_scale: Array | None
    ) -> tuple[Array, Array]:
        """``(G·U_c, Gᵀ·U_a)`` with ``G_ij = (a_i + b_j)·keep_ij·2/(1-c_ij)²`` inside the clip."""
        ...


def unsupported(problem: Problem, arrays: tuple[Array | None, ...]) -> str | None:
    """Why the fused kernels cannot evaluate ``problem`` (the option to change), or ``None``."""
    if problem.options.logit_map != "arctanh":
        return (f"logit_map={problem.options.logit_map!r} (the fused kernels implement the "
                "temperature-free map only: its bounded ratios need no running maximum)")
    return problem.spec.fused_unsupported(problem, arrays)

Exclusions = tuple[Array | None, Array | None]


def exclusions(t: Tiling, xp: Namespace) -> tuple[Exclusions, Exclusions]:
    """Besides the row masks, the index each row of ``S`` (anchors) and of ``Sᵀ``
    (candidates) drops on the other side, as int32 vectors (-1: none; ``None``: no such
    exclusion), so that a kernel tests ``ex_x != y`` whichever side is ``X``::

        anchor i:     own = row_offset + i         (diagonal)
                      partner_i                    (a candidate index)
        candidate j:  own = j - row_offset         (diagonal; -1 outside the anchors' block)
                      partner_{j - row_offset} - row_offset   (likewise)

    The candidate side assumes, as NT-Xent's ``i ± N`` within a rank's ``[z1; z2]``
    does, that the partner map is an involution of the anchors' own block. With
    ``row_offset = 0`` and ``M = N`` (one device) these are ``arange(N)`` and ``partner``
    on both sides.
    """
    anchors: Exclusions = (None, None)
    candidates: Exclusions = (None, None)
    if not t.diagonal and t.partner is None:
        return anchors, candidates
    device = device_of(t.anchors)
    i = xp.arange(t.n, dtype=xp.int32, device=device)
    j = xp.arange(t.m, dtype=xp.int32, device=device)
    offset = t.row_offset
    if not isinstance(offset, int):  # a traced rank (JAX's axis_index)
        offset = xp.astype(offset, xp.int32)
    local = j - offset  # candidate j as an anchor row, when it is one of them
    inside = xp.logical_and(local >= 0, local < t.n)
    none = xp.full((t.m,), -1, dtype=xp.int32, device=device)
    own = xp.where(inside, local, none)
    if t.diagonal:
        anchors = (i + offset, None)
        candidates = (own, None)
    if t.partner is not None:
        partner = xp.astype(t.partner, xp.int32)
        mirrored = xp.take(partner, xp.clip(local, 0, t.n - 1), axis=0) - offset
        anchors = (anchors[0], partner)
        candidates = (candidates[0], xp.where(inside, mirrored, none))
    return anchors, candidates
