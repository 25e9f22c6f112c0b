"""tfree_torch.open_clip.TemperatureFreeClipLoss against open_clip's ClipLoss.

Two references under ``logit_map="temperature"``:

- a transcription of ``ClipLoss`` (open_clip 3.3.0, ``open_clip/loss.py``: logits
  ``logit_scale·x·yᵀ`` (+ ``logit_bias``), ``(CE(logits, arange) + CE(logitsᵀ, arange))/2``;
  sharded with ``local_loss``: the rank's rows against the gathered ones, labels offset by
  ``N·rank``), which runs wherever torch does;
- open_clip's own ``ClipLoss`` where ``open-clip-torch`` is installed (the ``open-clip``
  extra, not in ``all``: see ``HOST_MISSING``). ``open_clip/__init__`` imports torchvision;
  ``open_clip/loss.py`` imports only torch, so where torchvision cannot be imported the test
  executes that installed file itself (unchanged) rather than skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import textwrap
import warnings
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from ranks import two_ranks  # noqa: E402
from tfree_torch.open_clip import TemperatureFreeClipLoss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WHY = ("the open-clip extra is not in 'all': open-clip-torch requires torchvision, and "
       "PyPI's torchvision for the pinned torch 2.13.0 (0.28.0) is linked against the CUDA "
       "build of torch, so beside the pinned CPU build it fails to import ('operator "
       "torchvision::nms does not exist') and makes transformers' BertModel import fail")
HOST_MISSING = f"open-clip-torch is not installed; {WHY}"


def host_loss_module() -> ModuleType | None:
    """open_clip's loss module: ``open_clip.loss``, or, where ``import open_clip`` fails
    (torchvision), the installed ``open_clip/loss.py`` executed on its own."""
    try:
        return importlib.import_module("open_clip.loss")
    except ModuleNotFoundError as error:
        if error.name == "open_clip":
            return None
    except Exception:
        pass
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    file_spec = importlib.util.spec_from_file_location("_open_clip_loss_file", path)
    assert file_spec is not None
    assert file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def clip_loss_transcribed(image, text, logit_scale, logit_bias=None):
    """``ClipLoss.forward`` on one device (world_size 1)."""
    logits_per_image = logit_scale * image @ text.T
    logits_per_text = logit_scale * text @ image.T
    if logit_bias is not None:
        logits_per_image = logits_per_image + logit_bias
        logits_per_text = logits_per_text + logit_bias
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits_per_image, labels)
            + F.cross_entropy(logits_per_text, labels)) / 2


def features(n: int = 12, d: int = 16, seed: int = 0):
    """The towers' outputs before open_clip's models normalise them: float64 leaves."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=g, dtype=torch.float64)
    text = image + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return image.requires_grad_(), text.requires_grad_()


def value_and_grads(fn, image, text):
    """``fn`` on the normalised features (as open_clip's ``encode_*(normalize=True)`` give
    them), the gradient with respect to the towers' outputs."""
    image.grad = text.grad = None
    loss = fn(F.normalize(image, dim=1), F.normalize(text, dim=1))
    loss.backward()
    return float(loss.detach()), image.grad.clone(), text.grad.clone()


def assert_same(a, b, rtol=1e-12):
    assert a[0] == pytest.approx(b[0], rel=rtol)
    torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(a[2], b[2], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("bias", [None, -3.5])
def test_equals_the_transcription(bias):
    image, text = features()
    scale = torch.tensor(14.3, dtype=torch.float64)
    ours = TemperatureFreeClipLoss(logit_map="temperature")
    got = value_and_grads(lambda i, t: ours(i, t, scale, bias), image, text)
    expected = value_and_grads(lambda i, t: clip_loss_transcribed(i, t, scale, bias),
                               image, text)
    assert_same(got, expected)


def test_equals_open_clips_clip_loss():
    host = host_loss_module()
    if host is None:
        pytest.skip(HOST_MISSING)
    image, text = features(seed=1)
    scale = torch.tensor(14.3, dtype=torch.float64)
    expected = value_and_grads(lambda i, t: host.ClipLoss()(i, t, scale), image, text)
    got = value_and_grads(
        lambda i, t: TemperatureFreeClipLoss(logit_map="temperature")(i, t, scale), image, text)
    print(f"ClipLoss {expected[0]!r} tfree {got[0]!r}")
    assert_same(got, expected)
    bias = torch.tensor(-2.0, dtype=torch.float64)
    image, text = (F.normalize(x.detach(), dim=1) for x in (image, text))
    host_dict = host.ClipLoss()(image, text, scale, bias, output_dict=True)
    ours_dict = TemperatureFreeClipLoss(logit_map="temperature")(image, text, scale, bias,
                                                                 output_dict=True)
    assert ours_dict.keys() == host_dict.keys() == {"contrastive_loss"}
    assert float(ours_dict["contrastive_loss"]) == pytest.approx(
        float(host_dict["contrastive_loss"]), rel=1e-12)


def test_the_temperature_free_loss():
    """The default map: ``info_nce(image, text, symmetric=True)``, 2·atanh(cos) logits
    (a float64 transcription), whatever logit_scale is passed."""
    image, text = features(seed=2)

    def reference(i, t):
        s = F.normalize(i, dim=1) @ F.normalize(t, dim=1).T
        logits = 2 * torch.atanh(s.clamp(-1 + 1e-6, 1 - 1e-6))
        labels = torch.arange(i.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    loss = TemperatureFreeClipLoss()
    got = value_and_grads(lambda i, t: loss(i, t, torch.tensor(100.0)), image, text)
    assert_same(got, value_and_grads(reference, image, text), rtol=1e-10)


def test_logit_scale_gets_no_gradient_and_a_warning():
    image, text = features(seed=3)
    logit_scale = torch.nn.Parameter(torch.tensor(2.659))  # open_clip: log(1/0.07)
    loss = TemperatureFreeClipLoss()
    with pytest.warns(UserWarning, match=r"logit_scale.requires_grad_\(False\)"):
        out = loss(image, text, logit_scale.exp(), output_dict=True)
    out["contrastive_loss"].backward()
    assert logit_scale.grad is None
    logit_scale.requires_grad_(False)  # the documented freeze: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TemperatureFreeClipLoss()(image, text, logit_scale.exp())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="use_horovod=True is not supported"):
        TemperatureFreeClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match="rank must be < world_size"):
        TemperatureFreeClipLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="temperature is only used with logit_map"):
        TemperatureFreeClipLoss(temperature=0.07)
    image, text = (F.normalize(x.detach(), dim=1) for x in features())
    with pytest.raises(ValueError, match="needs logit_scale"):
        TemperatureFreeClipLoss(logit_map="temperature")(image, text)
    with pytest.raises(RuntimeError, match=r"world_size=2 but torch\.distributed"):
        TemperatureFreeClipLoss(rank=0, world_size=2)(image, text)
    fixed = TemperatureFreeClipLoss(logit_map="temperature", temperature=0.5)
    assert fixed(image, text, 100.0).item() == pytest.approx(
        clip_loss_transcribed(image, text, 2.0).item(), rel=1e-12)


def test_a_training_step_of_an_open_clip_model():
    """open_clip's own CLIP (a tiny config, no weights), its forward's dict into the loss,
    logit_scale frozen as documented."""
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip(HOST_MISSING)
    try:
        import open_clip
    except Exception as error:
        pytest.skip(f"open_clip is installed but does not import ({type(error).__name__}: "
                    f"{error}): its models need torchvision; {WHY}")
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                           image_size=16),
        text_cfg=open_clip.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2,
                                       layers=1),
        output_dict=True)  # as open_clip's training script creates it
    model.logit_scale.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, tokens = torch.randn(6, 3, 16, 16), torch.randint(0, 64, (6, 8))
    loss_fn = TemperatureFreeClipLoss()
    before = model.visual.conv1.weight.detach().clone()
    losses = loss_fn(**model(images, tokens), output_dict=True)
    total = sum(losses.values())
    total.backward()
    optimizer.step()
    assert torch.isfinite(total)
    assert not torch.equal(model.visual.conv1.weight, before)
    assert model.logit_scale.grad is None


WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    import torch.nn.functional as F
    sys.path.insert(0, {tests!r})
    from test_integration_open_clip import features, host_loss_module
    from tfree_torch.open_clip import TemperatureFreeClipLoss
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            init_method="file://{store}")
    scale = torch.tensor(11.0, dtype=torch.float64)
    host = host_loss_module()
    runs = {{
        "ours_local": TemperatureFreeClipLoss(True, True, rank=rank, world_size=2,
                                              logit_map="temperature"),
        "ours_global": TemperatureFreeClipLoss(False, False, rank=rank, world_size=2,
                                               logit_map="temperature"),
        "free": TemperatureFreeClipLoss(rank=rank, world_size=2),
    }}
    if host is not None:
        runs["host_local"] = host.ClipLoss(True, True, rank=rank, world_size=2)
        runs["host_global"] = host.ClipLoss(False, True, rank=rank, world_size=2)
    out = {{}}
    for name, fn in runs.items():
        image, text = features(seed=7)                     # the global batch, 12 rows
        image.grad = text.grad = None
        mine = slice(6 * rank, 6 * rank + 6)
        loss = fn(F.normalize(image[mine], dim=1), F.normalize(text[mine], dim=1), scale)
        loss.backward()
        values = [torch.zeros((), dtype=torch.float64) for _ in range(2)]
        dist.all_gather(values, loss.detach().reshape(()))
        for g in (image.grad, text.grad):                  # DDP's averaging
            dist.all_reduce(g)
            g /= 2
        out[name] = ([float(v) for v in values], image.grad, text.grad)
    if rank == 0:
        torch.save(out, {result!r})
    dist.barrier()  # no rank tears the group down while another still talks to it
    dist.destroy_process_group()
""")


def test_sharded_on_two_ranks(tmp_path):
    """Two Gloo ranks of 6 rows: the global batch's loss and gradient; under the
    temperature map ClipLoss's values (local_loss True / False) and its gradient with
    gather_with_grad=True."""
    result = two_ranks(WORKER, tmp_path)
    out = torch.load(result)
    image, text = features(seed=7)
    scale = torch.tensor(11.0, dtype=torch.float64)
    whole = value_and_grads(lambda i, t: clip_loss_transcribed(i, t, scale), image, text)
    for name in ("ours_local", "ours_global"):
        values, gi, gt = out[name]
        mean = sum(values) / 2
        assert mean == pytest.approx(whole[0], rel=1e-12)
        torch.testing.assert_close(gi, whole[1], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(gt, whole[2], rtol=1e-10, atol=1e-13)
    # local_loss=False: the global loss on every rank, as ClipLoss's
    assert out["ours_global"][0] == pytest.approx([whole[0]] * 2, rel=1e-12)
    free = value_and_grads(lambda i, t: TemperatureFreeClipLoss()(i, t), image, text)
    assert sum(out["free"][0]) / 2 == pytest.approx(free[0], rel=1e-12)
    torch.testing.assert_close(out["free"][1], free[1], rtol=1e-10, atol=1e-13)
    if "host_local" not in out:
        pytest.skip(f"compared with the transcription only: {HOST_MISSING}")
    for ours, host in (("ours_local", "host_local"), ("ours_global", "host_global")):
        print(f"2 ranks {host}: ClipLoss {out[host][0]} tfree {out[ours][0]}")
        assert out[ours][0] == pytest.approx(out[host][0], rel=1e-12)
        torch.testing.assert_close(out[ours][1], out[host][1], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(out[ours][2], out[host][2], rtol=1e-10, atol=1e-13)
