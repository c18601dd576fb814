"""Stage two's settings: how a split's regressor trains (`TrainConfig`), how a fit fine-tunes
(`FinetuneConfig`) and everything a fit depends on (`FitConfig`, with the regressor's `RegressorConfig`).

No torch here (the modules that need it are imported where used), so the CLI builds `fit`'s options from
these declarations and `--help` stays fast."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from diffvqa_cache.config import Config, role, setting
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.memory import feature_budget_gb
from diffvqa_cache.training.regressor.config import RegressorConfig

DATA_PATHS = ("auto", "memory", "stream")  # where stage two reads features from (`data`)

if TYPE_CHECKING:
    from diffvqa_cache.training.rules import LoadSpec

SECTIONS = ("regressor", "train", "finetune")
BARE_SECTIONS = ("regressor", "train")  # where a bare --set name is looked up (finetune.* is always spelled out)


@dataclass
class TrainConfig(Config):
    """How the regressor of one split trains (`fit`'s `train.*` settings)."""

    epochs: int = setting(30, "Training epochs per split (with --init: finetune.epochs).")
    batch_size: int = setting(16, "Videos per training step.")
    lr: float = setting(1e-3, "AdamW learning rate (with --init: finetune.lr).")
    weight_decay: float = setting(0.05, "AdamW weight decay.")
    warmup_epochs: float = setting(1.0, "Linear warm-up epochs, then cosine decay to 0.")
    loss: str = setting("plcc+rank", "plcc+rank, plcc, mse or l1.")
    rank_weight: float = setting(0.3, "Weight of the rank term of plcc+rank.")
    grad_clip: float = setting(1.0, "Gradient clipping norm.")
    val_fraction: float = setting(0.0, "Share of the train videos carved off for early stopping (the test "
                                       "split is never used for it).")
    patience: int = setting(0, "Epochs without a better validation SRCC before stopping (0: never stop early).")
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:1 ... (a resumed run may move: "
                                  "--amp's bf16 applies on CUDA only).", numbers=False)
    amp: bool = setting(True, "bf16 autocast on CUDA; ignored on the CPU.")
    eval_batch_size: int = setting(64, "Videos per evaluation pass (lower it to save memory).", numbers=False)

    def __post_init__(self):
        from diffvqa_cache.training.losses import LOSSES

        if self.loss not in LOSSES:
            raise UserInputError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0 <= self.val_fraction < 0.5:
            raise UserInputError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 2:
            raise UserInputError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")

    def precision(self, device) -> str:
        from diffvqa_cache.devices import training_dtype

        return training_dtype(device, "bf16" if self.amp else "fp32")


@dataclass
class FinetuneConfig(Config):
    """The training settings that differ when a fit starts from an earlier run's models (`fit --init`):
    a lower learning rate, fewer epochs and no warm-up, so that fine-tuning adjusts the pre-trained
    regressor rather than washing it out. Every other training setting is `train`'s."""

    lr: float = setting(1e-4, "AdamW learning rate when fine-tuning.")
    epochs: int = setting(10, "Training epochs per split when fine-tuning.")
    warmup_epochs: float = setting(0.0, "Linear warm-up epochs when fine-tuning.")

    def __post_init__(self):
        if not self.lr > 0 or self.epochs < 1 or self.warmup_epochs < 0:
            raise UserInputError(f"finetune needs lr > 0, epochs >= 1 and warmup_epochs >= 0, got {self.lr}, "
                                 f"{self.epochs}, {self.warmup_epochs}")


@dataclass
class FitConfig(Config):
    """Everything a fit depends on; saved in the run's config.json."""

    regressor: RegressorConfig = field(default_factory=RegressorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # replaces train's lr/epochs/warm-up with --init
    protocol: str = setting("auto", "auto (lsvq where the cache has LSVQ's official split, cross with "
                                    "--test-cache, else random), random, lsvq or cross.", splits=True)
    cross_train: str = setting("train", "cross: train on the official train part of a cache that has one, or "
                                        "all its videos.")
    splits: int = setting(10, "Random protocol: number of repeated splits.", splits=True)
    test_fraction: float = setting(0.2, "Random protocol: share of the videos in each split's test set.",
                                   splits=True)
    seed: int = setting(0, "Seeds splits, initialisation and batches (split i uses seed + i).", splits=True)
    grid: int | None = setting(None, "Load-time pooling of F_MS and F_Latent to GRID x GRID (default: the "
                                     "cache's grid).")
    num_frames: int | None = setting(None, "Frames per video used (default: all cached).")
    # 224 px by default: 14x14 = 196 tokens of 16 px per frame, as VideoMamba sees a frame
    pixel_size: int | None = setting(None, "TCAB input side (default: the cache's pixel copy, 224 px unless "
                                           "extracted otherwise); smaller is resized at load time (64 for quick "
                                           "CPU runs).")
    # finer keeps more of the 4-channel latent, which the cache holds at full size (64x64 for SD at 512 px)
    latent_grid: int | None = setting(None, "F_Latent's own load-time grid, a multiple of --grid (default: "
                                            "--grid, as F_MS).")
    ms_std: bool = setting(False, "F_MS cell means and stds (a cache extracted with --ms-pool mean+std); "
                                  "off: means.")
    data: str = setting("auto", "memory (the table in memory), stream (read from the shards per batch) or auto "
                                "(memory when it fits --memory-gb).", numbers=False)
    memory_gb: float | None = setting(None, "Budget for the feature data in GB (default: 70% of the memory "
                                            "available at the start).", numbers=False)
    verify: bool = setting(True, "Re-hash every shard before training (catches silent corruption).",
                           numbers=False)

    def __post_init__(self):
        from diffvqa_cache.training.protocols import CROSS_TRAIN, PROTOCOLS

        if self.protocol not in PROTOCOLS:
            raise UserInputError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.cross_train not in CROSS_TRAIN:
            raise UserInputError(f"cross_train must be one of {CROSS_TRAIN}, got {self.cross_train!r}")
        if self.splits < 1 or not 0 < self.test_fraction < 1:
            raise UserInputError(f"need splits >= 1 and 0 < test_fraction < 1, got {self.splits}, {self.test_fraction}")
        if self.data not in DATA_PATHS:
            raise UserInputError(f"data must be one of {DATA_PATHS}, got {self.data!r}")
        if self.memory_gb is not None:
            feature_budget_gb(self.memory_gb)

    def budget_gb(self) -> float:
        """`memory_gb`, or its default from the memory available now."""
        return feature_budget_gb(self.memory_gb)

    def load_spec(self, cached_pixel_size: int) -> LoadSpec:
        """What to load from a cache whose view copies are `cached_pixel_size` wide."""
        from diffvqa_cache.training.rules import LoadSpec

        if self.pixel_size is not None and self.pixel_size > cached_pixel_size:
            raise UserInputError(f"pixel_size {self.pixel_size} is larger than the cache's {cached_pixel_size} px view "
                                 f"copies; use at most {cached_pixel_size} or re-extract with --pixel-size {self.pixel_size}")
        r = self.regressor
        return LoadSpec(branches=r.branches, ms_levels=tuple(r.ms_levels), use_latent=r.use_latent,
                        use_pixels=r.use_tcab, grid=self.grid, pixel_size=self.pixel_size or cached_pixel_size,
                        num_frames=self.num_frames, latent_grid=self.latent_grid, ms_std=self.ms_std)

    def training(self, fine_tuning: bool) -> TrainConfig:
        """The training settings a fit uses: `train`, with `finetune`'s lr, epochs and warm-up when it
        starts from an earlier run's models."""
        if not fine_tuning:
            return self.train
        return self.train.replace(**self.finetune.to_dict())

    def with_overrides(self, overrides: dict) -> "FitConfig":
        """Apply {'train.epochs': 5, 'use_tcab': False, ...}; a bare name must match one field of
        regressor or train (fine-tuning settings are spelled `finetune.lr` etc.)."""
        d = self.to_dict()
        for key, value in overrides.items():
            if "." in key:
                sec, name = key.split(".", 1)
                if sec not in SECTIONS or name not in d[sec]:
                    raise UserInputError(f"unknown setting {key!r}")
                d[sec][name] = value
            elif key in d and key not in SECTIONS:
                d[key] = value
            else:
                hits = [s for s in BARE_SECTIONS if key in d[s]]
                if len(hits) != 1:
                    raise UserInputError(f"unknown setting {key!r}; use regressor.<name>, train.<name>, "
                                         "finetune.<name> or a top-level name")
                d[hits[0]][key] = value
        return FitConfig.from_dict(d)


    @classmethod
    def setting_field(cls, key: str) -> dataclasses.Field | None:
        """The field an override key names ('train.epochs', 'use_tcab', 'memory_gb'), as `with_overrides`
        reads it; None for a key it refuses."""
        sections = {"regressor": RegressorConfig, "train": TrainConfig, "finetune": FinetuneConfig}
        if "." in key:
            sec, name = key.split(".", 1)
            owners = [sections[sec]] if sec in sections else []
        else:
            name = key
            owners = [cls] if key not in sections else []
            if not any(f.name == key for f in dataclasses.fields(cls)):
                owners = [sections[s] for s in BARE_SECTIONS
                          if any(f.name == key for f in dataclasses.fields(sections[s]))]
        hits = [f for owner in owners for f in dataclasses.fields(owner) if f.name == name]
        return hits[0] if len(hits) == 1 else None

    @classmethod
    def numbers_overrides(cls, overrides: dict) -> dict:
        """`overrides` without the ones naming a setting declared `numbers=False` (memory_gb, train.device ...):
        what results computed under them depend on. Keys it cannot read are kept (`with_overrides` refuses them)."""
        return {k: v for k, v in overrides.items()
                if (f := cls.setting_field(k)) is None or role(f, "numbers")}


def load_fit_config(path: Path | None, overrides: dict) -> FitConfig:
    """Defaults, then a YAML file, then explicit overrides."""
    import yaml

    cfg = FitConfig()
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserInputError(f"--config {path}: cannot read it ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserInputError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
        flat = {}
        for k, v in data.items():
            if k in SECTIONS and isinstance(v, dict):
                flat.update({f"{k}.{n}": x for n, x in v.items()})
            else:
                flat[k] = v
        try:
            cfg = cfg.with_overrides(flat)
        except UserInputError as exc:
            raise UserInputError(f"--config {path}: {exc}") from None
    return cfg.with_overrides(overrides)
