import pytest
import torch

from diffvqa_cache.training.regressor import tcab as tcab_mod
from diffvqa_cache.training.regressor.dff import DFF
from diffvqa_cache.training.regressor.fff import FFF
from diffvqa_cache.training.regressor.head import Head
from diffvqa_cache.training.regressor.tcab import TCAB
from diffvqa_cache.training.regressor.tdm import TDM


@pytest.mark.parametrize("use_attention", [True, False])
def test_dff_shape_and_grads(spec, view_factory, check_grads, use_attention):
    dff = DFF(spec["ms_channels"], (0, 1, 2, 3), 4, spec["grid"], channels=16, use_attention=use_attention)
    view = view_factory(batch=2, frames=3)
    out = dff(view.latent, view.ms)
    assert out.shape == (2, 3, 16, spec["grid"], spec["grid"])
    out.square().mean().backward()
    check_grads(dff)


def test_dff_resizes_a_level_off_the_grid_and_level_subsets(spec, view_factory):
    view = view_factory(batch=1, frames=2)
    ms = (*view.ms[:2], torch.randn(1, 2, 16, 2, 2), torch.randn(1, 2, 8, 8, 8))  # coarser and finer than grid 4
    dff = DFF(spec["ms_channels"], (1, 2, 3), 4, spec["grid"], channels=8, use_latent=False)
    assert dff(None, ms).shape == (1, 2, 8, 4, 4)
    latent_only = DFF(spec["ms_channels"], (), 4, spec["grid"], channels=8)
    assert latent_only(view.latent, ()).shape == (1, 2, 8, 4, 4)


def test_tdm_concat_and_first_frame_zero():
    x = torch.randn(2, 4, 3, 5, 5)
    tdm = TDM(enabled=True)
    out = tdm(x)
    assert out.shape == (2, 4, 6, 5, 5) and tdm.out_channels(3) == 6
    torch.testing.assert_close(out[:, :, :3], x)
    assert out[:, 0, 3:].abs().sum() == 0
    torch.testing.assert_close(out[:, 2, 3:], x[:, 2] - x[:, 1])
    off = TDM(enabled=False)
    assert off(x) is x and off.out_channels(3) == 3


@pytest.mark.parametrize("frames", [1, 5])
def test_fff_shape_and_grads(check_grads, frames):
    fff = FFF(in_channels=12, conv_channels=8, dim=20)
    out = fff(torch.randn(2, frames, 12, 4, 4))
    assert out.shape == (2, frames, 20)
    out.square().sum().backward()
    check_grads(fff)


def test_fff_mixes_neighbouring_frames():
    fff = FFF(in_channels=4, conv_channels=8, dim=8).eval()
    x = torch.randn(1, 5, 4, 4, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(fff(x)[0, 2].sum(), x)
    assert grad[0, 1].abs().sum() > 0 and grad[0, 3].abs().sum() > 0 and grad[0, 0].abs().sum() == 0


@pytest.mark.parametrize("frames", [1, 3, 6])
def test_tcab_shape_and_grads(view_factory, check_grads, frames):
    tcab = TCAB(pixel_size=32, num_frames=3, d_model=16, depth=2, patch=16, d_state=4)
    out = tcab(view_factory(batch=2, frames=frames).pixels)
    assert out.shape == (2, frames, 16)
    out.square().sum().backward()
    check_grads(tcab)


def test_tcab_patch_embedding_is_the_conv_of_imagenet_normalised_frames(monkeypatch):
    # the CPU path folds the normalisation into the conv and works EMBED_CHUNK frames at a time, keeping only the
    # uint8 frames for backward: same tokens and weight/bias gradients as nn.Conv2d on (x / 255 - mean) / std
    monkeypatch.setattr(tcab_mod, "EMBED_CHUNK", 4)  # 10 frames: chunks of 4, 4, 2
    torch.manual_seed(0)
    tcab = TCAB(pixel_size=32, num_frames=5, d_model=8, depth=1, patch=16, d_state=4).double()
    pixels = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    weight, bias = tcab._folded()
    tokens = tcab_mod._PatchEmbed.apply(pixels, weight, bias, 16)
    frames = (pixels.double() / 255 - tcab.mean) / tcab.std
    expected = tcab.patch_embed(frames)
    torch.testing.assert_close(tokens, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(expected)
    params = [tcab.patch_embed.weight, tcab.patch_embed.bias]
    got, want = (torch.autograd.grad((t * g).sum(), params) for t in (tokens, expected))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_tcab_frame_features_see_other_frames(view_factory):
    tcab = TCAB(pixel_size=32, num_frames=3, d_model=16, depth=1, patch=16, d_state=4)
    pixels = view_factory(batch=1, frames=3).pixels
    base = tcab(pixels)
    changed = pixels.clone()
    changed[0, 2] = 255 - changed[0, 2]
    assert not torch.allclose(tcab(changed)[0, 0], base[0, 0])  # frame 0 sees frame 2 (bidirectional)


def test_head_weights_sum_to_one_and_single_branch_is_uniform(check_grads):
    head = Head(quality_dim=10, weight_dim=6, hidden=8)
    out = head(torch.randn(3, 5, 10), torch.randn(3, 5, 6))
    torch.testing.assert_close(out["frame_weight"].sum(dim=1), torch.ones(3))
    torch.testing.assert_close(out["score"], (out["frame_weight"] * out["frame_quality"]).sum(dim=1))
    out["score"].sum().backward()
    check_grads(head)
    single = Head(quality_dim=10, weight_dim=None, hidden=8)
    out = single(torch.randn(3, 5, 10))
    torch.testing.assert_close(out["frame_weight"], torch.full((3, 5), 0.2))
    torch.testing.assert_close(out["score"], out["frame_quality"].mean(dim=1))
