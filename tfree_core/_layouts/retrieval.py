"""Retrieval: in-batch plus hard negatives, duplicates of the positive removed (SPEC §3).

Query ``i`` is scored against every key of the batch and every hard negative of every row
(sentence-transformers' ``MultipleNegativesRankingLoss``, DPR, GradCache's
``SimpleContrastiveLoss``); its positive is key ``i``. With identities (``key_ids``, the
hard negatives' ``hard_negative_ids``), a candidate whose id is that of query ``i``'s
positive is a duplicate of it and is dropped: not a negative (keras-rs'
``RemoveAccidentalHits``). Ragged mining pads with ``hard_negative_mask``: a masked slot
is no candidate and its row gets a zero gradient whatever it holds.
"""

from __future__ import annotations

from typing import Any

from .. import _validation as check
from .._blocks import Tiling
from .._namespace import Array, Namespace, device_of
from . import _base as base
from ._base import Checked, Layout, Saved


def _flat(x: Array | None, xp: Namespace) -> Array | None:
    """``(N, H, ...)`` → ``(N·H, ...)``, row-major: row ``i``'s hard negatives together."""
    if x is None:
        return None
    return xp.reshape(x, (x.shape[0] * x.shape[1], *x.shape[2:]))


class Retrieval(Layout):
    """``info_nce(query, key, hard_negatives=H[, hard_negative_mask, key_ids,
    hard_negative_ids])``: the single-positive kernel on the candidates
    ``[keys (N); hard negatives (N·Hn)]`` (a device's block, in rank order when sharded),
    the positive ``(q_i, k_i)`` outside the matrix, dropped from the columns as the
    self-pair. ``key_ids`` alone (no hard negatives) deduplicates the in-batch keys.
    Symmetric: the keys are also anchors, against the queries (``doc_to_query``); the hard
    negatives are no anchors."""

    name = "retrieval"
    function = "info_nce with hard_negatives= or key_ids="
    arrays = ("query", "key", "hard_negatives", "hard_negative_mask", "key_ids",
              "hard_negative_ids", "where")
    differentiable = ("query", "key", "hard_negatives")
    saved = ("uq", "rq", "uk", "rk", "uh", "rh", "candidates", "where", "col_where",
             "key_ids", "col_ids")

    def check(self, arrays, xp) -> Checked:
        query, key, hard, mask, key_ids, hard_ids, _ = arrays
        base.check_rows(("query", "key"), query, key, xp)
        named = [("query", query), ("key", key)]
        n, d = query.shape
        extra = 0
        if hard is not None:
            check.check_floating("hard_negatives", hard, xp)
            check.check_rank("hard_negatives", hard, (3,), "(N, Hn, D)")
            check.check_nonempty("hard_negatives", hard, (1,), ("hard negative",))
            check.check_dim("hard_negatives", hard, 0, n, "query's N")
            check.check_dim("hard_negatives", hard, 2, d, "query's D")
            named.append(("hard_negatives", hard))
            extra = base.static(hard.shape[1])
        check.check_same_dtype(named)
        slots = None if hard is None else tuple(hard.shape[:2])
        for name, value, kind in (("hard_negative_mask", mask, "mask"),
                                  ("hard_negative_ids", hard_ids, "ids")):
            if value is None:
                continue
            if slots is None:
                raise ValueError(f"{name} needs hard_negatives (the slots it describes); "
                                 "got hard_negatives=None")
            if kind == "mask":
                check.check_mask(name, value, slots, xp)
            else:
                check.check_ids(name, value, slots, xp)
        if key_ids is not None:
            check.check_ids("key_ids", key_ids, (n,), xp)
        if (key_ids is None) != (hard_ids is None) and hard is not None:
            given, missing = (("key_ids", "hard_negative_ids") if hard_ids is None
                              else ("hard_negative_ids", "key_ids"))
            raise ValueError(f"{given} needs {missing} too: a hard negative's identity is "
                             f"compared with the positive's; got {missing}=None")
        rows = base.static(n)
        m = None if rows is None or extra is None else rows * (1 + extra)
        # one dtype per differentiable input, None for absent hard negatives
        dtypes = (query.dtype, key.dtype, None if hard is None else hard.dtype)
        return Checked(dtypes, masked=False, n=rows, m=m)

    def _sizes_agree(self, arrays) -> bool:
        query, key, hard, mask, key_ids, hard_ids, _ = arrays
        n = query.shape[0]
        ok = base.same_shape(query, key) and (key_ids is None or key_ids.shape[0] == n)
        if hard is not None:
            ok = (ok and hard.shape[0] == n and hard.shape[2] == query.shape[1]
                  and hard.shape[1] != 0)
            for slots in (mask, hard_ids):
                ok = ok and (slots is None or (slots.shape[0] == n
                                               and slots.shape[1] == hard.shape[1]))
        return ok

    def fused_unsupported(self, problem, arrays) -> str | None:
        if arrays[4] is not None:
            return "key_ids (the fused kernels drop no candidates by identity)"
        return None

    def setup(self, problem, arrays, xp, comm) -> Saved:
        query, key, hard, mask, key_ids, hard_ids, where = arrays
        uq, rq = base.normalized(query, xp, where)
        uk, rk = base.normalized(key, xp, where)
        uh = rh = None
        candidates, col_where, col_ids = uk, where, key_ids
        if hard is not None:
            slots = self._slots(hard, mask, where, xp)
            uh, rh = base.normalized(_flat(hard, xp), xp, slots)
            candidates = xp.concat([uk, uh], axis=0)
            if slots is not None:
                keys = where if where is not None else base.everyone(uk.shape[0], uk, xp)
                col_where = xp.concat([keys, slots])
            if key_ids is not None:
                col_ids = xp.concat([key_ids, _flat(hard_ids, xp)])
        return {"uq": uq, "rq": rq, "uk": uk, "rk": rk, "uh": uh, "rh": rh,
                "candidates": base.gather(candidates, comm), "where": where,
                "col_where": base.gather_mask(col_where, comm, xp), "key_ids": key_ids,
                "col_ids": base.gather(col_ids, comm)}

    @staticmethod
    def _slots(hard: Array, mask: Array | None, where: Array | None,
               xp: Namespace) -> Array | None:
        """Which hard-negative slots are candidates: unmasked, of an unmasked row."""
        slots = mask
        if where is not None:
            rows = xp.broadcast_to(where[:, None], tuple(hard.shape[:2]))
            slots = rows if slots is None else xp.logical_and(slots, rows)
        return _flat(slots, xp)

    def blocks(self, problem, saved, xp, comm) -> Tiling:
        uq = saved["uq"]
        local = saved["candidates"].shape[0] // comm.world_size
        return Tiling(uq, saved["candidates"], where_rows=saved["where"],
                      where_cols=saved["col_where"], diagonal=True,
                      row_ids=saved["key_ids"], col_ids=saved["col_ids"],
                      row_offset=base.row_offset(comm, local))

    def positives(self, problem, saved, xp) -> tuple[Any, Any]:
        uq, uk, where = saved["uq"], saved["uk"], saved["where"]
        has = base.everyone(uq.shape[0], uq, xp) if where is None else where
        return xp.sum(uq * uk, axis=1), has

    def column_positives(self, problem, saved, single, xp, comm) -> tuple[Any, Any]:
        s_positive, has = single
        return (self._columns(s_positive, saved, comm, xp),
                self._columns(has, saved, comm, xp))

    def to_columns(self, local: Array, t: Tiling, comm, xp: Namespace) -> Array:
        return base.gather(self._pad(local, t.m // comm.world_size - t.n, xp), comm)

    def _columns(self, local: Array, saved: Saved, comm, xp: Namespace) -> Array:
        block = saved["candidates"].shape[0] // comm.world_size
        return base.gather(self._pad(local, block - local.shape[0], xp), comm)

    @staticmethod
    def _pad(local: Array, count: int, xp: Namespace) -> Array:
        """A vector over a device's keys extended to its hard negatives, which are no
        column anchors (zeros, or False)."""
        if not count:
            return local
        return xp.concat([local, xp.zeros((count,), dtype=local.dtype,
                                          device=device_of(local))])

    def gradients(self, problem, saved, du_a, du_c, g_positive, xp) -> tuple[Any, ...]:
        uq, uk, uh = saved["uq"], saved["uk"], saved["uh"]
        n = uq.shape[0]
        duq = du_a + g_positive[:, None] * uk
        duk = du_c[:n, :] + g_positive[:, None] * uq
        grads = [base.vjp(saved, "uq", "rq", duq, xp), base.vjp(saved, "uk", "rk", duk, xp)]
        if uh is None:
            return (*grads, None)
        dh = base.vjp(saved, "uh", "rh", du_c[n:, :], xp)
        return (*grads, xp.reshape(dh, (n, uh.shape[0] // n, uh.shape[1])))
