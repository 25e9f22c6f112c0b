"""tfree for TensorFlow: the temperature-free contrastive loss (Kim & Kim,
arXiv:2501.17683) as TF functions with the core's analytic gradient
(``tf.custom_gradient``), and as a Keras 3 loss.

The logit of a cosine similarity ``s`` is ``φ(s) = 2·atanh(s) = log((1+s)/(1-s))`` instead
of ``s/τ``: no temperature to tune. Every function works eagerly, under ``tf.function`` and
``tf.function(jit_compile=True)``, with float16 / bfloat16 / float32 / float64 inputs; when
traced, the core runs as XLA-compiled functions (``set_jit_core``). The Keras loss is
``tfree_keras.TemperatureFreeLoss``, also reachable as ``tfree_tf.TemperatureFreeLoss``:

```python
import tensorflow as tf
import tfree_tf

q = tf.Variable(tf.random.normal((8, 16), seed=1))
k = tf.Variable(tf.random.normal((8, 16), seed=2))
with tf.GradientTape() as tape:
    loss = tfree_tf.info_nce(q, k)
dq, dk = tape.gradient(loss, [q, k])
```
"""

from ._cached import cached_value_and_grad
from ._public import info_nce, logits, loss_from_similarity, nt_xent, sup_con
from ._runtime import set_jit_core

__all__ = [
    "TemperatureFreeLoss",
    "cached_value_and_grad",
    "info_nce",
    "logits",
    "loss_from_similarity",
    "nt_xent",
    "set_jit_core",
    "sup_con",
]

try:
    from ._keras import TemperatureFreeLoss
except ImportError as _err:  # keras absent: the functions still work
    _KERAS_ERROR = _err

    def __getattr__(name: str):
        if name == "TemperatureFreeLoss":
            raise ImportError(
                "tfree_tf.TemperatureFreeLoss needs Keras 3 (pip install 'tfree[tensorflow]')"
            ) from _KERAS_ERROR
        raise AttributeError(f"module 'tfree_tf' has no attribute {name!r}")
