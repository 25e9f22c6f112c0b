"""A Hugging Face ``Trainer`` whose ``compute_loss`` is the temperature-free InfoNCE.

A bi-encoder (one BERT for queries and documents, mean pooling) trained on (query, document)
pairs: ``compute_loss`` embeds both columns and returns ``tfree_torch.info_nce(q, d,
symmetric=True)``, every document of the batch a negative of every query and back. Under
``torchrun`` (DDP) the loss is sharded with ``group=`` (each rank's queries against every
rank's documents, the exact gradient of the global batch's loss under DDP's averaging); at
the first step the script checks that claim on the step's embeddings (``results.json``).

The BERT is built from a ``BertConfig`` (2 layers, hidden 32; no download) and the data is
synthetic: a document is its query's tokens with a quarter of them replaced.

Run::

    python -m examples.hf_trainer_retrieval --steps 3 --out /tmp/hf_trainer
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import tfree_torch
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from transformers import BertConfig, BertModel, Trainer, TrainingArguments

VOCAB, LENGTH = 200, 12


class Pairs(Dataset):
    """``n`` (query, document) token sequences; ids 0-4 are left to special tokens."""

    def __init__(self, n: int = 256, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.query = torch.randint(5, VOCAB, (n, LENGTH), generator=g)
        noise = torch.randint(5, VOCAB, (n, LENGTH), generator=g)
        swap = torch.rand(n, LENGTH, generator=g) < 0.25
        self.doc = torch.where(swap, noise, self.query)

    def __len__(self) -> int:
        return self.query.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"query_input_ids": self.query[i], "doc_input_ids": self.doc[i]}


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([r[key] for r in rows]) for key in rows[0]}


def mean_pool(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(input_ids)
    hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def world_group() -> dist.ProcessGroup | None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


class TemperatureFreeTrainer(Trainer):
    """``Trainer`` with a contrastive ``compute_loss``: no labels, no ``model(**inputs).loss``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check: dict[str, float] = {}

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False, num_items_in_batch: Any = None):
        q = mean_pool(model, inputs["query_input_ids"])
        d = mean_pool(model, inputs["doc_input_ids"])
        loss = tfree_torch.info_nce(q, d, symmetric=True, group=world_group())
        if not self.check and model.training:
            self.check = check_sharding(loss, q, d)
        return (loss, {"query": q, "doc": d}) if return_outputs else loss


def check_sharding(loss: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> dict[str, float]:
    """The claim of ``group=``, on this step's embeddings: the ranks' mean loss is the loss of
    the gathered batch, and the gradient that reaches this rank's rows is ``world_size`` times
    that loss's gradient for them (DDP divides the parameters' gradient by ``world_size``)."""
    group, world, rank = world_group(), 1, 0
    if group is not None:
        world, rank = dist.get_world_size(), dist.get_rank()
    grads = torch.autograd.grad(loss, [q, d], retain_graph=True)
    mean, every = loss.detach().clone(), [(q.detach(), d.detach())]
    if group is not None:
        dist.all_reduce(mean)
        every = [(torch.empty_like(q), torch.empty_like(d)) for _ in range(world)]
        for i, x in enumerate((q, d)):
            parts = [pair[i] for pair in every]
            dist.all_gather(parts, x.detach().contiguous())
    whole_q = torch.cat([pair[0] for pair in every]).requires_grad_(True)
    whole_d = torch.cat([pair[1] for pair in every]).requires_grad_(True)
    whole = tfree_torch.info_nce(whole_q, whole_d, symmetric=True)
    rows = slice(rank * q.shape[0], (rank + 1) * q.shape[0])
    expected = [world * g[rows] for g in torch.autograd.grad(whole, [whole_q, whole_d])]
    error = max(float((g - e).abs().max() / e.abs().max())
                for g, e in zip(grads, expected, strict=True))
    return {"loss_sharded": float(mean) / world, "loss_global": float(whole.detach()),
            "grad_max_rel_err": error, "world_size": world}


def build_model(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=LENGTH + 2)
    return BertModel(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as scratch:
        training = TrainingArguments(
            output_dir=scratch, max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=5e-4,
            logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
            remove_unused_columns=False,  # the model's forward does not name our columns
            disable_tqdm=True, seed=0)
        trainer = TemperatureFreeTrainer(model=build_model(), args=training,
                                         train_dataset=Pairs(), data_collator=collate)
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"steps": trainer.state.global_step, "losses": losses, **trainer.check}
    print(json.dumps(result))
    if args.out is not None and trainer.is_world_process_zero():
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
