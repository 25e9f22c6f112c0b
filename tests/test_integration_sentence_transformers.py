"""tfree_torch.sentence_transformers against sentence-transformers itself (the extra).

A tiny BERT is built here from a BertConfig and a vocabulary file (no download). The
drop-ins under ``logit_map="temperature"`` give ``MultipleNegativesRankingLoss``'s and
``CachedMultipleNegativesRankingLoss``'s own values and parameter gradients (float64, eval
mode); the temperature-free losses train in ``SentenceTransformerTrainer``; the cached loss
gives the full-batch gradient; ``gather_across_devices`` runs on two Gloo ranks.
"""

from __future__ import annotations

import itertools
import os
import random
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers", reason="needs the sentence-transformers extra")
pytest.importorskip("datasets", reason="SentenceTransformerTrainer needs datasets")
pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs accelerate")

import transformers  # noqa: E402
from ranks import two_ranks  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer import losses, modules  # noqa: E402
from tfree_torch.sentence_transformers import (  # noqa: E402
    TemperatureFreeCachedMNRL,
    TemperatureFreeMNRL,
)

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 32
WORDS = ["".join(w) for w in itertools.product("abcdef", repeat=3)]


def build_model(folder: Path) -> SentenceTransformer:
    """A 2-layer BERT (hidden 32) over a vocabulary written here, mean pooling."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizer(vocab=str(folder / "vocab.txt"))  # transformers 5
    assert len(tokenizer) == 5 + len(WORDS), "the vocabulary file was not read"
    config = transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=HIDDEN,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=2 * HIDDEN, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = modules.Transformer(str(folder), max_seq_length=24)
    return SentenceTransformer(modules=[transformer, modules.Pooling(HIDDEN, "mean")],
                               device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_bert")
    build_model(path)
    return path


def fresh(folder: Path, dtype: torch.dtype = torch.float64) -> SentenceTransformer:
    model = SentenceTransformer(modules=[modules.Transformer(str(folder), max_seq_length=24),
                                         modules.Pooling(HIDDEN, "mean")], device="cpu")
    return model.to(dtype)


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(n)]


def columns(model: SentenceTransformer, n: int, negatives: int, seed: int = 0) -> list[dict]:
    """Tokenized columns (anchor, positive, negative_1..k), each padded on its own."""
    return [dict(model.preprocess(texts(n, seed + 10 * c))) for c in range(2 + negatives)]


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def value_and_grads(model, loss_fn, features) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn([dict(f) for f in features], None)
    loss.backward()
    return float(loss.detach()), grads(model)


def assert_grads_close(a: dict, b: dict, rtol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=1e-12, msg=name)


SETTINGS = [  # (directions, partition_mode, number of hard-negative columns)
    (("query_to_doc",), "joint", 0),
    (("query_to_doc",), "joint", 2),
    (("query_to_doc", "doc_to_query"), "per_direction", 0),
    (("query_to_doc", "doc_to_query"), "per_direction", 1),
]


@pytest.mark.parametrize(("directions", "mode", "k"), SETTINGS)
def test_equals_the_hosts_mnrl(folder, directions, mode, k):
    model = fresh(folder).eval()
    features = columns(model, 6, k)
    scale = 17.0
    host = losses.MultipleNegativesRankingLoss(model, scale=scale, directions=directions,
                                               partition_mode=mode)
    ours = TemperatureFreeMNRL(model, logit_map="temperature", scale=scale,
                               directions=directions, partition_mode=mode)
    v_host, g_host = value_and_grads(model, host, features)
    v_ours, g_ours = value_and_grads(model, ours, features)
    print(f"MNRL {directions} k={k}: host {v_host!r} tfree {v_ours!r}")
    assert v_ours == pytest.approx(v_host, rel=1e-12, abs=1e-12)
    assert_grads_close(g_ours, g_host)
    # the temperature-free loss is another number on the same batch
    free = TemperatureFreeMNRL(model, directions=directions, partition_mode=mode)
    with torch.no_grad():
        assert abs(float(free([dict(f) for f in features], None)) - v_host) > 1e-3


@pytest.mark.parametrize(("directions", "mode", "k"), SETTINGS[1:3])
def test_cached_equals_the_hosts_cached_mnrl(folder, directions, mode, k):
    model = fresh(folder).eval()
    features = columns(model, 10, k, seed=3)
    host = losses.CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=4,
                                                     directions=directions,
                                                     partition_mode=mode)
    ours = TemperatureFreeCachedMNRL(model, mini_batch_size=4, logit_map="temperature",
                                     directions=directions, partition_mode=mode)
    v_host, g_host = value_and_grads(model, host, features)
    v_ours, g_ours = value_and_grads(model, ours, features)
    print(f"CachedMNRL {directions} k={k}: host {v_host!r} tfree {v_ours!r}")
    assert v_ours == pytest.approx(v_host, rel=1e-12)
    assert_grads_close(g_ours, g_host)


def test_cached_gives_the_full_batch_gradient(folder):
    """The temperature-free cached loss equals the uncached one (value and .grad), also
    with the loss scaled before the backward (gradient accumulation / GradScaler)."""
    model = fresh(folder).eval()
    features = columns(model, 9, 1, seed=5)
    full = TemperatureFreeMNRL(model, directions=("query_to_doc", "doc_to_query"),
                               partition_mode="per_direction")
    cached = TemperatureFreeCachedMNRL(model, mini_batch_size=2,
                                       directions=("query_to_doc", "doc_to_query"),
                                       partition_mode="per_direction")
    v_full, g_full = value_and_grads(model, full, features)
    v_cached, g_cached = value_and_grads(model, cached, features)
    assert v_cached == pytest.approx(v_full, rel=1e-12)
    assert_grads_close(g_cached, g_full)
    model.zero_grad(set_to_none=True)
    (cached([dict(f) for f in features], None) * 0.25).backward()
    assert_grads_close(grads(model), {n: 0.25 * g for n, g in g_full.items()})
    with torch.no_grad():  # evaluation: the value, no hook
        assert float(cached([dict(f) for f in features], None)) == pytest.approx(v_full,
                                                                                 rel=1e-12)


def test_cached_replays_dropout(folder):
    """In train mode (dropout on) the cached loss's .grad is that of the same forward with
    a graph: the replay draws the first pass's masks."""
    model = fresh(folder).train()
    features = columns(model, 8, 0, seed=7)
    cached = TemperatureFreeCachedMNRL(model, mini_batch_size=8)
    torch.manual_seed(11)
    v_cached, g_cached = value_and_grads(model, cached, features)

    def by_column(feats, labels):  # the cache's order: one forward per column
        return cached.loss_from_embeddings(*(model(f)["sentence_embedding"] for f in feats))

    torch.manual_seed(11)
    v_plain, g_plain = value_and_grads(model, by_column, features)
    assert v_cached == pytest.approx(v_plain, rel=1e-12)
    assert_grads_close(g_cached, g_plain)


def test_deduplicate_drops_copies_of_the_positive(folder):
    model = fresh(folder).eval()
    anchors, positives = texts(5, 1), texts(5, 2)
    negatives = texts(5, 3)
    positives[3] = positives[1]  # a duplicate document in the batch
    negatives[0] = positives[2]  # a mined negative that is another row's positive
    features = [dict(model.preprocess(c)) for c in (anchors, positives, negatives)]
    loss = TemperatureFreeMNRL(model, deduplicate=True)
    with torch.no_grad():
        value = loss([dict(f) for f in features], None)
        q, k, h = (model(dict(f))["sentence_embedding"] for f in features)
        ids = {t: i for i, t in enumerate(dict.fromkeys(positives + negatives))}
        key_ids = torch.tensor([ids[t] for t in positives])
        hard_ids = torch.tensor([[ids[t]] for t in negatives])
        import tfree_torch

        expected = tfree_torch.info_nce(q, k, hard_negatives=h[:, None], key_ids=key_ids,
                                        hard_negative_ids=hard_ids)
        kept = TemperatureFreeMNRL(model)([dict(f) for f in features], None)
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    assert float(value) != pytest.approx(float(kept), rel=1e-6)


def test_host_interface_and_errors(folder):
    model = fresh(folder)
    loss = TemperatureFreeMNRL(model, directions=("query_to_doc", "doc_to_query"),
                               partition_mode="per_direction", gather_across_devices=True)
    assert loss.model is model
    assert loss.get_config_dict() == {
        "logit_map": "arctanh", "directions": ("query_to_doc", "doc_to_query"),
        "partition_mode": "per_direction", "gather_across_devices": True,
        "deduplicate": False}
    assert "2501.17683" in loss.citation
    assert loss.temperature is None
    t = TemperatureFreeCachedMNRL(model, logit_map="temperature", scale=50.0, mini_batch_size=8)
    assert t.get_config_dict()["scale"] == 50.0
    assert t.get_config_dict()["mini_batch_size"] == 8
    assert t.temperature == pytest.approx(0.02)
    with pytest.raises(ValueError, match="scale is only used with logit_map='temperature'"):
        TemperatureFreeMNRL(model, scale=20.0)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        TemperatureFreeMNRL(model, logit_map="temperature", scale=0)
    with pytest.raises(ValueError, match=r"directions: \['query_to_query'\]"):
        TemperatureFreeMNRL(model, directions=("query_to_doc", "query_to_query"))
    with pytest.raises(ValueError, match="partition_mode='joint' with 'doc_to_query'"):
        TemperatureFreeMNRL(model, directions=("query_to_doc", "doc_to_query"))
    with pytest.raises(ValueError, match="logit_map must be"):
        TemperatureFreeMNRL(model, logit_map="cosine")
    with pytest.raises(ValueError, match="mini_batch_size must be a positive int"):
        TemperatureFreeCachedMNRL(model, mini_batch_size=0)
    with pytest.raises(TypeError, match="gather_across_devices must be a bool"):
        TemperatureFreeMNRL(model, gather_across_devices=1)
    with pytest.raises(ValueError, match="at least 2 columns"):
        loss([dict(model.preprocess(["abc"]))], None)


STEPS = 6


@pytest.mark.parametrize("cached", [False, True], ids=["MNRL", "CachedMNRL"])
def test_trainer_fits(folder, tmp_path, cached):
    """SentenceTransformerTrainer takes the drop-in as its loss and fits one batch of 8
    (anchor, positive, negative) rows with it: every step sees the same rows, so the loss
    it logs goes down."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    model = fresh(folder, torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = Dataset.from_dict({"anchor": texts(8, 1), "positive": texts(8, 2),
                              "negative": texts(8, 3)})
    loss = (TemperatureFreeCachedMNRL(model, mini_batch_size=4) if cached
            else TemperatureFreeMNRL(model))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
        learning_rate=3e-3, warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, seed=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    result = trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"{type(loss).__name__}: losses {logged}")
    assert result.global_step == STEPS
    assert len(logged) == STEPS
    assert all(0 < v < 20 for v in logged)
    assert logged[-1] < logged[0] - 0.1, logged
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "no parameter moved"


WORKER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_integration_sentence_transformers import fresh, columns, grads
    from sentence_transformers.sentence_transformer import losses
    from tfree_torch.sentence_transformers import TemperatureFreeMNRL
    from pathlib import Path
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            init_method="file://{store}")
    model = fresh(Path({folder!r})).eval()
    every = columns(model, 8, 1, seed=21)             # the global batch, 8 rows
    mine = [{{k: v[4 * rank:4 * rank + 4] if torch.is_tensor(v) else v for k, v in f.items()}}
            for f in every]
    out = {{}}
    for name, loss_fn in (
            ("host", losses.MultipleNegativesRankingLoss(
                model, scale=20.0, gather_across_devices=True,
                directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")),
            ("ours", TemperatureFreeMNRL(
                model, logit_map="temperature", scale=20.0, gather_across_devices=True,
                directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")),
            ("free", TemperatureFreeMNRL(model, gather_across_devices=True))):
        model.zero_grad(set_to_none=True)
        loss = loss_fn([dict(f) for f in mine], None)
        loss.backward()
        value = loss.detach().clone()
        dist.all_reduce(value)
        g = grads(model)
        for t in g.values():
            dist.all_reduce(t)                        # DDP's averaging
            t /= 2
        out[name] = (float(value) / 2, g)
    if rank == 0:
        torch.save(out, {result!r})
    dist.barrier()  # no rank tears the group down while another still talks to it
    dist.destroy_process_group()
""")


def test_gather_across_devices_on_two_ranks(folder, tmp_path):
    """Two Gloo ranks of 4 rows each: the mean of the ranks' values and the DDP-averaged
    gradient are the host's (under the temperature map) and the global batch's."""
    result = two_ranks(WORKER, tmp_path, timeout=240, env={"HF_HUB_OFFLINE": "1"},
                       folder=str(folder))
    out = torch.load(result)
    (v_host, g_host), (v_ours, g_ours) = out["host"], out["ours"]
    print(f"2 ranks, symmetric with a hard negative: host {v_host!r} tfree {v_ours!r}")
    assert v_ours == pytest.approx(v_host, rel=1e-12)
    assert_grads_close(g_ours, g_host)
    # the temperature-free sharded loss is the single-process loss of the global batch
    model = fresh(folder).eval()
    v_free, g_free = value_and_grads(model, TemperatureFreeMNRL(model),
                                     columns(model, 8, 1, seed=21))
    assert out["free"][0] == pytest.approx(v_free, rel=1e-12)
    assert_grads_close(out["free"][1], g_free)
