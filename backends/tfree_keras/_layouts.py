"""How each layout of the Keras loss reads ``y_pred`` and ``y_true``: one table.

A Keras loss gets one ``y_pred`` tensor, so the layouts stack their inputs on axis 1
(``(N, 2, D)``: the two views or the ``(query, key)`` pairs). Each :class:`KerasLayout`
knows how to split ``y_pred`` into the tfree function's arguments, whether it reads labels
from ``y_true``, how its ``reduction="none"`` result maps to the samples of the batch (for
un-padding and ``sample_weight``) and which of its anchors have a positive. Adding a layout
is one more entry in :data:`LAYOUTS`; the loss never compares layout names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from keras import ops

__all__ = ["LAYOUTS", "SWITCHES", "KerasLayout", "get"]

Tensor = Any  # a tensor of the running Keras backend

SWITCHES = ("symmetric", "use_labels")
"""The layout-specific boolean switches of the loss (all default ``False``)."""

Arguments = Callable[[Tensor, Tensor | None, Mapping[str, bool]], tuple[tuple, dict]]


def _pair(y_pred: Tensor) -> tuple[Tensor, Tensor]:
    return y_pred[:, 0, :], y_pred[:, 1, :]


def _nt_xent(y_pred: Tensor, labels: Tensor | None, switches: Mapping[str, bool]):
    return _pair(y_pred), {}


def _info_nce(y_pred: Tensor, labels: Tensor | None, switches: Mapping[str, bool]):
    return _pair(y_pred), {"labels": labels, "symmetric": switches["symmetric"]}


def _sup_con(y_pred: Tensor, labels: Tensor | None, switches: Mapping[str, bool]):
    return (y_pred, labels), {}


def _retrieval(y_pred: Tensor, labels: Tensor | None, switches: Mapping[str, bool]):
    # (N, 2 + Hn, D): the query, its positive and the (N, Hn, D) hard negatives
    return _pair(y_pred), {"hard_negatives": y_pred[:, 2:, :],
                           "symmetric": switches["symmetric"]}


def _sup_con_positives(y_pred: Tensor, labels: Tensor) -> Tensor:
    """SupCon's anchor ``(i, v)`` has a positive iff sample ``i`` has another view
    (``V >= 2``) or another sample of the batch shares its label (SPEC §3, SupCon)."""
    if len(y_pred.shape) == 3 and y_pred.shape[1] >= 2:
        return ops.ones_like(labels, dtype="bool")
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    return ops.sum(ops.cast(same, "int32"), axis=1) >= 2


@dataclass(frozen=True)
class KerasLayout:
    """One layout of the Keras loss.

    Attributes:
        name: the ``layout=`` value.
        function: the tfree function it calls (the same name in every backend package).
        shape: ``y_pred``'s shape, for messages; ``ranks`` and ``views`` check it
            (``views``: the inclusive bounds of axis 1 for a rank-3 ``y_pred``, ``None``:
            unbounded).
        labels: whether it reads integer labels from ``y_true``: ``True``, ``False`` or
            the name of the switch that decides (``"use_labels"``).
        switches: the :data:`SWITCHES` it accepts.
        arguments: ``(y_pred, labels, switches) -> (positional, keywords)`` of ``function``.
        anchor_blocks: its ``"none"`` result stacks ``anchor_blocks`` blocks of ``N``
            anchors (NT-Xent: the ``z1`` anchors, then the ``z2`` anchors); else its axis 0
            is the sample axis (``(N,)``, SupCon's ``(N, V)``).
        positives: ``(y_pred, labels) -> bool (N,)``: the samples whose anchors have a
            positive; ``None``: every anchor has one (its pair or other view).
        hint: appended to the shape error.
    """

    name: str
    function: str
    shape: str
    ranks: tuple[int, ...]
    views: tuple[int, int | None]
    labels: bool | str
    arguments: Arguments
    switches: tuple[str, ...] = ()
    anchor_blocks: int = 1
    positives: Callable[[Tensor, Tensor], Tensor] | None = None
    hint: str = ""

    def reads_labels(self, switches: Mapping[str, bool]) -> bool:
        if isinstance(self.labels, str):
            return switches[self.labels]
        return self.labels

    def check_shape(self, y_pred: Tensor) -> None:
        shape = tuple(y_pred.shape)
        low, high = self.views
        views_ok = len(shape) != 3 or shape[1] is None or (
            shape[1] >= low and (high is None or shape[1] <= high))
        if len(shape) not in self.ranks or not views_ok:
            raise ValueError(
                f"layout={self.name!r} needs y_pred of shape {self.shape}{self.hint}; got "
                f"shape {_format(shape)}"
            )

    def per_sample(self, loss: Tensor) -> Tensor:
        """A ``"none"`` result with the sample axis first (NT-Xent's ``(2N,)`` -> ``(N, 2)``)."""
        if self.anchor_blocks == 1:
            return loss
        return ops.transpose(ops.reshape(loss, (self.anchor_blocks, -1)))

    def from_per_sample(self, loss: Tensor) -> Tensor:
        """The inverse of :meth:`per_sample`."""
        if self.anchor_blocks == 1:
            return loss
        return ops.reshape(ops.transpose(loss), (-1,))


def _format(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + (
        ",)" if len(shape) == 1 else ")")


_STACK_HINT = ", the two views stacked on axis 1 (keras.ops.stack([a, b], axis=1))"

LAYOUTS: dict[str, KerasLayout] = {spec.name: spec for spec in (
    KerasLayout("nt_xent", "nt_xent", "(N, 2, D)", ranks=(3,), views=(2, 2), labels=False,
                arguments=_nt_xent, anchor_blocks=2, hint=_STACK_HINT),
    KerasLayout("info_nce", "info_nce", "(N, 2, D)", ranks=(3,), views=(2, 2),
                labels="use_labels", arguments=_info_nce, switches=SWITCHES,
                hint=", (query, key) stacked on axis 1 (keras.ops.stack([q, k], axis=1))"),
    KerasLayout("sup_con", "sup_con", "(N, D) or (N, V, D)", ranks=(2, 3), views=(1, None),
                labels=True, arguments=_sup_con, positives=_sup_con_positives),
    KerasLayout("retrieval", "info_nce", "(N, 2 + Hn, D)", ranks=(3,), views=(3, None),
                labels=False, arguments=_retrieval, switches=("symmetric",),
                hint=", query, positive and Hn >= 1 hard negatives on axis 1 (keras.ops."
                     "concatenate([q[:, None], k[:, None], h], axis=1) for h of shape "
                     "(N, Hn, D))"),
)}
"""Layout name -> :class:`KerasLayout`, in the order of the documentation."""


def get(layout: object) -> KerasLayout:
    """The entry of ``layout``; ``ValueError`` naming the layouts otherwise."""
    spec = LAYOUTS.get(layout) if isinstance(layout, str) else None
    if spec is None:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}; got {layout!r}")
    return spec
