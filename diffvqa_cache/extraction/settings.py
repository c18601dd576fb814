"""Stage zero's settings: how `adapt` trains the Controller (`AdaptConfig`). No torch here."""

from __future__ import annotations

from dataclasses import dataclass

from diffvqa_cache.cache.settings import DTYPES
from diffvqa_cache.config import Config, at_least, one_of, setting
from diffvqa_cache.errors import UserInputError

ADAPT_SPLITS = ("auto", "train", "all")


@dataclass
class AdaptConfig(Config):
    """How stage zero trains the Controller. A resumed run may change the fields declared `numbers=False`
    (where it runs, how often it saves) and `extendable` (max_steps); `checked()` are the others."""

    model: str = setting("tiny", "'tiny', a local diffusers SD folder, or a hub id.", weights=True)
    revision: str | None = setting(None, "Hub revision of --model.", weights=True)
    controller: str | None = setting(None, "Start from this Controller folder (default: a zero-init copy of the UNet).",
                                      weights=True)
    frames: int = setting(8, "Frames sampled uniformly per video.")
    crops: int = setting(1, "Cropped views per frame (besides the resized view).")
    split: str = setting("auto", "Videos to adapt on: auto (the official train split where the dataset has one, "
                                 "e.g. LSVQ, so adaptation never sees test videos; else all: adaptation is "
                                 "label-free), train, or all.")
    limit: int | None = setting(None, "Train on a seeded random subset of N videos.")
    max_steps: int = setting(20000, "Optimizer steps.", extendable=True)
    batch_size: int = setting(4, "Latents per micro-batch.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    lr: float = setting(1e-4, "AdamW learning rate.")
    warmup: int = setting(500, "Linear warm-up steps, then constant (as DiffBIR).")
    weight_decay: float = setting(1e-2, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (0: none).")
    seed: int = setting(0, "Seeds crops, the video subset, frame order, timesteps and noise.")
    dtype: str = setting("fp32", "fp32, bf16 or fp16 (autocast, CUDA only; the CPU trains in fp32).")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory.")
    save_every: int = setting(1000, "Checkpoint every N steps (0: only at the end).", numbers=False)
    keep_checkpoints: int = setting(2, "Checkpoints kept in OUT/checkpoints.", numbers=False)
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...", numbers=False)

    def __post_init__(self) -> None:
        at_least(self, ("frames", "crops", "max_steps", "batch_size", "grad_accum", "keep_checkpoints"), 1)
        at_least(self, ("warmup", "save_every", "max_grad_norm", "weight_decay"), 0)
        if self.lr <= 0:
            raise UserInputError(f"lr must be > 0, got {self.lr}")
        if self.limit is not None and self.limit < 1:
            raise UserInputError(f"limit must be >= 1, got {self.limit}")
        one_of("dtype", self.dtype, DTYPES)
        one_of("split", self.split, ADAPT_SPLITS)

    def checked(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return self.numbers(resumed=True)

    @classmethod
    def may_change_on_resume(cls) -> list[str]:
        """The options a resumed run may change (--max-steps, --save-every, ...)."""
        names = set(cls.fields_where(numbers=False)) | set(cls.fields_where(extendable=True))
        return ["--" + f.replace("_", "-") for f in cls.fields_where() if f in names]
