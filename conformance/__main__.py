"""``python -m conformance``: check every installed backend against the golden vectors.

By default it runs the *representative matrix* (``conformance.selection``): every backend ×
input dtype × mode, reaching every layout, function, logit map, reduction and keyword kind
at least once, in a few minutes; ``--full`` runs every check (the docs' report). Each
backend runs in its own process (frameworks clash in one), one process at a time (two
compiling side by side can exhaust a small machine's memory). Modes: ``eager``,
``compiled`` (the framework's compiler), ``tiled`` (every case with a small ``chunk_size``
that does not divide its anchor rows; the similarity layout is never tiled) and
``tiled-compiled`` (tiled under the compiler, the backend's native block loop) and
``fused`` (``kernel="fused"``: the GPU kernels, in their CPU interpreter without a GPU, on
the cases they support). Prints a matrix
(backend × device × mode → per input dtype: passed/failed/skipped and the worst error
relative to its tolerance), the details of every failure (a worker that died: its cause,
last stderr lines and the command that reruns it alone), a one-line verdict, and exits
non-zero on any failure.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from conformance.capabilities import BACKENDS, CAPABILITIES, Capability
from conformance.golden import GoldenCase, compiled_subset, load_cases
from conformance.selection import full_plan, representative
from conformance.supervise import Job, Progress, gib, run_job, worker_line

DTYPES = ("float64", "float32", "float16", "bfloat16")
MODES = ("eager", "compiled", "tiled", "tiled-compiled", "fused")


def installed(backend: str) -> bool:
    cap = CAPABILITIES[backend]
    if importlib.util.find_spec(cap.module) is None:
        return False
    if backend in ("torch", "jax", "tensorflow"):
        package = {"torch": "tfree_torch", "jax": "tfree_jax", "tensorflow": "tfree_tf"}
        return importlib.util.find_spec(package[backend]) is not None
    return True


def jobs_for(backend: str, args: argparse.Namespace) -> list[Job]:
    """The worker(s) of one backend.

    PyTorch's ``fused`` rows on the CPU get a worker of their own with
    ``TRITON_INTERPRET=1``: Triton chooses its CPU interpreter once, when first imported.
    """
    cap = capability(backend)
    modes = [m for m in args.mode if m in cap.modes]
    devices = [d for d in args.device if d in cap.devices]
    job = functools.partial(Job, backend, dtypes=[d for d in args.dtype if d in cap.dtypes],
                            cases=args.cases, select="full" if args.full else "representative",
                            adapter=bool(args.adapter))
    if not (backend == "torch" and "fused" in modes and "cpu" in devices):
        return [job(modes, devices)]
    rest = [m for m in modes if m != "fused"]
    jobs = [job(rest, devices)] if rest else []
    jobs.append(job(["fused"], ["cpu"], env={"TRITON_INTERPRET": "1"}))
    if "cuda" in devices:
        jobs.append(job(["fused"], ["cuda"]))
    return jobs


def capability(backend: str) -> Capability:
    """A backend's capability; for an ``--adapter`` the widest one (its worker narrows it)."""
    return CAPABILITIES.get(backend) or Capability(backend, "", DTYPES, MODES, ("cpu", "cuda"))


def estimate(job: Job, cases: list[GoldenCase]) -> int:
    """The checks a worker will plan, counted here on the CPU (whether a GPU is present
    only the worker knows; its own count replaces this one)."""
    if job.adapter:
        return 0
    if job.cases:
        cases = [c for c in cases if any(p in c.id for p in job.cases.split(","))]
    plan = full_plan(cases, capability(job.backend), [d for d in job.devices if d == "cpu"],
                     job.modes, job.dtypes, {c.id for c in compiled_subset(cases)})
    return len(representative(plan) if job.select == "representative" else plan)


def run_backend(jobs: list[Job], progress: Progress, cases: list[GoldenCase],
                stall_timeout: float) -> tuple[list[dict], dict]:
    """Run one backend's worker(s), one after the other; their rows and merged meta."""
    rows: list[dict] = []
    meta: dict[str, Any] = {"seconds": 0.0, "absent": [], "peak_rss": 0, "planned": 0,
                            "full": 0, "workers": []}
    for job in jobs:
        if set(job.devices) <= set(meta["absent"]):
            continue  # an earlier worker of this backend found none of its devices
        job_rows, job_meta = run_job(job, progress, estimate(job, cases), stall_timeout)
        rows += job_rows
        meta["seconds"] = round(meta["seconds"] + job_meta.pop("seconds"), 1)
        meta["absent"] = sorted(set(meta["absent"]) | set(job_meta.pop("absent", [])))
        meta["peak_rss"] = max(meta["peak_rss"], job_meta.pop("peak_rss"))
        for key in ("planned", "full"):
            meta[key] += job_meta.pop(key, 0)
        meta["workers"].append(worker_line(job))
        if "crash" in job_meta and "crash" in meta:
            meta["crash"] += "; " + job_meta.pop("crash")
        for key, value in job_meta.items():
            meta.setdefault(key, value)
    meta["name"] = rows[0]["backend"] if rows else jobs[0].backend
    return rows, meta


def summarise(rows: list[dict]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    cells: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"passed": 0, "failed": 0, "skipped": 0, "worst": 0.0, "reasons": set()})
    for r in rows:
        cell = cells[(r["backend"], r["device"], r["mode"], r["dtype"])]
        cell[r["status"]] += 1
        if r["status"] == "skipped":
            cell["reasons"].add(r.get("reason", ""))
        elif r["status"] == "passed":
            cell["worst"] = max(cell["worst"], float(r["worst"]))
    return cells


def _cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "n/a"
    if cell["failed"]:
        return f"FAIL {cell['failed']}/{cell['failed'] + cell['passed']}"
    if cell["passed"]:
        return f"ok {cell['passed']} ({cell['worst']:.2f})"
    return "skipped"


def print_matrix(cells, metas: dict[str, dict], dtypes: list[str]) -> None:
    print("\nConformance matrix: cases passed (worst error / tolerance; <= 1 passes)\n")
    header = f"| {'backend':<17} | {'device':<6} | {'mode':<14} | " + " | ".join(
        f"{d:<17}" for d in dtypes) + " |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    order = {name: i for i, name in enumerate(BACKENDS)}
    shown = {k[:3] for k in cells if k[3] in dtypes}  # a worker dead before any check: no cell
    keys = sorted(shown, key=lambda k: (order.get(k[0], 99), k[0], k[1], k[2]))
    for key in keys:
        texts = [_cell_text(cells.get((*key, d))) for d in dtypes]
        print(f"| {key[0]:<17} | {key[1]:<6} | {key[2]:<14} | "
              + " | ".join(f"{t:<17}" for t in texts) + " |")
    for backend, meta in metas.items():
        if meta.get("absent"):
            print(f"{backend}: no {', '.join(meta['absent'])} device here; those rows did not run")
        if "setup_error" in meta:
            print(f"\n{backend}: not run ({meta['setup_error']})")
        if "crash" in meta:
            print(f"\n{backend}: a worker died; see the failures below")
    reasons = {(k[0], k[1]): c["reasons"] for k, c in cells.items() if c["reasons"]}
    for (backend, device), why in sorted(reasons.items()):
        print(f"{backend} on {device}: skipped: {'; '.join(sorted(why))}")


def print_failures(rows: list[dict]) -> None:
    failures = [r for r in rows if r["status"] == "failed"]
    if not failures:
        return
    print(f"\n{len(failures)} failure(s):")
    for r in failures:
        name = f"  {r['backend']}/{r['device']}/{r['mode']}/{r['dtype']} {r['case']}: "
        if r["where"] == "worker":
            print(name + r["reason"])
            print_worker_death(r)
            continue
        print(name + f"{r['where']} error {float(r['worst']):.3g} x tolerance"
              + (f"\n    {r['reason']}" if r.get("reason") else ""))
        if r.get("trace"):
            print("    " + r["trace"].strip().replace("\n", "\n    "))


def print_worker_death(row: dict[str, Any]) -> None:
    """A dead worker's last stderr lines and the commands that rerun it alone."""
    if row.get("stderr"):
        print("    its last lines:\n      " + row["stderr"].replace("\n", "\n      "))
    worker, *check = row["rerun"]
    print(f"    rerun that worker alone:\n      {worker}")
    if check:
        print(f"    or only the check it died in:\n      {check[0]}")


def duration(seconds: float) -> str:
    """``41 s``, ``2 min 41 s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def count(n: int) -> str:
    """Thousands apart, as in the verdict: ``3 674``."""
    return f"{n:,}".replace(",", " ")


def problems(rows: list[dict], metas: dict[str, dict]) -> list[str]:
    """What makes a run fail: the backends with a failed check (a dead worker's among them),
    those that did not start, or no check at all. Empty when the run passes."""
    failing = list(dict.fromkeys(r["backend"] for r in rows if r["status"] == "failed"))
    unrun = [metas[b].get("name", b) for b in metas if "setup_error" in metas[b]]
    return [*failing, *(f"{b} did not run" for b in unrun)] + ([] if rows else ["no checks ran"])


def verdict(rows: list[dict], metas: dict[str, dict], missing: list[str], seconds: float,
            full: bool) -> str:
    """The one line that ends a run: PASS or FAIL (naming the failing backends), how many
    checks on which backends and modes, how long, and what the run covered."""
    names = [metas[b].get("name", b) for b in metas]  # an --adapter's rows carry its name
    checks = sum(r["case"] != "(worker)" for r in rows)  # a worker dead in a check failed it
    failed = sum(r["status"] == "failed" for r in rows)
    skipped = sum(r["status"] == "skipped" for r in rows)
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    wrong = problems(rows, metas)
    head = f"FAIL ({', '.join(wrong)})" if wrong else "PASS"
    total = sum(m.get("full", 0) for m in metas.values())
    scope = "full matrix" if full else (
        f"representative matrix; --full for all {count(total)}" if total
        else "representative matrix; --full for all")
    return (f"conformance: {head} — {count(checks)} check{'s' * (checks != 1)} on "
            f"{', '.join(names)}"
            + (f" ({', '.join(modes)})" if modes else "")
            + f", {failed} failed" + (f", {skipped} skipped" if skipped else "")
            + f", {duration(seconds)} ({scope})"
            + (f"; not installed: {', '.join(missing)}" if missing else ""))


def environment() -> dict[str, Any]:
    versions = {}
    for module in ("numpy", "array_api_strict", "torch", "jax", "tensorflow"):
        if importlib.util.find_spec(module) is not None:
            try:
                from importlib.metadata import version

                versions[module] = version({"tensorflow": "tensorflow-cpu"}.get(
                    module, module.replace("_", "-")))
            except Exception:
                versions[module] = "?"
    return {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(), "versions": versions}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m conformance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="every check (thousands; ~25 min on two cores) instead of the "
                        "representative matrix")
    parser.add_argument("--backend", default="", help="comma-separated; default: all installed")
    parser.add_argument("--device", default="cpu,cuda", help="cpu,cuda (those present run)")
    parser.add_argument("--dtype", default=",".join(DTYPES))
    parser.add_argument("--mode", default=",".join(MODES),
                        help="eager, compiled, tiled, tiled-compiled, fused (those a backend "
                        "has run)")
    parser.add_argument("--cases", default="", help="only cases whose id contains one of these")
    parser.add_argument("--adapter", metavar="MODULE:CLASS",
                        help="check an implementation of your own (an Adapter subclass)")
    parser.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    parser.add_argument("--stall-timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="kill a worker silent this long and report it (default 1800)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate the golden files in memory and fail on any drift")
    args = parser.parse_args(argv)
    for name in ("device", "dtype", "mode"):
        setattr(args, name, [v for v in getattr(args, name).split(",") if v])
    unknown = [b for b in args.backend.split(",") if b and b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    return args


def print_totals(rows: list[dict], metas: dict[str, dict]) -> None:
    """Counts, the backends that did not run, and each worker's peak memory."""
    failed = sum(r["status"] == "failed" for r in rows)
    unrun = [b for b, m in metas.items() if "setup_error" in m]
    died = [b for b, m in metas.items() if "crash" in m]
    passed = sum(r["status"] == "passed" for r in rows)
    skipped = sum(r["status"] == "skipped" for r in rows)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped"
          + (f"; backends that did not run: {', '.join(unrun)}" if unrun else "")
          + (f"; backends with a worker that died: {', '.join(died)}" if died else ""))
    peaks = [(m.get("name", b), m["peak_rss"]) for b, m in metas.items() if m.get("peak_rss")]
    if peaks:
        print("peak RSS (one worker at a time): "
              + ", ".join(f"{b} {gib(rss)}" for b, rss in peaks))


def write_report(path: str, rows: list[dict], metas: dict[str, dict], cells, argv: list[str],
                 full: bool, seconds: float, line: str) -> None:
    """The JSON report (``--json``): environment, how it was made, matrix, every row."""
    report = {
        "environment": environment(),
        "command": shlex.join(["python", "-m", "conformance", *argv]),
        "selection": "full" if full else "representative",
        "seconds": round(seconds, 1),
        "verdict": line,
        "backends": metas,
        "matrix": [
            {"backend": k[0], "device": k[1], "mode": k[2], "dtype": k[3],
             **{n: v for n, v in c.items() if n != "reasons"},
             "skip_reasons": sorted(c["reasons"])}
            for k, c in sorted(cells.items())
        ],
        "results": rows,
    }
    Path(path).write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if hasattr(sys.stdout, "reconfigure"):  # in a log, keep the report in step with progress
        sys.stdout.reconfigure(line_buffering=True)
    if args.check:
        from conformance.generate import main as generate_main

        return generate_main(["--check"])
    start = time.perf_counter()
    requested = [b for b in args.backend.split(",") if b] or list(BACKENDS)
    backends = [b for b in requested if installed(b)]
    if args.adapter:
        requested = backends = [args.adapter]
    missing = [b for b in requested if b not in backends]
    print(f"conformance: {'full' if args.full else 'representative'} matrix of "
          f"{', '.join(backends)}" + (f" (not installed: {', '.join(missing)})" if missing
                                      else ""), flush=True)
    cases = load_cases()
    jobs = {b: jobs_for(b, args) for b in backends}
    progress = Progress(sum(estimate(j, cases) for js in jobs.values() for j in js))
    rows, metas = [], {}
    for backend, backend_jobs in jobs.items():
        backend_rows, metas[backend] = run_backend(backend_jobs, progress, cases,
                                                   args.stall_timeout)
        rows += backend_rows
    cells = summarise(rows)
    print_matrix(cells, metas, [d for d in DTYPES if d in args.dtype])
    print_failures(rows)
    print_totals(rows, metas)
    seconds = time.perf_counter() - start
    line = verdict(rows, metas, missing, seconds, args.full)
    if args.json:
        write_report(args.json, rows, metas, cells, argv, args.full, seconds, line)
    print(line)
    return 1 if problems(rows, metas) else 0


if __name__ == "__main__":
    sys.exit(main())
