"""A direct float64 transcription of SPEC §2-§3, for tests: loops and ``logsumexp``, no
tricks. It shares no code with ``tfree_core``."""

from __future__ import annotations

import numpy as np

DELTA = 1e-12


def clip_bound64(eps: float) -> float:
    from fractions import Fraction

    b = 1.0 - eps
    while Fraction(b) > 1 - Fraction(eps):
        b = np.nextafter(b, 0.0)
    return float(b)


def normalize(z: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.sum(z * z, axis=-1, keepdims=True))
    return z / np.maximum(norm, DELTA)


def logit(s: np.ndarray, logit_map: str, eps: float, temperature: float | None) -> np.ndarray:
    if logit_map == "temperature":
        return s / temperature
    b = clip_bound64(eps)
    return 2 * np.arctanh(np.clip(s, -b, b))


def anchor_losses(s, candidates, positives, *, logit_map="arctanh", eps=1e-6, temperature=None):
    """``L_i = -(1/|P|) Σ_p [ℓ_ip - logsumexp_{C(i)} ℓ_ij]``; 0 without positives."""
    ell = logit(s, logit_map, eps, temperature)
    out = np.zeros(s.shape[0])
    for i in range(s.shape[0]):
        if not positives[i].any():
            continue
        row = ell[i][candidates[i]]
        top = row.max()
        lse = top + np.log(np.sum(np.exp(row - top)))
        out[i] = -np.mean(ell[i][positives[i]] - lse)
    return out


def reduce(losses, positives, reduction):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    n = int(positives.any(axis=1).sum())
    return losses.sum() / max(n, 1)


def pairs(q, k, *, labels=None, symmetric=False, where=None, reduction="mean", **kw):
    s = normalize(q) @ normalize(k).T
    n = s.shape[0]
    cand = np.ones_like(s, dtype=bool)
    pos = np.eye(n, dtype=bool) if labels is None else labels[:, None] == labels[None, :]
    if where is not None:
        cand &= where[:, None] & where[None, :]
    pos &= cand
    forward = reduce(anchor_losses(s, cand, pos, **kw), pos, reduction)
    if not symmetric:
        return forward
    backward = reduce(anchor_losses(s.T, cand.T, pos.T, **kw), pos.T, reduction)
    return (forward + backward) / 2


def negatives(q, k, neg, *, where=None, reduction="mean", **kw):
    uq, uk, un = normalize(q), normalize(k), normalize(neg)
    s_pos = np.sum(uq * uk, axis=1, keepdims=True)
    s_neg = uq @ un.T if neg.ndim == 2 else np.einsum("nd,nmd->nm", uq, un)
    s = np.concatenate([s_pos, s_neg], axis=1)
    cand = np.ones_like(s, dtype=bool)
    if where is not None:
        cand &= where[:, None]
    pos = np.zeros_like(cand)
    pos[:, 0] = True
    pos &= cand
    return reduce(anchor_losses(s, cand, pos, **kw), pos, reduction)


def nt_xent(z1, z2, *, where=None, reduction="mean", **kw):
    u = normalize(np.concatenate([z1, z2]))
    s = u @ u.T
    n2 = s.shape[0]
    idx = np.arange(n2)
    cand = ~np.eye(n2, dtype=bool)
    pos = np.zeros_like(cand)
    pos[idx, (idx + n2 // 2) % n2] = True
    if where is not None:
        w = np.concatenate([where, where])
        cand &= w[:, None] & w[None, :]
    pos &= cand
    return reduce(anchor_losses(s, cand, pos, **kw), pos, reduction)


def sup_con(features, labels, *, where=None, reduction="mean", **kw):
    if features.ndim == 3:
        n, v, d = features.shape
        flat = features.transpose(1, 0, 2).reshape(v * n, d)
        labels = np.tile(labels, v)
        where = None if where is None else np.tile(where, v)
    else:
        flat = features
    u = normalize(flat)
    s = u @ u.T
    cand = ~np.eye(s.shape[0], dtype=bool)
    if where is not None:
        cand &= where[:, None] & where[None, :]
    pos = (labels[:, None] == labels[None, :]) & cand
    out = reduce(anchor_losses(s, cand, pos, **kw), pos, reduction)
    if reduction == "none" and features.ndim == 3:
        out = out.reshape(features.shape[1], features.shape[0]).T
    return out


def similarity(s, positive, *, valid=None, where=None, reduction="mean", **kw):
    cand = np.ones_like(s, dtype=bool) if valid is None else valid.copy()
    if where is not None:
        cand &= where[:, None]
    pos = positive & cand
    return reduce(anchor_losses(s, cand, pos, **kw), pos, reduction)


def retrieval(q, k, hard=None, *, hard_negative_mask=None, key_ids=None,
              hard_negative_ids=None, symmetric=False, where=None, reduction="mean", **kw):
    """In-batch plus hard negatives (sentence-transformers' MultipleNegativesRankingLoss):
    query ``i`` against every key and every hard negative; duplicates of the positive (by
    id) dropped; masked slots and rows no candidates."""
    n = q.shape[0]
    where = np.ones(n, bool) if where is None else where
    uq, uk = normalize(q), normalize(k)
    cols = [uk]
    owner = list(range(n))  # the row each candidate belongs to
    slot_ok = list(where)
    ids = None if key_ids is None else list(key_ids)
    if hard is not None:
        hn = hard.shape[1]
        mask = np.ones((n, hn), bool) if hard_negative_mask is None else hard_negative_mask
        for i in range(n):
            for h in range(hn):
                cols.append(normalize(hard[i, h])[None, :])
                owner.append(i)
                slot_ok.append(where[i] and mask[i, h])
                if ids is not None:
                    ids.append(hard_negative_ids[i, h])
    c = np.concatenate(cols)
    s = uq @ c.T
    m = s.shape[1]
    cand = np.zeros((n, m), bool)
    for i in range(n):
        for j in range(m):
            duplicate = ids is not None and j != i and ids[j] == key_ids[i]
            cand[i, j] = where[i] and slot_ok[j] and not duplicate
    pos = np.zeros((n, m), bool)
    pos[np.arange(n), np.arange(n)] = True
    pos &= cand
    forward = reduce(anchor_losses(s, cand, pos, **kw), pos, reduction)
    if not symmetric:
        return forward
    s2 = uk @ uq.T  # each key against every query
    cand2 = np.zeros((n, n), bool)
    for j in range(n):
        for i in range(n):
            duplicate = ids is not None and i != j and key_ids[i] == key_ids[j]
            cand2[j, i] = where[i] and where[j] and not duplicate
    pos2 = np.eye(n, dtype=bool) & cand2
    backward = reduce(anchor_losses(s2, cand2, pos2, **kw), pos2, reduction)
    return (forward + backward) / 2
