"""Reading the golden files: cases as NumPy float64 inputs and exact expected values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conformance.tolerances import as_float64

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

# Keyword arguments that arrive as lists and go to the backend as arrays.
_INT_KWARGS = ("labels", "key_ids", "hard_negative_ids")
_BOOL_KWARGS = ("where", "positive_mask", "valid_mask", "hard_negative_mask")


@dataclass
class GoldenCase:
    """One case: the public function, its float64 inputs and keywords, and per compute
    dtype the exact loss and gradients."""

    id: str
    layout: str
    function: str
    inputs: dict[str, np.ndarray]  # differentiable inputs, by argument name
    kwargs: dict[str, Any]  # other keywords; arrays as NumPy arrays
    cotangent: np.ndarray | None
    dtypes: tuple[str, ...]
    expected: dict[str, dict[str, Any]]
    tags: tuple[str, ...]

    def expected_for(self, input_dtype: str) -> dict[str, Any]:
        """Half inputs compute in float32 (SPEC §2.2): they share float32's expectation."""
        return self.expected["float64" if input_dtype == "float64" else "float32"]


def _case(raw: dict[str, Any]) -> GoldenCase:
    kwargs = {}
    for name, value in raw["kwargs"].items():
        if value is None:
            if name in ("temperature",):
                kwargs[name] = None
            continue
        if name in _INT_KWARGS:
            kwargs[name] = np.asarray(value, dtype=np.int64)
        elif name in _BOOL_KWARGS:
            kwargs[name] = np.asarray(value, dtype=bool)
        else:
            kwargs[name] = value
    if kwargs.get("logit_map") != "temperature":
        kwargs.pop("temperature", None)
    inputs = {name: as_float64(v) for name, v in raw["inputs"].items()}
    cotangent = None if raw.get("cotangent") is None else as_float64(raw["cotangent"])
    return GoldenCase(
        id=raw["id"],
        layout=raw["layout"],
        function=raw["function"],
        inputs=inputs,
        kwargs=kwargs,
        cotangent=cotangent,
        dtypes=tuple(raw["dtypes"]),
        expected=raw["expected"],
        tags=tuple(raw.get("tags", ())),
    )


def load_cases(directory: Path = GOLDEN_DIR) -> list[GoldenCase]:
    """Every case of every golden file, in a stable order."""
    cases = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        cases.extend(_case(raw) for raw in data["cases"])
    return cases


def differentiable_order(case: GoldenCase) -> list[str]:
    """The differentiable inputs in the order of the public signature."""
    order = ("query", "key", "negatives", "hard_negatives", "z1", "z2", "features",
             "similarity")
    return [name for name in order if name in case.inputs]


COMPILED_KINDS = (("arctanh", "mean"), ("temperature", "none"))
COMPILED_DTYPES = ("float64", "float32")
"""Compiled modes run the subset in these input dtypes (each compile costs seconds)."""


def compiled_subset(cases: list[GoldenCase]) -> list[GoldenCase]:
    """A representative subset for compiled modes (each compile costs seconds): per layout,
    the random cases of ``COMPILED_KINDS`` (map × reduction), which share one shape."""
    chosen = [
        case
        for case in cases
        if not case.tags
        and (case.kwargs.get("logit_map"), case.kwargs.get("reduction")) in COMPILED_KINDS
        and case.id.startswith(f"{case.layout}-{case.kwargs.get('logit_map')}-")
    ]
    return sorted(chosen, key=lambda c: c.id)


TILED_MODES = ("tiled", "tiled-compiled")
"""Modes that evaluate the cases tiled (``chunk_size=``): ``tiled`` eagerly, every case;
``tiled-compiled`` under the backend's compiler (its native block loop), the compiled subset."""

TILED_LAYOUTS = frozenset({"pairs", "pairs_symmetric", "pairs_labels", "pairs_labels_symmetric",
                           "negatives_shared", "negatives_per_row", "nt_xent", "sup_con"})
"""Every layout but ``similarity``: its matrix is an input, never tiled."""


def anchor_rows(case: GoldenCase) -> int:
    """The rows the tiled evaluation cuts into blocks: ``N`` queries (pairs, negatives),
    ``2N`` for NT-Xent, ``N·V`` for SupCon with ``V`` views."""
    if case.layout == "nt_xent":
        return 2 * case.inputs["z1"].shape[0]
    if case.layout == "sup_con":
        return int(np.prod(case.inputs["features"].shape[:-1]))
    return case.inputs["query"].shape[0]


def tiled_chunk_size(case: GoldenCase) -> int:
    """A small ``chunk_size`` that does not divide the anchor rows ``n`` (so the last block
    is padded with dead rows): the first ``c >= max(2, n // 3)``, ``c < n``, with
    ``n mod c != 0``; 1 where none exists (``n <= 2``)."""
    n = anchor_rows(case)
    return next((c for c in range(max(2, n // 3), n) if n % c), 1)


def tiled_kwargs(case: GoldenCase, mode: str) -> dict[str, Any]:
    """The case's keywords, with ``chunk_size`` added in the tiled modes."""
    if mode not in TILED_MODES:
        return case.kwargs
    return {**case.kwargs, "chunk_size": tiled_chunk_size(case)}


FUSED_LAYOUTS = frozenset({"pairs", "pairs_symmetric", "negatives_shared", "nt_xent"})
"""The ``fused`` mode (``kernel="fused"``: Triton / Pallas, in their CPU interpreters
without a GPU) runs the cases these kernels support: the arctanh map on these layouts."""


def fused_case(case: GoldenCase) -> bool:
    """Whether the fused kernels support ``case`` (the other cases fall back to the core)."""
    return case.layout in FUSED_LAYOUTS and case.kwargs.get("logit_map") == "arctanh"


def planned(case: GoldenCase, mode: str, dtype: str, subset: set[str]) -> bool:
    """Whether ``case`` runs in ``mode`` and input ``dtype``: eager and tiled modes run every
    case (tiled: every layout but similarity); compiled modes the subset in
    ``COMPILED_DTYPES``."""
    if dtype not in case.dtypes:
        return False
    if mode in TILED_MODES and case.layout not in TILED_LAYOUTS:
        return False
    if mode == "fused" and not fused_case(case):
        return False
    if mode.endswith("compiled"):
        return dtype in COMPILED_DTYPES and case.id in subset
    return True
