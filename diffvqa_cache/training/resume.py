"""Training state saved at the end of every epoch, so that a killed fit continues where it stopped and
ends exactly as an uninterrupted one.

One folder per split (or sweep task): `epoch-NNNN.safetensors` holds the tensors (model, optimizer
moments, the best validation weights, torch's RNG states) and `state.json` everything else (epoch,
history, early-stopping bookkeeping, optimizer groups, LR scheduler, numpy generator state). Both are
written atomically, the JSON last: it names its tensor file, so it is the completion mark, and an older
tensor file is deleted only after the JSON that replaces it is in place. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffvqa_cache.errors import CacheError
from diffvqa_cache.files import atomic_path, write_json_atomic

STATE = "state.json"


def save_state(folder: Path, epoch: int, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
               gen: np.random.Generator, info: dict, best_state: dict | None = None) -> None:
    """Everything `train` needs to continue after epoch `epoch`; `info` is JSON (history, bookkeeping)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    opt_sd = opt.state_dict()
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best/{k}": v for k, v in (best_state or {}).items()})
    scalars = {}
    for pid, st in opt_sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{pid}/{name}"] = v
            else:
                scalars[f"{pid}/{name}"] = v
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    name = f"epoch-{epoch:04d}.safetensors"
    with atomic_path(folder / name) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"epoch": str(epoch)})
    write_json_atomic(folder / STATE, {
        "epoch": epoch, "tensors": name, "info": info, "has_best": best_state is not None,
        "optimizer": {"param_groups": opt_sd["param_groups"], "scalars": scalars},
        "scheduler": sched.state_dict(), "numpy_rng": gen.bit_generator.state})
    for old in folder.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_state(folder: Path | None, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
               gen: np.random.Generator) -> tuple[int, dict, dict | None] | None:
    """Restore what `save_state` wrote into model, optimizer, scheduler, RNGs; (epoch, info, best weights),
    or None when `folder` holds no state."""
    from safetensors.torch import load_file

    path = Path(folder) / STATE if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        tensors = load_file(str(Path(folder) / state["tensors"]))
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(f"{folder}: unreadable training state ({exc}); delete the folder to restart this split") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, pid, name = k.split("/", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    for k, v in state["optimizer"]["scalars"].items():
        pid, name = k.split("/", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    sched.load_state_dict(state["scheduler"])
    gen.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[f"rng/cuda/{i}"] for i in range(sum(k.startswith("rng/cuda/") for k in tensors))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")} if state["has_best"] else None
    return int(state["epoch"]), state["info"], best
