"""``tfree_torch.TemperatureFreeLoss``: construction, repr, dispatch, a training loop."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import tfree_torch  # noqa: E402
from tfree_torch import TemperatureFreeLoss  # noqa: E402


def test_repr():
    assert repr(TemperatureFreeLoss()) == (
        "TemperatureFreeLoss(layout='info_nce', logit_map='arctanh', eps=1e-06, "
        "reduction='mean')"
    )
    module = TemperatureFreeLoss("info_nce", symmetric=True, reduction="sum", eps=1e-4)
    assert repr(module) == (
        "TemperatureFreeLoss(layout='info_nce', symmetric=True, logit_map='arctanh', "
        "eps=0.0001, reduction='sum')"
    )
    baseline = TemperatureFreeLoss("nt_xent", logit_map="temperature", temperature=0.1)
    assert "temperature=0.1" in repr(baseline)
    assert list(baseline.parameters()) == []
    assert repr(TemperatureFreeLoss("sup_con", chunk_size=256)).endswith(
        "reduction='mean', chunk_size=256)")
    assert baseline.state_dict() == {}


def test_invalid_construction():
    with pytest.raises(ValueError, match="layout"):
        TemperatureFreeLoss("simclr")
    with pytest.raises(ValueError, match="symmetric"):
        TemperatureFreeLoss("nt_xent", symmetric=True)
    with pytest.raises(ValueError, match="reduction"):
        TemperatureFreeLoss(reduction="avg")
    with pytest.raises(ValueError, match="temperature"):
        TemperatureFreeLoss(temperature=0.1)
    with pytest.raises(TypeError, match="symmetric"):
        TemperatureFreeLoss(symmetric=1)
    with pytest.raises(ValueError, match="chunk_size"):
        TemperatureFreeLoss("similarity", chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size"):
        TemperatureFreeLoss(chunk_size=-1)


def test_forward_dispatch_matches_the_functions():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    negs = torch.randn(3, 4, generator=gen)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    where = torch.tensor([True, True, False, True, True, True])
    sym = TemperatureFreeLoss(symmetric=True, reduction="none")
    assert torch.equal(sym(q, k, where=where),
                       tfree_torch.info_nce(q, k, symmetric=True, where=where, reduction="none"))
    assert torch.equal(TemperatureFreeLoss()(q, k, negatives=negs),
                       tfree_torch.info_nce(q, k, negatives=negs))
    assert torch.equal(TemperatureFreeLoss()(q, k, labels=labels),
                       tfree_torch.info_nce(q, k, labels=labels))
    assert torch.equal(TemperatureFreeLoss("nt_xent")(q, k), tfree_torch.nt_xent(q, k))
    sup = TemperatureFreeLoss("sup_con")
    assert torch.equal(sup(q, labels), tfree_torch.sup_con(q, labels))
    assert torch.equal(sup(q, labels=labels), tfree_torch.sup_con(q, labels))
    s = torch.tanh(q @ k.T)
    eye = torch.eye(6, dtype=torch.bool)
    assert torch.equal(TemperatureFreeLoss("similarity")(s, eye),
                       tfree_torch.loss_from_similarity(s, eye))


def test_forward_argument_errors():
    q = torch.randn(4, 3)
    labels = torch.arange(4)
    with pytest.raises(TypeError, match="labels"):
        TemperatureFreeLoss("sup_con")(q)
    with pytest.raises(TypeError, match="not both"):
        TemperatureFreeLoss("sup_con")(q, labels, labels=labels)
    with pytest.raises(TypeError, match="negatives"):
        TemperatureFreeLoss("nt_xent")(q, q, negatives=q)
    with pytest.raises(TypeError, match="second"):
        TemperatureFreeLoss()(q)
    with pytest.raises(TypeError, match="labels"):
        TemperatureFreeLoss("nt_xent")(q, q, labels=labels)
    with pytest.raises(TypeError, match="valid_mask"):
        TemperatureFreeLoss()(q, q, valid_mask=torch.ones(4, 4, dtype=torch.bool))


def test_training_loop_decreases_the_loss():
    """Two noisy views of 32 points through a small encoder: the loss falls."""
    torch.manual_seed(0)
    data = torch.randn(32, 10)
    encoder = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 8))
    criterion = TemperatureFreeLoss("nt_xent")
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        view1 = data + 0.1 * torch.randn_like(data)
        view2 = data + 0.1 * torch.randn_like(data)
        loss = criterion(encoder(view1), encoder(view2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
