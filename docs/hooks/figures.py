"""MkDocs hook: the figures of "The loss" page, computed by ``tfree_core`` at build time.

Each figure is drawn with matplotlib (Agg) from values the library returns and added to the
build as a generated file under ``generated/`` (nothing is written into ``docs/``, so
``mkdocs serve`` does not rebuild in a loop and nothing generated can reach git). Set
``TFREE_FIGURES_DIR`` to also write the PNGs to a folder.

The page can also embed a table computed the same way: ``<!-- tfree:floor-table -->``.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import matplotlib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "backends"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from mkdocs.structure.files import File, Files  # noqa: E402

import tfree_core  # noqa: E402

TAUS = (0.05, 0.1, 0.2, 0.5, 1.0)
K = 63  # negatives per anchor: a batch of 64 pairs
FLOOR_KS = (15, 255, 4095)
FLOOR_TAUS = np.geomspace(0.02, 2.0, 60)
TF_COLOR = "black"


def _rows(s_pos, s_neg: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One anchor per value of ``s_pos``: its positive (column 0) at that similarity and
    ``k`` negatives at ``s_neg``."""
    s_pos = np.atleast_1d(np.asarray(s_pos, dtype=np.float64))
    similarity = np.full((s_pos.size, k + 1), s_neg, dtype=np.float64)
    similarity[:, 0] = s_pos
    mask = np.zeros(similarity.shape, dtype=bool)
    mask[:, 0] = True
    return similarity, mask


def _map(tau: float | None) -> dict:
    if tau is None:
        return {}
    return {"logit_map": "temperature", "temperature": tau}


def positive_gradient(s_pos, s_neg: float, k: int, tau: float | None) -> np.ndarray:
    """``∂L_i/∂s₊`` for each anchor, from the library's analytic gradient (``reduction="none"``
    with a unit cotangent per anchor); ``tau=None`` is the temperature-free map."""
    similarity, mask = _rows(s_pos, s_neg, k)
    _, (d_similarity,) = tfree_core.loss_from_similarity_value_and_grad(
        similarity, mask, reduction="none", **_map(tau)
    )
    return np.asarray(d_similarity[:, 0])


def loss_at(s_pos, s_neg: float, k: int, tau: float | None) -> np.ndarray:
    """The loss of each anchor (one per value of ``s_pos``)."""
    similarity, mask = _rows(s_pos, s_neg, k)
    return np.asarray(
        tfree_core.loss_from_similarity(similarity, mask, reduction="none", **_map(tau))
    )


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _colors(n: int):
    cmap = plt.get_cmap("viridis")
    return [cmap(0.1 + 0.75 * i / max(n - 1, 1)) for i in range(n)]


def figure_logit_map() -> bytes:
    s = np.linspace(-1.0, 1.0, 2001)
    phi = np.asarray(tfree_core.logits(s))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for tau, color in zip(TAUS, _colors(len(TAUS)), strict=True):
        ax.plot(s, s / tau, color=color, lw=1.2, label=f"s/τ, τ = {tau:g}")
    ax.plot(s, phi, color=TF_COLOR, lw=2.4, label="φ(s) = 2·atanh(s)  (tfree)")
    cap = float(tfree_core.logits(np.array([1.0]))[0])
    ax.axhline(cap, color=TF_COLOR, ls=":", lw=0.8)
    ax.axhline(-cap, color=TF_COLOR, ls=":", lw=0.8)
    ax.annotate(f"cap φ(1 − ε) = {cap:.4f}", (-0.98, cap), xytext=(0, -12),
                textcoords="offset points", fontsize=8)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-16, 16)
    ax.set_xlabel("cosine similarity s")
    ax.set_ylabel("logit")
    ax.set_title("Logit map: tfree.logits(s) against s/τ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def figure_gradient(s_neg: float = 0.0) -> bytes:
    s_pos = np.linspace(-0.95, 0.9999, 400)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for tau, color in zip(TAUS, _colors(len(TAUS)), strict=True):
        g = -positive_gradient(s_pos, s_neg, K, tau)
        ax.plot(s_pos, g, color=color, lw=1.2, label=f"InfoNCE, τ = {tau:g}")
    g = -positive_gradient(s_pos, s_neg, K, None)
    ax.plot(s_pos, g, color=TF_COLOR, lw=2.4, label="temperature-free")
    ax.set_yscale("log")
    ax.set_ylim(1e-6, 1e3)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("similarity of the positive s₊")
    ax.set_ylabel("pull on the positive  −∂L/∂s₊")
    ax.set_title(f"Gradient on the positive ({K} negatives at s = {s_neg:g})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def figure_floor(s_neg: float = 0.0) -> bytes:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.2), layout="constrained")
    gap = np.geomspace(1.0, 1e-6, 200)  # 1 - s₊
    for tau, color in zip(TAUS, _colors(len(TAUS)), strict=True):
        left.plot(gap, loss_at(1.0 - gap, s_neg, K, tau), color=color, lw=1.2,
                  label=f"InfoNCE, τ = {tau:g}")
    left.plot(gap, loss_at(1.0 - gap, s_neg, K, None), color=TF_COLOR, lw=2.4,
              label="temperature-free")
    left.set_xscale("log")
    left.set_yscale("log")
    left.invert_xaxis()
    left.set_ylim(1e-8, 10)
    left.set_xlabel("distance to the optimum 1 − s₊")
    left.set_ylabel("loss")
    left.set_title(f"Loss as s₊ → 1 ({K} negatives at s = {s_neg:g})", fontsize=10)
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=8, loc="lower left")
    for k, color in zip(FLOOR_KS, _colors(len(FLOOR_KS)), strict=True):
        measured = [loss_at(1.0, -1.0, k, float(t))[0] for t in FLOOR_TAUS]
        right.plot(FLOOR_TAUS, measured, color=color, lw=1.6, label=f"InfoNCE, K = {k}")
        right.plot(FLOOR_TAUS, np.log1p(k * np.exp(-2.0 / FLOOR_TAUS)), color=color,
                   ls="none", marker=".", ms=3)
    right.plot([], [], color="gray", ls="none", marker=".", label="log(1 + K·e^(−2/τ))")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_ylim(1e-8, 20)
    right.set_xlabel("temperature τ")
    right.set_ylabel("InfoNCE loss at the optimum")
    right.set_title("InfoNCE floor (s₊ = 1, negatives at −1)", fontsize=10)
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8, loc="lower right")
    return _png(fig)


FIGURES = {
    "generated/logit_map.png": figure_logit_map,
    "generated/gradient.png": figure_gradient,
    "generated/floor.png": figure_floor,
}


def floor_table() -> str:
    """Markdown: the loss at the optimum for K = 255, computed with the library."""
    k = 255
    lines = [
        "| logit map | loss at s₊ = 1, negatives at −1 (K = 255) | log(1 + K·e^(−2/τ)) |",
        "|---|---|---|",
    ]
    for tau in TAUS:
        lines.append(f"| InfoNCE, τ = {tau:g} | {loss_at(1.0, -1.0, k, tau)[0]:.3e} | "
                     f"{np.log1p(k * np.exp(-2.0 / tau)):.3e} |")
    lines.append(f"| temperature-free | {loss_at(1.0, -1.0, k, None)[0]:.3e} | (no floor) |")
    return "\n".join(lines)


def on_files(files: Files, config) -> Files:
    out_dir = os.environ.get("TFREE_FIGURES_DIR")
    for uri, make in FIGURES.items():
        content = make()
        files.append(File.generated(config, uri, content=content))
        if out_dir:
            path = Path(out_dir) / Path(uri).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    marker = "<!-- tfree:floor-table -->"
    if marker in markdown:
        markdown = markdown.replace(marker, floor_table())
    return markdown
