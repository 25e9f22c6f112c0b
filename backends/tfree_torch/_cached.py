"""Cached (GradCache) training: a contrastive batch larger than the encoder's activations fit.

The loss needs every embedding of the batch at once, the encoder's activations only one
mini-batch at a time. With ``E = [E_1; …; E_B]`` the embeddings of the ``B`` mini-batches,

    ∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ · ∂L/∂E_b

so a step runs in three passes (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup"):

1. every mini-batch is embedded without a graph (``torch.no_grad``), its RNG and autocast
   state recorded;
2. the loss is evaluated on the whole batch of embeddings, as leaves, and
   ``dE = ∂L/∂E`` comes from tfree's analytic gradient (``O(N·D)`` memory when tiled);
3. each mini-batch is embedded again, with a graph, under the recorded RNG and autocast
   state (so dropout draws the same masks), and ``⟨E_b, dE_b⟩`` is backpropagated: the
   parameters' ``.grad`` accumulate exactly the full batch's gradient.

Peak memory is the parameters and their gradients, ``O(N·D)`` for the embeddings and their
gradients, and one mini-batch's activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from tfree_core import engine

Batch = Tensor | Mapping[str, Any] | Sequence[Any]
"""An encoder's inputs: a tensor (``encoder(x)``), a mapping such as a tokenizer's output
(``encoder(**batch)``) or a tuple / list (``encoder(*batch)``). Every tensor in it is split
along dim 0; other values are passed to every mini-batch unchanged."""

Encoded = tuple[Callable[..., Tensor], Batch]
"""``(encoder, batch)``: an ``nn.Module`` or callable and the inputs it embeds."""


class Scaler(Protocol):
    """What ``scaler=`` needs: ``torch.amp.GradScaler``'s ``scale``."""

    def scale(self, outputs: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------- validation


# how messages name a pair and its encoder
_WORDS = {"pair": "encoder, batch", "encoder": "an nn.Module or a callable"}


def _check_loss(loss: object) -> Callable[..., Tensor]:
    return engine.check_loss_function(loss, returns="a callable returning a scalar tensor",
                                      example="tfree_torch.info_nce")


def _tensors(batch: Batch, where: str) -> list[tuple[str, Tensor]]:
    """The tensors of one batch with their names (for messages)."""
    if isinstance(batch, Tensor):
        return [("", batch)]
    if isinstance(batch, Mapping):
        return [(f"[{k!r}]", v) for k, v in batch.items() if isinstance(v, Tensor)]
    if isinstance(batch, (tuple, list)):
        return [(f"[{i}]", v) for i, v in enumerate(batch) if isinstance(v, Tensor)]
    raise TypeError(f"{where}: the batch must be a tensor, a mapping of tensors (a "
                    f"tokenizer's output) or a tuple of tensors, got {type(batch).__name__}")


def _length(batch: Batch, where: str) -> int:
    """The common length along dim 0 of every tensor in ``batch``."""
    tensors = _tensors(batch, where)
    if not tensors:
        raise ValueError(f"{where}: the batch holds no tensor to split along dim 0")
    lengths = {name: (t.shape[0] if t.ndim else None) for name, t in tensors}
    if None in lengths.values():
        scalar = next(name for name, n in lengths.items() if n is None)
        raise ValueError(f"{where}: batch{scalar} is a 0-d tensor; every tensor of a batch "
                         f"is split along dim 0")
    return engine.common_length({f"batch{name}": n for name, n in lengths.items()}, where,
                                noun="tensors")


def _slice(batch: Batch, rows: slice) -> Batch:
    if isinstance(batch, Tensor):
        return batch[rows]
    if isinstance(batch, Mapping):
        return {k: v[rows] if isinstance(v, Tensor) else v for k, v in batch.items()}
    return type(batch)(v[rows] if isinstance(v, Tensor) else v for v in batch)


def _split(batch: Batch, size: int, where: str) -> list[Batch]:
    n = _length(batch, where)
    return [_slice(batch, slice(i, min(i + size, n))) for i in range(0, n, size)]


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # e.g. objects whose == is not a bool
        return False


def _encode(encoder: Callable[..., Tensor], batch: Batch) -> Any:
    if isinstance(batch, Tensor):
        return encoder(batch)
    if isinstance(batch, Mapping):
        return encoder(**batch)
    return encoder(*batch)


def _check_output(out: Any, rows: int, where: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"{where}: the encoder returned {type(out).__name__}; it must return "
                        f"the embeddings as one tensor ({rows}, ..., D) (wrap a model whose "
                        f"output is a dict or a ModelOutput in an nn.Module that pools it)")
    if out.ndim < 1 or out.shape[0] != rows:
        raise ValueError(f"{where}: the encoder returned shape {tuple(out.shape)} for a "
                         f"mini-batch of {rows} rows; dim 0 must be the rows")
    if not out.is_floating_point():
        raise TypeError(f"{where}: the encoder returned a {out.dtype} tensor; embeddings must "
                        f"be floating point")
    return out


# --------------------------------------------------------------------------- replay state


@dataclass(frozen=True)
class _RngState:
    """The CPU generator's state and, when CUDA is initialised, every CUDA device's."""

    cpu: Tensor
    cuda: tuple[Tensor, ...]

    @classmethod
    def capture(cls) -> _RngState:
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else ()
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run under this state, then give the generators back the state they had."""
        with torch.random.fork_rng(devices=list(range(len(self.cuda)))):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(list(self.cuda))
            yield


def _autocast_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@dataclass(frozen=True)
class _AutocastState:
    """``torch.autocast``'s state per device type, as the caller had it in the first pass."""

    modes: tuple[tuple[str, bool, torch.dtype], ...]
    cache: bool

    @classmethod
    def capture(cls) -> _AutocastState:
        modes = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
                      for d in _autocast_devices())
        return cls(modes, torch.is_autocast_cache_enabled())

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for device, enabled, dtype in self.modes:
                stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled,
                                                   cache_enabled=self.cache))
            yield


def _sync_owner(encoder: Callable[..., Tensor]) -> Any:
    """The module whose ``no_sync()`` defers the gradient all-reduce: the encoder itself
    (``DistributedDataParallel``, FSDP) or a DDP module inside it; ``None`` if neither."""
    if callable(getattr(encoder, "no_sync", None)):
        return encoder
    if isinstance(encoder, torch.nn.Module):
        ddp = torch.nn.parallel.DistributedDataParallel
        return next((m for m in encoder.modules() if isinstance(m, ddp)), None)
    return None


@dataclass
class _Job:
    """One mini-batch of one argument: what it takes to replay its forward exactly."""

    slot: str
    encoder: Callable[..., Tensor]
    inputs: Batch
    rows: int
    rng: _RngState
    autocast: _AutocastState


# --------------------------------------------------------------------------- the cache


class CachedLoss:
    """Accumulate the embeddings of several steps, then take one step on their union.

    The same three passes as ``cached_loss`` (``∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ·∂L/∂E_b``), with
    the first pass spread over calls of ``add``: each embeds its arguments' mini-batches
    without a graph and keeps the embeddings (``O(rows·D)``) and the inputs (to re-encode
    them); ``backward`` evaluates ``loss`` on the concatenation of everything added,
    re-encodes every mini-batch with a graph and leaves the parameters' ``.grad`` equal to
    the gradient of that loss. More negatives than one data-loader step holds, unlike
    gradient accumulation, which averages the losses of separate small batches.

    Each mini-batch is replayed under the RNG state (CPU and, once initialised, CUDA) and
    the ``torch.autocast`` state that its ``add`` had, so dropout draws the same masks
    and the dtypes match even if ``backward`` runs in another context.

    Examples:
        Four loader batches of 16 pairs, one loss over all 64 pairs, 8 rows embedded at a
        time:

        ```python
        from functools import partial

        import torch
        import tfree_torch

        model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Dropout(0.1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        cache = tfree_torch.CachedLoss(partial(tfree_torch.info_nce, symmetric=True),
                                       mini_batch_size=8)
        for _ in range(4):
            q, k = torch.randn(16, 32), torch.randn(16, 32)
            cache.add((model, q), (model, k))
        loss = cache.backward()  # the .grad of one loss over 64 pairs
        optimizer.step()
        optimizer.zero_grad()
        ```

    Args:
        loss: A tfree loss (or any callable returning a scalar tensor), its options bound
            with ``functools.partial``: it is called as ``loss(*embeddings, **keywords)``.
        mini_batch_size: Rows (along dim 0) embedded at a time: the activation memory.
        scaler: A ``torch.amp.GradScaler`` (anything with ``scale``): the embedding
            gradients are those of ``scaler.scale(loss)``, so the parameters' ``.grad`` are
            scaled as ``scaler.scale(loss).backward()`` would leave them; then call
            ``scaler.step(optimizer)`` and ``scaler.update()`` as usual.
    """

    def __init__(self, loss: Callable[..., Tensor], *, mini_batch_size: int,
                 scaler: Scaler | None = None) -> None:
        self.loss = _check_loss(loss)
        self.mini_batch_size = engine.check_mini_batch_size(mini_batch_size)
        if scaler is not None and not callable(getattr(scaler, "scale", None)):
            raise TypeError(f"scaler must be a torch.amp.GradScaler (an object with a scale "
                            f"method) or None, got {type(scaler).__name__}")
        self.scaler = scaler
        self._clear()

    def _clear(self) -> None:
        self._jobs: list[_Job] = []
        self._embeddings: dict[str, list[Tensor]] = {}
        self._positional: int | None = None  # the first add()'s structure
        self._keywords: set[str] = set()
        self._rows: dict[str, list[Tensor]] = {}
        self._constants: dict[str, Any] = {}
        self._added = 0

    def __len__(self) -> int:
        """The number of ``add`` calls since the last ``backward``."""
        return self._added

    def add(self, *encoded: Encoded, **keywords: Any) -> CachedLoss:
        """Embed one step's arguments without a graph and keep them for ``backward``.

        Args:
            *encoded: The loss's positional embeddings, each an ``(encoder, batch)`` pair
                (the same encoder may appear in several pairs).
            **keywords: The loss's keyword arguments. An ``(encoder, batch)`` pair (e.g.
                ``hard_negatives=(model, h)`` with ``h`` of ``(n, H, ...)``, embedded to
                ``(n, H, D)``) is embedded like a positional one; a tensor (``labels``,
                ``where``) holds rows of this step and is concatenated over the steps;
                anything else must be the same in every step. A tensor that is not per-row
                (shared negatives) belongs in ``loss`` (``functools.partial``).

        Returns:
            ``self``, so that ``cache.add(...).backward()`` is one step.
        """
        pairs = engine.encoded_pairs("add()", encoded, keywords, **_WORDS)
        self._check_structure(len(encoded), keywords)
        rows = {n: v for n, v in keywords.items() if n not in pairs and isinstance(v, Tensor)}
        constants = {n: v for n, v in keywords.items() if n not in pairs and n not in rows}
        for name, value in constants.items():
            if self._positional is not None and not _same(self._constants[name], value):
                raise ValueError(f"{name} was {self._constants[name]!r} in the first add() "
                                 f"and is {value!r} now; a non-tensor keyword must be the "
                                 f"same in every step (or bind it in loss with "
                                 f"functools.partial)")
        splits = {n: (enc, _split(batch, self.mini_batch_size, n))
                  for n, (enc, batch) in pairs.items()}
        # the first pass; nothing is kept unless every argument embeds
        jobs, embedded = [], {}
        for name, (encoder, chunks) in splits.items():
            embedded[name] = [self._embed(name, encoder, inputs, jobs) for inputs in chunks]
        self._jobs += jobs
        for name, outs in embedded.items():
            self._embeddings.setdefault(name, []).extend(outs)
        for name, value in rows.items():
            self._rows.setdefault(name, []).append(value)
        self._constants.update(constants)
        self._positional, self._keywords = len(encoded), set(keywords)
        self._added += 1
        return self

    def _check_structure(self, positional: int, keywords: Mapping[str, Any]) -> None:
        """The same arguments in every step (the loss is called once on their union)."""
        if self._positional is None:
            return
        if positional != self._positional:
            raise ValueError(f"add() got {positional} positional pairs; the first add() of "
                             f"this step had {self._positional}")
        if set(keywords) != self._keywords:
            raise ValueError(f"add() got the keywords {sorted(keywords)}; the first add() of "
                             f"this step had {sorted(self._keywords)}")

    @staticmethod
    def _embed(name: str, encoder: Callable[..., Tensor], inputs: Batch,
               jobs: list[_Job]) -> Tensor:
        """The first pass over one mini-batch: embed it without a graph, record its job."""
        rows = _length(inputs, name)
        job = _Job(name, encoder, inputs, rows, _RngState.capture(), _AutocastState.capture())
        with torch.no_grad():
            out = _check_output(_encode(encoder, inputs), rows, name)
        jobs.append(job)
        return out.detach()

    def backward(self) -> Tensor:
        """Evaluate the loss on everything added, backpropagate it into the encoders'
        parameters (their ``.grad`` accumulate, as ``loss.backward()`` would) and clear.

        Returns:
            The loss (detached; unscaled when a ``scaler`` is given).
        """
        if not self._jobs:
            raise RuntimeError("backward() before any add(): nothing to compute the loss on")
        try:
            leaves = {n: torch.cat(chunks).requires_grad_(True)
                      for n, chunks in self._embeddings.items()}
            self._embeddings = {}  # the concatenation replaces the chunks
            value, grads = self._loss_and_gradients(leaves)
            del leaves
            self._replay(grads)
        finally:
            self._clear()
        return value

    def _loss_and_gradients(self, leaves: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss on the whole batch and ``∂L/∂E`` per argument (tfree's analytic one)."""
        positional = [leaves[f"encoded[{i}]"] for i in range(self._positional or 0)]
        keywords = {n: e for n, e in leaves.items() if not n.startswith("encoded[")}
        keywords.update({n: torch.cat(v) for n, v in self._rows.items()})
        keywords.update(self._constants)
        value = self.loss(*positional, **keywords)
        if not isinstance(value, Tensor) or value.numel() != 1:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"loss must return a scalar tensor (reduction 'mean' or 'sum'), "
                             f"got {got}")
        target = self.scaler.scale(value) if self.scaler is not None else value
        names = list(leaves)
        found = torch.autograd.grad(target.reshape(()), [leaves[n] for n in names],
                                    allow_unused=True)
        grads = {n: torch.zeros_like(leaves[n]) if g is None else g
                 for n, g in zip(names, found, strict=True)}
        return value.detach(), grads

    def _replay(self, grads: dict[str, Tensor]) -> None:
        """The third pass: re-encode each mini-batch with a graph under its recorded state
        and backpropagate ``⟨E_b, dE_b⟩``; DDP all-reduces once, after the last one."""
        owners = [_sync_owner(job.encoder) for job in self._jobs]
        last = {id(o): j for j, o in enumerate(owners) if o is not None}
        offsets = dict.fromkeys(grads, 0)
        for j, (job, owner) in enumerate(zip(self._jobs, owners, strict=True)):
            start = offsets[job.slot]
            offsets[job.slot] = start + job.rows
            d_out = grads[job.slot][start:start + job.rows]
            defer = owner is not None and last[id(owner)] != j
            with owner.no_sync() if defer else contextlib.nullcontext(), \
                    job.rng.replay(), job.autocast.replay():
                out = _check_output(_encode(job.encoder, job.inputs), job.rows, job.slot)
                if out.requires_grad:
                    torch.autograd.backward(out, d_out.to(out.dtype))
            job.inputs = None  # free the mini-batch's inputs as soon as it is done


def cached_loss(loss: Callable[..., Tensor], *encoded: Encoded, mini_batch_size: int,
                scaler: Scaler | None = None, **keywords: Any) -> Tensor:
    """A contrastive loss over a batch whose activations do not fit, with the exact
    full-batch gradient (GradCache: Gao et al. 2021), accumulated into the encoders'
    parameters' ``.grad``.

    ``∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ · ∂L/∂E_b``: every mini-batch of ``mini_batch_size`` rows is
    embedded without a graph; the loss and ``∂L/∂E`` are computed on the whole batch of
    embeddings by tfree's analytic gradient (``O(N·D)`` memory when tiled, the default
    ``chunk_size="auto"``); then each mini-batch is embedded again with a graph, under the
    RNG state (CPU and CUDA) and autocast state of its first pass, and ``⟨E_b, dE_b⟩`` is
    backpropagated. Peak memory: one mini-batch's activations plus ``O(N·D)``.

    This function does the backward itself (no ``loss.backward()`` to call): the gradient
    needs the encoders to run again, which a returned tensor's backward could only do by
    re-entering autograd, which ``DistributedDataParallel`` does not support. For the same
    reason ``GradScaler`` is passed as ``scaler=``.

    Examples:
        A CLIP step over 64 pairs from two towers, 16 rows embedded at a time; the text
        tower takes a dict, as a tokenizer's output:

        ```python
        from functools import partial

        import torch
        import tfree_torch

        class TextTower(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.EmbeddingBag(100, 16, mode="sum")

            def forward(self, input_ids, attention_mask):
                return self.embed(input_ids, per_sample_weights=attention_mask.float())

        image_tower, text_tower = torch.nn.Linear(32, 16), TextTower()
        images = torch.randn(64, 32)
        tokens = {"input_ids": torch.randint(0, 100, (64, 12)),
                  "attention_mask": torch.ones(64, 12, dtype=torch.long)}
        loss = tfree_torch.cached_loss(partial(tfree_torch.info_nce, symmetric=True),
                                       (image_tower, images), (text_tower, tokens),
                                       mini_batch_size=16)
        assert image_tower.weight.grad is not None  # no loss.backward() to call
        ```

    Args:
        loss: A tfree loss (``tfree_torch.info_nce``, ``nt_xent``, ``sup_con``, or a
            ``functools.partial`` of one with its options), or any callable returning a
            scalar tensor: called once as ``loss(*embeddings, **keywords)``.
        *encoded: The positional embeddings, each an ``(encoder, batch)`` pair: an
            ``nn.Module`` or callable and its inputs, a tensor (``encoder(x)``), a mapping
            such as a tokenizer's output (``encoder(**batch)``) or a tuple
            (``encoder(*batch)``), split along dim 0. The encoder returns a tensor whose
            dim 0 is the rows: ``(n, D)``, or ``(n, H, D)`` for per-row hard negatives. The
            same encoder may be given for several arguments (one tower for both sides).
        mini_batch_size: Rows embedded at a time (positive int): the activation memory.
        scaler: A ``torch.amp.GradScaler``: ``.grad`` are those of
            ``scaler.scale(loss).backward()``; then ``scaler.step(optimizer)``,
            ``scaler.update()``.
        **keywords: The loss's keyword arguments: an ``(encoder, batch)`` pair (e.g.
            ``negatives=(model, h)``) is embedded as above, anything else (``labels``,
            ``where``, ``group``, options) passed unchanged.

    Returns:
        The loss (detached; unscaled with a ``scaler``).

    Under ``DistributedDataParallel`` (the encoder, or a DDP module inside an encoder
    module), every re-encode but the last of each DDP module runs under ``no_sync()``: one
    all-reduce per step. With ``group=`` each rank passes its local rows; DDP's averaging then
    gives the gradient of the loss of the concatenated global batch.
    """
    cache = CachedLoss(loss, mini_batch_size=mini_batch_size, scaler=scaler)
    pairs = {n: v for n, v in keywords.items() if engine.is_encoded_pair(v)}
    constants = {n: v for n, v in keywords.items() if n not in pairs}
    if constants:  # passed unchanged, whatever their type
        cache.loss = _bind(cache.loss, constants)
    return cache.add(*encoded, **pairs).backward()


def _bind(loss: Callable[..., Tensor], constants: dict[str, Any]) -> Callable[..., Tensor]:
    def bound(*args: Tensor, **kwargs: Tensor) -> Tensor:
        return loss(*args, **kwargs, **constants)

    return bound
