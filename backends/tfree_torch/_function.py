"""One ``torch.autograd.Function`` for every layout: the core's forward and its analytic
backward (SPEC §2, "Analytic gradient").

``forward`` returns the loss followed by the core's residuals (marked non-differentiable,
saved with ``ctx.save_for_backward``); ``backward`` hands them back to
``tfree_core.engine.backward``. The ``forward`` / ``setup_context`` / ``backward`` style
makes the function usable under ``torch.func`` (``grad``, ``vmap`` with the generated
rule) and ``torch.compile``.

Autocast is switched off inside: the core casts half inputs to float32 itself (SPEC §2.2)
and must not see its float32 matrix products re-downcast to bf16/fp16.
"""

from __future__ import annotations

from typing import Any

import torch

from tfree_core import engine

from ._namespace import xp

__all__ = [
    "ContrastiveLossFunction",
    "GradientInForwardFunction",
    "apply",
    "guarded",
    "residual_keys",
]


def residual_keys(problem: engine.Problem) -> tuple[str, ...]:
    """The names of the core's residuals for ``problem`` (static: known before tracing)."""
    return tuple(engine.residual_keys(problem))


def _device_type(t: torch.Tensor) -> str:
    kind = t.device.type
    return kind if kind in ("cuda", "cpu", "xpu", "mps", "hpu") else "cpu"


class ContrastiveLossFunction(torch.autograd.Function):
    """``loss = tfree_core`` forward; ``∂loss`` = the core's analytic backward.

    Inputs: ``(problem, keys, *arrays)`` with ``arrays`` positional per layout
    (``tfree_core.engine``). Outputs: ``(loss, *residuals)``; only the loss is differentiable.
    No value checks run inside (``engine.check_values`` is the caller's, eagerly).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        problem: engine.Problem,
        keys: tuple[str, ...],
        *arrays: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        first = arrays[0]
        assert first is not None
        with torch.autocast(_device_type(first), enabled=False):
            loss, res = engine.forward(problem, arrays, xp, check_values=False)
        # Every output must be a distinct tensor: an input returned as-is cannot be saved
        # with setup_context (the similarity layout keeps its inputs as residuals), and a
        # tensor returned twice (one statistic shared by both directions of a symmetric
        # loss) confuses torch.compile's wiring of saved tensors. Views fix both.
        out: list[torch.Tensor | None] = []
        for k in keys:
            r = res[k]
            if r is not None and (
                any(r is a for a in arrays) or any(r is o for o in out) or r is loss
            ):
                r = r.view_as(r)
            out.append(r)
        return (loss, *out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        problem, keys = inputs[0], inputs[1]
        residuals = output[1:]
        tensors = [r for r in residuals if r is not None]
        if tensors:
            ctx.mark_non_differentiable(*tensors)
        # The differentiable inputs are saved only to hang the double-backward guard on
        # (saving them costs no memory: they are the caller's tensors).
        differentiable = inputs[2 : 2 + len(engine.DIFFERENTIABLE[problem.layout])]
        ctx.save_for_backward(*residuals, *differentiable)
        ctx.problem = problem
        ctx.keys = keys
        ctx.n_arrays = len(inputs) - 2

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        n_keys = len(ctx.keys)
        res = dict(zip(ctx.keys, saved[:n_keys], strict=True))
        create_graph = torch.is_grad_enabled()
        with torch.no_grad(), torch.autocast(_device_type(cotangent), enabled=False):
            grads = engine.backward(ctx.problem, res, cotangent, xp)
        return (None, None, *guarded(grads, saved[n_keys:], create_graph, ctx.n_arrays))


DOUBLE_BACKWARD_MESSAGE = (
    "tfree_torch: the loss is differentiable once. Its gradient is the core's analytic "
    "formula (SPEC §2), which has no derivative of its own: double backward, Hessians and "
    "gradient penalties through this loss are not supported"
)


class _OnceDifferentiable(torch.autograd.Function):
    """Identity on the gradients, attached to the loss's inputs, whose backward raises.

    With ``create_graph=True`` the analytic gradients would otherwise be constants, and a
    second differentiation would silently miss their dependence on the inputs.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(n: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


def guarded(
    grads: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...], create_graph: bool,
    n_arrays: int,
) -> tuple[torch.Tensor | None, ...]:
    """The gradients for every array argument: under ``create_graph`` attached to
    ``inputs`` through :class:`_OnceDifferentiable` (a second derivative raises), and
    ``None`` for the non-differentiable arrays after them (labels, masks)."""
    if create_graph:
        grads = _OnceDifferentiable.apply(len(grads), *grads, *inputs)
    return (*grads, *(None,) * (n_arrays - len(grads)))


class GradientInForwardFunction(torch.autograd.Function):
    """``loss`` and its gradients in one pass (``tfree_core.engine.value_and_grad``);
    ``backward`` only scales the stored gradients by the cotangent.

    Used where ``engine.fuses_gradient`` holds and some input requires grad: the tape
    guarantees the backward will want them, and computing them while each block of ``S``
    is in cache saves recomputing it (three matrix products instead of four, half the
    element-wise work). Inputs: ``(problem, *arrays)``; outputs ``(loss, *gradients)``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        problem: engine.Problem, *arrays: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        first = arrays[0]
        assert first is not None
        with torch.autocast(_device_type(first), enabled=False):
            loss, grads = engine.value_and_grad(problem, arrays, xp)
        return (loss, *grads)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        problem = inputs[0]
        grads = output[1:]
        ctx.mark_non_differentiable(*grads)
        differentiable = inputs[1 : 1 + len(grads)]
        ctx.save_for_backward(*grads, *differentiable)
        ctx.problem = problem
        ctx.n_arrays = len(inputs) - 1

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        n_grads = len(engine.DIFFERENTIABLE[ctx.problem.layout])
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            grads = engine.scale_gradients(ctx.problem, saved[:n_grads], cotangent, xp)
        return (None, *guarded(grads, saved[n_grads:], create_graph, ctx.n_arrays))


def _needs_gradient(problem: engine.Problem, arrays: tuple[torch.Tensor | None, ...]) -> bool:
    """Whether autograd will record this call: grad mode on and a differentiable input
    that requires grad (under ``torch.func.grad`` its wrapped inputs do)."""
    if not torch.is_grad_enabled():
        return False
    n = len(engine.DIFFERENTIABLE[problem.layout])
    return any(a is not None and a.requires_grad for a in arrays[:n])


def apply(problem: engine.Problem, arrays: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """The loss of ``problem`` on ``arrays``, differentiable through the analytic gradient.

    Three routes, the same values: no gradient wanted (evaluation, ``torch.no_grad``): the
    core's forward only, no residuals kept; one direction and a scalar reduction: the
    gradient computed in the forward's pass (:class:`GradientInForwardFunction`);
    otherwise the forward keeps residuals for the core's backward
    (:class:`ContrastiveLossFunction`)."""
    if not _needs_gradient(problem, arrays):
        first = arrays[0]
        assert first is not None
        with torch.autocast(_device_type(first), enabled=False):
            return engine.forward(problem, arrays, xp, check_values=False)[0]
    if engine.fuses_gradient(problem):
        return GradientInForwardFunction.apply(problem, *arrays)[0]
    out = ContrastiveLossFunction.apply(problem, residual_keys(problem), *arrays)
    return out[0]
