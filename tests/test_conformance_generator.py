"""Tests of the golden-vector generator (conformance/reference.py, cases.py, generate.py)."""

from __future__ import annotations

import ast
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from mpmath import mp, mpf

from conformance import generate
from conformance.cases import LAYOUTS, REDUCTIONS, all_cases, build_problem, make
from conformance.reference import clip_bound, fd_check, phi, solve
from conformance.tolerances import TOLERANCES, as_float64, compare

GOLDEN = generate.GOLDEN_DIR
CLOSE = mpf("1e-45")


def _solve(case, dtype="float64"):
    rows = {k: generate._rows(v) for k, v in case.inputs.items()}
    lmap = generate._logit_maps(case.kwargs)[dtype]
    cot = None if case.cotangent is None else [mpf(float(v)) for v in case.cotangent.ravel()]
    problem = build_problem(case)
    return problem, rows, lmap, cot, solve(problem, rows, lmap, case.kwargs["reduction"], cot)


def test_phi_sanity_values():
    with mp.workdps(60):
        assert abs(phi(mpf("0.5")) - mp.log(3)) < CLOSE
        assert abs(phi(mpf("0.9")) - mp.log(19)) < CLOSE
        assert float(phi(mpf("0.5"))) == 1.0986122886681098
        assert float(phi(mpf("0.9"))) == 2.9444389791664403


def test_caps_at_default_eps():
    assert round(float(phi(clip_bound(1e-6, "float64"))), 6) == 14.508657
    assert round(float(phi(clip_bound(1e-6, "float32"))), 6) == 14.495466


@pytest.mark.parametrize("eps", [1e-6, 1e-3, 1e-4, 0.25, 1e-8])
@pytest.mark.parametrize(("dtype", "ftype"), [("float32", np.float32), ("float64", np.float64)])
def test_clip_bound_is_largest_value_below_one_minus_eps(eps, dtype, ftype):
    b = clip_bound(eps, dtype)
    with mp.workdps(60):
        target = 1 - mpf(eps)
        assert float(ftype(float(b))) == float(b)  # representable in the dtype
        assert b <= target < mpf(float(np.nextafter(ftype(float(b)), ftype(2))))


def test_clip_bound_rejects_bad_eps():
    for eps in (0.5, 0.7, 0.0, -1e-6):
        with pytest.raises(ValueError, match="eps"):
            clip_bound(eps, "float32")
    assert clip_bound(0.25, "float32") == clip_bound(0.25, "float64") == mpf(0.75)


def test_orthogonal_pairs_give_log_n():
    for n in (1, 3, 5):
        eye = np.eye(2 * n)
        case = make("t", "pairs", {"query": eye[:n] * 3.0, "key": eye[n:]}, "orthogonal")
        *_, res = _solve(case)
        with mp.workdps(60):
            assert abs(res.loss - mp.log(n)) < CLOSE


def test_nt_xent_orthogonal_gives_log_2n_minus_1():
    eye = np.eye(8)
    case = make("t", "nt_xent", {"z1": eye[:4], "z2": eye[4:]}, "orthogonal")
    *_, res = _solve(case)
    with mp.workdps(60):
        assert abs(res.loss - mp.log(7)) < CLOSE


def test_identical_orthonormal_views():
    case = make("t", "pairs", {"query": np.eye(4), "key": np.eye(4)}, "identical")
    *_, res = _solve(case)
    b = clip_bound(1e-6, "float64")
    with mp.workdps(60):
        assert abs(res.loss - mp.log1p(3 * (1 - b) / (1 + b))) < CLOSE  # e^(−φ(b)) = (1−b)/(1+b)
    assert float(res.loss) == pytest.approx(1.49999962e-6, rel=1e-8)  # SPEC §4
    # positives are clamped; negatives still push with a gradient of order 2·e^(−14.5)/N
    grads = np.array([[float(x) for x in row] for row in res.grads["query"]])
    assert np.all(np.diag(grads) == 0)
    assert 0 < np.max(np.abs(grads)) < 1e-6


def test_forward_matches_the_plain_definition():
    """The rational form exp(φ(c)) = (1 + c)/(1 − c) used inside agrees with log-sum-exp of φ."""
    case = next(c for c in all_cases() if c.id == "sup_con-no-positive-anchors")
    problem, rows, lmap, _, res = _solve(case)
    with mp.workdps(60):
        units = {}
        for name, rs in rows.items():
            for i, z in enumerate(rs):
                norm = mp.sqrt(mp.fsum(x * x for x in z))
                units[(name, i)] = [x / norm for x in z]
        expected = [mpf(0)] * problem.n_out
        for a in problem.anchors:
            if not a.pos:
                continue
            logits = {
                c: phi(min(max(mp.fdot(units[a.row], units[c]), -lmap.bound), lmap.bound))
                for c in a.cands
            }
            lse = mp.log(mp.fsum(mp.exp(v) for v in logits.values()))
            expected[a.out] = -mp.fsum(logits[p] - lse for p in a.pos) / len(a.pos)
        assert all(abs(x - y) < CLOSE for x, y in zip(res.loss, expected, strict=True))


def test_fd_self_check_passes_and_catches_a_wrong_gradient():
    case = make(
        "t",
        "pairs_symmetric",
        {
            "query": [[1.0, 0.5, -0.25], [0.125, -1.0, 2.0]],
            "key": [[0.75, 0.5, 0.0], [-0.5, -1.5, 1.0]],
        },
        "tiny",
        reduction="none",
    )
    problem, rows, lmap, cot, res = _solve(case)
    assert fd_check(problem, rows, lmap, "none", cot, res) == []
    assert fd_check(problem, rows, lmap, "none", cot, res, directions=2) == []
    res.grads["key"][1][2] *= 1 + mpf("1e-12")
    errors = fd_check(problem, rows, lmap, "none", cot, res)
    assert len(errors) == 1
    assert errors[0].startswith("key[1][2]")


def test_fd_one_sided_at_exact_clip_tie():
    b = float(clip_bound(1e-6, "float64"))
    case = make(
        "t",
        "similarity",
        {"similarity": [[b, -b, 0.5], [0.25, b, 1.0]]},
        "tie",
        positive_mask=[[1, 0, 0], [0, 1, 0]],
    )
    problem, rows, lmap, cot, res = _solve(case)
    assert fd_check(problem, rows, lmap, "mean", cot, res) == []
    with mp.workdps(60):  # bounds included: φ'(b) = 2/(1 − b²), not 0
        assert res.grads["similarity"][0][0] != 0
        assert res.grads["similarity"][1][2] == 0  # beyond the bound


def test_layout_candidates_and_positives():
    z = np.ones((2, 3))
    nt = build_problem(make("t", "nt_xent", {"z1": z, "z2": z}, "x", where=[True, False]))
    assert [(a.row, a.cands, set(a.pos), a.out) for a in nt.anchors] == [
        (("z1", 0), (("z2", 0),), {("z2", 0)}, 0),
        (("z2", 0), (("z1", 0),), {("z1", 0)}, 2),
    ]
    feats = np.ones((2, 2, 3))  # (N, V, D): rows view-major, row key = flat (n, v) index
    sc = build_problem(make("t", "sup_con", {"features": feats}, "x", labels=[5, 6]))
    assert [a.row for a in sc.anchors] == [("features", k) for k in (0, 2, 1, 3)]
    assert [a.out for a in sc.anchors] == [0, 2, 1, 3]
    assert sc.anchors[0].pos == {("features", 1)}  # the other view of sample 0
    assert len(sc.anchors[0].cands) == 3
    inputs = {"query": z, "key": z, "negatives": np.ones((2, 4, 3))}
    neg = build_problem(make("t", "negatives_per_row", inputs, "x"))
    assert neg.anchors[1].cands == (("key", 1), *(("negatives", 4 + j) for j in range(4)))
    sym = build_problem(make("t", "pairs_labels_symmetric", {"query": np.ones((3, 2)),
                             "key": np.ones((3, 2))}, "x", labels=[0, 1, 0],
                             where=[True, True, False]))  # fmt: skip
    assert sym.n_dirs == 2
    assert [(a.row, set(a.pos)) for a in sym.anchors] == [
        (("query", 0), {("key", 0)}),
        (("query", 1), {("key", 1)}),
        (("key", 0), {("query", 0)}),
        (("key", 1), {("query", 1)}),
    ]
    with pytest.raises(ValueError, match="not a candidate"):
        build_problem(make("t", "similarity", {"similarity": [[0.5, 0.25]]}, "x",
                           positive_mask=[[1, 0]], valid_mask=[[0, 1]]))  # fmt: skip


def test_zero_rows_have_zero_gradient():
    case = next(c for c in all_cases() if c.id == "pairs_symmetric-zero-rows")
    *_, res = _solve(case)
    assert all(x == 0 for x in res.grads["query"][1])
    assert all(x == 0 for x in res.grads["key"][3])


def test_generator_imports_no_framework_nor_core():
    banned = {
        "tfree_core",
        "torch",
        "jax",
        "tensorflow",
        "keras",
        "tfree_torch",
        "tfree_jax",
        "tfree_tf",
    }
    for name in ("reference.py", "cases.py", "generate.py", "tolerances.py"):
        tree = ast.parse((GOLDEN.parent / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not {m.split(".")[0] for m in mods} & banned, (name, mods)


def _golden_cases():
    for layout in LAYOUTS:
        doc = json.loads((GOLDEN / f"{layout}.json").read_text())
        assert doc["schema_version"] == generate.SCHEMA_VERSION
        assert doc["layout"] == layout
        yield from doc["cases"]


def test_golden_files_cover_every_layout_map_and_reduction():
    seen = {
        (c["layout"], c["kwargs"]["logit_map"], c["kwargs"]["reduction"]) for c in _golden_cases()
    }
    for layout in LAYOUTS:
        for lm in ("arctanh", "temperature"):
            for red in REDUCTIONS:
                assert (layout, lm, red) in seen
    total = sum(p.stat().st_size for p in GOLDEN.glob("*.json"))
    assert total < 5_000_000


def test_golden_inputs_are_exact_in_their_dtypes():
    for case in _golden_cases():
        arrays = [as_float64(v) for v in case["inputs"].values()]
        if case["cotangent"] is not None:
            arrays.append(as_float64(case["cotangent"]))
        assert "float64" in case["dtypes"]
        for dt in case["dtypes"]:
            assert all(generate.exactly_representable(a, dt) for a in arrays), (case["id"], dt)
        for dt in ("float64", "float32"):
            exp = case["expected"][dt]
            assert set(exp["grads"]) == set(case["inputs"])
            for name, g in exp["grads"].items():
                assert as_float64(g).shape == as_float64(case["inputs"][name]).shape


def test_sanity_values_in_golden_files():
    cases = {c["id"]: c for c in _golden_cases()}
    loss = {
        k: float(cases[k]["expected"]["float64"]["loss"])
        for k in (
            "sanity-pairs-orthogonal-n4",
            "sanity-nt_xent-orthogonal-n3",
            "sanity-pairs-identical-orthonormal-n4",
        )
    }
    assert loss["sanity-pairs-orthogonal-n4"] == pytest.approx(math.log(4), rel=1e-15)
    assert loss["sanity-nt_xent-orthogonal-n3"] == pytest.approx(math.log(5), rel=1e-15)
    assert loss["sanity-pairs-identical-orthonormal-n4"] == pytest.approx(1.49999962e-6, rel=1e-8)


def test_check_passes_on_committed_files(capsys):
    assert generate.main(["--check", "--only", "sanity", "--jobs", "1"]) == 0
    assert generate.main(["--check", "--only", "similarity-tie", "--jobs", "1"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.slow
def test_full_check_passes_on_committed_files():
    assert generate.main(["--check"]) == 0


def test_perturbed_golden_value_is_drift(tmp_path: Path, capsys):
    golden = tmp_path / "golden"
    shutil.copytree(GOLDEN, golden)
    path = golden / "pairs.json"
    doc = json.loads(path.read_text())
    case = next(c for c in doc["cases"] if c["id"] == "sanity-pairs-orthogonal-n4")
    case["expected"]["float32"]["grads"]["key"][2][5] = "1.0000000000000000001e-30"
    path.write_text(generate.dumps(doc) + "\n")
    rc = generate.main(
        ["--check", "--only", "sanity-pairs-orth", "--jobs", "1", "--golden-dir", str(golden)]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "sanity-pairs-orthogonal-n4.expected.float32.grads.key[2][5]" in out


def test_compare():
    assert compare(1.0, "1.0", "float64", "loss") == 0
    assert compare(2.0 + 1e-12, "2", "float64", "loss") == pytest.approx(0.5, rel=1e-3)
    assert compare([1.0, np.nan], ["1", "1"], "float32", "loss") == float("inf")
    assert compare([1.0], ["1", "1"], "float32", "loss") == float("inf")
    # normwise: small entries are judged against the largest one
    assert compare([[1.0, 1e-6]], [["1", "0"]], "float32", "grad") < 0.1
    # per-row scale: a tiny row is judged at its own size
    tol = TOLERANCES["float32"]["grad"]
    err = compare([[1.0], [2e-30]], [["1"], ["1e-30"]], "float32", "grad", scale=["1", "1e-30"])
    assert err == pytest.approx(1e-30 / (tol.atol + tol.rtol * 1e-30))
    assert compare([[0.0], [0.0]], [["0"], ["0"]], "float16", "grad", scale=["0", "0"]) == 0
