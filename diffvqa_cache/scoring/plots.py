"""PNG plots (matplotlib, headless, written atomically): a fit's scatter and learning curves, a sweep's
summary, an adaptation's loss curve, a scored video's timeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffvqa_cache.files import atomic_path


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
    """Per split (thin) and their median (thick): the training loss with the learning rate beside it, and
    the validation SRCC per epoch with each split's kept (best) epoch marked, where a validation set was
    carved (train.val_fraction > 0); else the panel says it was not recorded."""
    plt = _plt()
    has_val = any("val_srcc" in r for h in histories.values() for r in h)
    fig, axes = plt.subplots(1, 2, figsize=(10 if has_val else 8.5, 3.8), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1 if has_val else 0.55]})
    ax_loss, ax_val = axes[0]
    few = len(histories) <= 12
    for name, h in histories.items():
        ax_loss.plot([r["epoch"] for r in h], [r["loss"] for r in h], lw=0.8, alpha=0.45, label=name if few else None)
    med = _median_by_epoch(histories, "loss")
    if med:
        ax_loss.plot(*zip(*med), color="k", lw=2, label="median over splits")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss (lines: splits)")
    ax_loss.grid(alpha=0.3)
    lr = next((h for h in histories.values() if h and "lr" in h[0]), None)
    if lr:
        ax_lr = ax_loss.twinx()
        ax_lr.plot([r["epoch"] for r in lr], [r["lr"] for r in lr], ":", color="tab:gray", lw=1.2, label="learning rate")
        ax_lr.set_ylabel("learning rate (dotted)", color="tab:gray", fontsize=8)
        ax_lr.tick_params(axis="y", labelsize=7, colors="tab:gray")
    ax_loss.legend(fontsize=6, loc="upper right")
    if has_val:
        for name, h in histories.items():
            rows = [r for r in h if "val_srcc" in r]
            line, = ax_val.plot([r["epoch"] for r in rows], [r["val_srcc"] for r in rows], lw=0.8, alpha=0.6)
            best = max(rows, key=lambda r: r["val_srcc"])
            ax_val.plot(best["epoch"], best["val_srcc"], "o", ms=5, color=line.get_color())
        med = _median_by_epoch(histories, "val_srcc")
        ax_val.plot(*zip(*med), color="k", lw=2, label="median over splits")
        ax_val.plot([], [], "o", color="tab:gray", label="kept epoch (best)")
        ax_val.set(xlabel="epoch", ylabel="SRCC", title="validation SRCC (carved from the training videos)")
        ax_val.legend(fontsize=6, loc="lower right")
        ax_val.grid(alpha=0.3)
    else:
        ax_val.set_axis_off()
        ax_val.text(0.5, 0.5, "no validation metric recorded\n(fit with --set train.val_fraction=0.1\n"
                    "to carve a validation set and follow its SRCC)", ha="center", va="center", fontsize=9,
                    transform=ax_val.transAxes, color="tab:gray")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    _save(fig, path)


def _median_by_epoch(histories: dict[str, list[dict]], key: str) -> list[tuple[int, float]]:
    by: dict[int, list[float]] = {}
    for h in histories.values():
        for r in h:
            if key in r:
                by.setdefault(r["epoch"], []).append(r[key])
    return [(e, float(np.median(v))) for e, v in sorted(by.items())]


def sweep_summary(path: Path, summary: list[dict], title: str,
                  per_split: dict[str, dict[str, list[float]]] | None = None) -> None:
    """Median SRCC and PLCC per configuration, best at the top, each value printed; with `per_split`
    ({config: {"srcc": [...], "plcc": [...]}}) whiskers span the splits' range and dots show each split."""
    plt = _plt()
    per_split = per_split or {}
    names = [s["config"] for s in summary][::-1]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.45 * len(names)), dpi=110)
    lows = [0.0]
    for key, offset, colour in (("srcc", 0.2, "tab:blue"), ("plcc", -0.2, "tab:orange")):
        med = np.array([s[f"{key}_median"] for s in summary][::-1], dtype=float)
        ax.barh(y + offset, np.nan_to_num(med), height=0.4, color=colour, alpha=0.85,
                label=f"median {key.upper()}")
        for yi, name, m in zip(y, names, med):
            vals = np.array([v for v in per_split.get(name, {}).get(key, []) if np.isfinite(v)], dtype=float)
            right = m
            if len(vals) > 1:
                ax.plot([vals.min(), vals.max()], [yi + offset] * 2, color="k", lw=1)
                ax.plot(vals, [yi + offset] * len(vals), "|", color="k", ms=6)
                right, lows = max(m, vals.max()), lows + [float(vals.min())]
            if np.isfinite(m):
                ax.text(min(right, 1.0) + 0.01, yi + offset, f"{m:.3f}", va="center", fontsize=7)
                lows.append(float(m))
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(min(lows), 1.12)
    ax.set_xlabel("correlation with MOS on the test split (bar: median over splits"
                  + ("; whisker and ticks: each split)" if per_split else ")"), fontsize=8)
    ax.axvline(1.0, color="k", lw=0.6, ls=":")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title, fontsize=9, loc="left")
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False)
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
             frame_hw: tuple[int, int] | None, percentile: float, limits: tuple[float, float] | None = None) -> None:
    """One scored video (`scoring.VideoScore`): frame quality and softmax weight over time, the split
    models' range of the video score as a band, the scale's `limits` (low, high) marked, and the best and
    worst sampled frames (their resized views, shown at the video's aspect ratio)."""
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
    s = result.spread
    if s and s.models > 1:
        ax_q.axhspan(s.min, s.max, color="tab:gray", alpha=0.25, lw=0,
                     label=f"{s.models} split models: {s.min:.2f}-{s.max:.2f}")
    if limits and limits[1] > limits[0]:
        low, high = limits
        for v in limits:
            ax_q.axhline(v, color="tab:red", lw=1, alpha=0.7)
        shown = np.concatenate([quality, [result.score, low, high]])
        pad = 0.06 * (high - low)
        ax_q.set_ylim(min(low, float(shown.min())) - pad, max(high, float(shown.max())) + pad)
        trans = ax_q.get_yaxis_transform()
        for v, name in ((low, "scale low"), (high, "scale high")):
            ax_q.text(0.005, v, f"{name} {v:g}", transform=trans, color="tab:red", fontsize=7,
                      va="bottom" if v == low else "top", ha="left")
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
    details = [f"{s.models} split models: {s.min:.2f}-{s.max:.2f} (std {s.std:.2f})"] if s and s.models > 1 else []
    if result.unfamiliar is not None:
        details.append(f"novelty: {result.novelty:.0f}th percentile of the training videos"
                       + (f" (above {percentile:g}: UNFAMILIAR content)" if result.unfamiliar else ""))
    fig.suptitle(f"{result.video}: {result.score:.2f} on {scale}\n" + ";  ".join(details), fontsize=10,
                 color="tab:red" if result.unfamiliar else "black")
    _save(fig, path)
