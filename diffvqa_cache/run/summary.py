"""What `fit` says about its run: the plan before training (`format_plan`: splits x epochs, videos, TCAB,
device, the MOS scale) and the summary after (`format_summary`: the medians over the splits, the files)."""

from __future__ import annotations

from pathlib import Path

from diffvqa_cache.run.folder import FitResult, RunConfig, RunFolder
from diffvqa_cache.training.metrics import METRIC_KEYS, SHORT_LABELS
from diffvqa_cache.training.protocols import Split


def format_plan(run_cfg: RunConfig, splits: list[Split], n_videos: int, device) -> str:
    """The line fit prints before training: splits x epochs, videos, TCAB, device, the scale."""
    t, r = run_cfg.training or run_cfg.fit.train, run_cfg.fit.regressor
    px = run_cfg.fit.pixel_size or run_cfg.cache.pixel_size
    low, high = run_cfg.score_scale
    fix = "" if run_cfg.scale_source != "the observed range of the training labels" else \
        "; pass --scale LOW HIGH for your scale's limits"
    return (f"plan: {len(splits)} split(s) x {t.epochs} epochs over {n_videos} training videos "
            f"({len(splits[0].train)} per split), TCAB {f'on ({px} px views)' if r.use_tcab else 'off'}, device "
            f"{device}\nscale: MOS {low:g}-{high:g} ({run_cfg.scale_source}{fix})")


def format_summary(result: FitResult, out: Path) -> str:
    lines = [f"protocol {result.protocol}, {len(result.splits)} split(s), {result.seconds:.1f} s; run: {out}"]
    for test, s in result.summary.items():
        lines.append(f"  {test:10s} " + "  ".join(f"{SHORT_LABELS[k]} {s[k]['median']:.4f}" for k in METRIC_KEYS)
                     + f"   (median of {s['n_splits']}; std SRCC {s['srcc']['std']:.4f})")
    lines.append("  PLCC(logistic): Pearson after the 4-parameter logistic fit (the paper's); PLCC(raw): plain Pearson")
    lines.append("  files: " + " ".join(RunFolder(out).files_listed()))
    return "\n".join(lines)
