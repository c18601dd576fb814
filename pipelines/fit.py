"""Stage two: train the regressor over a cache under a protocol and write a self-describing run directory.

Protocols (`diffvqa_cache.training.protocols`): `random` (repeated 80/20 splits by video, median over splits),
`lsvq` (the official split: train -> test and test1080p, and every --test-cache), `cross` (the cache, or
its official train part -> each --test-cache); `--init` fine-tunes from an earlier run. Test sets are
only ever used for reporting.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diffvqa_cache.devices import resolve_device
from diffvqa_cache.files import folder_lock, reporting_disk_full
from diffvqa_cache.progress import bar, err
from diffvqa_cache.run.folder import FitResult, RunConfig, RunFolder, check_resumable
from diffvqa_cache.run.summary import format_plan
from diffvqa_cache.scoring.familiarity import write_reference
from diffvqa_cache.training.checkpoint import CheckpointMeta, save_checkpoint
from diffvqa_cache.training.clock import EpochClock
from diffvqa_cache.training.fitting import choose_scale, fit_split
from diffvqa_cache.training.inputs import load_fit_inputs
from diffvqa_cache.training.metrics import METRIC_LABELS, summarize
from diffvqa_cache.training.settings import FitConfig


def run_fit(cache_path: Path, out: Path, cfg: FitConfig, test_cache_paths: list[Path] = (),
            init: Path | None = None, progress: bool = True, resume: bool = False,
            scale: tuple[float, float] | None = None) -> FitResult:
    """Train and evaluate under the protocol; write the run directory; return what it measured (metrics.json).
    `scale`: the MOS scale's (low, high) that predict reads scores against (default: the dataset's known
    scale, else the observed label range, said so).

    Each split's training state is saved in OUT/state/ after every epoch; with `resume`, finished splits
    are taken as they are and the current one continues after its last saved epoch. OUT is locked for the
    whole fit (a second fit on it is refused before it changes anything), and OUT/manifest.json, written
    last, records the checksum of every file the run wrote."""
    with folder_lock(out, "fit"), reporting_disk_full(
            f"the run folder {out}", "free space and rerun the same command with --resume (finished splits and the "
            "last saved epoch are kept)"):
        return _run_fit(cache_path, out, cfg, test_cache_paths, init, progress, resume, scale)


def _run_fit(cache_path: Path, out: Path, cfg: FitConfig, test_cache_paths: list[Path], init: Path | None,
             progress: bool, resume: bool, scale: tuple[float, float] | None = None) -> FitResult:
    t_start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    if scale is not None:
        choose_scale("", np.zeros(0), (0, 1), scale)  # a bad --scale fails before the caches are read
    # 1. caches, protocol, features (in memory or streamed; pooling and selection at load time)
    inputs = load_fit_inputs(cache_path, cfg, test_cache_paths, progress, device)
    cache, protocol, splits = inputs.cache, inputs.protocol, inputs.splits
    table, test_tables, spec = inputs.table, inputs.test_tables, inputs.spec
    init_models = RunFolder.open(init, "--init").load_models(cache.fingerprint, "cpu") if init else None
    used = cfg.replace(train=cfg.training(fine_tuning=init is not None))  # fine-tuning: its own lr, epochs, warm-up
    out = Path(out)
    run = RunFolder(out)
    run.prepare()
    # 2. the run's config and splits, before any training
    feature_spec = table.feature_spec().to_dict()
    meta_common = CheckpointMeta(regressor=cfg.regressor.to_dict(), feature_spec=feature_spec,
                                 load_spec=spec.to_dict(), fingerprint=cache.fingerprint, cache=cache.config.to_dict(),
                                 mos_range=list(cache.config.mos_range))
    trained = sorted({k for s in splits for k in s.train})  # every video some split model trained on
    row_of = {k: i for i, k in enumerate(table.keys)}
    train_mos = sorted(float(f"{table.mos[row_of[k]]:.6g}") for k in trained if k in row_of)  # as labelled, not float32
    (low, high), source = choose_scale(cache.config.dataset, np.array(train_mos), cache.config.mos_range, scale)
    run_cfg = RunConfig(fit=cfg, protocol=protocol, cache=cache.config, cache_path=str(cache.path),
                        feature_spec=feature_spec, test_cache_paths=[str(c.path) for c in inputs.test_caches],
                        init=str(init) if init else None, training=used.train, data=inputs.data,
                        decoders=cache.decoders(), fingerprint=cache.fingerprint, scale=(low, high),
                        scale_source=source, train_mos=train_mos)
    if progress:
        err.print(format_plan(run_cfg, splits, len(trained), device))
        outside = sum(not low <= m <= high for m in train_mos)
        if outside:
            err.print(f"[yellow]{outside} of {len(train_mos)} training MOS values lie outside the scale "
                      f"{low:g}-{high:g}: pass the scale your labels use with --scale LOW HIGH[/]")
    if resume:
        check_resumable(out, run_cfg)
    else:
        run.clear_earlier()  # an earlier run's state and models (it may have had more splits)
    run.write_manifest(None)  # being written: loading it is refused until the final manifest is in place
    run.write_record(run_cfg, [s.to_dict() for s in splits])
    # what each split model's training videos look like, for predict's unfamiliar-content flag
    write_reference(run.file(RunFolder.FAMILIARITY), table, {s.name: s.train for s in splits},
                    {"fingerprint": cache.fingerprint, "load_spec": spec.to_dict()}, cfg.train.eval_batch_size)
    per_split, rows, histories = [], [], {}
    clock = EpochClock(len(splits), used.train.epochs, cfg, device, progress, spec.pixel_size)
    # 3. one model per split, checkpoints self-describing; a finished split leaves OUT/state/<split>.json
    for si, split in enumerate(splits):
        finished = run.finished_split(split.name) if resume else None
        if finished is not None:
            per_split.append(finished["entry"])
            rows += [tuple(r) for r in finished["rows"]]
            histories[split.name] = finished["history"]
            continue
        init_state = init_models[min(si, len(init_models) - 1)][0].state_dict() if init_models else None
        clock.start(si)
        with bar(f"{split.name} ({si + 1}/{len(splits)})", used.train.epochs, progress) as pb:
            def on_epoch(r, pb=pb):
                pb.update(advance=1, info=f"loss {r['loss']:.4f}" + (
                    f" val SRCC {r['val_srcc']:.3f}" if "val_srcc" in r else ""))
                clock.epoch_done(r)

            fitted = fit_split(table, split, used, cfg.seed + si, test_tables, init_state, device,
                               on_epoch=on_epoch, state_dir=run.state_dir(split.name))
        if fitted.result.resumed_after is not None and progress:
            err.print(f"{split.name}: continued after saved epoch {fitted.result.resumed_after}")
        histories[split.name] = fitted.result.history
        meta = meta_common.replace(
            split=split.name, seed=cfg.seed + si, train=used.train.to_dict(), scale=list(fitted.result.scale),
            best_epoch=fitted.result.best_epoch, history=fitted.result.history,
            test_metrics={t: fitted.entry[t] for t in split.test}, resumed_after=fitted.result.resumed_after)
        save_checkpoint(run.model_file(split.name), fitted.model.cpu(), meta)
        run.split_done(split.name, fitted.entry, fitted.rows, fitted.result.history)
        per_split.append(fitted.entry)
        rows += fitted.rows
    # 4. summary, predictions, plots
    test_names = list(splits[0].test)
    summary = {t: summarize([s[t] for s in per_split]) for t in test_names}
    result = FitResult(protocol, cache.fingerprint, METRIC_LABELS, per_split, summary, time.perf_counter() - t_start)
    run.write_results(result, rows)
    from diffvqa_cache.scoring.plots import learning_curves, scatter

    scatter(run.file(RunFolder.SCATTER), np.array([r[2] for r in rows]), np.array([r[1] for r in rows]),
            [r[3] if len(test_names) == 1 else r[4] for r in rows],
            f"{cache.config.dataset} {protocol}: median SRCC {summary[test_names[0]]['srcc']['median']:.3f}")
    learning_curves(run.file(RunFolder.LEARNING_CURVE), histories)
    from diffvqa_cache.scoring.report import write_run_report

    write_run_report(out)  # a view of the files below, rewritten by `report`: not in the manifest
    run.complete([s.name for s in splits])
    return result
