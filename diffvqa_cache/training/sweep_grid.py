"""A sweep's grid file (`load_grid`): the base settings and the named configurations, each a mapping of
`FitConfig` overrides (listed, or crossed from grid axes `setting: [values]`)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.settings import FitConfig

# Settings that define the splits (declared `splits=True`): the same for every configuration (set them in
# `base:` or on the CLI).
SPLIT_SETTINGS = FitConfig.fields_where(splits=True)


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt(v) for v in value) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_name(overrides: dict) -> str:
    """A readable file-safe name for an unnamed configuration: 'epochs=5,use_tcab=false'."""
    if not overrides:
        return "base"
    return ",".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in overrides.items())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "-", str(name))


def load_grid(path: Path) -> tuple[dict, list[tuple[str, dict]]]:
    """Read a sweep YAML: (base overrides, [(config name, overrides)]).

    Forms: a list of override mappings (each may have `name:`), or a mapping with an optional `base:`
    mapping, an optional `configs:` list (as before) and grid axes `setting: [values]` (crossed).
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"--grid {path}: cannot read it ({str(exc).splitlines()[0]})") from None
    if isinstance(data, list):
        data = {"configs": data}
    if not isinstance(data, dict):
        raise UserInputError(f"--grid {path}: expected a list of configurations or a mapping of settings to lists")
    data = dict(data)
    base = data.pop("base", None) or {}
    listed = data.pop("configs", None) or []
    if not isinstance(base, dict) or not isinstance(listed, list):
        raise UserInputError(f"--grid {path}: `base:` must be a mapping and `configs:` a list")
    configs: list[tuple[str, dict]] = []
    for i, item in enumerate(listed):
        if not isinstance(item, dict):
            raise UserInputError(f"--grid {path}: configuration {i + 1} is not a mapping of settings")
        item = dict(item)
        name = item.pop("name", None)
        configs.append((_safe(name if name is not None else config_name(item)), item))
    if data:  # grid axes
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in data.items()}
        for combo in itertools.product(*axes.values()):
            overrides = dict(zip(axes, combo))
            configs.append((_safe(config_name(overrides)), overrides))
    if not configs:
        raise UserInputError(f"--grid {path}: no configurations in it")
    names = [n for n, _ in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserInputError(f"--grid {path}: configuration names must be unique, repeated: {dup}")
    for name, overrides in configs:
        fixed = [k for k in overrides if k in SPLIT_SETTINGS]
        if fixed:
            raise UserInputError(f"--grid {path}: configuration {name!r} sets {fixed}; the splits are shared by all "
                                 "configurations, set these under `base:` or with --splits/--seed")
    return base, configs
