"""Drop-ins for sentence-transformers' ``MultipleNegativesRankingLoss`` and its cached version.

    loss = TemperatureFreeMNRL(model)                      # was MultipleNegativesRankingLoss(model)
    loss = TemperatureFreeCachedMNRL(model, mini_batch_size=32)
    trainer = SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss)

The host's interface: ``forward(sentence_features, labels)`` on the columns the trainer
collates, ``model``, ``get_config_dict()``, ``citation``, ``gather_across_devices``. The
columns ``(anchor, positive, negative_1, …, negative_k)`` become the retrieval layout

    info_nce(anchor, positive, hard_negatives=stack([negative_1, …, negative_k], dim=1))

so anchor ``i`` is scored against every positive and every negative of the batch, its own
positive being the target; ``directions=("query_to_doc", "doc_to_query")`` with
``partition_mode="per_direction"`` is ``symmetric=True`` (each positive also against every
anchor; ½ of each direction's mean). The logit is ``2·atanh(cos)`` (no ``scale``);
``logit_map="temperature"`` with ``scale=s`` gives the host's ``s·cos`` and its value.

Requires the ``sentence-transformers`` extra (``pip install "tfree[sentence-transformers]"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

try:
    from sentence_transformers.base.losses.merged_forward import embed_columns
except ImportError as error:  # pragma: no cover - depends on the environment
    if getattr(error, "name", "") and not str(error.name).startswith("sentence_transformers"):
        raise
    raise ImportError("tfree_torch.sentence_transformers needs sentence-transformers >= 6.3: "
                      "pip install \"tfree[sentence-transformers]\"") from error

from tfree_core import DEFAULT_EPS

from . import _hosts
from ._cached import CachedLoss
from ._public import info_nce

__all__ = ["TemperatureFreeCachedMNRL", "TemperatureFreeMNRL"]

_DIRECTIONS = ("query_to_doc", "doc_to_query")
_HOST_ONLY = ("query_to_query", "doc_to_doc")

CITATION = """
@misc{kim2025temperaturefree,
      title={Temperature-Free Loss Function for Contrastive Learning},
      author={Bum Jun Kim and Sang Woo Kim},
      year={2025},
      eprint={2501.17683},
      archivePrefix={arXiv},
      url={https://arxiv.org/abs/2501.17683},
}
"""


def _check_directions(directions: object, partition_mode: object) -> bool:
    """``True`` for the symmetric loss (``doc_to_query`` too), ``False`` for one direction."""
    if isinstance(directions, str) or not isinstance(directions, Sequence) or not directions:
        raise ValueError(f"directions must be a non-empty tuple of direction names, got "
                         f"{directions!r}")
    names = tuple(directions)
    unknown = [d for d in names if d not in _DIRECTIONS + _HOST_ONLY]
    if unknown:
        raise ValueError(f"directions: unknown direction(s) {unknown}; valid: "
                         f"{list(_DIRECTIONS + _HOST_ONLY)}")
    same_type = [d for d in names if d in _HOST_ONLY]
    if same_type:
        raise ValueError(f"directions: {same_type} (same-type negatives, GTE's loss) are not "
                         f"supported: the drop-in computes 'query_to_doc' and optionally "
                         f"'doc_to_query'")
    if "query_to_doc" not in names:
        raise ValueError("directions must include 'query_to_doc' (it holds the positive pair)")
    if partition_mode not in ("joint", "per_direction"):
        raise ValueError(f"partition_mode must be 'joint' or 'per_direction', got "
                         f"{partition_mode!r}")
    symmetric = "doc_to_query" in names
    if symmetric and partition_mode == "joint":
        raise ValueError("partition_mode='joint' with 'doc_to_query' (one softmax over both "
                         "directions' logits) is not supported; partition_mode='per_direction' "
                         "is the symmetric loss, ½ of each direction's mean")
    return symmetric


def _scale(logit_map: str, scale: object) -> float | None:
    if logit_map == "arctanh":
        if scale is not None:
            raise ValueError(f"scale is only used with logit_map='temperature' (the "
                             f"temperature-free logit 2·atanh(cos) has no scale), got "
                             f"scale={scale!r}")
        return None
    return _hosts.check_positive("scale", 20.0 if scale is None else scale)


def _text_ids(features: dict[str, Any], column: int) -> Tensor:
    """One identity per row of a tokenized column: a 63-bit hash of its token ids inside
    the attention mask, so the same text has the same id in every column and on every rank
    whatever the padding."""
    ids = features.get("input_ids")
    if not isinstance(ids, Tensor) or ids.ndim != 2:
        raise ValueError(f"deduplicate=True compares the columns' token ids, but column "
                         f"{column} has no 2-d 'input_ids' tensor (keys: {sorted(features)})")
    mask = features.get("attention_mask")
    rows = ids.detach().cpu().numpy().astype(np.int64)
    keep = (np.ones_like(rows, dtype=bool) if not isinstance(mask, Tensor)
            else mask.detach().cpu().numpy().astype(bool))
    out = [int.from_bytes(hashlib.blake2b(row[k].tobytes(), digest_size=8).digest(), "little",
                          signed=True) for row, k in zip(rows, keep, strict=True)]
    return torch.tensor(out, dtype=torch.int64, device=ids.device)


class _MNRLOptions(nn.Module):
    """The options both losses share, their checks, and the loss on the embeddings."""

    def __init__(self, model: nn.Module, *, logit_map: str, scale: float | None,
                 directions: Sequence[str], partition_mode: str, gather_across_devices: bool,
                 group: torch.distributed.ProcessGroup | None, deduplicate: bool, eps: float,
                 chunk_size: int | str | None) -> None:
        super().__init__()
        self.model = model
        self.logit_map = _hosts.check_logit_map(logit_map)
        self.scale = _scale(self.logit_map, scale)
        self.symmetric = _check_directions(directions, partition_mode)
        self.directions = tuple(directions)
        self.partition_mode = partition_mode
        self.gather_across_devices = _hosts.check_bool("gather_across_devices",
                                                       gather_across_devices)
        self.group = _hosts.check_group(group)
        self.deduplicate = _hosts.check_bool("deduplicate", deduplicate)
        self.eps = eps
        self.chunk_size = chunk_size

    @property
    def temperature(self) -> float | None:
        """``1/scale`` under ``logit_map="temperature"``; ``None`` for the temperature-free map."""
        return None if self.scale is None else 1.0 / self.scale

    def _group(self) -> torch.distributed.ProcessGroup | None:
        if self.group is not None:
            return self.group
        return _hosts.world_group("gather_across_devices") if self.gather_across_devices \
            else None

    def _ids(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        if not self.deduplicate:
            return {}
        ids = [_text_ids(f, c) for c, f in enumerate(features[1:], start=1)]
        out = {"key_ids": ids[0]}
        if len(ids) > 1:
            out["hard_negative_ids"] = torch.stack(ids[1:], dim=1)
        return out

    def loss_from_embeddings(self, *embeddings: Tensor, **ids: Tensor) -> Tensor:
        """The loss on the columns' embeddings ``(anchor, positive, negative_1, …)``, each
        ``(N, D)``; ``ids``: ``key_ids`` and ``hard_negative_ids`` (``deduplicate``)."""
        if len(embeddings) < 2:
            raise ValueError(f"Expected at least 2 columns (anchor, positive), got "
                             f"{len(embeddings)}")
        query, key, *negatives = embeddings
        hard = torch.stack(negatives, dim=1) if negatives else None
        return info_nce(query, key, hard_negatives=hard, symmetric=self.symmetric,
                        logit_map=self.logit_map, temperature=self.temperature, eps=self.eps,
                        chunk_size=self.chunk_size, group=self._group(), **ids)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor],
                                     labels: Tensor | None = None) -> Tensor:
        """The host's name for :meth:`loss_from_embeddings` (``labels`` are unused: the
        positive is the pair's own column)."""
        return self.loss_from_embeddings(*embeddings)

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"logit_map": self.logit_map}
        if self.scale is not None:
            config["scale"] = self.scale
        config.update(directions=self.directions, partition_mode=self.partition_mode,
                      gather_across_devices=self.gather_across_devices,
                      deduplicate=self.deduplicate)
        return config

    @property
    def citation(self) -> str:
        return CITATION


class TemperatureFreeMNRL(_MNRLOptions):
    """``MultipleNegativesRankingLoss`` with the temperature-free logit ``2·atanh(cos)``.

    Columns ``(anchor, positive[, negative_1, …, negative_k])`` give ``q``, ``k`` and
    ``H = (N, k, D)``; anchor ``i``'s candidates are all ``N`` positives and all ``N·k``
    negatives of the batch (the host's ``cat([positives, negatives_1, …])``, whose order
    does not change the loss):

        L = mean_i [ log Σ_{c ∈ C} exp(ℓ(q_i, c)) - ℓ(q_i, k_i) ],   ℓ(x, y) = 2·atanh(cos(x, y))

    and with ``"doc_to_query"`` also ``mean_i [log Σ_j exp ℓ(k_i, q_j) - ℓ(k_i, q_i)]``
    (the negatives are no anchors), the two averaged: ``tfree_torch.info_nce(q, k,
    hard_negatives=H, symmetric=...)``, its analytic gradient.

    Args:
        model: The ``SentenceTransformer`` (the trainer swaps in its wrapped model).
        logit_map: ``"arctanh"`` (default, no scale) or ``"temperature"``: the host's
            ``scale·cos`` (``scale`` default 20.0 as the host's), which equals
            ``MultipleNegativesRankingLoss``'s value.
        scale: ``1/τ``, only with ``logit_map="temperature"``.
        directions: ``("query_to_doc",)`` (default) or ``("query_to_doc", "doc_to_query")``;
            GTE's same-type directions are a ``ValueError``.
        partition_mode: ``"joint"`` or ``"per_direction"``; with ``doc_to_query`` only
            ``"per_direction"`` (the symmetric loss).
        gather_across_devices: Shard the batch over ``torch.distributed``'s default group
            (``group=`` of ``info_nce``): each rank's anchors against every rank's
            candidates with the exact gradient of the global batch's loss under DDP's
            averaging. The value on a rank is scaled so that the mean over ranks is the
            global loss (the trainer logs that mean).
        group: A ``ProcessGroup`` to shard over instead of the default one.
        deduplicate: ``True``: a candidate whose text (token ids inside the attention mask)
            equals anchor ``i``'s positive is dropped from ``i``'s candidates instead of
            being a negative (``key_ids`` / ``hard_negative_ids`` from a hash of the token
            ids). Default ``False``, the host's behaviour, whose remedy is the
            ``NO_DUPLICATES`` batch sampler.
        eps, chunk_size: As in ``tfree_torch.info_nce``.
    """

    def __init__(self, model: nn.Module, *, logit_map: str = "arctanh",
                 scale: float | None = None,
                 directions: Sequence[str] = ("query_to_doc",), partition_mode: str = "joint",
                 gather_across_devices: bool = False,
                 group: torch.distributed.ProcessGroup | None = None,
                 deduplicate: bool = False, eps: float = DEFAULT_EPS,
                 chunk_size: int | str | None = "auto") -> None:
        super().__init__(model, logit_map=logit_map, scale=scale, directions=directions,
                         partition_mode=partition_mode,
                         gather_across_devices=gather_across_devices, group=group,
                         deduplicate=deduplicate, eps=eps, chunk_size=chunk_size)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]],
                labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        embeddings = embed_columns(self.model, features)  # the host's (merged) forward
        return self.loss_from_embeddings(*embeddings, **self._ids(features))


class _Column(nn.Module):
    """One column's encoder for the cache: ``model(features)["sentence_embedding"]``; keeps
    the first pass's (graph-free) embeddings so that ``forward`` can return the value."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.first_pass: list[Tensor] = []

    def forward(self, **features: Any) -> Tensor:
        out = self.model(features)["sentence_embedding"]
        if not torch.is_grad_enabled():
            self.first_pass.append(out)
        return out


class _Times:
    """A ``scaler`` for ``CachedLoss``: the gradient the trainer's backward hands the loss
    (``GradScaler``'s scale, ``1/gradient_accumulation_steps``) times the loss."""

    def __init__(self) -> None:
        self.factor: Tensor | float = 1.0

    def scale(self, outputs: Tensor) -> Tensor:
        return outputs * self.factor


class TemperatureFreeCachedMNRL(_MNRLOptions):
    """``CachedMultipleNegativesRankingLoss`` with the temperature-free logit: the loss of
    :class:`TemperatureFreeMNRL` on a batch whose activations do not fit, built on
    ``tfree_torch.CachedLoss`` (GradCache: ``∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ·∂L/∂E_b``).

    ``forward`` embeds every column ``mini_batch_size`` rows at a time without a graph
    (recording each mini-batch's RNG and autocast state) and returns the loss as a leaf
    tensor; its backward (the trainer's ``loss.backward()``) computes ``∂L/∂E`` on the whole
    batch with tfree's analytic gradient, scaled by the gradient the backward hands it
    (fp16 ``GradScaler``, gradient accumulation), re-embeds each mini-batch with a graph
    under its recorded state and backpropagates ``⟨E_b, dE_b⟩``: the parameters' ``.grad``
    get exactly the full batch's gradient. Under ``DistributedDataParallel`` every re-encode
    but the last runs under ``no_sync()``. Without gradients (evaluation) it returns the loss.

    The host's differences: mini-batches are ``mini_batch_size`` rows of every tensor of a
    column (no ``mini_batch_num_tokens``; flattened inputs are a ``ValueError``), and the
    value is computed once more in ``forward`` (graph-free) besides the backward's pass.

    Args:
        model: The ``SentenceTransformer``.
        mini_batch_size: Rows embedded at a time (the activation memory), default 32 as the
            host's.
        show_progress_bar: Accepted for the host's signature; no bar is shown.
        **options: As :class:`TemperatureFreeMNRL` (``logit_map``, ``scale``, ``directions``,
            ``partition_mode``, ``gather_across_devices``, ``group``, ``deduplicate``,
            ``eps``, ``chunk_size``).
    """

    def __init__(self, model: nn.Module, *, mini_batch_size: int = 32,
                 logit_map: str = "arctanh", scale: float | None = None,
                 directions: Sequence[str] = ("query_to_doc",), partition_mode: str = "joint",
                 gather_across_devices: bool = False,
                 group: torch.distributed.ProcessGroup | None = None,
                 deduplicate: bool = False, show_progress_bar: bool = False,
                 eps: float = DEFAULT_EPS, chunk_size: int | str | None = "auto") -> None:
        super().__init__(model, logit_map=logit_map, scale=scale, directions=directions,
                         partition_mode=partition_mode,
                         gather_across_devices=gather_across_devices, group=group,
                         deduplicate=deduplicate, eps=eps, chunk_size=chunk_size)
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) \
                or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int (rows per mini-batch), "
                             f"got {mini_batch_size!r}")
        self.mini_batch_size = mini_batch_size
        self.show_progress_bar = _hosts.check_bool("show_progress_bar", show_progress_bar)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]],
                labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(f"Expected at least 2 columns (anchor, positive), got "
                             f"{len(features)}")
        ids = self._ids(features)
        loss_fn: Callable[..., Tensor] = self.loss_from_embeddings
        if ids:
            def loss_fn(*embeddings: Tensor) -> Tensor:
                return self.loss_from_embeddings(*embeddings, **ids)
        scaler = _Times()
        cache = CachedLoss(loss_fn, mini_batch_size=self.mini_batch_size, scaler=scaler)
        columns = [_Column(self.model) for _ in features]
        cache.add(*zip(columns, features, strict=True))  # the first pass, graph-free
        with torch.no_grad():
            value = loss_fn(*(torch.cat(c.first_pass) for c in columns))
        for column in columns:
            column.first_pass.clear()
        if not torch.is_grad_enabled():
            return value
        value = value.detach().requires_grad_(True)

        def replay(grad: Tensor) -> None:
            scaler.factor = grad
            with torch.enable_grad():  # autograd runs hooks with grad mode off
                cache.backward()

        value.register_hook(replay)
        return value

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}
