"""Loss + backward timings of ``tfree_torch`` against the ways a torch user would otherwise
get the same loss (CPU, float32, pairs layout: query ``i``'s positive is key ``i``, its
candidates all ``N`` keys).

Methods, measured side by side in one process, interleaved (each repeat runs every method
once, in turn), reported as medians:

* ``tfree_torch``: ``tfree_torch.info_nce(q, k)`` (analytic backward), eager;
* ``tfree chunk=256``: the same with ``chunk_size=256`` (tiled: 256 anchors at a time, the
  block of ``S`` recomputed in the backward; smaller temporaries, no ``N × N`` matrix);
* ``tfree compiled``: ``torch.compile(tfree_torch.info_nce, fullgraph=True)`` (the same
  analytic forward and backward, fused by Inductor);
* ``eager``: torch eager autograd of the plain formula
  ``F.cross_entropy(2·atanh(clamp(normalize(q) @ normalize(k).T, -b, b)), arange(N))``;
* ``compiled``: ``torch.compile`` of that same formula (default mode);
* ``pml``: pytorch-metric-learning ``NTXentLoss(temperature=0.5)`` on exactly the pairs
  layout: ``loss(q, arange(N), indices_tuple=(i, i, a, n), ref_emb=k, ref_labels=arange(N))``
  with positive pairs ``(q_i, k_i)`` and negative pairs ``(q_a, k_n)`` for all ``a ≠ n``
  (the index tensors are built once, outside the timing; the logit is ``s/τ``, and
  ``τ = 0.5`` matches ``φ(s) ≈ 2s`` near 0). Called with ``ref_emb`` but without
  ``indices_tuple``, PML drops the pairs ``(i, i)`` as self-comparisons and returns 0.
  PML's ``NTXentLoss`` builds a (positive pairs × negative pairs) matrix, ``N·N(N-1)``
  entries here: O(N³) memory (4.3 GB per temporary at N = 1024, 275 GB at N = 4096), so
  it runs only where that matrix takes at most ``--pml-max-gib`` (default 1 GiB) and the
  table says how much it would need elsewhere;
* ``3 GEMMs``: the floor: ``Uq @ Ukᵀ``, ``G @ Uk``, ``Gᵀ @ Uq`` of the same shapes.

A second table compares the NT-Xent layout (SimCLR, ``2N`` rows) with PML's own layout,
``NTXentLoss(cat[q, k], cat[arange(N), arange(N)])`` (the same loss as
``tfree_torch.nt_xent(q, k, logit_map="temperature", temperature=0.5)``).

Run: ``python -m benchmarks.bench_torch [--quick] [--threads T] [--sizes N ...]``. Prints
Markdown tables of the times (ms) and the ratios ``method / tfree_torch`` (> 1: tfree_torch
is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings
from collections.abc import Callable

import tfree_torch
import torch
import torch.nn.functional as F

from tfree_core import clip_bound

BOUND32 = clip_bound(1e-6, float64=False)


def plain_loss(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The plain transcription: cross-entropy of ``2·atanh(clamp(S, -b, b))``."""
    s = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T
    logits = 2 * torch.atanh(s.clamp(-BOUND32, BOUND32))
    target = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, target)


def _loss_and_backward(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., None]:
    def run(q: torch.Tensor, k: torch.Tensor) -> None:
        q.grad = None
        k.grad = None
        loss_fn(q, k).backward()

    return run


PML_MAX_GIB = 1.0


def _pml_gib(anchors: int, positives_per_anchor: int, negatives_per_anchor: int) -> float:
    """GiB of one float32 (positive pairs × negative pairs) matrix of PML's NTXentLoss."""
    return anchors * positives_per_anchor * anchors * negatives_per_anchor * 4 / 2**30


def _pml_runner(n: int) -> Callable[..., None] | None:
    try:
        from pytorch_metric_learning.losses import NTXentLoss
    except ImportError:
        return None
    loss = NTXentLoss(temperature=0.5)
    labels = torch.arange(n)
    a, b = torch.meshgrid(labels, labels, indexing="ij")
    off = a != b
    indices = (labels, labels, a[off], b[off])

    def pml(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return loss(q, labels, indices_tuple=indices, ref_emb=k, ref_labels=labels)

    return _loss_and_backward(pml)


def _gemm_floor(q: torch.Tensor, k: torch.Tensor) -> Callable[..., None]:
    a, b = q.detach(), k.detach()
    g = torch.randn(q.shape[0], k.shape[0])

    def run(q: torch.Tensor, k: torch.Tensor) -> None:
        a @ b.T
        g @ b
        g.T @ a

    return run


def variants(n: int, d: int, *, chunk: int | str = 256, peer_max_gib: float = PML_MAX_GIB,
             seed: int = 0, peers: bool = True) -> list:
    """The candidates of ``python -m benchmarks`` for torch (pairs layout, float32, CPU):
    tfree eager / ``torch.compile`` / tiled, autodiff of the plain formula eager / compiled,
    three GEMMs, and PML's ``NTXentLoss`` on the exact pairs layout where its
    (positive pairs × negative pairs) matrix takes at most ``peer_max_gib``."""
    from benchmarks._harness import Variant

    gen = torch.Generator().manual_seed(seed * 7919 + n * 1000 + d)
    q = torch.randn(n, d, generator=gen).requires_grad_()
    k = torch.randn(n, d, generator=gen).requires_grad_()

    def bind(run: Callable[..., None]):
        return lambda: run(q, k)

    def tiled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return tfree_torch.info_nce(a, b, chunk_size=chunk)

    def untiled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return tfree_torch.info_nce(a, b, chunk_size=None)

    out = [
        Variant("tfree", lambda: bind(_loss_and_backward(tfree_torch.info_nce))),
        Variant("tfree untiled", lambda: bind(_loss_and_backward(untiled))),
        Variant("tfree compiled", lambda: bind(_loss_and_backward(
            torch.compile(tfree_torch.info_nce, fullgraph=True)))),
        Variant(f"tfree tiled ({chunk})", lambda: bind(_loss_and_backward(tiled))),
        Variant("autodiff eager", lambda: bind(_loss_and_backward(plain_loss))),
        Variant("autodiff compiled", lambda: bind(_loss_and_backward(torch.compile(plain_loss)))),
        Variant("3 GEMMs", lambda: bind(_gemm_floor(q, k))),
    ]
    if not peers:
        return out
    need = _pml_gib(n, 1, n - 1)
    if importlib.util.find_spec("pytorch_metric_learning") is None:
        out.append(Variant("PML NTXentLoss", None, skip="not installed"))
    elif need <= peer_max_gib:
        out.append(Variant("PML NTXentLoss", lambda: bind(_pml_runner(n))))
    else:
        out.append(Variant("PML NTXentLoss", None, skip=f"needs {need:.3g} GiB (O(N³))"))
    return out


def bench(n: int, d: int, repeats: int, warmup: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(n * 1000 + d)
    q = torch.randn(n, d, generator=gen).requires_grad_()
    k = torch.randn(n, d, generator=gen).requires_grad_()
    compiled = torch.compile(plain_loss)
    methods: dict[str, Callable[..., None]] = {
        "tfree_torch": _loss_and_backward(tfree_torch.info_nce),
        "tfree chunk=256": _loss_and_backward(
            lambda a, b: tfree_torch.info_nce(a, b, chunk_size=256)
        ),
        "tfree compiled": _loss_and_backward(torch.compile(tfree_torch.info_nce,
                                                           fullgraph=True)),
        "eager": _loss_and_backward(plain_loss),
        "compiled": _loss_and_backward(compiled),
    }
    pml = _pml_runner(n) if _pml_gib(n, 1, n - 1) <= PML_MAX_GIB else None
    if pml is not None:
        methods["pml"] = pml
    methods["3 GEMMs"] = _gemm_floor(q, k)
    return _time(methods, q, k, repeats, warmup)


def bench_nt_xent(n: int, d: int, repeats: int, warmup: int) -> dict[str, float]:
    """NT-Xent (``2N`` rows): tfree_torch eager and compiled against PML's NTXentLoss."""
    gen = torch.Generator().manual_seed(n * 1000 + d + 1)
    q = torch.randn(n, d, generator=gen).requires_grad_()
    k = torch.randn(n, d, generator=gen).requires_grad_()
    methods: dict[str, Callable[..., None]] = {
        "tfree_torch": _loss_and_backward(tfree_torch.nt_xent),
        "tfree compiled": _loss_and_backward(torch.compile(tfree_torch.nt_xent,
                                                           fullgraph=True)),
    }
    try:
        from pytorch_metric_learning.losses import NTXentLoss
    except ImportError:
        return {}
    if _pml_gib(2 * n, 1, 2 * n - 2) > PML_MAX_GIB:
        return {}
    pml_loss = NTXentLoss(temperature=0.5)
    labels = torch.cat([torch.arange(n), torch.arange(n)])
    methods["pml"] = _loss_and_backward(
        lambda a, b: pml_loss(torch.cat([a, b]), labels)
    )
    return _time(methods, q, k, repeats, warmup)


def _time(
    methods: dict[str, Callable[..., None]],
    q: torch.Tensor,
    k: torch.Tensor,
    repeats: int,
    warmup: int,
) -> dict[str, float]:
    for run in methods.values():
        for _ in range(warmup):
            run(q, k)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run(q, k)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _table(rows: list[tuple[int, int, dict[str, float]]], notes: dict[str, str]) -> None:
    names = list(dict.fromkeys(m for _, _, r in rows for m in r))
    others = [m for m in names if m != "tfree_torch"]
    header = "| N | D | " + " | ".join(f"{m} (ms)" for m in names)
    header += " | " + " | ".join(f"{m} / tfree" for m in others) + " |"
    print(header)
    print("|" + "---|" * (2 + len(names) + len(others)))
    for n, d, result in rows:
        base = result["tfree_torch"]
        cells = [f"{result[m]:.1f}" if m in result else notes.get(m, "-") for m in names]
        ratios = [f"{result[m] / base:.2f}" if m in result else "-" for m in others]
        print(f"| {n} | {d} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print()


def main(argv: list[str] | None = None) -> None:
    global PML_MAX_GIB
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, N = 1024 only")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="values of N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--pml-max-gib", type=float, default=PML_MAX_GIB,
                        help="largest PML pair matrix to attempt (GiB)")
    parser.add_argument("--nt-sizes", type=int, nargs="*", default=[256],
                        help="values of N for the NT-Xent table (PML must fit)")
    args = parser.parse_args(argv)
    PML_MAX_GIB = args.pml_max_gib
    # Dynamo's notes on array_api_compat's lru_cache helpers: harmless, noisy.
    warnings.filterwarnings("ignore", message=".*lru_cache.*", category=UserWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([512, 1024] if args.quick else [512, 1024, 4096])
    repeats = args.repeats or (5 if args.quick else 15)
    warmup = 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, "
          f"loss + backward, median of {repeats} interleaved repeats\n")
    print("Pairs layout (InfoNCE: N anchors, N candidates each)\n")
    rows = [(n, d, bench(n, d, repeats, warmup)) for n in sizes for d in (128, 512)]
    too_big = [n for n in sizes if _pml_gib(n, 1, n - 1) > PML_MAX_GIB]
    _table(rows, {"pml": "O(N³)"})
    for n in too_big:
        print(f"pml at N = {n}: not run, its pair matrix needs {_pml_gib(n, 1, n - 1):.3g} GiB "
              "per temporary")
    print()
    nt_sizes = [n for n in args.nt_sizes if _pml_gib(2 * n, 1, 2 * n - 2) <= PML_MAX_GIB]
    if nt_sizes:
        print("NT-Xent layout (2N anchors, 2N - 1 candidates), against PML's NTXentLoss\n")
        rows = [(n, d, bench_nt_xent(n, d, repeats, warmup)) for n in nt_sizes
                for d in (128, 512)]
        if rows[0][2]:
            _table(rows, {})


if __name__ == "__main__":
    main()
