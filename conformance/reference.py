"""Exact-arithmetic reference of the temperature-free loss (SPEC §2–§3), in mpmath.

Independent of ``tfree_core`` and of every deep-learning framework: the formulas are written
out again here, in arbitrary precision (``MP_DPS`` significant digits), and the analytic
gradient is checked against high-precision finite differences before anything is written.

Every layout reduces to a :class:`Problem`: a list of anchors, each with a candidate set
``C(i)`` and a positive set ``P(i) ⊆ C(i)``; rows are keyed ``(input name, flat row index)``.

    u      = z / max(‖z‖, δ)                        δ = 1e-12; ‖z‖ < δ is a "zero row"
    S_ij   = ⟨u_i, u_j⟩                              (or given, at the similarity level)
    ℓ_ij   = φ(clip(S_ij, −b, b)),  φ(s) = log((1 + s) / (1 − s))          ("arctanh")
           = S_ij / τ                                                      ("temperature")
    L_i    = −(1/|P(i)|) Σ_{p∈P(i)} [ℓ_ip − logsumexp_{j∈C(i)} ℓ_ij]      (0 if P(i) = ∅)

Directions (symmetric pairs) are reduced one by one and averaged with weight 1/n_dirs.
"mean" divides a direction's sum by its number of anchors with a positive (0 if none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import numpy as np
from mpmath import mp, mpf

MP_DPS = 60
"""Working precision of the reference, in significant decimal digits."""
DELTA = 1e-12
"""Normalisation floor δ of SPEC §2.1 (the float64 value of 1e-12, taken as exact)."""
FD_STEP = mpf("1e-20")
"""Relative step of the central finite differences (times the row norm for embeddings)."""
FD_ONE_SIDED_STEP = mpf("1e-30")
"""Step of the one-sided differences used for similarities lying exactly on ±b."""
FD_RTOL = mpf("1e-20")
"""Agreement required between finite differences and the analytic gradient (see fd_check)."""

Key = tuple[str, int]
Rows = dict[str, list[list[mpf]]]
F = TypeVar("F", bound=Callable[..., Any])


def precise(fn: F) -> F:
    """Run ``fn`` at ``MP_DPS`` digits without touching the caller's mpmath precision."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with mp.workdps(MP_DPS):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- logit maps


@precise
def clip_bound(eps: float, dtype: str) -> mpf:
    """b = the largest ``dtype`` value ≤ 1 − ε, in exact real arithmetic (ε its exact binary value).

    Raises ValueError where SPEC §2.4 does: ε ≥ 0.5, ε ≤ 0, or b = 1.
    """
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps!r}")
    ftype = {"float32": np.float32, "float64": np.float64}[dtype]
    target = 1 - mpf(eps)
    b = ftype(float(target))
    while mpf(float(b)) > target:
        b = np.nextafter(b, ftype(0))
    while mpf(float(np.nextafter(b, ftype(2)))) <= target:
        b = np.nextafter(b, ftype(2))
    if b >= 1:
        raise ValueError(f"eps={eps!r} gives b = 1 in {dtype}")
    return mpf(float(b))


@precise
def phi(s: mpf) -> mpf:
    """φ(s) = log((1 + s) / (1 − s)) = 2·atanh(s)."""
    s = mpf(s)
    return mp.log((1 + s) / (1 - s))


@dataclass(frozen=True)
class LogitMap:
    """ℓ = φ(clip(S, −b, b)) with φ'(s) = 2/(1 − s²) on [−b, b], 0 outside; or ℓ = S/τ."""

    kind: str  # "arctanh" | "temperature"
    bound: mpf | None = None  # b, for "arctanh"
    tau: mpf | None = None  # τ, for "temperature"

    def logit(self, s: mpf) -> mpf:
        if self.kind == "temperature":
            return s / self.tau
        return phi(min(max(s, -self.bound), self.bound))

    def weight(self, s: mpf) -> mpf:
        """exp(ℓ): exp(S/τ), or (1 + c)/(1 − c) with c = clip(S, −b, b) (exp(φ(c)) exactly)."""
        if self.kind == "temperature":
            return mp.exp(s / self.tau)
        c = min(max(s, -self.bound), self.bound)
        return (1 + c) / (1 - c)

    def slope(self, s: mpf) -> mpf:
        """dℓ/dS: 1/τ, or 2/(1 − s²) for −b ≤ s ≤ b (bounds included) and 0 outside."""
        if self.kind == "temperature":
            return 1 / self.tau
        return 2 / (1 - s * s) if -self.bound <= s <= self.bound else mpf(0)


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Anchor:
    """One anchor: its row, candidate rows C(i), positive rows P(i) ⊆ C(i), output slot."""

    row: Key
    cands: tuple[Key, ...]
    pos: frozenset[Key]
    out: int
    direction: int


@dataclass(frozen=True)
class Problem:
    """Anchors of all directions; ``n_out`` slots of the "none" output; ``n_dirs`` directions."""

    anchors: tuple[Anchor, ...]
    n_out: int
    n_dirs: int = 1
    similarity_level: bool = False  # rows are ("row", i), candidates ("col", j) of S itself

    def __post_init__(self) -> None:
        for a in self.anchors:
            if not a.pos <= set(a.cands):
                raise ValueError(f"anchor {a.row}: a positive is not a candidate (P ⊄ C)")


@dataclass
class Result:
    """Loss (scalar, or list over output slots for "none"), objective, gradients per input."""

    loss: mpf | list[mpf]
    objective: mpf  # reduced loss (mean/sum) or Σ_k cotangent_k · loss_k (none)
    grads: dict[str, list[list[mpf]]]
    scales: dict[str, list[mpf]]  # natural magnitude of each row's gradient (see solve)
    margin: mpf  # min over used pairs of | |S| − b |  (inf for "temperature")
    max_abs_s: mpf  # max over used pairs of |S|
    max_inner: mpf  # max over used pairs of |S| not clipped (|S| ≤ b; all pairs for "temperature")


def _similarities(problem: Problem, inputs: Rows) -> tuple[dict, dict, dict]:
    """S for every (anchor, candidate) pair, and the unit rows u and norms ‖z‖ used."""
    if problem.similarity_level:
        sim = inputs["similarity"]
        s = {(a.row, c): mpf(sim[a.row[1]][c[1]]) for a in problem.anchors for c in a.cands}
        return s, {}, {}
    units: dict[Key, list[mpf]] = {}
    norms: dict[Key, mpf] = {}
    for name, rows in inputs.items():
        for r, z in enumerate(rows):
            norm = mp.sqrt(mp.fsum(x * x for x in z))
            norms[(name, r)] = norm
            denom = mpf(DELTA) if norm < DELTA else norm
            units[(name, r)] = [x / denom for x in z]
    s: dict[tuple[Key, Key], mpf] = {}
    for a in problem.anchors:
        for c in a.cands:
            twin = s.get((c, a.row))  # S is symmetric: ⟨u_i, u_j⟩ = ⟨u_j, u_i⟩
            s[(a.row, c)] = mp.fdot(units[a.row], units[c]) if twin is None else twin
    return s, units, norms


def _forward(
    problem: Problem,
    s: Mapping[tuple[Key, Key], mpf],
    lmap: LogitMap,
    reduction: str,
    cotangent: Sequence[mpf] | None,
    *,
    with_grad: bool = True,
) -> tuple[mpf | list[mpf], mpf, dict[tuple[Key, Key], mpf]]:
    """Loss, objective and G = d objective / dS (the "Analytic gradient" section of the SPEC).

    G_ij = A_i · (P_ij − 1[j∈P(i)]/|P(i)|) · φ'(S_ij), P_ij = softmax_{C(i)}(ℓ_i)_j, with
    A_i = w/n_d ("mean", n_d anchors with a positive in direction d), w ("sum"),
    w·cotangent[out(i)] ("none"); w = 1/n_dirs.
    """
    w = mpf(1) / problem.n_dirs
    per_anchor: list[tuple[Anchor, mpf, list[mpf]]] = []
    counts = [0] * problem.n_dirs
    for a in problem.anchors:
        if not a.pos:
            continue
        weights = [lmap.weight(s[(a.row, c)]) for c in a.cands]  # exp(ℓ_ij)
        total = mp.fsum(weights)
        pos_sum = mp.fsum(lmap.logit(s[(a.row, c)]) for c in a.pos)
        loss = mp.log(total) - pos_sum / len(a.pos)  # logsumexp − mean positive logit
        probs = [x / total for x in weights] if with_grad else []
        per_anchor.append((a, loss, probs))
        counts[a.direction] += 1

    out = [mpf(0)] * problem.n_out
    reduced = mpf(0)
    coef: list[mpf] = []
    for a, loss, _ in per_anchor:
        if reduction == "mean":
            c = w / counts[a.direction]
        elif reduction == "sum":
            c = w
        else:
            c = w * cotangent[a.out]
        out[a.out] += w * loss
        reduced += (w / counts[a.direction] if reduction == "mean" else w) * loss
        coef.append(c)
    if reduction == "none":
        objective = mp.fsum(cotangent[k] * out[k] for k in range(problem.n_out))
        loss_value: mpf | list[mpf] = out
    else:
        objective = reduced
        loss_value = reduced

    g: dict[tuple[Key, Key], mpf] = {}
    if not with_grad:
        return loss_value, objective, g
    for (a, _, probs), c in zip(per_anchor, coef, strict=True):
        for cand, p in zip(a.cands, probs, strict=True):
            target = mpf(1) / len(a.pos) if cand in a.pos else mpf(0)
            key = (a.row, cand)
            g[key] = g.get(key, mpf(0)) + c * (p - target) * lmap.slope(s[key])
    return loss_value, objective, g


def _stats(s: Mapping[tuple[Key, Key], mpf], lmap: LogitMap) -> tuple[mpf, mpf, mpf]:
    """(min | |S| − b |, max |S|, max unclipped |S|) over the used pairs."""
    top = max((abs(v) for v in s.values()), default=mpf(0))
    if lmap.kind == "temperature":
        return mp.inf, top, top
    margin = min((abs(abs(v) - lmap.bound) for v in s.values()), default=mp.inf)
    inner = max((abs(v) for v in s.values() if abs(v) <= lmap.bound), default=mpf(0))
    return margin, top, inner


@precise
def solve(
    problem: Problem,
    inputs: Rows,
    lmap: LogitMap,
    reduction: str,
    cotangent: Sequence[mpf] | None = None,
) -> Result:
    """Loss and gradient of the objective with respect to every input row.

    Embeddings: dU_a = G·U_c, dU_c = Gᵀ·U_a, then dz = (du − u⟨u, du⟩)/‖z‖, and dz = 0 for
    zero rows (‖z‖ < δ). Similarity level: dS = G. ``scales[name][r]`` is the natural size of
    row r's gradient, Σ_j |G_rj| + Σ_i |G_ir| (over the pairs touching it), divided by ‖z_r‖
    for embeddings (0 for zero rows): rounding errors of an implementation scale with it.
    """
    s, units, norms = _similarities(problem, inputs)
    loss, objective, g = _forward(problem, s, lmap, reduction, cotangent)
    grads = {n: [[mpf(0)] * len(r) for r in rows] for n, rows in inputs.items()}
    mass: dict[Key, mpf] = {}
    for (r, c), v in g.items():
        mass[r] = mass.get(r, mpf(0)) + abs(v)
        mass[c] = mass.get(c, mpf(0)) + abs(v)
    if problem.similarity_level:
        for (r, c), v in g.items():
            grads["similarity"][r[1]][c[1]] += v
        rows = range(len(grads["similarity"]))
        scales = {"similarity": [mass.get(("row", i), mpf(0)) for i in rows]}
        return Result(loss, objective, grads, scales, *_stats(s, lmap))

    # du_r = Σ_c G_rc u_c + Σ_a G_ar u_a, one fdot per coordinate
    coefs: dict[Key, list[mpf]] = {k: [] for k in units}
    partners: dict[Key, list[list[mpf]]] = {k: [] for k in units}
    for (r, c), v in g.items():
        coefs[r].append(v)
        partners[r].append(units[c])
        coefs[c].append(v)
        partners[c].append(units[r])
    du = {
        k: [mp.fdot(coefs[k], [p[d] for p in partners[k]]) for d in range(len(u))]
        for k, u in units.items()
    }
    scales: dict[str, list[mpf]] = {n: [mpf(0)] * len(rows) for n, rows in inputs.items()}
    for (name, i), u in units.items():
        norm = norms[(name, i)]
        if norm < DELTA:
            continue  # zero row: zero gradient by definition
        proj = mp.fdot(u, du[(name, i)])
        grads[name][i] = [(d - x * proj) / norm for x, d in zip(u, du[(name, i)], strict=True)]
        scales[name][i] = mass.get((name, i), mpf(0)) / norm
    return Result(loss, objective, grads, scales, *_stats(s, lmap))


@precise
def objective(
    problem: Problem,
    inputs: Rows,
    lmap: LogitMap,
    reduction: str,
    cotangent: Sequence[mpf] | None = None,
) -> mpf:
    """The scalar whose gradient ``solve`` returns (reduced loss, or Σ cotangent·loss)."""
    s, _, _ = _similarities(problem, inputs)
    return _forward(problem, s, lmap, reduction, cotangent, with_grad=False)[1]


# --------------------------------------------------------------------------- finite differences


def _perturbed(inputs: Rows, name: str, r: int, d: int, delta: mpf) -> Rows:
    rows = [list(row) for row in inputs[name]]
    rows[r][d] += delta
    return {**inputs, name: rows}


def _elements(inputs: Rows) -> Iterator[tuple[str, int, int]]:
    for name, rows in inputs.items():
        for r, row in enumerate(rows):
            for d in range(len(row)):
                yield name, r, d


@precise
def fd_check(
    problem: Problem,
    inputs: Rows,
    lmap: LogitMap,
    reduction: str,
    cotangent: Sequence[mpf] | None,
    result: Result,
    *,
    directions: int = 0,
    seed: int = 0,
) -> list[str]:
    """Compare ``result.grads`` with finite differences of ``objective``; return mismatches.

    ``directions == 0``: every element, central differences with step h = 1e-20·‖z_r‖
    (embeddings; zero rows are skipped, their gradient is 0 by definition) or 1e-20
    (similarities; one-sided into [−b, b] with step 1e-30 for an entry exactly on ±b).
    ``directions > 0``: that many random directions v (rows scaled by ‖z_r‖), comparing
    (F(x + hv) − F(x − hv))/2h with ⟨∇F, v⟩. Agreement: |fd − analytic| ≤ 1e-20·scale, where
    scale is the row's ``result.scales`` entry (times Σ|v| for directions) plus 1e-40.
    The caller must ensure no used similarity lies within ~1e-15 of ±b except exact ties at
    the similarity level (a clip kink breaks differences).
    """

    def f(x: Rows) -> mpf:
        return objective(problem, x, lmap, reduction, cotangent)

    def row_norm(name: str, r: int) -> mpf:
        if problem.similarity_level:
            return mpf(1)
        return mp.sqrt(mp.fsum(x * x for x in inputs[name][r]))

    errors: list[str] = []
    floor = mpf("1e-40")
    if directions == 0:
        for name, r, d in _elements(inputs):
            norm = row_norm(name, r)
            if norm < DELTA:
                continue
            value = inputs[name][r][d]
            bound = lmap.bound if lmap.kind == "arctanh" else None
            if problem.similarity_level and bound is not None and abs(value) == bound:
                h = FD_ONE_SIDED_STEP * (-1 if value > 0 else 1)
                fd = (f(_perturbed(inputs, name, r, d, h)) - f(inputs)) / h
            else:
                h = FD_STEP * norm
                fd = f(_perturbed(inputs, name, r, d, h)) - f(_perturbed(inputs, name, r, d, -h))
                fd /= 2 * h
            analytic = result.grads[name][r][d]
            tol = FD_RTOL * result.scales[name][r] + floor
            if abs(fd - analytic) > tol:
                errors.append(f"{name}[{r}][{d}]: fd {mp.nstr(fd, 15)} vs {mp.nstr(analytic, 15)}")
        return errors

    rng = np.random.default_rng(seed)
    for k in range(directions):
        v: Rows = {}
        for name, rows in inputs.items():
            v[name] = []
            for r, row in enumerate(rows):
                norm = row_norm(name, r)
                scale = mpf(0) if norm < DELTA else norm
                v[name].append([scale * mpf(float(x)) for x in rng.standard_normal(len(row))])
        plus = {
            n: [
                [x + FD_STEP * y for x, y in zip(a, b, strict=True)]
                for a, b in zip(rows, v[n], strict=True)
            ]
            for n, rows in inputs.items()
        }
        minus = {
            n: [
                [x - FD_STEP * y for x, y in zip(a, b, strict=True)]
                for a, b in zip(rows, v[n], strict=True)
            ]
            for n, rows in inputs.items()
        }
        fd = (f(plus) - f(minus)) / (2 * FD_STEP)
        analytic = mp.fsum(
            g * y
            for n in inputs
            for ga, va in zip(result.grads[n], v[n], strict=True)
            for g, y in zip(ga, va, strict=True)
        )
        size = mp.fsum(
            result.scales[n][r] * abs(y) for n in inputs for r, va in enumerate(v[n]) for y in va
        )
        if abs(fd - analytic) > FD_RTOL * size + floor:
            errors.append(f"direction {k}: fd {mp.nstr(fd, 15)} vs {mp.nstr(analytic, 15)}")
    return errors
