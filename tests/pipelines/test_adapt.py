"""Stage zero with the tiny model: only the Controller learns, the loss falls, resume is exact, extract uses it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.adaptation import Adapter, list_checkpoints
from diffvqa_cache.extraction.backbone import load_backbone
from diffvqa_cache.extraction.settings import AdaptConfig
from pipelines.adapt import run_adapt

# one clip, 2 frames: 4 views (S + one crop each); a high lr so the tiny model's loss falls within 30 steps
CFG = dict(frames=2, batch_size=2, lr=5e-3, warmup=3, max_steps=30, save_every=10, keep_checkpoints=3, device="cpu")


@pytest.fixture(scope="module")
def clip(sample_root):
    return load_dataset("sample", None, limit=1)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, clip):
    out = tmp_path_factory.mktemp("adapt") / "ctrl"
    return run_adapt(clip, AdaptConfig(**CFG), out, progress=False), out


def test_only_the_controller_changes(clip):
    bb = load_backbone("tiny")
    frozen = {f"{m}.{k}": v.clone() for m in ("unet", "vae") for k, v in getattr(bb, m).state_dict().items()}
    ctrl0 = {k: v.clone() for k, v in bb.controller.state_dict().items()}
    trainer = Adapter(bb, torch.randn(4, 4, 16, 16) * 0.1, AdaptConfig(**CFG), torch.device("cpu"))
    for k in range(3):
        trainer.step(k)
    trainer.assert_only_controller_trains()
    after = {f"{m}.{k}": v for m in ("unet", "vae") for k, v in getattr(bb, m).state_dict().items()}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert any(not torch.equal(ctrl0[k], v) for k, v in bb.controller.state_dict().items())


def test_loss_falls_and_outputs_are_written(adapted):
    result, out = adapted
    losses = result.losses
    assert len(losses) == 30 and result.views == 4
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31)) and set(rows[0]) == {"step", "loss", "lr", "seconds"}
    assert rows[0]["lr"] == pytest.approx(5e-3 / 3) and rows[-1]["lr"] == pytest.approx(5e-3)
    meta = json.loads((out / "adapt_config.json").read_text())
    assert meta["steps"] == 30 and meta["dataset"] == "sample" and meta["final_loss"] == pytest.approx(losses[-1])
    assert meta["model_id"].startswith("tiny-") and meta["package_version"]
    assert (out / "loss.png").stat().st_size > 1000
    assert [p.name for p in list_checkpoints(out)] == ["step-00000010", "step-00000020", "step-00000030"]


def test_resume_repeats_the_uninterrupted_run(adapted, clip, tmp_path):
    result, out = adapted
    part = tmp_path / "ctrl"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "step-00000010", part / "checkpoints" / "step-00000010")
    shutil.copy(out / "loss.jsonl", part / "loss.jsonl")  # holds steps past 10: they must be dropped
    again = run_adapt(clip, AdaptConfig(**CFG), part, resume=True, progress=False)
    assert again.start_step == 10 and len(again.losses) == 20
    np.testing.assert_allclose(again.losses, result.losses[10:], rtol=1e-4, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (part / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))
    a, b = load_backbone("tiny", controller=str(out)), load_backbone("tiny", controller=str(part))
    for (k, va), vb in zip(a.controller.state_dict().items(), b.controller.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-6, msg=k)


def test_existing_checkpoints_need_resume_and_same_settings(adapted, clip):
    _, out = adapted
    with pytest.raises(UserInputError, match="--resume"):
        run_adapt(clip, AdaptConfig(**CFG), out, progress=False)
    with pytest.raises(UserInputError, match="settings differ"):
        run_adapt(clip, AdaptConfig(**{**CFG, "max_steps": 40, "lr": 1e-3}), out, resume=True, progress=False)


def test_extract_uses_the_adapted_controller(adapted, clip, tiny_extract_config, tmp_path):
    import dataclasses

    from pipelines.extract import run_extract

    _, out = adapted
    bb = load_backbone("tiny", controller=str(out))
    assert bb.controller_id.startswith("ctrl-")
    plain = run_extract(clip, tiny_extract_config, tmp_path, progress=False)
    ctrl_cfg = dataclasses.replace(tiny_extract_config, controller=str(out))
    with_ctrl = run_extract(clip, ctrl_cfg, tmp_path, progress=False)
    assert plain.fingerprint != with_ctrl.fingerprint
    config = json.loads((with_ctrl.cache_dir / "config.json").read_text())
    assert config["controller_id"] == bb.controller_id


def test_cli_adapt(sample_root, tmp_path):
    from cli import app

    out = tmp_path / "ctrl"
    args = ["adapt", "--dataset", "sample", "--limit", "1", "--frames", "1", "--max-steps", "2", "--batch-size", "2",
            "--grad-accum", "2", "--save-every", "1", "--out", str(out), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    res = CliRunner().invoke(app, args)  # checkpoints there, no --resume: one line, exit 2
    assert res.exit_code == 2 and "--resume" in res.output


def test_gradient_checkpointing_gives_the_same_step():
    latents = torch.randn(4, 4, 16, 16) * 0.1
    weights = []
    for gc in (False, True):
        bb = load_backbone("tiny")
        trainer = Adapter(bb, latents, AdaptConfig(**CFG, gradient_checkpointing=gc), torch.device("cpu"))
        loss, _ = trainer.step(0)
        weights.append((loss, torch.cat([p.detach().flatten() for p in bb.controller.parameters()])))
    assert weights[0][0] == pytest.approx(weights[1][0], rel=1e-5)
    torch.testing.assert_close(weights[0][1], weights[1][1], rtol=1e-4, atol=1e-6)


def test_adaptation_never_sees_the_test_videos_of_an_official_split(clip):
    from dataclasses import replace

    from pipelines.adapt import pick_records

    records = [replace(clip.records[0], key=f"v{i}", split=s) for i, s in enumerate(["train", "test", "train",
                                                                                      "test1080p"])]
    lsvq = replace(clip, name="lsvq", records=records)
    assert [r.key for r in pick_records(lsvq, None, 0, "auto")] == ["v0", "v2"]
    assert [r.key for r in pick_records(lsvq, None, 0, "all")] == ["v0", "v1", "v2", "v3"]
    assert pick_records(clip, None, 0, "auto") == clip.records  # no official split: label-free, all of it
    with pytest.raises(UserInputError, match="no official train split"):
        pick_records(clip, None, 0, "train")
