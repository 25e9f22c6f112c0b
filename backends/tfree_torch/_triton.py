"""Fused Triton kernels for the temperature-free loss (``kernel="fused"``).

Two kernels, each one pass over tiles of ``S = U_a·U_cᵀ`` held in registers (float32, or
float64 for float64 inputs; matrix products at IEEE precision, no TF32), never an
``N × M`` array in memory (``engine.TileKernel`` states the formulas; the engine drives
them):

* :func:`_sums_kernel`: per block of anchor rows, stream the candidate tiles and
  accumulate ``N_i = Σ_j keep_ij·(1+c)/(1-c)`` (``c = clip(S_ij, -b, b)``), and for a
  symmetric loss add each tile's column sums into ``N_j`` (``atomic_add``): no running
  maximum, no ``exp``/``log``/``atanh`` per element;
* :func:`_grad_kernel`: ``out_x = Σ_y (s_x + t_y)·keep_xy·2/(1-c_xy)²·Y_y`` (0 where the
  clip is active), recomputing the tiles. ``dU_a = G·U_c`` is one launch (``X = U_a``,
  ``Y = U_c``) and ``dU_c = Gᵀ·U_a`` another with the roles swapped (each side drops the
  other side's indices given by ``engine.exclusions``, so both launches see the
  same candidates).

Distributed (``group=``): each rank launches the same kernels on its local anchor rows
against the gathered candidates (``engine.forward`` / ``engine.backward`` with ``comm``
and ``kernel``).

Extra memory ``O(N + M)`` besides the normalised inputs and the gradients.

Interpreter mode (CPU, for tests): Triton runs kernels on the CPU when the environment
variable ``TRITON_INTERPRET=1`` is set *before* Triton is first imported (``import
tfree_torch`` imports ``torch._dynamo``, which imports Triton when it is installed). Then
``kernel="fused"`` also accepts CPU tensors. Without it the fused path needs CUDA tensors.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch

from tfree_core import engine
from tfree_core.engine import Tiling

from ._function import in_vmap
from ._namespace import xp

__all__ = ["KERNEL", "KERNELS", "available", "check_kernel", "interpreting", "use_fused"]

KERNELS = ("auto", "fused", "portable")


# --------------------------------------------------------------------------- availability


@functools.lru_cache(maxsize=1)
def _triton() -> Any:
    """The ``triton`` module, or ``None`` when it is not installed."""
    try:
        import triton
    except ImportError:
        return None
    return triton


def _clashes_with_tensorflow() -> bool:
    """Whether importing Triton now would abort the process: TensorFlow's LLVM is loaded
    and Triton's is not, and the two register the same command-line options (LLVM
    aborts, "inconsistency in registered CommandLine options", no exception)."""
    return "tensorflow" in sys.modules and "triton" not in sys.modules


def available() -> bool:
    """Whether Triton is installed."""
    return _triton() is not None


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    triton = _triton()
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels()[0], InterpretedFunction)


def _why_not(problem: engine.Problem, arrays: tuple[torch.Tensor | None, ...]) -> str | None:
    """Why the fused path cannot run this call (``None``: it can)."""
    reason = engine.fused_unsupported(problem, arrays)
    if reason is not None:
        return f"the fused kernels do not support {reason}"
    if _clashes_with_tensorflow():
        return ("Triton after TensorFlow in one process (their LLVM builds clash and "
                "abort the process): import torch._dynamo (or triton) before tensorflow")
    if not available():
        return "Triton is not installed (pip install 'tfree[fused]')"
    if torch.compiler.is_compiling():
        return "torch.compile (the fused kernels run eagerly)"
    tensors = [a for a in arrays if isinstance(a, torch.Tensor)]
    if any(in_vmap(a) for a in tensors):
        return "torch.vmap (the fused kernels take plain tensors)"
    device = arrays[0].device
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return (f"tensors on {device.type} (the fused kernels need CUDA tensors, or CPU "
                "tensors with TRITON_INTERPRET=1 set before Triton is imported)")
    return None


def check_kernel(kernel: object) -> None:
    """``ValueError`` unless ``kernel`` is one of :data:`KERNELS`."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}; "
                         f"got {kernel!r}")


AUTO_SELECTS_FUSED = False
"""Whether ``kernel="auto"`` may pick the kernels on CUDA. Off until they have passed the
conformance suite compiled on a GPU (so far they are verified in Triton's interpreter):
until then they run only when asked for with ``kernel="fused"``."""


def use_fused(kernel: str, problem: engine.Problem,
              arrays: tuple[torch.Tensor | None, ...]) -> bool:
    """Resolve ``kernel``: ``"portable"`` never, ``"fused"`` always (``ValueError`` naming
    what prevents it), ``"auto"`` on CUDA tensors when nothing prevents it (once
    :data:`AUTO_SELECTS_FUSED`)."""
    check_kernel(kernel)
    if kernel == "portable":
        return False
    if kernel == "auto":
        # cheap tests first: auto never imports Triton for CPU tensors
        if (not AUTO_SELECTS_FUSED or arrays[0].device.type != "cuda"
                or engine.fused_unsupported(problem, arrays)):
            return False
        return _why_not(problem, arrays) is None
    reason = _why_not(problem, arrays)
    if reason is not None:
        raise ValueError(f"kernel='fused': {reason}; use kernel='auto' or 'portable'")
    return True


# --------------------------------------------------------------------------- kernels


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple[Any, Any]:
    """The two kernels, compiled by ``triton.jit`` (interpreted under ``TRITON_INTERPRET``)."""
    from . import _triton_kernels

    return _triton_kernels._sums_kernel, _triton_kernels._grad_kernel

# --------------------------------------------------------------------------- launches


def _blocks(d: int, interpret: bool) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_D)``: ``BLOCK_D`` covers the whole feature axis (rows
    stay in registers); smaller tiles for wide rows to bound register use."""
    block_d = max(16, 1 << (d - 1).bit_length())
    if interpret:  # the interpreter's cost is per program and per op, not per element
        return 32, 64, block_d
    if block_d <= 128:
        return 64, 64, block_d
    if block_d <= 256:
        return 64, 32, block_d
    return 32, 32, block_d


def _mask_arg(v: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # a 1-element placeholder where the kernel ignores the pointer (HAS_* is False)
    return like.new_zeros(1, dtype=torch.int8) if v is None else v.to(torch.int8).contiguous()


def _index_arg(v: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # int32 indices; a 1-element placeholder where the kernel ignores the pointer
    return like.new_zeros(1, dtype=torch.int32) if v is None else v.to(torch.int32).contiguous()


class TritonKernel:
    """``engine.TileKernel`` on torch tensors (see the module docstring)."""

    def _common(self, t: Tiling, bound: float) -> tuple[torch.Tensor, torch.Tensor, Any]:
        a = t.anchors.contiguous()
        c = t.candidates.contiguous()
        bound_t = torch.tensor([bound], dtype=a.dtype, device=a.device)
        return a, c, (bound_t, engine.exclusions(t, xp))

    def sums(self, t: Tiling, bound: float, columns: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, c, (bound_t, (ex_rows, _)) = self._common(t, bound)
        n, d = a.shape
        m = c.shape[0]
        interpret = interpreting()
        block_m, block_n, block_d = _blocks(d, interpret)
        row_sum = torch.empty(n, dtype=a.dtype, device=a.device)
        col_sum = torch.zeros(m if columns else 1, dtype=a.dtype, device=a.device)
        grid = (-(-n // block_m),)
        _kernels()[0][grid](
            a, c, _mask_arg(t.where_rows, a), _mask_arg(t.where_cols, a),
            *map(_index_arg, ex_rows, (a, a)), bound_t, row_sum, col_sum,
            n, m, d, a.stride(0), c.stride(0),
            HAS_ROW_OK=t.where_rows is not None, HAS_COL_OK=t.where_cols is not None,
            HAS_EX_A=ex_rows[0] is not None, HAS_EX_B=ex_rows[1] is not None,
            COLUMNS=columns,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            FP64=a.dtype == torch.float64,
        )
        return row_sum, (col_sum if columns else None)

    def _weighted(self, x: torch.Tensor, y: torch.Tensor, sx: torch.Tensor | None,
                  sy: torch.Tensor | None, x_ok: torch.Tensor | None,
                  y_ok: torch.Tensor | None, ex: tuple[torch.Tensor | None, ...],
                  bound_t: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        m = y.shape[0]
        block_m, block_n, block_d = _blocks(d, interpreting())
        out = torch.empty_like(x)
        zero = x.new_zeros(1)
        _kernels()[1][(-(-n // block_m),)](
            x, y, zero if sx is None else sx.contiguous(), zero if sy is None else sy.contiguous(),
            _mask_arg(x_ok, x), _mask_arg(y_ok, x), *map(_index_arg, ex, (x, x)), bound_t, out,
            n, m, d, x.stride(0), y.stride(0), out.stride(0),
            HAS_SX=sx is not None, HAS_SY=sy is not None,
            HAS_X_OK=x_ok is not None, HAS_Y_OK=y_ok is not None,
            HAS_EX_A=ex[0] is not None, HAS_EX_B=ex[1] is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            FP64=x.dtype == torch.float64,
        )
        return out

    def grads(self, t: Tiling, bound: float, row_scale: torch.Tensor,
              col_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        a, c, (bound_t, (ex_rows, ex_cols)) = self._common(t, bound)
        du_a = self._weighted(a, c, row_scale, col_scale, t.where_rows, t.where_cols, ex_rows,
                              bound_t)
        du_c = self._weighted(c, a, col_scale, row_scale, t.where_cols, t.where_rows, ex_cols,
                              bound_t)
        return du_a, du_c


KERNEL = TritonKernel()
