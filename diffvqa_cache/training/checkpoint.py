"""Self-describing regressor checkpoints: safetensors weights + JSON metadata in the same file.

The metadata holds everything needed to rebuild the model (regressor config, feature spec, load spec),
the cache fingerprint it was trained on (loading refuses other features), and the raw -> MOS mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffvqa_cache import __version__
from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import atomic_path

FORMAT = "diffvqa-regressor-1"


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """Write atomically: temp file, then rename."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = {"format": FORMAT, "package_version": __version__, **meta}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"diffvqa": json.dumps(full, sort_keys=True)})


def read_meta(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("diffvqa", "{}"))
    except Exception as exc:
        raise CacheError(f"{path}: not a readable regressor checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CacheError(f"{path}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT!r}")
    return meta


def load_checkpoint(path: Path, fingerprint: str | None = None, device: str | torch.device = "cpu"):
    """(model, meta); refuses a checkpoint trained on features with another fingerprint."""
    from safetensors.torch import load_file

    from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig

    meta = read_meta(path)
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise CacheError(f"{path} was trained on features {meta['fingerprint']}, not {fingerprint}; "
                         "extract with the run's settings (see its config.json) or train on this cache")
    model = DiffVQARegressor(RegressorConfig.from_dict(meta["regressor"]), meta["feature_spec"])
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval(), meta
