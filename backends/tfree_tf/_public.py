"""The public functions of ``tfree_tf``: the core's surface over the TensorFlow runtime.

Called from a function AutoGraph converts (a ``tf.function``, a Keras train step, the
replica function of ``strategy.run``), the losses' Python validation would be rewritten
into graph control flow; they have no tensor-dependent control flow, so they opt out of
conversion."""

import tensorflow as tf

from tfree_core.engine import build

from ._runtime import RUNTIME

info_nce, nt_xent, sup_con, loss_from_similarity, logits = map(
    tf.autograph.experimental.do_not_convert, build(RUNTIME, "tfree_tf"))
