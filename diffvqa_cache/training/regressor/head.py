"""Head: per-frame weights from the S branch, per-frame quality from the D branch, weighted sum = score.

Paper fixes: MLP([F_FFF-S, F_TCAB-S]) -> weight of each frame; MLP([F_FFF-D, F_TCAB-D]) -> quality of
each frame; the score is the weighted sum of frame qualities. Our choices: the weights are a softmax over
frames of the weight MLP's logits (no output bias there: the softmax ignores a shared shift); MLPs are
Linear -> GELU -> Dropout -> Linear. With one branch only ("S" or "D") the quality MLP reads that branch
and the frame weights are uniform (1/T, no weight MLP is built). Without TCAB the MLP inputs are F_FFF
alone (the model passes the per-branch feature size).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def mlp(in_dim: int, hidden: int, dropout: float, out_bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1, bias=out_bias))


class Head(nn.Module):
    """quality features (B, T, F_q) [+ weight features (B, T, F_w)] -> score (B,), per-frame quality and weight."""

    def __init__(self, quality_dim: int, weight_dim: int | None, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.quality_mlp = mlp(quality_dim, hidden, dropout)
        # no output bias for the weight logits: a softmax over frames ignores a shared shift
        self.weight_mlp = mlp(weight_dim, hidden, dropout, out_bias=False) if weight_dim is not None else None

    def forward(self, quality_features: torch.Tensor, weight_features: torch.Tensor | None = None) -> dict:
        # 1. per-frame quality
        frame_quality = self.quality_mlp(quality_features).squeeze(-1)  # (B, T)
        # 2. per-frame weights: softmax over frames, or uniform with a single branch
        if self.weight_mlp is not None:
            frame_weight = torch.softmax(self.weight_mlp(weight_features).squeeze(-1), dim=1)
        else:
            frame_weight = torch.full_like(frame_quality, 1.0 / frame_quality.shape[1])
        # 3. weighted sum
        score = (frame_weight * frame_quality).sum(dim=1)
        return {"score": score, "frame_quality": frame_quality, "frame_weight": frame_weight}
