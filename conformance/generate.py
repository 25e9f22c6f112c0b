"""Generate (or ``--check``) the golden files ``conformance/golden/<layout>.json``.

    python -m conformance.generate            # (re)write every golden file
    python -m conformance.generate --check    # regenerate in memory, exit 1 on any drift
    python -m conformance.generate --check --only sanity   # only the cases whose id contains it

Expected values come from :mod:`conformance.reference` (mpmath, ``MP_DPS`` digits), which
imports nothing from ``tfree_core``. Before anything is written every case's gradient is
checked by finite differences in the same precision: element by element when the case has
at most ``FD_MAX_ELEMENTS`` input elements, along ``FD_DIRECTIONS`` random directions
otherwise. Any mismatch aborts the run and nothing is written.

File schema (``schema_version`` 1), one JSON object per layout:

    schema_version, generator_version, layout, formula (list of lines), mp_dps,
    eps_default, delta, number_format, cases: [case, ...]

Each case:

    id            unique string
    layout        pairs | pairs_symmetric | pairs_labels | pairs_labels_symmetric |
                  negatives_shared | negatives_per_row | nt_xent | sup_con | similarity |
                  retrieval | retrieval_symmetric
    function      info_nce | nt_xent | sup_con | loss_from_similarity
    description   one line; tags: list of strings (clip_tie, zero_rows, sanity, ...)
    inputs        {argument name: nested list of float.hex() strings} — the float arrays
                  that get gradients (query, key, negatives, hard_negatives, z1, z2,
                  features, similarity)
    kwargs        every other argument of the call, by name: logit_map, temperature, eps,
                  reduction; where (bool list or null; not for loss_from_similarity);
                  symmetric and labels (info_nce); hard_negative_mask, key_ids and
                  hard_negative_ids (retrieval layouts; null where absent); labels
                  (sup_con); positive_mask, valid_mask (loss_from_similarity, nested bool
                  lists, valid_mask may be null)
    cotangent     null, or for reduction "none" a nested list of float.hex() strings in the
                  shape of the per-anchor loss
    dtypes        input dtypes the case applies to: all its float arrays (inputs and
                  cotangent) are exactly representable in them (and, for embeddings with the
                  arctanh map, no similarity lies within 5e-7 of the float32 bound)
    expected      {"float64": E, "float32": E}, by compute dtype (float16 and bfloat16 inputs
                  compute in float32); E has:
                    loss         decimal string (mean/sum) or nested list (none)
                    grads        {input name: nested list shaped like the input} of
                                 d(loss)/d(input) for mean/sum, d(Σ cotangent·loss)/d(input)
                                 for none
                    grad_scales  {input name: nested list shaped like input.shape[:-1]}: the
                                 natural size of each row's gradient, Σ|dL/dS| over the pairs
                                 touching the row divided by its norm (0 for zero rows)
                    clip_bound   float.hex() of b for the arctanh map, else null
                    fd_check     "elementwise", "directional" or "none"

Expected values are exact-math results (for the float64 inputs, taken as exact reals, with
that compute dtype's clip bound), printed as decimal strings with 20 significant digits.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from mpmath import mp, mpf

from conformance.cases import LAYOUTS, MAX_COSINE, Case, all_cases, build_problem
from conformance.reference import (
    DELTA,
    MP_DPS,
    LogitMap,
    Result,
    clip_bound,
    fd_check,
    precise,
    solve,
)

SCHEMA_VERSION = 1
GENERATOR_VERSION = "1.0.0"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
DIGITS = 20
FD_MAX_ELEMENTS = 400
FD_DIRECTIONS = 2
INPUT_DTYPES = ("float64", "float32", "float16", "bfloat16")
COMPUTE_DTYPE = {
    "float64": "float64",
    "float32": "float32",
    "float16": "float32",
    "bfloat16": "float32",
}
MIN_MARGIN = {"float64": 1e-13, "float32": 5e-7}
"""Least distance of an embedding-level similarity from ±b (float rounding of S must not
decide the side of the bound); below it the case is refused (float64) or limited to
float64 inputs (float32)."""
FORMULA = [
    "u = z / max(||z||_2, delta), delta = 1e-12; rows with ||z|| < delta get zero gradient",
    "S_ij = <u_i, u_j> (anchor i, candidate j); given directly for loss_from_similarity",
    "arctanh map: l = phi(clip(S, -b, b)), phi(s) = log((1 + s) / (1 - s)),",
    "  b = largest compute-dtype value <= 1 - eps; dl/dS = 2 / (1 - S^2) on [-b, b], else 0",
    "temperature map: l = S / temperature",
    "L_i = -(1/|P(i)|) sum_{p in P(i)} [l_ip - logsumexp_{j in C(i)} l_ij], 0 if P(i) empty",
    "mean: sum of L_i / number of anchors with a positive (0 if none); sum; none: L per anchor",
    "symmetric: 1/2 (L_q->k + L_k->q), each direction reduced on its own",
    "grads: d(loss)/d(input) (mean, sum) or d(sum cotangent * loss)/d(input) (none)",
]
NUMBER_FORMAT = (
    "inputs and cotangent: float.hex() of float64 values, taken as exact reals; "
    "expected loss, grads, grad_scales: decimal strings of the exact result, "
    f"{DIGITS} significant digits; clip_bound: float.hex()"
)


class GenerationError(RuntimeError):
    """The generator's own finite-difference check failed: nothing may be written."""


# --------------------------------------------------------------------------- per case


def exactly_representable(x: np.ndarray, dtype: str) -> bool:
    """Whether every float64 value of ``x`` survives a round trip through ``dtype``."""
    if dtype == "float64":
        return True
    with np.errstate(over="ignore"):
        f32 = x.astype(np.float32)
        if not np.array_equal(f32.astype(np.float64), x):
            return False
        if dtype == "float32":
            return True
        if dtype == "bfloat16":  # bfloat16 = the upper 16 bits of a float32
            return bool(np.all(f32.view(np.uint32) & 0xFFFF == 0))
        f16 = x.astype(np.float16)
    return bool(np.all(np.isfinite(f16)) and np.array_equal(f16.astype(np.float64), x))


def _dec(x: mpf) -> str:
    return mp.nstr(x, DIGITS)


def _nested(values: list[Any], shape: tuple[int, ...]) -> Any:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr.reshape(shape).tolist()


def _rows(arr: np.ndarray) -> list[list[mpf]]:
    return [[mpf(float(v)) for v in row] for row in arr.reshape(-1, arr.shape[-1])]


def _logit_maps(kw: dict[str, Any]) -> dict[str, LogitMap]:
    if kw["logit_map"] == "temperature":
        lm = LogitMap("temperature", tau=mpf(kw["temperature"]))
        return {"float64": lm, "float32": lm}
    return {
        dt: LogitMap("arctanh", bound=clip_bound(kw["eps"], dt)) for dt in ("float64", "float32")
    }


def _fd_mode(case: Case, problem: Any, lmap: LogitMap, result: Result) -> str:
    """Finite differences are valid unless a similarity sits near (not on) a clip kink."""
    if lmap.kind == "arctanh":
        if problem.similarity_level:
            sim = case.inputs["similarity"]
            used = [float(sim[a.row[1], c[1]]) for a in problem.anchors for c in a.cands]
            gaps = [abs(abs(mpf(v)) - lmap.bound) for v in used]
            if any(0 < g < mpf("1e-18") for g in gaps):
                return "none"
        elif result.margin < mpf("1e-15"):
            return "none"
    n_elements = sum(a.size for a in case.inputs.values())
    return "elementwise" if n_elements <= FD_MAX_ELEMENTS else "directional"


@precise
def compute_case(case: Case) -> dict[str, Any]:
    """The JSON object of one case, after its finite-difference self-check."""
    problem = build_problem(case)
    rows = {name: _rows(arr) for name, arr in case.inputs.items()}
    reduction = case.kwargs["reduction"]
    cot = None if case.cotangent is None else [mpf(float(v)) for v in case.cotangent.ravel()]
    maps = _logit_maps(case.kwargs)

    results: dict[str, Result] = {"float64": solve(problem, rows, maps["float64"], reduction, cot)}
    # with no |S| reaching b32 (≤ b64) both bounds clip nothing: the float32 numbers are equal
    same = (
        maps["float32"] is maps["float64"] or results["float64"].max_abs_s < maps["float32"].bound
    )
    results["float32"] = (
        results["float64"] if same else solve(problem, rows, maps["float32"], reduction, cot)
    )

    fd_modes: dict[str, str] = {}
    for dt in ("float64", "float32"):
        if dt == "float32" and same:
            fd_modes[dt] = fd_modes["float64"]
            continue
        mode = _fd_mode(case, problem, maps[dt], results[dt])
        fd_modes[dt] = mode
        if mode == "none":
            continue
        errors = fd_check(
            problem,
            rows,
            maps[dt],
            reduction,
            cot,
            results[dt],
            directions=FD_DIRECTIONS if mode == "directional" else 0,
            seed=len(case.id),
        )
        if errors:
            raise GenerationError(
                f"{case.id} [{dt}]: analytic gradient disagrees with finite "
                "differences:\n  " + "\n  ".join(errors[:10])
            )

    floats = [*case.inputs.values()] + ([] if case.cotangent is None else [case.cotangent])
    dtypes = [dt for dt in INPUT_DTYPES if all(exactly_representable(a, dt) for a in floats)]
    if not problem.similarity_level and case.kwargs["logit_map"] == "arctanh":
        if results["float64"].margin < MIN_MARGIN["float64"]:
            raise GenerationError(
                f"{case.id}: a similarity lies within "
                f"{MIN_MARGIN['float64']} of the float64 clip bound"
            )
        if results["float32"].margin < MIN_MARGIN["float32"]:
            dtypes = [dt for dt in dtypes if COMPUTE_DTYPE[dt] == "float64"]
        if results["float64"].max_inner > MAX_COSINE and "near_bound" not in case.tags:
            raise GenerationError(
                f"{case.id}: an unclipped |S| exceeds {MAX_COSINE} (an "
                "ill-conditioned loss): redraw it or tag it near_bound"
            )

    out_shape = case.cotangent.shape if case.cotangent is not None else None
    expected = {}
    for dt, res in results.items():
        loss = (
            _nested([_dec(v) for v in res.loss], out_shape)
            if isinstance(res.loss, list)
            else _dec(res.loss)
        )
        grads, scales = {}, {}
        for name, arr in case.inputs.items():
            grads[name] = _nested([_dec(v) for row in res.grads[name] for v in row], arr.shape)
            scales[name] = _nested([_dec(v) for v in res.scales[name]], arr.shape[:-1])
        bound = maps[dt].bound
        expected[dt] = {
            "loss": loss,
            "grads": grads,
            "grad_scales": scales,
            "clip_bound": None if bound is None else float(bound).hex(),
            "fd_check": fd_modes[dt],
        }
    return {
        "id": case.id,
        "layout": case.layout,
        "function": case.function,
        "description": case.description,
        "tags": sorted(case.tags),
        "inputs": {k: _hex(v) for k, v in case.inputs.items()},
        "kwargs": case.kwargs,
        "cotangent": None if case.cotangent is None else _hex(case.cotangent),
        "dtypes": dtypes,
        "expected": expected,
    }


def _hex(arr: np.ndarray) -> Any:
    return _nested([float(v).hex() for v in arr.ravel()], arr.shape)


# --------------------------------------------------------------------------- files


def header(layout: str) -> dict[str, Any]:
    """Everything of a golden file but its cases."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generator_version": GENERATOR_VERSION,
        "layout": layout,
        "formula": FORMULA,
        "mp_dps": MP_DPS,
        "eps_default": 1e-6,
        "delta": DELTA,
        "number_format": NUMBER_FORMAT,
    }


def dumps(obj: Any, indent: int = 0) -> str:
    """Deterministic JSON: sorted keys, one key or row per line, lists of scalars inline."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        body = ",\n".join(f"{pad}{json.dumps(k)}: {dumps(obj[k], indent + 1)}" for k in sorted(obj))
        return "{\n" + body + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
        body = ",\n".join(pad + dumps(v, indent + 1) for v in obj)
        return "[\n" + body + "\n" + " " * indent + "]"
    return json.dumps(obj)


def _cost(case: Case) -> int:
    """Rough work of a case (elements × rows), to start the largest first."""
    rows = next(iter(case.inputs.values())).shape[0]
    return sum(a.size for a in case.inputs.values()) * (1 + rows)


def generate(cases: list[Case], jobs: int) -> dict[str, dict[str, Any]]:
    """{layout: file object} of the given cases (in their order), in ``jobs`` processes."""
    order = sorted(range(len(cases)), key=lambda i: -_cost(cases[i]))
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            done = pool.map(compute_case, [cases[i] for i in order], chunksize=1)
    else:
        done = [compute_case(cases[i]) for i in order]
    objs: list[dict[str, Any]] = [{}] * len(cases)
    for i, obj in zip(order, done, strict=True):
        objs[i] = obj
    files: dict[str, dict[str, Any]] = {}
    for obj in objs:
        files.setdefault(obj["layout"], {**header(obj["layout"]), "cases": []})["cases"].append(obj)
    return files


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: {'missing in file' if k not in a else 'not generated'}")
            else:
                _diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: file {json.dumps(a)[:80]} != generated {json.dumps(b)[:80]}")


def check(files: dict[str, dict[str, Any]], golden: Path, only: str | None) -> list[str]:
    """Drift between generated ``files`` and those on disk, as readable lines (empty: none)."""
    drift: list[str] = []
    all_ids = {layout: [c.id for c in all_cases() if c.layout == layout] for layout in LAYOUTS}
    for layout in LAYOUTS:
        path = golden / f"{layout}.json"
        if not path.exists():
            drift.append(f"{path.name}: missing")
            continue
        text = path.read_text()
        on_disk = json.loads(text)
        gen = files.get(layout)
        if only is None and gen is not None and dumps(gen) + "\n" != text:
            drift.append(f"{path.name}: text differs from the regenerated file")
        _diff({k: v for k, v in on_disk.items() if k != "cases"}, header(layout), path.name, drift)
        disk_cases = {c["id"]: c for c in on_disk.get("cases", [])}
        if list(disk_cases) != all_ids[layout]:
            drift.append(f"{path.name}: case ids {list(disk_cases)} != {all_ids[layout]}")
        for case in (gen or {}).get("cases", []):
            if case["id"] not in disk_cases:
                drift.append(f"{path.name}: case {case['id']} missing")
                continue
            _diff(disk_cases[case["id"]], case, f"{path.name}:{case['id']}", drift)
    return drift


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate in memory and exit 1 on any drift from the files",
    )
    parser.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="with --check: only the cases whose id contains SUBSTRING",
    )
    parser.add_argument("--golden-dir", type=Path, default=GOLDEN_DIR)
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args(argv)
    if args.only is not None and not args.check:
        parser.error("--only needs --check (a partial file must not be written)")

    cases = [c for c in all_cases() if args.only is None or args.only in c.id]
    start = time.perf_counter()
    try:
        files = generate(cases, args.jobs)
    except GenerationError as err:
        print(f"refusing to write: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"{len(cases)} cases computed and checked in {elapsed:.1f} s", file=sys.stderr)

    if args.check:
        drift = check(files, args.golden_dir, args.only)
        for line in drift[:50]:
            print(f"drift: {line}")
        if len(drift) > 50:
            print(f"drift: ... and {len(drift) - 50} more")
        if drift:
            print("golden files are out of date: run python -m conformance.generate")
            return 1
        print("golden files up to date")
        return 0

    args.golden_dir.mkdir(parents=True, exist_ok=True)
    for layout, doc in files.items():
        path = args.golden_dir / f"{layout}.json"
        path.write_text(dumps(doc) + "\n")
        print(f"wrote {path} ({len(doc['cases'])} cases, {path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
