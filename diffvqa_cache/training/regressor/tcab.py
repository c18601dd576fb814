"""TCAB (Temporal Coherence Augmentation Block): a bidirectional Mamba over the view's frames.

Paper fixes: one TCAB per branch, in parallel to DFF/TDM/FFF, a Mamba sequence model over the view frames
(VideoMamba-style: patch embedding, bidirectional Mamba blocks) giving F_TCAB. Our choice: the small
uint8 pixel copy in the cache -> [0, 1] -> ImageNet normalisation -> Conv2d patch embedding
(kernel = stride = `patch`) -> the tokens of all frames in time order plus learned spatial and temporal
position embeddings (linearly interpolated when T or the patch grid differs from the build-time spec) ->
`depth` BiMamba blocks -> LayerNorm -> mean over each frame's tokens -> (B, T, d_model).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffvqa_cache.training.regressor.mamba import BiMamba

EMBED_CHUNK = 32  # frames normalised and patch-embedded at a time on the CPU

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _PatchEmbed(torch.autograd.Function):
    """conv2d(pixels as floats, weight, bias, stride=patch) on the CPU, EMBED_CHUNK frames at a time, keeping only
    the uint8 pixels for backward (the weight gradient converts each chunk again; no conv is rerun)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # float32 under CPU autocast, as the layers
    def forward(ctx, pixels, weight, bias, patch):
        ctx.save_for_backward(pixels, weight)
        ctx.patch = patch
        parts = pixels.split(EMBED_CHUNK)
        return torch.cat([F.conv2d(part.to(weight.dtype), weight, bias, stride=patch) for part in parts])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dout):
        pixels, weight = ctx.saved_tensors
        dweight = sum(torch.nn.grad.conv2d_weight(part.to(weight.dtype), weight.shape, dpart, stride=ctx.patch)
                      for part, dpart in zip(pixels.split(EMBED_CHUNK), dout.split(EMBED_CHUNK)))
        return None, dweight, dout.sum((0, 2, 3)), None


class TCAB(nn.Module):
    """pixels (B, T, 3, P, P) uint8 -> F_TCAB (B, T, d_model)."""

    def __init__(self, pixel_size: int, num_frames: int, d_model: int = 96, depth: int = 2, patch: int = 16,
                 d_state: int = 16):
        super().__init__()
        if pixel_size < patch:
            raise ValueError(f"TCAB patch size {patch} is larger than the cached pixel size {pixel_size}")
        self.patch = patch
        self.grid = pixel_size // patch
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.patch_embed = nn.Conv2d(3, d_model, kernel_size=patch, stride=patch)
        self.pos_spatial = nn.Parameter(torch.zeros(1, 1, self.grid * self.grid, d_model))
        self.pos_temporal = nn.Parameter(torch.zeros(1, num_frames, 1, d_model))
        nn.init.trunc_normal_(self.pos_spatial, std=0.02)
        nn.init.trunc_normal_(self.pos_temporal, std=0.02)
        self.pos_spatial._no_weight_decay = self.pos_temporal._no_weight_decay = True  # as VideoMamba's
        self.blocks = nn.ModuleList([BiMamba(d_model, d_state=d_state) for _ in range(depth)])
        self.norm = nn.LayerNorm(d_model)

    def _position(self, frames: int, grid: int) -> torch.Tensor:
        """Spatial + temporal embeddings (1, T, grid*grid, d), resized if T or grid differ from the spec."""
        spatial, temporal = self.pos_spatial, self.pos_temporal
        if grid != self.grid:
            square = spatial.view(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            square = F.interpolate(square, size=(grid, grid), mode="bilinear", align_corners=False)
            spatial = square.permute(0, 2, 3, 1).reshape(1, 1, grid * grid, -1)
        if frames != temporal.shape[1]:
            line = F.interpolate(temporal[:, :, 0].transpose(1, 2), size=frames, mode="linear", align_corners=False)
            temporal = line.transpose(1, 2).unsqueeze(2)
        return spatial + temporal

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch conv's weight and bias with the normalisation folded in: for uint8 frames x,
        W ((x / 255 - mean) / std) + b = (W / (255 std)) x + (b - sum W mean / std)."""
        conv = self.patch_embed
        weight = conv.weight / (255.0 * self.std)
        return weight, conv.bias - (conv.weight * (self.mean / self.std)).sum((1, 2, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, frames = pixels.shape[:2]
        # 1.-2. frames (one B*T batch) -> [0, 1] -> ImageNet normalisation -> patch embedding (one conv on the
        # float frames, the normalisation folded into its weight and bias) -> tokens (B, T, N, d) + spatial and
        # temporal positions. On the CPU the float frames (4x the uint8 pixels) exist EMBED_CHUNK frames at a
        # time, in backward too (`_PatchEmbed`)
        weight, bias = self._folded()
        flat = pixels.flatten(0, 1)
        if flat.is_cuda:
            x = F.conv2d(flat.to(weight.dtype), weight, bias, stride=self.patch)
        else:
            x = _PatchEmbed.apply(flat, weight, bias, self.patch)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2).unflatten(0, (batch, frames))
        x = x + self._position(frames, grid)
        # 3. all tokens in time order through the bidirectional Mamba blocks
        x = x.flatten(1, 2)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        # 4. mean over each frame's tokens
        return x.unflatten(1, (frames, grid * grid)).mean(dim=2)
