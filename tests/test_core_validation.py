"""Every validation error: the right type, raised before any work, with a message that
names the argument, what it got and what it needs."""

from __future__ import annotations

import numpy as np
import pytest

import tfree_core as core

Q = np.ones((4, 3))
K = np.ones((4, 3)) * 2
LAB = np.array([0, 1, 0, 1])
S = np.zeros((4, 5))
POS = np.zeros((4, 5), dtype=bool)

CASES = [
    # (call, exception, words the message must contain)
    (lambda: core.info_nce(Q[0], K), ValueError, ["query", "(N, D)", "(3,)"]),
    (lambda: core.info_nce(Q, K[:3]), ValueError, ["key", "N", "3"]),
    (lambda: core.info_nce(Q, K[:, :2]), ValueError, ["key", "D", "2"]),
    (lambda: core.info_nce(Q[:0], K[:0]), ValueError, ["query", "at least one row"]),
    (lambda: core.info_nce(Q[:, :0], K[:, :0]), ValueError, ["query", "feature"]),
    (lambda: core.info_nce(Q.astype(int), K), TypeError, ["query", "floating", "int64"]),
    (lambda: core.info_nce(Q.astype(complex), K), TypeError, ["query", "complex"]),
    (lambda: core.info_nce(Q, K.astype(np.float32)), TypeError, ["key", "float64", "float32"]),
    (lambda: core.info_nce(Q, K, labels=LAB.astype(float)), TypeError, ["labels", "integer"]),
    (lambda: core.info_nce(Q, K, labels=LAB[:3]), ValueError, ["labels", "(3,)"]),
    (lambda: core.info_nce(Q, K, labels=LAB[:, None]), ValueError, ["labels", "(N,)"]),
    (lambda: core.info_nce(Q, K, negatives=np.ones((5, 2))), ValueError, ["negatives", "D"]),
    (lambda: core.info_nce(Q, K, negatives=np.ones((3, 5, 3))), ValueError, ["negatives", "N"]),
    (lambda: core.info_nce(Q, K, negatives=np.ones(3)), ValueError, ["negatives", "(M, D)"]),
    (lambda: core.info_nce(Q, K, negatives=np.ones((0, 3))), ValueError, ["negatives"]),
    (lambda: core.info_nce(Q, K, negatives=Q, labels=LAB), ValueError, ["negatives", "labels"]),
    (lambda: core.info_nce(Q, K, negatives=Q, symmetric=True), ValueError, ["symmetric"]),
    (lambda: core.info_nce(Q, K, where=np.ones(4)), TypeError, ["where", "bool"]),
    (lambda: core.info_nce(Q, K, where=np.ones(3, bool)), ValueError, ["where", "(4,)"]),
    (lambda: core.info_nce(Q, K, eps=0.0), ValueError, ["eps", "(0, 0.5)"]),
    (lambda: core.info_nce(Q, K, eps=0.5), ValueError, ["eps", "0.5"]),
    (lambda: core.info_nce(Q, K, eps="1e-6"), TypeError, ["eps", "str"]),
    (lambda: core.info_nce(Q.astype(np.float32), K.astype(np.float32), eps=1e-9), ValueError,
     ["eps", "float32", "rounds"]),
    (lambda: core.info_nce(Q, K, reduction="avg"), ValueError, ["reduction", "avg"]),
    (lambda: core.info_nce(Q, K, logit_map="tanh"), ValueError, ["logit_map", "tanh"]),
    (lambda: core.info_nce(Q, K, temperature=0.1), ValueError, ["temperature", "arctanh"]),
    (lambda: core.info_nce(Q, K, logit_map="temperature"), ValueError, ["temperature", "None"]),
    (lambda: core.info_nce(Q, K, logit_map="temperature", temperature=0.0), ValueError,
     ["temperature", "> 0"]),
    (lambda: core.info_nce(Q, K, logit_map="temperature", temperature=float("inf")),
     ValueError, ["temperature"]),
    (lambda: core.nt_xent(Q, K[:2]), ValueError, ["z2", "N"]),
    (lambda: core.nt_xent(Q.astype(np.float32), K), TypeError, ["z2", "float32"]),
    (lambda: core.sup_con(Q[0], LAB), ValueError, ["features", "(N, V, D)"]),
    (lambda: core.sup_con(Q, LAB[:2]), ValueError, ["labels"]),
    (lambda: core.sup_con(Q, LAB.astype(bool)), TypeError, ["labels", "bool"]),
    (lambda: core.loss_from_similarity(S, POS[:, :4]), ValueError, ["positive_mask", "(4, 5)"]),
    (lambda: core.loss_from_similarity(S, POS.astype(int)), TypeError, ["positive_mask", "bool"]),
    (lambda: core.loss_from_similarity(S, POS, valid_mask=POS[:3]), ValueError, ["valid_mask"]),
    (lambda: core.loss_from_similarity(S, ~POS, valid_mask=POS), ValueError,
     ["positive_mask", "inside valid_mask"]),
    (lambda: core.loss_from_similarity(S[0], POS[0]), ValueError, ["similarity", "(N, M)"]),
    (lambda: core.info_nce_value_and_grad(Q, K, reduction="none", cotangent=np.ones(3)),
     ValueError, ["cotangent", "(4,)"]),
    (lambda: core.info_nce_value_and_grad(Q, K, reduction="none", cotangent=1.0), TypeError,
     ["cotangent", "scalar"]),
    (lambda: core.logits(np.array([1, 2])), TypeError, ["similarity", "floating"]),
]


@pytest.mark.parametrize(("call", "error", "words"), CASES)
def test_error_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_mixed_libraries_are_a_type_error():
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="one array library"):
        core.info_nce(Q, strict.asarray(K))


def test_mixed_devices_are_an_error():
    strict = pytest.importorskip("array_api_strict")
    q = strict.asarray(Q, device=strict.Device("device1"))
    k = strict.asarray(K, device=strict.Device("device2"))
    with pytest.raises(ValueError, match=r"key is on device .*device2.* query is on device"):
        core.info_nce(q, k)
