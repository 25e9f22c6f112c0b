"""``tfree_tf.TemperatureFreeLoss``: the Keras 3 loss, which lives in :mod:`tfree_keras`
(one class for every Keras backend; on TensorFlow it computes with ``tfree_tf``). This
module keeps the old import path, and so models saved with it load (the class is
registered once, as ``"tfree>TemperatureFreeLoss"``)."""

from tfree_keras import TemperatureFreeLoss

__all__ = ["TemperatureFreeLoss"]
