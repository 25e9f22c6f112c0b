"""tfree for Keras 3: the temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683)
as one ``keras.losses.Loss`` for every Keras backend.

The logit of a cosine similarity ``s`` is ``φ(s) = 2·atanh(s) = log((1+s)/(1-s))`` instead
of ``s/τ``: no temperature to tune. ``TemperatureFreeLoss`` computes with the tfree
package of the backend Keras runs on (``KERAS_BACKEND=tensorflow`` / ``jax`` / ``torch``:
``tfree_tf`` / ``tfree_jax`` / ``tfree_torch``), each with tfree's analytic gradient, so a
model trains unchanged when the backend changes:

```python
import keras
import tfree_keras

model = keras.Sequential([keras.Input((2, 32)), keras.layers.Dense(16)])  # two views
model.compile(optimizer="adam", loss=tfree_keras.TemperatureFreeLoss("nt_xent"))
```

Importing this package imports Keras (and so its backend's framework), never another
framework; the backend's tfree package is imported at the loss's first call.
"""

from tfree_core import DEFAULT_EPS, __version__

from . import _backends, _layouts
from ._loss import TemperatureFreeLoss

LAYOUTS = tuple(_layouts.LAYOUTS)
"""The loss's layouts, the values of ``TemperatureFreeLoss(layout=...)``: ``"nt_xent"``,
``"info_nce"``, ``"sup_con"``, ``"retrieval"``."""
BACKENDS = tuple(_backends.BACKENDS)
"""The Keras backends the loss runs on (``keras.backend.backend()``): ``"tensorflow"``,
``"jax"`` and ``"torch"`` with their tfree package's gradient, ``"numpy"`` for evaluation
only."""

__all__ = ["BACKENDS", "DEFAULT_EPS", "LAYOUTS", "TemperatureFreeLoss", "__version__"]
