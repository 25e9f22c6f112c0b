"""The core's own public functions: the loss and its analytic gradient on any Array API
namespace (NumPy, CuPy, array-api-strict, ...), given as ``xp=`` or inferred."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _maps
from . import _validation as check
from ._evaluate import backward, forward, scale_gradients, value_and_grad
from ._namespace import Array, Namespace, device_of, namespace_of, scalar
from ._problem import Problem, fuses_gradient, loss_shape
from ._runtime import Named, Runtime
from ._surface import LOSSES, Param, Variant, build

_XP = Param("xp", None, "Namespace | None",
            "The array namespace (``array_api_compat.array_namespace`` of the arrays when "
            "``None``).")
_COTANGENT = Param(
    "cotangent", None, "Any",
    "The upstream cotangent: the gradient is that of ``Σ cotangent · loss``. Default 1 "
    "(ones of the loss's shape for ``reduction=\"none\"``, where it must be an array of "
    "that shape).", functions=LOSSES)

_NOTES = {
    "chunk_size": (
        '``"auto"`` budgets: untiled up to an 8 MiB matrix on a CPU, 1 GiB on an '
        "accelerator; else blocks of at most 8 MiB (CPU: they stay in cache) or 64 MiB. "
        "Where the gradient is asked for (``*_value_and_grad``), one direction (not "
        '``symmetric``) with ``"mean"`` or ``"sum"`` computes its gradient in the same '
        "pass as the loss, block by block while each block is in cache: three matrix "
        "products and no ``N × M`` residual whatever ``chunk_size`` is."),
}


class CoreRuntime(Runtime):
    """The core on an Array API namespace: ``with_grad`` returns ``(loss, gradients)``."""

    notes = _NOTES
    examples: Mapping[str, str] = {
        "info_nce": """
            import numpy as np
            import tfree_core

            rng = np.random.default_rng(0)
            query, key = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
            loss = tfree_core.info_nce(query, key)  # float64, near log 8 = 2.08
            clip = tfree_core.info_nce(query, key, symmetric=True)
            assert loss.shape == () and clip.shape == ()
        """,
        "nt_xent": """
            import numpy as np
            import tfree_core

            rng = np.random.default_rng(0)
            z1, z2 = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
            per_anchor = tfree_core.nt_xent(z1, z2, reduction="none")
            assert per_anchor.shape == (16,)  # the z1 anchors first
        """,
        "sup_con": """
            import numpy as np
            import tfree_core

            views = np.random.default_rng(0).normal(size=(8, 2, 16))  # (N, V, D)
            labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
            per_anchor = tfree_core.sup_con(views, labels, reduction="none")
            assert per_anchor.shape == (8, 2)
        """,
        "loss_from_similarity": """
            import numpy as np
            import tfree_core

            rng = np.random.default_rng(0)
            similarity = rng.uniform(-1, 1, size=(4, 6))
            positive_mask = np.eye(4, 6, dtype=bool)
            valid_mask = np.ones((4, 6), dtype=bool)
            valid_mask[0, 5] = False
            loss = tfree_core.loss_from_similarity(similarity, positive_mask,
                                                   valid_mask=valid_mask)
        """,
        "logits": """
            import math

            import numpy as np
            import tfree_core

            phi = tfree_core.logits(np.array([0.0, 0.5, 1.0]))
            assert phi[0] == 0.0 and math.isclose(phi[1], math.log(3))
            assert math.isclose(phi[2], 14.508657, rel_tol=1e-7)  # the cap at eps = 1e-6
        """,
        "info_nce_value_and_grad": """
            import numpy as np
            import tfree_core

            rng = np.random.default_rng(0)
            query, key = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
            loss, (d_query, d_key) = tfree_core.info_nce_value_and_grad(query, key)
            assert d_query.shape == query.shape and d_key.shape == key.shape
        """,
        "nt_xent_value_and_grad": """
            import numpy as np
            import tfree_core

            rng = np.random.default_rng(0)
            z1, z2 = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
            losses, (d_z1, d_z2) = tfree_core.nt_xent_value_and_grad(
                z1, z2, reduction="none", cotangent=np.ones(16))  # Σ of the 16 losses
            assert losses.shape == (16,) and d_z1.shape == z1.shape
        """,
        "sup_con_value_and_grad": """
            import numpy as np
            import tfree_core

            rng = np.random.default_rng(0)
            features = rng.normal(size=(8, 16)).astype(np.float32)
            labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
            loss, (d_features,) = tfree_core.sup_con_value_and_grad(features, labels)
            assert d_features.dtype == np.float32
        """,
        "loss_from_similarity_value_and_grad": """
            import numpy as np
            import tfree_core

            rng = np.random.default_rng(0)
            similarity = rng.uniform(-1, 1, size=(4, 6))
            loss, (d_similarity,) = tfree_core.loss_from_similarity_value_and_grad(
                similarity, np.eye(4, 6, dtype=bool))
            assert d_similarity.shape == (4, 6)
        """,
    }

    def __init__(self, with_grad: bool) -> None:
        self.with_grad = with_grad
        self.extras = (_COTANGENT, _XP) if with_grad else (_XP,)

    def check_arrays(self, named: Named, extras: Mapping[str, Any]) -> None:
        if extras["xp"] is None:  # one library, named per argument before inferring it
            check.check_one_library(named)

    def namespace(self, arrays: tuple[Array | None, ...], extras: Mapping[str, Any]) -> Namespace:
        xp = extras["xp"]
        if xp is not None and not callable(getattr(xp, "asarray", None)):
            raise TypeError(
                "xp must be an array namespace (a module such as numpy or array_api_strict, "
                f"or array_api_compat.array_namespace(x)) or None; got {type(xp).__name__}"
            )
        return namespace_of(*arrays, xp=xp)

    def check_call(self, problem: Problem, arrays: tuple[Array | None, ...],
                   extras: Mapping[str, Any], xp: Namespace) -> None:
        cotangent = extras.get("cotangent")
        if isinstance(cotangent, bool):
            raise TypeError("cotangent must be a real number or an array; got bool")
        if cotangent is not None and not isinstance(cotangent, (int, float)):
            namespace_of(arrays[0], cotangent)
            check.check_cotangent(cotangent, loss_shape(problem, arrays),
                                  problem.options.reduction, xp)

    def apply(self, problem: Problem, arrays: tuple[Array | None, ...],
              extras: Mapping[str, Any], xp: Namespace) -> Any:
        if not self.with_grad:
            return forward(problem, arrays, xp)[0]
        if fuses_gradient(problem):  # one pass: the gradient with the loss
            loss, residuals = value_and_grad(problem, arrays, xp)
            finish = scale_gradients
        else:
            loss, residuals = forward(problem, arrays, xp)
            finish = backward
        cotangent = _cotangent(extras["cotangent"], problem, arrays, loss, xp)
        grads = finish(problem, residuals, cotangent, xp)
        return loss, tuple(g for g in grads if g is not None)  # of the inputs given

    def logit_map(self, similarity: Any, eps: float, extras: Mapping[str, Any]) -> Any:
        return _maps.logits(similarity, eps, namespace_of(similarity, xp=extras["xp"]))


def _cotangent(value: Any, problem: Problem, arrays: tuple[Array | None, ...], loss: Array,
               xp: Namespace) -> Array:
    shape = loss_shape(problem, arrays)
    if value is None:
        return xp.ones(shape, dtype=loss.dtype, device=device_of(loss))
    if isinstance(value, (int, float)):
        if shape:
            raise TypeError(
                f"cotangent must be an array of shape {shape} for reduction='none'; got a scalar"
            )
        return scalar(float(value), loss, xp)
    return value


info_nce, nt_xent, sup_con, loss_from_similarity, logits = build(
    CoreRuntime(with_grad=False), "tfree_core")
(info_nce_value_and_grad, nt_xent_value_and_grad, sup_con_value_and_grad,
 loss_from_similarity_value_and_grad) = build(
    CoreRuntime(with_grad=True), "tfree_core",
    Variant(suffix="_value_and_grad",
            summary="``{name}`` and its analytic gradient {gradients}.\n\n"
                    "The gradient is that of ``Σ cotangent · loss``, computed by the "
                    "formulas of SPEC §2 (not by autodiff), each cast to its input's dtype.",
            returns="``(loss, gradients)``: the loss as ``{name}`` returns it and the "
                    "gradients {gradients}.",
            examples="The loss and its analytic gradient, one array per differentiable "
                     "input, in that input's dtype.",
            functions=tuple(LOSSES)))
