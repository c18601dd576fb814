"""Adaptation's run without the pipeline: where it starts, the loss log, checkpoints, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.adapt_loop import AdaptResult, read_log, start_point, train_controller
from diffvqa_cache.extraction.adaptation import Adapter, list_checkpoints
from diffvqa_cache.extraction.backbone import load_backbone
from diffvqa_cache.extraction.settings import AdaptConfig

CFG = AdaptConfig(batch_size=2, lr=5e-3, warmup=1, max_steps=4, save_every=2, keep_checkpoints=3, device="cpu")
LATENTS = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.1


def train(out, cfg=CFG, resume=False):
    checkpoint, state = start_point(out, cfg, resume)
    start = state["step"] if state else 0
    trainer = Adapter(load_backbone("tiny"), LATENTS, cfg, torch.device("cpu"))
    result = AdaptResult(out, start, start, views=len(LATENTS))
    rows, seconds = train_controller(trainer, cfg, out, result, checkpoint, state, progress=False)
    return result, rows, seconds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("loop") / "ctrl"
    return train(out), out


def test_the_loop_logs_every_step_and_checkpoints(trained):
    (result, rows, seconds), out = trained
    assert result.steps == 4 and len(result.losses) == 4 and seconds > 0
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["loss"] for r in rows] == result.losses
    assert read_log(out / "loss.jsonl", 4) == rows and [r["step"] for r in read_log(out / "loss.jsonl", 2)] == [1, 2]
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    assert json.loads((list_checkpoints(out)[-1] / "state.json").read_text())["step"] == 4


def test_resume_from_a_checkpoint_repeats_the_steps(trained, tmp_path):
    (result, _, _), out = trained
    part = tmp_path / "ctrl"
    train(part, CFG.replace(max_steps=2))
    again, rows, _ = train(part, resume=True)
    assert again.start_step == 2 and [r["step"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose(again.losses, result.losses[2:], rtol=1e-4, atol=1e-6)


def test_where_a_run_starts(trained, tmp_path):
    _, out = trained
    assert start_point(tmp_path / "new", CFG, resume=True) == (None, None) and (tmp_path / "new").is_dir()
    with pytest.raises(UserInputError, match="--resume"):
        start_point(out, CFG, resume=False)  # checkpoints there: only with --resume
    with pytest.raises(UserInputError, match="settings differ"):
        start_point(out, CFG.replace(lr=1e-3, max_steps=8), resume=True)
    with pytest.raises(UserInputError, match="already at step 4"):
        start_point(out, CFG, resume=True)
    checkpoint, state = start_point(out, CFG.replace(max_steps=8, device="auto"), resume=True)
    assert checkpoint.name == "step-00000004" and state["step"] == 4
