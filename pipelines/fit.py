"""Stage two: train the regressor over a cache under a protocol and write a self-describing run directory.

Protocols (`diffvqa_cache.training.protocols`): `random` (repeated 80/20 splits by video, median over splits),
`lsvq` (the official split: train -> test and test1080p, and every --test-cache), `cross` (the cache, or
its official train part -> each --test-cache); `--init` fine-tunes from an earlier run. Test sets are
only ever used for reporting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.files import folder_lock, reporting_disk_full
from diffvqa_cache.progress import bar, err
from diffvqa_cache.run.folder import FitResult, RunConfig, RunFolder
from diffvqa_cache.scoring.familiarity import write_reference
from diffvqa_cache.training.checkpoint import CheckpointMeta, save_checkpoint
from diffvqa_cache.training.fitting import choose_scale, fit_split
from diffvqa_cache.training.metrics import METRIC_KEYS, METRIC_LABELS, SHORT_LABELS, summarize
from diffvqa_cache.training.protocols import Split, check_plan, plan_splits, test_set_names
from diffvqa_cache.training.rules import LoadSpec
from diffvqa_cache.training.settings import FitConfig
from diffvqa_cache.training.source import FeatureSource, open_features


@dataclass
class FitInputs:
    cache: FeatureCache
    test_caches: list[FeatureCache]
    protocol: str
    splits: list[Split]
    spec: LoadSpec  # what was taken from the caches
    table: FeatureSource
    test_tables: dict[str, FeatureSource]  # test-set name -> the features of a --test-cache
    data: dict  # the data path chosen, for the run's record


def load_fit_inputs(cache_path: Path, cfg: FitConfig, test_cache_paths: list[Path] = (),
                    progress: bool = False, device=None) -> FitInputs:
    """Open and check the caches, plan the protocol's splits, and open the selected features: loaded
    once into memory when they fit the budget (`cfg.data`, `cfg.memory_gb`), else streamed."""
    cache = FeatureCache(cache_path)
    cache.check_complete(cfg.verify)
    if cache.config.stale_note():
        err.print(f"[yellow]{cache.path}: {cache.config.stale_note()}; `predict` will refuse this run: "
                  "re-extract the cache with this version[/]")
    test_caches = [FeatureCache(p) for p in test_cache_paths]
    for test_cache in test_caches:
        test_cache.check_complete(cfg.verify)
        if test_cache.fingerprint != cache.fingerprint:
            versions = ("" if test_cache.config.extractor == cache.config.extractor else
                        f" (extractor versions {test_cache.config.extractor} and {cache.config.extractor})")
            raise CacheError(f"--test-cache {test_cache.path} has fingerprint {test_cache.fingerprint}, the training "
                             f"cache {cache.fingerprint}{versions}: extract both with the same settings")
    protocol, splits = plan_splits(cfg.protocol, cache, test_caches, cfg.splits, cfg.test_fraction, cfg.seed,
                                   cfg.cross_train)
    names = test_set_names(test_caches, ("test", "test1080p"))
    spec = cfg.load_spec(cache.config.pixel_size)
    features = open_features([cache, *test_caches], spec, cfg.data, cfg.budget_gb(), device, progress)
    table, test_tables = features.sources[0], dict(zip(names, features.sources[1:]))
    # the features' own checks (NaN/Inf, where loaded into memory) first, then the plan: all before any training
    check_plan(protocol, splits, cache.path, cfg.test_fraction, cfg.train.val_fraction,
               {name: str(c.path) for name, c in zip(names, test_caches)})
    return FitInputs(cache, test_caches, protocol, splits, spec, table, test_tables, features.record())


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


# TCAB on the CPU, measured (BENCHMARKS.md, "TCAB on the CPU", 2026-12-05, 2 shared cores): an epoch of 16
# videos took 62.6 s with TCAB on 224 px views, 23.5 s with TCAB off (2.7x); doctor quotes the same figure
TCAB_CPU_FIGURE = "TCAB on 224 px views on the CPU: 62.6 s an epoch for 16 videos vs 23.5 s with TCAB off (BENCHMARKS.md)"
CHEAPER = "--set pixel_size=64 (TCAB on 64 px views) or --set regressor.use_tcab=false"


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


def check_resumable(out: Path, new: RunConfig) -> None:
    """Refuse to resume a run directory written with other settings (or not by `fit`)."""
    if not RunFolder(out).has_config():
        return  # nothing to resume: a fresh run
    old = RunConfig.read(out, "--out")
    a, b = old.to_dict(), new.to_dict()
    for d, run in ((a, old), (b, new)):
        d.pop("data", None), d.pop("package_version", None), d.pop("scale", None), d.pop("scale_source", None)
        d.pop("train_mos", None)  # derived from the cache and the splits (compared); absent in older runs
        # a resumed run may change the settings declared `numbers=False` (data, memory_gb, verify, train.device ...)
        d["fit"] = run.fit.numbers()
        # written before fine-tuning had settings of its own: it trained with fit.train
        d["training"] = (run.training or run.fit.train).numbers()
    changed = [k for k in sorted(a.keys() | b.keys()) if k != "fit" and a.get(k) != b.get(k)] \
        + [f"fit.{k}" for k in sorted(a["fit"].keys() | b["fit"].keys()) if a["fit"].get(k) != b["fit"].get(k)]
    if changed:
        raise UserInputError(f"--resume: {out} holds a run with other settings ({', '.join(changed)}); "
                             "rerun with its settings, use another --out, or drop --resume to start over")


def format_summary(result: FitResult, out: Path) -> str:
    lines = [f"protocol {result.protocol}, {len(result.splits)} split(s), {result.seconds:.1f} s; run: {out}"]
    for test, s in result.summary.items():
        lines.append(f"  {test:10s} " + "  ".join(f"{SHORT_LABELS[k]} {s[k]['median']:.4f}" for k in METRIC_KEYS)
                     + f"   (median of {s['n_splits']}; std SRCC {s['srcc']['std']:.4f})")
    lines.append("  PLCC(logistic): Pearson after the 4-parameter logistic fit (the paper's); PLCC(raw): plain Pearson")
    lines.append("  files: " + " ".join(RunFolder(out).files_listed()))
    return "\n".join(lines)
