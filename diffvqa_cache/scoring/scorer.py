"""Scores people can use: the `Scorer` behind `predict` and the Python API, and its result dataclasses.

    from diffvqa_cache import Scorer
    scorer = Scorer("runs/kvd", device="auto")      # backbone and split models loaded once
    results = scorer.score(["a.mp4", "clips/"])     # [VideoScore, ...], input order
    results.to_pandas()                             # one row per video (per_frame=True: per frame)

Per video: stage-one features computed on the fly with the run's recorded settings (views of several
videos share the model's batches), then every split model of the run. Each model's head gives a quality
and a softmax weight per sampled frame; its raw output is mapped to the training MOS scale by the model's
own affine map (`scale`), so a model's score is the weighted sum of its mapped frame qualities. Across
models: the score is the models' mean; a frame's weight is the models' mean weight and its quality the
models' qualities averaged with those weights, which keeps score = sum(weight x quality) exact. The
spread (std and min-max of the models' scores) measures how much the models disagree, not a
confidence interval of the MOS. `familiarity.py` says whether the content is like the training videos.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.datasets import VideoRecord
from diffvqa_cache.datasets.records import unique_key
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.progress import bar, err
from diffvqa_cache.run.folder import RunConfig, RunFolder
from diffvqa_cache.scoring.familiarity import DEFAULT_PERCENTILE, RunReference, describe
from diffvqa_cache.training.data import VideoTable
from diffvqa_cache.training.fitting import KNOWN_SCALES
from diffvqa_cache.training.loop import model_outputs
from diffvqa_cache.training.rules import LoadSpec, pick_frames, video_tensors
from diffvqa_cache.training.settings import TrainConfig

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".3gp", ".yuv"}


@dataclass
class FrameScore:
    """One sampled frame as the run's head sees it."""

    index: int  # frame number in the video (0-based, in decoding order)
    time: float  # seconds from the start: index / the video's frame rate
    quality: float  # the head's frame quality on the run's MOS scale
    weight: float  # the head's softmax weight; a video's weights sum to 1


@dataclass
class Spread:
    """How much the run's split models disagree on a video (model disagreement, not a MOS confidence
    interval): sample standard deviation (0 with one model) and range of their scores."""

    std: float
    min: float
    max: float
    models: int


@dataclass
class VideoScore:
    """One video's result; `error` (and no score) when it could not be scored."""

    video: str  # the file name without its extension
    path: str  # the absolute path
    score: float | None = None  # MOS scale of the run's training data: sum(frame weight x frame quality)
    normalised: float | None = None  # 0-1: (score - MOS low) / (MOS high - MOS low), clipped
    percentile: float | None = None  # 0-100: share of the reference (the run's training MOS) below the score
    spread: Spread | None = None
    novelty: float | None = None  # 0-100: percentile among the training videos' own distances
    unfamiliar: bool | None = None  # novelty above the threshold (None: the run has no reference)
    frames: list[FrameScore] = field(default_factory=list)
    error: str | None = None
    decoder: str | None = None  # "decord" or "pyav": which one produced the frames

    def row(self) -> dict:
        """Flat columns (CSV, pandas), frames left out."""
        s = self.spread
        return {"video": self.video, "path": self.path, "score": self.score, "normalised_score": self.normalised,
                "percentile": self.percentile, "spread_std": s and s.std, "spread_min": s and s.min, "spread_max": s and s.max,
                "models": s and s.models, "novelty_percentile": self.novelty, "unfamiliar": self.unfamiliar,
                "decoder": self.decoder, "error": self.error}

    def frame_rows(self) -> list[dict]:
        """Long form: the video's columns repeated on one row per frame (one row without frames on error)."""
        if not self.frames:
            return [self.row()]
        return [{**self.row(), "frame_index": f.index, "time_s": f.time, "frame_quality": f.quality,
                 "frame_weight": f.weight} for f in self.frames]

    def to_dict(self, frames: bool = True) -> dict:
        """Nested (JSON)."""
        d = asdict(self)
        d["normalised_score"] = d.pop("normalised")
        d["novelty_percentile"] = d.pop("novelty")
        if not frames:
            d.pop("frames")
        else:
            d["frames"] = [{"index": f.index, "time_s": f.time, "quality": f.quality, "weight": f.weight}
                           for f in self.frames]
        return d


FRAME_COLUMNS = ["frame_index", "time_s", "frame_quality", "frame_weight"]
VIDEO_COLUMNS = list(VideoScore("", "").row())


class Scores(list):
    """A list of `VideoScore`s with `to_pandas`, and what their numbers mean (`scale`, the `reference` of
    the percentile, the `unfamiliar` threshold)."""

    scale: "Scale | None" = None
    reference: "Reference | None" = None
    unfamiliar_percentile: float | None = None

    def to_pandas(self, per_frame: bool = False):
        """One row per video, or (per_frame) one row per sampled frame with the video's columns repeated."""
        import pandas as pd

        rows = [r for v in self for r in v.frame_rows()] if per_frame else [v.row() for v in self]
        return pd.DataFrame(rows, columns=VIDEO_COLUMNS + (FRAME_COLUMNS if per_frame else []))


@dataclass(frozen=True)
class Scale:
    """What the numbers mean: the MOS scale of the run's training dataset."""

    dataset: str
    low: float
    high: float

    def describe(self) -> str:
        return f"MOS {self.low:g}-{self.high:g} of {self.dataset}"

    def normalise(self, score: float) -> float | None:
        if not self.high > self.low:
            return None
        return float(min(1.0, max(0.0, (score - self.low) / (self.high - self.low))))


@dataclass(frozen=True)
class Reference:
    """A scored collection to rank against: `percentile(score)` = the share (%) of its values below the
    score (ties count half), i.e. "better than P % of `name`"."""

    name: str  # e.g. "the 12 training videos of run runs/kvd (kvd)"
    values: tuple[float, ...]  # sorted

    def percentile(self, score: float | None) -> float | None:
        if score is None or not self.values:
            return None
        v = np.asarray(self.values)
        below, upto = np.searchsorted(v, score, "left"), np.searchsorted(v, score, "right")
        return float(100.0 * (below + 0.5 * (upto - below)) / len(v))

    @classmethod
    def of_run(cls, run: Path | str, flag: str = "--reference") -> "Reference":
        """A run's training videos' MOS (recorded by fit)."""
        cfg = RunConfig.read(run, flag)
        if not cfg.train_mos:
            raise UserInputError(f"{flag} {run}: the run records no training MOS (fitted by an earlier version); "
                                 "refit it, or pass a CSV of scores")
        dataset = KNOWN_SCALES[cfg.cache.dataset][0] if cfg.cache.dataset in KNOWN_SCALES else cfg.cache.dataset
        return cls(f"the {len(cfg.train_mos)} training videos of run {Path(run).name} ({dataset.removeprefix('the ')})",
                   tuple(sorted(cfg.train_mos)))

    @classmethod
    def load(cls, source: Path | str, scale: "Scale | None" = None) -> "Reference":
        """A run directory (its training MOS) or a CSV with a `score` (predict's files), `mos` or `pred`
        column; `scale`: refuse a run whose MOS scale differs (percentiles compare numbers on one scale)."""
        source = Path(source).expanduser()
        if source.is_dir():
            ref = cls.of_run(source)
            other = RunConfig.read(source, "--reference").score_scale
            if scale is not None and tuple(other) != (scale.low, scale.high):
                raise UserInputError(f"--reference {source}: its MOS scale {other[0]:g}-{other[1]:g} is not this run's "
                                     f"{scale.low:g}-{scale.high:g}; rank against scores on the same scale")
            return ref
        import pandas as pd

        try:
            table = pd.read_csv(source)
        except (OSError, ValueError) as exc:
            raise UserInputError(f"--reference {source}: not a run folder nor a readable CSV ({exc})") from None
        column = next((c for c in ("score", "mos", "pred") if c in table.columns), None)
        if column is None:
            raise UserInputError(f"--reference {source}: no score, mos or pred column (columns: "
                                 f"{', '.join(map(str, table.columns))}); pass a predict output or a run folder")
        values = pd.to_numeric(table[column], errors="coerce").dropna()
        if values.empty:
            raise UserInputError(f"--reference {source}: its {column} column holds no numbers")
        return cls(f"the {len(values)} videos of {source.name} ({column})", tuple(sorted(map(float, values))))


# Measured (BENCHMARKS.md, "Scoring many videos", 2026-12-05): predict with the tiny model on 2 CPU cores scored
# 0.204 videos/s at 8 frames x (1 + 1 crop) views x 10 steps at strength 0.5 (5 UNet calls a view)
TINY_CPU_RATE, TINY_CPU_WORK = 0.204, 8 * 2 * 5


def describe_extraction(cfg, device) -> str:
    """What predict recomputes per video (the run's extraction settings, which it must reuse) and the rate
    to expect where one was measured."""
    calls = max(1, round(cfg.steps * cfg.strength))
    frames = cfg.frames if cfg.frames is not None else None
    per_frame = 1 + cfg.crops
    line = (f"features as the run's cache: {cfg.steps} {cfg.sampler} step(s) (strength {cfg.strength:g}: {calls} UNet "
            f"call(s) a view), {f'{frames} frames' if frames else f'frames at {cfg.fps:g} fps'} x {per_frame} views "
            f"(1 + {cfg.crops} crops), model {cfg.model}, on {device}")
    if cfg.model == "tiny" and getattr(device, "type", str(device)) == "cpu" and frames:
        rate = TINY_CPU_RATE * TINY_CPU_WORK / (frames * per_frame * calls)
        line += f"; expect about {rate:.2g} videos/s (measured {TINY_CPU_RATE} at 8 frames x 2 views x 5 calls, 2 cores)"
    elif getattr(device, "type", str(device)) == "cpu":
        line += "; a Stable Diffusion UNet on the CPU takes minutes a video: use a GPU (the bar shows the rate)"
    else:
        line += "; the bar shows the rate"
    if cfg.steps >= 20:
        line += f" ({cfg.steps} steps make each video slow; the run's models need features extracted so)"
    return line


def expand_inputs(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given, folders expanded to the video files below them (sorted); absolute paths."""
    out = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES and q.is_file())
            if not found:
                raise UserInputError(f"{p}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserInputError(f"{p}: no such file or folder")
    return [Path(os.path.abspath(p)) for p in out]  # absolute, links kept as named


def combine_models(outputs: list[tuple[float, np.ndarray, np.ndarray]], scales: list[tuple[float, float]]):
    """Per-model (raw score, frame quality, frame weight) -> (MOS-scale scores per model, frame weights,
    frame qualities) of the ensemble, with score mean = sum(weight x quality)."""
    scores = np.array([a * s + b for (s, _, _), (a, b) in zip(outputs, scales)])
    quality = np.stack([a * q + b for (_, q, _), (a, b) in zip(outputs, scales)])  # (M, T)
    weight = np.stack([w for _, _, w in outputs])
    mean_weight = weight.mean(0)
    mixed = (weight * quality).sum(0) / np.maximum(weight.sum(0), 1e-30)
    return scores, mean_weight, mixed


class Scorer:
    """Scores videos with a fitted run; loads the stage-one model and the split models once.

    `model`/`controller`: where the run's weights are now, when they moved (their content must match).
    `unfamiliar_percentile`: flag videos whose novelty exceeds this percentile of the training videos'.
    `group_size`: videos whose views share batches (default: the run's shard size, as extraction).
    `reference`: what each score's `percentile` ranks against: a run folder, a CSV of scores or a
    `Reference` (default: this run's training videos' MOS).
    `model_threads`: torch intra-op threads of the split models on the CPU (default None: torch's setting,
    as stage one). Their ops are small: on a heavily loaded 2-core CPU (load 6-9), 1 thread scored a group
    of 8 videos 2-7x faster when they ran alone and predict / extract went 0.649 -> 0.717, but on a quiet
    one (load 1.5) 0.989 -> 0.824 (medians of 3 pairs; BENCHMARKS.md, 2026-12-05). Another count moves the
    scores by float rounding (~1e-8 relative). The `predict` command also lets torch's idle OpenMP threads
    sleep (`openmp.wait_passively`, before torch loads); from Python, run with OMP_WAIT_POLICY=PASSIVE.
    """

    def __init__(self, run: Path | str, device: str = "auto", *, model: str | None = None,
                 controller: str | None = None, batch_size: int = 8, group_size: int | None = None,
                 unfamiliar_percentile: float = DEFAULT_PERCENTILE, progress: bool = False,
                 reference: "Path | str | Reference | None" = None, model_threads: int | None = None):
        from diffvqa_cache.cache.settings import EXTRACTOR_VERSION, CacheConfig
        from diffvqa_cache.extraction.backbone import identify
        from diffvqa_cache.extraction.per_video import ViewEncoder

        self.run = Path(run).expanduser().resolve()
        folder = RunFolder.open(self.run)
        run_cfg = folder.config()
        folder.verify()  # every file of the run against its manifest, before any of them is used
        if not 0 < unfamiliar_percentile <= 100:
            raise UserInputError(f"unfamiliar percentile must be in (0, 100], got {unfamiliar_percentile}")
        if model_threads is not None and (not isinstance(model_threads, int) or model_threads < 1):
            raise UserInputError(f"model_threads must be a positive number of threads or None, got {model_threads!r}")
        self.model_threads = model_threads
        # 1. the extraction settings the run was trained on; the model files must be the same ones
        recorded = run_cfg.cache
        if not recorded.is_current:
            raise CacheError(f"run {run} was fitted on features of extractor version {recorded.extractor}; this "
                             f"version extracts version {EXTRACTOR_VERSION} features (README: what changed), which "
                             "the run's models were not trained on: re-extract that cache with this version and "
                             "refit (or score with the version that extracted it)")
        cfg = recorded.extract.replace(device=device, batch_size=batch_size, model=model or recorded.extract.model,
                                       controller=controller or recorded.extract.controller)
        cfg.check_features_follow_input()
        self.config = CacheConfig.create(cfg, identify(cfg.model, cfg.controller, cfg.revision), recorded.dataset,
                                         recorded.mos_range)
        if self.config.fingerprint != run_cfg.fingerprint:
            raise CacheError(f"--model {cfg.model} / --controller {cfg.controller} are not the weights run {run} was "
                             f"trained with ({recorded.model_id}, {recorded.controller_id}); pass those with "
                             "--model/--controller")
        self.scale = Scale(recorded.dataset, *run_cfg.score_scale)
        if isinstance(reference, Reference) or (reference is None and not run_cfg.train_mos):
            self.ranking = reference  # None: a run of an earlier version, no percentile
        else:
            self.ranking = Reference.load(reference, self.scale) if reference is not None else Reference.of_run(self.run)
        self.decoders = run_cfg.decoders  # {codec: decoder} of the training cache: decode alike
        # 2. the split models, the unfamiliar-content reference, the stage-one model
        self.device = resolve_device(device)
        self.models = folder.load_models(run_cfg.fingerprint, self.device, verify=False)
        self.load_spec = LoadSpec.from_dict(self.models[0][1].load_spec)
        self.feature_spec = self.models[0][1].feature_spec
        self.reference = self._reference(folder, run_cfg.fingerprint)
        self.unfamiliar_percentile = float(unfamiliar_percentile)
        self.precision = TrainConfig(device=str(self.device)).precision(self.device)
        self.group_size = group_size or cfg.shard_size
        self.progress = progress
        self.encoder = ViewEncoder(self.config, self.device)
        if progress:
            err.print(describe_extraction(cfg, self.device))

    def _reference(self, folder: RunFolder, fingerprint: str) -> RunReference | None:
        path = folder.file(RunFolder.FAMILIARITY)
        if not path.is_file():
            err.print(f"[yellow]{self.run} has no {RunFolder.FAMILIARITY} (fitted by an earlier version or on fewer "
                      "than 3 videos): no unfamiliar-content check; refit the run to get one[/]")
            return None
        ref = RunReference.load(path)
        if ref.meta.get("fingerprint") != fingerprint or ref.meta.get("load_spec") != self.load_spec.to_dict():
            raise CacheError(f"{path} describes other features than the run's models; refit the run")
        return ref

    def score(self, paths: Iterable[Path | str] | Path | str, *, plot_dir: Path | str | None = None,
              on_result: Callable[[VideoScore], None] | None = None) -> Scores:
        """Score video files and folders of videos, in input order; a video that fails gets its `error`.

        `plot_dir`: also write one timeline PNG per video there. `on_result(video_score)` is called as each
        video is done, in input order (groups of `group_size` videos at a time). The split models score a
        group in a second thread while stage one works on the next group."""
        from diffvqa_cache.extraction.per_video import decode_ahead

        if isinstance(paths, (str, Path)):
            paths = [paths]
        files = expand_inputs(paths)
        records, keys = [], set()
        for p in files:  # unique ids: a file name shared by two folders gets a short hash of its path
            records.append(VideoRecord(unique_key(str(p), keys, base=p.name), p, float("nan")))
            keys.add(records[-1].key)
        plot_names = _unique_names([r.key for r in records]) if plot_dir is not None else None
        results = Scores()
        results.scale, results.unfamiliar_percentile = self.scale, self.unfamiliar_percentile
        results.reference = self.ranking
        t0 = time.perf_counter()
        with bar("score", len(records), self.progress) as pb, \
                ThreadPoolExecutor(self.config.extract.decode_workers) as pool, ThreadPoolExecutor(1) as finisher:
            done = [0]

            def advance(*_):
                done[0] += 1
                pb.update(advance=1, info=f"{done[0] / (time.perf_counter() - t0):.2f} videos/s")

            def finish(start: int, group: list, scored: list[VideoScore], tensors: dict) -> None:
                self._score_group(group, scored, tensors)
                for n, (decoded, result) in enumerate(zip(group, scored)):
                    if result.error is not None:
                        err.print(f"[red]failed[/] {result.error}")
                    elif plot_dir is not None:
                        self._plot(Path(plot_dir) / f"{plot_names[start + n]}.png", decoded, result)
                    results.append(result)
                    if on_result is not None:
                        on_result(result)

            stream = decode_ahead(pool, records, self.config, self.decoders)
            pending = None
            for start in range(0, len(records), self.group_size):
                recs = records[start:start + self.group_size]
                group = [next(stream) for _ in recs]
                scored, tensors = self._stage_one(group, recs, advance)
                if pending is not None:
                    pending.result()  # one group in the split models at a time: results stay in order
                pending = finisher.submit(finish, start, group, scored, tensors)
            if pending is not None:
                pending.result()
        return results

    def _stage_one(self, group: list, records: list, advance) -> tuple[list[VideoScore], dict]:
        """The group's results so far (decoding errors) and the features of its decodable videos, computed
        in shared batches, as the models read them {position in group: tensors}."""
        results = [VideoScore(d.key, str(r.path), error=d.error, decoder=d.decoder or None)
                   for d, r in zip(group, records)]
        for d, r, result in zip(group, records, results):
            if d.too_few_frames is not None:  # the run fixes the sampling: no option of predict changes it
                result.error = (f"{r.path} has {d.too_few_frames} frame(s), fewer than the {self.config.extract.frames}"
                                f" frames per video this run samples (as its cache did); this run cannot score it (a "
                                "run whose cache samples fewer frames per video, or frames at a fixed rate, can)")
        for d, r in zip(group, records):
            if d.error is not None:
                advance()
            elif self.decoders.get(d.codec, d.decoder) != d.decoder:
                err.print(f"[yellow]{r.path}: the run's cache decoded {d.codec} with {self.decoders[d.codec]}, which "
                          f"cannot decode it here; used {d.decoder} (pixels, hence scores, may differ slightly)[/]")
        ok = [i for i, d in enumerate(group) if d.error is None]
        tensors = {}
        for i, feats in zip(ok, self._encode([group[i] for i in ok], advance)):
            try:
                if isinstance(feats, Exception):
                    raise feats
                tensors[i] = self._tensors(feats)
            except Exception as exc:  # one bad video never stops the others
                results[i].error = f"{results[i].path}: stage one failed ({type(exc).__name__}: {exc})"
        return results, tensors

    def _score_group(self, group: list, results: list[VideoScore], tensors: dict) -> None:
        """Every split model over the group's videos in one batch; on a failure, each video alone."""
        with intra_op_threads(self.model_threads if self.device.type == "cpu" else None):
            self._score_each(group, results, tensors)

    def _score_each(self, group: list, results: list[VideoScore], tensors: dict) -> None:
        try:
            self._score_videos([group[i] for i in tensors], list(tensors.values()), [results[i] for i in tensors])
        except Exception:  # find the video that breaks the batch: each alone
            for i, t in tensors.items():
                try:
                    self._score_videos([group[i]], [t], [results[i]])
                except Exception as exc:
                    results[i].error = f"{results[i].path}: {type(exc).__name__}: {exc}"

    def _encode(self, decoded: list, advance) -> list:
        """Stage-one features of the videos in shared batches; on a failure, each video alone (features or
        the exception)."""
        try:
            return self.encoder.encode_stream(decoded, advance)
        except Exception:
            out = []
            for d in decoded:
                try:
                    out.append(self.encoder.encode_stream([d])[0])
                except Exception as exc:
                    out.append(exc)
            return out

    def _tensors(self, feats) -> dict:
        """One video's features as the run's models read them."""
        if not feats.is_finite():
            raise CacheError("NaN/Inf in its features; try the run's settings with --dtype fp32")
        return video_tensors(feats, self.load_spec, self.feature_spec["grid"], self.feature_spec["num_frames"],
                             self.config.extract.ms_pool == "mean+std")

    def _score_videos(self, decoded: list, tensors: list[dict], results: list[VideoScore]) -> None:
        """Every split model over the videos at once; fills each result."""
        if not decoded:
            return
        table = VideoTable([d.key for d in decoded], np.full(len(decoded), np.nan), [""] * len(decoded),
                           {b: BranchFeatures.stack([t[b] for t in tensors], torch.stack) for b in tensors[0]})
        out = model_outputs([m for m, _ in self.models], table, self.device, len(table), self.precision,
                            ("score", "frame_quality", "frame_weight"))
        per_model = list(zip(out["score"], out["frame_quality"], out["frame_weight"]))
        scales = [tuple(meta.scale) for _, meta in self.models]
        novelty = (self.reference.novelty(describe(table.branches), self.unfamiliar_percentile)
                   if self.reference is not None else [None] * len(decoded))
        n_frames = self.feature_spec["num_frames"]
        for n, (d, result) in enumerate(zip(decoded, results)):
            scores, weight, quality = combine_models([(s[n], q[n], w[n]) for s, q, w in per_model], scales)
            index = np.asarray(d.frame_index)[pick_frames(len(d.frame_index), n_frames)]
            fps = d.fps or float("nan")
            result.score = float(scores.mean())
            result.normalised = self.scale.normalise(result.score)
            result.percentile = self.ranking.percentile(result.score) if self.ranking else None
            result.spread = Spread(float(scores.std(ddof=1)) if len(scores) > 1 else 0.0, float(scores.min()),
                                   float(scores.max()), len(scores))
            result.frames = [FrameScore(int(i), float(i / fps), float(q), float(w))
                             for i, q, w in zip(index, quality, weight)]
            if novelty[n] is not None:
                result.novelty, result.unfamiliar = novelty[n].percentile, novelty[n].unfamiliar

    def _plot(self, path: Path, decoded, result: VideoScore) -> None:
        from diffvqa_cache.scoring.plots import timeline

        rows = pick_frames(len(decoded.frame_index), self.feature_spec["num_frames"])
        quality = [f.quality for f in result.frames]
        best, worst = int(np.argmax(quality)), int(np.argmin(quality))
        path.parent.mkdir(parents=True, exist_ok=True)
        timeline(path, result, self.scale.describe(), decoded.views["S"][rows[best]], decoded.views["S"][rows[worst]],
                 best, worst, decoded.frame_hw, self.unfamiliar_percentile, (self.scale.low, self.scale.high))


@contextmanager
def intra_op_threads(n: int | None):
    """torch's intra-op threads set to `n` in the calling thread for the block (None: unchanged). torch keeps
    the setting per thread, but `torch.set_num_threads` also changes the default that a thread takes on its
    first parallel op; both are restored on exit."""
    before = torch.get_num_threads()  # (also gives this thread its own setting first)
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unique_names(keys: list[str]) -> list[str]:
    """`keys` with a -2, -3 ... suffix on repeats (same file name in two folders)."""
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
        out.append(k if seen[k] == 1 else f"{k}-{seen[k]}")
    return out
