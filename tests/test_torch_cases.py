"""Helpers shared by the ``test_torch_*`` modules (no tests here): the core's test cases
(``cases.py``) run through ``tfree_torch``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tfree_torch  # noqa: E402
from cases import Case, make_cases  # noqa: E402

__all__ = ["Case", "cases", "torch_call", "torch_extra", "torch_inputs"]


def cases(seed: int = 20250129, n: int = 5, d: int = 4) -> list[Case]:
    return make_cases(np.random.default_rng(seed), n=n, d=d)


def torch_inputs(
    case: Case, dtype: torch.dtype = torch.float64, device: str = "cpu", grad: bool = True
) -> list[torch.Tensor]:
    return [
        torch.tensor(v, dtype=torch.float64, device=device).to(dtype).requires_grad_(grad)
        for v in case.inputs.values()
    ]


def torch_extra(case: Case, device: str = "cpu") -> dict[str, Any]:
    return {
        k: torch.as_tensor(v, device=device) if isinstance(v, np.ndarray) else v
        for k, v in case.extra.items()
    }


def torch_call(case: Case, tensors: list[torch.Tensor], **options: Any) -> torch.Tensor:
    """``tfree_torch.<function>`` on the case, differentiable inputs given as tensors."""
    fn = getattr(tfree_torch, case.loss.__name__)
    device = str(tensors[0].device)
    return fn(**dict(zip(case.inputs, tensors, strict=True)), **torch_extra(case, device),
              **options)
