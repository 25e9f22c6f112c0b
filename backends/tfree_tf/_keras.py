"""``TemperatureFreeLoss``: the temperature-free contrastive loss as a Keras 3 loss
(TensorFlow backend), for ``model.compile(loss=...)`` and ``model.fit``."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfree_core import DEFAULT_EPS, engine

from ._public import info_nce, nt_xent, sup_con

Tensor = tf.Tensor

__all__ = ["TemperatureFreeLoss"]

LAYOUTS = ("nt_xent", "info_nce", "sup_con")


@keras.saving.register_keras_serializable(package="tfree")
class TemperatureFreeLoss(keras.losses.Loss):
    """The temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683) for Keras.

    The logit of a cosine similarity ``s`` is ``φ(s) = 2·atanh(clip(s, -b, b))`` instead of
    ``s/τ``; per anchor ``i`` with candidates ``C(i)`` and positives ``P(i)``::

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)]

    and the loss is the mean of ``L_i`` over the anchors that have a positive (SPEC §2.7),
    with the analytic gradient of SPEC §2 (see :func:`tfree_tf.info_nce` and friends).

    What ``y_pred`` and ``y_true`` hold depends on ``layout``:

    ==============  ==============================================  =========================
    layout          ``y_pred``                                      ``y_true``
    ==============  ==============================================  =========================
    ``"nt_xent"``   ``(N, 2, D)``: the two views, ``y_pred[:, 0]``  ignored (pass anything,
                    and ``y_pred[:, 1]`` (SimCLR)                   e.g. zeros ``(N,)``)
    ``"info_nce"``  ``(N, 2, D)``: ``(query, key)`` pairs           ignored, or the labels
                    (CLIP with ``symmetric=True``)                  with ``use_labels=True``
    ``"sup_con"``   ``(N, D)`` or ``(N, V, D)`` (``V`` views)       integer labels ``(N,)``
                                                                    or ``(N, 1)``
    ==============  ==============================================  =========================

    A model emitting two views stacks them on axis 1: ``keras.ops.stack([z1, z2], axis=1)``.
    Labels given as floats (Keras' default for targets) are cast to ``int64``.

    Reductions are SPEC's, not Keras': ``reduction="mean"`` (default) averages over the
    anchors that have a positive, ``"sum"`` sums, ``"none"`` returns the per-anchor losses
    (``(2N,)`` for NT-Xent, ``(N,)`` or ``(N, V)`` for SupCon, ``(N,)`` for InfoNCE). Keras
    applies no reduction of its own on top (``__call__`` returns the loss as computed).

    ``sample_weight`` is not supported (a per-sample weight has no single meaning for a
    loss whose terms couple every pair of the batch): passing one, or ``class_weight`` to
    ``fit``, raises ``ValueError``. Mask rows with ``tfree_tf.*(..., where=...)`` in a custom
    ``train_step`` instead.

    ``y_pred`` keeps its dtype (float16 / bfloat16 / float32 / float64; the loss computes
    in float32, or float64 for float64), and the result is cast to the loss's Keras
    ``dtype`` (``keras.backend.floatx()`` by default).

    The core needs static shapes. ``model.fit`` traces its step again with an unknown batch
    dimension when the last batch is smaller; the loss then pads the batch to a static size
    ``B`` with rows masked out (SPEC §2.8's ``where``: neither anchors nor candidates, so the
    value and the gradients are those of the unpadded batch). ``B`` is ``max_batch_size``,
    or else the largest batch size this loss object has seen in an earlier trace (the full
    batches of the same ``fit``); a batch larger than ``B`` fails at run time.

    Args:
        layout: ``"nt_xent"`` (default), ``"info_nce"`` or ``"sup_con"``.
        symmetric: ``info_nce`` only: ``½(L_q→k + L_k→q)`` (CLIP).
        use_labels: ``info_nce`` only: ``y_true`` holds labels and keys of the query's
            label are positives.
        logit_map, temperature, eps, reduction, chunk_size: as in
            :func:`tfree_tf.info_nce` (``chunk_size`` tiles large batches).
        check_finite: ``True``: reject NaN and ±inf in ``y_pred`` (``ValueError``). Eager
            only: compile the model with ``run_eagerly=True``; in Keras' traced ``fit`` it
            is a ``ValueError`` at trace time, never a silent skip.
        max_batch_size: the static size ``B`` batches of unknown size are padded to
            (default: the largest batch size seen so far).
        name, dtype: as in ``keras.losses.Loss``.
    """

    def __init__(
        self,
        layout: str = "nt_xent",
        *,
        symmetric: bool = False,
        use_labels: bool = False,
        logit_map: str = "arctanh",
        temperature: float | None = None,
        eps: float = DEFAULT_EPS,
        reduction: str = "mean",
        chunk_size: int | str | None = "auto",
        check_finite: bool = False,
        max_batch_size: int | None = None,
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
        if layout != "info_nce" and (symmetric or use_labels):
            raise ValueError(
                f"symmetric and use_labels apply to layout='info_nce' only; got layout={layout!r}"
                f" with symmetric={symmetric!r}, use_labels={use_labels!r}"
            )
        if max_batch_size is not None and (
            isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
            or max_batch_size < 1
        ):
            raise ValueError(
                f"max_batch_size must be a positive int or None; got {max_batch_size!r}"
            )
        # Validates logit_map / temperature / eps / reduction now, not at the first batch.
        engine.make_options(
            logit_map=logit_map, temperature=temperature, eps=eps, reduction=reduction
        )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.layout = layout
        self.symmetric = bool(symmetric)
        self.use_labels = bool(use_labels)
        self.logit_map = logit_map
        self.temperature = temperature
        self.eps = eps
        self.chunk_size = engine.check_chunk_size(chunk_size)
        engine.check_flag("check_finite", check_finite)
        self.check_finite = bool(check_finite)
        self.max_batch_size = max_batch_size
        self._dtype_argument = dtype
        self._largest_batch = 0  # the largest static batch size traced so far

    # The options every call shares.
    def _options(self) -> dict[str, Any]:
        return {"logit_map": self.logit_map, "temperature": self.temperature, "eps": self.eps,
                "reduction": self.reduction, "chunk_size": self.chunk_size,
                "check_finite": self.check_finite}

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Tensor:
        """The loss, reduced by SPEC's ``reduction`` only, cast to ``self.dtype``."""
        if sample_weight is not None:
            raise ValueError(
                "TemperatureFreeLoss does not support sample_weight (nor fit's class_weight): "
                "every term of a contrastive loss couples two samples of the batch. Use "
                "tfree_tf's functions with where= to drop rows instead."
            )
        with tf.name_scope(self.name):
            loss = self.call(y_true, tf.convert_to_tensor(y_pred))
            return tf.cast(loss, self.dtype)

    def call(self, y_true: Any, y_pred: Tensor) -> Tensor:
        """Split ``y_pred`` (and read labels from ``y_true``) per ``layout``; see the class.

        A batch of unknown size ``n`` is padded to the static size ``B`` with masked rows,
        and a ``"none"`` result is cut back to the ``n`` real anchors.
        """
        self._check_shape(y_pred)
        labels = None
        if self.layout == "sup_con" or self.use_labels:
            labels = self._labels(y_true)
        n_static = y_pred.shape[0]
        if n_static is not None:
            self._largest_batch = max(self._largest_batch, int(n_static))
            return self._loss(y_pred, labels, None)
        size = self.max_batch_size or self._largest_batch
        if not size:
            raise ValueError(
                "TemperatureFreeLoss got a batch of unknown size and knows no static size to "
                "pad it to: pass max_batch_size=, or give the model batches of static shape"
            )
        n = tf.shape(y_pred)[0]
        padding = tf.maximum(size - n, 0)
        paddings = [[0, padding]] + [[0, 0]] * (y_pred.shape.rank - 1)
        y_pred = tf.ensure_shape(tf.pad(y_pred, paddings), [size, *y_pred.shape[1:]])
        if labels is not None:
            labels = tf.ensure_shape(tf.pad(labels, [[0, padding]]), [size])
        where = tf.range(size) < n
        loss = self._loss(y_pred, labels, where)
        if self.reduction != "none":
            return loss
        if self.layout == "nt_xent":  # (2B,): the z1 anchors first, then the z2 anchors
            return tf.concat([loss[:n], loss[size:size + n]], axis=0)
        return loss[:n]

    def _check_shape(self, y_pred: Tensor) -> None:
        rank = y_pred.shape.rank
        if self.layout == "sup_con":
            if rank not in (2, 3):
                raise ValueError(
                    "layout='sup_con' needs y_pred of shape (N, D) or (N, V, D); "
                    f"got {y_pred.shape}"
                )
        elif rank != 3 or y_pred.shape[1] != 2:
            raise ValueError(
                f"layout={self.layout!r} needs y_pred of shape (N, 2, D), the two views "
                f"stacked on axis 1 (keras.ops.stack([a, b], axis=1)); got {y_pred.shape}"
            )

    def _loss(self, y_pred: Tensor, labels: Tensor | None, where: Tensor | None) -> Tensor:
        """The functional loss of ``layout`` on a batch of static size."""
        options = self._options()
        if self.layout == "sup_con":
            return sup_con(y_pred, labels, where=where, **options)
        first, second = y_pred[:, 0, :], y_pred[:, 1, :]
        if self.layout == "nt_xent":
            return nt_xent(first, second, where=where, **options)
        return info_nce(first, second, labels=labels, symmetric=self.symmetric, where=where,
                        **options)

    @staticmethod
    def _labels(y_true: Any) -> Tensor:
        """``y_true`` as ``int64`` labels of shape ``(N,)`` (``(N, 1)`` is squeezed)."""
        if y_true is None:
            raise ValueError("this layout needs y_true: integer labels of shape (N,)")
        labels = tf.convert_to_tensor(y_true)
        if labels.shape.rank == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape.rank != 1:
            raise ValueError(f"y_true must hold labels of shape (N,) or (N, 1); got {labels.shape}")
        if labels.dtype.is_floating:
            labels = tf.round(labels)
        return labels if labels.dtype == tf.int64 else tf.cast(labels, tf.int64)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            layout=self.layout,
            symmetric=self.symmetric,
            use_labels=self.use_labels,
            logit_map=self.logit_map,
            temperature=self.temperature,
            eps=self.eps,
            chunk_size=self.chunk_size,
            check_finite=self.check_finite,
            max_batch_size=self.max_batch_size,
            dtype=self._serialised_dtype(),
        )
        return config

    def _serialised_dtype(self) -> Any:
        dtype = self._dtype_argument
        if dtype is None or isinstance(dtype, str):
            return dtype
        return keras.dtype_policies.serialize(dtype)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TemperatureFreeLoss:
        config = dict(config)
        dtype = config.get("dtype")
        if isinstance(dtype, dict):
            config["dtype"] = keras.dtype_policies.deserialize(dtype)
        return cls(**config)
