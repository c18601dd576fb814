"""The compiled CPU selective scan equals the reference scan in values and gradients, and Mamba picks it."""

import logging
import threading

import pytest
import torch

from diffvqa_cache.training.regressor import mamba as mamba_mod
from diffvqa_cache.training.regressor import mamba_cpu, scan_cpu
from diffvqa_cache.training.regressor.mamba import BiMamba, Mamba, selective_scan_reference
from diffvqa_cache.training.regressor.tcab import TCAB

ALL_INPUTS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def _scan_inputs(batch, d_inner, d_state, length, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=dtype, generator=g)
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


@pytest.fixture
def threads():
    """Run a test with 2 torch threads (the kernel splits its work items over them), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_compiled_scan_builds_here():
    assert scan_cpu.available(), scan_cpu._library()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(2, 6, 4, 1), (2, 6, 4, 11), (3, 5, 16, 97), (1, 1, 3, 40), (3, 37, 16, 70)])
@pytest.mark.parametrize("gate", ["z and D", "no z", "no D"])
def test_compiled_scan_values_and_gradients_equal_the_reference(dtype, tol, shape, gate, threads):
    inputs = _scan_inputs(*shape, dtype)
    if gate == "no z":
        inputs["z"] = None
    if gate == "no D":
        inputs["D"] = None
    wrt = [k for k in ALL_INPUTS if inputs[k] is not None]
    for name in wrt:
        inputs[name].requires_grad_(True)
    y_ref = selective_scan_reference(**inputs)
    y_fast = scan_cpu.selective_scan_compiled(**inputs)
    assert y_fast.dtype == dtype
    torch.testing.assert_close(y_fast, y_ref, atol=tol, rtol=tol)
    weight = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), [inputs[n] for n in wrt])
    grads_fast = torch.autograd.grad((y_fast * weight).sum(), [inputs[n] for n in wrt])
    for name, g_ref, g_fast in zip(wrt, grads_ref, grads_fast):
        torch.testing.assert_close(g_fast, g_ref, atol=tol * 10, rtol=tol * 10, msg=f"gradient wrt {name}")


@pytest.mark.parametrize("case", ["no softplus", "no delta_bias", "softplus past its threshold"])
def test_fused_delta_and_gate_equal_the_reference(case, threads):
    # softplus(delta + bias), the D skip and the silu(z) gate run inside the kernel: every option and torch's
    # softplus threshold (identity above 20) give the reference's values and gradients
    inputs = _scan_inputs(2, 5, 4, 33, torch.float64)
    softplus = case != "no softplus"
    if case == "no delta_bias":
        inputs["delta_bias"] = None
    if case == "softplus past its threshold":
        inputs["delta"] = inputs["delta"] * 0.02 + torch.where(torch.rand_like(inputs["delta"]) > 0.5, 19.995, -5.0)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs() * 0.3
    wrt = [k for k in ALL_INPUTS if inputs[k] is not None]
    for name in wrt:
        inputs[name].requires_grad_(True)
    y_ref = selective_scan_reference(**inputs, delta_softplus=softplus)
    y_fast = scan_cpu.selective_scan_compiled(**inputs, delta_softplus=softplus)
    torch.testing.assert_close(y_fast, y_ref, atol=1e-11, rtol=1e-11)
    weight = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), [inputs[n] for n in wrt])
    grads_fast = torch.autograd.grad((y_fast * weight).sum(), [inputs[n] for n in wrt])
    for name, g_ref, g_fast in zip(wrt, grads_ref, grads_fast):
        torch.testing.assert_close(g_fast, g_ref, atol=1e-10, rtol=1e-10, msg=f"gradient wrt {name}")


def test_compiled_scan_keeps_only_its_inputs_and_chunk_states_for_backward():
    # the fused kernel saves u, delta, z (and the small A, B, C, D, bias) and the state at the start of each chunk
    # of tokens: no softplus, skip, gate or per-token state tensors
    inputs = _scan_inputs(2, 6, 4, 70, torch.float32)
    tokens = {k: v.transpose(1, 2).contiguous() if v.dim() == 3 else v for k, v in inputs.items()}
    for name in ALL_INPUTS:
        tokens[name].requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        scan_cpu.selective_scan_tokens(**tokens)
    big = [t for t in saved if t.dim() == 3 and t.shape[-1] == 6]
    assert {t.data_ptr() for t in big} == {tokens[k].data_ptr() for k in ("u", "delta", "z")}
    chunks = -(-70 // scan_cpu._library().chunk_tokens())
    assert [tuple(t.shape) for t in saved if t.dim() == 4] == [(2, chunks, 4, 6)]
    assert sum(t.numel() for t in saved) == sum(t.numel() for t in tokens.values()) + 2 * chunks * 4 * 6


def test_compiled_scan_passes_gradcheck():
    inputs = _scan_inputs(2, 3, 4, 6, torch.float64)
    for name in ALL_INPUTS:
        inputs[name].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: scan_cpu.selective_scan_compiled(*a[:6], z=a[6], delta_bias=a[7]),
                                    tuple(inputs[k] for k in ALL_INPUTS))


def test_compiled_scan_handles_strided_inputs_and_a_long_sequence(threads):
    # Mamba's own layout (B, C transposed views) and TCAB's length at 224 px for 8 frames
    inputs = _scan_inputs(2, 8, 16, 1568, torch.float64)
    inputs["B"] = inputs["B"].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["u"] = inputs["u"][:, ::1]
    torch.testing.assert_close(scan_cpu.selective_scan_compiled(**inputs), selective_scan_reference(**inputs),
                               atol=1e-10, rtol=1e-10)


def _module_grads(module, x, scan, monkeypatch):
    monkeypatch.setenv(mamba_mod.SCAN_ENV, scan)
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    with torch.no_grad():
        y_infer = module(x)
    return y.detach(), y_infer, x.grad, grads


@pytest.mark.parametrize("block", [Mamba, BiMamba])
@pytest.mark.parametrize("shape", [(3, 29, 16), (3, 75, 20), (2, 3, 8)],
                         ids=["one chunk, 2 lane blocks", "3 chunks, 40 channels", "fewer tokens than the conv kernel"])
def test_mamba_blocks_compiled_path_equals_the_pure_pytorch_path(block, shape, monkeypatch, threads):
    # (3, 75, 20): d_inner 40 = two full lane blocks and a partial one, 75 tokens = 3 chunks (the last partial),
    # 3 batch rows split over 2 threads mid-row
    torch.manual_seed(0)
    module = block(shape[2], d_state=4).double()
    x = torch.randn(*shape, dtype=torch.float64)
    fast = _module_grads(module, x, "compiled", monkeypatch)
    slow = _module_grads(module, x, "torch", monkeypatch)
    for what, a, b in zip(["output", "inference output", "input gradient"], fast[:3], slow[:3]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=what)
    assert fast[3].keys() == slow[3].keys()
    for name in fast[3]:
        torch.testing.assert_close(fast[3][name], slow[3][name], atol=1e-10, rtol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("torch_threads", [1, 2, 4])
def test_bimamba_runs_its_directions_side_by_side_with_the_same_results(torch_threads, monkeypatch):
    # with >= 2 torch threads the two directions run at once, one in a helper thread, with half of the threads
    # each (at 4, each direction's kernels split over 2 more threads), forward and backward; with 1, both run in
    # the calling thread; the batch goes a few sequences at a time. Values and gradients stay those of the
    # pure-PyTorch path; torch's thread count is kept.
    torch.manual_seed(0)
    block = BiMamba(20, d_state=4).double()
    x = torch.randn(3, 75, 20, dtype=torch.float64)
    slow = _module_grads(block, x, "torch", monkeypatch)
    callers = []
    real_forward, real_backward = mamba_cpu._forward, mamba_cpu._backward

    def forward(*args, **kwargs):
        callers.append(("forward", threading.get_ident(), torch.get_num_threads()))
        return real_forward(*args, **kwargs)

    def backward(*args, **kwargs):
        callers.append(("backward", threading.get_ident(), torch.get_num_threads()))
        return real_backward(*args, **kwargs)

    monkeypatch.setattr(mamba_cpu, "_forward", forward)
    monkeypatch.setattr(mamba_cpu, "_backward", backward)
    monkeypatch.setattr(mamba_cpu, "CHUNK_TOKENS", 2 * 75)  # the batch of 3 in 2 parts: 2 sequences, then 1
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        fast = _module_grads(block, x, "compiled", monkeypatch)
        assert torch.get_num_threads() == torch_threads
    finally:
        torch.set_num_threads(before)
    for what, a, b in zip(["output", "inference output", "input gradient"], fast[:3], slow[:3]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=what)
    for name in slow[3]:
        torch.testing.assert_close(fast[3][name], slow[3][name], atol=1e-10, rtol=1e-10, msg=f"gradient of {name}")
    assert [c[0] for c in callers] == ["forward"] * 4 + ["backward"] * 4 + ["forward"] * 4  # train, then infer
    for pair in (callers[i:i + 2] for i in range(0, 12, 2)):
        idents = {ident for _, ident, _ in pair}
        if torch_threads == 1:
            assert idents == {threading.get_ident()} and {n for *_, n in pair} == {1}
        else:
            assert len(idents) == 2 and threading.get_ident() in idents
            assert {n for *_, n in pair} == {torch_threads // 2}


def test_bimamba_directions_run_one_after_the_other_without_per_thread_thread_counts(monkeypatch, threads):
    # torch's native thread pool (not OpenMP) has one thread count per process: no halving in two threads there
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "compiled")
    monkeypatch.setattr(mamba_cpu, "_threads_per_caller", lambda: False)
    callers = []
    real_forward = mamba_cpu._forward
    monkeypatch.setattr(mamba_cpu, "_forward", lambda *a: callers.append(threading.get_ident()) or real_forward(*a))
    torch.manual_seed(0)
    block, x = BiMamba(16, d_state=4), torch.randn(2, 40, 16)
    y = block(x)
    assert callers == [threading.get_ident()] * 2 and torch.get_num_threads() == 2
    monkeypatch.undo()
    torch.testing.assert_close(y, block(x))
    assert mamba_cpu._threads_per_caller()  # this torch: OpenMP


def test_bimamba_inference_keeps_no_scan_states_and_a_failing_direction_raises(monkeypatch, threads):
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "compiled")
    block = BiMamba(16, d_state=4)
    x = torch.randn(2, 40, 16)
    kept = []
    real_scan = scan_cpu.scan_forward
    monkeypatch.setattr(scan_cpu, "scan_forward", lambda *a, keep_states, **k: kept.append(keep_states) or
                        real_scan(*a, keep_states=keep_states, **k))
    with torch.no_grad():
        block(x)
    block(x)
    assert kept == [False, False, True, True]

    def broken(hidden, params, sizes, keep):
        raise RuntimeError("direction failed")

    monkeypatch.setattr(mamba_cpu, "_forward", broken)
    with pytest.raises(RuntimeError, match="direction failed"):
        block(x)
    assert torch.get_num_threads() == 2


def test_tcab_float32_training_step_matches_the_pure_pytorch_path(monkeypatch, threads):
    torch.manual_seed(0)
    tcab = TCAB(pixel_size=32, num_frames=3, d_model=16, depth=2, patch=8, d_state=4)
    pixels = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    outs = {}
    for scan in ("compiled", "torch"):
        monkeypatch.setenv(mamba_mod.SCAN_ENV, scan)
        tcab.zero_grad()
        y = tcab(pixels)
        y.square().sum().backward()
        outs[scan] = (y.detach(), {n: p.grad.clone() for n, p in tcab.named_parameters()})
    torch.testing.assert_close(outs["compiled"][0], outs["torch"][0], atol=1e-5, rtol=1e-5)
    for name, g in outs["compiled"][1].items():
        torch.testing.assert_close(g, outs["torch"][1][name], atol=1e-4, rtol=1e-4, msg=f"gradient of {name}")


def test_tcab_trains_under_cpu_autocast_with_its_mamba_layers_in_float32(monkeypatch):
    # a user's torch.autocast("cpu", bfloat16): the kernels take float32/float64 only, so each Mamba layer (and
    # the patch embedding) runs whole in float32 there, giving exactly its float32 output
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "compiled")
    torch.manual_seed(0)
    layer = Mamba(16, d_state=4)
    x = torch.randn(2, 40, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32 and torch.equal(y, layer(x))
    tcab = TCAB(pixel_size=32, num_frames=3, d_model=16, depth=1, patch=8, d_state=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tcab(torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8))
    out.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tcab.parameters())


def test_state_dict_round_trip_between_the_scan_paths(monkeypatch, tmp_path):
    torch.manual_seed(0)
    source = BiMamba(16, d_state=4)
    x = torch.randn(2, 13, 16)
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "torch")
    with torch.no_grad():
        expected = source(x)
    torch.save(source.state_dict(), tmp_path / "block.pt")
    torch.manual_seed(1)
    target = BiMamba(16, d_state=4)
    target.load_state_dict(torch.load(tmp_path / "block.pt", weights_only=True), strict=True)
    assert target.state_dict().keys() == source.state_dict().keys()
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "compiled")
    with torch.no_grad():
        torch.testing.assert_close(target(x), expected, atol=1e-5, rtol=1e-5)


def test_scan_choice_and_fallback(monkeypatch, caplog):
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "auto")
    assert mamba_mod.cpu_selective_scan(torch.float32, True) is scan_cpu.selective_scan_compiled
    assert mamba_mod.cpu_selective_scan(torch.bfloat16, True) is mamba_mod.selective_scan_parallel
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "torch")
    assert mamba_mod.cpu_selective_scan(torch.float32, True) is mamba_mod.selective_scan_parallel
    assert mamba_mod.cpu_selective_scan(torch.float32, False) is mamba_mod.selective_scan_inference
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "fast")
    with pytest.raises(ValueError, match="DIFFVQA_MAMBA_SCAN='fast' is not one of auto, compiled, torch"):
        mamba_mod.cpu_selective_scan(torch.float32, True)
    # no compiler: auto falls back to the pure-PyTorch scans with one warning, compiled says why
    monkeypatch.setattr(scan_cpu, "_library", lambda: "no C compiler found")
    scan_cpu._warn_once.cache_clear()
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "auto")
    with caplog.at_level(logging.WARNING):
        assert mamba_mod.cpu_selective_scan(torch.float32, True) is mamba_mod.selective_scan_parallel
        assert mamba_mod.cpu_selective_scan(torch.float32, False) is mamba_mod.selective_scan_inference
    assert [r.getMessage() for r in caplog.records].count(
        "Mamba scan on the CPU: no C compiler found; using the slower pure-PyTorch scan") == 1
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "compiled")
    with pytest.raises(RuntimeError, match="no C compiler found"):
        mamba_mod.cpu_selective_scan(torch.float32, True)
    scan_cpu._warn_once.cache_clear()


def test_kernel_is_built_once_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFVQA_KERNEL_CACHE", str(tmp_path / "kernels"))
    scan_cpu._library.cache_clear()
    try:
        assert scan_cpu.available()
        (built,) = (tmp_path / "kernels").glob("selective_scan-*.so")
        stamp = built.stat().st_mtime_ns
        scan_cpu._library.cache_clear()
        assert scan_cpu.available()
        assert built.stat().st_mtime_ns == stamp and len(list((tmp_path / "kernels").iterdir())) == 1
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        monkeypatch.setenv("DIFFVQA_KERNEL_CACHE", str(tmp_path / "other"))
        scan_cpu._library.cache_clear()
        assert not scan_cpu.available() and "failed" in scan_cpu._library()
    finally:
        scan_cpu._library.cache_clear()
        scan_cpu._warn_once.cache_clear()


@pytest.mark.parametrize("k", [1, 3, 4])
def test_cpu_causal_conv_equals_the_conv1d_layer(k):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, kernel_size=k, groups=6, padding=k - 1, bias=True).double()
    x = torch.randn(2, 6, 17, dtype=torch.float64, requires_grad=True)
    y_ref = conv(x)[..., :17]
    y = mamba_mod.causal_depthwise_conv1d(x, conv.weight, conv.bias)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    w = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * w).sum(), [x, conv.weight, conv.bias])
    g = torch.autograd.grad((y * w).sum(), [x, conv.weight, conv.bias])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fused_causal_conv_silu_equals_the_conv1d_layer_and_keeps_only_its_input(k):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, kernel_size=k, groups=6, padding=k - 1, bias=True).double()
    x = torch.randn(2, 6, 17, dtype=torch.float64, requires_grad=True)
    y_ref = torch.nn.functional.silu(conv(x)[..., :17])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = mamba_mod.causal_conv_silu(x, conv.weight, conv.bias)
    assert [t.data_ptr() for t in saved if t.dim() == 3 and t.shape[0] == 2] == [x.data_ptr()]
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    w = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * w).sum(), [x, conv.weight, conv.bias])
    g = torch.autograd.grad((y * w).sum(), [x, conv.weight, conv.bias])
    for name, a, b in zip(["x", "weight", "bias"], g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=f"gradient wrt {name}")
    assert torch.autograd.gradcheck(mamba_mod.causal_conv_silu, (x[:1, :2, :7].detach().requires_grad_(True),
                                                                 conv.weight[:2].detach().requires_grad_(True),
                                                                 conv.bias[:2].detach().requires_grad_(True)))


def test_cpu_training_keeps_few_activations_per_layer(monkeypatch):
    # pure-PyTorch training: Mamba.forward = a checkpoint of _forward (same output and gradients), which keeps
    # the layer's input only; on the compiled kernels: the input, x before and after the conv, the gate z, x_proj's
    # small outputs and the scan's chunk states (no dt, scan, gate or output-projection activations)
    torch.manual_seed(0)
    layer = Mamba(16, d_state=4).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64, requires_grad=True)
    params = {p.data_ptr() for p in layer.parameters()}
    monkeypatch.setenv(mamba_mod.SCAN_ENV, "torch")
    grads = []
    for fn in (layer, layer._forward):
        y = fn(x)
        grads.append((y.detach(), *torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    compiled = [(2, 21, 32)] * 3 + [(2, 21, 1), (2, 21, 4), (2, 21, 4), (2, 1, 4, 32)]  # x_pre, z, x, dt_low, B, C
    for scan, extra in (("torch", []), ("compiled", compiled)):
        monkeypatch.setenv(mamba_mod.SCAN_ENV, scan)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            layer(x)
        activations = [t for t in saved if t.data_ptr() not in params]
        assert activations[0].data_ptr() == x.data_ptr(), scan
        assert [tuple(t.shape) for t in activations[1:]] == extra, scan


def test_compiled_scan_works_in_a_forked_child_after_the_parent_used_it(threads):
    import multiprocessing

    inputs = _scan_inputs(2, 4, 4, 9, torch.float64)
    expected = scan_cpu.selective_scan_compiled(**inputs)  # the parent's thread pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_scan_in_child, (inputs,)).get(timeout=60)
    torch.testing.assert_close(got, expected)


def _scan_in_child(inputs):
    torch.set_num_threads(2)
    return scan_cpu.selective_scan_compiled(**inputs)
