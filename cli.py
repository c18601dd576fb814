"""The `diffvqa-cache` command: thin typer commands that parse, build a config and call the library."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffvqa_cache.cache.settings import PAPER_PRESET, RECONSTRUCT_DEFAULTS, ExtractConfig
from diffvqa_cache.cli_options import (
    DEBUG,
    Typer,
    known_errors,
    load_checked_dataset,
    options_from,
    parse_sets,
    setup_logging,
)
from diffvqa_cache.cluster.jobs import ClusterJobs
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.training.regressor.config import RegressorConfig
from diffvqa_cache.training.settings import FitConfig, TrainConfig


app = Typer(help="DiffVQA video quality assessment: extract diffusion features once, fit fast many times.",
            no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
cache_app = Typer(help="Inspect and check a feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

# Shared option types, declared once.
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="kvd, lvqc, ytugc, lsvq, csv, labels_txt or sample.")]
RootOpt = Annotated[Optional[Path], typer.Option(help="Dataset root folder (not needed for sample).")]
LabelsOpt = Annotated[Optional[Path], typer.Option(help="Label file, overriding the one found in --root (alone: "
                                                         "its folder is the root). --dataset csv finds any one "
                                                         "CSV/TSV/XLSX in --root itself.")]
LimitOpt = Annotated[Optional[int], typer.Option(help="Take the first N videos only.")]
AllowProblemsOpt = Annotated[bool, typer.Option(help="Skip label rows with duplicate ids or unreadable MOS instead of stopping.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
VideoColumnOpt = Annotated[Optional[str], typer.Option(help="csv: the video path column.")]
MosColumnOpt = Annotated[Optional[str], typer.Option(help="csv: the MOS column.")]
WorkersOpt = Annotated[Optional[int], typer.Option(help="Run the tasks on a local dask cluster of N worker processes.")]
DaskSchedulerOpt = Annotated[Optional[str], typer.Option(help="Run the tasks on this running dask scheduler "
                                                              "(tcp://host:8786).")]
JOBS_PANEL = "Worker jobs (--cluster slurm|pbs --jobs N: submitted by this command, cancelled at its end)"


@app.callback()
def root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False) -> None:
    setup_logging(debug, verbose)


@app.command()
@known_errors
@options_from(ExtractConfig, "Extraction settings (recorded in the cache)")
@options_from(ClusterJobs, JOBS_PANEL, arg="cluster_jobs")
def extract(
    cfg: ExtractConfig,
    cluster_jobs: ClusterJobs,
    dataset: DatasetOpt = "sample",
    root: RootOpt = None,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option(help="Cache root; the cache goes to OUT/<dataset>/<fingerprint>.")] = Path("cache"),
    num_parts: Annotated[int, typer.Option("--num-parts", "--num-shards",
                                           help="Split the shards into N parts (job arrays): shard i is in part i % N.")] = 1,
    part: Annotated[Optional[int], typer.Option("--part", "--shard-index",
                                                help="Which part to run (default $SLURM_ARRAY_TASK_ID or 0).")] = None,
    limit: LimitOpt = None,
    allow_problems: AllowProblemsOpt = False,
    retry_failed: Annotated[bool, typer.Option(help="Recompute shards that recorded failed videos.")] = False,
    verify: Annotated[bool, typer.Option(help="Re-hash complete shards and recompute any that changed on disk.")] = False,
    video_column: VideoColumnOpt = None,
    mos_column: MosColumnOpt = None,
    workers: WorkersOpt = None,
    dask_scheduler: DaskSchedulerOpt = None,
) -> None:
    """Run the adapted SD once per video and write features into a sharded HDF5 cache."""
    from diffvqa_cache.cluster.dask_client import check_dask_args, dask_client
    from diffvqa_cache.devices import resolve_device
    from diffvqa_cache.errors import UserInputError
    from pipelines.extract import resolve_part, run_extract

    check_dask_args(workers, dask_scheduler, cluster_jobs)
    if cluster_jobs.cluster and cfg.device.startswith("cuda") and not cluster_jobs.gpus_per_job:
        raise UserInputError(f"--device {cfg.device} needs GPU worker jobs: --gpus-per-job 1 (or --device auto)")
    part = resolve_part(num_parts, part)
    data = load_checked_dataset(dataset, root, labels, limit, video_column, mos_column, allow_problems)
    with dask_client(workers, dask_scheduler, resolve_device(cfg.device).type == "cuda", cluster_jobs) as client:
        result = run_extract(data, cfg, out, num_parts=num_parts, part=part, retry_failed=retry_failed, client=client,
                             verify=verify)
    typer.echo(str(result.cache_dir))
    typer.echo(result.summary(), err=True)
    if result.failed:
        raise typer.Exit(1)


@cache_app.command("info")
@known_errors
def cache_info(path: Annotated[Path, typer.Argument(help="A cache directory, or an --out folder holding one.")],
               as_json: JsonOpt = False) -> None:
    """What a cache holds: fingerprint, settings, videos done, failed and missing, feature shapes."""
    from diffvqa_cache.cache.folder import FeatureCache, format_info

    cache = FeatureCache(path)
    typer.echo(json.dumps(cache.info(), indent=1, default=str) if as_json else format_info(cache))


@cache_app.command("verify")
@known_errors
def cache_verify(path: Annotated[Path, typer.Argument(help="A cache directory, or an --out folder holding one.")]) -> None:
    """Re-hash every shard against the manifest; exit 1 naming the damaged shards."""
    from diffvqa_cache.cache.folder import VERIFY_HINT, verify_cache

    problems, n = verify_cache(path)
    for p in problems:
        typer.echo(p)
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {n} shards; rerun the same extract command with {VERIFY_HINT}",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {n} shards match their checksums")


@cache_app.command("score")
@known_errors
def cache_score(path: Annotated[Path, typer.Argument(help="A cache directory, or an --out folder holding one.")],
                run: Annotated[Path, typer.Option(help="Run directory written by `fit` on features of this cache.")],
                output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the CSV here "
                                                               "instead of printing it.")] = None,
                video: Annotated[Optional[list[str]], typer.Option(help="Score only this cached video (repeat).")] = None,
                memory_gb: Annotated[Optional[float], typer.Option(help="Feature memory budget (default: 70% of "
                                                                  "the available memory); larger caches stream.")] = None,
                device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
                verify: Annotated[bool, typer.Option(help="Re-hash the shards read against the cache's manifest "
                                                          "first, as fit does.")] = True) -> None:
    """Score a cache's videos with a fitted run, without extracting them again: CSV of video, score (MOS
    scale, the split models' mean) and the split models' min and max; bounded memory at any cache size.
    The run's files and the shards read are checked against their checksums first."""
    from diffvqa_cache.scoring.cached import write_cached_scores

    said = write_cached_scores(run, path, output, video or None, device, memory_gb, verify)
    if said:
        typer.echo(said, err=True)


@cache_app.command("merge")
@known_errors
def cache_merge(parts: Annotated[list[Path], typer.Argument(help="Cache directories (or --out folders) of the parts.")],
                out: Annotated[Path, typer.Option(help="Cache root; the merged cache goes to OUT/<dataset>/<fingerprint>.")],
                move: Annotated[bool, typer.Option(help="Move the shard files instead of copying them.")] = False) -> None:
    """Join job-array parts written to different folders into one cache and write its manifest."""
    from diffvqa_cache.cache.folder import merge_caches

    target, manifest = merge_caches(parts, out, move=move)
    typer.echo(str(target))
    typer.echo(f"{len(manifest['shards'])}/{manifest['n_shards_planned']} shards, {manifest['videos']} videos, "
               f"{len(manifest['failed'])} failed, {len(manifest['not_extracted'])} not extracted yet"
               + ("" if manifest["complete"] else " (run the missing parts, then merge again)"), err=True)


@app.command()
@known_errors
def metrics(file: Annotated[Path, typer.Argument(help="CSV with a prediction and a MOS column: a run's "
                                                     "predictions.csv, predict's scores (with --labels), any CSV.")],
            pred: Annotated[Optional[str], typer.Option(help="Prediction column (default: pred, else score).")] = None,
            mos: Annotated[str, typer.Option(help="MOS column.")] = "mos",
            labels: Annotated[Optional[Path], typer.Option(help="Take the MOS from this label file instead, matching "
                                                                "video names with or without extension and folders.")] = None,
            video_column: Annotated[Optional[str], typer.Option(help="--labels: its video column.")] = None,
            mos_column: Annotated[Optional[str], typer.Option(help="--labels: its MOS column.")] = None,
            pooled: Annotated[bool, typer.Option(help="A run's predictions.csv: pool all splits' rows instead of "
                                                      "reporting per split and the median, as fit does.")] = False,
            as_json: JsonOpt = False) -> None:
    """SRCC, KRCC, PLCC (4-parameter logistic fit and raw) and RMSE of any CSV of predictions; a run's
    predictions.csv per split and their median, as fit reports them."""
    from diffvqa_cache.training.metrics import metrics_report

    typer.echo(metrics_report(file, pred, mos, labels, video_column, mos_column, pooled, as_json))


@app.command()
@known_errors
@options_from(AdaptConfig, "Adaptation settings (recorded in OUT/adapt_config.json)")
def adapt(
    cfg: AdaptConfig,
    dataset: DatasetOpt = "sample",
    root: RootOpt = None,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option(help="Output Controller folder (pass it to extract --controller).")] = Path("controller"),
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in --out.")] = False,
    video_column: VideoColumnOpt = None,
    mos_column: MosColumnOpt = None,
    allow_problems: AllowProblemsOpt = False,
) -> None:
    """Stage zero: train the Controller so SD reconstructs a dataset's frames (only the Controller learns)."""
    from pipelines.adapt import run_adapt

    data = load_checked_dataset(dataset, root, labels, None, video_column, mos_column, allow_problems)
    result = run_adapt(data, cfg, out, resume=resume)
    typer.echo(str(result.out))
    typer.echo(result.summary(), err=True)


@app.command()
@known_errors
@options_from(ExtractConfig, "Stage one's settings, as extract's (with --cache: those given change the cache's)",
              skip=("crops", "crop_placement", "small_frames", "grid", "ms_pool", "pixel_size", "batch_size",
                    "shard_size", "decode_workers"),  # no effect on the S view's chain
              defaults=RECONSTRUCT_DEFAULTS, build=functools.partial(ExtractConfig.from_options, check=False))
def reconstruct(
    ctx: typer.Context,
    cfg: ExtractConfig,
    video: Annotated[Path, typer.Argument(help="A video file.")],
    out: Annotated[Path, typer.Option(help="PNG to write (metrics go to the same name with .json).")] = Path("recon.png"),
    cache: Annotated[Optional[Path], typer.Option(help="Reconstruct with this cache's recorded settings, weights "
                                                       "check and decoders (a cache directory or its --out folder).")] = None,
    key: Annotated[Optional[str], typer.Option(help="The video's key in the dataset (seeds the noise as extract "
                                                    "does; default: its key in --cache, else the file name).")] = None,
) -> None:
    """Show what stage one sees: view, its reconstruction and the error, with PSNR and SSIM."""
    from pipelines.reconstruct import run_reconstruct

    if cache is None:
        result = run_reconstruct(video, out, cfg, key=key)
    else:  # the options given on the command line change the cache's settings
        given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                 if getattr(ctx.get_parameter_source(f.name), "name", "") == "COMMANDLINE"}
        result = run_reconstruct(video, out, cache=cache, key=key, **given)
    typer.echo(result.summary())
    typer.echo(f"wrote {result.png} and {result.json}", err=True)


@app.command()
@known_errors
@options_from(RegressorConfig, "Regressor (regressor.*; ms_levels: --set ms_levels=[0,2])", overrides="regressor.",
              arg="given_regressor", skip=("ms_levels",))
@options_from(TrainConfig, "Training (train.*; with --init, --epochs, --lr and --warmup-epochs set finetune.*)",
              overrides="train.", arg="given_train")
@options_from(FitConfig, "Fit settings (top level; all are recorded in OUT/config.json)", overrides="",
              arg="given")
def fit(
    given: dict,
    given_train: dict,
    given_regressor: dict,
    cache: Annotated[Path, typer.Option(help="Cache directory from `extract` (or its --out folder).")],
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    config: Annotated[Optional[Path], typer.Option(help="YAML of fit settings (regressor:, train:, top-level).")] = None,
    test_cache: Annotated[Optional[list[Path]], typer.Option(help="A further test set (repeatable): cross-dataset "
                                                                  "tests, or beside LSVQ's own test sets.")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Fine-tune: start from this run's models (e.g. an LSVQ run), "
                                                     "with the fine-tuning settings (--set finetune.lr=... etc.).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any setting (the options below win): "
                                                                    "--set regressor.use_tcab=false, --set "
                                                                    "finetune.lr=1e-5.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run in --out: finished splits are kept, the "
                                              "current one continues after its last completed epoch.")] = False,
    scale: Annotated[Optional[tuple[float, float]], typer.Option(
        help="LOW HIGH: your MOS scale's limits (e.g. 1 5), for predict's 0-1 score and plots (default: "
             "KoNViD-1k, YouTube-UGC 1-5; LIVE-VQC, LSVQ 0-100; else the observed label range).")] = None,
) -> None:
    """Train the regressor over a cache under a protocol; write metrics, predictions, models and plots.

    Settings: the defaults, then --config, then --set, then the options given here."""
    from diffvqa_cache.training.settings import FinetuneConfig, load_fit_config
    from diffvqa_cache.run.summary import format_summary
    from pipelines.fit import run_fit

    if init:  # a fine-tuning trains with finetune's epochs, lr and warm-up: the options set those
        finetune = {f.name for f in dataclasses.fields(FinetuneConfig)}
        given_train = {(k.replace("train.", "finetune.", 1) if k.removeprefix("train.") in finetune else k): v
                       for k, v in given_train.items()}
    overrides = parse_sets(set_) | given | given_train | given_regressor
    cfg = load_fit_config(config, overrides)
    result = run_fit(cache, out, cfg, test_cache_paths=test_cache or [], init=init, resume=resume,
                     scale=scale if scale and None not in scale else None)
    typer.echo(format_summary(result, out))


@app.command()
@known_errors
def report(
    run: Annotated[Path, typer.Argument(help="Run directory written by `fit`, or a sweep folder.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the page "
                                                   "(default: RUN/report.html).")] = None,
    worst: Annotated[int, typer.Option(help="How many of the worst-predicted test videos to show.")] = 8,
) -> None:
    """Write a run's report: one self-contained HTML page (no server, images inline) with the protocol and
    settings, per-split metrics, the scatter, the learning curves and the worst-predicted test videos (a
    sweep's: each configuration's medians, per-split values and spread, and the chart)."""
    from diffvqa_cache.scoring.report import write_report

    typer.echo(f"wrote {write_report(run, output, worst)}")


@app.command()
@known_errors
def predict(
    videos: Annotated[list[Path], typer.Argument(help="Video files or folders of videos.")],
    run: Annotated[Path, typer.Option(help="Run directory written by `fit`.")],
    model: Annotated[Optional[str], typer.Option(help="Where the run's SD weights are now (default: as recorded).")] = None,
    controller: Annotated[Optional[str], typer.Option(help="Where the run's Controller is now.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write CSV (or JSON by suffix) here, as "
                                                   "it goes; run again, it scores only the videos not in it yet.")] = None,
    per_frame: Annotated[bool, typer.Option("--per-frame", help="Add every sampled frame: index, time, quality, "
                                            "weight (CSV: one row per frame; JSON: nested).")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Write one timeline PNG per video into this folder.")] = None,
    unfamiliar_percentile: Annotated[float, typer.Option(help="Flag a video UNFAMILIAR when its distance to the "
                                                         "training videos exceeds this percentile of theirs.")] = 99.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Views per model pass.")] = 8,
    labels: Annotated[Optional[Path], typer.Option(help="Check the scores against this label file (any CSV/TSV/XLSX "
                                                        "with a video and a MOS column, or labels.txt): adds its MOS "
                                                        "and prints SRCC/PLCC/KRCC/RMSE; names match with or without "
                                                        "extension and folders.")] = None,
    video_column: Annotated[Optional[str], typer.Option(help="--labels: its video column.")] = None,
    mos_column: Annotated[Optional[str], typer.Option(help="--labels: its MOS column.")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="Rank each score against this collection ('better than "
                                                           "73 % of ...'): a run folder (its training videos' MOS) or "
                                                           "a CSV of scores (e.g. an earlier predict output); default: "
                                                           "the run's training videos.")] = None,
) -> None:
    """Score videos with a fitted run: MOS-scale and 0-1 scores, where each falls among the training videos
    (or --reference), the split models' range, an unfamiliar-content flag, and (--per-frame, --plot) each frame's quality and weight; --labels: checked against your MOS."""
    from diffvqa_cache.openmp import wait_passively

    wait_passively()  # before torch loads: stage one and the split models run at once (diffvqa_cache/openmp.py)
    from diffvqa_cache.scoring.results import check_against_labels, format_table, predict_json, scored_line
    from pipelines.predict import run_predict

    table = None
    if labels is not None:
        from diffvqa_cache.datasets import read_labels

        table = read_labels(labels, video_column, mos_column)  # a wrong label file fails before the model loads
    results = run_predict(videos, run, model=model, controller=controller, device=device, batch_size=batch_size,
                          output=output, per_frame=per_frame, plot_dir=plot, unfamiliar_percentile=unfamiliar_percentile,
                          labels=table, reference=reference)
    typer.echo(json.dumps(predict_json(results, run.resolve(), per_frame, table), indent=1) if as_json
               else format_table(results, table))
    if table is not None:
        typer.echo(check_against_labels(results, table), err=as_json)
    failed = any(r.error is not None for r in results)
    if output is not None or failed:
        typer.echo(scored_line(results, output), err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
@known_errors
@options_from(ClusterJobs, JOBS_PANEL, arg="cluster_jobs", defaults={"gpus_per_job": 0})  # fits run on CPU workers
def sweep(
    cluster_jobs: ClusterJobs,
    cache: Annotated[Path, typer.Option(help="Cache directory from `extract` (or its --out folder).")],
    grid: Annotated[Path, typer.Option(help="YAML of configurations: a list of named overrides or a grid "
                                            "(setting: [values]); see pipelines/ablations.yaml.")],
    out: Annotated[Path, typer.Option(help="Sweep directory (tasks/, results.csv, summary.*).")],
    workers: Annotated[Optional[int], typer.Option(help="Local dask cluster of N worker processes (default: one "
                                                        "per core, at most one per task).")] = None,
    dask_scheduler: Annotated[Optional[str], typer.Option("--dask-scheduler", "--scheduler",
                                                          help="Run the tasks on this running dask scheduler "
                                                               "(tcp://host:8786).")] = None,
    serial: Annotated[bool, typer.Option(help="No dask: run the tasks one by one in this process.")] = False,
    splits: Annotated[Optional[int], typer.Option(help="Random protocol: number of splits (default 10).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seeds splits and training (split i uses seed + i).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting of every configuration.")] = None,
) -> None:
    """Ablations: fit every configuration of a grid on every split, one dask task each; summarize."""
    from diffvqa_cache.training.sweep_results import format_summary
    from pipelines.sweep import run_sweep

    overrides = parse_sets(set_)
    for name, value in (("splits", splits), ("seed", seed)):
        if value is not None:
            overrides[name] = value
    result = run_sweep(cache, grid, out, workers=workers, scheduler_address=dask_scheduler, serial=serial,
                       overrides=overrides, cluster_jobs=cluster_jobs)
    typer.echo(format_summary(result))
    if result.failed:
        typer.echo(f"{len(result.failed)} task(s) failed (see {out}/summary.md); a rerun retries only those", err=True)
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@known_errors
@options_from(ClusterJobs, "Jobs (one per array task, or dask worker jobs)", skip=("cluster", "start_timeout"),
              defaults={"jobs": 16}, build=dict, arg="batch")
def cluster(
    ctx: typer.Context,
    batch: dict,
    kind: Annotated[str, typer.Argument(help="slurm or pbs.")],
    dataset: DatasetOpt = "sample",
    root: RootOpt = None,
    out: Annotated[Path, typer.Option(help="Cache root the parts write to (a shared filesystem).")] = Path("cache"),
    mode: Annotated[str, typer.Option(help="array: a job array of extract parts; dask: dask worker jobs.")] = "array",
    scheduler_address: Annotated[str, typer.Option(help="dask mode: the scheduler's address.")] = "tcp://SCHEDULER_HOST:8786",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the script here (default "
                                                                          "diffvqa-<kind>-<mode>.sh).")] = None,
    print_: Annotated[bool, typer.Option("--print", help="Print the script instead of writing a file.")] = False,
    submit: Annotated[bool, typer.Option(help="SLURM array: sbatch the parts still missing and a finishing job "
                                              "after them that writes the manifest.")] = False,
) -> None:
    """Write a job script: a SLURM/PBS job array of extraction parts, or dask-jobqueue worker jobs.

    Extra options are passed to `diffvqa-cache extract` (e.g. --model, --frames, --labels). Jobs run in this
    folder and in this command's Python environment (unless --setup).
    """
    from diffvqa_cache.cluster.scripts import render
    from diffvqa_cache.errors import UserInputError
    from pipelines.submit import cluster_script, submit_missing, write_cluster_script

    args = ["--dataset", dataset] + (["--root", str(root)] if root else []) + ["--out", str(out)] + list(ctx.args)
    with typer.main.get_command(app).commands["extract"].make_context("diffvqa-cache extract", list(args)) as extract_ctx:
        params = extract_ctx.params  # the forwarded options checked by extract's own parser, now
    if params["num_parts"] != 1 or params["part"] is not None:
        raise UserInputError("cluster sets --num-parts (= --jobs) and --part itself; leave them out")
    cfg = ExtractConfig.from_options(**{f.name: params[f.name] for f in dataclasses.fields(ExtractConfig)})
    spec = cluster_script(kind, mode, batch, args, scheduler_address, submit)
    if print_:
        typer.echo(render(spec), nl=False)
        return
    path = output or Path(f"diffvqa-{kind}-{mode}.sh")
    said = write_cluster_script(spec, path)
    if not submit:
        typer.echo(str(path))
        typer.echo(said, err=True)
        return
    data = load_checked_dataset(params["dataset"], params["root"], params["labels"], params["limit"],
                                params["video_column"], params["mos_column"], params["allow_problems"])
    typer.echo(submit_missing(spec, path, data, cfg, out, params["retry_failed"]).describe())


@app.command()
@known_errors
@options_from(ExtractConfig, "Extraction preset (one for every dataset; defaults: the paper's chain)",
              skip=("controller",), defaults=PAPER_PRESET, build=functools.partial(ExtractConfig.from_options,
                                                                                   check=False))
def reproduce(
    cfg: ExtractConfig,
    out: Annotated[Path, typer.Option(help="Folder of the reproduction (controller/, cache/, runs/, table.md).")],
    lsvq: Annotated[Optional[Path], typer.Option(help="LSVQ root (labels_train_test.csv, labels_test_1080p.csv).")] = None,
    kvd: Annotated[Optional[Path], typer.Option(help="KoNViD-1k root.")] = None,
    lvqc: Annotated[Optional[Path], typer.Option(help="LIVE-VQC root.")] = None,
    ytugc: Annotated[Optional[Path], typer.Option(help="YouTube-UGC root.")] = None,
    controller: Annotated[Optional[str], typer.Option(help="An adapted Controller folder (skips adaptation).")] = None,
    adapt_steps: Annotated[int, typer.Option(help="Adaptation steps on LSVQ-train.")] = AdaptConfig.max_steps,
    adapt_limit: Annotated[Optional[int], typer.Option(help="Adapt on a seeded subset of N videos.")] = None,
    splits: Annotated[int, typer.Option(help="Random splits of each fine-tuning.")] = 10,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs of every fit (train.epochs and "
                                                       "finetune.epochs).")] = None,
    limit: LimitOpt = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a fit setting of every fit (the "
                                                                    "fine-tuning ones: finetune.lr=...).")] = None,
    workers: WorkersOpt = None,
    dask_scheduler: DaskSchedulerOpt = None,
) -> None:
    """The paper's tables in one command: adapt on LSVQ-train, extract, LSVQ protocol, fine-tune, cross-dataset."""
    from diffvqa_cache.cluster.dask_client import dask_client
    from diffvqa_cache.devices import resolve_device
    from diffvqa_cache.scoring.reproduction import ReproduceConfig, format_table
    from pipelines.reproduce import run_reproduce

    roots = {name: str(root) for name, root in (("lsvq", lsvq), ("kvd", kvd), ("lvqc", lvqc), ("ytugc", ytugc)) if root}
    fit = parse_sets(set_) | ({"train.epochs": epochs, "finetune.epochs": epochs} if epochs is not None else {})
    rcfg = ReproduceConfig.from_command(roots, cfg, controller, splits, limit, fit, adapt_steps, adapt_limit)
    with dask_client(workers, dask_scheduler, gpu=resolve_device(cfg.device).type == "cuda") as client:
        typer.echo(format_table(run_reproduce(rcfg, out, client=client)))


@app.command()
@known_errors
def doctor(
    cache: Annotated[Path, typer.Option(help="Where extract will write (extract --out): free space and write "
                                             "speed are measured there.")] = Path("cache"),
    model: Annotated[Optional[str], typer.Option(help="Also check this SD folder's layout ('tiny', a folder, "
                                                      "or a hub id in the local cache).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check this machine before a long run: torch/CUDA, GPUs, the Mamba path, decoders, model, disk, cluster.

    Exit 1 when an essential is missing (torch, diffusers, h5py, a video decoder, the Mamba path, --model).
    """
    from diffvqa_cache.doctor import format_report, run_doctor

    report = run_doctor(cache, model, debug=DEBUG["on"])
    typer.echo(json.dumps(report.to_dict(), indent=1) if as_json else format_report(report))
    raise typer.Exit(report.exit_code)


@app.command()
@known_errors
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its Controller, cache, run and sweep.")] = Path("demo-out"),
    splits: Annotated[int, typer.Option(help="Random 80/20 splits of the fit.")] = 10,
    sweep: Annotated[bool, typer.Option(help="Also run a small ablation sweep.")] = True,
    workers: Annotated[Optional[int], typer.Option(help="Dask workers for the sweep (default: serial).")] = None,
) -> None:
    """The whole pipeline on the embedded sample with the tiny model: adapt, extract, fit, sweep, summary."""
    from pipelines.demo import format_demo, run_demo

    typer.echo(format_demo(run_demo(out, splits=splits, sweep=sweep, workers=workers)))


def main() -> None:
    import signal
    import sys

    # scancel, qdel and time limits send SIGTERM: leave through `finally` blocks, so claimed shards are released
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    app()


if __name__ == "__main__":
    main()
