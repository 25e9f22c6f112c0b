"""One backend, in its own process: run the selected checks and print one JSON line per
result (``python -m conformance.worker --backend torch ...``; used by the runner).

The lines: first ``{"planned": n, "full": N, ...}`` (or ``{"setup_error": ...}``), then per
check ``{"running": {...}}`` before it and its result row after it."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import numpy as np

from conformance.adapters import Unsupported, make_adapter
from conformance.capabilities import CAPABILITIES, capability_of
from conformance.golden import compiled_subset, load_cases
from conformance.mappings import relieve
from conformance.selection import full_plan, representative
from conformance.tolerances import compare

SELECTIONS = ("full", "representative")


def check(case, dtype: str, result) -> tuple[float, str]:
    """Worst error over tolerance (≤ 1 passes) across the loss and every gradient."""
    loss, grads = result
    expected = case.expected_for(dtype)
    worst = compare(loss, expected["loss"], dtype, "loss")
    where = "loss"
    scales = expected.get("grad_scales", {})
    for name, grad in grads.items():
        err = compare(grad, expected["grads"][name], dtype, "grad", scale=scales.get(name))
        if not err <= worst:
            worst, where = err, f"d/d{name}"
    return worst, where


def emit(message: dict) -> None:
    """One JSON line to the runner, flushed at once: a worker that dies loses nothing it
    already reported."""
    print(json.dumps(message), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--dtypes", required=True)
    parser.add_argument("--modes", required=True)
    parser.add_argument("--devices", required=True)
    parser.add_argument("--cases", default="")
    parser.add_argument("--select", choices=SELECTIONS, default="full",
                        help="every planned check, or the representative matrix of them")
    args = parser.parse_args(argv)
    adapter = make_adapter(args.backend)
    cap = CAPABILITIES.get(args.backend) or capability_of(adapter)
    try:
        adapter.setup()
    except Exception as err:  # reported as a skipped backend, with the reason
        emit({"setup_error": f"{type(err).__name__}: {err}"})
        return 0
    present = adapter.devices()
    cases = load_cases()
    if args.cases:
        cases = [c for c in cases if any(p in c.id for p in args.cases.split(","))]
    requested = [d for d in args.devices.split(",") if d]
    absent = [d for d in requested if d not in present]
    full = full_plan(cases, cap, [d for d in requested if d in present],
                     args.modes.split(","), args.dtypes.split(","),
                     {c.id for c in compiled_subset(cases)})
    plan = representative(full) if args.select == "representative" else full
    emit({"planned": len(plan), "full": len(full), "devices": present, "absent": absent})
    for index, (device, mode, dtype, case) in enumerate(plan):
        if index % 20 == 19:
            relieve()
        # Announced first, so that a worker that dies in it can be told which check killed it.
        emit({"running": {"device": device, "mode": mode, "dtype": dtype, "case": case.id}})
        row = {"backend": adapter.name or args.backend, "device": device, "mode": mode,
               "dtype": dtype, "case": case.id}
        start = time.perf_counter()
        try:
            worst, where = check(case, dtype, adapter.run(case, dtype, mode, device))
            row.update(status="passed" if worst <= 1 else "failed",
                       worst=worst if np.isfinite(worst) else "inf", where=where)
        except Unsupported as err:
            row.update(status="skipped", reason=str(err))
        except Exception as err:
            row.update(status="failed", worst="inf", where="exception",
                       reason=f"{type(err).__name__}: {err}",
                       trace=traceback.format_exc(limit=4))
        emit({**row, "seconds": round(time.perf_counter() - start, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
