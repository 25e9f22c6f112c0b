"""One backend, in its own process: run the selected cases and print one JSON line per
result (``python -m conformance.worker --backend torch ...``; used by the runner)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import numpy as np

from conformance.adapters import Unsupported, make_adapter
from conformance.capabilities import CAPABILITIES, capability_of
from conformance.golden import compiled_subset, load_cases, planned
from conformance.tolerances import compare


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--dtypes", required=True)
    parser.add_argument("--modes", required=True)
    parser.add_argument("--devices", required=True)
    parser.add_argument("--cases", default="")
    args = parser.parse_args(argv)
    adapter = make_adapter(args.backend)
    cap = CAPABILITIES.get(args.backend) or capability_of(adapter)
    try:
        adapter.setup()
    except Exception as err:  # reported as a skipped backend, with the reason
        print(json.dumps({"setup_error": f"{type(err).__name__}: {err}"}), flush=True)
        return 0
    present = adapter.devices()
    cases = load_cases()
    if args.cases:
        cases = [c for c in cases if any(p in c.id for p in args.cases.split(","))]
    subset = {c.id for c in compiled_subset(cases)}
    plan = []
    absent = [d for d in args.devices.split(",") if d and d not in present]
    for device in (d for d in args.devices.split(",") if d in present):
        for mode in args.modes.split(","):
            for dtype in args.dtypes.split(","):
                if dtype not in cap.dtypes or mode not in cap.modes:
                    continue
                plan += [(device, mode, dtype, case) for case in cases
                         if planned(case, mode, dtype, subset)]
    print(json.dumps({"planned": len(plan), "devices": present, "absent": absent}), flush=True)
    for device, mode, dtype, case in plan:
        row = {"backend": adapter.name or args.backend, "device": device, "mode": mode,
               "dtype": dtype, "case": case.id}
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
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
