"""Per-view diffusion features on the tiny backbone: shapes, seeded noise, hooks, samplers."""

from __future__ import annotations

import pytest
import torch

from diffvqa_cache.extraction.backbone import load_backbone, sd_noise_schedule
from diffvqa_cache.extraction.features import FeatureExtractor, make_sampler


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


def views(n, seed=0):
    return torch.randint(0, 256, (n, 128, 128, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_shapes_and_dtypes(backbone):
    out = FeatureExtractor(backbone, steps=2, grid=4)(views(3), [1, 2, 3])
    assert out.latent.shape == (3, 4, 16, 16) and out.latent.dtype == torch.float16 and out.pixels is None
    assert [tuple(m.shape) for m in out.ms] == [(3, 64, 4, 4), (3, 32, 4, 4), (3, 32, 4, 4), (3, 16, 4, 4)]
    coarse = FeatureExtractor(backbone, steps=1, grid=8, timestep_spacing="trailing")(views(1), [1])
    assert [m.shape[-1] for m in coarse.ms] == [4, 8, 8, 8]  # the 4x4 level is kept, not upsampled


def test_seeded_noise_makes_features_independent_of_the_batch(backbone):
    fx = FeatureExtractor(backbone, steps=2, grid=4)
    v = views(4)
    together = fx(v, [10, 11, 12, 13])
    apart = [fx(v[i:i + 1], [10 + i]) for i in range(4)]
    torch.testing.assert_close(together.latent.float(), torch.cat([a.latent for a in apart]).float(), atol=2e-3, rtol=2e-3)
    other_seed = fx(v[:1], [99])
    assert not torch.equal(other_seed.latent, apart[0].latent)


def test_hooks_are_removed_after_each_call(backbone):
    FeatureExtractor(backbone, steps=1, grid=4, timestep_spacing="trailing")(views(1), [0])
    assert all(not blk._forward_hooks for blk in backbone.unet.up_blocks)


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler"])
def test_trailing_spacing_starts_few_step_chains_from_noise(name):
    for steps in (1, 2, 4):
        sampler = make_sampler(name, sd_noise_schedule(), "trailing")
        sampler.set_timesteps(steps)
        assert int(sampler.timesteps[0]) == 999
    leading = make_sampler("ddim", sd_noise_schedule(), "leading")
    leading.set_timesteps(1)
    assert int(leading.timesteps[0]) < 999


def test_f_latent_is_the_chain_output_or_the_predicted_clean_latent(backbone):
    v = views(2)
    chain = FeatureExtractor(backbone, steps=2, grid=4, latent="chain")(v, [1, 2])
    x0 = FeatureExtractor(backbone, steps=2, grid=4, latent="pred_x0")(v, [1, 2])
    assert not torch.equal(chain.latent, x0.latent)  # DDIM's last step does not land on its x0 prediction
    assert all(torch.equal(a, b) for a, b in zip(chain.ms, x0.ms))  # F_MS are the same taps


def test_chain_timesteps_where_f_ms_are_tapped():
    from diffvqa_cache.extraction.features import chain_timesteps

    schedule = sd_noise_schedule()
    assert [chain_timesteps("ddim", schedule, n, "trailing")[-1] for n in (1, 4, 50)] == [999, 249, 19]
    assert chain_timesteps("ddim", schedule, 4, "leading")[-1] == 1
    assert chain_timesteps("ddim", schedule, 2, "trailing", strength=0.5) == [499, 249]


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler"])
def test_pred_x0_works_for_every_sampler_even_with_one_step(backbone, name):
    """DPM-Solver's clean-latent prediction is taken before its first step(); a 1-step chain is such a step."""
    for steps in (1, 2):
        out = FeatureExtractor(backbone, steps=steps, grid=4, latent="pred_x0", sampler=name,
                               timestep_spacing="trailing")(views(1), [1])
        assert out.latent.shape == (1, 4, 16, 16) and torch.isfinite(out.latent.float()).all()


def test_the_default_chain_ends_with_its_unet_call_at_t0():
    """The authors take z0_hat and the denoising features "at time step t = 0": the default 50-step DDIM
    chain runs from t=999 to t=0; few-step ddim/euler chains end there too, dpm's grid at 1000/steps."""
    from diffvqa_cache.extraction.features import chain_timesteps

    schedule = sd_noise_schedule()
    default = chain_timesteps("ddim", schedule, 50)
    assert len(default) == 50 and default[0] == 999 and default[-1] == 0
    assert chain_timesteps("ddim", schedule, 4) == [999, 666, 333, 0]
    assert chain_timesteps("euler", schedule, 2)[-1] == 0 and chain_timesteps("dpm", schedule, 50)[-1] == 20
    assert chain_timesteps("ddim", schedule, 2, strength=0.5) == [333, 0]


def test_a_one_step_chain_from_noise_at_t0_is_refused():
    from diffvqa_cache.errors import UserInputError
    from diffvqa_cache.extraction.features import chain_timesteps

    with pytest.raises(UserInputError, match="t=0 on pure noise.*--timestep-spacing trailing"):
        chain_timesteps("ddim", sd_noise_schedule(), 1)
    assert chain_timesteps("ddim", sd_noise_schedule(), 1, strength=0.5) == [0]  # from the noised input: fine


def test_default_f_latent_is_z0_hat_of_the_call_at_t0(backbone):
    """F_Latent defaults to the clean latent predicted by the last UNet call (t=0), recomputed here from
    that call's input and noise prediction; the chain's own output differs from it."""
    calls = []

    def keep(module, args, kwargs, output):
        calls.append((args[0].detach().clone(), int(args[1]), output[0].detach().clone()))

    handle = backbone.unet.register_forward_hook(keep, with_kwargs=True)
    try:
        out = FeatureExtractor(backbone, steps=50, grid=4)(views(2), [3, 4])
    finally:
        handle.remove()
    assert len(calls) == 50
    z, t, eps = calls[-1]
    assert t == 0
    abar = torch.as_tensor(make_sampler("ddim", sd_noise_schedule()).alphas_cumprod[0], dtype=torch.float32)
    z0_hat = (z.float() - (1 - abar).sqrt() * eps.float()) / abar.sqrt()
    torch.testing.assert_close(out.latent.float(), z0_hat.half().float(), atol=2e-3, rtol=2e-3)
    chain = FeatureExtractor(backbone, steps=50, grid=4, latent="chain")(views(2), [3, 4])
    assert not torch.allclose(chain.latent.float(), out.latent.float(), atol=1e-3)
