"""A drop-in for open_clip's ``ClipLoss``: the CLIP loss with the temperature-free logit.

    loss = TemperatureFreeClipLoss(local_loss=True, gather_with_grad=True,
                                   rank=args.rank, world_size=args.world_size)  # was ClipLoss(...)
    losses = loss(**model_out, output_dict=True)     # open_clip's training loop, unchanged

``forward(image_features, text_features, logit_scale=None, logit_bias=None,
output_dict=False)`` is ``ClipLoss``'s: the symmetric InfoNCE over the batch, image ``i``
against every text and text ``i`` against every image, the two cross-entropies averaged,

    L = ½ (mean_i [log Σ_j exp ℓ(x_i, y_j) - ℓ(x_i, y_i)]
         + mean_i [log Σ_j exp ℓ(y_i, x_j) - ℓ(y_i, x_i)])

with ``ℓ = 2·atanh(cos)`` instead of ``logit_scale·⟨x, y⟩``: ``tfree_torch.info_nce(image,
text, symmetric=True)`` and its analytic gradient.

The model's ``logit_scale``: the temperature-free logit has no scale, so the loss reads
neither ``logit_scale`` nor ``logit_bias`` and gives them no gradient. Freeze the parameter
before building the optimizer (and before wrapping in DDP, which otherwise reports an unused
parameter): ``model.logit_scale.requires_grad_(False)``. ``logit_map="temperature"`` uses
``1/logit_scale`` as a constant temperature (the value of ``ClipLoss``; still no gradient to
``logit_scale``). A ``logit_bias`` shifts every logit of a row by one constant, which the
softmax cancels: ``ClipLoss``'s value does not depend on it either.

Distributed (``world_size > 1``): every rank's images against every rank's texts and back,
with the exact gradient of the global batch's loss under DDP's averaging (``group=`` of
``info_nce``), whatever ``local_loss`` and ``gather_with_grad`` say; ``ClipLoss`` gets that
gradient only with ``gather_with_grad=True`` (without it, the gathered features carry no
gradient). ``local_loss=False`` (the host's default: every rank computes the global loss)
returns the global loss on every rank, as the host's; ``local_loss=True`` returns this
rank's share, whose mean over the ranks is the global loss. ``use_horovod`` is a
``ValueError``: tfree shards over ``torch.distributed``.

No open_clip import: the module runs wherever torch does.
"""

from __future__ import annotations

import warnings

import torch.distributed as dist
from torch import Tensor, nn

from tfree_core import DEFAULT_EPS

from . import _hosts
from ._public import info_nce

__all__ = ["TemperatureFreeClipLoss"]


def _check_world(rank: object, world_size: object) -> tuple[int, int]:
    for name, value, low in (("rank", rank, 0), ("world_size", world_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if rank >= world_size:  # type: ignore[operator]
        raise ValueError(f"rank must be < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size  # type: ignore[return-value]


class TemperatureFreeClipLoss(nn.Module):
    """open_clip's ``ClipLoss`` with the temperature-free logit ``2·atanh(cos)``.

    Image features ``x`` and text features ``y``, ``(N, D)`` (the global batch when sharded):

        L = ½ (mean_i [log Σ_j exp ℓ(x_i, y_j) - ℓ(x_i, y_i)]
             + mean_i [log Σ_j exp ℓ(y_i, x_j) - ℓ(y_i, x_i)]),   ℓ(x, y) = 2·atanh(cos(x, y))

    ``tfree_torch.info_nce(x, y, symmetric=True)``, its analytic gradient. Under
    ``logit_map="temperature"``, ``ℓ(x, y) = logit_scale·cos(x, y)`` with ``logit_scale`` a
    constant: ``ClipLoss``'s value (``logit_bias`` cancels in the softmax).

    Args:
        local_loss: The host's switch. Sharded, the gradient is exact either way; ``False``
            returns the global loss on every rank (one all-reduce of the value), ``True`` this
            rank's share (their mean is the global loss).
        gather_with_grad: Accepted for the host's signature: the gradient is always that of
            the global batch (the host's ``gather_with_grad=True``).
        cache_labels: Accepted for the host's signature (tfree builds no label tensor).
        rank: This process's rank (the host's), checked against ``torch.distributed``.
        world_size: ``> 1``: shard over ``group`` (default: ``torch.distributed``'s default
            group), as the host gathers over it.
        use_horovod: Must be ``False``.
        logit_map: ``"arctanh"`` (default) or ``"temperature"``: ``logit_scale·cos``, with
            ``logit_scale`` from ``forward`` (or ``1/temperature``), as a constant.
        temperature: Only with ``logit_map="temperature"``: a fixed ``τ`` instead of
            ``1/logit_scale``.
        group: The ``ProcessGroup`` to shard over (instead of the default group).
        eps, chunk_size: As in ``tfree_torch.info_nce``.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False,
                 cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, *, logit_map: str = "arctanh",
                 temperature: float | None = None,
                 group: dist.ProcessGroup | None = None, eps: float = DEFAULT_EPS,
                 chunk_size: int | str | None = "auto") -> None:
        super().__init__()
        self.local_loss = _hosts.check_bool("local_loss", local_loss)
        self.gather_with_grad = _hosts.check_bool("gather_with_grad", gather_with_grad)
        self.cache_labels = _hosts.check_bool("cache_labels", cache_labels)
        self.rank, self.world_size = _check_world(rank, world_size)
        if _hosts.check_bool("use_horovod", use_horovod):
            raise ValueError("use_horovod=True is not supported: the drop-in shards the batch "
                             "over torch.distributed (group=)")
        self.use_horovod = False
        self.logit_map = _hosts.check_logit_map(logit_map)
        if temperature is not None:
            if self.logit_map != "temperature":
                raise ValueError(f"temperature is only used with logit_map='temperature', got "
                                 f"temperature={temperature!r}")
            temperature = _hosts.check_positive("temperature", temperature)
        self.temperature = temperature
        self.group = _hosts.check_group(group)
        self.eps = eps
        self.chunk_size = chunk_size
        self._warned = False

    def _group(self) -> dist.ProcessGroup | None:
        if self.world_size == 1:
            return None
        group = self.group if self.group is not None else _hosts.world_group("world_size > 1")
        if group is None:
            raise RuntimeError(f"world_size={self.world_size} but torch.distributed is not "
                               f"initialised with more than one rank")
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        if (size, rank) != (self.world_size, self.rank):
            raise ValueError(f"rank={self.rank}, world_size={self.world_size} do not match the "
                             f"process group (rank {rank} of {size})")
        return group

    def _tau(self, logit_scale: Tensor | float | None) -> float | None:
        if self.logit_map == "arctanh":
            if isinstance(logit_scale, Tensor) and logit_scale.requires_grad \
                    and not self._warned:
                self._warned = True
                warnings.warn("logit_scale requires grad, but the temperature-free loss does "
                              "not use it (it gets no gradient): freeze it with "
                              "model.logit_scale.requires_grad_(False)", stacklevel=3)
            return None
        if self.temperature is not None:
            return self.temperature
        if logit_scale is None:
            raise ValueError("logit_map='temperature' needs logit_scale (the model's exp'd "
                             "scale, as ClipLoss takes it) or temperature= in the constructor")
        scale = float(logit_scale.detach()) if isinstance(logit_scale, Tensor) \
            else float(logit_scale)
        return 1.0 / _hosts.check_positive("logit_scale", scale)

    def forward(self, image_features: Tensor, text_features: Tensor,
                logit_scale: Tensor | float | None = None, logit_bias: Tensor | None = None,
                output_dict: bool = False) -> Tensor | dict[str, Tensor]:
        group = self._group()
        loss = info_nce(image_features, text_features, symmetric=True,
                        logit_map=self.logit_map, temperature=self._tau(logit_scale),
                        eps=self.eps, chunk_size=self.chunk_size, group=group)
        if group is not None and not self.local_loss:
            total = loss.detach().clone()
            dist.all_reduce(total, group=group)
            # the value: the global loss (the host's); the gradient: this rank's share's
            loss = loss + (total / self.world_size - loss.detach())
        return {"contrastive_loss": loss} if output_dict else loss
