"""tfree for PyTorch: the temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683).

The logit of a cosine similarity ``s`` is ``φ(s) = log((1+s)/(1-s)) = 2·atanh(s)`` (clipped
to ``[-b, b]``, ``b ≈ 1 - 1e-6``) instead of ``s/τ``: no temperature to tune. The loss and
its analytic gradient come from ``tfree_core``; this package wires them into torch's
autograd (CPU and CUDA, float16 / bfloat16 / float32 / float64, ``torch.autocast``,
``torch.compile(fullgraph=True)``, ``torch.func.grad`` / ``vmap``, ``torch.distributed``).

```python
import torch
import tfree_torch

q, k = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
loss = tfree_torch.info_nce(q, k)
loss.backward()
```
"""

from tfree_core import DEFAULT_EPS, __version__

from ._cached import CachedLoss, cached_loss
from ._module import LAYOUTS, TemperatureFreeLoss
from ._public import info_nce, logits, loss_from_similarity, nt_xent, sup_con

__all__ = [
    "DEFAULT_EPS",
    "LAYOUTS",
    "CachedLoss",
    "TemperatureFreeLoss",
    "__version__",
    "cached_loss",
    "info_nce",
    "logits",
    "loss_from_similarity",
    "nt_xent",
    "sup_con",
]
