"""The public functions of ``tfree_jax``: the core's surface over the JAX runtime."""

from tfree_core.engine import build

from ._runtime import RUNTIME

info_nce, nt_xent, sup_con, loss_from_similarity, logits = build(RUNTIME, "tfree_jax")
