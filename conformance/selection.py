"""Which checks a worker runs: the full plan, or the representative matrix drawn from it.

A *check* is one case in one input dtype, mode and device. The full plan is every check
:func:`conformance.golden.planned` allows (thousands; ~25 min on two cores). The
representative matrix is a small deterministic subset that still reaches every *kind* of
check: per (device, mode), a greedy cover of the kinds found in that mode's plan. The kinds
are derived from the golden data (layout, public function, logit map, reduction, the array
keywords a case passes, boolean keywords, input ranks), so a new layout or keyword is
covered without editing this file. Compiled modes pay seconds per compile (PyTorch's
inductor: 15-30 s on two busy cores), so there the kinds are coarser (logit map and
reduction, each check on a different function where it can). Every mode covers each input
dtype; eager mode each (input dtype, function) pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from conformance.capabilities import Capability
from conformance.golden import GoldenCase, differentiable_order, planned

Kind = tuple
"""A kind of check, e.g. ``("layout", "sup_con")`` or ``("dtype", "float16")``."""


class Check(NamedTuple):
    """One golden case, run in one input dtype, mode and device."""

    device: str
    mode: str
    dtype: str
    case: GoldenCase


def compiles(mode: str) -> bool:
    """Whether ``mode`` runs under the framework's compiler (seconds per new graph)."""
    return mode.endswith("compiled")


def full_plan(cases: Iterable[GoldenCase], cap: Capability, devices: Iterable[str],
              modes: Iterable[str], dtypes: Iterable[str], subset: set[str]) -> list[Check]:
    """Every check of the requested devices × modes × dtypes that ``cap`` supports, in the
    order the worker runs them (device, mode, dtype, case)."""
    cases, modes, dtypes = list(cases), list(modes), list(dtypes)  # each is looped over often
    return [
        Check(device, mode, dtype, case)
        for device in devices
        for mode in modes
        if mode in cap.modes
        for dtype in dtypes
        if dtype in cap.dtypes
        for case in cases
        if planned(case, mode, dtype, subset)
    ]


def case_kinds(case: GoldenCase, mode: str) -> frozenset[Kind]:
    """The kinds a case stands for in ``mode``: what the representative matrix must reach.
    Compiled modes must reach each logit map and reduction (the public functions and
    layouts there are a preference, :func:`preferred_kinds`: each compile costs seconds)."""
    kinds = {("logit_map", case.kwargs.get("logit_map")),
             ("reduction", case.kwargs.get("reduction"))}
    if compiles(mode):
        return frozenset(kinds)
    kinds |= preferred_kinds(case)
    ranks = tuple(case.inputs[name].ndim for name in differentiable_order(case))
    kinds.add(("ranks", case.layout, ranks))  # e.g. SupCon's (N, D) and (N, V, D) features
    for name, value in case.kwargs.items():
        if isinstance(value, np.ndarray):
            kinds.add(("keyword", name))  # labels=, where=, positive_mask=, valid_mask=
        elif isinstance(value, bool):
            kinds.add((name, value))
    return frozenset(kinds)


def preferred_kinds(case: GoldenCase) -> frozenset[Kind]:
    """The public function and layout of a case: required outside compiled modes, and there
    the tie-break between checks that reach as many required kinds."""
    return frozenset({("function", case.function), ("layout", case.layout)})


def check_kinds(check: Check) -> frozenset[Kind]:
    """The kinds of one check: its case's kinds and its input dtype. In eager mode the dtype
    is also paired with the public function, so every dtype meets every function once
    untransformed; the tiled, fused and compiled modes cover each dtype once (their checks
    cost up to seconds each)."""
    kinds = case_kinds(check.case, check.mode) | {("dtype", check.dtype)}
    if check.mode == "eager":
        kinds |= {("dtype", check.dtype, check.case.function)}
    return kinds


def _size(check: Check) -> int:
    """Input elements of a check: among equally useful checks the smallest is cheapest."""
    return sum(int(x.size) for x in check.case.inputs.values())


def _cover(checks: list[Check]) -> list[Check]:
    """A greedy cover of every kind in ``checks``: repeatedly the check that reaches the
    most kinds not yet reached (ties: the most preferred kinds not yet reached, then the
    function most of the checks call, then the smallest, then the first in plan order)."""
    kinds = [check_kinds(c) for c in checks]
    prefer = [preferred_kinds(c.case) for c in checks]
    calls = Counter(c.case.function for c in checks)
    rank = sorted(range(len(checks)), key=lambda i: (_size(checks[i]), i))
    missing = set().union(*kinds) if kinds else set()
    unmet = set().union(*prefer) if prefer else set()
    chosen: list[int] = []
    while missing:
        best = max(rank, key=lambda i: (len(kinds[i] & missing), len(prefer[i] & unmet),
                                        calls[checks[i].case.function]))
        chosen.append(best)
        missing -= kinds[best]
        unmet -= prefer[best]
    return [checks[i] for i in sorted(chosen)]


def representative(plan: list[Check]) -> list[Check]:
    """The representative matrix of ``plan``: per (device, mode), a cover of its kinds;
    in plan order. A function of the plan alone, so splitting a backend's modes or devices
    over several workers selects the same checks."""
    groups: dict[tuple[str, str], list[Check]] = {}
    for check in plan:
        groups.setdefault((check.device, check.mode), []).append(check)
    chosen = {id(c) for group in groups.values() for c in _cover(group)}
    return [c for c in plan if id(c) in chosen]
