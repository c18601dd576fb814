"""The paper's tables as one command: adapt on LSVQ-train, extract every dataset with one preset, the LSVQ
official protocol (its test sets and, from LSVQ-train, every other dataset), each other dataset on random
splits (fine-tuned from the LSVQ run when LSVQ is given, else from scratch), the paper's cross-dataset
pairs (trained on the whole source dataset), then `table.md` / `table.png` beside the published values.
The settings, the plan of fits, the published values and the table: `diffvqa_cache.scoring.reproduction`.

Each step is skipped when its result is already there (the Controller's adapt_config.json, a complete
cache, a run's metrics.json), so rerunning the same command resumes where it stopped; the settings are
recorded in OUT/reproduce.json and a rerun with other settings is refused.
"""

from __future__ import annotations

import time
from pathlib import Path

from diffvqa_cache.cache.settings import ExtractConfig
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.progress import err
from diffvqa_cache.scoring.reproduction import (
    DATASET_NAMES,
    ReproduceConfig,
    ReproduceResult,
    plan_fits,
    record_settings,
    table_rows,
    write_table,
)


def run_reproduce(cfg: ReproduceConfig, out: Path, client=None, progress: bool = True) -> ReproduceResult:
    """Run (or resume) every step into OUT and write the table."""
    t0 = time.perf_counter()
    out = Path(out)
    cfg.check_roots()
    record_settings(cfg, out)
    datasets = {name: _dataset(name, root, cfg.limit) for name, root in cfg.roots.items()}
    # 1. the Controller: given, or adapted on LSVQ-train (else the first dataset: adaptation is label-free)
    controller = cfg.extract.controller or str(_adapt(cfg, datasets, out / "controller", progress))
    extract = cfg.extract.replace(controller=controller)
    # 2. features of every dataset with the one preset
    caches = {name: _extract(ds, extract, out / "cache", client, progress) for name, ds in datasets.items()}
    # 3-5. LSVQ's official protocol, each other dataset's random splits, the paper's cross-dataset pairs
    runs = [(f.kind, f.trained_on, _fit(f.cache, f.run, f.overrides, f.test_caches, f.init, progress))
            for f in plan_fits(cfg, caches, out)]
    rows = table_rows(runs, out)
    write_table(out, rows)
    return ReproduceResult(out, rows, time.perf_counter() - t0)


def _dataset(name: str, root: str, limit: int | None):
    dataset = load_dataset(name, root, limit=limit)
    dataset.check()
    err.print(dataset.summary())
    return dataset


def _adapt(cfg: ReproduceConfig, datasets: dict, folder: Path, progress: bool) -> Path:
    from diffvqa_cache.extraction.adaptation import list_checkpoints
    from pipelines.adapt import run_adapt

    if (folder / "adapt_config.json").is_file():
        err.print(f"[bold]adapt[/]: {folder} is done, skipped")
        return folder
    name, adapt = cfg.adapt_on()
    err.print(f"[bold]adapt[/]: the Controller on {DATASET_NAMES[name]}"
              f"{'-train' if name == 'lsvq' else ' (no LSVQ given; label-free, all videos)'}")
    run_adapt(datasets[name], adapt, folder, resume=bool(list_checkpoints(folder)),
              progress=progress)
    return folder


def _extract(dataset, cfg: ExtractConfig, out: Path, client, progress: bool) -> Path:
    from pipelines.extract import run_extract

    err.print(f"[bold]extract[/]: {DATASET_NAMES[dataset.name]}")
    result = run_extract(dataset, cfg, out, client=client, progress=progress)
    if not result.manifest.get("complete"):
        raise UserInputError(f"{result.cache_dir}: not every video was extracted; rerun the same command")
    return result.cache_dir


def _fit(cache: Path, run: Path, overrides: dict, test_caches: list[Path], init: Path | None, progress: bool) -> Path:
    from diffvqa_cache.run.folder import RunFolder
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.fit import run_fit

    if RunFolder(run).finished():
        RunFolder(run).verify()  # its metrics go into the table: never those of a damaged run
        err.print(f"[bold]fit[/]: {run} is done, skipped")
        return run
    err.print(f"[bold]fit[/]: {run.name}")
    run_fit(cache, run, FitConfig().with_overrides(overrides), test_caches, init, progress, resume=True)
    return run
