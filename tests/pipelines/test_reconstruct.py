"""`reconstruct`: the picture and metrics of what stage one sees, before and after adaptation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.extraction.adaptation import psnr, ssim
from diffvqa_cache.extraction.settings import AdaptConfig
from pipelines.reconstruct import run_reconstruct


@pytest.fixture(scope="module")
def clip(sample_root):
    return load_dataset("sample", None, limit=1)


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    noisy = np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
    assert psnr(x, x) == float("inf") and ssim(x, x) == pytest.approx(1.0)
    assert 20 < psnr(x, noisy) < 25  # sigma 20 noise: about 22 dB
    less = np.clip(x + rng.normal(0, 5, x.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim(x, noisy) < ssim(x, less) < 1 and ssim(x, 255 - x) < 0
    # flat images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = np.full((32, 32), 100.0), np.full((32, 32), 120.0), (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_png_and_json(clip, tmp_path):
    rec = clip.records[0]
    res = run_reconstruct(rec.path, tmp_path / "r" / "recon.png", frames=2, steps=2, key=rec.key, device="cpu",
                          strength=0.5)
    img = np.asarray(Image.open(res.png))
    assert img.shape == (2 * 128, 3 * 128, 3)  # one row per frame: view | reconstruction | error
    report = json.loads((tmp_path / "r" / "recon.json").read_text())
    assert [f["frame_index"] for f in report["frames"]] == [4, 12]
    for f in report["frames"] + [report["mean"]]:
        assert np.isfinite(f["psnr"]) and -1 <= f["ssim"] <= 1 and f["latent_mse"] >= 0
    assert report["controller_id"] == "zero-init" and "PSNR" in res.summary()


def test_reconstruction_is_what_extract_cached(clip, tiny_extract_config, tmp_path):
    """Same views, seeds and chain as stage one: the reconstructed latent is the cached S/latent."""
    import dataclasses

    from diffvqa_cache.cache.folder import FeatureCache
    from pipelines.extract import run_extract

    cfg = dataclasses.replace(tiny_extract_config, frames=1, steps=2, crops=1)
    cache = FeatureCache(run_extract(clip, cfg, tmp_path / "cache", progress=False).cache_dir)
    rec = clip.records[0]
    res = run_reconstruct(rec.path, tmp_path / "recon.png", frames=1, steps=2, key=rec.key, device="cpu",
                          strength=cfg.strength)
    # equal up to float noise: extract batches the S view with its crop, which may change the last fp16 bit
    np.testing.assert_allclose(res.latents.float().numpy(), cache.read(rec.key).branches["S"].latent[:, 0].astype(np.float32),
                               rtol=1e-2, atol=1e-3)


def test_adaptation_improves_the_reconstruction(clip, tmp_path):
    """The tiny VAE is random, so pixel PSNR is pinned near its own ceiling (~10 dB, vae_psnr) whatever
    the chain does; the chain's own error, z0_hat against z0, is what adaptation must lower."""
    from diffusers import ControlNetModel

    from diffvqa_cache.extraction.backbone import load_backbone
    from pipelines.adapt import run_adapt

    rec = clip.records[0]
    zero = tmp_path / "zero-init"  # plain SD: what adaptation starts from
    ControlNetModel.from_unet(load_backbone("tiny").unet, conditioning_channels=4,
                              conditioning_embedding_out_channels=(16,)).save_pretrained(zero)
    before = run_reconstruct(rec.path, tmp_path / "before.png", steps=4, key=rec.key, controller=str(zero),
                             device="cpu").report
    cfg = AdaptConfig(frames=2, batch_size=2, lr=5e-3, warmup=0, max_steps=60, save_every=0, device="cpu")
    run_adapt(clip, cfg, tmp_path / "ctrl", progress=False)
    after = run_reconstruct(rec.path, tmp_path / "after.png", steps=4, key=rec.key, controller=str(tmp_path / "ctrl"),
                            device="cpu").report
    assert after["controller_id"].startswith("ctrl-")
    assert after["mean"]["latent_mse"] < 0.7 * before["mean"]["latent_mse"], (before["mean"], after["mean"])
    assert after["mean"]["vae_psnr"] == before["mean"]["vae_psnr"]


def test_cli_reconstruct(clip, tmp_path):
    from cli import app

    out = tmp_path / "recon.png"
    res = CliRunner().invoke(app, ["reconstruct", str(clip.records[0].path), "--steps", "1", "--frames", "2",
                                   "--strength", "0.5", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.stdout and out.is_file() and out.with_suffix(".json").is_file()
    res = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "nope.mp4"), "--strength", "0.5", "--out", str(out)])
    assert res.exit_code != 0 and "does not exist" in res.output
    res = CliRunner().invoke(app, ["reconstruct", str(clip.records[0].path), "--out", str(out)])
    assert res.exit_code == 2 and "same diffusion features" in res.output  # no Controller, chain from pure noise


CHAIN = dict(frames=1, steps=2, crops=1, noise="per-video", timestep_spacing="trailing", latent="chain")


def test_cache_settings_reproduce_its_latents(clip, sample_cache, tmp_path):
    """--cache: a cache's spacing, latent and noise settings (not reconstruct's defaults) and its key."""
    from diffvqa_cache.cache.folder import FeatureCache

    cache = FeatureCache(sample_cache(limit=1, **CHAIN).cache_dir)
    rec = clip.records[0]
    cached = cache.read(rec.key).branches["S"].latent[:, 0].astype(np.float32)
    res = run_reconstruct(rec.path, tmp_path / "recon.png", cache=cache.path, device="cpu")
    np.testing.assert_allclose(res.latents.float().numpy(), cached, rtol=1e-2, atol=1e-3)
    assert {k: res.report[k] for k in ("key", "noise", "timestep_spacing", "latent", "steps", "strength")} == \
        {"key": rec.key, "noise": "per-video", "timestep_spacing": "trailing", "latent": "chain", "steps": 2,
         "strength": 0.5}
    # the same by options alone; reconstruct's own defaults give other latents
    same = run_reconstruct(rec.path, tmp_path / "same.png", key=rec.key, device="cpu", strength=0.5, **CHAIN)
    np.testing.assert_allclose(same.latents.float().numpy(), cached, rtol=1e-2, atol=1e-3)
    other = run_reconstruct(rec.path, tmp_path / "other.png", key=rec.key, device="cpu", strength=0.5, steps=2)
    assert not np.allclose(other.latents.float().numpy(), cached, rtol=1e-2, atol=1e-3)


def test_cli_cache_options_change_the_caches_settings(clip, sample_cache, tmp_path):
    from cli import app

    cache_dir = sample_cache(limit=1, **CHAIN).cache_dir
    out = tmp_path / "recon.png"
    res = CliRunner().invoke(app, ["reconstruct", str(clip.records[0].path), "--cache", str(cache_dir.parents[1]),
                                   "--steps", "1", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert (report["steps"], report["noise"], report["timestep_spacing"], report["key"]) == \
        (1, "per-video", "trailing", clip.records[0].key)
    res = CliRunner().invoke(app, ["reconstruct", str(clip.records[0].path), "--noise", "per-vid", "--strength", "0.5",
                                   "--out", str(out)])
    assert res.exit_code == 2 and "per-video" in res.output  # a wrong value: one line naming the choices
