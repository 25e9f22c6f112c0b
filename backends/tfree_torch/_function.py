"""The autograd wiring: the core's forward and its analytic backward (SPEC §2, "Analytic
gradient") as two ``torch.autograd.Function`` classes.

* :class:`LossFunction`: ``engine.forward`` returns the loss and the residuals (outputs
  marked non-differentiable, saved with ``ctx.save_for_backward``); ``backward`` hands
  them to ``engine.backward``. Also the distributed (``comm``) and fused (``kernel``)
  evaluations: the engine takes them as plug-ins.
* :class:`GradientInForwardFunction`: where ``engine.fuses_gradient`` holds, the gradient
  is computed in the loss's pass (``engine.value_and_grad``) and the backward only scales
  it.

The ``forward`` / ``setup_context`` / ``backward`` style makes both usable under
``torch.func`` (``grad``, ``vmap`` with the generated rule) and ``torch.compile``.
Autocast is switched off inside: the core casts half inputs to float32 itself (SPEC §2.2)
and must not see its float32 matrix products re-downcast to bf16/fp16.
"""

from __future__ import annotations

from typing import Any

import torch

from tfree_core import engine

from ._namespace import xp

__all__ = ["apply", "device_type", "in_vmap"]


def in_vmap(t: torch.Tensor) -> bool:
    """Whether ``t`` is a tensor batched by ``torch.func.vmap`` (its values unknown)."""
    is_batched = getattr(torch._C._functorch, "is_batchedtensor", None)
    return bool(is_batched is not None and is_batched(t))


def device_type(t: torch.Tensor) -> str:
    """The autocast device type of ``t``."""
    kind = t.device.type
    return kind if kind in ("cuda", "cpu", "xpu", "mps", "hpu") else "cpu"


def _distinct(outputs: tuple[Any, ...], arrays: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every output a distinct tensor: an input returned as-is cannot be saved with
    ``setup_context`` (the similarity layout keeps its inputs as residuals), and a tensor
    returned twice (one statistic shared by both directions of a symmetric loss, a
    candidate set that is the keys on one device) confuses ``torch.compile``'s wiring of
    saved tensors. Views fix both."""
    out: list[Any] = []
    for r in outputs:
        if r is not None and (any(r is a for a in arrays) or any(r is o for o in out)):
            r = r.view_as(r)
        out.append(r)
    return tuple(out)


class LossFunction(torch.autograd.Function):
    """``loss = engine.forward``; ``∂loss = engine.backward`` (``comm``: the collectives of
    a sharded call, run by every rank in both passes; ``kernel``: the fused kernels).

    Inputs ``(problem, comm, kernel, *arrays)``, ``arrays`` positional per layout
    (``engine``); outputs ``(loss, *residuals)``, only the loss differentiable.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        problem: engine.Problem, comm: Any, kernel: Any, *arrays: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        with torch.autocast(device_type(arrays[0]), enabled=False):
            loss, residuals = engine.forward(problem, arrays, xp, comm=comm, kernel=kernel)
        return (loss, *_distinct(residuals, (*arrays, loss)))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        problem, comm, kernel = inputs[:3]
        residuals = output[1:]
        tensors = [r for r in residuals if r is not None]
        if tensors:
            ctx.mark_non_differentiable(*tensors)
        # The differentiable inputs are saved only to hang the double-backward guard on
        # (saving them costs no memory: they are the caller's tensors).
        count = len(problem.spec.differentiable)
        ctx.save_for_backward(*residuals, *inputs[3:3 + count])
        ctx.problem, ctx.comm, ctx.kernel = problem, comm, kernel
        ctx.n_residuals, ctx.n_arrays = len(residuals), len(inputs) - 3

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        n = ctx.n_residuals
        create_graph = torch.is_grad_enabled()
        with torch.no_grad(), torch.autocast(device_type(cotangent), enabled=False):
            grads = engine.backward(ctx.problem, saved[:n], cotangent, xp, comm=ctx.comm,
                                    kernel=ctx.kernel)
        return (None, None, None, *_guarded(grads, saved[n:], create_graph, ctx.n_arrays))


class GradientInForwardFunction(torch.autograd.Function):
    """``loss`` and its gradients in one pass (``engine.value_and_grad``); ``backward`` only
    scales the stored gradients by the cotangent.

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
        with torch.autocast(device_type(arrays[0]), enabled=False):
            loss, grads = engine.value_and_grad(problem, arrays, xp)
        return (loss, *grads)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        problem = inputs[0]
        grads = output[1:]
        ctx.mark_non_differentiable(*(g for g in grads if g is not None))
        ctx.save_for_backward(*grads, *inputs[1 : 1 + len(grads)])
        ctx.problem = problem
        ctx.n_arrays = len(inputs) - 1

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        n_grads = len(ctx.problem.spec.differentiable)
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            grads = engine.scale_gradients(ctx.problem, saved[:n_grads], cotangent, xp)
        return (None, *_guarded(grads, saved[n_grads:], create_graph, ctx.n_arrays))


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


def _guarded(
    grads: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...], create_graph: bool,
    n_arrays: int,
) -> tuple[torch.Tensor | None, ...]:
    """The gradients for every array argument: under ``create_graph`` attached to
    ``inputs`` through :class:`_OnceDifferentiable` (a second derivative raises), and
    ``None`` for the non-differentiable arrays after them (labels, masks) and for absent
    optional inputs."""
    if create_graph:
        present = [i for i, g in enumerate(grads) if g is not None]
        attached = _OnceDifferentiable.apply(len(present), *(grads[i] for i in present),
                                             *(inputs[i] for i in present))
        out: list[torch.Tensor | None] = [None] * len(grads)
        for i, g in zip(present, attached, strict=True):
            out[i] = g
        grads = tuple(out)
    return (*grads, *(None,) * (n_arrays - len(grads)))


def _needs_gradient(problem: engine.Problem, arrays: tuple[torch.Tensor | None, ...]) -> bool:
    """Whether autograd will record this call: grad mode on and a differentiable input
    that requires grad (under ``torch.func.grad`` its wrapped inputs do)."""
    if not torch.is_grad_enabled():
        return False
    n = len(problem.spec.differentiable)
    return any(a is not None and a.requires_grad for a in arrays[:n])


def apply(problem: engine.Problem, arrays: tuple[torch.Tensor | None, ...], *,
          comm: Any = None, kernel: Any = None) -> torch.Tensor:
    """The loss of ``problem`` on ``arrays``, differentiable through the analytic gradient.

    Three routes, the same values: no gradient wanted (evaluation, ``torch.no_grad``): the
    core's forward only, no residuals kept; one device, the portable path, one direction
    and a scalar reduction: the gradient computed in the forward's pass
    (:class:`GradientInForwardFunction`); otherwise the forward keeps residuals for the
    core's backward (:class:`LossFunction`)."""
    if not _needs_gradient(problem, arrays):
        with torch.autocast(device_type(arrays[0]), enabled=False):
            return engine.forward(problem, arrays, xp, comm=comm, kernel=kernel)[0]
    if comm is None and kernel is None and engine.fuses_gradient(problem):
        return GradientInForwardFunction.apply(problem, *arrays)[0]
    return LossFunction.apply(problem, comm, kernel, *arrays)[0]
