"""Score new videos end to end with a run's recorded extraction settings (no cache needed).

The run's models (one per split) form an ensemble; each maps its raw output to the training MOS scale,
and the score is their mean. The same video gives the same score every time (seeded views and noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffvqa_cache.data import LoadSpec, VideoTable, video_tensors
from diffvqa_cache.datasets import VideoRecord, safe_key
from diffvqa_cache.devices import resolve_device
from diffvqa_cache.errors import CacheError, UserInputError
from diffvqa_cache.fitting import RunConfig, load_run_models
from diffvqa_cache.progress import bar, err
from diffvqa_cache.training import TrainConfig, predict_raw

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".3gp", ".yuv"}


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to the video files below them (sorted)."""
    out = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES and q.is_file())
            if not found:
                raise UserInputError(f"{p}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserInputError(f"{p}: no such file or folder")
    return out


def run_predict(paths: list[Path], run: Path, model: str | None = None, controller: str | None = None,
                device: str = "auto", batch_size: int = 8, progress: bool = True) -> list[dict]:
    """[{video, path, score} or {video, path, error}] for every input video."""
    from diffvqa_cache.backbone import identify
    from diffvqa_cache.config import CacheConfig
    from diffvqa_cache.extraction import ViewEncoder, decode_views

    run_cfg = RunConfig.read(run)
    # 1. the extraction settings the run was trained on; the model files must be the same ones
    recorded = run_cfg.cache
    cfg = recorded.extract.replace(device=device, batch_size=batch_size, model=model or recorded.extract.model,
                                   controller=controller or recorded.extract.controller)
    cfg.check_features_follow_input()
    config = CacheConfig.create(cfg, identify(cfg.model, cfg.controller, cfg.revision), recorded.dataset,
                                recorded.mos_range)
    if config.fingerprint != run_cfg.fingerprint:
        raise CacheError(f"--model {cfg.model} / --controller {cfg.controller} are not the weights run {run} was trained "
                         f"with ({recorded.model_id}, {recorded.controller_id}); pass those with --model/--controller")
    dev = resolve_device(device)
    models = load_run_models(run, run_cfg.fingerprint, dev)
    load_spec = LoadSpec.from_dict(models[0][1]["load_spec"])
    spec = models[0][1]["feature_spec"]
    encoder = ViewEncoder(config, dev)
    train_cfg = TrainConfig(device=str(dev))
    # 2. one video at a time: decode, features, ensemble score on the MOS scale
    results = []
    files = expand_inputs(paths)
    with bar("predict", len(files), progress) as pb:
        for path in files:
            key = safe_key(path.name)
            decoded = decode_views(VideoRecord(key, path, float("nan")), config.view_size, cfg.crops, cfg.seed,
                                   cfg.frames, cfg.fps, run_cfg.decoders or cfg.backend, cfg.noise)
            if decoded.error is not None:
                results.append({"video": key, "path": str(path), "error": decoded.error})
                err.print(f"[red]failed[/] {path}: {decoded.error}")
                pb.update(advance=1)
                continue
            wanted = run_cfg.decoders.get(decoded.codec)
            if wanted and wanted != decoded.decoder:
                err.print(f"[yellow]{path}: the run's cache decoded {decoded.codec} with {wanted}, which cannot decode it "
                          f"here; used {decoded.decoder} (pixels, hence scores, may differ slightly)[/]")
            feats = encoder.encode_stream([decoded])[0]
            table = VideoTable.of_video(key, video_tensors(feats, load_spec, spec["grid"], spec["num_frames"]))
            scores = [predict_raw(m, table, train_cfg, dev)[0] * meta["scale"][0] + meta["scale"][1]
                      for m, meta in models]
            results.append({"video": key, "path": str(path), "score": float(np.mean(scores)), "decoder": decoded.decoder})
            pb.update(advance=1)
    return results
