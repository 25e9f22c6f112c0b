"""Statistics, the Markdown table and the figures of the temperature sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

METRICS = {  # key: (column title, is an accuracy shown in %)
    "probe": ("linear probe, all labels (%)", True),
    "probe_10": ("linear probe, 10 % labels (%)", True),
    "knn": ("5-NN, cosine (%)", True),
    "align": ("alignment ↓", False),
    "uniform": ("uniformity ↓", False),
}
ACCURACIES = [k for k, (_, is_acc) in METRICS.items() if is_acc]
REFERENCES = {"random": "random encoder (untrained)", "raw": "raw pixels"}


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % confidence interval of the mean (t-distribution with
    ``n − 1`` degrees of freedom; the half-width is NaN for a single value)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), math.nan
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def label(temperature: float | None) -> str:
    """Row label of a loss: the temperature-free map or InfoNCE at ``τ``."""
    return "temperature-free" if temperature is None else f"InfoNCE τ = {temperature:g}"


def _runs(results: dict, setting: str, temperature: float | None) -> list[dict]:
    runs = [r for r in results["runs"]
            if r["setting"] == setting and r["temperature"] == temperature]
    return sorted(runs, key=lambda r: r["seed"])


def _values(runs: list[dict], key: str) -> list[float]:
    if key in METRICS:
        return [r["metrics"][key] for r in runs]
    return [r[key] for r in runs]


def _fmt(values: Sequence[float], percent: bool, digits: int = 3) -> str:
    mean, half = ci95(values)
    if percent:
        mean, half, digits = 100 * mean, 100 * half, 1
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _temperature_rows(results: dict) -> list[float | None]:
    return [None, *results["temperatures"]]


def markdown(results: dict) -> str:
    """The results page: per setting a table of mean ± 95 % CI over seeds, then the paired
    differences between the temperature-free loss and the best InfoNCE temperature."""
    seeds = len(results["seeds"])
    lines = [
        "# Temperature sweep: results",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['summary']}  ",
        f"Wall time of the runs: {results['wall_s'] / 60:.1f} min with {results['jobs']}"
        f" worker process(es), their CPU time {results['cpu_s'] / 60:.1f} min; {seeds} seeds"
        " per row. Entries: mean ± half-width of the 95 % confidence interval over seeds"
        " (t-distribution). Train time is the CPU time of one run's training (one thread),"
        " which depends less than wall time on other load on the machine.",
    ]
    for name, setting in results["settings"].items():
        head = ["loss", *(t for t, _ in METRICS.values()), "final loss", "train time (s)"]
        lines += ["", f"## {setting['title']}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for temperature in _temperature_rows(results):
            runs = _runs(results, name, temperature)
            cells = [_fmt(_values(runs, k), pct) for k, (_, pct) in METRICS.items()]
            cells += [_fmt(_values(runs, "final_loss"), False),
                      _fmt(_values(runs, "train_cpu_s"), False, 1)]
            lines.append(f"| {label(temperature)} | " + " | ".join(cells) + " |")
        for kind, title in REFERENCES.items():
            refs = [r for r in results["references"] if r["reference"] == kind]
            cells = [_fmt([r["metrics"][k] for r in refs], pct) for k, (_, pct) in METRICS.items()]
            lines.append(f"| *{title}* | " + " | ".join(cells) + " | — | — |")
        lines += ["", "Temperature-free minus the best InfoNCE temperature (chosen per metric on"
                  " the test split, which favours InfoNCE), paired by seed, in points of %:", ""]
        for key in ACCURACIES:
            best, diff = paired_difference(results, name, key)
            mean, half = ci95(100 * np.asarray(diff))
            lines.append(f"- {METRICS[key][0].removesuffix(' (%)')}: best τ = {best:g}, "
                         f"Δ = {mean:+.1f} ± {half:.1f}")
    return "\n".join(lines) + "\n"


def paired_difference(results: dict, setting: str, key: str) -> tuple[float, list[float]]:
    """The InfoNCE temperature with the best mean ``key`` and the per-seed differences
    ``temperature-free − InfoNCE(best τ)`` (runs with one seed share init and data)."""
    means = {t: np.mean(_values(_runs(results, setting, t), key)) for t in results["temperatures"]}
    best = max(means, key=means.__getitem__)
    free = {r["seed"]: r["metrics"][key] for r in _runs(results, setting, None)}
    tuned = {r["seed"]: r["metrics"][key] for r in _runs(results, setting, best)}
    return best, [free[s] - tuned[s] for s in sorted(free) if s in tuned]


def _color(results: dict, temperature: float | None) -> object:
    """Orange for the temperature-free loss; a viridis shade per InfoNCE temperature."""
    import matplotlib

    if temperature is None:
        return "C1"
    temps = results["temperatures"]
    return matplotlib.colormaps["viridis"](0.85 * temps.index(temperature) / max(len(temps) - 1, 1))


def figures(results: dict, out: Path) -> list[Path]:
    """``sweep_<setting>.png`` (accuracies against τ, the temperature-free loss as a band;
    alignment against uniformity) and ``curves.png`` (training loss per epoch, mean over
    seeds, the band spans the seeds' minimum to maximum)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    temps = results["temperatures"]
    for name, setting in results["settings"].items():
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.3), layout="constrained")
        for ax, key in zip(axes[:3], ACCURACIES, strict=True):
            stats_t = [ci95(100 * np.asarray(_values(_runs(results, name, t), key)))
                       for t in temps]
            mean_f, half_f = ci95(100 * np.asarray(_values(_runs(results, name, None), key)))
            ax.axhspan(mean_f - half_f, mean_f + half_f, color="C1", alpha=0.25, lw=0)
            ax.axhline(mean_f, color="C1", label="temperature-free")
            ax.errorbar(temps, [m for m, _ in stats_t], yerr=[h for _, h in stats_t],
                        marker="o", color="C0", capsize=3, label="InfoNCE(τ)")
            raw = [r["metrics"][key] for r in results["references"] if r["reference"] == "raw"]
            ax.axhline(100 * np.mean(raw), color="gray", ls=":", label="raw pixels")
            ax.set(xscale="log", xlabel="τ", title=METRICS[key][0].removesuffix(" (%)"),
                   ylabel="test accuracy (%)")
            ax.set_xticks(temps, [f"{t:g}" for t in temps])
            ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))
            ax.minorticks_off()
        axes[0].legend(fontsize=8)
        ax = axes[3]
        for t in _temperature_rows(results):
            runs = _runs(results, name, t)
            x, y = np.mean(_values(runs, "uniform")), np.mean(_values(runs, "align"))
            ax.plot(x, y, "s" if t is None else "o", color=_color(results, t))
            ax.annotate("t-free" if t is None else f"τ={t:g}", (x, y), fontsize=8,
                        xytext=(4, -10) if t is None else (3, 3), textcoords="offset points")
        ax.set(xlabel="uniformity ↓", ylabel="alignment ↓", title="alignment vs uniformity")
        fig.suptitle(setting["title"], fontsize=10)
        paths.append(out / f"sweep_{name}.png")
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)

    n = len(results["settings"])
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.6), layout="constrained", squeeze=False)
    for ax, (name, setting) in zip(axes[0], results["settings"].items(), strict=True):
        for t in _temperature_rows(results):
            curves = np.asarray([r["curve"] for r in _runs(results, name, t)])
            epochs = np.arange(1, curves.shape[1] + 1)
            color = _color(results, t)
            ax.plot(epochs, curves.mean(0), color=color, lw=2 if t is None else 1, label=label(t))
            ax.fill_between(epochs, curves.min(0), curves.max(0), color=color, alpha=0.2, lw=0)
        ax.set(yscale="log", xlabel="epoch", ylabel="training loss (mean per epoch)",
               title=setting["title"])
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    paths.append(out / "curves.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths
