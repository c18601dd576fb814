"""Mamba block for TCAB, with a CUDA path (mamba_ssm) and a pure-PyTorch path sharing one parameter layout.

Paper fixes: TCAB is a Mamba sequence model (VideoMamba-style, bidirectional). Our choice:
- `Mamba` holds exactly the parameters and state_dict keys of `mamba_ssm.Mamba` (in_proj, conv1d, x_proj,
  dt_proj, A_log, D, out_proj; same shapes and init), so a checkpoint moves between GPU and CPU.
- At forward time: if `mamba_ssm` imports and the input is on CUDA, the selective scan runs in mamba_ssm's
  CUDA kernel (`selective_scan_fn`, i.e. mamba_ssm.Mamba's non-fused path); on the CPU the whole layer runs
  on the compiled kernels of `scan_cpu` (`mamba_cpu.mamba_layer`: token-major, a hand-written backward that
  keeps three activations and the scan's chunk states). Fallback when no compiler is there (or
  $DIFFVQA_MAMBA_SCAN=torch), pure PyTorch computes the same layer channels-first: a parallel scan (mambapy's
  `pscan`) when gradients are needed, and an in-place sequential scan without them; on the CPU the causal
  depthwise conv + SiLU is one autograd function that keeps only its input (torch's depthwise conv1d
  backward is slow there), and training recomputes each layer from its input in backward (a checkpoint).
- `BiMamba` = pre-LayerNorm, a forward Mamba and a second Mamba over the reversed sequence, outputs
  averaged, plus a residual; on the compiled CPU kernels the two directions run at once, in two threads
  (`mamba_cpu.bidirectional`).
- `selective_scan_reference` is a slow sequential loop, written like mamba_ssm's `selective_scan_ref`,
  used by the tests as ground truth.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from mambapy.pscan import pscan
from torch.utils.checkpoint import checkpoint

from diffvqa_cache.training.regressor import scan_cpu
from diffvqa_cache.training.regressor.mamba_cpu import bidirectional, mamba_layer


@functools.lru_cache(maxsize=None)
def cuda_selective_scan():
    """mamba_ssm's CUDA `selective_scan_fn`, or None; imported lazily, on the first CUDA forward."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build
        return None
    return selective_scan_fn


def selective_scan_reference(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """Sequential selective scan, same layout and maths as mamba_ssm's `selective_scan_ref`.

    u, delta, z: (batch, d_inner, L); A: (d_inner, d_state); B, C: (batch, d_state, L); D, delta_bias:
    (d_inner,). Keeps the input dtype (the original upcasts to float32). Returns (batch, d_inner, L):
    h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t;  y_t = C_t h_t + D * u_t;  y *= silu(z).
    """
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, length = u.shape
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(length):
        h = delta_a[:, :, t] * h + delta_b_u[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_parallel(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """Same contract as `selective_scan_reference`, computed with a parallel (Blelloch) scan in PyTorch."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    u_l, delta_l = u.transpose(1, 2), delta.transpose(1, 2)  # (batch, L, d_inner)
    delta_a = torch.exp(delta_l.unsqueeze(-1) * A)  # (batch, L, d_inner, d_state)
    delta_b_u = (delta_l * u_l).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
    h = pscan(delta_a, delta_b_u)  # (batch, L, d_inner, d_state)
    y = (h @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # (batch, d_inner, L)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


@torch.no_grad()
def selective_scan_inference(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """Same contract as `selective_scan_reference`, for inference (no autograd): the recurrence step by
    step on a (batch, d_inner, d_state) state updated in place."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_u = delta * u
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    y = torch.empty_like(u)
    for t in range(u.shape[2]):
        h.mul_(torch.exp(delta[:, :, t, None] * A)).add_(delta_u[:, :, t, None] * B[:, None, :, t])
        y[:, :, t] = torch.bmm(h, C[:, :, t, None]).squeeze(-1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


def causal_depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`nn.Conv1d(d, d, k, groups=d, padding=k - 1)(x)[..., :L]` as k shifted products (x: (B, d, L), weight
    (d, 1, k)): out_t = bias + sum_j weight_j x_{t + j - k + 1}."""
    k, length = weight.shape[-1], x.shape[-1]
    padded = F.pad(x, (k - 1, 0))
    out = weight[:, 0, k - 1, None] * x
    for j in range(k - 1):
        out = out + weight[:, 0, j, None] * padded[..., j:j + length]
    return out if bias is None else out + bias[:, None]


def _conv_no_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`causal_depthwise_conv1d` by torch's conv1d: its forward is faster than the shifted products (only its
    backward is slow on the CPU, and `_CausalConvSilu` does not use it)."""
    return F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight, bias, groups=weight.shape[0])


class _CausalConvSilu(torch.autograd.Function):
    """silu(causal_depthwise_conv1d(x, weight, bias)) keeping only x for backward (the conv is recomputed
    there): two fewer (B, d_inner, L) tensors saved per layer than the plain ops."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return F.silu(_conv_no_grad(x, weight, bias))

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        k, length = weight.shape[-1], x.shape[-1]
        pre = _conv_no_grad(x, weight, bias)
        sig = torch.sigmoid(pre)
        dpre = pre.mul_(1 - sig).add_(1).mul_(sig).mul_(dout)  # silu'(pre) * dout, in pre's memory
        del sig
        padded = F.pad(x, (k - 1, 0))
        dweight = torch.stack([(dpre * padded[..., j:j + length]).sum((0, 2)) for j in range(k)], dim=1)
        dx = F.conv1d(F.pad(dpre, (0, k - 1)), weight.flip(-1), groups=weight.shape[0])  # the transposed conv
        dbias = dpre.sum((0, 2)) if bias is not None else None
        return dx, dweight.unsqueeze(1), dbias


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.silu(causal_depthwise_conv1d(x, weight, bias))`, saving only x for backward."""
    return _CausalConvSilu.apply(x, weight, bias)


SCAN_ENV = "DIFFVQA_MAMBA_SCAN"
SCAN_CHOICES = ("auto", "compiled", "torch")


def _scan_choice() -> str:
    choice = os.environ.get(SCAN_ENV, "auto").strip().lower() or "auto"
    if choice not in SCAN_CHOICES:
        raise ValueError(f"${SCAN_ENV}={choice!r} is not one of {', '.join(SCAN_CHOICES)}; unset it or pick one")
    if choice == "compiled" and not scan_cpu.available():
        raise RuntimeError(f"${SCAN_ENV}=compiled but the compiled CPU scan is unavailable: {scan_cpu._library()}; "
                           f"install a C compiler (cc) or set {SCAN_ENV}=auto")
    return choice


def cpu_kernels(dtype: torch.dtype) -> bool:
    """Whether a non-CUDA forward runs on the compiled kernels of `scan_cpu` (token-major), chosen by
    $DIFFVQA_MAMBA_SCAN: `auto` (default) = for float32/float64 when they build here; `torch` = never (the
    pure-PyTorch path); `compiled` = always, or an error."""
    return _scan_choice() != "torch" and dtype in (torch.float32, torch.float64) and scan_cpu.available()


def cpu_selective_scan(dtype: torch.dtype, grad: bool):
    """The channels-first scan for a non-CUDA forward: the compiled kernel when `cpu_kernels(dtype)`, else the
    pure-PyTorch scans (parallel scan with gradients, in-place sequential scan without)."""
    if cpu_kernels(dtype):
        return scan_cpu.selective_scan_compiled
    return selective_scan_parallel if grad else selective_scan_inference


class Mamba(nn.Module):
    """Drop-in for `mamba_ssm.Mamba(d_model, d_state, d_conv, expand)`: (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)
                                            .repeat(self.d_inner, 1)))  # S4D-real init
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

        # dt init as mamba_ssm: weight ~ U(+-dt_rank^-0.5), softplus(bias) log-uniform in [dt_min, dt_max]
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not hidden_states.is_cuda and cpu_kernels(hidden_states.dtype):
            # the compiled CPU kernels; the backward keeps 3 (B, L, d_inner) activations and the scan's chunk states
            return mamba_layer(self, hidden_states)
        if not hidden_states.is_cuda and torch.is_grad_enabled():
            # pure-PyTorch training: keep only this layer's input for backward and recompute the rest there (the
            # layer's activations are ~20 (B, d_inner, L) tensors: GBs at TCAB's 1568 tokens; ~+30% time)
            return checkpoint(self._forward, hidden_states, use_reentrant=False)
        return self._forward(hidden_states)

    def _forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        length = hidden_states.shape[1]
        # 1. input projection, split into the SSM branch x and the gate z, channels first: (B, d_inner, L)
        # (computed channels first, W @ h^T, so that x, z and dt below are contiguous without copies)
        tokens = hidden_states.transpose(1, 2)
        x = torch.matmul(self.in_proj.weight[:self.d_inner], tokens)
        z = torch.matmul(self.in_proj.weight[self.d_inner:], tokens)
        # 2. causal depthwise conv over the sequence + SiLU (on the CPU as shifted products: torch's depthwise
        # conv1d backward is slower there than the whole scan)
        if x.is_cuda:
            x = F.silu(self.conv1d(x)[..., :length])
        else:
            x = causal_conv_silu(x, self.conv1d.weight, self.conv1d.bias)
        # 3. input-dependent dt (without bias: the scan adds it), B, C
        dt, B, C = torch.split(torch.matmul(self.x_proj.weight, x), [self.dt_rank, self.d_state, self.d_state], dim=1)
        dt = torch.matmul(self.dt_proj.weight, dt)  # (B, d_inner, L)
        B, C = B.contiguous(), C.contiguous()  # (B, d_state, L)
        # 4. selective scan (mamba_ssm's CUDA kernel when available and on GPU, else pure PyTorch), gated by silu(z)
        if x.is_cuda and cuda_selective_scan() is not None:
            scan = cuda_selective_scan()
            y = scan(x.contiguous(), dt.contiguous(), -torch.exp(self.A_log.float()), B, C, self.D.float(),
                     z=z.contiguous(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        else:
            scan = cpu_selective_scan(x.dtype, torch.is_grad_enabled())
            y = scan(x, dt, -torch.exp(self.A_log), B, C, self.D, z=z, delta_bias=self.dt_proj.bias, delta_softplus=True)
        # 5. output projection
        return self.out_proj(y.transpose(1, 2))


class BiMamba(nn.Module):
    """Pre-norm bidirectional Mamba block: x + mean(Mamba_f(LN x), flip(Mamba_b(flip(LN x))))."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.forward_mamba = Mamba(d_model, d_state, d_conv, expand)
        self.backward_mamba = Mamba(d_model, d_state, d_conv, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1. pre-norm
        h = self.norm(x)
        if not h.is_cuda and cpu_kernels(h.dtype):
            # 2.-3. on the compiled CPU kernels, both directions at once
            return x + bidirectional(self.forward_mamba, self.backward_mamba, h)
        # 2. both directions (the backward one reads the reversed sequence, its output is flipped back)
        y_forward = self.forward_mamba(h)
        y_backward = self.backward_mamba(h.flip(1)).flip(1)
        # 3. average + residual
        return x + 0.5 * (y_forward + y_backward)
