"""tfree: the temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683).

The loss maps a cosine similarity ``s`` to the logit ``φ(s) = 2·atanh(s)`` instead of
``s/τ``, so there is no temperature to tune. This package is the canonical implementation,
written once against the Python Array API standard; ``tfree_torch``, ``tfree_jax`` and
``tfree_tf`` wire it into each framework. Importing it imports no deep-learning framework.

Every loss has a ``*_value_and_grad`` twin that returns the analytic gradient as well:

```python
import numpy as np
import tfree_core

rng = np.random.default_rng(0)
query, key = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
loss, (d_query, d_key) = tfree_core.info_nce_value_and_grad(query, key)
```
"""

from ._api import (
    info_nce,
    info_nce_value_and_grad,
    logits,
    loss_from_similarity,
    loss_from_similarity_value_and_grad,
    nt_xent,
    nt_xent_value_and_grad,
    sup_con,
    sup_con_value_and_grad,
)
from ._options import DEFAULT_EPS, clip_bound
from ._version import __version__

__all__ = [
    "DEFAULT_EPS",
    "__version__",
    "clip_bound",
    "info_nce",
    "info_nce_value_and_grad",
    "logits",
    "loss_from_similarity",
    "loss_from_similarity_value_and_grad",
    "nt_xent",
    "nt_xent_value_and_grad",
    "sup_con",
    "sup_con_value_and_grad",
]
