import math

import pytest
import torch
import torch.nn.functional as F

from diffvqa_cache.training.regressor.mamba import (
    BiMamba,
    Mamba,
    selective_scan_inference,
    selective_scan_parallel,
    selective_scan_reference,
)


def _scan_inputs(batch=2, d_inner=6, d_state=4, length=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=torch.float64, generator=g)
    return dict(
        u=torch.randn(batch, d_inner, length, **kw),
        delta=torch.randn(batch, d_inner, length, **kw),
        A=-torch.rand(d_inner, d_state, **kw) * 2 - 0.1,
        B=torch.randn(batch, d_state, length, **kw),
        C=torch.randn(batch, d_state, length, **kw),
        D=torch.randn(d_inner, **kw),
        z=torch.randn(batch, d_inner, length, **kw),
        delta_bias=torch.randn(d_inner, **kw),
    )


@pytest.mark.parametrize("length", [1, 5, 11, 16])
def test_parallel_scan_matches_reference_forward_and_grad(length):
    inputs = _scan_inputs(length=length)
    wrt = ["u", "delta", "A", "B", "C", "D"]
    for name in wrt:
        inputs[name].requires_grad_(True)
    y_ref = selective_scan_reference(**inputs)
    y_par = selective_scan_parallel(**inputs)
    torch.testing.assert_close(y_par, y_ref, atol=1e-6, rtol=1e-6)

    weight = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), [inputs[n] for n in wrt])
    grads_par = torch.autograd.grad((y_par * weight).sum(), [inputs[n] for n in wrt])
    for name, g_ref, g_par in zip(wrt, grads_ref, grads_par):
        torch.testing.assert_close(g_par, g_ref, atol=1e-6, rtol=1e-6, msg=f"gradient wrt {name}")


@pytest.mark.parametrize("length", [1, 11, 64])
def test_inference_scan_matches_reference(length):
    inputs = _scan_inputs(length=length)
    torch.testing.assert_close(selective_scan_inference(**inputs), selective_scan_reference(**inputs), atol=1e-10,
                               rtol=1e-10)


def test_mamba_gives_the_same_output_with_and_without_gradients():
    torch.manual_seed(0)
    mamba = Mamba(d_model=16, d_state=4).double()
    x = torch.randn(2, 33, 16, dtype=torch.float64)
    with torch.no_grad():
        inference = mamba(x)  # the sequential in-place scan
    torch.testing.assert_close(inference, mamba(x), atol=1e-10, rtol=1e-10)  # the parallel scan


def test_reference_scan_recurrence_by_hand():
    inputs = _scan_inputs(batch=1, d_inner=1, d_state=1, length=3)
    y = selective_scan_reference(**inputs)
    u, A, B, C, D, z = (inputs[k][..., :].flatten() for k in ("u", "A", "B", "C", "D", "z"))
    delta = F.softplus(inputs["delta"].flatten() + inputs["delta_bias"])
    h, expected = 0.0, []
    for t in range(3):
        h = math.exp(delta[t] * A[0]) * h + delta[t] * B[t] * u[t]
        expected.append((C[t] * h + D[0] * u[t]) * F.silu(z[t]))
    torch.testing.assert_close(y.flatten(), torch.stack(expected))


def test_mamba_cpu_forward_equals_reference_computation():
    torch.manual_seed(0)
    mamba = Mamba(d_model=20, d_state=4, d_conv=3, expand=2).double()
    x = torch.randn(2, 9, 20, dtype=torch.float64)
    # manual: projections with the module's parameters, then the sequential reference scan
    xz = F.linear(x, mamba.in_proj.weight).transpose(1, 2)
    u, z = xz.chunk(2, dim=1)
    u = F.silu(F.conv1d(u, mamba.conv1d.weight, mamba.conv1d.bias, padding=2, groups=u.shape[1])[..., :9])
    dt, B, C = F.linear(u.transpose(1, 2), mamba.x_proj.weight).split([mamba.dt_rank, 4, 4], dim=-1)
    delta = F.linear(dt, mamba.dt_proj.weight).transpose(1, 2)
    y = selective_scan_reference(u, delta, -torch.exp(mamba.A_log), B.transpose(1, 2), C.transpose(1, 2),
                                 mamba.D, z=z, delta_bias=mamba.dt_proj.bias, delta_softplus=True)
    expected = F.linear(y.transpose(1, 2), mamba.out_proj.weight)
    torch.testing.assert_close(mamba(x), expected, atol=1e-10, rtol=1e-8)


def mamba_ssm_state_dict_shapes(d_model, d_state=16, d_conv=4, expand=2):
    """Keys and shapes of mamba_ssm.Mamba(d_model, d_state, d_conv, expand) (mamba_ssm/modules/mamba_simple.py)."""
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * d_inner, d_model),  # bias=False
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),  # bias=False
    }


@pytest.mark.parametrize("d_model, d_state, d_conv, expand", [(96, 16, 4, 2), (40, 8, 3, 1)])
def test_mamba_ssm_layout_loads_strictly(d_model, d_state, d_conv, expand):
    shapes = mamba_ssm_state_dict_shapes(d_model, d_state, d_conv, expand)
    mamba = Mamba(d_model, d_state, d_conv, expand)
    assert {k: tuple(v.shape) for k, v in mamba.state_dict().items()} == shapes
    foreign = {key: torch.randn(shape) for key, shape in shapes.items()}
    mamba.load_state_dict(foreign, strict=True)
    torch.testing.assert_close(mamba.A_log.detach(), foreign["A_log"])


def test_mamba_is_causal_and_bimamba_sees_reversed_sequence():
    torch.manual_seed(0)
    x = torch.randn(1, 12, 16, requires_grad=True)
    # forward Mamba: output at position 0 cannot depend on the last input
    (grad,) = torch.autograd.grad(Mamba(16, d_state=4)(x)[0, 0].sum(), x)
    assert grad[0, -1].abs().sum() == 0
    # BiMamba: output at position 0 depends on the last input (through the reversed direction)
    bimamba = BiMamba(16, d_state=4)
    (grad,) = torch.autograd.grad(bimamba(x)[0, 0].sum(), x)
    assert grad[0, -1].abs().sum() > 0
    # and the reversed direction alone is anti-causal
    (grad,) = torch.autograd.grad(bimamba.backward_mamba(x.flip(1)).flip(1)[0, -1].sum(), x)
    assert grad[0, 0].abs().sum() == 0


def test_bimamba_shape_and_grads(check_grads):
    block = BiMamba(16, d_state=4)
    y = block(torch.randn(2, 7, 16))
    assert y.shape == (2, 7, 16)
    y.square().sum().backward()
    check_grads(block)
