"""``python -m benchmarks``: loss + gradient time and peak memory of the temperature-free
loss in every installed framework, as ratios against the alternatives, side by side.

For each framework (numpy, torch, jax, tensorflow; each in its own process) and each
``(N, D)`` (pairs layout, float32, CPU):

* ``tfree``: the library's loss with its analytic gradient, eager, as a user calls it
  (``chunk_size="auto"``: untiled or cache-sized blocks, chosen from the shapes);
* ``tfree untiled``: ``chunk_size=None`` (the whole ``N × N`` matrix, kept for the
  backward);
* ``tfree compiled``: the same under the framework's compiler (``torch.compile``,
  ``jax.jit``, ``tf.function(jit_compile=True)``);
* ``tfree tiled (c)``: ``chunk_size=c`` (no ``N × N`` matrix, blocks recomputed in the
  backward);
* ``autodiff eager`` / ``autodiff compiled``: the framework's autodiff of the plain formula
  (cross-entropy of ``2·atanh(clip(cos))``), eager and compiled;
* ``tfree graph`` / ``autodiff graph`` (TensorFlow): both in a plain ``tf.function``
  (graph mode, no ``jit_compile``);
* ``3 GEMMs``: ``S = Q·Kᵀ``, ``G·K``, ``Gᵀ·Q`` of the same shapes, a floor for any
  materialised implementation;
* the peer library where it applies: pytorch-metric-learning ``NTXentLoss`` (the exact pairs
  layout, through ``indices_tuple``), ``optax.losses.ntxent`` (NT-Xent layout, against
  ``tfree_jax.nt_xent``), each only where its O(N³) / ``N×N×D`` temporaries fit in
  ``--peer-max-gib``.

Times: medians of ``--repeats`` interleaved calls in one process (see ``_harness``);
ratios are ``time / time of tfree`` (> 1: tfree is faster). Peak memory: growth of the
peak resident set during one call, after the inputs are built and a warm-up call, measured
in a fresh child process per variant (``--memory-isolation backend``: one child per
framework and size, the peak reset between variants).

``--memory`` runs the large-batch scenario instead: peak memory of the untiled variants at
growing ``N`` (stopping before the fitted ``a·N²`` need exceeds ``--memory-limit-gib``), its
extrapolation to ``--memory-n`` (65 536), and the tiled loss + gradient measured there.

Writes a Markdown table (``--out``) and a PNG plot (``--plot``); prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._child import MODULES
from benchmarks._harness import (
    CHILD_ENV,
    MEMORY_ENV,
    TFREE,
    Progress,
    memory_supported,
    mib,
)

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("numpy", "torch", "jax", "tensorflow")
PACKAGES = {"numpy": ("numpy",), "torch": ("torch", "tfree_torch"), "jax": ("jax", "tfree_jax"),
            "tensorflow": ("tensorflow", "tfree_tf")}
DEFAULT_OUT = ROOT / "docs" / "data" / "benchmarks.md"
DEFAULT_PLOT = ROOT / "docs" / "assets" / "benchmarks.png"
DEFAULT_MEMORY_PLOT = ROOT / "docs" / "assets" / "benchmarks_memory.png"
MEMORY_SIZES = (1024, 2048, 4096, 8192)
UNTILED = "tfree untiled"
MEMORY_VARIANTS = ("tfree untiled", "tfree tiled", "autodiff eager", "autodiff compiled")
QUICK_SKIP = ("tfree compiled", "autodiff compiled")


def installed(backend: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in PACKAGES[backend])


def _child(backend: str, task: str, sizes: list[tuple[int, int]], args: argparse.Namespace,
           *, variants: str = "", warmup: int | None = None, peers: bool = True,
           skip: tuple[str, ...] = (), with_memory: bool = False,
           timeout: float | None = None) -> list[dict[str, Any]]:
    """Run ``benchmarks._child`` for one framework; its JSON lines (errors included)."""
    command = [sys.executable, "-m", "benchmarks._child", "--backend", backend, "--task", task,
               "--sizes", ",".join(f"{n}:{d}" for n, d in sizes),
               "--repeats", str(args.repeats), "--warmup", str(1 if warmup is None else warmup),
               "--chunk", str(args.chunk), "--peer-max-gib", str(args.peer_max_gib)]
    if variants:
        command += ["--variants", variants]
    if skip:
        command += ["--skip", ",".join(skip)]
    if with_memory:
        command.append("--with-memory")
    if not peers:
        command.append("--no-peers")
    if args.threads:
        command += ["--threads", str(args.threads)]
    memory_only = task == "memory" and not with_memory
    env = dict(os.environ, **CHILD_ENV, **(MEMORY_ENV if memory_only else {}),
               PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "backends"), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"backend": backend, "status": "error", "reason": f"timed out after {timeout} s"}]
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    if proc.returncode != 0:
        # A child killed for memory (-9) or crashed: report it, keep the others.
        rows.append({"backend": backend, "status": "error",
                     "reason": f"child exited with {proc.returncode}: {proc.stderr[-800:]}"})
    return rows


def environment() -> str:
    versions = []
    for module, dist in (("numpy", "numpy"), ("torch", "torch"), ("jax", "jax"),
                         ("tensorflow", "tensorflow-cpu"), ("optax", "optax"),
                         ("pytorch_metric_learning", "pytorch-metric-learning")):
        if importlib.util.find_spec(module) is not None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions.append(f"{module} {version(dist)}")
            except PackageNotFoundError:
                versions.append(module)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {load:.1f} at the start; {', '.join(versions)}")


# --------------------------------------------------------------------------- suite


def run_suite(args: argparse.Namespace, backends: list[str], progress: Progress) -> list[dict]:
    sizes = [(n, d) for n in args.n for d in args.d]
    results: list[dict] = []
    for backend in backends:
        progress.describe(f"{backend}: time")
        skip = QUICK_SKIP if args.quick else ()
        shared = not args.no_memory and args.memory_isolation == "backend"
        timed = _child(backend, "time", sizes, args, peers=not args.no_peers, skip=skip,
                       with_memory=shared)
        progress.advance(len(sizes))
        for r in timed:
            if r.get("variant") in skip:
                r["reason"] = "not run with --quick (compile time)"
        results += timed
        if args.no_memory or shared:
            continue
        for n, d in sizes:
            names = [r["variant"] for r in timed if r.get("n") == n and r.get("d") == d
                     and r.get("status") == "ok"]
            groups = [names] if args.memory_isolation == "backend" else [[v] for v in names]
            for group in groups:
                progress.describe(f"{backend}: memory N={n} {','.join(group)[:40]}")
                measured = _child(backend, "memory", [(n, d)], args, variants=",".join(group),
                                  peers=not args.no_peers)
                for m in measured:
                    for r in results:
                        if (r.get("backend"), r.get("n"), r.get("d"), r.get("variant")) == (
                                backend, n, d, m.get("variant")) and m.get("status") == "ok":
                            r["peak_bytes"] = m["peak_bytes"]
                    if m.get("status") == "error":
                        results.append(m)
                progress.advance(len(group))
    return results


def _ratio(rows: list[dict], r: dict) -> str:
    base = next((b for b in rows if b.get("status") == "ok" and b["backend"] == r["backend"]
                 and b["n"] == r["n"] and b["d"] == r["d"] and b["variant"] == r["baseline"]),
                None)
    if base is None or r.get("status") != "ok":
        return "–"
    ratio = r["seconds"] / base["seconds"]
    return f"{ratio:.2f}" if r["baseline"] == TFREE else f"{ratio:.2f} (vs {r['baseline']})"


def _milliseconds(seconds: float) -> str:
    """One decimal from 1 ms up; three significant digits below, so that no measured time
    prints as 0.0."""
    ms = 1e3 * seconds
    return f"{ms:.1f}" if ms >= 1 else f"{ms:.3g}"


def suite_table(rows: list[dict]) -> str:
    lines = ["| backend | N | D | variant | time (ms) | time / tfree | peak above inputs (MiB) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "variant" not in r:
            continue
        if r["status"] == "ok":
            ms = _milliseconds(r["seconds"])
            peak = f"{mib(r['peak_bytes']):.0f}" if "peak_bytes" in r else "–"
        else:
            ms, peak = f"not run: {r.get('reason', '')}", "–"
        lines.append(f"| {r['backend']} | {r['n']} | {r['d']} | {r['variant']} | {ms} | "
                     f"{_ratio(rows, r)} | {peak} |")
    errors = [r for r in rows if r.get("status") == "error"]
    for r in errors:
        lines.append(f"\n- {r.get('backend')} {r.get('variant', '')}: {r.get('reason')}")
    return "\n".join(lines)


PLOT_REFERENCE = {"jax": "tfree compiled", "tensorflow": "tfree compiled"}
"""The variant each framework's panels are relative to: the compiled call where the
framework's users compile (``jax.jit``; Keras' ``fit`` compiles by default), else the
default call (``tfree``)."""


PLOT_CAP = 6.0
"""The longest bar drawn, in multiples of the reference; longer ones are cut there."""


def suite_plot(rows: list[dict], path: Path) -> None:
    """Loss + gradient time relative to the framework's reference variant
    (:data:`PLOT_REFERENCE`), one panel per (framework, N, D) that was run, two panels a
    row so that the figure stays legible at a page's width; a variant's peak memory above
    the inputs, where measured, follows its name (no memory, no label: nothing is drawn
    for what was not measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [r for r in rows if r.get("status") == "ok" and r.get("layout") == "pairs"]
    panels = list(dict.fromkeys((r["backend"], r["n"], r["d"]) for r in ok))
    if not panels:
        return
    columns = min(2, len(panels))
    lines = -(-len(panels) // columns)
    with plt.rc_context({"font.size": 14, "axes.titlesize": 15, "axes.titleweight": "bold"}):
        fig, axes = plt.subplots(lines, columns, figsize=(5.8 * columns, 0.4 + 3.6 * lines),
                                 squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (backend, n, d) in zip(axes.flat, panels, strict=False):
            mine = [r for r in ok if (r["backend"], r["n"], r["d"]) == (backend, n, d)]
            reference = PLOT_REFERENCE.get(backend, TFREE)
            base = next((r["seconds"] for r in mine if r["variant"] == reference), None)
            if base is None:  # the reference was not run: the default call
                reference = TFREE
                base = next((r["seconds"] for r in mine if r["variant"] == TFREE), None)
            names = [r["variant"] + (f"  ({mib(r['peak_bytes']):.0f} MiB)"
                                     if r.get("peak_bytes") else "") for r in mine]
            ax.set_title(f"{backend}, N = {n}, D = {d}")
            if base:
                ratios = [r["seconds"] / base for r in mine]
                colours = ["tab:orange" if r["variant"] == reference else "tab:blue"
                           for r in mine]
                # one far-off peer would flatten every other bar: longer bars are cut
                # at PLOT_CAP, their label keeps the value
                shown = [min(x, PLOT_CAP) for x in ratios]
                bars = ax.barh(names, shown, color=colours)
                ax.bar_label(bars, labels=[f"{x:.2f}" + ("  ▸" if x > PLOT_CAP else "")
                                           for x in ratios], padding=3, fontsize=13)
                ax.axvline(1.0, color="0.3", lw=0.8, ls="--", zorder=0)
                ax.set_xlim(0, 1.3 * max(shown))
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
                ax.set_xlabel(f"time / {reference} (lower is faster)", fontsize=12)
            ax.invert_yaxis()
            ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- memory goal


def _fit_n2(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``bytes ≈ a·N² + b`` over the measured points (``b = 0`` from one)."""
    if len(points) == 1:
        n, y = points[0]
        return y / n**2, 0.0
    xs = [float(n) ** 2 for n, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return a, my - a * mx


def run_memory(args: argparse.Namespace, backends: list[str], progress: Progress) -> dict:
    limit = args.memory_limit_gib * 2**30
    d = args.d[0]
    big = args.memory_n
    report: dict[str, Any] = {"d": d, "big_n": big, "limit_gib": args.memory_limit_gib,
                              "backends": {}}
    for backend in backends:
        out: dict[str, Any] = {"points": {}, "fit": {}, "time": [], "big": None}
        report["backends"][backend] = out
        for variant in args.memory_variants:
            points: list[tuple[int, float]] = []
            for n in args.memory_sizes:
                if variant != "tfree tiled" and len(points) >= 1:
                    a, b = _fit_n2(points)
                    if a * n * n + b > limit:
                        progress.advance()
                        continue
                progress.describe(f"{backend}: memory {variant} N={n}")
                rows = _child(backend, "memory", [(n, d)], args, variants=variant, peers=False)
                progress.advance()
                ok = [r for r in rows if r.get("status") == "ok"]
                print(json.dumps(rows), file=sys.stderr, flush=True)  # partial results
                if ok:
                    points.append((n, ok[0]["peak_bytes"]))
                    out["points"].setdefault(ok[0]["variant"], []).append(
                        (n, ok[0]["peak_bytes"], ok[0]["seconds"]))
            if points and variant != "tfree tiled":
                a, b = _fit_n2(points[-2:])
                out["fit"][variant] = (a, b, a * big * big + b)
        timed_sizes = [(n, d) for n in args.memory_sizes
                       if all(fit[0] * n * n + fit[1] <= limit for fit in out["fit"].values())]
        progress.describe(f"{backend}: time, tiled vs untiled")
        out["time"] = _child(backend, "time", timed_sizes, args, peers=False,
                             variants=",".join(args.memory_variants))
        print(json.dumps(out["time"]), file=sys.stderr, flush=True)
        progress.advance()
        progress.describe(f"{backend}: tiled at N={big}")
        rows = _child(backend, "memory", [(big, d)], args, variants="tfree tiled", warmup=0,
                      peers=False)
        progress.advance()
        out["big"] = rows[0] if rows else {"status": "error", "reason": "no output"}
        print(json.dumps(rows), file=sys.stderr, flush=True)
    return report


def memory_table(report: dict) -> str:
    d, big = report["d"], report["big_n"]
    lines = [f"Peak memory above the inputs during one loss + gradient, D = {d}, float32 "
             "(fresh process per row; its allocator returns every large block to the system, "
             "so the time of that call includes page faults a normal run avoids: compare "
             "speed in the table below):", "",
             "| backend | variant | N | peak above inputs | time of that call |",
             "|---|---|---:|---:|---:|"]
    ratios = []
    for backend, out in report["backends"].items():
        for variant, points in out["points"].items():
            for n, peak, seconds in points:
                lines.append(f"| {backend} | {variant} | {n} | {mib(peak):.0f} MiB | "
                             f"{seconds:.2f} s |")
            key = "tfree tiled" if variant.startswith("tfree tiled") else variant
            if key in out["fit"]:
                a, _, need = out["fit"][key]
                lines.append(f"| {backend} | {variant} | **{big}** | extrapolated "
                             f"**{need / 2**30:.1f} GiB** ({a / 4:.1f} N×N float32 "
                             "matrices) | not run |")
        r = out["big"]
        if r and r.get("status") == "ok":
            lines.append(f"| {backend} | **{r['variant']}** | **{big}** | "
                         f"**{mib(r['peak_bytes']):.0f} MiB** | {r['seconds']:.1f} s |")
        elif r:
            lines.append(f"| {backend} | tfree tiled | {big} | failed: {r.get('reason')} | – |")
        by_size: dict[tuple[int, int], dict[str, float]] = {}
        for t in out["time"]:
            if t.get("status") == "ok":
                by_size.setdefault((t["n"], t["d"]), {})[t["variant"]] = t["seconds"]
        for (n, _), times in sorted(by_size.items()):
            tiled = next((v for k, v in times.items() if k.startswith("tfree tiled")), None)
            if tiled and UNTILED in times:
                ratios.append(f"| {backend} | {n} | {1e3 * times[UNTILED]:.0f} | "
                              f"{1e3 * tiled:.0f} | {tiled / times[UNTILED]:.2f} | "
                              + " | ".join(f"{times[k] / tiled:.2f}" if k in times else "–"
                                           for k in ("autodiff eager", "autodiff compiled"))
                              + " |")
    if ratios:
        lines += ["", "Tiled against untiled where both fit (median of interleaved calls):", "",
                  "| backend | N | tfree untiled (ms) | tfree tiled (ms) | tiled / untiled | "
                  "autodiff eager / tiled | autodiff compiled / tiled |",
                  "|---|---:|---:|---:|---:|---:|---:|", *ratios]
    return "\n".join(lines)


def memory_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    big = report["big_n"]
    backends = list(report["backends"])
    fig, axes = plt.subplots(1, len(backends), figsize=(5.2 * len(backends), 4.0),
                             squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        out = report["backends"][backend]
        for variant, points in out["points"].items():
            ns = [p[0] for p in points]
            (line,) = ax.loglog(ns, [mib(p[1]) for p in points], "o-", label=variant)
            key = "tfree tiled" if variant.startswith("tfree tiled") else variant
            if key in out["fit"]:
                need = out["fit"][key][2]
                ax.loglog([ns[-1], big], [mib(points[-1][1]), mib(need)], ":",
                          color=line.get_color())
        r = out["big"]
        if r and r.get("status") == "ok":
            ax.loglog([big], [mib(r["peak_bytes"])], "*", ms=14, color="black",
                      label=f"tiled, N={big} (measured)")
        ax.axhline(1024, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{backend}, D={report['d']}")
        ax.set_xlabel("N")
        ax.set_ylabel("peak above inputs (MiB)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def _positive_ints(text: str) -> list[int]:
    values = [int(v) for v in text.replace(",", " ").split()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"need positive integers; got {text!r}")
    return values


def _chunk(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--chunk must be a positive int or 'auto'; got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (N=128, D=16), 2 repeats, no torch.compile variants, "
                             "memory in one child per framework: a smoke run")
    parser.add_argument("--backend", default="",
                        help=f"comma-separated, from {', '.join(BACKENDS)}; default: installed")
    parser.add_argument("--n", type=_positive_ints, default=None, help="values of N")
    parser.add_argument("--d", type=_positive_ints, default=None, help="values of D")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per variant")
    parser.add_argument("--chunk", type=_chunk, default=256, help="chunk_size of the tiled "
                        "variant (default 256)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"Markdown file (default {DEFAULT_OUT.relative_to(ROOT)}; "
                             "none with --quick)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG file (default docs/assets/benchmarks.png, or "
                             "benchmarks_memory.png with --memory; none with --quick)")
    parser.add_argument("--peer-max-gib", type=float, default=0.5,
                        help="largest temporary a peer library may need to be run (GiB)")
    parser.add_argument("--no-peers", action="store_true", help="skip PML and optax")
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--memory-isolation", choices=("variant", "backend"), default=None,
                        help="a fresh child per variant (default), or the timing process "
                             "(one per framework; the peak reset before each variant)")
    parser.add_argument("--memory", action="store_true",
                        help="the large-batch memory scenario instead of the suite")
    parser.add_argument("--memory-n", type=int, default=65536, help="N of the tiled run")
    parser.add_argument("--memory-sizes", type=_positive_ints, default=list(MEMORY_SIZES),
                        help="N of the untiled memory points")
    parser.add_argument("--memory-variants", default=",".join(MEMORY_VARIANTS),
                        type=lambda t: [v for v in t.split(",") if v],
                        help="variants of the memory scenario (comma-separated)")
    parser.add_argument("--memory-limit-gib", type=float, default=8.0,
                        help="never run an untiled variant whose fitted need exceeds this")
    parser.add_argument("--threads", type=int, default=None,
                        help="run each framework on this many cores, its pools that size")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    unknown = [b for b in args.backend.split(",") if b and b not in BACKENDS]
    if unknown:
        parser.error(f"--backend: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    requested = [b for b in args.backend.split(",") if b] or (
        ["torch", "jax"] if args.memory else list(BACKENDS))
    backends = [b for b in requested if installed(b) and b in MODULES]
    missing = [b for b in requested if b not in backends]
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    if args.quick:
        args.n = args.n or [128]
        args.d = args.d or [16]
        args.repeats = args.repeats or 2
        args.memory_isolation = args.memory_isolation or "backend"
        args.threads = args.threads or 1
    else:
        args.n = args.n or [1024, 4096]
        args.d = args.d or [128]
        args.repeats = args.repeats or 5
        args.memory_isolation = args.memory_isolation or "variant"
    if not (args.no_memory or memory_supported()):
        print("peak memory: /proc/self/clear_refs is not writable here; timing only",
              file=sys.stderr)
        args.no_memory = True
    header = environment()
    print(f"benchmarks: {', '.join(backends)}"
          + (f" (not installed: {', '.join(missing)})" if missing else ""), flush=True)
    start = time.perf_counter()
    if args.memory:
        steps = len(backends) * (len(args.memory_variants) * len(args.memory_sizes) + 2)
        progress = Progress(steps, enabled=not args.no_progress)
        report = run_memory(args, backends, progress)
        progress.close()
        text = memory_table(report)
        plot = args.plot or DEFAULT_MEMORY_PLOT
        out = args.out or DEFAULT_OUT.with_name("benchmarks_memory.md")
        memory_plot(report, plot)
        title = (f"`python -m benchmarks --memory` (N up to {args.memory_n}, chunk "
                 f"{args.chunk})")
    else:
        sizes = len(args.n) * len(args.d)
        per_variant = 0 if args.no_memory or args.memory_isolation == "backend" else 8
        progress = Progress(len(backends) * sizes * (1 + per_variant),
                            enabled=not args.no_progress)
        rows = run_suite(args, backends, progress)
        progress.close()
        text = suite_table(rows)
        plot = args.plot or (None if args.quick else DEFAULT_PLOT)
        out = args.out or (None if args.quick else DEFAULT_OUT)
        if plot is not None:
            suite_plot(rows, plot)
        title = (f"`python -m benchmarks{' --quick' if args.quick else ''}`, loss + gradient, "
                 f"pairs layout, float32, CPU, median of {args.repeats} interleaved calls")
    document = f"{title}\n\n{header}; {time.perf_counter() - start:.0f} s.\n\n{text}\n"
    print("\n" + document)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(document)
        print(f"wrote {out}" + (f" and {plot}" if plot is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
