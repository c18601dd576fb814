"""Training losses: PLCC + rank (as FAST-VQA / DOVER), with MSE and L1 as options."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("plcc+rank", "plcc", "mse", "l1")


def plcc_loss(pred: torch.Tensor, mos: torch.Tensor) -> torch.Tensor:
    """FAST-VQA's PLCC loss: MSE of normalised scores plus MSE after scaling by the correlation."""
    if pred.numel() < 2:
        return F.mse_loss(pred, mos)
    p = (pred - pred.mean()) / (pred.std(unbiased=False) + 1e-8)
    y = (mos - mos.mean()) / (mos.std(unbiased=False) + 1e-8)
    loss0 = F.mse_loss(p, y) / 4
    rho = (p * y).mean()
    loss1 = F.mse_loss(rho * p, y) / 4
    return (loss0 + loss1) / 2


def rank_loss(pred: torch.Tensor, mos: torch.Tensor) -> torch.Tensor:
    """Pairwise hinge on every wrongly ordered pair, scaled by the spread of predictions."""
    if pred.numel() < 2:
        return pred.sum() * 0
    dp = pred[:, None] - pred[None, :]
    dy = torch.sign(mos[:, None] - mos[None, :])
    loss = F.relu(-dp * dy).sum() / max(1, int((dy != 0).sum()))
    return loss / (pred.std(unbiased=False).detach() + 1e-2)


def quality_loss(kind: str, pred: torch.Tensor, mos_z: torch.Tensor, rank_weight: float = 0.3) -> torch.Tensor:
    """`mos_z`: MOS standardised on the training set, so MSE/L1 work on any MOS scale."""
    if kind == "plcc+rank":
        return plcc_loss(pred, mos_z) + rank_weight * rank_loss(pred, mos_z)
    if kind == "plcc":
        return plcc_loss(pred, mos_z)
    if kind == "mse":
        return F.mse_loss(pred, mos_z)
    if kind == "l1":
        return F.l1_loss(pred, mos_z)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
