"""A fitted run's folder (`RunFolder`): its layout, its record (`RunConfig`), its metrics (`FitResult`),
its manifest (`RunManifest`), reading and writing its files, and the checks before any of them is used
(`check_resumable`: may `fit --resume` continue the run in a folder).

    RUN/config.json                  RunConfig: fit settings, protocol, the cache trained on (written first)
    RUN/splits.json                  the protocol's splits
    RUN/models/<split>.safetensors   one self-describing model per split (training/checkpoint.py)
    RUN/familiarity.safetensors      what each split model's training videos look like (scoring/familiarity.py)
    RUN/metrics.json                 FitResult: per-split metrics and their summary
    RUN/predictions.csv              every test video's MOS and prediction, per split
    RUN/scatter.png, learning_curve.png
    RUN/report.html                  a view of the files above (rewritten by `report`: not in the manifest)
    RUN/state/                       while a fit runs: each split's training state, <split>.json when done
    RUN/manifest.json                RunManifest: size and sha256 of every file above, written last

Written by `fit` (pipelines/fit.py), read by predict (`Scorer`), `score_cached`, `report` and `reproduce`.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa_cache import __version__
from diffvqa_cache.cache.settings import CacheConfig
from diffvqa_cache.config import Config
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.files import checksum_problems, checksums, write_csv_atomic, write_json_atomic
from diffvqa_cache.training.settings import FitConfig, TrainConfig

RUN_FIX = "pass a run directory written by `diffvqa-cache fit`"
RUN_FORMAT = "diffvqa-run-1"
_UNCHECKED: set[str] = set()  # runs without a manifest already reported in this process


@dataclass
class RunConfig(Config):
    """A run directory's config.json: the fit settings, the protocol and the cache it was trained on."""

    fit: FitConfig
    protocol: str
    cache: CacheConfig  # the training cache's identity (its fingerprint is the run's)
    cache_path: str
    feature_spec: dict
    test_cache_paths: list[str] = field(default_factory=list)
    init: str | None = None
    training: TrainConfig | None = None  # the training settings used: fit.train, or with fit.finetune's under init
    data: dict = field(default_factory=dict)  # the data path used: path, budget_gb, need_gb, device
    decoders: dict = field(default_factory=dict)  # {codec: decoder} of the training cache; predict decodes alike
    package_version: str = __version__
    fingerprint: str = ""  # = cache.fingerprint, kept at the top level for tools that grep runs
    scale: tuple[float, float] | None = None  # the MOS scale's limits (fit --scale; None: the cache's mos_range)
    scale_source: str = ""  # why these limits: "--scale", the dataset's known scale, or the observed range
    train_mos: list[float] = field(default_factory=list)  # the training videos' MOS, sorted (predict's percentile)

    @property
    def score_scale(self) -> tuple[float, float]:
        """The limits scores are read against: fit --scale, else the cache's MOS range (runs of earlier versions)."""
        return tuple(map(float, self.scale or self.cache.mos_range))

    @classmethod
    def from_dict(cls, data: dict, what: str | None = None) -> "RunConfig":
        if "extract" in data:  # written by 0.1: "extract" held the cache config, "cache" its path
            data = {**data, "cache_path": data.get("cache"), "cache": data["extract"]}
            del data["extract"]
        if "test_cache" in data:  # 0.1: one test cache path or None
            old = data.pop("test_cache")
            data = {**data, "test_cache_paths": [old] if old else []}
        return super().from_dict(data, what)

    @classmethod
    def read(cls, run: Path | str, flag: str = "--run") -> "RunConfig":
        """The config.json of run folder `run` (`flag`: the option that named it)."""
        return RunFolder.open(run, flag).config(flag, named=run)


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


@dataclass
class FitResult:
    """What a fit measured: the run's metrics.json, and what `run_fit` returns. Read like the dict it once
    was (`result["summary"]`) as well as by attribute."""

    protocol: str
    fingerprint: str
    metrics: dict  # metric key -> what it means (training.metrics.METRIC_LABELS)
    splits: list[dict]  # per split: split, n_train, n_val, best_epoch and the metrics of each test set
    summary: dict  # test set -> metric -> median, mean, std, ... over the splits
    seconds: float | None = None  # the fit's wall time (None: not recorded)

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "fingerprint": self.fingerprint, "metrics": self.metrics,
                "splits": self.splits, "summary": self.summary, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> "FitResult":
        return cls(data["protocol"], data.get("fingerprint", ""), data.get("metrics", {}), data["splits"],
                   data["summary"], data.get("seconds"))

    def __getitem__(self, key: str):
        return self.to_dict()[key]


@dataclass
class RunManifest:
    """manifest.json: size and sha256 of each of the run's files (paths relative to the run), written last;
    `complete` is False while a fit writes the run (so a killed fit is recognised)."""

    complete: bool
    files: dict[str, dict]  # as files.checksums writes them
    format: str = RUN_FORMAT
    package_version: str = __version__
    written: str = ""  # when, local time

    def to_dict(self) -> dict:
        return {"format": self.format, "package_version": self.package_version, "complete": self.complete,
                "files": self.files, "written": self.written}

    @classmethod
    def read(cls, path: Path) -> "RunManifest":
        """Raises OSError, ValueError, KeyError or TypeError on a file that is not a manifest of this format."""
        data = json.loads(Path(path).read_text())
        manifest = cls(bool(data["complete"]), dict(data["files"]), data["format"], data.get("package_version", ""),
                       data.get("written", ""))
        if manifest.format != RUN_FORMAT:
            raise ValueError(f"format {manifest.format!r}, this version reads {RUN_FORMAT!r}")
        return manifest


class RunFolder:
    """One run directory: where each file lives, reading it, writing it, and checking it against its
    manifest. `RunFolder(path)` checks nothing (a fit writing it); `RunFolder.open(path)` refuses what is
    not a run folder."""

    CONFIG = "config.json"
    SPLITS = "splits.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    PREDICTION_COLUMNS = ["video", "mos", "pred", "split", "test_set"]
    SCATTER = "scatter.png"
    LEARNING_CURVE = "learning_curve.png"
    FAMILIARITY = "familiarity.safetensors"
    REPORT = "report.html"
    MANIFEST = "manifest.json"
    MODELS = "models"
    STATE = "state"

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def open(cls, run: Path | str, flag: str = "--run") -> "RunFolder":
        """`run` unless it is missing, not a folder, or a feature cache: then a `UserInputError` saying
        which (`flag`: the option that named it)."""
        from diffvqa_cache.cache.folder import holds_cache

        run = Path(run)
        if not run.exists():
            raise UserInputError(f"{flag} {run}: no such folder; {RUN_FIX}")
        if not run.is_dir():
            raise UserInputError(f"{flag} {run} is a file, not a folder; {RUN_FIX}")
        if holds_cache(run):
            raise UserInputError(f"{flag} {run} is a feature cache (written by `extract`), not a run: fit a run on it "
                                 f"with `diffvqa-cache fit --cache {run} --out RUN`, then pass {flag} RUN")
        return cls(run)

    # ------------------------------------------------------------ layout
    def file(self, name: str) -> Path:
        """RUN/`name` (one of the names above)."""
        return self.path / name

    def model_file(self, split: str) -> Path:
        return self.path / self.MODELS / f"{split}.safetensors"

    def model_files(self) -> list[Path]:
        """The split models present, sorted by name."""
        return sorted((self.path / self.MODELS).glob("*.safetensors"))

    def state_dir(self, split: str) -> Path:
        """Where a split's training state is saved every epoch while it trains."""
        return self.path / self.STATE / split

    def files_listed(self) -> list[str]:
        """The files a finished run holds, as fit's summary lists them."""
        return [self.REPORT, self.CONFIG, self.METRICS, self.PREDICTIONS, f"{self.MODELS}/", self.SCATTER,
                self.LEARNING_CURVE, self.FAMILIARITY, self.MANIFEST]

    # ------------------------------------------------------------ reading
    def has_config(self) -> bool:
        return self.file(self.CONFIG).is_file()

    def config(self, flag: str = "--run", named: Path | str | None = None) -> RunConfig:
        """The run's record; `UserInputError` when it has none (`named`: the path as the user gave it)."""
        if not self.has_config():
            raise UserInputError(f"{flag} {named if named is not None else self.path}: no {self.CONFIG}; {RUN_FIX}")
        return RunConfig.load(self.file(self.CONFIG))

    def has_results(self) -> bool:
        """Whether the fit's metrics and predictions are there."""
        return self.file(self.METRICS).is_file() and self.file(self.PREDICTIONS).is_file()

    def metrics(self) -> FitResult:
        return FitResult.from_dict(json.loads(self.file(self.METRICS).read_text()))

    def predictions(self) -> list[dict]:
        """predictions.csv's rows as text (video, mos, pred, split, test_set)."""
        with open(self.file(self.PREDICTIONS), newline="") as f:
            return list(csv.DictReader(f))

    def finished(self) -> bool:
        """A run whose fit ended: its manifest says complete (runs of earlier versions: metrics.json is there)."""
        try:
            return bool(json.loads(self.file(self.MANIFEST).read_text()).get("complete"))
        except FileNotFoundError:
            return self.file(self.METRICS).is_file()
        except (OSError, ValueError, AttributeError):
            return False

    def verify(self) -> None:
        """Re-hash every file of the run against its manifest; one-line `CacheError` naming the first damaged,
        missing or foreign (a split model the run did not write) file and the fix. A run of an earlier version
        (no manifest) loads, said once per process."""
        from diffvqa_cache.progress import err

        run, path = self.path, self.file(self.MANIFEST)
        refit = "refit the run (the same `fit` command) or restore its files from a backup"
        if not path.is_file():
            if str(run) not in _UNCHECKED:
                _UNCHECKED.add(str(run))
                err.print(f"[yellow]{run} has no {self.MANIFEST} (fitted by an earlier version): its files cannot be "
                          "checked for damage; refit it to get one[/]")
            return
        try:
            manifest = RunManifest.read(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"{path}: unreadable run manifest ({exc}); {refit}") from None
        if not manifest.complete:
            raise CacheError(f"{run}: its fit has not finished (still running, or killed); wait for it, or rerun the "
                             "same fit command with --resume")
        problems = checksum_problems(run, manifest.files)
        foreign = sorted(str(m.relative_to(run)) for m in self.model_files() if str(m.relative_to(run)) not in manifest.files)
        problems += [f"{name}: not written by this run (not in its {self.MANIFEST}); delete it" for name in foreign]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            fix = "" if problems[0].endswith("delete it") else f"; {refit}"
            raise CacheError(f"{run}/{problems[0]}{more}{fix}")

    def load_models(self, fingerprint: str, device, verify: bool = True) -> list:
        """[(model, CheckpointMeta)] of the split models, after `verify` (unless `verify` is False: the
        caller did it); refuses other features than `fingerprint`."""
        from diffvqa_cache.training.checkpoint import load_checkpoint

        if verify:
            self.verify()
        models = self.model_files()
        if not models:
            raise UserInputError(f"{self.path}: no {self.MODELS}/*.safetensors; {RUN_FIX}")
        return [load_checkpoint(m, fingerprint, device) for m in models]

    # ------------------------------------------------------------ writing (fit)
    def prepare(self) -> None:
        """Create RUN/models; remove temp files a killed writer left."""
        from diffvqa_cache.files import remove_leftovers

        (self.path / self.MODELS).mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.path)

    def clear_earlier(self) -> None:
        """Forget an earlier fit's training state and split models (it may have had more splits)."""
        shutil.rmtree(self.path / self.STATE, ignore_errors=True)
        for old_model in self.model_files():
            old_model.unlink()

    def write_manifest(self, files: list[str] | None) -> None:
        """RUN/manifest.json over `files` (paths relative to the run); `files=None` marks a run being written
        (a fit writes that first, so a killed fit is recognised)."""
        manifest = RunManifest(files is not None, checksums(self.path, files or []),
                               written=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json_atomic(self.file(self.MANIFEST), manifest.to_dict())

    def write_record(self, cfg: RunConfig, splits: list[dict]) -> None:
        """config.json and splits.json, before any training."""
        cfg.save(self.file(self.CONFIG))
        write_json_atomic(self.file(self.SPLITS), splits)

    def finished_split(self, split: str) -> dict | None:
        """{entry, rows, history} of a split an earlier (killed) fit finished, or None."""
        done = self.path / self.STATE / f"{split}.json"
        if not (done.is_file() and self.model_file(split).is_file()):
            return None
        return json.loads(done.read_text())

    def split_done(self, split: str, entry: dict, rows: list, history: list) -> None:
        """Record a finished split (its model saved) for --resume; drop its training state."""
        write_json_atomic(self.path / self.STATE / f"{split}.json", {"entry": entry, "rows": rows, "history": history})
        shutil.rmtree(self.state_dir(split), ignore_errors=True)

    def write_results(self, result: FitResult, rows: list) -> None:
        """metrics.json and predictions.csv (`rows`: (video, mos, pred, split, test set))."""
        write_json_atomic(self.file(self.METRICS), result.to_dict())
        write_csv_atomic(self.file(self.PREDICTIONS), self.PREDICTION_COLUMNS, rows)

    def complete(self, splits: list[str]) -> None:
        """The final manifest, over every file the fit wrote (the report is a view: not in it)."""
        written = [self.CONFIG, self.SPLITS, self.METRICS, self.PREDICTIONS, self.SCATTER, self.LEARNING_CURVE] \
            + [str(self.model_file(s).relative_to(self.path)) for s in splits] \
            + ([self.FAMILIARITY] if self.file(self.FAMILIARITY).is_file() else [])
        self.write_manifest(written)


def verify_run(run: Path | str) -> None:
    """`RunFolder(run).verify()`."""
    RunFolder(run).verify()


def write_run_manifest(run: Path | str, files: list[str] | None) -> None:
    """`RunFolder(run).write_manifest(files)`."""
    RunFolder(run).write_manifest(files)
