"""The Mamba layer on the compiled CPU kernels of `scan_cpu`, token-major, with a hand-written backward.

Our choice (measured in `benchmarks/tcab_cpu.py`): autograd over the layer's ops would keep about six
(B, L, d_inner) activations per layer (GBs at TCAB's 1568 tokens), and a torch checkpoint of the layer runs the
whole forward again, scan included. This function keeps the layer's input, x before and after the conv, the
gate z, x_proj's small outputs (dt's low-rank input, B, C) and the scan's chunk states; its backward recomputes
dt (a rank-6 matmul) and lets the scan's backward kernel rebuild the scan's states chunk by chunk, which also
gives back the scan's output for out_proj's weight gradient. Same parameters, values and gradients as
`Mamba._forward` (tested against the pure-PyTorch path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffvqa_cache.training.regressor import scan_cpu


class _MambaLayer(torch.autograd.Function):
    # under CPU autocast the layer still runs in float32 (the kernels take float32/float64), as a whole
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, hidden, in_w, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b, A_log, D, out_w, sizes):
        d_inner, dt_rank, d_state = sizes
        x_pre, z = F.linear(hidden, in_w[:d_inner]), F.linear(hidden, in_w[d_inner:])
        x = scan_cpu.conv_forward(x_pre, conv_w, conv_b)
        dt_low, B, C = (t.contiguous() for t in torch.split(F.linear(x, xproj_w), [dt_rank, d_state, d_state], -1))
        y, states = scan_cpu.scan_forward(x, F.linear(dt_low, dtproj_w), -torch.exp(A_log), B, C, D, z, dtproj_b,
                                          softplus=True, keep_states=any(ctx.needs_input_grad))  # (grad mode is off)
        ctx.save_for_backward(hidden, x_pre, z, x, dt_low, B, C, states, in_w, conv_w, conv_b, xproj_w, dtproj_w,
                              dtproj_b, A_log, D, out_w)
        return F.linear(y, out_w)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dout):
        (hidden, x_pre, z, x, dt_low, B, C, states, in_w, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b, A_log, D,
         out_w) = ctx.saved_tensors
        d_inner = x.shape[-1]
        A = -torch.exp(A_log)
        # 5. out_proj: the scan's output comes back from its backward
        dout = dout.contiguous()
        dx, ddt, dA, dB, dC, dD, dz, ddt_b, y = scan_cpu.scan_backward(
            x, F.linear(dt_low, dtproj_w), A, B, C, D, z, dtproj_b, True, states, dout @ out_w, want_y=True)
        rows = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  (B, L, c) -> (B * L, c)
        d_out_w = rows(dout).t() @ rows(y)
        # 3. dt_proj and x_proj
        d_dtproj_w = rows(ddt).t() @ rows(dt_low)
        d_dbc = torch.cat([ddt @ dtproj_w, dB, dC], dim=-1)
        d_xproj_w = rows(d_dbc).t() @ rows(x)
        dx += d_dbc @ xproj_w
        # 2. conv + SiLU
        dx_pre, d_conv_w, d_conv_b = scan_cpu.conv_backward(x_pre, conv_w, conv_b, dx)
        # 1. in_proj
        d_in_w = torch.cat([rows(dx_pre).t() @ rows(hidden), rows(dz).t() @ rows(hidden)])
        d_hidden = dx_pre @ in_w[:d_inner] + dz @ in_w[d_inner:]
        return (d_hidden, d_in_w, d_conv_w, d_conv_b, d_xproj_w, d_dtproj_w, ddt_b, dA * A, dD, d_out_w, None)


def mamba_layer(layer, hidden: torch.Tensor) -> torch.Tensor:
    """`layer._forward(hidden)` (a `mamba.Mamba`, hidden (B, L, d_model)) on the compiled kernels; keeps hidden,
    x before and after the conv, z, dt's input, B, C and the scan's chunk states for backward. Call
    `scan_cpu.available()` first."""
    return _MambaLayer.apply(hidden, layer.in_proj.weight, layer.conv1d.weight, layer.conv1d.bias,
                             layer.x_proj.weight, layer.dt_proj.weight, layer.dt_proj.bias, layer.A_log, layer.D,
                             layer.out_proj.weight, (layer.d_inner, layer.dt_rank, layer.d_state))
