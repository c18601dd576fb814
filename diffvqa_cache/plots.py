"""PNG plots (matplotlib, headless, written atomically): a fit's scatter and learning curves, a sweep's
summary, an adaptation's loss curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _plt().close(fig)


def scatter(path: Path, pred: np.ndarray, mos: np.ndarray, groups: list[str], title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    for g in sorted(set(groups)):
        m = np.array([x == g for x in groups])
        ax.scatter(mos[m], pred[m], s=10, alpha=0.6, label=g)
    lo, hi = float(min(mos.min(), pred.min())), float(max(mos.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("MOS")
    ax.set_ylabel("prediction")
    ax.set_title(title, fontsize=9)
    if len(set(groups)) <= 12:
        ax.legend(fontsize=6, markerscale=1.5)
    fig.tight_layout()
    _save(fig, path)


def learning_curves(path: Path, histories: dict[str, list[dict]]) -> None:
    plt = _plt()
    has_val = any("val_srcc" in r for h in histories.values() for r in h)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(9 if has_val else 5, 3.5), dpi=110, squeeze=False)
    for name, h in histories.items():
        axes[0, 0].plot([r["epoch"] for r in h], [r["loss"] for r in h], label=name, lw=1)
        if has_val:
            axes[0, 1].plot([r["epoch"] for r in h if "val_srcc" in r], [r["val_srcc"] for r in h if "val_srcc" in r],
                            label=name, lw=1)
    axes[0, 0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    if has_val:
        axes[0, 1].set(xlabel="epoch", ylabel="SRCC", title="validation SRCC")
    if len(histories) <= 12:
        axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def sweep_summary(path: Path, summary: list[dict], title: str) -> None:
    """Median SRCC and PLCC per configuration, best at the top."""
    plt = _plt()
    names = [s["config"] for s in summary][::-1]
    srcc = np.nan_to_num([s["srcc_median"] for s in summary][::-1])
    plcc = np.nan_to_num([s["plcc_median"] for s in summary][::-1])
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.35 * len(names)), dpi=110)
    ax.barh(y + 0.2, srcc, height=0.4, label="median SRCC")
    ax.barh(y - 0.2, plcc, height=0.4, label="median PLCC")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(min(0.0, float(min(srcc.min(), plcc.min()))), 1.0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def paper_comparison(path: Path, labels: list[str], ours: list[float], paper: list[float | None]) -> None:
    """Our median SRCC per (trained on -> tested on) beside the published one (where there is one)."""
    plt = _plt()
    y = np.arange(len(labels))[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.4 * len(labels)), dpi=110)
    ax.barh(y + 0.2, np.nan_to_num(ours), height=0.4, label="this run")
    ax.barh(y - 0.2, [np.nan if p is None else p for p in paper], height=0.4, label="DiffVQA (paper)")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(min(0.0, float(np.nanmin(np.nan_to_num(ours)))), 1.0)
    ax.set_xlabel("SRCC")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def loss_curve(path: Path, rows: list[dict]) -> None:
    """An adaptation's loss per step (raw and a running mean), log scale."""
    plt = _plt()
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="loss")
    w = max(1, len(loss) // 50)
    if w > 1:
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
