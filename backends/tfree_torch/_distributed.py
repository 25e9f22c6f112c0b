"""Data-parallel losses on ``torch.distributed``: the ``group=`` keyword of the public
functions.

Each rank passes its local embeddings; the loss gathers the candidates over the process
group (NCCL on GPUs, Gloo on CPUs), evaluates the rows of its own anchors against them
(``engine.forward`` with these :class:`TorchCollectives`) and, on the backward, returns
exact gradients for the local inputs (the candidate gradients of every rank summed and
scattered back to their owner).

The value on each rank is scaled so that the *average over ranks* is the single-device
loss on the concatenated batch (ranks in group-rank order), and each rank's gradient is
``∂(Σ_ranks loss_r)/∂x_r``: averaging the parameter gradients over ranks, as
``DistributedDataParallel`` does, gives exactly the single-device gradient.

With ``kernel="fused"`` each rank runs the Triton kernels (``_triton``) on its local anchor
rows against the gathered candidates: same collectives, same values, no ``n × W·n``
array. ``kernel="auto"`` stays on the portable block loop here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["TorchCollectives", "check_group", "world_size"]


class TorchCollectives:
    """``engine.Collectives`` over one ``torch.distributed`` process group.

    ``reduce_scatter_sum`` is ``reduce_scatter_tensor`` on NCCL; Gloo has no
    reduce-scatter, so there it is an ``all_reduce`` followed by this rank's slice (twice
    the traffic of a reduce-scatter, on a ``W·n × D`` array). ``log`` records
    ``(operation, bytes of the local input)`` of every call, for the benchmark.
    """

    def __init__(self, group: Any) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.nccl = dist.get_backend(group) == "nccl"
        self.log: list[tuple[str, int]] = []

    def _record(self, name: str, x: torch.Tensor) -> None:
        self.log.append((name, x.numel() * x.element_size()))

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        self._record("all_gather", x)
        x = x.contiguous()
        if self.nccl:
            out = x.new_empty((self.world_size * x.shape[0], *x.shape[1:]))
            dist.all_gather_into_tensor(out, x, group=self.group)
            return out
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=0)

    def _all_reduce(self, x: torch.Tensor, op: Any) -> torch.Tensor:
        out = x.clone().contiguous()  # collectives work in place: never on a residual
        dist.all_reduce(out, op=op, group=self.group)
        return out

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        self._record("all_reduce_sum", x)
        return self._all_reduce(x, dist.ReduceOp.SUM)

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        self._record("all_reduce_max", x)
        return self._all_reduce(x, dist.ReduceOp.MAX)

    def reduce_scatter_sum(self, x: torch.Tensor) -> torch.Tensor:
        self._record("reduce_scatter_sum", x)
        m = x.shape[0] // self.world_size
        if self.nccl:
            out = x.new_empty((m, *x.shape[1:]))
            dist.reduce_scatter_tensor(out, x.contiguous(), group=self.group)
            return out
        total = self._all_reduce(x, dist.ReduceOp.SUM)
        return total[self.rank * m:(self.rank + 1) * m].contiguous()


def world_size(group: Any) -> int:
    """The number of ranks of ``group``; 1 for anything that is not a usable process group
    (:func:`check_group` then raises, after the inputs have been validated)."""
    usable = (dist.is_available() and dist.is_initialized()
              and isinstance(group, dist.ProcessGroup))
    return int(dist.get_world_size(group)) if usable else 1


def check_group(group: Any) -> None:
    """``TypeError`` unless ``group`` is a ``torch.distributed`` process group of an
    initialised default group; ``RuntimeError`` under ``torch.compile`` (eager only)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "group= needs an initialised torch.distributed (torch.distributed."
            "init_process_group(...)); pass group=None for a single-device loss"
        )
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            "group must be a torch.distributed.ProcessGroup (e.g. torch.distributed.group."
            f"WORLD or torch.distributed.new_group(...)) or None; got {type(group).__name__}"
        )
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "tfree_torch: group= runs eagerly (it calls torch.distributed collectives in "
            "the forward and the backward); call the loss outside torch.compile"
        )
