"""The `diffvqa-cache` command: thin typer commands that parse, build a config and call the library."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


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
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    for noisy in ("diffusers", "transformers", "distributed", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _load_index(dataset: str, root: Optional[Path], labels: Optional[Path], limit: Optional[int],
                video_column: Optional[str] = None, mos_column: Optional[str] = None):
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.progress import err

    index = load_dataset(dataset, root, labels=labels, limit=limit, video_column=video_column, mos_column=mos_column)
    err.print(index.summary())
    for line in index.problems[:20]:
        err.print(f"[yellow]problem[/] {line}")
    if len(index.problems) > 20:
        err.print(f"[yellow]... and {len(index.problems) - 20} more problems[/]")
    return index


@app.command()
@known_errors
def extract(
    dataset: DatasetOpt = "sample",
    root: RootOpt = None,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option(help="Cache root; the cache goes to OUT/<dataset>/<fingerprint>.")] = Path("cache"),
    model: Annotated[str, typer.Option(help="'tiny', a local diffusers SD folder, or a hub id.")] = "tiny",
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of --model.")] = None,
    controller: Annotated[Optional[str], typer.Option(help="Adapted Controller folder (from `adapt`).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Frames sampled uniformly per video.")] = 8,
    fps: Annotated[Optional[float], typer.Option(help="Sample at a fixed rate instead of --frames.")] = None,
    steps: Annotated[int, typer.Option(help="Reverse-chain steps (1-4 are the fast variants).")] = 50,
    scheduler: Annotated[str, typer.Option(help="ddim, dpm or euler.")] = "ddim",
    crops: Annotated[int, typer.Option(help="Cropped views per frame.")] = 1,
    grid: Annotated[int, typer.Option(help="F_MS maps pooled to GRID x GRID.")] = 8,
    view_size: Annotated[Optional[int], typer.Option(help="View side in pixels (default: the model's native size).")] = None,
    pixel_size: Annotated[int, typer.Option(help="Side of the view pixel copy kept for TCAB.")] = 224,
    seed: Annotated[int, typer.Option(help="Seeds crops and start noise.")] = 0,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (autocast).")] = "fp32",
    batch_size: Annotated[int, typer.Option(help="Views per model pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    shard_size: Annotated[int, typer.Option(help="Videos per HDF5 shard.")] = 32,
    num_shards: Annotated[int, typer.Option(help="Split the shards into N parts (job arrays).")] = 1,
    shard_index: Annotated[Optional[int], typer.Option(help="Which part to run (default $SLURM_ARRAY_TASK_ID or 0).")] = None,
    limit: LimitOpt = None,
    retry_failed: Annotated[bool, typer.Option(help="Recompute shards that recorded failed videos.")] = False,
    video_column: Annotated[Optional[str], typer.Option(help="csv: the video path column.")] = None,
    mos_column: Annotated[Optional[str], typer.Option(help="csv: the MOS column.")] = None,
) -> None:
    """Run the adapted SD once per video and write features into a sharded HDF5 cache."""
    from diffvqa_cache.config import ExtractConfig
    from diffvqa_cache.errors import UserInputError
    from pipelines.extract import run_extract

    if fps is not None:
        frames = None
    try:
        cfg = ExtractConfig(model=model, revision=revision, controller=controller, scheduler=scheduler, steps=steps,
                            frames=frames, fps=fps, crops=crops, view_size=view_size, grid=grid,
                            pixel_size=pixel_size, seed=seed, dtype=dtype, batch_size=batch_size, device=device,
                            shard_size=shard_size)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    if shard_index is None:
        shard_index = int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)) if num_shards > 1 else 0
    index = _load_index(dataset, root, labels, limit, video_column, mos_column)
    result = run_extract(index, cfg, out, num_shards=num_shards, shard_index=shard_index, retry_failed=retry_failed)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
