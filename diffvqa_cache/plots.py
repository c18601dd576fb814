"""PNG plots of a run: prediction vs MOS scatter and learning curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    fig.savefig(path)
    plt.close(fig)


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
    fig.savefig(path)
    plt.close(fig)
