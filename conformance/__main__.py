"""``python -m conformance``: check every installed backend against the golden vectors.

Each backend runs in its own process (frameworks clash in one). Modes: ``eager``,
``compiled`` (the framework's compiler), ``tiled`` (every case with a small ``chunk_size``
that does not divide its anchor rows; the similarity layout is never tiled) and
``tiled-compiled`` (tiled under the compiler, the backend's native block loop) and
``fused`` (``kernel="fused"``: the GPU kernels, in their CPU interpreter without a GPU, on
the cases they support). Prints a matrix
(backend × device × mode → per input dtype: passed/failed/skipped and the worst error
relative to its tolerance), the details of every failure, and exits non-zero on any.
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
from collections import defaultdict
from pathlib import Path
from typing import Any

from conformance.capabilities import BACKENDS, CAPABILITIES, Capability

DTYPES = ("float64", "float32", "float16", "bfloat16")
ROOT = Path(__file__).resolve().parent.parent


def installed(backend: str) -> bool:
    cap = CAPABILITIES[backend]
    if importlib.util.find_spec(cap.module) is None:
        return False
    if backend in ("torch", "jax", "tensorflow"):
        package = {"torch": "tfree_torch", "jax": "tfree_jax", "tensorflow": "tfree_tf"}
        return importlib.util.find_spec(package[backend]) is not None
    return True


def _progress(backend: str, done: int, total: int, failed: int, stream) -> None:
    if stream.isatty():
        stream.write(f"\r  {backend:<17} {done:>5}/{total:<5} failed {failed}")
        stream.flush()
    elif done == total or done % 200 == 0:
        stream.write(f"  {backend:<17} {done:>5}/{total} failed {failed}\n")
        stream.flush()


def run_backend(backend: str, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Run one backend's worker(s); stream their JSON lines, showing progress.

    PyTorch's ``fused`` rows on the CPU get a worker of their own with
    ``TRITON_INTERPRET=1``: Triton chooses its CPU interpreter once, when first imported.
    """
    cap = CAPABILITIES.get(backend) or Capability(backend, "", DTYPES, ("eager", "compiled"),
                                                   ("cpu", "cuda"))
    modes = [m for m in args.mode if m in cap.modes]
    devices = [d for d in args.device if d in cap.devices]
    jobs: list[tuple[list[str], list[str], dict[str, str]]] = [(modes, devices, {})]
    if backend == "torch" and "fused" in modes and "cpu" in devices:
        rest = [m for m in modes if m != "fused"]
        jobs = [(rest, devices, {})] if rest else []
        jobs.append((["fused"], ["cpu"], {"TRITON_INTERPRET": "1"}))
        if "cuda" in devices:
            jobs.append((["fused"], ["cuda"], {}))
    rows: list[dict] = []
    meta: dict[str, Any] = {"seconds": 0.0, "absent": []}
    for job_modes, job_devices, extra_env in jobs:
        job_rows, job_meta = _run_worker(backend, args, cap, job_modes, job_devices, extra_env)
        rows += job_rows
        meta["seconds"] = round(meta["seconds"] + job_meta.pop("seconds"), 1)
        meta["absent"] = sorted(set(meta["absent"]) | set(job_meta.pop("absent", [])))
        for key, value in job_meta.items():
            meta.setdefault(key, value)
    return rows, meta


def _run_worker(backend: str, args: argparse.Namespace, cap: Capability, modes: list[str],
                devices: list[str], extra_env: dict[str, str]) -> tuple[list[dict], dict]:
    command = [
        sys.executable, "-m", "conformance.worker", "--backend", backend,
        "--dtypes", ",".join(d for d in args.dtype if d in cap.dtypes),
        "--modes", ",".join(modes),
        "--devices", ",".join(devices),
        "--cases", args.cases,
    ]
    env = dict(os.environ, **extra_env, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "backends"), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    rows, meta, failed, total = [], {}, 0, 0
    assert proc.stdout is not None
    for line in proc.stdout:
        msg = json.loads(line)
        if "planned" in msg:
            total = msg["planned"]
            meta["devices"] = msg["devices"]
            meta["absent"] = msg["absent"]
            continue
        if "setup_error" in msg:
            meta["setup_error"] = msg["setup_error"]
            continue
        rows.append(msg)
        failed += msg["status"] == "failed"
        _progress(backend, len(rows), total, failed, sys.stderr)
    stderr = proc.stderr.read() if proc.stderr else ""
    code = proc.wait()
    if sys.stderr.isatty() and total:
        sys.stderr.write("\n")
    meta["seconds"] = round(time.perf_counter() - start, 1)
    if code != 0:
        meta["crash"] = f"worker exited with {code}: {stderr[-2000:]}"
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
    keys = sorted({k[:3] for k in cells}, key=lambda k: (order.get(k[0], 99), k[0], k[1], k[2]))
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
            print(f"\n{backend}: {meta['crash']}")
    reasons = {(k[0], k[1]): c["reasons"] for k, c in cells.items() if c["reasons"]}
    for (backend, device), why in sorted(reasons.items()):
        print(f"{backend} on {device}: skipped: {'; '.join(sorted(why))}")


def print_failures(rows: list[dict]) -> None:
    failures = [r for r in rows if r["status"] == "failed"]
    if not failures:
        return
    print(f"\n{len(failures)} failure(s):")
    for r in failures:
        print(f"  {r['backend']}/{r['device']}/{r['mode']}/{r['dtype']} {r['case']}: "
              f"{r['where']} error {float(r['worst']):.3g} x tolerance"
              + (f"\n    {r['reason']}" if r.get("reason") else ""))
        if r.get("trace"):
            print("    " + r["trace"].strip().replace("\n", "\n    "))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance", description=__doc__)
    parser.add_argument("--backend", default="", help="comma-separated; default: all installed")
    parser.add_argument("--device", default="cpu,cuda", help="cpu,cuda (those present run)")
    parser.add_argument("--dtype", default=",".join(DTYPES))
    parser.add_argument("--mode", default="eager,compiled,tiled,tiled-compiled,fused",
                        help="eager, compiled, tiled, tiled-compiled, fused (those a backend "
                        "has run)")
    parser.add_argument("--cases", default="", help="only cases whose id contains one of these")
    parser.add_argument("--adapter", metavar="MODULE:CLASS",
                        help="check an implementation of your own (an Adapter subclass)")
    parser.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    parser.add_argument("--check", action="store_true",
                        help="regenerate the golden files in memory and fail on any drift")
    args = parser.parse_args(argv)
    if args.check:
        from conformance.generate import main as generate_main

        return generate_main(["--check"])
    for name in ("device", "dtype", "mode"):
        setattr(args, name, [v for v in getattr(args, name).split(",") if v])
    unknown = [b for b in args.backend.split(",") if b and b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    requested = [b for b in args.backend.split(",") if b] or list(BACKENDS)
    backends = [b for b in requested if installed(b)]
    if args.adapter:
        requested = backends = [args.adapter]
    missing = [b for b in requested if b not in backends]
    print(f"conformance: backends {', '.join(backends)}"
          + (f" (not installed: {', '.join(missing)})" if missing else ""), flush=True)
    rows, metas = [], {}
    for backend in backends:
        backend_rows, metas[backend] = run_backend(backend, args)
        rows += backend_rows
    cells = summarise(rows)
    print_matrix(cells, metas, [d for d in DTYPES if d in args.dtype])
    print_failures(rows)
    failed = sum(r["status"] == "failed" for r in rows)
    broken = [b for b, m in metas.items() if "crash" in m or "setup_error" in m]
    passed = sum(r["status"] == "passed" for r in rows)
    skipped = sum(r["status"] == "skipped" for r in rows)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped"
          + (f"; backends that did not run: {', '.join(broken)}" if broken else ""))
    if args.json:
        report = {
            "environment": environment(),
            "backends": metas,
            "matrix": [
                {"backend": k[0], "device": k[1], "mode": k[2], "dtype": k[3],
                 **{n: v for n, v in c.items() if n != "reasons"},
                 "skip_reasons": sorted(c["reasons"])}
                for k, c in sorted(cells.items())
            ],
            "results": rows,
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 1 if failed or broken or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
