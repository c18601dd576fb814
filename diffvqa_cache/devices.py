"""Where torch work runs and at what precision: one device rule and one autocast policy for all stages."""

from __future__ import annotations

import contextlib

import torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" means the first CUDA GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, dtype: str):
    """Weights stay fp32; a lower `dtype` ("bf16", "fp16") runs the matmuls under autocast on `device`.

    Callers choose the dtype: extraction honours the user's choice on any device (bf16 pays on recent
    CPUs too), adaptation and training pass "fp32" off CUDA (see `training_dtype`)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=TORCH_DTYPES[dtype])


def training_dtype(device: torch.device, dtype: str) -> str:
    """Mixed precision for training only on CUDA, where the loss scaler and kernels are made for it."""
    return dtype if device.type == "cuda" else "fp32"
