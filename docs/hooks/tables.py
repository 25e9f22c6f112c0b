"""MkDocs hook: tables derived from the code at build time.

Markers replaced in any page:

- ``<!-- tfree:tolerances -->``: ``conformance.tolerances.TOLERANCES``;
- ``<!-- tfree:capabilities -->``: ``conformance.capabilities.CAPABILITIES``;
- ``<!-- tfree:conformance-matrix -->``: the matrix of a ``python -m conformance --json``
  report, read from ``$TFREE_CONFORMANCE_JSON`` or else ``docs/data/conformance.json``; a
  clearly marked placeholder when neither exists.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "backends"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

DTYPES = ("float64", "float32", "float16", "bfloat16")
REPORT_ENV = "TFREE_CONFORMANCE_JSON"
REPORT_IN_DOCS = "data/conformance.json"


def tolerance_table() -> str:
    from conformance.tolerances import TOLERANCES

    lines = [
        "| input dtype | loss rtol | loss atol | gradient rtol | gradient atol |",
        "|---|---|---|---|---|",
    ]
    for dtype, kinds in TOLERANCES.items():
        loss, grad = kinds["loss"], kinds["grad"]
        lines.append(f"| {dtype} | {loss.rtol:g} | {loss.atol:g} | {grad.rtol:g} | "
                     f"{grad.atol:g} |")
    return "\n".join(lines)


def capability_table() -> str:
    from conformance.capabilities import CAPABILITIES

    lines = ["| backend | input dtypes | modes | devices |", "|---|---|---|---|"]
    for cap in CAPABILITIES.values():
        modes = ", ".join(
            f"compiled (`{cap.compiled_as}`)" if m == "compiled" and cap.compiled_as else m
            for m in cap.modes
        )
        lines.append(f"| {cap.backend} | {', '.join(cap.dtypes)} | {modes} | "
                     f"{', '.join(cap.devices)} |")
    return "\n".join(lines)


def _report_path(docs_dir: str) -> Path | None:
    env = os.environ.get(REPORT_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{REPORT_ENV}={env} is not a file")
        return path
    path = Path(docs_dir) / REPORT_IN_DOCS
    return path if path.is_file() else None


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "n/a"
    if cell["failed"]:
        return f"**FAIL** {cell['failed']}/{cell['failed'] + cell['passed']}"
    if cell["passed"]:
        return f"{cell['passed']} ok ({cell['worst']:.2g})"
    return "skipped"


def matrix_table(report: dict[str, Any]) -> str:
    cells: dict[tuple[str, str, str], dict[str, dict]] = defaultdict(dict)
    for row in report["matrix"]:
        cells[(row["backend"], row["device"], row["mode"])][row["dtype"]] = row
    env = report.get("environment", {})
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env.get("versions", {}).items()))
    lines = [
        f"Measured with Python {env.get('python', '?')} on {env.get('machine', '?')} "
        f"({env.get('cpus', '?')} CPUs); {versions}.",
        "",
        "| backend | device | mode | " + " | ".join(DTYPES) + " |",
        "|---|---|---|" + "---|" * len(DTYPES),
    ]
    from conformance.capabilities import BACKENDS

    def order(key: tuple[str, str, str]) -> tuple:
        known = key[0] in BACKENDS
        return (not known, BACKENDS.index(key[0]) if known else 0, *key)

    for key in sorted(cells, key=order):
        row = cells[key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | "
                     + " | ".join(_cell(row.get(d)) for d in DTYPES) + " |")
    skipped = {
        (r["backend"], r["device"]): r.get("skip_reasons", [])
        for r in report["matrix"] if r.get("skip_reasons")
    }
    if skipped:
        lines.append("")
        for (backend, device), why in sorted(skipped.items()):
            lines.append(f"- {backend} on {device}, skipped: {'; '.join(why)}")
    for backend, meta in sorted(report.get("backends", {}).items()):
        for what in ("setup_error", "crash"):
            if what in meta:
                lines.append(f"- {backend} did not run: {meta[what]}")
    return "\n".join(lines)


PLACEHOLDER = """\
!!! warning "No measured report in this build"
    This table is filled from `python -m conformance --json`: put the report at
    `docs/data/conformance.json` (or point `TFREE_CONFORMANCE_JSON` at it) and rebuild.

| backend | device | mode | float64 | float32 | float16 | bfloat16 |
|---|---|---|---|---|---|---|
| numpy | cpu | eager | filled from `python -m conformance --json` | | | |
| array_api_strict | cpu | eager | filled from `python -m conformance --json` | | | |
| torch | cpu / cuda | eager / compiled | filled from `python -m conformance --json` | | | |
| jax | cpu / cuda | eager / compiled | filled from `python -m conformance --json` | | | |
| tensorflow | cpu / cuda | eager / compiled | filled from `python -m conformance --json` | | | |
"""


def conformance_matrix(docs_dir: str) -> str:
    path = _report_path(docs_dir)
    if path is None:
        return PLACEHOLDER
    return matrix_table(json.loads(path.read_text()))


def on_page_markdown(markdown: str, page, config, files) -> str:
    makers = {
        "<!-- tfree:tolerances -->": tolerance_table,
        "<!-- tfree:capabilities -->": capability_table,
        "<!-- tfree:conformance-matrix -->": lambda: conformance_matrix(config["docs_dir"]),
    }
    for marker, make in makers.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
