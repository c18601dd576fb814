"""The Mamba layer on the compiled CPU kernels of `scan_cpu`, token-major, with a hand-written backward.

Our choice (measured in `benchmarks/tcab_cpu.py`): autograd over the layer's ops would keep about six
(B, L, d_inner) activations per layer (GBs at TCAB's 1568 tokens), and a torch checkpoint of the layer runs the
whole forward again, scan included. This module keeps the layer's input, x before and after the conv, the
gate z, x_proj's small outputs (dt's low-rank input, B, C) and the scan's chunk states; its backward recomputes
dt (a rank-6 matmul) and lets the scan's backward kernel rebuild the scan's states chunk by chunk, which also
gives back the scan's output for out_proj's weight gradient. Same parameters, values and gradients as
`Mamba._forward` (tested against the pure-PyTorch path).

`bidirectional` runs a BiMamba's two directions (independent layers over the same input) at once, one in a
helper thread, each with half of torch's threads, forward and backward: a layer's many small steps (matmuls,
conv, scan) then need no hand-over between cores, and torch's idle OpenMP threads do not spin on the cores the
kernels use (a TCAB training step ~14% faster on 2 cores than one direction after the other).
"""

from __future__ import annotations

import functools
from concurrent.futures import wait

import torch
import torch.nn.functional as F

from diffvqa_cache.training.regressor import scan_cpu

CHUNK_TOKENS = 16384  # `bidirectional` runs a batch's sequences through its two layers in parts of about this size
_rows = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  (B, L, c) -> (B * L, c)


def _parameters(layer) -> tuple[torch.Tensor, ...]:
    """A `mamba.Mamba`'s parameters in the order `_forward` and `_backward` take them."""
    return (layer.in_proj.weight, layer.conv1d.weight, layer.conv1d.bias, layer.x_proj.weight, layer.dt_proj.weight,
            layer.dt_proj.bias, layer.A_log, layer.D, layer.out_proj.weight)


def _forward(hidden, params, sizes, keep: bool):
    """The layer's output for hidden (B, L, d_model), and what `_backward` needs (None unless keep)."""
    in_w, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b, A_log, D, out_w = params
    d_inner, dt_rank, d_state = sizes
    # (B, L, d_inner) tensors are dropped as soon as they are done with: two layers run at once, and inference
    # runs at the fit's eval batch size
    x_pre = F.linear(hidden, in_w[:d_inner])
    x = scan_cpu.conv_forward(x_pre, conv_w, conv_b)
    if not keep:
        del x_pre
    z = F.linear(hidden, in_w[d_inner:])
    dt_low, B, C = (t.contiguous() for t in torch.split(F.linear(x, xproj_w), [dt_rank, d_state, d_state], -1))
    y, states = scan_cpu.scan_forward(x, F.linear(dt_low, dtproj_w), -torch.exp(A_log), B, C, D, z, dtproj_b,
                                      softplus=True, keep_states=keep)
    saved = (hidden, x_pre, z, x, dt_low, B, C, states) if keep else None
    del x, z
    return F.linear(y, out_w), saved


def _backward(saved, params, dout):
    """Gradients (hidden, *params) of `_forward` for dout, from what it kept."""
    hidden, x_pre, z, x, dt_low, B, C, states = saved
    in_w, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b, A_log, D, out_w = params
    d_inner = x.shape[-1]
    A = -torch.exp(A_log)
    # 5. out_proj: the scan's output comes back from its backward
    dout = dout.contiguous()
    dx, ddt, dA, dB, dC, dD, dz, ddt_b, y = scan_cpu.scan_backward(
        x, F.linear(dt_low, dtproj_w), A, B, C, D, z, dtproj_b, True, states, dout @ out_w, want_y=True)
    d_out_w = _rows(dout).t() @ _rows(y)
    del y
    # 3. dt_proj and x_proj
    d_dtproj_w = _rows(ddt).t() @ _rows(dt_low)
    d_dbc = torch.cat([ddt @ dtproj_w, dB, dC], dim=-1)
    del ddt
    d_xproj_w = _rows(d_dbc).t() @ _rows(x)
    dx += d_dbc @ xproj_w
    # 2. conv + SiLU
    dx_pre, d_conv_w, d_conv_b = scan_cpu.conv_backward(x_pre, conv_w, conv_b, dx)
    del dx
    # 1. in_proj
    d_in_w = torch.cat([_rows(dx_pre).t() @ _rows(hidden), _rows(dz).t() @ _rows(hidden)])
    d_hidden = dx_pre @ in_w[:d_inner] + dz @ in_w[d_inner:]
    return d_hidden, d_in_w, d_conv_w, d_conv_b, d_xproj_w, d_dtproj_w, ddt_b, dA * A, dD, d_out_w


class _MambaLayer(torch.autograd.Function):
    # under CPU autocast the layer still runs in float32 (the kernels take float32/float64), as a whole
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, hidden, sizes, keep, *params):
        out, saved = _forward(hidden, params, sizes, keep)
        ctx.save_for_backward(*(saved or ()), *params)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        d_hidden, *d_params = _backward(saved[:8], saved[8:], dout)
        return d_hidden, None, None, *d_params


def _with_threads(fn, threads: int):
    torch.set_num_threads(threads)  # this thread's OpenMP team (and MKL's, set back by `_side_by_side`)
    with torch.no_grad():  # a new thread starts with gradients on
        return fn()


@functools.lru_cache(maxsize=None)
def _threads_per_caller() -> bool:
    """Whether torch's thread count is each calling thread's own (OpenMP: `torch.set_num_threads` sets the team of
    the thread that calls it); torch's native pool has one count for the process, fixed once work has started."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _side_by_side(first, second):
    """(first(), second()): first in a helper thread while second runs in this one, each with half of torch's
    threads; one after the other when torch has one thread (or no per-thread thread counts)."""
    threads = torch.get_num_threads()
    if threads < 2 or not _threads_per_caller():
        return first(), second()
    future = scan_cpu.thread_pool(1).submit(_with_threads, first, threads // 2)
    try:
        second_result = _with_threads(second, threads // 2)
    finally:
        wait([future])
        torch.set_num_threads(threads)
    return future.result(), second_result


def _both_forward(hidden, params, sizes, keep):
    """Both directions' outputs, averaged, and what each kept; the second layer reads the sequence reversed."""
    forward_params, backward_params = params[:9], params[9:]

    def reversed_layer():
        out, saved = _forward(hidden.flip(1), backward_params, sizes, keep)
        return out.flip(1), saved

    (out_f, saved_f), (out_b, saved_b) = _side_by_side(lambda: _forward(hidden, forward_params, sizes, keep),
                                                       reversed_layer)
    return out_f.add_(out_b).mul_(0.5), saved_f, saved_b


class _BiMambaLayers(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, hidden, sizes, keep, *params):
        out, saved_f, saved_b = _both_forward(hidden, params, sizes, keep)
        ctx.save_for_backward(*(saved_f or ()), *(saved_b or ()), *params)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        saved_f, saved_b, params = saved[:8], saved[8:16], saved[16:]
        half = dout * 0.5

        def reversed_layer():
            d_hidden, *d_params = _backward(saved_b, params[9:], half.flip(1))
            return d_hidden.flip(1), *d_params

        (d_hidden, *d_forward), (d_reversed, *d_backward) = _side_by_side(
            lambda: _backward(saved_f, params[:9], half), reversed_layer)
        return d_hidden.add_(d_reversed), None, None, *d_forward, *d_backward


def mamba_layer(layer, hidden: torch.Tensor) -> torch.Tensor:
    """`layer._forward(hidden)` (a `mamba.Mamba`, hidden (B, L, d_model)) on the compiled kernels; keeps hidden,
    x before and after the conv, z, dt's input, B, C and the scan's chunk states for backward (nothing without
    gradients). Call `scan_cpu.available()` first."""
    sizes = (layer.d_inner, layer.dt_rank, layer.d_state)
    return _MambaLayer.apply(hidden, sizes, torch.is_grad_enabled(), *_parameters(layer))


def bidirectional(forward_layer, backward_layer, hidden: torch.Tensor) -> torch.Tensor:
    """mean(forward_layer(hidden), flip(backward_layer(flip(hidden)))) for two `mamba.Mamba` of one size, the
    two side by side (`_side_by_side`), CHUNK_TOKENS at a time; what each keeps for backward as in `mamba_layer`."""
    sizes = (forward_layer.d_inner, forward_layer.dt_rank, forward_layer.d_state)
    params = (*_parameters(forward_layer), *_parameters(backward_layer))
    # a few sequences at a time (equal parts of the batch): the layers' working memory stays small, which bounds
    # it at the fit's eval batch size (64) and is faster (a training step at batch 16 in 2 parts ~5%, an eval
    # pass at 64 in 7 parts ~34%); what backward keeps is the same
    parts = min(len(hidden), -(-hidden.shape[0] * hidden.shape[1] // CHUNK_TOKENS))
    keep = torch.is_grad_enabled()
    outs = [_BiMambaLayers.apply(part, sizes, keep, *params) for part in hidden.tensor_split(max(1, parts))]
    return outs[0] if len(outs) == 1 else torch.cat(outs)
