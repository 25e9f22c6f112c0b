"""``TemperatureFreeLoss``: the loss as an ``nn.Module`` for training loops."""

from __future__ import annotations

import torch
from torch import nn

from tfree_core import DEFAULT_EPS
from tfree_core._options import check_chunk_size
from tfree_core._validation import check_flag

from ._api import info_nce, loss_from_similarity, nt_xent, sup_con
from ._static import options_for

__all__ = ["LAYOUTS", "TemperatureFreeLoss"]

LAYOUTS = ("info_nce", "nt_xent", "sup_con", "similarity")

Tensor = torch.Tensor


class TemperatureFreeLoss(nn.Module):
    """The temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683) as a module.

    The logit of a cosine similarity ``s`` is ``φ(s) = 2·atanh(clip(s, -b, b))`` instead of
    ``s/τ``; the loss is the softmax cross-entropy over each anchor's candidates::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)]

    Args:
        layout: which candidates and positives (SPEC §3):

            * ``"info_nce"``: ``loss(query, key, *, labels=None, negatives=None, where=None)``
              (pairs / CLIP; MoCo with ``negatives``);
            * ``"nt_xent"``: ``loss(z1, z2, *, where=None)`` (SimCLR);
            * ``"sup_con"``: ``loss(features, labels, *, where=None)`` (SupCon);
            * ``"similarity"``: ``loss(similarity, positive_mask, *, valid_mask=None,
              where=None)``.
        symmetric: ``½(L_q→k + L_k→q)`` (``"info_nce"`` only).
        logit_map, temperature, eps, reduction, chunk_size, check_finite: as in
            :func:`tfree_torch.info_nce`.

    The module has no parameters or buffers; it validates its options when built.
    """

    def __init__(
        self,
        layout: str = "info_nce",
        *,
        symmetric: bool = False,
        logit_map: str = "arctanh",
        temperature: float | None = None,
        eps: float = DEFAULT_EPS,
        reduction: str = "mean",
        chunk_size: int | str | None = "auto",
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        check_flag("check_finite", check_finite)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric must be a bool; got {type(symmetric).__name__}")
        if symmetric and layout != "info_nce":
            raise ValueError(f"symmetric=True needs layout='info_nce'; got layout={layout!r}")
        options = options_for(logit_map, temperature, eps, reduction)
        self.layout = layout
        self.symmetric = symmetric
        self.logit_map = options.logit_map
        self.temperature = options.temperature
        self.eps = options.eps
        self.reduction = options.reduction
        self.chunk_size = check_chunk_size(chunk_size)
        self.check_finite = bool(check_finite)
        if layout == "similarity" and self.chunk_size not in (None, "auto"):
            raise ValueError("chunk_size does not apply to layout='similarity' (the matrix is "
                             f"an input); got chunk_size={chunk_size!r}")

    def _options(self) -> dict:
        return {
            "logit_map": self.logit_map,
            "temperature": self.temperature,
            "eps": self.eps,
            "reduction": self.reduction,
            "chunk_size": self.chunk_size,
            "check_finite": self.check_finite,
        }

    def forward(
        self,
        input: Tensor,
        other: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        negatives: Tensor | None = None,
        valid_mask: Tensor | None = None,
        where: Tensor | None = None,
    ) -> Tensor:
        """The loss of the configured layout (see the class docstring for the arguments)."""
        layout = self.layout
        if layout != "info_nce" and negatives is not None:
            raise TypeError(f"negatives are only accepted by layout='info_nce'; got {layout!r}")
        if layout != "similarity" and valid_mask is not None:
            raise TypeError(f"valid_mask is only accepted by layout='similarity'; got {layout!r}")
        if layout in ("nt_xent", "similarity") and labels is not None:
            raise TypeError(f"labels are not accepted by layout={layout!r}")
        if layout == "sup_con":
            if other is not None and labels is not None:
                raise TypeError("sup_con takes labels once: positionally or as labels=, not both")
            labels = other if other is not None else labels
            if labels is None:
                raise TypeError("layout='sup_con' needs labels: loss(features, labels)")
            return sup_con(input, labels, where=where, **self._options())
        if other is None:
            second = "positive_mask" if layout == "similarity" else "a second embedding tensor"
            raise TypeError(f"layout={layout!r} needs {second}")
        if layout == "info_nce":
            return info_nce(input, other, negatives=negatives, labels=labels,
                            symmetric=self.symmetric, where=where, **self._options())
        if layout == "nt_xent":
            return nt_xent(input, other, where=where, **self._options())
        return loss_from_similarity(input, other, valid_mask=valid_mask, where=where,
                                    **self._options())

    def extra_repr(self) -> str:
        parts = [f"layout={self.layout!r}"]
        if self.symmetric:
            parts.append("symmetric=True")
        parts.append(f"logit_map={self.logit_map!r}")
        if self.temperature is not None:
            parts.append(f"temperature={self.temperature!r}")
        parts.append(f"eps={self.eps!r}")
        parts.append(f"reduction={self.reduction!r}")
        if self.chunk_size != "auto":  # the default
            parts.append(f"chunk_size={self.chunk_size!r}")
        if self.check_finite:
            parts.append("check_finite=True")
        return ", ".join(parts)
