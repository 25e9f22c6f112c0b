"""tfree for JAX: the temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683) as
pure functions in the optax style, with the core's analytic gradient (``jax.custom_vjp``).

The logit of a cosine similarity ``s`` is ``φ(s) = 2·atanh(s) = log((1+s)/(1-s))`` instead
of ``s/τ``: no temperature to tune. Every function composes with ``jax.jit``,
``jax.grad`` / ``jax.value_and_grad`` and ``jax.vmap``; hyper-parameters are static Python
values, labels and masks ordinary (non-differentiable) array arguments:

```python
import jax
import tfree_jax

q, k = jax.random.normal(jax.random.key(0), (2, 8, 16))
loss, (dq, dk) = jax.value_and_grad(tfree_jax.info_nce, argnums=(0, 1))(q, k)
```
"""

from ._cached import cached_value_and_grad
from ._public import info_nce, logits, loss_from_similarity, nt_xent, sup_con
from ._runtime import ForwardModeError

__all__ = ["ForwardModeError", "info_nce", "logits", "loss_from_similarity", "nt_xent", "sup_con"]
__all__ += ["cached_value_and_grad"]
