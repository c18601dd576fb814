"""PNG plots (matplotlib, headless, written atomically): a fit's scatter and learning curves, a sweep's
summary, an adaptation's loss curve, a scored video's timeline."""

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


def timeline(path: Path, result, scale: str, best_view: np.ndarray, worst_view: np.ndarray, best: int, worst: int,
             frame_hw: tuple[int, int] | None, percentile: float) -> None:
    """One scored video (`scoring.VideoScore`): frame quality and softmax weight over time, and the best
    and worst sampled frames (their resized views, shown at the video's aspect ratio)."""
    plt = _plt()
    frames = result.frames
    use_time = all(np.isfinite(f.time) for f in frames)
    x = np.array([f.time if use_time else f.index for f in frames], dtype=float)
    quality = np.array([f.quality for f in frames])
    weight = np.array([f.weight for f in frames])
    fig = plt.figure(figsize=(10, 5), dpi=100)
    outer = fig.add_gridspec(1, 2, width_ratios=[2.8, 1.2], wspace=0.15, top=0.84)
    left = outer[0].subgridspec(2, 1, height_ratios=[1.4, 1.0], hspace=0.4)
    right = outer[1].subgridspec(2, 1, hspace=0.3)
    ax_q = fig.add_subplot(left[0])
    ax_w = fig.add_subplot(left[1], sharex=ax_q)
    # 1. frame quality, with the video score it sums to
    ax_q.plot(x, quality, "o-", color="tab:blue", lw=1.5, ms=4, label="frame quality")
    ax_q.axhline(result.score, color="k", ls="--", lw=1, label=f"video score {result.score:.2f}")
    for i, colour in ((best, "tab:green"), (worst, "tab:red")):
        ax_q.plot(x[i], quality[i], "o", ms=9, mfc="none", mec=colour, mew=2)
    ax_q.set_ylabel(f"quality ({scale.split(' of ')[0]})")
    ax_q.legend(fontsize=8, loc="best")
    ax_q.grid(alpha=0.3)
    # 2. frame weights (softmax over frames): how much each frame counts in the score
    step = float(np.min(np.diff(x))) if len(x) > 1 and np.min(np.diff(x)) > 0 else 1.0
    ax_w.bar(x, weight, width=0.7 * step, color="tab:orange")
    ax_w.axhline(1.0 / len(weight), color="k", ls=":", lw=1, label="uniform (1 / frames)")
    ax_w.set_ylim(0, 1.4 * max(float(weight.max()), 1.0 / len(weight)))  # room for the legend above the bars
    ax_w.set_ylabel("frame weight")
    ax_w.set_xlabel("time (s)" if use_time else "frame")
    ax_w.legend(fontsize=8, loc="upper right")
    ax_w.grid(alpha=0.3, axis="y")
    # 3. best and worst sampled frames
    aspect = frame_hw[0] / frame_hw[1] if frame_hw else 1.0
    for row, (view, i, name, colour) in enumerate(((best_view, best, "best", "tab:green"),
                                                   (worst_view, worst, "worst", "tab:red"))):
        ax = fig.add_subplot(right[row])
        ax.imshow(view, aspect=aspect)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        when = f"{frames[i].time:.2f} s" if use_time else f"frame {frames[i].index}"
        ax.set_title(f"{name}: {when}, quality {quality[i]:.2f}", fontsize=9)
    s = result.spread
    details = [f"{s.models} split models: {s.min:.2f}-{s.max:.2f} (std {s.std:.2f})"] if s and s.models > 1 else []
    if result.unfamiliar is not None:
        details.append(f"novelty: {result.novelty:.0f}th percentile of the training videos"
                       + (f" (above {percentile:g}: UNFAMILIAR content)" if result.unfamiliar else ""))
    fig.suptitle(f"{result.video}: {result.score:.2f} on {scale}\n" + ";  ".join(details), fontsize=10,
                 color="tab:red" if result.unfamiliar else "black")
    _save(fig, path)
