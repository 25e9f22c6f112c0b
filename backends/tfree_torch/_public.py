"""The public functions of ``tfree_torch``: the core's surface over the torch runtime."""

from tfree_core.engine import build

from ._runtime import RUNTIME

info_nce, nt_xent, sup_con, loss_from_similarity, logits = build(RUNTIME, "tfree_torch")
