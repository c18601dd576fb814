"""Self-describing regressor checkpoints: safetensors weights + JSON metadata in the same file.

The metadata holds everything needed to rebuild the model (regressor config, feature spec, load spec),
the cache fingerprint it was trained on (loading refuses other features), and the raw -> MOS mapping.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffvqa_cache import __version__
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import atomic_path

FORMAT = "diffvqa-regressor-1"


@dataclass
class CheckpointMeta:
    """What a split model's file says about itself (JSON in its safetensors header). Read like the dict it
    once was (`meta["scale"]`, `meta.get("history", [])`) as well as by attribute."""

    regressor: dict  # RegressorConfig.to_dict()
    feature_spec: dict  # the feature shapes the model was built for
    fingerprint: str  # the cache's: loading refuses other features
    load_spec: dict | None = None  # what to load from a cache (LoadSpec.to_dict())
    cache: dict | None = None  # the training cache's CacheConfig.to_dict()
    mos_range: list[float] | None = None
    split: str | None = None
    seed: int | None = None
    train: dict | None = None  # the TrainConfig used
    scale: list[float] | None = None  # raw -> MOS: score = raw * scale[0] + scale[1]
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)  # per epoch: loss, val_srcc ...
    test_metrics: dict = field(default_factory=dict)  # test set -> metrics
    resumed_after: int | None = None  # the saved epoch training continued after (None: not resumed)
    format: str = FORMAT
    package_version: str = __version__
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read

    @classmethod
    def from_dict(cls, data: dict) -> "CheckpointMeta":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    def replace(self, **changes) -> "CheckpointMeta":
        return dataclasses.replace(self, **changes)

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)


def save_checkpoint(path: Path, model: torch.nn.Module, meta: CheckpointMeta | dict) -> None:
    """Write atomically: temp file, then rename (format and package version: this version's)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = meta if isinstance(meta, CheckpointMeta) else CheckpointMeta.from_dict(meta)
    full = meta.replace(format=FORMAT, package_version=__version__).to_dict()
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"diffvqa": json.dumps(full, sort_keys=True)})


def read_meta(path: Path) -> CheckpointMeta:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("diffvqa", "{}"))
    except Exception as exc:
        raise CacheError(f"{path}: not a readable regressor checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CacheError(f"{path}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT!r}")
    try:
        return CheckpointMeta.from_dict(meta)
    except TypeError:
        missing = sorted({"regressor", "feature_spec", "fingerprint"} - set(meta))
        raise CacheError(f"{path}: not a readable regressor checkpoint (no {', '.join(missing)})") from None


def load_checkpoint(path: Path, fingerprint: str | None = None, device: str | torch.device = "cpu"):
    """(model, CheckpointMeta); refuses a checkpoint trained on features with another fingerprint."""
    from safetensors.torch import load_file

    from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig

    meta = read_meta(path)
    if fingerprint is not None and meta.fingerprint != fingerprint:
        raise CacheError(f"{path} was trained on features {meta.fingerprint}, not {fingerprint}; "
                         "extract with the run's settings (see its config.json) or train on this cache")
    model = DiffVQARegressor(RegressorConfig.from_dict(meta.regressor), meta.feature_spec)
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval(), meta
