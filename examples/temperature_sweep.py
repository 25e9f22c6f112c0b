"""The temperature-free loss against InfoNCE over a range of temperatures, on real data.

    python -m examples.temperature_sweep [--quick] [--out DIR] [--seeds N] [--jobs N]

Two settings on scikit-learn's handwritten digits (1797 real 8×8 images, offline):

- ``simclr``: self-supervised SimCLR (``tfree_torch.nt_xent``), batch 256;
- ``supcon``: supervised contrastive (``tfree_torch.sup_con``) with a small batch of 32,
  a regime where the temperature is known to matter.

Each loss (the temperature-free map, and InfoNCE at τ ∈ {0.05, 0.1, 0.2, 0.5, 1.0}) trains
the same MLP with the same optimiser, budget, seeds and augmentations; the frozen encoder is
then evaluated on a held-out split (linear probes with all and with 10 % of the labels, 5-NN,
alignment and uniformity). Writes ``results.json`` (raw per-seed numbers), ``results.md``
(mean ± 95 % CI) and PNG figures to ``--out`` (default ``examples/results/``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

import sklearn
import torch
from threadpoolctl import threadpool_limits

from ._report import figures, label, markdown
from ._ssl import Setting, run, run_reference

TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0)
SETTINGS = (
    Setting("simclr", "SimCLR (NT-Xent, self-supervised), batch 256, 150 epochs",
            "nt_xent", batch_size=256, epochs=150),
    Setting("supcon", "SupCon (supervised contrastive), small batch 32, 20 epochs",
            "sup_con", batch_size=32, epochs=20),
)
QUICK_EPOCHS = {"simclr": 4, "supcon": 2}
QUICK_TEMPERATURES = (0.1, 0.5)
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _init_worker() -> None:
    """One thread per process for torch and for the BLAS behind scikit-learn."""
    torch.set_num_threads(1)
    threadpool_limits(1)


def machine() -> dict[str, object]:
    """What the sweep ran on (for the report)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    info["summary"] = (f"{info['cpu']}, {info['cores']} cores, {info['platform']}, "
                       f"Python {info['python']}, torch {info['torch']}, "
                       f"scikit-learn {info['sklearn']}")
    return info


def _execute(tasks: list[tuple[Callable, tuple]], jobs: int) -> list[dict]:
    """Run ``fn(*args)`` for every task, in ``jobs`` processes (in this one if ``jobs == 1``),
    printing one line per finished task."""
    done, t0, out = 0, time.perf_counter(), []

    def report(record: dict) -> None:
        nonlocal done
        done += 1
        what = (f"{record['setting']:<7} {label(record['temperature']):<18}"
                if "setting" in record else f"reference {record['reference']:<16}")
        acc = record["metrics"]["probe"]
        print(f"[{done:3d}/{len(tasks)} {time.perf_counter() - t0:6.0f} s] {what} "
              f"seed {record['seed']}  probe {100 * acc:.1f} %", flush=True)
        out.append(record)

    if jobs == 1:  # in this process, restoring its thread settings afterwards
        threads = torch.get_num_threads()
        try:
            with threadpool_limits(1):
                torch.set_num_threads(1)
                for fn, args in tasks:
                    report(fn(*args))
        finally:
            torch.set_num_threads(threads)
        return out
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
        for fut in as_completed([pool.submit(fn, *args) for fn, args in tasks]):
            report(fut.result())
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep and write its results; returns the results dictionary."""
    parser = argparse.ArgumentParser(prog="python -m examples.temperature_sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 seeds, τ ∈ {0.1, 0.5}, a few epochs (< 1 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per loss (default 5)")
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite results.md and the figures from DIR/results.json")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default 2; 1, this process, with --quick)")
    args = parser.parse_args(argv)
    if args.replot:
        results = json.loads((args.out / "results.json").read_text())
        _write(results, args.out, json_too=False)
        return results

    settings = SETTINGS
    temperatures = TEMPERATURES
    n_seeds = args.seeds or (2 if args.quick else 5)
    if args.quick:
        settings = tuple(replace(s, epochs=QUICK_EPOCHS[s.name],
                                 title=s.title.rsplit(",", 1)[0] + f", {QUICK_EPOCHS[s.name]}"
                                 " epochs (quick)") for s in settings)
        temperatures = QUICK_TEMPERATURES
    seeds = list(range(n_seeds))
    jobs = args.jobs or (1 if args.quick else 2)

    tasks: list[tuple[Callable, tuple]] = [
        (run, (s, t, seed)) for seed in seeds for s in settings for t in (None, *temperatures)
    ]
    tasks += [(run_reference, (kind, seed)) for seed in seeds for kind in ("random", "raw")]
    command = " ".join(["python -m examples.temperature_sweep",
                        *(sys.argv[1:] if argv is None else argv)])
    info = machine()
    print(f"{len(tasks)} tasks on {jobs} process(es); {info['summary']}", flush=True)
    t0 = time.perf_counter()
    records = _execute(tasks, jobs)
    results = {
        "command": command,
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": info,
        "jobs": jobs,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": sum(r["cpu_s"] for r in records),
        "settings": {s.name: asdict(s) for s in settings},
        "temperatures": list(temperatures),
        "seeds": seeds,
        "runs": [r for r in records if "setting" in r],
        "references": [r for r in records if "reference" in r],
    }
    print(f"wall time {results['wall_s']:.0f} s, CPU time of the tasks "
          f"{results['cpu_s']:.0f} s")
    _write(results, args.out)
    return results


def _write(results: dict, out: Path, json_too: bool = True) -> None:
    """Write ``results.json`` (unless ``json_too`` is False), ``results.md`` and the PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    if json_too:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    pngs = figures(results, out)
    print("wrote " + ", ".join(["results.json"] * json_too + ["results.md"])
          + ", " + ", ".join(p.name for p in pngs) + f" to {out}")


if __name__ == "__main__":
    main()
