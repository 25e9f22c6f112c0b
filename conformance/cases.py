"""The conformance cases: inputs (fixed seeds) and the Problem each layout reduces to.

Random inputs are drawn from ``numpy.random.default_rng(crc32(case id))`` and rounded to 8
significant bits (:func:`grid`), so that most cases are exactly representable in float64,
float32, float16 and bfloat16 alike and one expected value serves every input dtype.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformance.reference import Anchor, Problem, clip_bound

LAYOUTS = (
    "pairs",
    "pairs_symmetric",
    "pairs_labels",
    "pairs_labels_symmetric",
    "negatives_shared",
    "negatives_per_row",
    "nt_xent",
    "sup_con",
    "similarity",
    "retrieval",
    "retrieval_symmetric",
)
FUNCTION = {
    "pairs": "info_nce",
    "pairs_symmetric": "info_nce",
    "pairs_labels": "info_nce",
    "pairs_labels_symmetric": "info_nce",
    "negatives_shared": "info_nce",
    "negatives_per_row": "info_nce",
    "nt_xent": "nt_xent",
    "sup_con": "sup_con",
    "similarity": "loss_from_similarity",
    "retrieval": "info_nce",
    "retrieval_symmetric": "info_nce",
}
REDUCTIONS = ("mean", "sum", "none")


@dataclass
class Case:
    """One golden case: keyword arguments of the public call, float64 inputs, cotangent."""

    id: str
    layout: str
    description: str
    inputs: dict[str, np.ndarray]
    kwargs: dict[str, Any]
    cotangent: np.ndarray | None = None
    tags: list[str] = field(default_factory=list)

    @property
    def function(self) -> str:
        return FUNCTION[self.layout]


def rng_for(case_id: str) -> np.random.Generator:
    """The fixed random generator of a case."""
    return np.random.default_rng(zlib.crc32(case_id.encode()))


def grid(x: np.ndarray) -> np.ndarray:
    """Round to 8 significant bits; |x| < 2^-14 becomes 0 (exact in float16 and bfloat16)."""
    mant, exp = np.frexp(np.asarray(x, dtype=np.float64))
    y = np.ldexp(np.round(mant * 256) / 256, exp)
    return np.where(np.abs(y) < 2.0**-14, 0.0, y)


def output_shape(layout: str, inputs: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Shape of the "none" loss: (N,) for pairs and negatives and S, (2N,) nt_xent, sup_con
    ``features.shape[:-1]``."""
    if layout == "nt_xent":
        return (2 * inputs["z1"].shape[0],)
    if layout == "sup_con":
        return inputs["features"].shape[:-1]
    first = inputs["similarity"] if layout == "similarity" else inputs["query"]
    return (first.shape[0],)


def build_problem(case: Case) -> Problem:
    """Anchors, candidates and positives of SPEC §3 for the case's layout."""
    kw, x = case.kwargs, case.inputs
    if case.layout == "similarity":
        n, m = x["similarity"].shape
        pos = np.array(kw["positive_mask"], dtype=bool)
        valid = np.ones((n, m), bool) if kw["valid_mask"] is None else np.array(kw["valid_mask"])
        anchors = tuple(
            Anchor(
                ("row", i),
                tuple(("col", j) for j in range(m) if valid[i, j]),
                frozenset(("col", j) for j in range(m) if pos[i, j]),
                i,
                0,
            )
            for i in range(n)
        )
        return Problem(anchors, n, 1, similarity_level=True)

    where = kw["where"]
    if case.layout == "nt_xent":
        n = x["z1"].shape[0]
        keep = [True] * n if where is None else list(where)
        rows = [("z1", i) if i < n else ("z2", i - n) for i in range(2 * n)]
        live = [k for k in range(2 * n) if keep[k % n]]
        anchors = tuple(
            Anchor(
                rows[k],
                tuple(rows[j] for j in live if j != k),
                frozenset([rows[(k + n) % (2 * n)]]),
                k,
                0,
            )
            for k in live
        )
        return Problem(anchors, 2 * n)

    if case.layout == "sup_con":
        feats = x["features"]
        n = feats.shape[0]
        v = feats.shape[1] if feats.ndim == 3 else 1
        keep = [True] * n if where is None else list(where)
        labels = kw["labels"]
        # view-major order: all view-0 rows, then view-1 rows, ...; row key = flat (n, v) index
        order = [(s, view) for view in range(v) for s in range(n) if keep[s]]
        anchors = tuple(
            Anchor(
                ("features", s * v + view),
                tuple(("features", t * v + w) for t, w in order if (t, w) != (s, view)),
                frozenset(
                    ("features", t * v + w)
                    for t, w in order
                    if (t, w) != (s, view) and labels[t] == labels[s]
                ),
                s * v + view,
                0,
            )
            for s, view in order
        )
        return Problem(anchors, n * v)

    n = x["query"].shape[0]
    keep = [True] * n if where is None else list(where)
    live = [i for i in range(n) if keep[i]]
    if case.layout.startswith("retrieval"):
        return _retrieval_problem(case, n, live)
    if case.layout.startswith("negatives"):
        negs = x["negatives"]
        shared = negs.ndim == 2
        m = negs.shape[0] if shared else negs.shape[1]
        anchors = tuple(
            Anchor(
                ("query", i),
                (("key", i), *(("negatives", j if shared else i * m + j) for j in range(m))),
                frozenset([("key", i)]),
                i,
                0,
            )
            for i in live
        )
        return Problem(anchors, n)

    labels = kw["labels"]

    def positives(i: int, other: str) -> frozenset:
        if labels is None:
            return frozenset([(other, i)])
        return frozenset((other, j) for j in live if labels[j] == labels[i])

    anchors_list = [
        Anchor(("query", i), tuple(("key", j) for j in live), positives(i, "key"), i, 0)
        for i in live
    ]
    if kw["symmetric"]:
        anchors_list += [
            Anchor(("key", i), tuple(("query", j) for j in live), positives(i, "query"), i, 1)
            for i in live
        ]
    return Problem(tuple(anchors_list), n, 2 if kw["symmetric"] else 1)


def _retrieval_problem(case: Case, n: int, live: list[int]) -> Problem:
    """In-batch plus hard negatives: query ``i`` against every live key and every live,
    unmasked hard-negative slot, minus the duplicates of its positive (the candidates whose
    id is ``key_ids[i]``); symmetric: key ``i`` against the live queries, minus the queries
    whose positive is such a duplicate."""
    kw = case.kwargs
    hard = case.inputs.get("hard_negatives")
    hn = 0 if hard is None else hard.shape[1]
    mask = kw.get("hard_negative_mask") or [[True] * hn for _ in range(n)]
    key_ids, hard_ids = kw.get("key_ids"), kw.get("hard_negative_ids")

    def duplicate(i: int, identity: int | None, own: bool) -> bool:
        return key_ids is not None and not own and identity == key_ids[i]

    anchors = []
    for i in live:
        cands = [("key", j) for j in live if not duplicate(i, _id(key_ids, j), j == i)]
        cands += [("hard_negatives", j * hn + h) for j in live for h in range(hn)
                  if mask[j][h] and not duplicate(i, None if hard_ids is None
                                                   else hard_ids[j][h], False)]
        anchors.append(Anchor(("query", i), tuple(cands), frozenset([("key", i)]), i, 0))
    symmetric = kw["symmetric"]
    if symmetric:
        anchors += [
            Anchor(("key", i),
                   tuple(("query", j) for j in live if not duplicate(i, _id(key_ids, j), j == i)),
                   frozenset([("query", i)]), i, 1)
            for i in live
        ]
    return Problem(tuple(anchors), n, 2 if symmetric else 1)


def _id(ids: list[int] | None, j: int) -> int | None:
    return None if ids is None else ids[j]


# --------------------------------------------------------------------------- case list


def make(
    case_id: str,
    layout: str,
    inputs: dict[str, np.ndarray],
    description: str,
    *,
    logit_map: str = "arctanh",
    temperature: float | None = None,
    eps: float = 1e-6,
    reduction: str = "mean",
    where: list[bool] | None = None,
    labels: list[int] | None = None,
    positive_mask: np.ndarray | None = None,
    valid_mask: np.ndarray | None = None,
    hard_negative_mask: np.ndarray | None = None,
    key_ids: list[int] | None = None,
    hard_negative_ids: np.ndarray | None = None,
    tags: tuple[str, ...] = (),
) -> Case:
    """A case with the public call's keyword arguments (all of them, defaults spelt out)."""
    kwargs: dict[str, Any] = {
        "logit_map": logit_map,
        "temperature": temperature,
        "eps": eps,
        "reduction": reduction,
    }
    fn = FUNCTION[layout]
    if fn != "loss_from_similarity":
        kwargs["where"] = where
    if fn == "info_nce":
        kwargs["symmetric"] = layout.endswith("symmetric")
        kwargs["labels"] = labels
    if layout.startswith("retrieval"):
        kwargs["hard_negative_mask"] = (None if hard_negative_mask is None
                                        else np.asarray(hard_negative_mask, bool).tolist())
        kwargs["key_ids"] = key_ids
        kwargs["hard_negative_ids"] = (None if hard_negative_ids is None
                                       else np.asarray(hard_negative_ids).tolist())
    if fn == "sup_con":
        kwargs["labels"] = labels
    if fn == "loss_from_similarity":
        kwargs["positive_mask"] = np.asarray(positive_mask, bool).tolist()
        kwargs["valid_mask"] = None if valid_mask is None else np.asarray(valid_mask, bool).tolist()
    inputs = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()}
    cot = None
    if reduction == "none":
        cot = grid(rng_for(case_id + "/cotangent").standard_normal(output_shape(layout, inputs)))
    return Case(case_id, layout, description, inputs, kwargs, cot, list(tags))


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return grid(rng.standard_normal(shape))


def _one_false(rng: np.random.Generator, n: int) -> list[bool]:
    where = [True] * n
    where[int(rng.integers(n))] = False
    return where


def max_cosine(inputs: dict[str, np.ndarray]) -> float:
    """Largest |cos| between two distinct non-zero rows of all the inputs together."""
    rows = np.concatenate([a.reshape(-1, a.shape[-1]) for a in inputs.values()])
    rows = rows[np.any(rows != 0, axis=1)]
    units = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = np.abs(units @ units.T)
    np.fill_diagonal(cos, 0.0)
    return float(cos.max(initial=0.0))


MAX_COSINE = 0.995
"""Random embeddings are redrawn until every |S| ≤ this: φ'(S) ≤ 200 keeps the loss
well-conditioned (an error δS in a float S moves φ by 2δS/(1 − S²)). Near-bound behaviour
is the business of the dedicated cases."""


def _bulk_inputs(
    layout: str, rng: np.random.Generator, n: int, d: int, reduction: str
) -> dict[str, np.ndarray]:
    if layout == "sup_con":
        return {"features": _normal(rng, *((n, d) if reduction == "sum" else (n, 2, d)))}
    first = _normal(rng, n, d)
    second = grid(first + 0.7 * rng.standard_normal((n, d)))
    if layout == "nt_xent":
        return {"z1": first, "z2": second}
    inputs = {"query": first, "key": second}
    if layout == "negatives_shared":
        inputs["negatives"] = _normal(rng, int(rng.integers(2, 5)), d)
    if layout == "negatives_per_row":
        inputs["negatives"] = _normal(rng, n, int(rng.integers(2, 4)), d)
    if layout.startswith("retrieval"):
        inputs["hard_negatives"] = _normal(rng, n, int(rng.integers(2, 4)), d)
    return inputs


def bulk_case(layout: str, logit_map: str, reduction: str) -> Case:
    """Small random case (N 3..5, D 2..5, retrieval D 6..9); "sum" cases carry a row mask
    with one False.

    Embeddings are redrawn (same generator) until ``max_cosine ≤ MAX_COSINE``.
    """
    cid = f"{layout}-{logit_map}-{reduction}"
    rng = rng_for(cid)
    n, d = int(rng.integers(3, 6)), int(rng.integers(2, 6))
    if layout.startswith("retrieval"):
        d += 4  # up to 25 rows: in 2 to 5 dimensions some pair of them is almost surely
        #         closer than MAX_COSINE, and the redraw loop below would not end
    tau = {"mean": 0.5, "sum": 0.1, "none": 0.07}[reduction] if logit_map == "temperature" else None
    opts: dict[str, Any] = {"logit_map": logit_map, "temperature": tau, "reduction": reduction}
    where = _one_false(rng, n) if reduction == "sum" and layout != "similarity" else None
    text = f"random {layout}, {logit_map} map, reduction {reduction!r}"
    if where is not None:
        text += ", one row masked"
    if layout == "similarity":
        m = int(rng.integers(3, 7))
        sim = grid(rng.uniform(-1, 1, (n, m)))
        pos = rng.random((n, m)) < 0.3
        pos[0, int(rng.integers(m))] = True
        valid = None if reduction == "mean" else (rng.random((n, m)) < 0.8) | pos
        return make(cid, layout, {"similarity": sim}, text, positive_mask=pos, valid_mask=valid,
                    **opts)  # fmt: skip
    inputs = _bulk_inputs(layout, rng, n, d, reduction)
    while max_cosine(inputs) > MAX_COSINE:
        inputs = _bulk_inputs(layout, rng, n, d, reduction)
    labels = rng.integers(0, 2, n).tolist() if "labels" in layout or layout == "sup_con" else None
    if layout.startswith("retrieval"):
        opts.update(_retrieval_extras(rng, inputs, reduction))
        text += {"sum": ", ragged hard negatives", "none": ", duplicate ids"}.get(reduction, "")
    return make(cid, layout, inputs, text, where=where, labels=labels, **opts)


def _retrieval_extras(rng: np.random.Generator, inputs: dict[str, np.ndarray],
                      reduction: str) -> dict[str, Any]:
    """"sum": ragged mining (a mask over the hard-negative slots); "none": identities with
    a duplicate key and hard negatives that share a positive's id."""
    n, hn = inputs["hard_negatives"].shape[:2]
    if reduction == "sum":
        mask = rng.random((n, hn)) < 0.6
        mask[0, 0] = False
        return {"hard_negative_mask": mask}
    if reduction == "none":
        key_ids = list(range(n))
        key_ids[-1] = key_ids[0]  # two rows share a document
        hard_ids = rng.integers(n, n + 6, (n, hn))
        hard_ids[1, 0] = key_ids[1]  # a mined negative that is the positive's document
        hard_ids[0, hn - 1] = key_ids[2]  # and one that is another row's
        return {"key_ids": key_ids, "hard_negative_ids": hard_ids}
    return {}


def _nextafter(x: float, toward: float, dtype: type = np.float64) -> float:
    return float(np.nextafter(dtype(x), dtype(toward)))


def similarity_cases() -> list[Case]:
    """Exact clip-bound ties (S on ±b exactly), beyond the bound, rows without positives."""
    b32, b64 = float(clip_bound(1e-6, "float32")), float(clip_bound(1e-6, "float64"))
    up32 = _nextafter(b32, 2, np.float32)
    out = []
    sim = [
        [b32, -b32, 0.25, up32, -1.0],
        [0.5, 1.0, -b32, 0.125, b32],
        [1.25, -1.5, b32, -0.75, 0.0],
    ]
    pos = [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    for red in ("mean", "none"):
        out.append(
            make(
                f"similarity-tie-b32-{red}",
                "similarity",
                {"similarity": sim},
                "S on ±b32 exactly (inside in both dtypes), just above b32, ±1, beyond 1",
                positive_mask=pos,
                reduction=red,
                tags=("clip_tie", "beyond_bound"),
            )
        )
    sim = [
        [b64, -b64, _nextafter(b64, 2), _nextafter(b64, 0), b32, 0.0],
        [-b64, 0.5, b64, 1.0, -_nextafter(b64, 0), -0.25],
    ]
    pos = [[1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1]]
    out.append(
        make(
            "similarity-tie-b64",
            "similarity",
            {"similarity": sim},
            "S on ±b64 exactly, one float64 ulp either side, b32",
            positive_mask=pos,
            reduction="sum",
            tags=("clip_tie", "beyond_bound"),
        )
    )
    sim = [[0.75, -0.75, 0.8125, 1.0, -0.9375], [0.5, 0.75, -1.0, -0.75, 0.0]]
    pos = [[1, 0, 0, 0, 0], [0, 1, 0, 0, 1]]
    valid = [[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]]
    out.append(
        make(
            "similarity-tie-eps-quarter",
            "similarity",
            {"similarity": sim},
            "eps = 0.25: b = 0.75 exactly in every dtype; S on ±0.75 and beyond",
            positive_mask=pos,
            valid_mask=valid,
            eps=0.25,
            reduction="none",
            tags=("clip_tie", "beyond_bound", "eps"),
        )
    )
    rng = rng_for("similarity-no-positive")
    sim = grid(rng.uniform(-1, 1, (4, 5)))
    pos = np.zeros((4, 5), bool)
    pos[0, 1] = pos[2, 3] = pos[2, 4] = True
    valid = np.ones((4, 5), bool)
    valid[3] = False
    valid[0, 4] = False
    for red in ("mean", "none"):
        out.append(
            make(
                f"similarity-no-positive-rows-{red}",
                "similarity",
                {"similarity": sim},
                "rows 1 and 3 have no positive; row 3 has no candidate at all",
                positive_mask=pos,
                valid_mask=valid,
                reduction=red,
                tags=("no_positive",),
            )
        )
    out.append(
        make(
            "similarity-all-no-positive",
            "similarity",
            {"similarity": sim},
            "no row has a positive: mean is 0 with zero gradients",
            positive_mask=np.zeros((4, 5), bool),
            tags=("no_positive",),
        )
    )
    rng = rng_for("similarity-many-positives")
    sim = grid(rng.uniform(-1, 1, (3, 8)))
    pos = np.zeros((3, 8), bool)
    pos[:, :5] = True
    out.append(
        make(
            "similarity-many-positives",
            "similarity",
            {"similarity": sim},
            "5 positives out of 8 candidates per row",
            positive_mask=pos,
            logit_map="temperature",
            temperature=0.2,
            reduction="sum",
            tags=("many_positives",),
        )
    )
    rng = rng_for("similarity-single-anchor")
    out.append(
        make(
            "similarity-single-anchor",
            "similarity",
            {"similarity": grid(rng.uniform(-1, 1, (1, 6)))},
            "one anchor row",
            positive_mask=[[0, 0, 1, 0, 0, 0]],
            tags=("single_anchor",),
        )
    )
    sim = [[1.0, 0.96875, -1.0, 0.5], [0.9375, 1.0, 0.984375, -0.5]]
    out.append(
        make(
            "similarity-temperature-small-tau",
            "similarity",
            {"similarity": sim},
            "tau = 0.01: logits up to 100 (exp overflows float32 without a max shift)",
            positive_mask=[[0, 1, 0, 0], [1, 0, 0, 0]],
            logit_map="temperature",
            temperature=0.01,
            reduction="none",
            tags=("large_logits",),
        )
    )
    return out


def embedding_cases() -> list[Case]:
    """SPEC §4 sanity values and the hard embedding-level cases of issue 3."""
    out: list[Case] = []
    add = out.append
    rng = rng_for("sanity")
    eye8 = np.eye(8)
    add(
        make(
            "sanity-pairs-orthogonal-n4",
            "pairs",
            {
                "query": eye8[:4] * grid(rng.uniform(0.5, 4, (4, 1))),
                "key": eye8[4:] * grid(rng.uniform(0.5, 4, (4, 1))),
            },
            "SPEC §4: all S = 0, L = log 4",
            tags=("sanity",),
        )
    )
    add(
        make(
            "sanity-nt_xent-orthogonal-n3",
            "nt_xent",
            {"z1": np.eye(6)[:3], "z2": np.eye(6)[3:] * 3.0},
            "SPEC §4: all S = 0, L = log(2N - 1) = log 5",
            tags=("sanity",),
        )
    )
    add(
        make(
            "sanity-pairs-identical-orthonormal-n4",
            "pairs",
            {"query": np.eye(4), "key": np.eye(4)},
            "SPEC §4: key = query orthonormal, L = log(1 + 3 exp(-phi(b)))",
            tags=("sanity", "identical_rows"),
        )
    )

    rng = rng_for("identical")
    q = _normal(rng, 5, 3)
    add(
        make(
            "pairs_symmetric-identical-rows",
            "pairs_symmetric",
            {"query": q, "key": q.copy()},
            "key = query (random): every positive at S = 1, past the cap",
            reduction="none",
            tags=("identical_rows",),
        )
    )
    add(
        make(
            "pairs-antipodal-rows",
            "pairs",
            {"query": q, "key": -q},
            "key = -query: every positive at S = -1, clamped at -b",
            tags=("antipodal_rows",),
        )
    )
    add(
        make(
            "pairs-antipodal-rows-temperature",
            "pairs",
            {"query": q, "key": -q},
            "key = -query, temperature map",
            logit_map="temperature",
            temperature=0.2,
            reduction="sum",
            tags=("antipodal_rows",),
        )
    )
    z = _normal(rng, 4, 3)
    add(
        make(
            "nt_xent-identical-views",
            "nt_xent",
            {"z1": z, "z2": z.copy()},
            "z2 = z1: positives at S = 1",
            tags=("identical_rows",),
        )
    )
    f = _normal(rng, 4, 3)
    add(
        make(
            "sup_con-duplicate-views",
            "sup_con",
            {"features": np.stack([f, f], axis=1)},
            "view 1 = view 0: same-sample positives at S = 1",
            labels=[0, 1, 0, 2],
            tags=("identical_rows",),
        )
    )
    add(
        make(
            "negatives_per_row-identical-key",
            "negatives_per_row",
            {"query": q[:3], "key": q[:3].copy(), "negatives": _normal(rng, 3, 2, 3)},
            "key = query with per-row negatives: positive past the cap",
            reduction="sum",
            tags=("identical_rows",),
        )
    )

    rng = rng_for("zero")
    q, k = _normal(rng, 5, 4), _normal(rng, 5, 4)
    q[1] = 0.0
    k[3] = 0.0
    add(
        make(
            "pairs_symmetric-zero-rows",
            "pairs_symmetric",
            {"query": q, "key": k},
            "query row 1 and key row 3 are zero: S = 0 with them, zero gradient",
            tags=("zero_rows",),
        )
    )
    z1, z2 = _normal(rng, 4, 3), _normal(rng, 4, 3)
    z1[0] = 0.0
    z2[2] = 0.0
    add(
        make(
            "nt_xent-zero-rows",
            "nt_xent",
            {"z1": z1, "z2": z2},
            "z1[0] and z2[2] are zero",
            reduction="none",
            tags=("zero_rows",),
        )
    )
    feats = _normal(rng, 4, 2, 3)
    feats[2, 1] = 0.0
    add(
        make(
            "sup_con-zero-row",
            "sup_con",
            {"features": feats},
            "features[2, 1] is zero",
            labels=[0, 0, 1, 1],
            logit_map="temperature",
            temperature=0.5,
            reduction="sum",
            tags=("zero_rows",),
        )
    )
    neg = _normal(rng, 3, 3)
    neg[1] = 0.0
    q3 = _normal(rng, 2, 3)
    add(
        make(
            "negatives_shared-zero-negative",
            "negatives_shared",
            {"query": q3, "key": -q3, "negatives": neg},
            "a zero negative row, antipodal keys",
            reduction="none",
            tags=("zero_rows", "antipodal_rows"),
        )
    )

    rng = rng_for("norms")
    q, k = _normal(rng, 5, 3), _normal(rng, 5, 3)
    q[0] *= 2.0**-100  # ~1e-30: a zero row (‖z‖ < 1e-12)
    q[2] *= 2.0**-34  # ~6e-11: tiny but normalised
    k[1] *= 2.0**100  # ~1e30: squares overflow float32
    k[4] *= 2.0**60
    for lm, tau, red in (("arctanh", None, "sum"), ("temperature", 0.5, "none")):
        add(
            make(
                f"pairs_symmetric-tiny-huge-norms-{lm}",
                "pairs_symmetric",
                {"query": q, "key": k},
                "row norms ~1e-30 (zero row), 6e-11, 1e30, 1e18",
                logit_map=lm,
                temperature=tau,
                reduction=red,
                tags=("tiny_norms", "huge_norms"),
            )
        )

    rng = rng_for("single")
    add(
        make(
            "pairs-single-anchor",
            "pairs",
            {"query": _normal(rng, 1, 3), "key": _normal(rng, 1, 3)},
            "N = 1: the only candidate is the positive, L = 0",
            tags=("single_anchor",),
        )
    )
    add(
        make(
            "pairs_symmetric-single-anchor",
            "pairs_symmetric",
            {"query": _normal(rng, 1, 3), "key": _normal(rng, 1, 3)},
            "N = 1, symmetric",
            reduction="none",
            logit_map="temperature",
            temperature=0.1,
            tags=("single_anchor",),
        )
    )
    add(
        make(
            "negatives_shared-single-anchor",
            "negatives_shared",
            {
                "query": _normal(rng, 1, 4),
                "key": _normal(rng, 1, 4),
                "negatives": _normal(rng, 4, 4),
            },
            "N = 1 with 4 shared negatives",
            tags=("single_anchor",),
        )
    )
    add(
        make(
            "negatives_per_row-single-anchor",
            "negatives_per_row",
            {
                "query": _normal(rng, 1, 3),
                "key": _normal(rng, 1, 3),
                "negatives": _normal(rng, 1, 3, 3),
            },
            "N = 1 with 3 negatives",
            reduction="none",
            tags=("single_anchor",),
        )
    )
    add(
        make(
            "nt_xent-single-anchor",
            "nt_xent",
            {"z1": _normal(rng, 1, 3), "z2": _normal(rng, 1, 3)},
            "N = 1: each view's only candidate is the other view, L = 0",
            tags=("single_anchor",),
        )
    )
    add(
        make(
            "sup_con-single-sample",
            "sup_con",
            {"features": _normal(rng, 1, 3, 4)},
            "N = 1, V = 3: the views are each other's positives",
            reduction="none",
            labels=[7],
            tags=("single_anchor",),
        )
    )

    rng = rng_for("labels")
    add(
        make(
            "sup_con-no-positive-anchors",
            "sup_con",
            {"features": _normal(rng, 6, 3)},
            "samples 1 and 4 have unique labels: no positive, 0 in 'none'",
            labels=[0, 1, 0, 2, 3, 2],
            reduction="none",
            tags=("no_positive",),
        )
    )
    add(
        make(
            "sup_con-no-positive-anchors-mean",
            "sup_con",
            {"features": _normal(rng, 6, 3)},
            "samples 1 and 4 have unique labels; mean over the 4 others",
            labels=[0, 1, 0, 2, 3, 2],
            logit_map="temperature",
            temperature=0.1,
            tags=("no_positive",),
        )
    )
    add(
        make(
            "sup_con-all-distinct-labels",
            "sup_con",
            {"features": _normal(rng, 4, 3)},
            "no anchor has a positive: mean 0, zero gradients",
            labels=[0, 1, 2, 3],
            tags=("no_positive",),
        )
    )
    add(
        make(
            "sup_con-many-positives",
            "sup_con",
            {"features": _normal(rng, 8, 2, 6)},
            "one label for all: 15 positives per anchor",
            labels=[4] * 8,
            tags=("many_positives",),
        )
    )
    add(
        make(
            "pairs_labels-all-same",
            "pairs_labels",
            {"query": _normal(rng, 6, 4), "key": _normal(rng, 6, 4)},
            "one label for all: every key is a positive",
            labels=[1] * 6,
            reduction="sum",
            tags=("many_positives",),
        )
    )
    add(
        make(
            "pairs_labels_symmetric-where",
            "pairs_labels_symmetric",
            {"query": _normal(rng, 8, 3), "key": _normal(rng, 8, 3)},
            "two classes, rows 2 and 5 masked",
            labels=[0, 1] * 4,
            where=[True, True, False, True, True, False, True, True],
            reduction="none",
            tags=("where", "many_positives"),
        )
    )

    rng = rng_for("negatives")
    q = _normal(rng, 3, 6)
    add(
        make(
            "negatives_shared-m20",
            "negatives_shared",
            {
                "query": q,
                "key": grid(q + 0.3 * rng.standard_normal((3, 6))),
                "negatives": _normal(rng, 20, 6),
            },
            "20 shared negatives",
            reduction="none",
            tags=("negatives",),
        )
    )
    q = _normal(rng, 4, 3)
    add(
        make(
            "negatives_per_row-where",
            "negatives_per_row",
            {
                "query": q,
                "key": grid(q + 0.3 * rng.standard_normal((4, 3))),
                "negatives": _normal(rng, 4, 3, 3),
            },
            "per-row negatives, row 1 masked",
            where=[True, False, True, True],
            logit_map="temperature",
            temperature=0.25,
            tags=("negatives", "where"),
        )
    )

    rng = rng_for("where")
    add(
        make(
            "pairs-where-all-masked",
            "pairs",
            {"query": _normal(rng, 3, 2), "key": _normal(rng, 3, 2)},
            "every row masked: mean 0, zero gradients",
            where=[False] * 3,
            tags=("where",),
        )
    )
    add(
        make(
            "nt_xent-where",
            "nt_xent",
            {"z1": _normal(rng, 5, 3), "z2": _normal(rng, 5, 3)},
            "samples 1 and 4 masked (both views)",
            where=[True, False, True, True, False],
            logit_map="temperature",
            temperature=0.5,
            reduction="sum",
            tags=("where",),
        )
    )
    add(
        make(
            "sup_con-where",
            "sup_con",
            {"features": _normal(rng, 5, 2, 3)},
            "sample 0 masked (all views)",
            where=[False, True, True, True, True],
            labels=[0, 0, 1, 1, 0],
            reduction="none",
            tags=("where",),
        )
    )

    rng = rng_for("dims")
    add(
        make(
            "pairs-d1",
            "pairs",
            {"query": _normal(rng, 4, 1), "key": _normal(rng, 4, 1)},
            "D = 1: every S is ±1",
            reduction="sum",
            tags=("d1",),
        )
    )
    add(
        make(
            "sup_con-d1-temperature",
            "sup_con",
            {"features": _normal(rng, 5, 1)},
            "D = 1, temperature map",
            labels=[0, 1, 0, 1, 1],
            logit_map="temperature",
            temperature=0.5,
            tags=("d1",),
        )
    )
    add(
        make(
            "pairs-d300",
            "pairs",
            {"query": _normal(rng, 3, 300), "key": _normal(rng, 3, 300)},
            "D = 300",
            reduction="none",
            tags=("large_d",),
        )
    )
    z1 = _normal(rng, 3, 128)
    add(
        make(
            "nt_xent-d128",
            "nt_xent",
            {"z1": z1, "z2": grid(z1 + 0.5 * rng.standard_normal((3, 128)))},
            "D = 128",
            logit_map="temperature",
            temperature=0.07,
            tags=("large_d",),
        )
    )

    rng = rng_for("near-aligned")
    q = _normal(rng, 5, 4)
    add(
        make(
            "pairs-eps-1e-3-near-aligned",
            "pairs",
            {"query": q, "key": grid(q + 0.04 * rng.standard_normal((5, 4)))},
            "eps = 1e-3 (b ~ 0.999) with keys close to the queries: some positives clamped",
            eps=1e-3,
            reduction="none",
            tags=("eps", "near_bound"),
        )
    )
    add(
        make(
            "pairs_symmetric-small-tau",
            "pairs_symmetric",
            {"query": q, "key": grid(q + 0.04 * rng.standard_normal((5, 4)))},
            "tau = 0.01 with near-aligned pairs: logits ~100",
            logit_map="temperature",
            temperature=0.01,
            tags=("large_logits",),
        )
    )

    rng = rng_for("large")
    q = _normal(rng, 256, 8)
    add(
        make(
            "pairs_symmetric-n256",
            "pairs_symmetric",
            {"query": q, "key": grid(q + 0.5 * rng.standard_normal((256, 8)))},
            "N = 256, D = 8",
            tags=("large_n",),
        )
    )
    z1 = _normal(rng, 128, 4)
    add(
        make(
            "nt_xent-n128",
            "nt_xent",
            {"z1": z1, "z2": grid(z1 + 0.5 * rng.standard_normal((128, 4)))},
            "N = 128 (256 anchors), D = 4",
            logit_map="temperature",
            temperature=0.1,
            reduction="none",
            tags=("large_n",),
        )
    )
    add(
        make(
            "sup_con-n64-v2",
            "sup_con",
            {"features": _normal(rng, 64, 2, 16)},
            "N = 64, V = 2, D = 16, 8 classes",
            labels=(np.arange(64) % 8).tolist(),
            reduction="sum",
            tags=("large_n", "many_positives"),
        )
    )
    rng = rng_for("retrieval-duplicate")
    q, k = _normal(rng, 4, 3), _normal(rng, 4, 3)
    hard = _normal(rng, 4, 2, 3)
    hard[2, 0] = k[2] * 2.0  # a mined "negative" that is row 2's positive document
    add(
        make(
            "retrieval-mined-positive-dropped",
            "retrieval",
            {"query": q, "key": k, "hard_negatives": hard},
            "a hard negative equal to its row's positive, with the positive's id: dropped "
            "as a duplicate (as a negative it would sit at S = s_pos)",
            key_ids=[0, 1, 2, 3],
            hard_negative_ids=np.array([[10, 11], [12, 13], [2, 14], [15, 16]]),
            tags=("duplicate_ids",),
        )
    )
    return out


def all_cases() -> list[Case]:
    """Every case: layouts × logit maps × reductions, then the hard ones."""
    cases = [
        bulk_case(layout, lm, red)
        for layout in LAYOUTS
        for lm in ("arctanh", "temperature")
        for red in REDUCTIONS
    ]
    cases += similarity_cases() + embedding_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases
