"""A drop-in for lightly's ``NTXentLoss`` (SimCLR, and MoCo with ``memory_bank_size``).

    criterion = TemperatureFreeNTXentLoss()                                  # SimCLR
    criterion = TemperatureFreeNTXentLoss(memory_bank_size=(4096, 128))      # MoCo
    loss = criterion(out0, out1)                  # lightly's forward, unchanged

Without a bank (``memory_bank_size=0``): NT-Xent over the ``2N`` views, each against the
other ``2N - 1``, its positive the other view of its image, the mean over the ``2N``
anchors: ``tfree_torch.nt_xent(out0, out1)``.

With a bank of ``(num_features, dim)``: lightly's MoCo semantics, kept exactly:

- the bank starts as ``num_features`` random unit vectors (``torch.randn``, normalised:
  the same draws as lightly's for the same seed) and is a FIFO of past ``out1`` rows,
  normalised and detached, written at a pointer; a batch that reaches the end fills the
  bank's tail and the pointer returns to 0 (the batch's remaining rows are not stored);
- each call scores ``out0`` against its own ``out1`` (the positive) and the bank as it was
  *before* this batch is written: ``tfree_torch.info_nce(out0, out1, negatives=bank)``,
  ``L = mean_i [log(exp ℓ(q_i, k_i) + Σ_m exp ℓ(q_i, b_m)) - ℓ(q_i, k_i)]``, the bank a
  constant (no gradient);
- the bank is written only when ``out0.requires_grad`` (a training step), so evaluation
  leaves it unchanged; with ``gather_distributed`` every rank writes the all-gathered
  ``out1`` of the step (rank order), and the loss stays local, as lightly's.

``ℓ = 2·atanh(cos)``: no temperature. ``logit_map="temperature"`` gives lightly's ``cos/τ``
and its value (``temperature``, default 0.5 as lightly's). ``gather_distributed`` without a
bank: every rank's anchors against every rank's views (``group=``), the exact gradient of
the global batch's loss under DDP's averaging; each rank's value is scaled so that their
mean is the global loss.

No lightly import: the module runs wherever torch does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tfree_core import DEFAULT_EPS

from . import _hosts
from ._public import info_nce, nt_xent

__all__ = ["TemperatureFreeNTXentLoss"]


def _bank_size(size: object) -> tuple[int, ...]:
    """lightly 1.6's rule: ``0`` (no bank) or ``(num_features, dim)``."""
    sizes = (size,) if isinstance(size, int) else tuple(size)  # type: ignore[arg-type]
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes):
        raise ValueError(f"memory_bank_size must be 0 or (num_features, dim) of non-negative "
                         f"ints, got {size!r}")
    if isinstance(size, int) and size > 0:
        raise ValueError(f"memory_bank_size={size} does not give the feature dimension: pass "
                         f"(num_features, dim), e.g. ({size}, 128), or 0 for no bank")
    if sizes != (0,) and len(sizes) != 2:
        raise ValueError(f"memory_bank_size must be 0 or (num_features, dim), got {size!r}")
    return sizes


class MemoryBank(nn.Module):
    """lightly's ``MemoryBankModule`` (``feature_dim_first=False``): a FIFO of ``size[0]``
    detached rows, initialised to random unit vectors, in non-persistent buffers ``bank``
    and ``bank_ptr``."""

    def __init__(self, size: int | Sequence[int], gather_distributed: bool = False) -> None:
        super().__init__()
        self.size = _bank_size(size)
        self.gather_distributed = gather_distributed
        self.bank: Tensor
        self.bank_ptr: Tensor
        self.register_buffer("bank", torch.empty(self.size, dtype=torch.float),
                             persistent=False)
        self.register_buffer("bank_ptr", torch.empty(1, dtype=torch.long), persistent=False)
        if self.enabled:
            with torch.no_grad():
                self.bank = _hosts.unit_rows(torch.randn(self.size).type_as(self.bank))
                self.bank_ptr = torch.zeros(1).type_as(self.bank_ptr)

    @property
    def enabled(self) -> bool:
        return self.size[0] > 0

    def negatives(self) -> Tensor:
        """The bank's rows now, ``(num_features, dim)``, detached."""
        return self.bank.clone().detach()

    @torch.no_grad()
    def enqueue(self, batch: Tensor) -> None:
        """Write ``batch`` (all ranks' with ``gather_distributed``) at the pointer."""
        group = _hosts.world_group("gather_distributed") if self.gather_distributed else None
        if group is not None:
            parts = [torch.empty_like(batch) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, batch.contiguous(), group=group)
            batch = torch.cat(parts)
        n, ptr = batch.shape[0], int(self.bank_ptr)
        if ptr + n >= self.size[0]:
            self.bank[ptr:] = batch[: self.size[0] - ptr].detach()
            self.bank_ptr.zero_()
        else:
            self.bank[ptr:ptr + n] = batch.detach()
            self.bank_ptr[0] = ptr + n


class TemperatureFreeNTXentLoss(nn.Module):
    """lightly's ``NTXentLoss(temperature, memory_bank_size, gather_distributed)`` with the
    temperature-free logit ``2·atanh(cos)``.

    ``ℓ(x, y) = 2·atanh(cos(x, y))`` (``cos(x, y)/τ`` under ``logit_map="temperature"``).
    Without a bank, NT-Xent over the ``2N`` views ``z = (out0, out1)``, ``p(a)`` the other view
    of anchor ``a``'s image:

        L = mean_a [log Σ_{c ≠ a} exp ℓ(z_a, z_c) - ℓ(z_a, z_{p(a)})]

    (``tfree_torch.nt_xent``). With a bank ``B`` (as it was before this batch is written, a
    constant), MoCo's loss of ``q = out0``, ``k = out1``:

        L = mean_i [log(exp ℓ(q_i, k_i) + Σ_m exp ℓ(q_i, B_m)) - ℓ(q_i, k_i)]

    (``tfree_torch.info_nce(q, k, negatives=B)``).

    Args:
        temperature: Only with ``logit_map="temperature"`` (default there 0.5, lightly's);
            the temperature-free map has none (a ``ValueError`` names it).
        memory_bank_size: ``0`` (SimCLR: in-batch negatives) or ``(num_features, dim)``
            (MoCo: the bank's rows are the negatives).
        gather_distributed: No bank: shard the batch over ``torch.distributed``'s default
            group (``group=``). With a bank: write every rank's ``out1`` into it.
        logit_map: ``"arctanh"`` (default) or ``"temperature"`` (lightly's ``cos/τ``).
        group: A ``ProcessGroup`` to shard over instead of the default one (no bank).
        eps, chunk_size: As in ``tfree_torch.nt_xent`` / ``info_nce``.
    """

    def __init__(self, temperature: float | None = None,
                 memory_bank_size: int | Sequence[int] = 0, gather_distributed: bool = False,
                 *, logit_map: str = "arctanh", group: dist.ProcessGroup | None = None,
                 eps: float = DEFAULT_EPS, chunk_size: int | str | None = "auto") -> None:
        super().__init__()
        self.logit_map = _hosts.check_logit_map(logit_map)
        if self.logit_map == "arctanh" and temperature is not None:
            raise ValueError(f"temperature is only used with logit_map='temperature' (the "
                             f"temperature-free logit 2·atanh(cos) has none), got "
                             f"temperature={temperature!r}")
        self.temperature = None if self.logit_map == "arctanh" else _hosts.check_positive(
            "temperature", 0.5 if temperature is None else temperature)
        self.gather_distributed = _hosts.check_bool("gather_distributed", gather_distributed)
        if gather_distributed and not dist.is_available():
            raise ValueError("gather_distributed=True but torch.distributed is not available")
        self.group = _hosts.check_group(group)
        self.memory_bank = MemoryBank(memory_bank_size, gather_distributed)
        if self.memory_bank.enabled and group is not None:
            raise ValueError("group= shards the in-batch loss; with memory_bank_size the loss "
                             "is per rank (MoCo): use gather_distributed=True to share the "
                             "bank's writes")
        self.eps = eps
        self.chunk_size = chunk_size

    def _group(self) -> dist.ProcessGroup | None:
        if self.group is not None:
            return self.group
        return _hosts.world_group("gather_distributed") if self.gather_distributed else None

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        options = {"logit_map": self.logit_map, "temperature": self.temperature,
                   "eps": self.eps, "chunk_size": self.chunk_size}
        if not self.memory_bank.enabled:
            return nt_xent(out0, out1, group=self._group(), **options)
        negatives = self.memory_bank.negatives().to(device=out0.device, dtype=out0.dtype)
        if out0.requires_grad:
            self.memory_bank.enqueue(_hosts.unit_rows(out1.detach()))
        return info_nce(out0, out1, negatives=negatives, **options)
