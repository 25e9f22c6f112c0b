"""Test problems covering every layout of SPEC §3: ``(name, core function, reference,
differentiable inputs, other keywords)``, built from one seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import reference as ref

import tfree_core as core


@dataclass
class Case:
    name: str
    loss: Callable  # the core loss
    value_and_grad: Callable
    reference: Callable
    inputs: dict[str, np.ndarray]  # differentiable, positional order
    extra: dict[str, np.ndarray | bool | None] = field(default_factory=dict)

    def __repr__(self) -> str:
        return self.name


def make_cases(rng: np.random.Generator, n: int = 5, d: int = 4) -> list[Case]:
    q, k = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    labels = rng.integers(0, 3, size=n)
    labels[-1] = 7  # an anchor without a positive among the other rows (sup_con)
    where = np.ones(n, dtype=bool)
    where[1] = False
    neg_shared, neg_rows = rng.normal(size=(6, d)), rng.normal(size=(n, 3, d))
    hard = rng.normal(size=(n, 2, d))
    hard_mask = rng.random((n, 2)) < 0.7
    key_ids = np.arange(n)
    key_ids[-1] = key_ids[0]  # a duplicate document in the batch
    hard_ids = rng.integers(n, n + 4, size=(n, 2))
    hard_ids[2, 1] = key_ids[2]  # a mined "negative" that is the positive itself
    hard_ids[0, 0] = key_ids[3]  # and one that is another row's positive
    features3 = rng.normal(size=(n, 2, d))
    s = np.tanh(rng.normal(size=(n, 7)))
    valid = rng.random((n, 7)) < 0.8
    positive = valid & (rng.random((n, 7)) < 0.35)
    positive[0] = False  # an anchor without positives
    info, info_vg = core.info_nce, core.info_nce_value_and_grad
    sup, sup_vg = core.sup_con, core.sup_con_value_and_grad
    nt, nt_vg = core.nt_xent, core.nt_xent_value_and_grad
    sim, sim_vg = core.loss_from_similarity, core.loss_from_similarity_value_and_grad
    return [
        Case("pairs", info, info_vg, ref.pairs, {"query": q, "key": k}),
        Case("pairs-where", info, info_vg, ref.pairs, {"query": q, "key": k}, {"where": where}),
        Case("pairs-symmetric", info, info_vg, ref.pairs, {"query": q, "key": k},
             {"symmetric": True}),
        Case("pairs-symmetric-where", info, info_vg, ref.pairs, {"query": q, "key": k},
             {"symmetric": True, "where": where}),
        Case("pairs-labels", info, info_vg, ref.pairs, {"query": q, "key": k},
             {"labels": labels}),
        Case("pairs-labels-symmetric-where", info, info_vg, ref.pairs, {"query": q, "key": k},
             {"labels": labels, "symmetric": True, "where": where}),
        Case("negatives-shared", info, info_vg, ref.negatives,
             {"query": q, "key": k, "negatives": neg_shared}),
        Case("negatives-per-row-where", info, info_vg, ref.negatives,
             {"query": q, "key": k, "negatives": neg_rows}, {"where": where}),
        Case("nt_xent", nt, nt_vg, ref.nt_xent, {"z1": q, "z2": k}),
        Case("nt_xent-where", nt, nt_vg, ref.nt_xent, {"z1": q, "z2": k}, {"where": where}),
        Case("sup_con-2d", sup, sup_vg, ref.sup_con, {"features": q}, {"labels": labels}),
        Case("sup_con-3d-where", sup, sup_vg, ref.sup_con, {"features": features3},
             {"labels": labels, "where": where}),
        Case("retrieval", info, info_vg, ref.retrieval,
             {"query": q, "key": k, "hard_negatives": hard}),
        Case("retrieval-symmetric-where-mask", info, info_vg, ref.retrieval,
             {"query": q, "key": k, "hard_negatives": hard},
             {"hard_negative_mask": hard_mask, "symmetric": True, "where": where}),
        Case("retrieval-ids-symmetric", info, info_vg, ref.retrieval,
             {"query": q, "key": k, "hard_negatives": hard},
             {"key_ids": key_ids, "hard_negative_ids": hard_ids, "symmetric": True}),
        Case("pairs-ids-where", info, info_vg, ref.retrieval, {"query": q, "key": k},
             {"key_ids": key_ids, "where": where}),
        Case("similarity", sim, sim_vg, ref.similarity, {"similarity": s},
             {"positive_mask": positive, "valid_mask": valid}),
        Case("similarity-all-valid", sim, sim_vg, ref.similarity, {"similarity": s},
             {"positive_mask": positive}),
    ]


def call_reference(case: Case, **options):
    """Run the reference transcription on a case (keyword names differ slightly)."""
    args = list(case.inputs.values())
    extra = dict(case.extra)
    if case.reference is ref.similarity:
        args.append(extra.pop("positive_mask"))
        extra["valid"] = extra.pop("valid_mask", None)
    if case.reference is ref.sup_con:
        args.append(extra.pop("labels"))
    return case.reference(*args, **extra, **options)
