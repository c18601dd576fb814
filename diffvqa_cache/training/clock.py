"""The estimate a fit prints after its first epoch (`EpochClock`): how long the whole run (all splits)
needs, and the cheaper settings when TCAB on the CPU is what costs."""

from __future__ import annotations

import time

from diffvqa_cache.progress import err
from diffvqa_cache.training.settings import FitConfig

# TCAB on the CPU, measured (BENCHMARKS.md, "TCAB on the CPU", 2026-12-05, 2 shared cores): an epoch of 16
# videos took 62.6 s with TCAB on 224 px views, 23.5 s with TCAB off (2.7x); doctor quotes the same figure
TCAB_CPU_FIGURE = "TCAB on 224 px views on the CPU: 62.6 s an epoch for 16 videos vs 23.5 s with TCAB off (BENCHMARKS.md)"
CHEAPER = "--set pixel_size=64 (TCAB on 64 px views) or --set regressor.use_tcab=false"


class EpochClock:
    """After the first epoch trained in this process: the estimate for the whole run (all splits), and the
    cheaper settings when TCAB on the CPU is what costs."""

    def __init__(self, n_splits: int, epochs: int, cfg: FitConfig, device, progress: bool, pixel_size: int):
        self.n_splits, self.epochs, self.cfg, self.device, self.progress = n_splits, epochs, cfg, device, progress
        self.pixel_size, self.line = pixel_size, None
        self.split, self.t0, self.said = 0, None, False

    def start(self, split_index: int) -> None:
        self.split, self.t0 = split_index, time.perf_counter()

    def epoch_done(self, row: dict) -> None:
        if self.said or self.t0 is None:
            return
        self.said = True
        seconds = time.perf_counter() - self.t0
        done = int(row.get("epoch", 0)) + 1  # a resumed split continues after its saved epochs
        left = (self.n_splits - self.split) * self.epochs - done  # epochs still to train
        total = left * seconds
        line = (f"first epoch: {_duration(seconds)}; the whole fit ({self.n_splits} split(s) x {self.epochs} epochs) "
                f"needs about {_duration(total)} more")
        tcab_cpu = self.cfg.regressor.use_tcab and getattr(self.device, "type", str(self.device)) == "cpu"
        if tcab_cpu and self.pixel_size > 64:
            line += (f"\nTCAB on {self.pixel_size} px views on the CPU costs most of this time ({TCAB_CPU_FIGURE}); "
                     f"cheaper: {CHEAPER}")
        if self.progress:
            err.print(line)
        self.line = line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
