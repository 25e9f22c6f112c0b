"""What the drop-ins for other libraries share: argument checks and the default process group.

Each drop-in (``tfree_torch.sentence_transformers``, ``tfree_torch.open_clip``,
``tfree_torch.lightly``) keeps its host's constructor and ``forward`` and maps the host's
switches onto ``tfree_torch``'s public functions; these helpers check the few arguments they
all take, with messages that name the argument.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

LOGIT_MAPS = ("arctanh", "temperature")


def check_logit_map(logit_map: object) -> str:
    if logit_map not in LOGIT_MAPS:
        raise ValueError(f"logit_map must be 'arctanh' (temperature-free) or 'temperature' (the "
                         f"host's s/τ, for comparisons), got {logit_map!r}")
    return logit_map  # type: ignore[return-value]


def check_positive(name: str, value: object) -> float:
    """A positive Python number (a temperature or a scale: a constant, not a tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def world_group(name: str) -> dist.ProcessGroup | None:
    """The default process group when ``torch.distributed`` runs on more than one rank, else
    ``None`` (one process: nothing to gather), as the hosts' own gathers behave."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size() == 1:
        return None
    group = dist.group.WORLD
    if group is None:  # pragma: no cover - initialised without a default group
        raise RuntimeError(f"{name}=True but torch.distributed has no default process group")
    return group


def check_group(group: object) -> dist.ProcessGroup | None:
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup or None, got "
                        f"{type(group).__name__}")
    return group


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (what the hosts store in a memory bank)."""
    return torch.nn.functional.normalize(x, dim=1)
