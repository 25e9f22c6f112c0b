"""Timing and memory measurement shared by every framework's benchmark.

* **Time**: the variants of one ``(N, D)`` are called interleaved in one process (each repeat
  calls every variant once, in a fresh seeded random order, so that load on a shared
  machine hits them alike and no variant always runs after the same one), each call
  synchronised; the median over repeats is reported, and ratios are taken between medians
  of the same run. :func:`paired_ratio` is the sturdier ratio of two variants: the median
  of their per-repeat ratios, each taken between two calls made moments apart.
* **Peak memory**: in a child process (:func:`measure_memory`, run by ``benchmarks._child``),
  after the inputs are built and one warm-up call (compilation) has run: the kernel's peak
  resident set size (``VmHWM`` of ``/proc/self/status``) is reset by writing ``5`` to
  ``/proc/self/clear_refs``, the variant runs once, and the growth of ``VmHWM`` above the
  resident size just before the call is reported. This counts native allocations (which
  ``tracemalloc`` misses) and only the call's own temporaries and outputs. glibc's mmap
  threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) in the child so that large freed blocks
  go back to the system instead of being reused unseen from the heap.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Step = Callable[[], Any]

TFREE = "tfree"
"""The reference variant of every ratio: the library's analytic loss + gradient, eager."""


@dataclass
class Variant:
    """One candidate: ``make()`` builds its step (closing over the inputs) and returns a
    callable that runs loss + gradient once and waits for the result; ``baseline`` is the
    variant its ratio is taken against (same layout); ``skip`` says why it is not run."""

    name: str
    make: Callable[[], Step] | None
    baseline: str = TFREE
    skip: str = ""
    layout: str = "pairs"
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def interleaved_samples(steps: dict[str, Step], repeats: int, warmup: int = 1,
                        tick: Callable[[], None] | None = None,
                        seed: int = 0) -> dict[str, list[float]]:
    """Seconds of every call of each step, by repeat: every repeat calls each step once,
    in an order drawn afresh (``random.Random(seed)``) after ``warmup`` calls of each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    order = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
        if tick is not None:
            tick()
    return times


def interleaved(steps: dict[str, Step], repeats: int, warmup: int = 1,
                tick: Callable[[], None] | None = None) -> dict[str, float]:
    """Median seconds per call of each step, calls interleaved (:func:`interleaved_samples`)."""
    samples = interleaved_samples(steps, repeats, warmup, tick)
    return {name: statistics.median(t) for name, t in samples.items()}


def paired_ratio(ours: list[float], reference: list[float]) -> float:
    """``median_r(reference[r] / ours[r])`` over the repeats ``r`` of one interleaved run:
    each ratio compares two calls of the same repeat, so a slow spell of the machine
    that spans a repeat cancels out of it, where it would shift one median alone."""
    if len(ours) != len(reference) or not ours:
        raise ValueError(f"paired_ratio needs two equally long, non-empty runs; got "
                         f"{len(ours)} and {len(reference)} samples")
    return statistics.median(r / o for o, r in zip(ours, reference, strict=True))


# --------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def memory_supported() -> bool:
    """Whether the peak RSS can be read and reset (Linux ≥ 4.0)."""
    try:
        _status_kib("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def rss_bytes() -> int:
    """The resident set size of this process now."""
    return _status_kib("VmRSS") * 1024


def measure_memory(step: Step, warmup: int = 1) -> dict[str, float]:
    """Peak resident memory of one call of ``step`` above the resident size before it.

    Returns ``{"peak_bytes": growth of VmHWM, "seconds": that call's time,
    "rss_before": resident bytes before the call}``.
    """
    for _ in range(warmup):
        step()
    gc.collect()
    before = rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") * 1024
    return {"peak_bytes": float(max(peak - before, 0)), "seconds": seconds,
            "rss_before": float(before)}


CHILD_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}

MEMORY_ENV = {
    # A fixed threshold also turns off glibc's dynamic one, which after the first free of a
    # large block would serve later large blocks from the heap and keep them resident.
    # Memory children only: every large block then costs fresh page faults, which would
    # distort timings (most of all the tiled path, whose blocks the heap would recycle).
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 20),
}


# --------------------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr: tqdm when installed, else one plain line per step."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        elif self.enabled:
            sys.stderr.write(f"[{self.done}/{self.total}] {text}\n")
            sys.stderr.flush()

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def mib(nbytes: float) -> float:
    return nbytes / 2**20


def env_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
