"""The JAX runtime of the public functions: pure functions in the optax style, with the
core's analytic gradient through one ``jax.custom_vjp``.

Each call validates its arguments with the core (shapes and dtypes are static, so this
runs at trace time and costs nothing under ``jax.jit``), then calls :func:`_loss`, whose
forward is ``engine.forward`` (or ``engine.value_and_grad`` where the gradient can be
computed in the same pass) and whose backward is ``engine.backward``, both traced with
``jax.numpy`` and compiled once per problem and shapes. The static ``Problem`` and the
:class:`_Plan` (the mapped axis of a sharded call, the fused kernels) are the only
non-differentiable arguments; labels and masks are ordinary arguments whose cotangent is
``None`` (zero).

Matrix products run at ``Precision.HIGHEST`` (SPEC §2.3: no TF32 / bf16 passes on GPUs).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfree_core import engine

from ._distributed import JaxCollectives, axis_size, checks_replication, scan_over, world_size
from ._pallas import PallasKernel, check_kernel, interpret_on, use_fused

__all__ = ["RUNTIME", "ForwardModeError", "JaxRuntime"]

Array = jax.Array

_FORWARD_MODE_MESSAGE = (
    "tfree_jax losses support reverse-mode differentiation only (jax.grad, jax.vjp, "
    "jax.value_and_grad, jax.jacrev): their gradient is the analytic one of SPEC §2 through "
    "jax.custom_vjp, which has no forward mode. Forward mode (jax.jvp, jax.jacfwd, "
    "jax.linearize, jax.hessian) is not supported."
)


class ForwardModeError(TypeError):
    """Raised when forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) meets a tfree loss.

    The losses define reverse-mode gradients only (``jax.custom_vjp``); ``jax.grad``,
    ``jax.vjp`` and ``jax.jacrev`` work. ``tfree_jax.logits`` is differentiable in both
    modes. A subclass of ``TypeError``, JAX's own error for a ``custom_vjp`` under
    ``jax.jvp``.

    Examples:
        ```python
        import jax
        import tfree_jax

        query, key = jax.random.normal(jax.random.key(0), (2, 4, 8))
        try:
            jax.jvp(lambda q: tfree_jax.info_nce(q, key), (query,), (query,))
            raise AssertionError("not reached")
        except tfree_jax.ForwardModeError as error:
            message = str(error)  # names what works: jax.grad, jax.vjp, jax.jacrev
        ```
    """


def _is_traced(arrays: tuple[Any, ...]) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def _platform(arrays: tuple[Array | None, ...]) -> str:
    """Where the call runs: traced arrays carry no device, the default backend runs them."""
    if _is_traced(arrays):
        return jax.default_backend()
    return next(iter(arrays[0].devices())).platform


# --------------------------------------------------------------------------- custom_vjp


@dataclass(frozen=True)
class _Plan:
    """How a call is evaluated besides its ``Problem``: over the mapped axis ``axis_name``
    (``None``: one device) and with the fused ``kernel`` (``None``: the portable loop)."""

    axis_name: Hashable | None = None
    kernel: PallasKernel | None = None

    def plug_ins(self) -> dict[str, Any]:
        comm = None if self.axis_name is None else JaxCollectives(self.axis_name)
        return {"comm": comm, "loop": scan_over(self.axis_name), "kernel": self.kernel}

    def one_pass(self, problem: engine.Problem) -> bool:
        return self.axis_name is None and self.kernel is None and engine.fuses_gradient(problem)


def _precise():
    """Full-precision matrix products while tracing (no TF32 on GPUs, SPEC §2.3)."""
    return jax.default_matmul_precision("highest")


# The core is compiled once per (problem, plan, shapes): an eager call then costs one
# dispatch instead of a compilation per primitive; under an outer ``jit`` these inline.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward(problem: engine.Problem, plan: _Plan, arrays: tuple[Array | None, ...]):
    with _precise():
        return engine.forward(problem, arrays, jnp, **plan.plug_ins())


@functools.partial(jax.jit, static_argnums=(0, 1))
def _backward(problem: engine.Problem, plan: _Plan, residuals, cotangent: Array):
    with _precise():
        return engine.backward(problem, residuals, cotangent, jnp, **plan.plug_ins())


@functools.partial(jax.jit, static_argnums=(0,))
def _value_and_grad(problem: engine.Problem, arrays: tuple[Array | None, ...]):
    with _precise():
        return engine.value_and_grad(problem, arrays, jnp, loop=scan_over(None))


@functools.partial(jax.jit, static_argnums=(0,))
def _scale(problem: engine.Problem, grads: tuple[Array, ...], cotangent: Array):
    return engine.scale_gradients(problem, grads, cotangent, jnp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _loss(problem: engine.Problem, plan: _Plan, *arrays: Array | None) -> Array:
    """``L(arrays)`` of ``problem``'s layout (``engine.forward``); the VJP is
    ``engine.backward``."""
    return _forward(problem, plan, arrays)[0]


def _loss_fwd(problem: engine.Problem, plan: _Plan, *arrays: Array | None):
    # The forward rule runs only when a VJP will follow: where the statistics of each
    # anchor are complete within its block (engine.fuses_gradient), the gradient is
    # computed in the same pass over S, and the backward only scales it.
    if plan.one_pass(problem):
        loss, residuals = _value_and_grad(problem, arrays)
    else:
        loss, residuals = _forward(problem, plan, arrays)
    # the argument count gives labels and masks their ``None`` cotangents
    return loss, (residuals, len(arrays))


def _loss_bwd(problem: engine.Problem, plan: _Plan, saved, cotangent: Array):
    residuals, n_arrays = saved
    if plan.one_pass(problem):
        grads = _scale(problem, residuals, cotangent)
    else:
        grads = _backward(problem, plan, residuals, cotangent)
    # The differentiable arrays lead every layout's argument tuple (engine's table);
    # labels, masks and absent (None) arguments get a None (zero) cotangent.
    return (*grads, *([None] * (n_arrays - len(grads))))


_loss.defvjp(_loss_fwd, _loss_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _logits(similarity: Array, eps: float) -> Array:
    return engine.logits(similarity, eps, jnp)


@_logits.defjvp
def _logits_jvp(eps: float, primals: tuple[Array], tangents: tuple[Array]):
    (similarity,), (tangent,) = primals, tangents
    value = _logits(similarity, eps)
    return value, engine.logit_slope(similarity, eps, jnp) * tangent.astype(value.dtype)


# --------------------------------------------------------------------------- runtime


def _check_integer_range(name: str, a: Any) -> None:
    """Without ``jax_enable_x64`` JAX stores integers as int32, wrapping larger NumPy
    values silently (labels 0 and 2³² would become one class): ``ValueError``."""
    if (jax.config.jax_enable_x64 or not isinstance(a, np.ndarray) or a.dtype.kind not in "iu"
            or a.dtype.itemsize <= 4 or a.size == 0):
        return
    low, high = int(a.min()), int(a.max())
    info = np.iinfo(np.int32)
    if low < info.min or high > info.max:
        raise ValueError(
            f"{name} holds values from {low} to {high}, which do not fit in int32, the "
            "integer type of JAX without jax_enable_x64: enable it "
            "(jax.config.update('jax_enable_x64', True)) or renumber them")

_GROUP = engine.Param(
    "group", None, "Hashable | None",
    "The name of a mapped axis of an enclosing ``jax.shard_map`` / ``jax.pmap`` to shard "
    "the batch over (data parallel; see the Distributed page), or ``None`` (default): one "
    "device. Each device passes its local rows; the value is scaled so that its "
    "``lax.pmean`` is the loss of the concatenated batch, and ``lax.pmean`` of the "
    "gradients is exactly its gradient. Composes with ``chunk_size``; not with "
    "``negatives`` (no global batch).", functions=engine.BATCHED)
_KERNEL = engine.Param(
    "kernel", "auto", "str",
    '``"auto"`` (default): the portable core. Once the fused Pallas kernels (tiles of '
    "``S`` reduced on chip, no ``N × M`` array; see the Performance page) are verified "
    'compiled on a GPU (so far: in Pallas\' interpreter), ``"auto"`` will pick them when '
    "the call runs on a GPU and is supported (the arctanh map on ``info_nce`` without "
    "``labels``, with shared ``(M, D)`` ``negatives`` or none, and ``nt_xent``; without "
    '``group``). ``"portable"``: always the core. ``"fused"``: always the kernels, a '
    "``ValueError`` naming the option that prevents it otherwise; on a CPU they run in "
    "Pallas' interpreter (``interpret=True``), which is slow and meant for tests. With "
    '``group``, ``"fused"`` runs them on each device\'s rows against the gathered '
    "candidates (``info_nce`` without ``labels`` or ``negatives``, ``nt_xent``). Composes "
    "with ``jax.jit``, ``jax.grad`` and ``jax.vmap``.", functions=engine.LOSSES)

_NOTES = {
    "chunk_size": (
        '``"auto"`` budgets, from ``jax.default_backend()`` under ``jit``: untiled up to a '
        "256 MiB matrix on a CPU (XLA fuses the element-wise work there, so tiling pays off "
        "only for memory) or 1 GiB on an accelerator, else blocks of at most 64 MiB, one "
        "``lax.scan`` step each. Where the call is differentiated (``jax.grad``, "
        '``jax.vjp``), one direction (not ``symmetric``) with ``"mean"`` or ``"sum"`` '
        "computes its gradient in the same pass as the loss: three matrix products and no "
        "``N × M`` residual whatever ``chunk_size`` is."),
    "check_finite": (
        "Eager only (also under an eager ``jax.grad``): under ``jax.jit`` or ``jax.vmap`` "
        "the values are unknown at trace time and it is a ``ValueError`` (use "
        "``jax.debug_nans`` or ``jax.experimental.checkify`` there)."),
    "returns:loss": (
        "Float64 needs ``jax_enable_x64``. Gradients (``jax.grad``, ``jax.vjp``; reverse "
        "mode only) are the analytic ones of SPEC §2, in each input's dtype; ``jax.jit`` "
        "and ``jax.vmap`` (a batch of problems) compose. Forward mode (``jax.jvp``, "
        "``jax.jacfwd``) raises ``ForwardModeError``. Hyper-parameters are static Python "
        "values (fixed at trace time)."),
    "returns:logits": (
        "Differentiable in both modes (``jax.custom_jvp``) with SPEC §2.4's derivative "
        "(autodiff of ``clip`` would give ``½·φ'(b)`` at the bounds)."),
}


class JaxRuntime(engine.Runtime):
    """``tfree_core.engine.Runtime`` for JAX arrays (NumPy arrays and Python numbers are
    converted)."""

    array_type = jax.Array
    return_type = jax.Array
    extras = (_GROUP, _KERNEL)
    notes = _NOTES
    examples: Mapping[str, str] = {
        "info_nce": """
            import jax
            import tfree_jax

            query, key = jax.random.normal(jax.random.key(0), (2, 8, 16))
            loss, (d_query, d_key) = jax.value_and_grad(tfree_jax.info_nce, (0, 1))(query, key)
            clip = tfree_jax.info_nce(query, key, symmetric=True)
            assert d_query.shape == (8, 16) and clip.shape == ()
        """,
        "nt_xent": """
            import jax
            import tfree_jax

            z1, z2 = jax.random.normal(jax.random.key(0), (2, 8, 16))
            per_anchor = tfree_jax.nt_xent(z1, z2, reduction="none")
            assert per_anchor.shape == (16,)  # the z1 anchors first
        """,
        "sup_con": """
            import jax
            import jax.numpy as jnp
            import tfree_jax

            views = jax.random.normal(jax.random.key(0), (8, 2, 16))  # (N, V, D)
            labels = jnp.array([0, 0, 0, 1, 1, 2, 2, 2])
            per_anchor = tfree_jax.sup_con(views, labels, reduction="none")
            assert per_anchor.shape == (8, 2)
        """,
        "loss_from_similarity": """
            import jax
            import jax.numpy as jnp
            import tfree_jax

            similarity = jax.random.uniform(jax.random.key(0), (4, 6), minval=-1, maxval=1)
            positive_mask = jnp.eye(4, 6, dtype=bool)
            valid_mask = jnp.ones((4, 6), dtype=bool).at[0, 5].set(False)
            grad = jax.grad(tfree_jax.loss_from_similarity)(similarity, positive_mask,
                                                             valid_mask=valid_mask)
            assert grad[0, 5] == 0  # no candidate, no gradient
        """,
        "logits": """
            import math

            import jax.numpy as jnp
            import tfree_jax

            phi = tfree_jax.logits(jnp.array([0.0, 0.5, 1.0], dtype=jnp.float32))
            assert phi[0] == 0 and math.isclose(phi[1], math.log(3), rel_tol=1e-6)
            assert math.isclose(phi[2], 14.495466, rel_tol=1e-6)  # the float32 cap
        """,
    }
    libraries = ("jax", "numpy")
    also = ("builtins",)
    tracing = "jax.jit / jax.vmap"
    xp = jnp

    def check_extras(self, extras: Mapping[str, Any]) -> None:
        check_kernel(extras["kernel"])

    def convert(self, named):
        # after the library check: jnp.asarray would take a torch tensor through NumPy
        for name, a in named:
            _check_integer_range(name, a)
        return tuple(None if a is None else jnp.asarray(a) for _, a in named)

    def device_kind(self, arrays, extras) -> str:
        # XLA fuses the element-wise work on a CPU too, which moves where tiling pays off
        return "fused_cpu" if _platform(arrays) == "cpu" else "accelerator"

    def world_size(self, extras) -> int:
        group = extras.get("group")
        return 1 if group is None else world_size(group)

    def concrete(self, arrays) -> bool:
        return not _is_traced(arrays)

    def check_finite(self, spec, arrays, xp) -> None:
        # concrete eagerly, also under an eager jax.grad (its tracers hold values)
        differentiable = arrays[: len(spec.differentiable)]
        named = list(zip(spec.differentiable, differentiable, strict=True))
        try:
            engine.check_finite(named, jnp)
        except jax.errors.ConcretizationTypeError:
            raise ValueError(engine.needs_eager_message(self.tracing)) from None

    def apply(self, problem, arrays, extras, xp) -> Array:
        platform = _platform(arrays)
        group = extras.get("group")
        fused = use_fused(extras["kernel"], problem, arrays, platform, group)
        kernel = PallasKernel(interpret_on(platform)) if fused else None
        if group is not None:
            engine.check_sharded(problem, axis_size(group))
            if fused and kernel.interpret and checks_replication():
                raise ValueError(
                    "kernel='fused' with group= on a CPU runs the Pallas kernels in Pallas' "
                    "interpreter, which does not support jax.shard_map's replication checks: "
                    "pass check_vma=False to jax.shard_map (or use jax.pmap), or use "
                    "kernel='auto' or 'portable'")
        try:
            return _loss(problem, _Plan(group, kernel), *arrays)
        except TypeError as err:
            if "forward-mode" in str(err):  # custom_vjp under jax.jvp / jax.jacfwd
                raise ForwardModeError(_FORWARD_MODE_MESSAGE) from err
            raise

    def logit_map(self, similarity, eps, extras) -> Array:
        engine.make_options(eps=eps)  # a clear error for a bad eps before any tracing
        return _logits(jnp.asarray(similarity), eps)


RUNTIME = JaxRuntime()
