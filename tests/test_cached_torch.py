"""``tfree_torch.cached_loss`` / ``CachedLoss`` (GradCache): the encoders' parameter
gradients equal those of full-batch autodiff, in float64 with dropout active.

The reference embeds the same mini-batches, in the same order, from the same seed, but
with one autograd graph over the whole batch, and backpropagates the loss through it: the
dropout masks are then the same draws, and only the summation order of the parameter
gradients differs (``∂L/∂θ = Σ_b (∂E_b/∂θ)ᵀ·∂L/∂E_b``), so the two agree to float64
round-off. The DistributedDataParallel case runs 2 Gloo ranks in a subprocess
(``python tests/test_cached_torch.py OUT``) and compares with one process on the
concatenated batch.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import tfree_torch  # noqa: E402

RTOL = 1e-12
D_IN, D = 6, 8


class MLP(torch.nn.Module):
    """A 2-layer MLP with dropout, float64; ``forward`` accepts a tensor of any leading
    shape (``(n, D_IN)`` or ``(n, H, D_IN)`` for per-row negatives)."""

    def __init__(self, seed: int = 0, p: float = 0.25) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(D_IN, 16, generator=g, dtype=torch.float64))
        self.b1 = torch.nn.Parameter(torch.randn(16, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(torch.randn(16, D, generator=g, dtype=torch.float64))
        self.drop = torch.nn.Dropout(p)

    def forward(self, x):
        return self.drop(torch.tanh(x @ self.w1 + self.b1)) @ self.w2


class DictEncoder(torch.nn.Module):
    """Tokenizer-style inputs: ``encoder(**batch)`` with ids and a mask."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.table = torch.nn.Parameter(torch.randn(20, D_IN, generator=g, dtype=torch.float64))
        self.mlp = MLP(2)

    def forward(self, input_ids, attention_mask, scale=1.0):
        tokens = self.table[input_ids] * attention_mask[..., None]
        return scale * self.mlp(tokens.sum(1) / attention_mask.sum(1, keepdim=True))


def data(n: int, *shape: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


def tokens(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, 5, generator=g) > 0.3).to(torch.float64)
    mask[:, 0] = 1
    return {"input_ids": torch.randint(0, 20, (n, 5), generator=g), "attention_mask": mask}


def split(batch, size):
    if isinstance(batch, torch.Tensor):
        return list(batch.split(size))
    if isinstance(batch, dict):
        parts = {k: v.split(size) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        count = next(len(v) for v in parts.values() if isinstance(v, tuple))
        return [{k: v[i] if isinstance(v, tuple) else v for k, v in parts.items()}
                for i in range(count)]
    parts = [v.split(size) for v in batch]
    return [tuple(p[i] for p in parts) for i in range(len(parts[0]))]


def call(encoder, batch):
    if isinstance(batch, torch.Tensor):
        return encoder(batch)
    return encoder(**batch) if isinstance(batch, dict) else encoder(*batch)


def reference(loss, pairs, size, seed, keywords=None, pair_keywords=None):
    """Full-batch autodiff: one graph over every mini-batch, embedded in the same order."""
    torch.manual_seed(seed)
    embed = [torch.cat([call(enc, mb) for mb in split(batch, size)]) for enc, batch in pairs]
    kw = {n: torch.cat([call(enc, mb) for mb in split(batch, size)])
          for n, (enc, batch) in (pair_keywords or {}).items()}
    value = loss(*embed, **kw, **(keywords or {}))
    value.backward()
    return value.detach()


def grads(*modules):
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(torch.zeros_like(p) if p.grad is None else p.grad.clone())
    return out


def zero(*modules):
    for m in modules:
        m.zero_grad(set_to_none=True)


def assert_same(got, want, rtol=RTOL):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        scale = b.abs().max().clamp_min(1e-300)
        assert ((a - b).abs().max() / scale).item() <= rtol, ((a - b).abs().max() / scale)


def compare(loss, pairs, size, *modules, keywords=None, pair_keywords=None, seed=7):
    """cached_loss vs the reference: same loss value, same gradients, same RNG state after."""
    zero(*modules)
    torch.manual_seed(seed)
    value = tfree_torch.cached_loss(loss, *pairs, mini_batch_size=size,
                                    **(keywords or {}), **(pair_keywords or {}))
    got, rng = grads(*modules), torch.get_rng_state()
    zero(*modules)
    want_value = reference(loss, pairs, size, seed, keywords, pair_keywords)
    assert torch.equal(rng, torch.get_rng_state())  # the replay consumed no random numbers
    torch.testing.assert_close(value, want_value, rtol=RTOL, atol=0)
    assert not value.requires_grad
    assert_same(got, grads(*modules))
    return got


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("size", [1, 4, 5, 13, 64])
def test_same_encoder_both_sides(size):
    mlp = MLP()
    loss = functools.partial(tfree_torch.info_nce, symmetric=True)
    compare(loss, [(mlp, data(13, D_IN, seed=1)), (mlp, data(13, D_IN, seed=2))], size, mlp)


def test_dropout_is_active_and_replayed():
    """Guard against a vacuous pass: with dropout, another seed changes the gradient, and a
    replay with fresh random numbers would not match the reference."""
    mlp = MLP(p=0.3)
    q, k = data(12, D_IN, seed=1), data(12, D_IN, seed=2)
    a = compare(tfree_torch.info_nce, [(mlp, q), (mlp, k)], 4, mlp, seed=1)
    b = compare(tfree_torch.info_nce, [(mlp, q), (mlp, k)], 4, mlp, seed=2)
    assert (a[0] - b[0]).abs().max() > 1e-3


def test_two_towers_and_tiled_loss():
    image, text = MLP(3), MLP(4)
    loss = functools.partial(tfree_torch.info_nce, symmetric=True, chunk_size=3)
    compare(loss, [(image, data(11, D_IN, seed=1)), (text, data(11, D_IN, seed=2))], 4,
            image, text)


def test_nt_xent_and_sup_con_with_labels():
    mlp = MLP()
    compare(tfree_torch.nt_xent, [(mlp, data(10, D_IN, seed=1)), (mlp, data(10, D_IN, seed=2))],
            3, mlp)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3])
    compare(tfree_torch.sup_con, [(mlp, data(9, D_IN, seed=3))], 4, mlp,
            keywords={"labels": labels})
    compare(functools.partial(tfree_torch.info_nce, symmetric=True),
            [(mlp, data(9, D_IN, seed=4)), (mlp, data(9, D_IN, seed=5))], 2, mlp,
            keywords={"labels": labels, "where": labels != 3})


def test_per_row_negatives_encoded_as_a_keyword():
    """``negatives=(encoder, (N, H, ...))``: an encoder output ``(n, H, D)`` per mini-batch,
    split and concatenated along dim 0 (the layout per-row hard negatives use)."""
    mlp = MLP()
    compare(tfree_torch.info_nce, [(mlp, data(10, D_IN, seed=1)), (mlp, data(10, D_IN, seed=2))],
            4, mlp, pair_keywords={"negatives": (mlp, data(10, 3, D_IN, seed=3))})


def test_hard_negatives_keyword_of_a_fake_retrieval_loss():
    """``hard_negatives=`` of the retrieval layout being added to the library, through a
    stand-in loss with that keyword: in-batch keys plus each query's own negatives."""

    def retrieval(query, key, *, hard_negatives, weight=1.0):
        assert hard_negatives.shape[:2] == (query.shape[0], 2)
        return tfree_torch.info_nce(query, key) + weight * tfree_torch.info_nce(
            query, key, negatives=hard_negatives)

    mlp = MLP()
    compare(retrieval, [(mlp, data(9, D_IN, seed=1)), (mlp, data(9, D_IN, seed=2))], 4, mlp,
            keywords={"weight": 0.5},
            pair_keywords={"hard_negatives": (mlp, data(9, 2, D_IN, seed=3))})


def test_tokenizer_dict_and_tuple_batches():
    enc = DictEncoder()
    batch = {**tokens(11, seed=1), "scale": 2.0}  # a non-tensor value reaches every call
    compare(tfree_torch.info_nce, [(enc, batch), (enc, tokens(11, seed=2))], 4, enc)
    ids = tokens(11, seed=3)
    compare(tfree_torch.info_nce, [(enc, (ids["input_ids"], ids["attention_mask"])),
                                   (enc, tokens(11, seed=4))], 5, enc)


def test_a_callable_encoder_and_a_frozen_one():
    mlp, frozen = MLP(1), MLP(2, p=0.0)
    frozen.requires_grad_(False)
    compare(tfree_torch.info_nce, [(lambda x: mlp(x) * 2, data(8, D_IN, seed=1)),
                                   (frozen, data(8, D_IN, seed=2))], 3, mlp)
    assert all(p.grad is None for p in frozen.parameters())


def test_no_dropout_equals_one_forward_of_the_whole_batch():
    mlp = MLP(p=0.0)
    q, k = data(16, D_IN, seed=1), data(16, D_IN, seed=2)
    tfree_torch.cached_loss(tfree_torch.info_nce, (mlp, q), (mlp, k), mini_batch_size=5)
    got = grads(mlp)
    zero(mlp)
    tfree_torch.info_nce(mlp(q), mlp(k)).backward()
    assert_same(got, grads(mlp))


def test_gradients_accumulate_like_backward():
    mlp = MLP(p=0.0)
    q, k = data(8, D_IN, seed=1), data(8, D_IN, seed=2)
    tfree_torch.cached_loss(tfree_torch.info_nce, (mlp, q), (mlp, k), mini_batch_size=3)
    once = grads(mlp)
    tfree_torch.cached_loss(tfree_torch.info_nce, (mlp, q), (mlp, k), mini_batch_size=3)
    assert_same(grads(mlp), [2 * g for g in once])


# --------------------------------------------------------------------------- accumulation


def test_cached_loss_accumulates_several_loader_steps():
    mlp = MLP()
    steps = [(data(5, D_IN, seed=s), data(5, D_IN, seed=10 + s),
              torch.tensor([s, s, 9, 9, s])) for s in range(3)]
    loss = functools.partial(tfree_torch.info_nce, symmetric=True)
    torch.manual_seed(3)
    cache = tfree_torch.CachedLoss(loss, mini_batch_size=2)
    for q, k, labels in steps:
        cache.add((mlp, q), (mlp, k), labels=labels, chunk_size=4)
    assert len(cache) == 3
    value = cache.backward()
    assert len(cache) == 0
    got = grads(mlp)
    zero(mlp)
    torch.manual_seed(3)
    embed = [[], []]
    for q, k, _ in steps:
        for side, x in enumerate((q, k)):
            embed[side] += [mlp(mb) for mb in x.split(2)]
    labels = torch.cat([s[2] for s in steps])
    want = loss(torch.cat(embed[0]), torch.cat(embed[1]), labels=labels, chunk_size=4)
    want.backward()
    torch.testing.assert_close(value, want.detach(), rtol=RTOL, atol=0)
    assert_same(got, grads(mlp))


def test_cache_structure_must_not_change_between_steps():
    mlp = MLP()
    cache = tfree_torch.CachedLoss(tfree_torch.info_nce, mini_batch_size=2)
    cache.add((mlp, data(4, D_IN)), (mlp, data(4, D_IN)), symmetric=True)
    with pytest.raises(ValueError, match="positional pairs"):
        cache.add((mlp, data(4, D_IN)))
    with pytest.raises(ValueError, match="keywords"):
        cache.add((mlp, data(4, D_IN)), (mlp, data(4, D_IN)))
    with pytest.raises(ValueError, match="symmetric was True in the first add"):
        cache.add((mlp, data(4, D_IN)), (mlp, data(4, D_IN)), symmetric=False)
    assert len(cache) == 1  # a rejected add() keeps nothing
    cache.backward()
    with pytest.raises(RuntimeError, match="before any add"):
        cache.backward()


# --------------------------------------------------------------------------- autocast, scaler


class Recorder(torch.nn.Module):
    """Records, for each call, whether autocast was on and the output dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(D_IN, D)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x):
        out = self.lin(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def test_autocast_state_of_each_step_is_replayed():
    enc = Recorder()
    q, k = torch.randn(6, D_IN), torch.randn(6, D_IN)
    cache = tfree_torch.CachedLoss(tfree_torch.info_nce, mini_batch_size=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache.add((enc, q), (enc, k))
    first = list(enc.seen)
    assert first == [(True, torch.bfloat16)] * 4
    cache.backward()  # outside autocast: the replay still runs in bfloat16
    assert enc.seen[4:] == first
    enc.seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tfree_torch.cached_loss(tfree_torch.info_nce, (enc, q), (enc, k), mini_batch_size=6)
    assert enc.seen == [(True, torch.bfloat16)] * 4
    enc.seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        tfree_torch.cached_loss(tfree_torch.info_nce, (enc, q), (enc, k), mini_batch_size=6)
    assert enc.seen == [(False, torch.float32)] * 4


def test_autocast_gradients_match_autodiff_under_autocast():
    """bfloat16 autocast with dropout. Without autocast's weight-cast cache (a cached cast
    would sum every mini-batch's weight gradient in bfloat16 before the float32 weight, the
    replay sums them in float32), both sum the same bfloat16 products in float32."""
    enc = torch.nn.Sequential(torch.nn.Linear(D_IN, 16), torch.nn.Dropout(0.2),
                              torch.nn.Linear(16, D))
    q, k = torch.randn(12, D_IN), torch.randn(12, D_IN)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16,
                                 cache_enabled=False)
    torch.manual_seed(0)
    with autocast():
        tfree_torch.cached_loss(tfree_torch.info_nce, (enc, q), (enc, k), mini_batch_size=4)
    got = grads(enc)
    zero(enc)
    with autocast():
        reference(tfree_torch.info_nce, [(enc, q), (enc, k)], 4, 0)
    assert_same(got, grads(enc), rtol=1e-6)


def test_grad_scaler():
    mlp = MLP()
    q, k = data(8, D_IN, seed=1), data(8, D_IN, seed=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    torch.manual_seed(5)
    value = tfree_torch.cached_loss(tfree_torch.info_nce, (mlp, q), (mlp, k), mini_batch_size=3,
                                    scaler=scaler)
    got = grads(mlp)
    zero(mlp)
    want = reference(tfree_torch.info_nce, [(mlp, q), (mlp, k)], 3, 5)
    torch.testing.assert_close(value, want, rtol=RTOL, atol=0)  # unscaled
    assert_same(got, [1024.0 * g for g in grads(mlp)])
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1)
    for p, g in zip(mlp.parameters(), got, strict=True):
        p.grad = g.clone()
    scaler.step(optimizer)  # unscales; finite gradients: the step is taken
    scaler.update()


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    mlp, x = MLP(), data(4, D_IN)
    cached = tfree_torch.cached_loss
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ValueError, match=f"mini_batch_size must be a positive int.*{bad!r}"):
            cached(tfree_torch.info_nce, (mlp, x), (mlp, x), mini_batch_size=bad)
    with pytest.raises(TypeError, match=r"encoded\[1\] must be a pair \(encoder, batch\), got "
                                        r"Tensor"):
        cached(tfree_torch.info_nce, (mlp, x), x, mini_batch_size=2)
    with pytest.raises(TypeError, match=r"encoded\[0\] must be a pair.*tuple of length 3"):
        cached(tfree_torch.info_nce, (mlp, x, x), mini_batch_size=2)
    with pytest.raises(TypeError, match=r"encoded\[0\]: the encoder .* got Tensor"):
        cached(tfree_torch.info_nce, (x, x), (mlp, x), mini_batch_size=2)
    ids = tokens(4)
    ids["attention_mask"] = ids["attention_mask"][:3]
    with pytest.raises(ValueError, match=r"encoded\[1\]: the batch's tensors have different "
                                         r"lengths.*'input_ids'\] 4.*'attention_mask'\] 3"):
        cached(tfree_torch.info_nce, (mlp, x), (DictEncoder(), ids), mini_batch_size=2)
    with pytest.raises(TypeError, match=r"encoded\[0\]: the batch must be a tensor, a mapping"):
        cached(tfree_torch.info_nce, (mlp, 3.0), mini_batch_size=2)
    with pytest.raises(TypeError, match=r"encoded\[1\]: the encoder returned dict"):
        cached(tfree_torch.info_nce, (mlp, x), (lambda t: {"e": mlp(t)}, x), mini_batch_size=2)
    with pytest.raises(ValueError, match=r"negatives: the encoder returned shape \(8,\)"):
        cached(tfree_torch.info_nce, (mlp, x), (mlp, x), mini_batch_size=2,
               negatives=(lambda t: mlp(t).sum(0), x))
    with pytest.raises(ValueError, match="loss must return a scalar"):
        cached(functools.partial(tfree_torch.info_nce, reduction="none"), (mlp, x), (mlp, x),
               mini_batch_size=2)
    with pytest.raises(TypeError, match="loss must be a callable"):
        cached("info_nce", (mlp, x), mini_batch_size=2)
    with pytest.raises(ValueError, match=r"encoded\[0\]: the batch is empty"):
        cached(tfree_torch.info_nce, (mlp, x[:0]), (mlp, x[:0]), mini_batch_size=2)
    with pytest.raises(TypeError, match=r"scaler must be a torch\.amp\.GradScaler"):
        cached(tfree_torch.info_nce, (mlp, x), (mlp, x), mini_batch_size=2, scaler=1.0)


# --------------------------------------------------------------------------- a transformer


def test_tiny_bert_with_dropout():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, hidden_dropout_prob=0.2,
                                     attention_probs_dropout_prob=0.2)
    torch.manual_seed(0)
    bert = transformers.BertModel(config).double().train()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state[:, 0]

    enc = Pooled()
    g = torch.Generator().manual_seed(1)

    def batch(n):
        mask = torch.ones(n, 7, dtype=torch.long)
        mask[: n // 2, 5:] = 0
        return {"input_ids": torch.randint(0, 50, (n, 7), generator=g), "attention_mask": mask}

    compare(functools.partial(tfree_torch.info_nce, symmetric=True),
            [(enc, batch(10)), (enc, batch(10))], 4, enc)


# --------------------------------------------------------------------------- DDP, 2 ranks

WORLD, ROWS, MB = 2, 5, 2


def ddp_data(rank: int):
    return data(ROWS, D_IN, seed=100 + rank), data(ROWS, D_IN, seed=200 + rank)


def _worker(rank: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=WORLD)
    mlp = MLP()
    model = torch.nn.parallel.DistributedDataParallel(mlp)
    calls = []

    def counting(state, bucket):
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(state, bucket)

    model.register_comm_hook(dist.group.WORLD, counting)
    q, k = ddp_data(rank)
    torch.manual_seed(1000 + rank)
    loss = functools.partial(tfree_torch.info_nce, symmetric=True, group=dist.group.WORLD)
    value = tfree_torch.cached_loss(loss, (model, q), (model, k), mini_batch_size=MB)
    torch.save({"loss": value, "grads": grads(mlp), "allreduces": len(calls)},
               f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_two_gloo_ranks_match_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    # one process: each rank's mini-batches embedded from that rank's seed, concatenated
    mlp = MLP()
    sides = [[], []]
    for rank in range(WORLD):
        torch.manual_seed(1000 + rank)
        for side, x in enumerate(ddp_data(rank)):
            sides[side].append(torch.cat([mlp(mb) for mb in x.split(MB)]))
    loss = tfree_torch.info_nce(torch.cat(sides[0]), torch.cat(sides[1]), symmetric=True)
    loss.backward()
    want = grads(mlp)
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), loss.detach(),
                               rtol=RTOL, atol=0)
    for r in ranks:
        assert_same(r["grads"], want)
        assert r["allreduces"] == 1  # no_sync for every re-encode but the last: one bucket


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(sys.argv[1],), nprocs=WORLD, join=True)
