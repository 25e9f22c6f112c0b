"""A LightningModule trained with the temperature-free NT-Xent under DDP, with ``group=``.

The usual pattern gathers the embeddings with ``self.all_gather(z, sync_grads=True)`` and
computes the whole batch's loss on every rank. Here each rank passes its own rows to
``tfree_torch.nt_xent(z1, z2, group=WORLD)``: every rank's anchors meet every rank's views,
the value on each rank is scaled so that the mean over the ranks is the global batch's
loss, and DDP's gradient averaging gives exactly that loss's gradient (no ``N × N`` matrix
per rank, no gathered copy of the autograd graph).

Run (two CPU processes, Gloo; about half a minute)::

    python -m examples.lightning_ddp --devices 2 --steps 4 --out /tmp/lightning

With ``--devices 1`` it trains in one process (``group=None``). At the first step it checks
the claim: the ranks' mean loss against the loss of the gathered batch, and the averaged
gradient against that loss's gradient computed from the gathered inputs (written to
``results.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import tfree_torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

D_IN, D = 32, 16


def views(n: int = 512, seed: int = 0) -> TensorDataset:
    """Two noisy views of ``n`` points around 16 prototypes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(16, D_IN, generator=g)
    points = centres[torch.randint(0, 16, (n,), generator=g)] + 0.3 * torch.randn(
        n, D_IN, generator=g)
    return TensorDataset(points + 0.2 * torch.randn(n, D_IN, generator=g),
                         points + 0.2 * torch.randn(n, D_IN, generator=g))


def world_group() -> dist.ProcessGroup | None:
    """The group to shard the loss over: all ranks under DDP, none in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


class SimCLR(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D_IN, 64), nn.ReLU(), nn.Linear(64, D))
        self.lr = lr
        self.losses: list[float] = []
        self.check: dict[str, float] = {}
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x1, x2 = batch
        loss = tfree_torch.nt_xent(self.encoder(x1), self.encoder(x2), group=world_group())
        # the mean over the ranks is the global batch's loss
        self.log("train_loss", loss, sync_dist=True, prog_bar=False)
        if self.global_step == 0:
            self._first = (x1, x2)
            self.check["loss_sharded"] = float(self.all_gather(loss.detach()).mean())
        return loss

    def on_after_backward(self) -> None:
        """At the first step: DDP's averaged gradient is the gathered batch's gradient."""
        if self._first is None:
            return
        x1, x2 = self._first
        if self.trainer.world_size > 1:  # every rank's rows, in rank order
            x1, x2 = (self.all_gather(x).flatten(0, 1) for x in (x1, x2))
        self._first = None
        params = list(self.encoder.parameters())
        with torch.enable_grad():
            whole = tfree_torch.nt_xent(self.encoder(x1), self.encoder(x2))
            expected = torch.autograd.grad(whole, params)
        error = max(float((p.grad - e).abs().max() / e.abs().max())
                    for p, e in zip(params, expected, strict=True))
        self.check.update(loss_global=float(whole.detach()), grad_max_rel_err=error)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.losses.append(float(self.all_gather(outputs["loss"].detach()).mean()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per rank")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    model = SimCLR()
    trainer = L.Trainer(accelerator="cpu", devices=args.devices,
                        strategy="ddp" if args.devices > 1 else "auto",
                        max_steps=args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(views(), batch_size=args.batch_size, shuffle=True, drop_last=True)
    trainer.fit(model, loader)
    if trainer.is_global_zero:
        result = {"world_size": trainer.world_size, "losses": model.losses, **model.check}
        print(json.dumps(result))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
