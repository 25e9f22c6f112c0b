"""Cached (GradCache) training on CPU: peak memory and time per step as the batch grows,
``tfree_torch.cached_loss`` against full-batch autodiff and against sentence-transformers'
``CachedMultipleNegativesRankingLoss``, on one small BERT built locally (no downloads).

The encoder: a BERT from ``transformers.BertConfig`` (2 layers, hidden 64, 4 heads,
intermediate 128, a 1 000-word vocabulary written to a file here, sequences of 16 tokens,
dropout 0.1, in training mode), CLS pooling, wrapped as a ``SentenceTransformer`` so that
every method trains the very same modules. A step is one batch of ``N`` (query, document)
pairs: the in-batch-negatives loss over the ``N × N`` similarities, and the gradient of the
encoder's parameters (``.grad``). Methods:

* ``tfree cached``: ``tfree_torch.cached_loss(info_nce, (enc, q), (enc, d),
  mini_batch_size=m)``: the loss and ``∂L/∂E`` from tfree's analytic, tiled gradient, each
  mini-batch re-encoded once;
* ``full-batch autodiff``: ``info_nce(enc(q), enc(d)).backward()``: every activation of
  the batch kept for the backward;
* ``ST CachedMNRL``: ``CachedMultipleNegativesRankingLoss(model, mini_batch_size=m)``
  (its own loss, ``20·cos``; the same encoder and caching scheme).

Each (method, N) runs in a fresh process (``MALLOC_MMAP_THRESHOLD_`` pinned as in
``benchmarks._harness``): the model and the tokenised batch are built, one small warm-up
step runs, ``gc.collect()`` and glibc's ``malloc_trim`` return freed heap pages (which
would hide the step's growth), the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``), and one step of size ``N`` is timed. Reported: seconds per
step, the growth of the peak resident set during the step above the resident size before
it, and the process's peak RSS.

Run: ``python -m benchmarks.bench_cached [--sizes 1024,4096,16384] [--mini-batch 64]
[--full-max 16384] [--out table.md]``; ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("tfree cached", "full-batch autodiff", "ST CachedMNRL")
SEQ_LEN, HIDDEN, VOCAB = 16, 64, 1000
HEADER = ("| N | method | mini-batch | time / step (s) | peak above start (MiB) | "
          "peak RSS (MiB) |\n|---|---|---|---|---|---|")


# --------------------------------------------------------------------------- the child


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _trim() -> None:
    """Give glibc's free heap memory back to the system (``malloc_trim``), where it can."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _words() -> list[str]:
    return ["".join(w) for w in itertools.product("abcdefghij", repeat=3)][: VOCAB - 5]


def build_model(folder: Path):
    """A SentenceTransformer over a BERT from a local config and vocabulary file."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_words()]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=2 * HIDDEN,
                                     max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = modules.Transformer(str(folder), max_seq_length=SEQ_LEN)
    model = SentenceTransformer(modules=[transformer, modules.Pooling(HIDDEN, "cls")],
                                device="cpu")
    return model.train(), tokenizer


def tokenised(tokenizer, n: int, seed: int) -> dict:
    """``n`` random sentences of 6 to 30 words, padded / truncated to ``SEQ_LEN`` tokens."""
    import random

    rng, words = random.Random(seed), _words()
    texts = [" ".join(rng.choices(words, k=rng.randint(6, 30))) for _ in range(n)]
    out = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ_LEN,
                    return_tensors="pt")
    return dict(out)


def make_step(method: str, model, mini_batch: int):
    import tfree_torch
    import torch

    class Encoder(torch.nn.Module):
        """The SentenceTransformer as ``encoder(**tokens) -> (n, D)``."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, **features):
            return self.model(dict(features))["sentence_embedding"]

    encoder = Encoder()
    if method == "tfree cached":
        def step(q, d):
            return tfree_torch.cached_loss(tfree_torch.info_nce, (encoder, q), (encoder, d),
                                           mini_batch_size=mini_batch)
    elif method == "full-batch autodiff":
        def step(q, d):
            loss = tfree_torch.info_nce(encoder(**q), encoder(**d))
            loss.backward()
            return loss.detach()
    else:
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
        )

        mnrl = CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch)

        def step(q, d):
            loss = mnrl([dict(q), dict(d)], None)
            loss.backward()
            return loss.detach()
    return step


def child(method: str, n: int, mini_batch: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer = build_model(Path(folder))
    step = make_step(method, model, mini_batch)
    small = [tokenised(tokenizer, 2 * mini_batch, s) for s in (1, 2)]
    step(*small)  # warm-up: thread pools, first-call allocations
    q, d = tokenised(tokenizer, n, 3), tokenised(tokenizer, n, 4)
    model.zero_grad(set_to_none=True)
    gc.collect()
    _trim()  # freed heap pages (the tokeniser's) would otherwise hide the step's growth
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak-RSS counter restarts at the current RSS
    start = time.perf_counter()
    loss = step(q, d)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    grad_norm = sum(float(p.grad.double().square().sum()) for p in model.parameters()
                    if p.grad is not None) ** 0.5
    return {"method": method, "N": n, "mini_batch": mini_batch, "seconds": seconds,
            "peak_above_mib": (peak - before) / 1024, "peak_rss_mib": peak / 1024,
            "loss": float(loss), "grad_norm": grad_norm}


# --------------------------------------------------------------------------- the parent


def run_one(method: str, n: int, mini_batch: int, threads: int, timeout: float) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MALLOC_MMAP_THRESHOLD_=str(1 << 20), MALLOC_TRIM_THRESHOLD_=str(1 << 20),
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(root), str(root / "backends"),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "benchmarks.bench_cached", "--child", method, "--sizes", str(n),
           "--mini-batch", str(mini_batch), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "N": n, "mini_batch": mini_batch, "error": f"over {timeout} s"}
    rows = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        return {"method": method, "N": n, "mini_batch": mini_batch,
                "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(rows[-1])


def table_row(r: dict) -> str:
    mb = "—" if r["method"] == "full-batch autodiff" else str(r["mini_batch"])
    if "error" in r or "skipped" in r:
        why = r.get("error") or r["skipped"]
        return f"| {r['N']} | {r['method']} | {mb} | not run: {why} | | |"
    return (f"| {r['N']} | {r['method']} | {mb} | {r['seconds']:.2f} | "
            f"{r['peak_above_mib']:.0f} | {r['peak_rss_mib']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024,4096,16384", help="batch sizes N, comma-separated")
    parser.add_argument("--mini-batch", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--full-max", type=int, default=16384,
                        help="largest N for full-batch autodiff")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (2 threads on a shared 2-core machine spend"
                        " milliseconds per small GEMM waiting for each other)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="N = 64, 256, mini-batch 16")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, int(args.sizes), args.mini_batch, args.threads)),
              flush=True)
        return 0
    if args.quick:
        args.sizes, args.mini_batch = "64,256", 16
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    print(HEADER, flush=True)
    lines = [HEADER]
    for n in sizes:
        for method in methods:
            if method == "full-batch autodiff" and n > args.full_max:
                r = {"method": method, "N": n, "mini_batch": args.mini_batch,
                     "skipped": f"N > --full-max {args.full_max}"}
            else:
                r = run_one(method, n, args.mini_batch, args.threads, args.timeout)
            print(table_row(r), flush=True)
            print(json.dumps(r), file=sys.stderr, flush=True)
            lines.append(table_row(r))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
