"""The real-weights path: a local diffusers SD folder (VAE, UNet, scheduler, CLIP text encoder, tokenizer)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffvqa_cache.cache.settings import ModelIdentity
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.backbone import build_tiny, identify, load_backbone


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny SD checkpoint laid out as StableDiffusionPipeline.save_pretrained writes it."""
    from diffvqa_cache.synthetic import save_sd_folder

    vae, unet, _ = build_tiny()
    return save_sd_folder(tmp_path_factory.mktemp("sd"), vae, unet, dict(hidden_size=32, intermediate_size=37,
                          num_hidden_layers=1, num_attention_heads=4), max_length=8)


def test_local_folder_loads_with_its_empty_prompt_embedding(sd_folder):
    bb = load_backbone(str(sd_folder))
    assert not bb.is_tiny and bb.native_size == 128 and bb.model_id.startswith("sd-")
    assert bb.null_text.shape == (1, 8, 32) and torch.isfinite(bb.null_text).all()
    assert identify(str(sd_folder), None) == ModelIdentity(bb.model_id, "zero-init", 128)


def test_real_folders_load_lean_and_quietly(sd_folder, capfd, monkeypatch):
    from diffusers import UNet2DConditionModel

    asked = []
    plain = UNet2DConditionModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        asked.append(kwargs.get("low_cpu_mem_usage"))
        return plain(cls, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", classmethod(spy))
    capfd.readouterr()
    load_backbone(str(sd_folder))
    printed = capfd.readouterr().err
    assert asked == [True]
    assert "accelerate" not in printed and "Loading weights" not in printed


def test_model_identity_follows_the_weights(sd_folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sd_folder, copy)
    assert identify(str(copy), None).model_id == identify(str(sd_folder), None).model_id  # content, not path
    weights = next((copy / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert identify(str(copy), None).model_id != identify(str(sd_folder), None).model_id


def test_extract_with_a_local_folder(sd_folder, sample_root, tiny_extract_config, tmp_path):
    from diffvqa_cache.cache.folder import FeatureCache
    from diffvqa_cache.datasets import load_dataset
    from pipelines.extract import run_extract

    cfg = dataclasses.replace(tiny_extract_config, model=str(sd_folder))
    result = run_extract(load_dataset("sample", None, limit=2), cfg, tmp_path, progress=False)
    assert FeatureCache(result.cache_dir).config.model_id.startswith("sd-") and len(FeatureCache(result.cache_dir)) == 2


@pytest.mark.parametrize("model, expected", [("no/such/folder/here", "no such folder"),
                                             ("plain-name", "not a hub id")])
def test_bad_model_names(model, expected):
    with pytest.raises(UserInputError, match=expected):
        identify(model, None)


def test_folder_without_unet_is_refused(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(UserInputError, match="not a diffusers Stable Diffusion folder"):
        identify(str(tmp_path), None)
