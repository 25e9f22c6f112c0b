"""Data, augmentations, model, training loop and frozen-feature evaluation of the sweep.

Everything runs on the CPU in float32 with one thread per process. A run is identified by its
setting, its loss (``temperature=None``: temperature-free; a number: InfoNCE at that ``τ``)
and its seed. Runs with the same seed share the initial weights, the batch order, the
augmentations and the 10 % label subset, so losses are compared on paired runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import tfree_torch
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

SPLIT_SEED = 0
"""Seed of the stratified train/test split (the same for every run)."""
TEST_FRACTION = 0.3
LABEL_FRACTION = 0.1
"""Fraction of the training labels the low-label linear probe sees."""


@dataclass(frozen=True)
class Setting:
    """One training regime: which loss layout, batch size and budget."""

    name: str
    title: str
    layout: str  # "nt_xent" (self-supervised, SimCLR) or "sup_con" (supervised contrastive)
    batch_size: int
    epochs: int
    lr: float = 1e-3


@dataclass(frozen=True)
class Digits:
    """The digits split into a training part (contrastive training, probe fitting) and a
    held-out test part (all reported accuracies). Pixels are scaled to ``[0, 1]``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


@lru_cache(maxsize=1)
def digits() -> Digits:
    """scikit-learn's ``load_digits`` (1797 images, 8×8, 10 classes), stratified 70/30."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    parts = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    x_tr, x_te, y_tr, y_te = (torch.from_numpy(np.ascontiguousarray(p)) for p in parts)
    return Digits(x_tr, y_tr.long(), x_te, y_te.long())


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """One random view of each flattened 8×8 image in ``x`` ``(B, 64)``.

    A random affine warp (rotation ±15°, zoom 0.85–1.15, i.e. a random resized crop or
    pad, shear ±0.15, shift ±1 px), intensity jitter ×0.7–1.3, random erasing of a 2–4 px
    box (probability ½), then Gaussian noise (σ = 0.1). Pure torch; ``gen`` drives it all.
    """
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    img = x.view(b, 1, 8, 8)
    angle = uniform(-15.0, 15.0) * (math.pi / 180.0)
    scale, shear = uniform(0.85, 1.15), uniform(-0.15, 0.15)
    shift_x, shift_y = uniform(-0.25, 0.25), uniform(-0.25, 0.25)  # 1 px = 2/8 of the grid
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, [b, 1, 8, 8], align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img = img * uniform(0.7, 1.3).view(b, 1, 1, 1)

    rows, cols = torch.arange(8).view(1, 8, 1), torch.arange(8).view(1, 1, 8)
    h = torch.randint(2, 5, (b, 1, 1), generator=gen)
    w = torch.randint(2, 5, (b, 1, 1), generator=gen)
    top = (torch.rand(b, 1, 1, generator=gen) * (9 - h)).floor()
    left = (torch.rand(b, 1, 1, generator=gen) * (9 - w)).floor()
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    box &= torch.rand(b, 1, 1, generator=gen) < 0.5
    img = img.masked_fill(box.unsqueeze(1), 0.0)
    img = img + 0.1 * torch.randn(img.shape, generator=gen)
    return img.reshape(b, 64)


class Net(nn.Module):
    """Encoder MLP 64→256→128 (the features that are evaluated) and projection head
    128→128→64 (the embeddings the loss sees), as in SimCLR."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(),
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def loss_kwargs(temperature: float | None) -> dict[str, object]:
    """Keywords of ``tfree_torch``: the default temperature-free map, or InfoNCE at ``τ``."""
    if temperature is None:
        return {}
    return {"logit_map": "temperature", "temperature": temperature}


def train(setting: Setting, temperature: float | None, seed: int) -> tuple[Net, list[float]]:
    """Contrastive training of a fresh ``Net`` with Adam; returns it with the mean training
    loss of every epoch. Each step draws two augmented views of a batch of training images
    (``drop_last``); NT-Xent ignores the labels, SupCon uses them."""
    data = digits()
    torch.manual_seed(seed)
    model = Net()
    gen = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(model.parameters(), lr=setting.lr)
    kw = loss_kwargs(temperature)
    n, bs = len(data.x_train), setting.batch_size
    curve = []
    model.train()
    for _ in range(setting.epochs):
        perm = torch.randperm(n, generator=gen)
        losses = []
        for start in range(0, n - bs + 1, bs):
            idx = perm[start : start + bs]
            x = data.x_train[idx]
            z = model(torch.cat([augment(x, gen), augment(x, gen)]))
            z1, z2 = z[:bs], z[bs:]
            if setting.layout == "nt_xent":
                loss = tfree_torch.nt_xent(z1, z2, **kw)
            else:
                loss = tfree_torch.sup_con(torch.stack([z1, z2], 1), data.y_train[idx], **kw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curve.append(float(np.mean(losses)))
    model.eval()
    return model, curve


def linear_probe(f_train: Tensor, y_train: Tensor, f_test: Tensor, y_test: Tensor) -> float:
    """Test accuracy of a logistic regression on standardised frozen features."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(f_train.numpy(), y_train.numpy())
    return float(clf.score(f_test.numpy(), y_test.numpy()))


def knn(f_train: Tensor, y_train: Tensor, f_test: Tensor, y_test: Tensor, k: int = 5) -> float:
    """Test accuracy of a k-nearest-neighbour vote (cosine distance) on frozen features."""
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine")
    clf.fit(f_train.numpy(), y_train.numpy())
    return float(clf.score(f_test.numpy(), y_test.numpy()))


def alignment(z1: Tensor, z2: Tensor) -> float:
    """Wang & Isola (2020), α = 2: ``E ‖f(x) − f(x⁺)‖²`` over positive pairs (lower: closer)."""
    return float((F.normalize(z1) - F.normalize(z2)).pow(2).sum(1).mean())


def uniformity(z: Tensor) -> float:
    """Wang & Isola (2020), t = 2: ``log E exp(−2‖f(x) − f(y)‖²)`` over distinct pairs
    (lower: more uniform on the sphere; −4 is the limit for many points)."""
    return float(torch.pdist(F.normalize(z)).pow(2).mul(-2.0).exp().mean().log())


@torch.no_grad()
def evaluate(
    features: Callable[[Tensor], Tensor], embed: Callable[[Tensor], Tensor], seed: int
) -> dict[str, float]:
    """Frozen-feature metrics on the held-out split.

    ``features``: the representation the probes see (the encoder output); ``embed``: the
    space the loss shapes (the projection-head output), where alignment (two augmentations of
    each test image) and uniformity (un-augmented test images) are measured.
    """
    d = digits()
    f_tr, f_te = features(d.x_train), features(d.x_test)
    few, _ = train_test_split(
        np.arange(len(d.y_train)), train_size=LABEL_FRACTION, stratify=d.y_train.numpy(),
        random_state=seed,
    )
    few_t = torch.from_numpy(few)
    gen = torch.Generator().manual_seed(20_000 + seed)
    v1, v2 = augment(d.x_test, gen), augment(d.x_test, gen)
    return {
        "probe": linear_probe(f_tr, d.y_train, f_te, d.y_test),
        "probe_10": linear_probe(f_tr[few_t], d.y_train[few_t], f_te, d.y_test),
        "knn": knn(f_tr, d.y_train, f_te, d.y_test),
        "align": alignment(embed(v1), embed(v2)),
        "uniform": uniformity(embed(d.x_test)),
    }


def run(setting: Setting, temperature: float | None, seed: int) -> dict[str, object]:
    """Train and evaluate one run; the record that goes into the JSON."""
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    model, curve = train(setting, temperature, seed)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    metrics = evaluate(model.encoder, model, seed)
    return {"setting": setting.name, "temperature": temperature, "seed": seed,
            "metrics": metrics, "final_loss": curve[-1], "train_s": train_s,
            "train_cpu_s": train_cpu_s, "cpu_s": time.process_time() - c0, "curve": curve}


def run_reference(kind: str, seed: int) -> dict[str, object]:
    """The same metrics without contrastive training: ``"raw"`` (the 64 pixels) or
    ``"random"`` (a randomly initialised ``Net``, the starting point of every run)."""
    torch.set_num_threads(1)
    c0 = time.process_time()
    if kind == "raw":
        metrics = evaluate(lambda x: x, lambda x: x, seed)
    else:
        torch.manual_seed(seed)
        model = Net().eval()
        metrics = evaluate(model.encoder, model, seed)
    return {"reference": kind, "seed": seed, "metrics": metrics,
            "cpu_s": time.process_time() - c0}
