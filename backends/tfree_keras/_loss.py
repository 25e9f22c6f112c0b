"""``TemperatureFreeLoss``: the temperature-free contrastive loss as a Keras 3 loss on every
backend Keras runs on (TensorFlow, JAX, PyTorch; NumPy for evaluation)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfree_core import DEFAULT_EPS, engine

from . import _arguments as check
from . import _backends, _layouts
from ._weights import as_weights, reduce_weighted

__all__ = ["TemperatureFreeLoss"]

Tensor = Any  # a tensor of the running Keras backend


@keras.saving.register_keras_serializable(package="tfree")
class TemperatureFreeLoss(keras.losses.Loss):
    """The temperature-free contrastive loss (Kim & Kim, arXiv:2501.17683) for Keras 3.

    The logit of a cosine similarity ``s`` is ``φ(s) = 2·atanh(clip(s, -b, b))`` instead of
    ``s/τ``; per anchor ``i`` with candidates ``C(i)`` and positives ``P(i)``:

        L_i = -(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip - log Σ_{j∈C(i)} exp(ℓ_ij)]

    and the loss is the mean of ``L_i`` over the anchors that have a positive (SPEC §2.7),
    with the analytic gradient of SPEC §2.

    **Backends.** The loss computes with the tfree package of the backend Keras runs on
    (``keras.backend.backend()``, set by ``KERAS_BACKEND`` before the first ``import
    keras``): ``tfree_tf`` on TensorFlow, ``tfree_jax`` on JAX, ``tfree_torch`` on PyTorch
    (``tfree_core`` on Keras' NumPy backend, which only evaluates). Each keeps tfree's
    analytic gradient in its framework's autodiff, so ``model.fit`` works unchanged when
    ``KERAS_BACKEND`` changes, with ``jit_compile`` (XLA on TensorFlow, ``jax.jit``,
    ``torch.compile``). A backend whose package cannot be imported is an ``ImportError``
    naming it and the pip extra. ``tfree_tf.TemperatureFreeLoss`` is this class.

    What ``y_pred`` and ``y_true`` hold depends on ``layout``:

    | layout | ``y_pred`` | ``y_true`` |
    |---|---|---|
    | ``"nt_xent"`` | ``(N, 2, D)``: two views (SimCLR) | ignored (e.g. zeros ``(N,)``) |
    | ``"info_nce"`` | ``(N, 2, D)``: ``(query, key)`` pairs | ignored, or labels (``use_labels``) |
    | ``"sup_con"`` | ``(N, D)`` or ``(N, V, D)`` | integer labels ``(N,)`` or ``(N, 1)`` |
    | ``"retrieval"`` | ``(N, 2 + Hn, D)``: query, positive, ``Hn >= 1`` hard negatives | ignored |

    The views of NT-Xent are ``y_pred[:, 0]`` and ``y_pred[:, 1]``; CLIP is ``"info_nce"``
    with ``symmetric=True``. ``"retrieval"`` is ``info_nce(y_pred[:, 0], y_pred[:, 1],
    hard_negatives=y_pred[:, 2:])``: each query against every positive and every hard
    negative of the batch (sentence-transformers' ``MultipleNegativesRankingLoss``, DPR);
    ``symmetric=True`` adds the positive→query direction (the hard negatives are no
    anchors). Its per-anchor losses are ``(N,)``, one per query.

    A model emitting two views stacks them on axis 1: ``keras.ops.stack([z1, z2], axis=1)``
    (a two-tower model stacks its towers' outputs). Labels given as floats (Keras' default
    for targets) are rounded and cast to ``int32`` (``int64`` from float64); integer labels
    are used as given.

    Reductions are SPEC's, not Keras': ``reduction="mean"`` (default) averages over the
    anchors that have a positive, ``"sum"`` sums, ``"none"`` returns the per-anchor losses
    (``(2N,)`` for NT-Xent, the ``z1`` anchors first; ``(N,)`` or ``(N, V)`` for SupCon;
    ``(N,)`` for InfoNCE). Keras applies no reduction of its own on top.

    **Sample weights** (``sample_weight`` of ``fit`` / ``evaluate`` / ``__call__``, or
    ``class_weight``, shape ``(N,)``): a per-anchor weight on the ``"none"`` losses, every
    anchor of sample ``i`` weighted ``w_i`` (NT-Xent: both views; SupCon: all ``V`` views):

        "mean":  Σ_a w_i·L_a / Σ_{a has a positive} w_i    (0 when that sum is 0)
        "sum":   Σ_a w_i·L_a          "none":  w_i·L_a

    Weights of 1 give the unweighted loss (to round-off). A weight scales the sample's own anchor
    terms only: the sample stays a candidate of every other anchor, so ``w_i = 0`` drops
    its anchors but keeps it in the other rows' denominators (and as their positive).
    Removing a row entirely is ``where=`` of ``tfree_*.info_nce`` and friends. The
    gradient is tfree's analytic one with the cotangent ``w_i`` (``w_i/Σw`` for the mean).
    Weights should be non-negative (not checked: they may be traced values). A Keras mask
    on ``y_pred`` is not applied (Keras' own losses turn it into sample weights): pass
    ``sample_weight``.

    ``y_pred`` keeps its dtype (float16 / bfloat16 / float32 / float64; the loss computes
    in float32, or float64 for float64), and the result is cast to the loss's Keras
    ``dtype`` (``keras.backend.floatx()`` by default).

    **Batches of unknown size** (TensorFlow only). ``model.fit`` on TensorFlow traces its
    step with the batch dimension unknown whenever the data set's size is not a multiple of
    ``batch_size``; tfree needs static shapes, so the loss pads such a batch to a static
    size ``B`` with rows masked out (SPEC §2.8's ``where``: neither anchors nor candidates,
    so the value and the gradients are those of the unpadded batch). ``B`` is
    ``max_batch_size``; without it, the largest batch size this loss object has seen in an
    earlier trace of static shape; without either (Keras' TensorFlow ``fit`` on such a data
    set from the start) the trace fails with a ``ValueError`` asking for ``max_batch_size``.
    A padded batch larger than ``B`` fails when the step runs
    (``tf.errors.InvalidArgumentError``); batches of known size are never padded nor
    bounded. Pass ``max_batch_size=batch_size`` and the same loss runs on every backend:
    JAX and PyTorch always see concrete sizes, need no padding and ignore it.

    Args:
        layout: ``"nt_xent"`` (default), ``"info_nce"``, ``"sup_con"`` or
            ``"retrieval"``.
        symmetric: ``info_nce`` and ``retrieval`` only: ``½(L_q→k + L_k→q)`` (CLIP). A
            bool (``TypeError`` otherwise, e.g. for the string ``"False"``).
        use_labels: ``info_nce`` only: ``y_true`` holds labels and keys of the query's
            label are positives. A bool.
        logit_map: ``"arctanh"`` (default): ``ℓ = 2·atanh(clip(s, -b, b))``, no
            temperature; or ``"temperature"``: InfoNCE's ``ℓ = s/τ`` (for comparisons).
        temperature: ``τ > 0``, only with ``logit_map="temperature"``. A Python or NumPy
            number.
        eps: The clip ``b`` = the largest compute-dtype value ``<= 1 - eps`` (default
            ``1e-6``: logit cap 14.4955 in float32); in ``(0, 0.5)``.
        reduction: ``"mean"`` (default) over the anchors that have a positive, ``"sum"``,
            or ``"none"`` (the per-anchor losses, shapes above).
        chunk_size: ``"auto"`` (default), ``None`` (always the whole similarity matrix)
            or a positive int, rows per block (tiled: no ``N × N`` array), as in
            ``tfree_*.info_nce``.
        check_finite: ``True``: reject NaN and ±inf in ``y_pred`` (``ValueError``). Eager
            only: compile the model with ``run_eagerly=True``; in a traced step
            (TensorFlow's ``fit``, JAX's) it is a ``ValueError`` at trace time, never a
            silent skip. A bool.
        max_batch_size: the static size ``B`` that batches of unknown size are padded to
            (TensorFlow; default ``None``: the largest static batch size seen so far).
            A positive int.
        name: as in ``keras.losses.Loss``.
        dtype: the result's dtype: a floating dtype or a Keras dtype policy (its compute
            dtype); ``None``: ``keras.backend.floatx()``. An integer dtype is a
            ``TypeError``.

    Examples:
        The loss called directly on a batch of two views, then as a model's loss:

        ```python
        import keras
        import numpy as np
        import tfree_keras

        loss_fn = tfree_keras.TemperatureFreeLoss("nt_xent")
        views = np.random.default_rng(0).normal(size=(8, 2, 16)).astype("float32")
        loss = loss_fn(np.zeros(8), views)  # y_true is ignored by NT-Xent
        assert keras.ops.shape(loss) == ()

        model = keras.Sequential([keras.Input((2, 32)), keras.layers.Dense(16)])
        model.compile(optimizer="sgd", loss=tfree_keras.TemperatureFreeLoss("nt_xent"))
        ```
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
        spec = _layouts.get(check.plain_str(layout))
        switches = {"symmetric": check.check_flag("symmetric", symmetric),
                    "use_labels": check.check_flag("use_labels", use_labels)}
        for switch, value in switches.items():
            if value and switch not in spec.switches:
                accepting = [s.name for s in _layouts.LAYOUTS.values() if switch in s.switches]
                raise ValueError(
                    f"{switch}=True applies to layout {' or '.join(map(repr, accepting))} "
                    f"only; got layout={spec.name!r}"
                )
        # Validates logit_map / temperature / eps / reduction now, not at the first batch.
        options = engine.make_options(
            logit_map=check.plain_str(logit_map), temperature=temperature, eps=eps,
            reduction=check.plain_str(reduction),
        )
        chunk_size = engine.check_chunk_size(check.plain_str(chunk_size))
        check_finite = check.check_flag("check_finite", check_finite)
        max_batch_size = check.check_optional_size("max_batch_size", max_batch_size)
        dtype = check.check_dtype(dtype)
        super().__init__(name=check.check_name(name), reduction=options.reduction, dtype=dtype)
        self._spec = spec
        self._switches = switches
        self.layout = spec.name
        self.symmetric = switches["symmetric"]
        self.use_labels = switches["use_labels"]
        self.logit_map = options.logit_map
        self.temperature = options.temperature
        self.eps = options.eps
        self.chunk_size = chunk_size
        self.check_finite = check_finite
        self.max_batch_size = max_batch_size
        self._dtype_argument = dtype
        self._largest_batch = 0  # the largest static batch size traced so far (TensorFlow)

    # ------------------------------------------------------------------ calls

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Tensor:
        """The loss, reduced by SPEC's ``reduction`` (weighted by ``sample_weight``, see
        the class), cast to ``self.dtype``.

        Args:
            y_true: Ignored, or the labels, as in the class's table.
            y_pred: The model's output, shaped as in the class's table.
            sample_weight: ``None``, or per-sample weights ``(N,)``.

        Returns:
            The loss in ``self.dtype``.
        """
        backend = _backends.current()
        with keras.name_scope(self.name):
            loss = self._compute(backend, y_true, ops.convert_to_tensor(y_pred), sample_weight)
            return ops.cast(loss, self.dtype)

    def call(self, y_true: Any, y_pred: Any) -> Tensor:
        """The unweighted loss in the compute dtype (``__call__`` casts it to ``dtype``).

        Args:
            y_true: Ignored, or the labels (``"sup_con"``, or ``"info_nce"`` with
                ``use_labels=True``), as in the class's table.
            y_pred: The model's output, shaped as in the class's table.

        Returns:
            The loss reduced by ``reduction``: a scalar, or the per-anchor losses for
            ``"none"``.
        """
        return self._compute(_backends.current(), y_true, ops.convert_to_tensor(y_pred), None)

    def _compute(self, backend: _backends.Backend, y_true: Any, y_pred: Tensor,
                 sample_weight: Any) -> Tensor:
        spec = self._spec
        spec.check_shape(y_pred)
        labels = self._labels(y_true) if spec.reads_labels(self._switches) else None
        # Weights apply to the per-anchor losses, which the weighted reduction then sums.
        reduction = self.reduction if sample_weight is None else "none"
        n = y_pred.shape[0]
        if n is None:
            loss = self._padded(backend, y_pred, labels, reduction)
        else:
            self._note_size(backend, n)
            loss = self._evaluate(backend, y_pred, labels, None, reduction)
        if sample_weight is None:
            return loss
        weights = as_weights(sample_weight, n, keras.backend.standardize_dtype(loss.dtype))
        has_positive = None if spec.positives is None else spec.positives(y_pred, labels)
        return reduce_weighted(spec, loss, weights, self.reduction, has_positive)

    def _evaluate(self, backend: _backends.Backend, y_pred: Tensor, labels: Tensor | None,
                  where: Tensor | None, reduction: str) -> Tensor:
        """The tfree function of ``layout`` on ``backend``, on a batch of static size."""
        function = getattr(_backends.package(backend), self._spec.function)
        positional, keywords = self._spec.arguments(y_pred, labels, self._switches)
        return function(*positional, **keywords, where=where, reduction=reduction,
                        logit_map=self.logit_map, temperature=self.temperature, eps=self.eps,
                        chunk_size=self.chunk_size, check_finite=self.check_finite)

    def _note_size(self, backend: _backends.Backend, n: Any) -> None:
        """Remember the largest static batch size (the default padding size) where a
        later trace may see an unknown one; elsewhere (Dynamo's symbolic sizes) never."""
        if backend.unknown_batch:
            self._largest_batch = max(self._largest_batch, int(n))

    def _padded(self, backend: _backends.Backend, y_pred: Tensor, labels: Tensor | None,
                reduction: str) -> Tensor:
        """A batch of unknown size, padded to the static size ``B`` with masked rows; a
        ``"none"`` result is cut back to the real anchors."""
        size = self.max_batch_size or self._largest_batch
        if not size:
            raise ValueError(
                "TemperatureFreeLoss got a batch of unknown size (Keras' TensorFlow fit does "
                "this when the data set's size is not a multiple of batch_size) and knows no "
                "static size to pad it to: pass max_batch_size=batch_size, or give the model "
                "batches of one static shape (dataset.batch(n, drop_remainder=True))"
            )
        from ._padding import pad_rows  # TensorFlow only: the one backend with unknown sizes

        y_pred, labels, where, n = pad_rows(y_pred, labels, size)
        loss = self._evaluate(backend, y_pred, labels, where, reduction)
        if reduction != "none":
            return loss
        return self._spec.from_per_sample(self._spec.per_sample(loss)[:n])

    @staticmethod
    def _labels(y_true: Any) -> Tensor:
        """``y_true`` as integer labels of shape ``(N,)`` (``(N, 1)`` is squeezed)."""
        if y_true is None:
            raise ValueError("this layout needs y_true: integer labels of shape (N,)")
        labels = ops.convert_to_tensor(y_true)
        if len(labels.shape) == 2 and labels.shape[1] == 1:
            labels = ops.squeeze(labels, axis=1)
        if len(labels.shape) != 1:
            raise ValueError(
                f"y_true must hold labels of shape (N,) or (N, 1); got {tuple(labels.shape)}"
            )
        dtype = keras.backend.standardize_dtype(labels.dtype)
        if keras.backend.is_float_dtype(dtype):
            # float32 holds every integer up to 2**24 exactly, float64 up to 2**53.
            return ops.cast(ops.round(labels), "int64" if dtype == "float64" else "int32")
        if dtype == "bool":
            return ops.cast(labels, "int32")
        return labels

    # ------------------------------------------------------------------ serialisation

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
