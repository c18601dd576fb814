"""The `diffvqa-cache` command: thin typer commands that parse, build a config and call the library."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="DiffVQA video quality assessment: extract diffusion features once, fit fast many times.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
cache_app = typer.Typer(help="Inspect and check a feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

_DEBUG = {"on": bool(os.environ.get("DIFFVQA_DEBUG"))}

# Shared option types, declared once.
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="kvd, lvqc, ytugc, lsvq, csv, labels_txt or sample.")]
RootOpt = Annotated[Optional[Path], typer.Option(help="Dataset root folder (not needed for sample).")]
LabelsOpt = Annotated[Optional[Path], typer.Option(help="Label file, overriding the one found in --root.")]
LimitOpt = Annotated[Optional[int], typer.Option(help="Take the first N videos only.")]
AllowProblemsOpt = Annotated[bool, typer.Option(help="Skip label rows with duplicate ids or unreadable MOS instead of stopping.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelOpt = Annotated[str, typer.Option(help="'tiny', a local diffusers SD folder, or a hub id.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub revision of --model.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")]


def known_errors(fn):
    """Known errors become one line on stderr and an exit code; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from diffvqa_cache.errors import DiffVQAError

        try:
            return fn(*args, **kwargs)
        except (DiffVQAError, FileNotFoundError) as exc:
            if _DEBUG["on"]:
                raise
            code = getattr(exc, "exit_code", 2)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code) from None

    return wrapper


@app.callback()
def root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False) -> None:
    _DEBUG["on"] = _DEBUG["on"] or debug
    if not verbose:  # dask's own logging config (read at import, also by its worker processes)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    for noisy in ("diffusers", "transformers", "distributed", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _load_index(dataset: str, root: Optional[Path], labels: Optional[Path], limit: Optional[int],
                video_column: Optional[str] = None, mos_column: Optional[str] = None, allow_problems: bool = False):
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.progress import err

    index = load_dataset(dataset, root, labels=labels, limit=limit, video_column=video_column, mos_column=mos_column)
    index.check(allow_problems)
    err.print(index.summary())
    for line in index.problems[:20]:
        err.print(f"[yellow]problem[/] {line}")
    if len(index.problems) > 20:
        err.print(f"[yellow]... and {len(index.problems) - 20} more problems[/]")
    return index


@contextlib.contextmanager
def _dask_client(workers: Optional[int], scheduler: Optional[str], gpu: bool = False):
    """None (no dask), a Client of a LocalCluster of `workers` processes (each offering one GPU resource
    with `gpu`), or one joined to `scheduler`."""
    if workers is None and scheduler is None:
        yield None
        return
    from diffvqa_cache.errors import UserInputError

    if workers is not None and scheduler is not None:
        raise UserInputError("give --workers (a local cluster) or --dask-scheduler (an existing one), not both")
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if workers < 1:
        raise UserInputError(f"--workers must be >= 1, got {workers}")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      resources={"GPU": 1} if gpu else None) as cluster, \
            Client(cluster) as client:
        yield client


@app.command()
@known_errors
def extract(
    dataset: DatasetOpt = "sample",
    root: RootOpt = None,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option(help="Cache root; the cache goes to OUT/<dataset>/<fingerprint>.")] = Path("cache"),
    model: ModelOpt = "tiny",
    revision: RevisionOpt = None,
    controller: Annotated[Optional[str], typer.Option(help="Adapted Controller folder (from `adapt`).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Frames sampled uniformly per video.")] = 8,
    fps: Annotated[Optional[float], typer.Option(help="Sample at a fixed rate instead of --frames.")] = None,
    steps: Annotated[int, typer.Option(help="Reverse-chain steps (1-4 are the fast variants).")] = 50,
    scheduler: Annotated[str, typer.Option(help="ddim, dpm or euler.")] = "ddim",
    timestep_spacing: Annotated[str, typer.Option(help="trailing (chains start at t=999), leading or linspace.")] = "trailing",
    strength: Annotated[float, typer.Option(help="1: chain from pure noise (the paper); <1: from the noised input.")] = 1.0,
    noise: Annotated[str, typer.Option(help="Start noise: shared (same for every video) or per-video.")] = "shared",
    crops: Annotated[int, typer.Option(help="Cropped views per frame.")] = 1,
    grid: Annotated[int, typer.Option(help="F_MS maps pooled to GRID x GRID.")] = 8,
    view_size: Annotated[Optional[int], typer.Option(help="View side in pixels (default: the model's native size).")] = None,
    pixel_size: Annotated[int, typer.Option(help="Side of the view pixel copy kept for TCAB.")] = 224,
    seed: Annotated[int, typer.Option(help="Seeds crops and start noise.")] = 0,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).")] = "fp32",
    batch_size: Annotated[int, typer.Option(help="Views per model pass.")] = 8,
    device: DeviceOpt = "auto",
    shard_size: Annotated[int, typer.Option(help="Videos per HDF5 shard.")] = 32,
    num_shards: Annotated[int, typer.Option(help="Split the shards into N parts (job arrays).")] = 1,
    shard_index: Annotated[Optional[int], typer.Option(help="Which part to run (default $SLURM_ARRAY_TASK_ID or 0).")] = None,
    limit: LimitOpt = None,
    allow_problems: AllowProblemsOpt = False,
    retry_failed: Annotated[bool, typer.Option(help="Recompute shards that recorded failed videos.")] = False,
    verify: Annotated[bool, typer.Option(help="Re-hash complete shards and recompute any that changed on disk.")] = False,
    video_column: Annotated[Optional[str], typer.Option(help="csv: the video path column.")] = None,
    mos_column: Annotated[Optional[str], typer.Option(help="csv: the MOS column.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Run shards as dask tasks on a local cluster of N worker "
                                                        "processes.")] = None,
    dask_scheduler: Annotated[Optional[str], typer.Option(help="Run shards as dask tasks on this dask scheduler "
                                                               "(tcp://host:8786); GPU workers need --resources GPU=1.")] = None,
) -> None:
    """Run the adapted SD once per video and write features into a sharded HDF5 cache."""
    from diffvqa_cache.config import ExtractConfig
    from diffvqa_cache.errors import UserInputError
    from pipelines.extract import run_extract

    if fps is not None:
        frames = None
    try:
        cfg = ExtractConfig(model=model, revision=revision, controller=controller, scheduler=scheduler, steps=steps,
                            timestep_spacing=timestep_spacing, strength=strength, noise=noise, frames=frames, fps=fps, crops=crops, view_size=view_size, grid=grid,
                            pixel_size=pixel_size, seed=seed, dtype=dtype, batch_size=batch_size, device=device,
                            shard_size=shard_size)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    if shard_index is None:
        array_id = os.environ.get("SLURM_ARRAY_TASK_ID", os.environ.get("PBS_ARRAY_INDEX", 0))
        shard_index = int(array_id) if num_shards > 1 else 0
    if not 0 <= shard_index < num_shards:
        raise UserInputError(f"--shard-index {shard_index} must be in 0..{num_shards - 1} for --num-shards {num_shards}")
    index = _load_index(dataset, root, labels, limit, video_column, mos_column, allow_problems)
    from diffvqa_cache.devices import resolve_device

    with _dask_client(workers, dask_scheduler, gpu=resolve_device(device).type == "cuda") as client:
        result = run_extract(index, cfg, out, num_shards=num_shards, shard_index=shard_index,
                             retry_failed=retry_failed, client=client, verify=verify)
    typer.echo(str(result.cache_dir))
    typer.echo(result.summary(), err=True)
    if result.failed:
        raise typer.Exit(1)


@cache_app.command("info")
@known_errors
def cache_info(path: Annotated[Path, typer.Argument(help="A cache directory, or an --out folder holding one.")],
               as_json: JsonOpt = False) -> None:
    """What a cache holds: fingerprint, settings, videos done, failed and missing, feature shapes."""
    from diffvqa_cache.cache import FeatureCache

    info = FeatureCache(path).info()
    if as_json:
        typer.echo(json.dumps(info, indent=1, default=str))
        return
    ex = info["config"]["extract"]
    typer.echo(f"cache        {info['path']}\nfingerprint  {info['fingerprint']}\n"
               f"model        {ex['model']} ({info['config']['model_id']}), controller {info['config']['controller_id']}\n"
               f"settings     steps={ex['steps']} scheduler={ex['scheduler']} frames={ex['frames']} fps={ex['fps']} "
               f"crops={ex['crops']} grid={ex['grid']} view={info['config']['view_size']} seed={ex['seed']} dtype={ex['dtype']}\n"
               f"videos       {info['videos']} done, {len(info['failed'])} failed, {len(info['missing'])} missing; "
               f"{info['shards']}/{info['shards_planned']} shards, {info['bytes'] / 1e6:.1f} MB")
    for name, f in info["features"].items():
        typer.echo(f"  {name:16s} {tuple(f['shape'])} {f['dtype']}")
    for f in info["failed"][:10]:
        typer.echo(f"  failed {f['video']}: {f['reason']}")


@cache_app.command("verify")
@known_errors
def cache_verify(path: Annotated[Path, typer.Argument(help="A cache directory, or an --out folder holding one.")]) -> None:
    """Re-hash every shard against the manifest; exit 1 naming the damaged shards."""
    from diffvqa_cache.cache import verify_cache

    problems, n = verify_cache(path)
    for p in problems:
        typer.echo(p)
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {n} shards; rerun the same extract command to recompute them", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {n} shards match their checksums")


@cache_app.command("merge")
@known_errors
def cache_merge(parts: Annotated[list[Path], typer.Argument(help="Cache directories (or --out folders) of the parts.")],
                out: Annotated[Path, typer.Option(help="Cache root; the merged cache goes to OUT/<dataset>/<fingerprint>.")],
                move: Annotated[bool, typer.Option(help="Move the shard files instead of copying them.")] = False) -> None:
    """Join job-array parts written to different folders into one cache and write its manifest."""
    from diffvqa_cache.cache import merge_caches

    target, manifest = merge_caches(parts, out, move=move)
    typer.echo(str(target))
    typer.echo(f"{len(manifest['shards'])}/{manifest['n_shards_planned']} shards, {manifest['videos']} videos, "
               f"{len(manifest['failed'])} failed, {len(manifest['not_extracted'])} not extracted yet"
               + ("" if manifest["complete"] else " (run the missing parts, then merge again)"), err=True)


@app.command()
@known_errors
def metrics(file: Annotated[Path, typer.Argument(help="CSV with a prediction and a MOS column.")],
            pred: Annotated[str, typer.Option(help="Prediction column.")] = "pred",
            mos: Annotated[str, typer.Option(help="MOS column.")] = "mos",
            as_json: JsonOpt = False) -> None:
    """SRCC, KRCC, PLCC (4-parameter logistic fit and raw) and RMSE of any CSV of predictions."""
    from diffvqa_cache.metrics import format_metrics, metrics_from_csv

    m = metrics_from_csv(file, pred_col=pred, mos_col=mos)
    typer.echo(json.dumps(m) if as_json else format_metrics(m))


@app.command()
@known_errors
def adapt(
    dataset: DatasetOpt = "sample",
    root: RootOpt = None,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option(help="Output Controller folder (pass it to extract --controller).")] = Path("controller"),
    model: ModelOpt = "tiny",
    revision: RevisionOpt = None,
    controller: Annotated[Optional[str], typer.Option(help="Start from this Controller folder (default: zero-init).")] = None,
    frames: Annotated[int, typer.Option(help="Frames sampled uniformly per video.")] = 8,
    crops: Annotated[int, typer.Option(help="Cropped views per frame (besides the resized view).")] = 1,
    limit: Annotated[Optional[int], typer.Option(help="Train on a seeded random subset of N videos.")] = None,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 20000,
    batch_size: Annotated[int, typer.Option(help="Latents per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 500,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-2,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm (0: none).")] = 1.0,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: only at the end).")] = 1000,
    keep_checkpoints: Annotated[int, typer.Option(help="Checkpoints kept in OUT/checkpoints.")] = 2,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seeds crops, video subset, frame order, timesteps and noise.")] = 0,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast, CUDA only).")] = "fp32",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for memory.")] = False,
    device: DeviceOpt = "auto",
    video_column: Annotated[Optional[str], typer.Option(help="csv: the video path column.")] = None,
    mos_column: Annotated[Optional[str], typer.Option(help="csv: the MOS column.")] = None,
    allow_problems: AllowProblemsOpt = False,
) -> None:
    """Stage zero: train the Controller so SD reconstructs a dataset's frames (only the Controller learns)."""
    from diffvqa_cache.adaptation import AdaptConfig
    from diffvqa_cache.errors import UserInputError
    from pipelines.adapt import run_adapt

    try:
        cfg = AdaptConfig(model=model, revision=revision, controller=controller, frames=frames, crops=crops,
                          limit=limit, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                          warmup=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                          dtype=dtype, gradient_checkpointing=gradient_checkpointing, save_every=save_every,
                          keep_checkpoints=keep_checkpoints, device=device)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    index = _load_index(dataset, root, labels, None, video_column, mos_column, allow_problems)
    result = run_adapt(index, cfg, out, resume=resume)
    typer.echo(str(result.out))
    typer.echo(result.summary(), err=True)


@app.command()
@known_errors
def reconstruct(
    video: Annotated[Path, typer.Argument(help="A video file.")],
    out: Annotated[Path, typer.Option(help="PNG to write (metrics go to the same name with .json).")] = Path("recon.png"),
    model: ModelOpt = "tiny",
    revision: RevisionOpt = None,
    controller: Annotated[Optional[str], typer.Option(help="Adapted Controller folder (from `adapt`).")] = None,
    frames: Annotated[int, typer.Option(help="Frames sampled uniformly (one row each).")] = 1,
    steps: Annotated[int, typer.Option(help="Reverse-chain steps, as extract --steps.")] = 50,
    strength: Annotated[float, typer.Option(help="As extract --strength.")] = 1.0,
    scheduler: Annotated[str, typer.Option(help="ddim, dpm or euler.")] = "ddim",
    seed: Annotated[int, typer.Option(help="As extract --seed (start noise).")] = 0,
    key: Annotated[Optional[str], typer.Option(help="The video's key in the dataset (seeds the noise as extract "
                                                    "does; default: the file name without extension).")] = None,
    view_size: Annotated[Optional[int], typer.Option(help="View side in pixels (default: the model's native size).")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).")] = "fp32",
    device: DeviceOpt = "auto",
) -> None:
    """Show what stage one sees: view, its reconstruction and the error, with PSNR and SSIM."""
    from pipelines.reconstruct import run_reconstruct

    result = run_reconstruct(video, out, model=model, controller=controller, revision=revision, frames=frames,
                             steps=steps, scheduler=scheduler, seed=seed, key=key, view_size=view_size, strength=strength,
                             dtype=dtype, device=device)
    typer.echo(result.summary())
    typer.echo(f"wrote {result.png} and {result.json}", err=True)


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def _parse_sets(items: Optional[list[str]]) -> dict:
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        overrides[name.strip()] = _parse_value(value)
    return overrides


@app.command()
@known_errors
def fit(
    cache: Annotated[Path, typer.Option(help="Cache directory from `extract` (or its --out folder).")],
    out: Annotated[Path, typer.Option(help="Run directory to write.")],
    config: Annotated[Optional[Path], typer.Option(help="YAML of fit settings (regressor:, train:, top-level).")] = None,
    test_cache: Annotated[Optional[Path], typer.Option(help="Cross-dataset: train on all of --cache, test on this.")] = None,
    init: Annotated[Optional[Path], typer.Option(help="Fine-tune: start from this run's models (e.g. an LSVQ run).")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="auto, random, lsvq or cross.")] = None,
    splits: Annotated[Optional[int], typer.Option(help="Random protocol: number of 80/20 splits (default 10).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs per split.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seeds splits, initialisation and batches.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda ...")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any setting: --set regressor.use_tcab=false")] = None,
) -> None:
    """Train the regressor over a cache under a protocol; write metrics, predictions, models and plots."""
    from pipelines.fit import format_summary, load_fit_config, run_fit

    overrides = _parse_sets(set_)
    for name, value in (("protocol", protocol), ("splits", splits), ("train.epochs", epochs), ("seed", seed),
                        ("train.device", device)):
        if value is not None:
            overrides[name] = value
    cfg = load_fit_config(config, overrides)
    result = run_fit(cache, out, cfg, test_cache_path=test_cache, init=init)
    typer.echo(format_summary(result, out))


@app.command()
@known_errors
def predict(
    videos: Annotated[list[Path], typer.Argument(help="Video files or folders of videos.")],
    run: Annotated[Path, typer.Option(help="Run directory written by `fit`.")],
    model: Annotated[Optional[str], typer.Option(help="Where the run's SD weights are now (default: as recorded).")] = None,
    controller: Annotated[Optional[str], typer.Option(help="Where the run's Controller is now.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write CSV (or JSON by suffix) here.")] = None,
    as_json: JsonOpt = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Views per model pass.")] = 8,
) -> None:
    """Score videos on the training MOS scale with a fitted run (features computed on the fly)."""
    import csv
    import io

    from pipelines.predict import run_predict

    rows = run_predict(videos, run, model=model, controller=controller, device=device, batch_size=batch_size)
    if as_json or (output is not None and output.suffix == ".json"):
        text = json.dumps(rows, indent=1)
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["video", "score", "path", "error"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    if output is not None:
        output.write_text(text)
        typer.echo(f"wrote {len(rows)} scores to {output}", err=True)
    else:
        typer.echo(text.rstrip("\n"))
    if any("error" in r for r in rows):
        raise typer.Exit(1)


@app.command()
@known_errors
def sweep(
    cache: Annotated[Path, typer.Option(help="Cache directory from `extract` (or its --out folder).")],
    grid: Annotated[Path, typer.Option(help="YAML of configurations: a list of named overrides or a grid "
                                            "(setting: [values]); see pipelines/ablations.yaml.")],
    out: Annotated[Path, typer.Option(help="Sweep directory (tasks/, results.csv, summary.*).")],
    workers: Annotated[Optional[int], typer.Option(help="Local cluster worker processes (default: one per core, "
                                                        "at most one per task).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", "--dask-scheduler",
                                                     help="Join an existing dask scheduler (tcp://host:8786).")] = None,
    serial: Annotated[bool, typer.Option(help="No dask: run the tasks one by one in this process.")] = False,
    splits: Annotated[Optional[int], typer.Option(help="Random protocol: number of splits (default 10).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seeds splits and training (split i uses seed + i).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting of every configuration.")] = None,
) -> None:
    """Ablations: fit every configuration of a grid on every split, one dask task each; summarize."""
    from diffvqa_cache.errors import UserInputError
    from pipelines.sweep import format_summary, run_sweep

    if workers is not None and scheduler is not None:
        raise UserInputError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    overrides = _parse_sets(set_)
    for name, value in (("splits", splits), ("seed", seed)):
        if value is not None:
            overrides[name] = value
    result = run_sweep(cache, grid, out, workers=workers, scheduler=scheduler, serial=serial, overrides=overrides)
    typer.echo(format_summary(result))
    if result.failed:
        typer.echo(f"{len(result.failed)} task(s) failed (see {out}/summary.md); a rerun retries only those", err=True)
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@known_errors
def cluster(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="slurm or pbs.")],
    dataset: DatasetOpt = "sample",
    root: RootOpt = None,
    out: Annotated[Path, typer.Option(help="Cache root the parts write to (a shared filesystem).")] = Path("cache"),
    mode: Annotated[str, typer.Option(help="array: a job array of extract parts; dask: dask worker jobs.")] = "array",
    jobs: Annotated[int, typer.Option(help="Array tasks (= extraction parts) or dask worker jobs.")] = 16,
    gpus_per_job: Annotated[int, typer.Option(help="GPUs per job (dask: one worker per GPU).")] = 1,
    cpus_per_job: Annotated[int, typer.Option(help="CPU cores per job (decoding).")] = 8,
    mem: Annotated[str, typer.Option(help="Memory per job.")] = "32GB",
    walltime: Annotated[str, typer.Option(help="Wall-clock limit per job.")] = "24:00:00",
    queue: Annotated[Optional[str], typer.Option(help="Partition (SLURM) or queue (PBS).")] = None,
    account: Annotated[Optional[str], typer.Option(help="Account / project to charge.")] = None,
    setup: Annotated[Optional[list[str]], typer.Option(help="Shell line run first, e.g. 'module load cuda'; "
                                                            "replaces activating this command's venv/conda env.")] = None,
    scheduler_address: Annotated[str, typer.Option(help="dask mode: the scheduler's address.")] = "tcp://SCHEDULER_HOST:8786",
    logs: Annotated[Path, typer.Option(help="Folder of the jobs' logs (created now, before any job opens it).")] = Path("logs"),
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
    from diffvqa_cache.config import ExtractConfig
    from diffvqa_cache.errors import UserInputError
    from pipelines.cluster import JobSpec, render, submit_line, write_scripts

    args = ["--dataset", dataset] + (["--root", str(root)] if root else []) + ["--out", str(out)] + list(ctx.args)
    with typer.main.get_command(app).commands["extract"].make_context("diffvqa-cache extract", list(args)) as extract_ctx:
        params = extract_ctx.params  # the forwarded options checked by extract's own parser, now
    if params["num_shards"] != 1 or params["shard_index"] is not None:
        raise UserInputError("cluster sets --num-shards (= --jobs) and --shard-index itself; leave them out")
    if submit and (kind, mode) != ("slurm", "array"):
        raise UserInputError("--submit sends SLURM job arrays (sbatch); submit other scripts by hand")
    spec = JobSpec(kind=kind, mode=mode, jobs=jobs, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job, memory=mem,
                   walltime=walltime, queue=queue, account=account, setup=setup or None, extract_args=args,
                   scheduler_address=scheduler_address, log_dir=str(logs))
    Path(spec.log_dir).mkdir(parents=True, exist_ok=True)
    if print_:
        typer.echo(render(spec), nl=False)
        return
    path = output or Path(f"diffvqa-{kind}-{mode}.sh")
    written = write_scripts(spec, path)
    if not submit:
        typer.echo(str(path))
        typer.echo(f"wrote {' and '.join(map(str, written))}; submit with: {submit_line(spec, path)}"
                   f"{' (or add --submit)' if (kind, mode) == ('slurm', 'array') else ''}", err=True)
        return
    from pipelines.submit import missing_parts, submit_array

    index = _load_index(params["dataset"], params["root"], params["labels"], params["limit"], params["video_column"],
                        params["mos_column"], params["allow_problems"])
    try:
        cfg = ExtractConfig.from_dict({**params, "frames": None if params["fps"] is not None else params["frames"]})
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    parts = missing_parts(index, cfg, out, jobs, retry_failed=params["retry_failed"])
    typer.echo(submit_array(spec, path, parts).describe())


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
