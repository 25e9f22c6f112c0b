"""One framework's measurements in its own process, one JSON line per result
(``python -m benchmarks._child ...``; used by ``python -m benchmarks``).

``--task time``: for each ``(N, D)``, every variant timed interleaved (the median of
``--repeats`` calls, and every call's seconds as ``samples``). ``--task memory``: the peak
memory of the variants named by ``--variants`` (each in turn, see
``_harness.measure_memory``; the parent starts one child per variant).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import traceback
import warnings

MODULES = {"numpy": "bench_numpy", "torch": "bench_torch", "jax": "bench_jax",
           "tensorflow": "bench_tf"}


def _emit(**row: object) -> None:
    print(json.dumps(row), flush=True)


def _selected(name: str, wanted: list[str]) -> bool:
    """``"tfree tiled"`` names the tiled variant whatever its chunk (``"tfree tiled (256)"``)."""
    return any(name == w or name.startswith(w + " (") for w in wanted)


def _chunk(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _setup(backend: str, threads: int | None):
    if threads and hasattr(os, "sched_setaffinity"):
        # the process on that many cores, whatever pools the framework sizes for itself
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    if threads and backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    if backend == "torch":
        import torch

        # Dynamo's notes on array_api_compat's lru_cache helpers: harmless, noisy.
        warnings.filterwarnings("ignore", message=".*lru_cache.*", category=UserWarning)
        torch._dynamo.config.cache_size_limit = 64
        if threads:
            torch.set_num_threads(threads)
    return importlib.import_module(f"benchmarks.{MODULES[backend]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True, choices=sorted(MODULES))
    parser.add_argument("--task", required=True, choices=("time", "memory"))
    parser.add_argument("--sizes", required=True, help="N:D,N:D,...")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk", type=_chunk, default=256)
    parser.add_argument("--peer-max-gib", type=float, default=0.5)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--variants", default="", help="only these (comma-separated names)")
    parser.add_argument("--skip", default="", help="comma-separated variants not to run")
    parser.add_argument("--with-memory", action="store_true",
                        help="time: then each variant's peak memory, in this process")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from benchmarks import _harness

    module = _setup(args.backend, args.threads)
    sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes.split(",") if s]
    wanted = [v for v in args.variants.split(",") if v]
    skipped = [v for v in args.skip.split(",") if v]
    for n, d in sizes:
        found = module.variants(n, d, chunk=args.chunk, peer_max_gib=args.peer_max_gib,
                                peers=not args.no_peers)
        base = {"backend": args.backend, "n": n, "d": d}
        if args.task == "time":
            steps, rows = {}, {}
            for v in found:
                if wanted and not _selected(v.name, wanted):
                    continue
                rows[v.name] = dict(base, variant=v.name, baseline=v.baseline,
                                    layout=v.layout, note=v.note)
                if v.make is None or v.name in skipped:
                    rows[v.name].update(status="skipped", reason=v.skip or "not selected")
                    continue
                try:
                    steps[v.name] = v.make()
                except Exception as err:  # reported, the other variants still run
                    rows[v.name].update(status="error", reason=f"{type(err).__name__}: {err}")
            try:
                samples = _harness.interleaved_samples(steps, args.repeats, args.warmup)
            except Exception as err:
                _emit(**base, status="error", reason=f"{type(err).__name__}: {err}",
                      trace=traceback.format_exc(limit=6))
                continue
            for name, seconds in samples.items():
                rows[name].update(status="ok", seconds=statistics.median(seconds),
                                  samples=seconds, repeats=args.repeats)
                if args.with_memory:  # already warm: the peak of one more call
                    rows[name]["peak_bytes"] = _harness.measure_memory(
                        steps[name], warmup=0)["peak_bytes"]
            for row in rows.values():
                _emit(**row)
        else:
            for v in found:
                if (wanted and not _selected(v.name, wanted)) or v.name in skipped:
                    continue
                meta = dict(base, variant=v.name)
                if v.make is None:
                    _emit(**meta, status="skipped", reason=v.skip)
                    continue
                try:
                    result = _harness.measure_memory(v.make(), warmup=args.warmup)
                    _emit(**meta, status="ok", **result)
                except MemoryError as err:
                    _emit(**meta, status="error", reason=f"MemoryError: {err}")
                except Exception as err:
                    _emit(**meta, status="error", reason=f"{type(err).__name__}: {err}",
                          trace=traceback.format_exc(limit=6))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
