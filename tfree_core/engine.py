"""The interface between the core and the framework backends.

A backend calls :func:`prepare` once per call (validation; returns the static
:class:`Problem`), :func:`forward` for the loss and the residuals, and on the backward pass
:func:`backward` with the residuals and the upstream cotangent. The backend holds no math
of its own; the core holds no framework code.

Arrays are passed positionally, per layout:

============  ==========================================================  ==================
layout        arrays                                                      gradients
============  ==========================================================  ==================
pairs         ``(query, key, labels | None, where | None)``               query, key
negatives     ``(query, key, negatives, where | None)``                   query, key, negs
nt_xent       ``(z1, z2, where | None)``                                  z1, z2
sup_con       ``(features, labels, where | None)``                        features
similarity    ``(similarity, positive_mask, valid_mask | None, where)``   similarity
============  ==========================================================  ==================
"""

from __future__ import annotations

from ._layouts import (
    DIFFERENTIABLE,
    Problem,
    Residuals,
    backward,
    forward,
    loss_shape,
    residual_keys,
    validate,
)
from ._namespace import Array, Namespace
from ._options import Options, make_options

__all__ = [
    "DIFFERENTIABLE",
    "Options",
    "Problem",
    "Residuals",
    "backward",
    "forward",
    "loss_shape",
    "make_options",
    "prepare",
    "residual_keys",
]


def prepare(
    layout: str,
    arrays: tuple[Array | None, ...],
    *,
    options: Options,
    symmetric: bool = False,
    xp: Namespace,
) -> Problem:
    """Validate ``arrays`` for ``layout`` (before any computation) and return the static
    description of the call."""
    return validate(layout, arrays, {"options": options, "symmetric": symmetric}, xp)
