"""The Triton kernels of the fused path (imported only when Triton is installed).

See ``_triton`` for what they compute and how they are launched. Besides the row masks,
each row ``x`` of ``X`` drops the columns ``EX_A[x]`` and ``EX_B[x]`` (-1: none): its own
index and its NT-Xent partner among ``Y``'s rows (``engine.exclusions``, global
indices on a rank's row block). Tiles of ``S`` are
computed with ``tl.dot(..., input_precision="ieee")`` (no TF32) in the compute dtype
(float32, or float64 for float64 inputs), and so are all sums and products.
"""

import triton
import triton.language as tl


@triton.jit
def _divide(x, y, FP64: tl.constexpr):
    """``x / y`` correctly rounded (Triton's float32 ``/`` is approximate on GPUs)."""
    if FP64:
        return x / y
    return tl.div_rn(x, y)


@triton.jit
def _sums_kernel(
    A, C, ROW_OK, COL_OK, EX_A, EX_B, BOUND, ROW_SUM, COL_SUM, n, m, d, stride_a, stride_c,
    HAS_ROW_OK: tl.constexpr, HAS_COL_OK: tl.constexpr, HAS_EX_A: tl.constexpr,
    HAS_EX_B: tl.constexpr, COLUMNS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    FP64: tl.constexpr,
):
    """Row sums ``N_i = Σ_j keep_ij·(1+c)/(1-c)``, ``c = clip(S_ij, -b, b)``, of one block
    of ``BLOCK_M`` anchor rows; with ``COLUMNS``, each tile's column sums added into
    ``COL_SUM`` (the column direction of a symmetric loss)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_in = rows < n
    dim_in = dims < d
    a = tl.load(A + rows[:, None] * stride_a + dims[None, :],
                mask=row_in[:, None] & dim_in[None, :], other=0.0)
    bound = tl.load(BOUND)
    row_ok = row_in
    if HAS_ROW_OK:
        row_ok = row_ok & (tl.load(ROW_OK + rows, mask=row_in, other=0) != 0)
    if HAS_EX_A:
        ex_a = tl.load(EX_A + rows, mask=row_in, other=-1)
    if HAS_EX_B:
        ex_b = tl.load(EX_B + rows, mask=row_in, other=-1)
    acc = tl.zeros([BLOCK_M], dtype=a.dtype)
    for start in range(0, m, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < m
        c = tl.load(C + cols[:, None] * stride_c + dims[None, :],
                    mask=col_in[:, None] & dim_in[None, :], other=0.0)
        s = tl.dot(a, tl.trans(c), input_precision="ieee", out_dtype=a.dtype)
        keep = row_ok[:, None] & col_in[None, :]
        if HAS_COL_OK:
            keep = keep & (tl.load(COL_OK + cols, mask=col_in, other=0) != 0)[None, :]
        if HAS_EX_A:
            keep = keep & (ex_a[:, None] != cols[None, :])
        if HAS_EX_B:
            keep = keep & (ex_b[:, None] != cols[None, :])
        # dropped entries become c = -1, hence R = 0 exactly (as the core's ratio)
        clipped = tl.where(keep, tl.minimum(tl.maximum(s, -bound), bound), -1.0)
        ratio = _divide(1.0 + clipped, 1.0 - clipped, FP64)
        acc += tl.sum(ratio, axis=1)
        if COLUMNS:
            tl.atomic_add(COL_SUM + cols, tl.sum(ratio, axis=0), mask=col_in)
    tl.store(ROW_SUM + rows, acc, mask=row_in)


@triton.jit
def _grad_kernel(
    X, Y, SX, SY, X_OK, Y_OK, EX_A, EX_B, BOUND, OUT, n, m, d, stride_x, stride_y, stride_o,
    HAS_SX: tl.constexpr, HAS_SY: tl.constexpr, HAS_X_OK: tl.constexpr,
    HAS_Y_OK: tl.constexpr, HAS_EX_A: tl.constexpr, HAS_EX_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    FP64: tl.constexpr,
):
    """``OUT_x = Σ_y (s_x + t_y)·keep_xy·2/(1-c_xy)²·Y_y`` for one block of rows of ``X``
    (``c = clip(⟨X_x, Y_y⟩, -b, b)``; 0 where the clip is active, SPEC §2.4)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_in = rows < n
    dim_in = dims < d
    x = tl.load(X + rows[:, None] * stride_x + dims[None, :],
                mask=row_in[:, None] & dim_in[None, :], other=0.0)
    bound = tl.load(BOUND)
    row_ok = row_in
    if HAS_X_OK:
        row_ok = row_ok & (tl.load(X_OK + rows, mask=row_in, other=0) != 0)
    if HAS_EX_A:
        ex_a = tl.load(EX_A + rows, mask=row_in, other=-1)
    if HAS_EX_B:
        ex_b = tl.load(EX_B + rows, mask=row_in, other=-1)
    if HAS_SX:
        sx = tl.load(SX + rows, mask=row_in, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=x.dtype)
    for start in range(0, m, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < m
        y = tl.load(Y + cols[:, None] * stride_y + dims[None, :],
                    mask=col_in[:, None] & dim_in[None, :], other=0.0)
        s = tl.dot(x, tl.trans(y), input_precision="ieee", out_dtype=x.dtype)
        clipped = tl.minimum(tl.maximum(s, -bound), bound)
        # φ' is 0 where the clip is active (SPEC §2.4): a clamped pair gets no gradient
        inside = row_ok[:, None] & col_in[None, :] & (clipped == s)
        if HAS_Y_OK:
            inside = inside & (tl.load(Y_OK + cols, mask=col_in, other=0) != 0)[None, :]
        if HAS_EX_A:
            inside = inside & (ex_a[:, None] != cols[None, :])
        if HAS_EX_B:
            inside = inside & (ex_b[:, None] != cols[None, :])
        gap = 1.0 - tl.where(inside, clipped, 0.0)
        # R·φ' = 2/(1-c)²
        weight = tl.where(inside, _divide(tl.zeros_like(gap) + 2.0, gap * gap, FP64), 0.0)
        if HAS_SX:
            if HAS_SY:
                sy = tl.load(SY + cols, mask=col_in, other=0.0)
                weight = weight * (sx[:, None] + sy[None, :])
            else:
                weight = weight * sx[:, None]
        else:
            sy = tl.load(SY + cols, mask=col_in, other=0.0)
            weight = weight * sy[None, :]
        acc += tl.dot(weight, y, input_precision="ieee", out_dtype=x.dtype)
    tl.store(OUT + rows[:, None] * stride_o + dims[None, :], acc,
             mask=row_in[:, None] & dim_in[None, :])
