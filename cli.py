"""The `diffvqa-cache` command: thin typer commands that parse, build a config and call the library."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffvqa_cache.cache.settings import PAPER_PRESET, RECONSTRUCT_DEFAULTS, ExtractConfig
from diffvqa_cache.cluster.jobs import ClusterJobs
from diffvqa_cache.config import Config
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.training.regressor.config import RegressorConfig
from diffvqa_cache.training.settings import FitConfig, TrainConfig


class _PlainHelp:
    """`--help` as click writes it: option names in full, each description wrapped beside them (at most 30
    columns in) or below them, 80 columns at most. (Typer's rich tables cut option names with "…" and
    squeeze descriptions beside the `--no-X` forms in an 80-column terminal.) Errors keep typer's look."""

    def format_help(self, ctx, formatter):
        mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            return super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = mode


def _section(formatter, heading: str, rows: list[tuple[str, str]]) -> None:
    """A titled list of (name, description) rows; a long title wraps like any text."""
    import textwrap

    formatter.write_paragraph()
    formatter.write("\n".join(textwrap.wrap(heading + ":", formatter.width - formatter.current_indent,
                                             initial_indent=" " * formatter.current_indent,
                                             subsequent_indent=" " * (formatter.current_indent + 2))) + "\n")
    with formatter.indentation():
        formatter.write_dl(rows)


class HelpCommand(_PlainHelp, typer.core.TyperCommand):
    def format_options(self, ctx, formatter):
        """Arguments, then the options, one section per panel (`rich_help_panel`)."""
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                name = "Arguments" if param.param_type_name == "argument" else \
                    getattr(param, "rich_help_panel", None) or "Options"
                sections.setdefault(name, []).append(record)
        for name in sorted(sections, key=lambda n: n != "Arguments"):
            _section(formatter, name, sections[name])


class HelpGroup(_PlainHelp, typer.core.TyperGroup):
    def format_commands(self, ctx, formatter):
        """Each command with the first sentence of its help, wrapped (not cut to the line)."""
        rows = [(name, cmd.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            _section(formatter, "Commands", rows)


class Typer(typer.Typer):
    """typer.Typer whose commands and groups write plain `--help` (`HelpCommand`, `HelpGroup`)."""

    def __init__(self, **kwargs):
        super().__init__(cls=HelpGroup, **kwargs)

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or HelpCommand, **kwargs)


app = Typer(help="DiffVQA video quality assessment: extract diffusion features once, fit fast many times.",
            no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
cache_app = Typer(help="Inspect and check a feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

_DEBUG = {"on": bool(os.environ.get("DIFFVQA_DEBUG"))}

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


def options_from(cls, panel: str, skip: tuple[str, ...] = (), defaults: dict | None = None, build=None,
                 arg: str = "cfg", overrides: str | None = None):
    """Give a command one option per field of the config dataclass `cls` (help text from the field's
    declaration; default from the field or `defaults`) and pass them to it built into `arg` (by `build`,
    else `cls.from_options` when defined, else `cls`), so a new setting is declared once, in the dataclass.

    `overrides` (a key prefix such as "train."): the options show the field's default but are None unless
    given, and `arg` is the dict of the given ones ({"train.epochs": 5}), to apply over a config file."""

    def optional(kind):
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
            return Optional[next(a for a in args if a is not type(None))]
        return kind

    def decorate(fn):
        own = inspect.signature(fn, eval_str=True)
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.name not in skip and f.name not in own.parameters
                  and not (isinstance(f.default_factory, type) and issubclass(f.default_factory, Config))]
        defaults_ = {f.name: f.default for f in fields} | (defaults or {})
        helps = {f.name: f.metadata.get("help") for f in fields}
        if overrides is not None:  # the option is None unless given; its help says the setting's default
            helps = {f.name: helps[f.name] + _shown_default(f.name, defaults_[f.name]) for f in fields}
            defaults_ = {f.name: None for f in fields}
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults_[f.name],
                                   annotation=Annotated[optional(hints[f.name]) if overrides is None
                                                        else Optional[optional(hints[f.name])], typer.Option(
                                       help=helps[f.name], rich_help_panel=panel)])
                 for f in fields]
        make = build or getattr(cls, "from_options", cls)
        if overrides is not None:
            make = functools.partial(_given, overrides)

        @functools.wraps(fn)
        def command(**kwargs):
            from diffvqa_cache.errors import UserInputError

            values = {f.name: kwargs.pop(f.name) for f in fields}
            try:
                cfg = make(**values)
            except UserInputError:
                raise
            except (TypeError, ValueError) as exc:
                raise UserInputError(str(exc)) from None
            return fn(**{arg: cfg}, **kwargs)

        command.__signature__ = own.replace(parameters=[p for p in own.parameters.values() if p.name != arg] + added)
        return command

    return decorate


def _given(prefix: str, **values) -> dict:
    """The options given on the command line, as overrides ({"train.epochs": 5})."""
    return {prefix + k: v for k, v in values.items() if v is not None}


def _shown_default(name: str, value) -> str:
    """"  [default: X]" for a default the option itself does not carry, as typer writes its own ("" for None:
    the help text says what then happens)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        value = name.replace("_", "-") if value else "no-" + name.replace("_", "-")
    return f"  [default: {value}]"


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


def _load_dataset(dataset: str, root: Optional[Path], labels: Optional[Path], limit: Optional[int],
                  video_column: Optional[str] = None, mos_column: Optional[str] = None, allow_problems: bool = False):
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.progress import err

    data = load_dataset(dataset, root, labels=labels, limit=limit, video_column=video_column, mos_column=mos_column)
    data.check(allow_problems)
    err.print(data.summary())
    err.print(data.describe_labels(), highlight=False, markup=False)
    for line in data.problems[:20]:
        err.print(f"[yellow]problem[/] {line}")
    if len(data.problems) > 20:
        err.print(f"[yellow]... and {len(data.problems) - 20} more problems[/]")
    for line in data.warnings[:20]:
        err.print(f"[yellow]warning[/] {line}")
    if len(data.warnings) > 20:
        err.print(f"[yellow]... and {len(data.warnings) - 20} more warnings[/]")
    return data


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
    data = _load_dataset(dataset, root, labels, limit, video_column, mos_column, allow_problems)
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
    from diffvqa_cache.cache.folder import FeatureCache

    cache = FeatureCache(path)
    info = cache.info()
    if as_json:
        typer.echo(json.dumps(info, indent=1, default=str))
        return
    config, ex = cache.config, cache.config.extract
    ts = config.timesteps
    chain = (f"{len(ts)} UNet calls at t={', '.join(map(str, ts)) if len(ts) <= 6 else f'{ts[0]}, {ts[1]}, ..., {ts[-1]}'}"
             f"; F_MS and F_Latent ({ex.latent}) from the call at t={ts[-1]}"
             + ("" if ts[-1] == 0 else " (the authors' features are at t=0)") if ts else
             "timesteps not recorded (cache of 0.1)")
    decoders = ", ".join(f"{codec} by {dec}" for codec, dec in cache.decoders().items()) or "not recorded (cache of 0.1)"
    from diffvqa_cache.cache.settings import EXTRACTOR_VERSION

    version = config.extractor + ("" if config.is_current else f" (this version extracts {EXTRACTOR_VERSION}: its "
                                  "features differ; re-extract before combining with new caches or predicting)")
    typer.echo(f"cache        {info['path']}\nfingerprint  {info['fingerprint']}\n"
               f"model        {ex.model} ({config.model_id}), controller {config.controller_id}\n"
               f"extractor    version {version}\n"
               f"settings     steps={ex.steps} sampler={ex.sampler} spacing={ex.timestep_spacing} strength={ex.strength} "
               f"latent={ex.latent} frames={ex.frames} fps={ex.fps} crops={ex.crops} grid={ex.grid} "
               f"ms_pool={ex.ms_pool} view={config.view_size} seed={ex.seed} noise={ex.noise} dtype={ex.dtype}\n"
               f"chain        {chain}\n"
               f"decoded      {decoders}\n"
               f"videos       {info['videos']} done, {len(info['failed'])} failed, {len(info['missing'])} missing; "
               f"{info['shards']}/{info['shards_planned']} shards, {info['bytes'] / 1e6:.1f} MB")
    if info["stale"]:
        typer.echo(f"stale        {info['stale']}; re-extract it with this version before scoring new videos")
    for name, f in info["features"].items():
        typer.echo(f"  {name:16s} {tuple(f['shape'])} {f['dtype']}")
    for f in info["failed"][:10]:
        typer.echo(f"  failed {f['video']}: {f['reason']}")


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
    import csv
    import sys

    from diffvqa_cache.files import write_csv_atomic
    from diffvqa_cache.scoring.cached import score_cached_per_model

    keys, scores = score_cached_per_model(run, path, video or None, device, memory_gb, verify)
    header = ["video", "score", "score_min", "score_max"]
    rows = [(k, f"{s.mean():.6f}", f"{s.min():.6f}", f"{s.max():.6f}") for k, s in zip(keys, scores.T)]
    if output is None:
        w = csv.writer(sys.stdout)
        w.writerow(header)
        w.writerows(rows)
        return
    write_csv_atomic(output, header, rows)
    typer.echo(f"wrote {output} ({len(rows)} videos, {len(scores)} split models)", err=True)


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
    import pandas as pd

    from diffvqa_cache.training.metrics import (
        format_label_check,
        format_metrics,
        format_per_split,
        metrics_against_labels,
        metrics_from_csv,
        metrics_per_split,
        read_predictions,
    )

    if pred is None:
        try:
            header = [str(c).strip() for c in pd.read_csv(file, nrows=0).columns]
        except Exception:  # noqa: BLE001 - read_predictions below says what is wrong with the file
            header = []
        pred = "score" if "pred" not in header and "score" in header else "pred"
    if labels is not None:
        from diffvqa_cache.datasets import read_labels

        table = read_labels(labels, video_column, mos_column)
        df, values = read_predictions(file, (pred,), (pred,))
        name = "path" if "path" in df.columns else "video" if "video" in df.columns else None
        if name is None:
            from diffvqa_cache.errors import UserInputError

            raise UserInputError(f"{file} has no video or path column to match with {labels}; add one")
        m, unmatched = metrics_against_labels(df[name].tolist(), values[pred].tolist(), table)
        typer.echo(json.dumps({**m, "labels": str(table.file), "not_listed": unmatched}) if as_json
                   else format_label_check(m, unmatched, table))
        return
    by_split = None if pooled else metrics_per_split(file, pred_col=pred, mos_col=mos)
    if by_split is not None:
        typer.echo(json.dumps(by_split) if as_json else format_per_split(by_split)
                   + "\n(--pooled: one set of metrics over all splits' rows)")
        return
    m = metrics_from_csv(file, pred_col=pred, mos_col=mos)
    typer.echo(json.dumps(m) if as_json else format_metrics(m))


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

    data = _load_dataset(dataset, root, labels, None, video_column, mos_column, allow_problems)
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
    overrides = _parse_sets(set_) | given | given_train | given_regressor
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
    from pipelines.predict import check_against_labels, format_table, run_predict, shown, to_json

    table = None
    if labels is not None:
        from diffvqa_cache.datasets import read_labels

        table = read_labels(labels, video_column, mos_column)  # a wrong label file fails before the model loads
    results = run_predict(videos, run, model=model, controller=controller, device=device, batch_size=batch_size,
                          output=output, per_frame=per_frame, plot_dir=plot, unfamiliar_percentile=unfamiliar_percentile,
                          labels=table, reference=reference)
    if as_json:
        data = to_json(shown(results), run.resolve(), per_frame)
        if table is not None:
            for v in data["videos"]:
                v["mos"] = table.match(v["path"])
        typer.echo(json.dumps(data, indent=1))
    else:
        typer.echo(format_table(results, table))
    if table is not None:
        typer.echo(check_against_labels(results, table), err=as_json)
    failed = sum(r.error is not None for r in results)
    done = f"{len(results) - failed} videos scored in this run" + (f", {failed} failed (reasons above)" if failed else "") \
        + (f", {len(results.earlier)} read from {output}" if getattr(results, "earlier", None) else "")
    if output is not None:
        typer.echo(f"wrote {output}: {done}", err=True)
    elif failed:
        typer.echo(done, err=True)
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

    overrides = _parse_sets(set_)
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
    from diffvqa_cache.cluster.scripts import job_script, render, submit_line, write_scripts
    from diffvqa_cache.errors import UserInputError

    args = ["--dataset", dataset] + (["--root", str(root)] if root else []) + ["--out", str(out)] + list(ctx.args)
    with typer.main.get_command(app).commands["extract"].make_context("diffvqa-cache extract", list(args)) as extract_ctx:
        params = extract_ctx.params  # the forwarded options checked by extract's own parser, now
    if params["num_parts"] != 1 or params["part"] is not None:
        raise UserInputError("cluster sets --num-parts (= --jobs) and --part itself; leave them out")
    cfg = ExtractConfig.from_options(**{f.name: params[f.name] for f in dataclasses.fields(ExtractConfig)})
    if submit and (kind, mode) != ("slurm", "array"):
        raise UserInputError("--submit sends SLURM job arrays (sbatch); submit other scripts by hand")
    spec = job_script(kind, mode, batch, extract_args=args, scheduler_address=scheduler_address)
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
    from diffvqa_cache.cluster.submit import submit_array
    from pipelines.submit import missing_parts

    data = _load_dataset(params["dataset"], params["root"], params["labels"], params["limit"], params["video_column"],
                         params["mos_column"], params["allow_problems"])
    gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and bool(spec.batch.gpus_per_job))  # where parts run
    parts = missing_parts(data, cfg, out, spec.batch.jobs, retry_failed=params["retry_failed"], gpu=gpu)
    typer.echo(submit_array(spec, path, parts).describe())


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
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.reproduce import ReproduceConfig, format_table, run_reproduce

    roots = {name: str(root) for name, root in (("lsvq", lsvq), ("kvd", kvd), ("lvqc", lvqc), ("ytugc", ytugc)) if root}
    fit = _parse_sets(set_) | ({"train.epochs": epochs, "finetune.epochs": epochs} if epochs is not None else {})
    FitConfig().with_overrides(fit)  # a wrong setting fails now, not after hours of extraction
    rcfg = ReproduceConfig(roots=roots, extract=cfg.replace(controller=controller), splits=splits, limit=limit, fit=fit,
                           adapt=AdaptConfig(max_steps=adapt_steps, limit=adapt_limit, device=cfg.device))
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

    report = run_doctor(cache, model, debug=_DEBUG["on"])
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
