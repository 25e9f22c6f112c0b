"""tfree_torch.lightly.TemperatureFreeNTXentLoss against lightly's NTXentLoss.

Two references under ``logit_map="temperature"``:

- a transcription of lightly 1.6.0's ``NTXentLoss`` and ``MemoryBankModule``
  (``lightly/loss/ntx_ent_loss.py``, ``lightly/models/modules/memory_bank.py``), written
  here and run wherever torch does: the 2N-view NT-Xent, and with a bank the MoCo logits
  ``[⟨q_i, k_i⟩, q_i·bankᵀ]/τ`` against the bank as it was before the step, the bank a FIFO
  of normalised ``out1`` written only when ``out0.requires_grad``;
- lightly's own ``NTXentLoss`` where ``lightly.loss`` imports. It needs torchvision
  (``lightly/models/utils.py`` imports ``torchvision.ops`` at the top, and ``NTXentLoss``
  imports it through its memory bank), so it cannot run beside the pinned CPU torch
  2.13.0: see ``WHY``.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from ranks import two_ranks  # noqa: E402
from tfree_torch.lightly import TemperatureFreeNTXentLoss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WHY = ("lightly imports torchvision (lightly/models/utils.py: 'from torchvision.ops import "
       "StochasticDepth'), and PyPI's torchvision for the pinned torch 2.13.0 (0.28.0) is "
       "linked against the CUDA build of torch: beside the pinned CPU build it fails to "
       "import ('operator torchvision::nms does not exist'), so the lightly extra is not in "
       "'all'")


def host_ntxent():
    """lightly's ``NTXentLoss``, or the reason it cannot be imported here."""
    if importlib.util.find_spec("lightly") is None:
        return None, f"lightly is not installed; {WHY}"
    try:
        from lightly.loss import NTXentLoss
    except Exception as error:
        return None, f"lightly is installed but does not import ({type(error).__name__}: " \
                     f"{error}); {WHY}"
    return NTXentLoss, None


class Transcribed:
    """lightly 1.6.0's NTXentLoss, one process, as a reference (its own code, re-typed)."""

    def __init__(self, temperature: float, bank: tuple[int, int] | None = None) -> None:
        self.temperature = temperature
        self.bank = None
        if bank is not None:  # MemoryBankModule._init_memory_bank
            self.bank = F.normalize(torch.randn(bank).type_as(torch.empty(0)), dim=-1)
            self.ptr = 0

    def __call__(self, out0, out1):
        n = out0.shape[0]
        out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        if self.bank is not None:
            negatives = self.bank.clone().to(out0.dtype)
            if out0.requires_grad:  # _dequeue_and_enqueue
                size = self.bank.shape[0]
                if self.ptr + n >= size:
                    self.bank[self.ptr:] = out1[: size - self.ptr].detach()
                    self.ptr = 0
                else:
                    self.bank[self.ptr:self.ptr + n] = out1.detach()
                    self.ptr += n
            sim_pos = (out0 * out1).sum(1, keepdim=True)
            logits = torch.cat([sim_pos, out0 @ negatives.T], dim=1) / self.temperature
            return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
        eye = torch.eye(n, dtype=torch.bool)
        l00 = (out0 @ out0.T / self.temperature)[~eye].view(n, -1)
        l11 = (out1 @ out1.T / self.temperature)[~eye].view(n, -1)
        l01, l10 = out0 @ out1.T / self.temperature, out1 @ out0.T / self.temperature
        logits = torch.cat([torch.cat([l01, l00], 1), torch.cat([l10, l11], 1)], 0)
        return F.cross_entropy(logits, torch.arange(n).repeat(2))


def views(n=8, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out0 = torch.randn(n, d, generator=g, dtype=dtype)
    out1 = out0 + 0.7 * torch.randn(n, d, generator=g, dtype=dtype)
    return out0.requires_grad_(), out1.requires_grad_()


def value_and_grads(fn, out0, out1):
    out0.grad = out1.grad = None
    loss = fn(out0, out1)
    loss.backward()
    return float(loss.detach()), out0.grad.clone(), out1.grad.clone()


def assert_same(a, b, rtol=1e-12):
    assert a[0] == pytest.approx(b[0], rel=rtol)
    for x, y in zip(a[1:], b[1:], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-13)


def test_simclr_equals_the_transcription():
    out0, out1 = views()
    ours = TemperatureFreeNTXentLoss(0.2, logit_map="temperature")
    assert_same(value_and_grads(ours, out0, out1),
                value_and_grads(Transcribed(0.2), out0, out1))


def test_the_temperature_free_loss_is_nt_xent():
    import tfree_torch

    out0, out1 = views(seed=1)
    assert_same(value_and_grads(TemperatureFreeNTXentLoss(), out0, out1),
                value_and_grads(tfree_torch.nt_xent, out0, out1))


def test_moco_bank_semantics_over_steps():
    """Bank of 7 rows, batches of 3: the FIFO wraps (dropping a batch's overflow), the loss
    uses the bank before the step, evaluation does not write, across 4 steps."""
    torch.manual_seed(5)
    ours = TemperatureFreeNTXentLoss(0.3, memory_bank_size=(7, 16),
                                     logit_map="temperature").double()
    torch.manual_seed(5)
    reference = Transcribed(0.3, bank=(7, 16))
    reference.bank = reference.bank.double()
    torch.testing.assert_close(ours.memory_bank.bank, reference.bank, rtol=0, atol=0)
    # float32 draws, unit only to float32 rounding: tfree normalises every row it is given,
    # lightly uses them as stored; unit in float64 both read the same rows
    ours.memory_bank.bank = F.normalize(ours.memory_bank.bank, dim=1)
    reference.bank = F.normalize(reference.bank, dim=1)
    for step in range(4):
        out0, out1 = views(3, seed=10 + step)
        assert_same(value_and_grads(ours, out0, out1), value_and_grads(reference, out0, out1))
        torch.testing.assert_close(ours.memory_bank.bank, reference.bank, rtol=0, atol=0)
        assert int(ours.memory_bank.bank_ptr) == reference.ptr
    assert reference.ptr == 3 * 4 - 7 - 2  # 0,3,6 -> wrap at 6 (1 row kept, 2 dropped) -> 3
    with torch.no_grad():  # evaluation: the bank stays
        before = ours.memory_bank.bank.clone()
        ours(*(v.detach() for v in views(3, seed=99)))
        torch.testing.assert_close(ours.memory_bank.bank, before, rtol=0, atol=0)
    assert not dict(ours.state_dict())  # non-persistent buffers, as lightly's


def test_moco_temperature_free():
    import tfree_torch

    torch.manual_seed(0)
    loss = TemperatureFreeNTXentLoss(memory_bank_size=(32, 16)).double()
    bank = loss.memory_bank.bank.clone()
    out0, out1 = views(4, seed=3)
    got = value_and_grads(loss, out0, out1)
    expected = value_and_grads(lambda a, b: tfree_torch.info_nce(a, b, negatives=bank),
                               out0, out1)
    assert_same(got, expected)
    torch.testing.assert_close(loss.memory_bank.bank[:4], F.normalize(out1.detach(), dim=1))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="temperature is only used with logit_map"):
        TemperatureFreeNTXentLoss(0.1)
    with pytest.raises(ValueError, match="does not give the feature dimension"):
        TemperatureFreeNTXentLoss(memory_bank_size=4096)
    with pytest.raises(ValueError, match="memory_bank_size must be 0 or"):
        TemperatureFreeNTXentLoss(memory_bank_size=(4096, 128, 2))
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        TemperatureFreeNTXentLoss(0.0, logit_map="temperature")
    assert TemperatureFreeNTXentLoss(logit_map="temperature").temperature == 0.5


def test_equals_lightlys_ntxent_loss():
    NTXentLoss, why = host_ntxent()
    if NTXentLoss is None:
        pytest.skip(why)
    out0, out1 = views(seed=4, dtype=torch.float32)
    host = value_and_grads(NTXentLoss(temperature=0.2), out0, out1)
    ours = value_and_grads(TemperatureFreeNTXentLoss(0.2, logit_map="temperature"), out0, out1)
    print(f"NTXentLoss {host[0]!r} tfree {ours[0]!r}")
    assert ours[0] == pytest.approx(host[0], rel=1e-6)
    torch.manual_seed(1)
    host_loss = NTXentLoss(temperature=0.3, memory_bank_size=(7, 16)).double()
    torch.manual_seed(1)
    ours_loss = TemperatureFreeNTXentLoss(0.3, memory_bank_size=(7, 16),
                                          logit_map="temperature").double()
    torch.testing.assert_close(ours_loss.memory_bank.bank, host_loss.memory_bank.bank,
                               rtol=0, atol=0)  # the same draws
    for bank in (host_loss.memory_bank, ours_loss.memory_bank):  # unit in float64
        bank.bank = F.normalize(bank.bank, dim=1)
    for step in range(4):
        out0, out1 = views(3, seed=20 + step)
        host = value_and_grads(host_loss, out0, out1)
        ours = value_and_grads(ours_loss, out0, out1)
        print(f"step {step} with a bank: NTXentLoss {host[0]!r} tfree {ours[0]!r}")
        assert_same(ours, host)
        torch.testing.assert_close(ours_loss.memory_bank.bank, host_loss.memory_bank.bank,
                                   rtol=0, atol=0)


WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_integration_lightly import views, host_ntxent
    from tfree_torch.lightly import TemperatureFreeNTXentLoss
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            init_method="file://{store}")
    NTXentLoss, _ = host_ntxent()
    runs = {{"ours": TemperatureFreeNTXentLoss(0.2, gather_distributed=True,
                                               logit_map="temperature"),
             "free": TemperatureFreeNTXentLoss(gather_distributed=True)}}
    if NTXentLoss is not None:
        runs["host"] = NTXentLoss(0.2, gather_distributed=True)
    out = {{}}
    mine = slice(4 * rank, 4 * rank + 4)
    for name, fn in runs.items():
        out0, out1 = views(8, seed=7)                     # the global batch
        loss = fn(out0[mine], out1[mine])
        loss.backward()
        value = loss.detach().clone()
        dist.all_reduce(value)
        for g in (out0.grad, out1.grad):                  # DDP's averaging
            dist.all_reduce(g)
            g /= 2
        out[name] = (float(value) / 2, out0.grad, out1.grad)
    torch.manual_seed(3)
    moco = TemperatureFreeNTXentLoss(memory_bank_size=(16, 16), gather_distributed=True).double()
    out0, out1 = views(8, seed=8)
    moco(out0[mine], out1[mine])
    out["bank"] = moco.memory_bank.bank.clone()
    if rank == 0:
        torch.save(out, {result!r})
    dist.barrier()  # no rank tears the group down while another still talks to it
    dist.destroy_process_group()
""")


def test_gather_distributed_on_two_ranks(tmp_path):
    """Two Gloo ranks of 4 rows: the global batch's NT-Xent and gradient (the host's under
    the temperature map, where lightly imports); with a bank every rank writes both ranks'
    out1 in rank order."""
    result = two_ranks(WORKER, tmp_path)
    out = torch.load(result)
    out0, out1 = views(8, seed=7)
    assert_same(out["ours"], value_and_grads(Transcribed(0.2), out0, out1))
    assert_same(out["free"], value_and_grads(TemperatureFreeNTXentLoss(), out0, out1))
    _, o1 = views(8, seed=8)
    torch.testing.assert_close(out["bank"][:8], F.normalize(o1.detach(), dim=1))
    if "host" not in out:
        pytest.skip(f"compared with the transcription only: {host_ntxent()[1]}")
    print(f"2 ranks: NTXentLoss {out['host'][0]!r} tfree {out['ours'][0]!r}")
    assert_same(out["ours"], out["host"])
