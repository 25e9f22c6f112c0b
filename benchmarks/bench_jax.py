"""CPU benchmark of tfree_jax: loss + gradient, float32, ratios measured side by side.

    python -m benchmarks.bench_jax [--quick] [--repeats R] [--prototype] [--no-optax]

(with ``tfree`` installed, or ``PYTHONPATH=.:backends`` from the repository root).

Pairs layout (InfoNCE), N ∈ {1024, 4096}, D ∈ {128, 512}, every candidate timed as
``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))``:

* ``tfree_jax``: ``tfree_jax.info_nce`` (the core's forward and analytic backward through
  ``jax.custom_vjp``);
* ``plain``: autodiff of the plain formula, ``u = z/‖z‖``, ``ℓ = 2·atanh(clip(u_q·u_kᵀ))``,
  ``optax.softmax_cross_entropy_with_integer_labels(ℓ, arange(N))``;
* ``floor``: three GEMMs of the loss's shapes (``S = Q·Kᵀ``, ``S·K``, ``Sᵀ·Q``), the work
  any loss + gradient must do;
* ``prototype`` (``--prototype``): the same loss and analytic gradient written so that XLA's
  CPU fusions keep one N×N buffer (see ``_prototype_info_nce``), to measure what a change of
  ``tfree_core``'s kernel would give. Not part of the library.

NT-Xent layout (2N' = N rows): ``tfree_jax.nt_xent`` vs ``optax.losses.ntxent``
(τ = 0.5), where the latter fits in memory: it builds an N×N×D temporary.

Calls are interleaved (one repeat of every candidate, in a fresh random order, then the
next repeat; ``benchmarks._harness``), each synchronised with ``block_until_ready``; the
table gives medians.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tfree_jax

from tfree_core import clip_bound

SIZES = ((1024, 128), (1024, 512), (4096, 128), (4096, 512))
OPTAX_MEMORY_LIMIT = 2 << 30  # bytes of temporaries allowed for optax.losses.ntxent

_B32 = np.float32(clip_bound(1e-6, float64=False))


# --------------------------------------------------------------------------- candidates


def _normalize(z: jax.Array) -> jax.Array:
    return z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def plain_info_nce(q: jax.Array, k: jax.Array) -> jax.Array:
    """``mean_i [logsumexp_j ℓ_ij - ℓ_ii]``, ``ℓ = 2·atanh(clip(cos(q_i, k_j), -b, b))``."""
    logits = 2 * jnp.arctanh(jnp.clip(_normalize(q) @ _normalize(k).T, -_B32, _B32))
    labels = jnp.arange(q.shape[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def gemm_floor(q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The three GEMMs of a loss + gradient: ``S = Q·Kᵀ``, then ``S·K`` and ``Sᵀ·Q``."""
    s = q @ k.T
    return s @ k, s.T @ q


def tfree_info_nce(q: jax.Array, k: jax.Array) -> jax.Array:
    return tfree_jax.info_nce(q, k)


# --------------------------------------------------------------------------- prototype
# The pairs layout (one positive per anchor, mean reduction, no masks), written as the core
# could write it for every single-positive layout. What differs from tfree_core's kernel:
#  1. The ratio R = (1+c)/(1-c), c = clip(s, -b, b), is computed bit for bit as
#     max(min(1+s, 1+b) / max(1-s, 1-b), R(-b)): XLA's CPU reduction fusions absorb
#     min/max/abs/divide but not clamp, select or compare, which force an N×N temporary.
#  2. The positive is excluded from N_i = Σ_{j≠i} R_ij by a float factor min(|i-j|, 1)
#     (iota arithmetic, fused), not by where(eye, 0, R) on a boolean matrix.
#  3. The positive's similarity is gathered (take on the flattened S, O(N)), its ratio
#     computed on that vector; |P(i)| = 1 is known: no sum over a boolean matrix.
#  4. The backward writes G = ∂L/∂S in one pass that may overwrite S; its weight
#     2/(1-c)² is written 0.5/h², h = 0.5 - 0.5c (the same value), so that no broadcast
#     constant is shared with the forward reduction (a shared one is materialised N×N).


def _ratio_fused(s: jax.Array) -> jax.Array:
    one = np.float32(1)
    opb, omb = np.float32(one + _B32), np.float32(one - _B32)
    return jnp.maximum(jnp.minimum(1 + s, opb) / jnp.maximum(1 - s, omb), np.float32(omb / opb))


def _prototype_forward(q, k):
    uq, nq = _proto_normalize(q)
    uk, nk = _proto_normalize(k)
    s = uq @ uk.T
    n = s.shape[0]
    idx = jnp.arange(n)
    s_pos = jnp.take(jnp.reshape(s, (-1,)), idx * (n + 1))
    fi = idx.astype(s.dtype)
    off_diagonal = jnp.minimum(jnp.abs(fi[:, None] - fi[None, :]), 1)
    negatives = jnp.sum(_ratio_fused(s) * off_diagonal, axis=1)
    c_pos = jnp.clip(s_pos, -_B32, _B32)
    positives = (1 + c_pos) / (1 - c_pos)
    loss = jnp.mean(jnp.log1p(negatives / positives))
    return loss, (s, s_pos, negatives, positives, uq, nq, uk, nk)


def _proto_normalize(z):
    m = jnp.max(jnp.abs(z), axis=-1, keepdims=True)
    scaled = z / jnp.where(m > 0, m, 1)
    norm = m * jnp.sqrt(jnp.sum(scaled * scaled, axis=-1, keepdims=True))
    return z / jnp.maximum(norm, 1e-12), norm


def _proto_normalize_vjp(u, norm, du):
    live = norm >= 1e-12
    radial = jnp.sum(u * du, axis=-1, keepdims=True)
    return jnp.where(live, (du - u * radial) / jnp.where(live, norm, 1), 0)


@jax.custom_vjp
def _prototype_info_nce(q: jax.Array, k: jax.Array) -> jax.Array:
    return _prototype_forward(q, k)[0]


def _prototype_backward(res, g):
    s, s_pos, negatives, positives, uq, nq, uk, nk = res
    n = s.shape[0]
    per_anchor = (g / n) / (negatives + positives)
    c_pos = jnp.clip(s_pos, -_B32, _B32)
    slope_pos = jnp.where(c_pos == s_pos, 2 / ((1 - c_pos) * (1 + c_pos)), 0)
    diagonal = -per_anchor * slope_pos * negatives
    c = jnp.clip(s, -_B32, _B32)
    h = 0.5 - 0.5 * c
    weight = jnp.where(c == s, 0.5 / (h * h), 0)
    idx = jnp.arange(n)
    grad_s = jnp.where(idx[:, None] == idx[None, :], diagonal[:, None],
                       weight * per_anchor[:, None])
    return (_proto_normalize_vjp(uq, nq, grad_s @ uk),
            _proto_normalize_vjp(uk, nk, grad_s.T @ uq))


_prototype_info_nce.defvjp(_prototype_forward, _prototype_backward)


# --------------------------------------------------------------------------- timing


def _value_and_grad(fn: Callable, argnums=(0, 1)) -> Callable:
    return jax.jit(jax.value_and_grad(fn, argnums=argnums))


def _temp_bytes(fn: Callable, *args) -> int:
    analysis = fn.lower(*args).compile().memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0)) if analysis is not None else 0


def _interleaved(fns: dict[str, Callable], args: tuple, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function (``_harness.interleaved``), each call
    synchronised; the first call of each (compilation) is not timed."""
    from benchmarks._harness import interleaved

    steps = {name: (lambda fn=fn: jax.block_until_ready(fn(*args))) for name, fn in fns.items()}
    return interleaved(steps, repeats)


def _data(n: int, d: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, d), dtype=np.float32)
    k = q + rng.standard_normal((n, d), dtype=np.float32)
    return jnp.asarray(q), jnp.asarray(k)


def variants(n: int, d: int, *, chunk: int | str = 256, peer_max_gib: float = 0.5,
             seed: int = 0, peers: bool = True) -> list:
    """The candidates of ``python -m benchmarks`` for JAX (float32, CPU device): tfree
    eager (``jax.value_and_grad``, the core itself jitted) / under ``jax.jit`` / tiled
    (``jax.jit``, ``lax.scan`` over the blocks), autodiff of the plain formula eager / under
    ``jax.jit``, three GEMMs (jitted), and ``optax.losses.ntxent`` (τ = 0.5) against
    ``tfree_jax.nt_xent`` on the NT-Xent layout (``N`` rows) where optax's ``N×N×D``
    temporaries take at most ``peer_max_gib``. Jitted steps are compiled ahead of time."""
    from benchmarks._harness import Variant

    q, k = _data(n, d, seed)
    args = (q, k)

    def eager(fn: Callable) -> Callable:
        step = jax.value_and_grad(fn, argnums=(0, 1))
        return lambda: jax.block_until_ready(step(*args))

    def compiled(fn: Callable, *xs) -> Callable:
        xs = xs or args
        step = jax.jit(fn).lower(*xs).compile()
        return lambda: jax.block_until_ready(step(*xs))

    def tiled(a: jax.Array, b: jax.Array) -> jax.Array:
        return tfree_jax.info_nce(a, b, chunk_size=chunk)

    def untiled(a: jax.Array, b: jax.Array) -> jax.Array:
        return tfree_jax.info_nce(a, b, chunk_size=None)

    out = [
        Variant("tfree", lambda: eager(tfree_info_nce)),
        Variant("tfree compiled", lambda: compiled(jax.value_and_grad(tfree_info_nce,
                                                                      argnums=(0, 1)))),
        Variant("tfree untiled", lambda: compiled(jax.value_and_grad(untiled,
                                                                     argnums=(0, 1)))),
        Variant(f"tfree tiled ({chunk})", lambda: compiled(jax.value_and_grad(tiled,
                                                                              argnums=(0, 1)))),
        Variant("autodiff eager", lambda: eager(plain_info_nce)),
        Variant("autodiff compiled", lambda: compiled(jax.value_and_grad(plain_info_nce,
                                                                         argnums=(0, 1)))),
        Variant("3 GEMMs", lambda: compiled(gemm_floor)),
    ]
    if not peers:
        return out
    half = n // 2
    z1, z2 = q[:half], k[:half]
    labels = jnp.concatenate([jnp.arange(half)] * 2)
    ours = jax.value_and_grad(lambda a, b, _: tfree_jax.nt_xent(a, b), argnums=(0, 1))
    theirs = jax.value_and_grad(
        lambda a, b, lab: optax.losses.ntxent(jnp.concatenate([a, b]), lab, 0.5),
        argnums=(0, 1))
    need = _temp_bytes(jax.jit(theirs), z1, z2, labels) / 2**30
    note = "NT-Xent layout, N rows"
    out.append(Variant("tfree nt_xent compiled", lambda: compiled(ours, z1, z2, labels),
                       layout="nt_xent", note=note))
    if need <= peer_max_gib:
        out.append(Variant("optax ntxent compiled", lambda: compiled(theirs, z1, z2, labels),
                           baseline="tfree nt_xent compiled", layout="nt_xent", note=note))
    else:
        out.append(Variant("optax ntxent compiled", None, baseline="tfree nt_xent compiled",
                           layout="nt_xent", skip=f"needs {need:.3g} GiB (N×N×D)", note=note))
    return out


def bench_pairs(sizes, repeats: int, prototype: bool) -> list[str]:
    head = "| N | D | tfree_jax (ms) | plain autodiff (ms) | **speed-up** | 3-GEMM floor (ms) |"
    head += " tfree_jax / floor | plain / floor |"
    rule = "|---:|---:|---:|---:|---:|---:|---:|---:|"
    if prototype:
        head += " prototype (ms) | plain / prototype |"
        rule += "---:|---:|"
    rows = [head, rule]
    for n, d in sizes:
        q, k = _data(n, d)
        fns = {"tfree": _value_and_grad(tfree_info_nce), "plain": _value_and_grad(plain_info_nce),
               "floor": jax.jit(gemm_floor)}
        if prototype:
            fns["prototype"] = _value_and_grad(_prototype_info_nce)
        t = _interleaved(fns, (q, k), repeats)
        row = (f"| {n} | {d} | {1e3 * t['tfree']:.1f} | {1e3 * t['plain']:.1f} | "
               f"**{t['plain'] / t['tfree']:.2f}×** | {1e3 * t['floor']:.1f} | "
               f"{t['tfree'] / t['floor']:.2f} | {t['plain'] / t['floor']:.2f} |")
        if prototype:
            row += f" {1e3 * t['prototype']:.1f} | {t['plain'] / t['prototype']:.2f}× |"
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_nt_xent(sizes, repeats: int) -> list[str]:
    rows = ["| rows 2N' | D | tfree_jax.nt_xent (ms) | optax.losses.ntxent τ=0.5 (ms) | speed-up |",
            "|---:|---:|---:|---:|---:|"]
    for n, d in sizes:
        z1, z2 = _data(n // 2, d, seed=1)
        labels = jnp.concatenate([jnp.arange(n // 2)] * 2)
        ours = jax.jit(jax.value_and_grad(
            lambda a, b, _: tfree_jax.nt_xent(a, b), argnums=(0, 1)))
        theirs = jax.jit(jax.value_and_grad(
            lambda a, b, lab: optax.losses.ntxent(jnp.concatenate([a, b]), lab, 0.5),
            argnums=(0, 1)))
        need = _temp_bytes(theirs, z1, z2, labels)
        if need > OPTAX_MEMORY_LIMIT:
            row = (f"| {n} | {d} | – | skipped: needs {need / 2**30:.1f} GiB of N×N×D "
                   "temporaries | – |")
        else:
            t = _interleaved({"ours": ours, "theirs": theirs}, (z1, z2, labels), repeats)
            row = (f"| {n} | {d} | {1e3 * t['ours']:.1f} | {1e3 * t['theirs']:.1f} | "
                   f"**{t['theirs'] / t['ours']:.1f}×** |")
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1024, D = 128 only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per candidate")
    parser.add_argument("--prototype", action="store_true",
                        help="also time the fused prototype of the proposed core change")
    parser.add_argument("--no-optax", action="store_true", help="skip the NT-Xent table")
    args = parser.parse_args(argv)
    sizes = SIZES[:1] if args.quick else SIZES
    repeats = args.repeats or (3 if args.quick else 7)
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, optax {optax.__version__}, device {device.platform} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), float32, "
          f"median of {repeats} interleaved calls\n")
    print("Pairs layout (InfoNCE), loss + gradient w.r.t. query and key:\n")
    rows = bench_pairs(sizes, repeats, args.prototype)
    if not args.no_optax and not args.quick:
        print("\nNT-Xent layout, loss + gradient:\n")
        rows += ["", *bench_nt_xent(sizes, max(3, repeats // 2))]
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
