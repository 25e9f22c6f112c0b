"""``TemperatureFreeLoss``: the loss as an ``nn.Module`` for training loops."""

from __future__ import annotations

import torch
from torch import nn

from tfree_core import DEFAULT_EPS, engine

from ._public import info_nce, loss_from_similarity, nt_xent, sup_con
from ._static import options_for

__all__ = ["LAYOUTS", "TemperatureFreeLoss"]

_FUNCTIONS = {"info_nce": info_nce, "nt_xent": nt_xent, "sup_con": sup_con,
              "similarity": loss_from_similarity}
LAYOUTS = tuple(_FUNCTIONS)
"""The module's layouts: the public function each one calls (``"similarity"``:
``loss_from_similarity``)."""
_SURFACE = {f.name: f for f in engine.FUNCTIONS}

Tensor = torch.Tensor


class TemperatureFreeLoss(nn.Module):
    """The temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683) as a module.

    The logit of a cosine similarity ``s`` is ``φ(s) = 2·atanh(clip(s, -b, b))`` instead of
    ``s/τ``; the loss is the softmax cross-entropy over each anchor's candidates:

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)]

    Calling the module calls the layout's function of ``tfree_torch`` with the options
    given here (see ``forward`` for what each layout takes). The module has no parameters
    or buffers; it validates its options when built, so a bad option fails at
    construction, not at the first batch.

    Args:
        layout: Which candidates and positives (SPEC §3): ``"info_nce"`` (pairs, CLIP;
            MoCo with ``negatives``; calls ``tfree_torch.info_nce``), ``"nt_xent"``
            (SimCLR), ``"sup_con"`` (SupCon) or ``"similarity"`` (a precomputed
            similarity matrix: ``tfree_torch.loss_from_similarity``). One of ``LAYOUTS``.
        symmetric: ``½(L_q→k + L_k→q)``, both directions (CLIP); ``"info_nce"`` only
            (``ValueError`` with another layout). A bool.
        logit_map: ``"arctanh"`` (default): ``ℓ = 2·atanh(clip(s, -b, b))``, no
            temperature; or ``"temperature"``: InfoNCE's ``ℓ = s/τ`` (for comparisons).
        temperature: ``τ > 0``, only with ``logit_map="temperature"``.
        eps: The clip ``b`` = the largest compute-dtype value ``<= 1 - eps`` (default
            ``1e-6``: logit cap 14.5087 in float64, 14.4955 in float32); in ``(0, 0.5)``.
        reduction: ``"mean"`` over the anchors that have a positive, ``"sum"``, or
            ``"none"`` (per-anchor losses).
        chunk_size: ``"auto"`` (default), ``None`` (always the whole similarity matrix) or
            rows per block (tiled: no ``N × M`` array); not with ``"similarity"``.
        check_finite: ``True``: raise ``ValueError`` on NaN or ±inf inputs (a pass over
            them; eager calls).

    Examples:
        A SimCLR step: the module in place of a criterion with a temperature.

        ```python
        import torch
        import tfree_torch

        encoder = torch.nn.Linear(32, 16)
        criterion = tfree_torch.TemperatureFreeLoss("nt_xent")
        x1, x2 = torch.randn(8, 32), torch.randn(8, 32)  # two views of 8 examples
        loss = criterion(encoder(x1), encoder(x2))
        loss.backward()
        clip = tfree_torch.TemperatureFreeLoss("info_nce", symmetric=True)
        assert clip(torch.randn(8, 16), torch.randn(8, 16)).shape == ()
        ```
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
        engine.check_flag("check_finite", check_finite)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
        engine.check_flag("symmetric", symmetric)
        symmetric = bool(symmetric)
        surface = _SURFACE[_FUNCTIONS[layout].__name__]
        if symmetric and not any(p.name == "symmetric" for p in surface.keywords):
            raise ValueError(f"symmetric=True needs layout='info_nce'; got layout={layout!r}")
        options = options_for(logit_map, temperature, eps, reduction)
        self.layout = layout
        self.symmetric = symmetric
        self.logit_map = options.logit_map
        self.temperature = options.temperature
        self.eps = options.eps
        self.reduction = options.reduction
        self.chunk_size = engine.check_chunk_size(chunk_size)
        self.check_finite = bool(check_finite)
        if not surface.tileable and self.chunk_size not in (None, engine.AUTO_CHUNK):
            raise ValueError(f"chunk_size does not apply to layout={layout!r} (the matrix is "
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
        """The loss of the configured layout.

        Args:
            input: The first array of the layout: ``query`` ``(N, D)`` (``"info_nce"``),
                ``z1`` ``(N, D)`` (``"nt_xent"``), ``features`` ``(N, D)`` or
                ``(N, V, D)`` (``"sup_con"``), ``similarity`` ``(N, M)``
                (``"similarity"``).
            other: The second: ``key`` ``(N, D)``, ``z2`` ``(N, D)``, integer
                ``labels`` ``(N,)`` (``"sup_con"``: here or as ``labels=``), or the
                boolean ``positive_mask`` ``(N, M)``. Required.
            labels: ``"info_nce"``: integer ``(N,)``, keys with the query's label are
                its positives; ``"sup_con"``: the class ids, if not given as ``other``.
            negatives: ``"info_nce"`` only: ``(M, D)`` shared or ``(N, M, D)`` per-row
                negatives (MoCo).
            valid_mask: ``"similarity"`` only: boolean ``(N, M)``, the candidates.
            where: Boolean ``(N,)``: rows where it is False are neither anchors nor
                candidates (padding).

        Returns:
            The loss in the compute dtype (float32 for float16 / bfloat16 / float32,
            float64 for float64): a scalar, or the per-anchor losses for
            ``reduction="none"``.

        Raises:
            TypeError: An argument the layout does not take, or ``other`` missing.
        """
        function = _FUNCTIONS[self.layout]
        surface = _SURFACE[function.__name__]
        first, second = (p.name for p in surface.positional)
        accepted = {p.name for p in surface.keywords}
        given = {"labels": labels, "negatives": negatives, "valid_mask": valid_mask}
        if second in given:  # sup_con: labels positionally or as labels=
            if other is not None and given[second] is not None:
                raise TypeError(f"{self.layout} takes {second} once: positionally or as "
                                f"{second}=, not both")
            if other is None:
                other = given[second]
            given[second] = None
        if other is None:
            raise TypeError(f"layout={self.layout!r} needs a second argument, {second}: "
                            f"loss({first}, {second})")
        for name, value in given.items():
            if value is not None and name not in accepted:
                takes = ", ".join(sorted(accepted & set(given))) or "none of them"
                raise TypeError(f"{name} is not accepted by layout={self.layout!r} (of "
                                f"labels, negatives and valid_mask it takes {takes})")
        keywords = {name: value for name, value in given.items() if name in accepted}
        if "symmetric" in accepted:
            keywords["symmetric"] = self.symmetric
        return function(input, other, where=where, **keywords, **self._options())

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
