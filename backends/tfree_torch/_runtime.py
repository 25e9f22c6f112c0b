"""The PyTorch runtime of the public functions: torch tensors in, the core's analytic
gradient wired into autograd (``_function``), ``torch.distributed`` (``group=``) and the
Triton kernels (``kernel=``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tfree_core import engine

from ._distributed import TorchCollectives, check_group, world_size
from ._function import apply, device_type, in_vmap
from ._namespace import xp
from ._static import assume_constant_result, problem_for
from ._triton import KERNEL, check_kernel, use_fused

__all__ = ["RUNTIME", "TorchRuntime"]

_GROUP = engine.Param(
    "group", None, "torch.distributed.ProcessGroup | None",
    "A ``torch.distributed.ProcessGroup`` to shard the batch over (data parallel, eager "
    "only; see the Distributed page), or ``None`` (default): one device. Each rank passes "
    "its local rows; the value is scaled so that its average over the ranks is the loss "
    "of the concatenated batch, so DDP's gradient averaging gives exactly its gradient. "
    "Composes with ``chunk_size``; not with ``negatives`` (no global batch).",
    functions=engine.BATCHED)
_KERNEL = engine.Param(
    "kernel", "auto", "str",
    '``"auto"`` (default): the portable core. Once the fused kernels are verified compiled '
    'on a GPU (so far: in Triton\'s interpreter), ``"auto"`` will pick them on CUDA tensors '
    "when Triton is installed and the call is supported (the arctanh map on ``info_nce`` "
    "without ``labels``, with shared ``(M, D)`` ``negatives`` or none, and ``nt_xent``; "
    'eager; without ``group``). ``"portable"``: always the core. ``"fused"``: always the '
    "kernels, a ``ValueError`` naming what prevents it otherwise (CPU tensors run them "
    "only in Triton's interpreter, ``TRITON_INTERPRET=1`` set before Triton is imported). "
    'With ``group``, ``"fused"`` runs them on each rank\'s rows against the gathered '
    "candidates (``info_nce`` without ``labels`` or ``negatives``, ``nt_xent``).",
    functions=engine.LOSSES)

_NOTES = {
    "chunk_size": (
        '``"auto"`` budgets: untiled up to an 8 MiB matrix on a CPU, 1 GiB on an '
        "accelerator; else blocks of at most 8 MiB (CPU: they stay in cache) or 64 MiB. "
        "Where autograd records the call (an input requires grad), one direction (not "
        '``symmetric``) with ``"mean"`` or ``"sum"`` computes its gradient in the same '
        "pass as the loss, block by block while each block is in cache: three matrix "
        "products and no ``N × M`` residual whatever ``chunk_size`` is."),
    "check_finite": (
        "One host synchronisation. Eager only: under ``torch.func.vmap`` and "
        "``torch.compile(fullgraph=True)`` it is an error (the values are unknown while "
        "tracing; Dynamo reports it as ``torch._dynamo.exc.Unsupported`` quoting the "
        "``ValueError``); under ``torch.compile`` without ``fullgraph`` Dynamo runs the "
        "call eagerly instead, where the check runs."),
    "returns:loss": (
        "Also under ``torch.autocast``. Gradients flow to the embeddings (or the "
        "similarity) through the analytic formula of SPEC §2, each in its input's dtype "
        "and on its device; labels and masks get none. Double backward is not supported "
        "(``RuntimeError``)."),
    "returns:logits": (
        "Differentiable by torch autograd: ``φ'(s) = 2/(1 - s²)`` inside ``[-b, b]`` "
        "(bounds included), 0 outside."),
}


@assume_constant_result
def _library_error(types: tuple[tuple[str, str, str], ...]) -> str:
    """Tensors only (no NumPy arrays: torch's own functions take none either). A constant
    under ``torch.compile``, which cannot trace the string handling."""
    return engine.library_error(types, ("torch",))


class TorchRuntime(engine.Runtime):
    """``tfree_core.engine.Runtime`` for torch tensors."""

    array_type = torch.Tensor
    return_type = torch.Tensor
    extras = (_GROUP, _KERNEL)
    notes = _NOTES
    examples: Mapping[str, str] = {
        "info_nce": """
            import torch
            import tfree_torch

            query = torch.randn(8, 16, requires_grad=True)
            key = torch.randn(8, 16, requires_grad=True)
            loss = tfree_torch.info_nce(query, key)
            loss.backward()  # the analytic gradient, into query.grad and key.grad
            clip = tfree_torch.info_nce(query, key, symmetric=True)
            assert query.grad.shape == (8, 16) and clip.shape == ()
        """,
        "nt_xent": """
            import torch
            import tfree_torch

            z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
            per_anchor = tfree_torch.nt_xent(z1, z2, reduction="none")
            assert per_anchor.shape == (16,)  # the z1 anchors first
        """,
        "sup_con": """
            import torch
            import tfree_torch

            views = torch.randn(8, 2, 16)  # (N, V, D)
            labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
            per_anchor = tfree_torch.sup_con(views, labels, reduction="none")
            assert per_anchor.shape == (8, 2)
        """,
        "loss_from_similarity": """
            import torch
            import tfree_torch

            similarity = (2 * torch.rand(4, 6) - 1).requires_grad_()
            positive_mask = torch.eye(4, 6, dtype=torch.bool)
            valid_mask = torch.ones(4, 6, dtype=torch.bool)
            valid_mask[0, 5] = False
            loss = tfree_torch.loss_from_similarity(similarity, positive_mask,
                                                    valid_mask=valid_mask)
            loss.backward()
            assert similarity.grad[0, 5] == 0  # no candidate, no gradient
        """,
        "logits": """
            import math

            import torch
            import tfree_torch

            phi = tfree_torch.logits(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
            assert phi[0] == 0 and math.isclose(phi[1], math.log(3))
            assert math.isclose(phi[2], 14.508657, rel_tol=1e-7)  # the cap at eps = 1e-6
        """,
    }
    tracing = "torch.compile"
    xp = xp

    def check_options(self, function, args) -> None:
        if not torch.compiler.is_compiling():
            return
        arrays = set(function.array_names)
        for name, value in args.items():
            if name not in arrays and isinstance(value, (np.generic, np.ndarray)):
                raise TypeError(
                    f"{name} must be a Python scalar under torch.compile (Dynamo traces a "
                    "NumPy scalar as a tensor, which cannot be a constant of the graph); "
                    f"got a NumPy value: pass {name}=value.item() (eager calls take NumPy "
                    "scalars as they are)")

    def check_arrays(self, named, extras) -> None:
        if not all(a is None or isinstance(a, torch.Tensor) for _, a in named):
            raise TypeError(_library_error(engine.array_types(named)))
        for name, a in named:
            if a is not None and a.is_nested:
                raise TypeError(f"{name} is a nested tensor; the loss takes dense (strided) "
                                "tensors of one shape: pad the batch and pass where=")
            if a is not None and a.layout != torch.strided:
                raise TypeError(f"{name} is a {a.layout} tensor; the loss takes dense "
                                "(torch.strided) tensors: call .to_dense()")

    def check_extras(self, extras: Mapping[str, Any]) -> None:
        check_kernel(extras["kernel"])

    def prepare(self, request, arrays, args, extras, xp):
        group = extras.get("group")
        return problem_for(request.layout, arrays, symmetric=request.symmetric,
                           logit_map=args["logit_map"], temperature=args["temperature"],
                           eps=args["eps"], reduction=args["reduction"],
                           chunk_size=args["chunk_size"],
                           world_size=1 if group is None else world_size(group))

    def concrete(self, arrays) -> bool:
        # Values are read on the host: eager only, never while compiling, never on vmap's
        # batched tensors, so the autograd Function itself never synchronises.
        return not torch.compiler.is_compiling() and not any(
            a is not None and in_vmap(a) for a in arrays)

    def check_finite(self, spec, arrays, xp) -> None:
        if torch.compiler.is_compiling():
            raise ValueError(engine.needs_eager_message("torch.compile"))
        if any(a is not None and in_vmap(a) for a in arrays):
            raise ValueError(engine.needs_eager_message("torch.func.vmap"))
        n = len(spec.differentiable)
        engine.check_finite(list(zip(spec.differentiable, arrays[:n], strict=True)), xp)

    def apply(self, problem, arrays, extras, xp) -> torch.Tensor:
        kernel, group = extras["kernel"], extras.get("group")
        if group is None:
            return apply(problem, arrays, kernel=KERNEL if use_fused(kernel, problem, arrays)
                         else None)
        check_group(group)
        comm = TorchCollectives(group)
        engine.check_sharded(problem, comm.world_size)
        fused = kernel == "fused" and use_fused(kernel, problem, arrays)
        return apply(problem, arrays, comm=comm, kernel=KERNEL if fused else None)

    def logit_map(self, similarity, eps, extras) -> torch.Tensor:
        if not isinstance(similarity, torch.Tensor):
            raise TypeError(_library_error(engine.array_types((("similarity", similarity),))))
        with torch.autocast(device_type(similarity), enabled=False):
            return engine.logits(similarity, eps, xp)


RUNTIME = TorchRuntime()
