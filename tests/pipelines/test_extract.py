"""Stage one end to end with the tiny model: cache layout, fingerprint, resume, shards, failures."""

from __future__ import annotations

import dataclasses
import json
import shutil

import h5py
import numpy as np
import pytest

from diffvqa_cache.cache.folder import FeatureCache, verify_cache
from diffvqa_cache.cache.settings import fingerprint
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.files import file_sha256
from pipelines.extract import run_extract


@pytest.fixture(scope="module")
def sample4(sample_root):
    return load_dataset("sample", None, limit=4)


@pytest.fixture(scope="module")
def extracted(sample_cache):
    result = sample_cache(limit=4)
    return result, result.cache_dir.parents[1]


def shard_hashes(cache_dir):
    return {p.name: file_sha256(p) for p in sorted((cache_dir / "shards").glob("*.h5"))}


def test_cache_holds_every_video_frame_and_branch(extracted, tiny_extract_config):
    result, _ = extracted
    cache = FeatureCache(result.cache_dir)
    assert len(cache) == 4 and result.manifest["complete"] and not result.failed
    shapes = cache.info()["features"]
    # tiny model: latent 16x16, up-block maps 4,8,16,16 pooled to grid 4; D has 2 crops
    assert shapes["S/latent"]["shape"] == [1, 4, 16, 16] and shapes["S/latent"]["dtype"] == "float16"
    assert shapes["D/latent"]["shape"] == [2, 4, 16, 16]
    assert [shapes[f"S/ms{i}"]["shape"][-1] for i in range(4)] == [4, 4, 4, 4]
    assert shapes["D/pixels"] == {"shape": [2, 3, 32, 32], "dtype": "uint8"}
    assert shapes["D/crop_origin"]["shape"] == [2, 2]
    video = cache.read(cache.keys[1])
    assert video.frame_index.tolist() == [4, 12]  # 16-frame clips, 2 frames at segment centres
    assert np.isfinite(video.branches["D"].ms[0].astype(np.float32)).all()
    assert cache.labels[cache.keys[1]]["mos"] > 1.0
    # iterating shard by shard gives the same arrays as reading by id
    for video in cache.iter_videos():
        np.testing.assert_array_equal(video.branches["S"].ms[2], cache.read(video.key).branches["S"].ms[2])


def test_rerun_does_no_work(extracted, sample4, tiny_extract_config, monkeypatch):
    result, out = extracted
    import diffvqa_cache.extraction.shards as ex

    def no_model(*a, **k):
        raise AssertionError("a rerun must not load the model")

    monkeypatch.setattr(ex, "ViewEncoder", no_model)
    monkeypatch.setattr(ex, "worker_encoder", no_model)
    again = run_extract(sample4, tiny_extract_config, out, progress=False)
    assert again.shards_done == 0 and again.shards_skipped == 2 and again.cache_dir == result.cache_dir


def test_deleted_shard_recomputed_alone_bit_identical(extracted, sample4, tiny_extract_config, tmp_path):
    result, out = extracted
    before = shard_hashes(result.cache_dir)
    work = tmp_path / "copy"
    shutil.copytree(out, work)
    cache_dir = work / result.cache_dir.relative_to(out)
    (cache_dir / "shards" / "shard-00001.h5").unlink()
    assert verify_cache(cache_dir)[0] == ["shard-00001.h5: missing"]
    again = run_extract(sample4, tiny_extract_config, work, progress=False)
    assert again.shards_done == 1 and again.shards_skipped == 1
    assert shard_hashes(cache_dir) == before
    assert verify_cache(cache_dir)[0] == []


def test_verify_names_a_corrupted_shard(extracted, tmp_path):
    result, out = extracted
    work = tmp_path / "copy"
    shutil.copytree(result.cache_dir, work)
    shard = work / "shards" / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems, n = verify_cache(work)
    assert n == 2 and problems == ["shard-00000.h5: content does not match its checksum (damaged)"]


def test_fingerprint_tracks_numbers_not_placement(tiny_extract_config):
    base = fingerprint(tiny_extract_config, "m", "c", 128)
    same = [dataclasses.replace(tiny_extract_config, batch_size=1, shard_size=7, device="cpu", decode_workers=4)]
    differ = [dataclasses.replace(tiny_extract_config, **kw) for kw in
              ({"steps": 2}, {"grid": 8}, {"seed": 1}, {"crops": 1}, {"frames": 3}, {"sampler": "euler"})]
    assert all(fingerprint(c, "m", "c", 128) == base for c in same)
    assert len({fingerprint(c, "m", "c", 128) for c in differ} | {base}) == len(differ) + 1
    assert fingerprint(tiny_extract_config, "m2", "c", 128) != base
    assert fingerprint(tiny_extract_config, "m", "c2", 128) != base
    assert fingerprint(tiny_extract_config, "m", "c", 256) != base


def test_features_do_not_depend_on_batch_size(extracted, sample4, tiny_extract_config, tmp_path):
    result, _ = extracted
    other = run_extract(sample4, dataclasses.replace(tiny_extract_config, batch_size=1), tmp_path, progress=False)
    assert other.cache_dir.name == result.cache_dir.name
    a, b = FeatureCache(result.cache_dir), FeatureCache(other.cache_dir)
    for key in a.keys:
        for name, arr in a.read(key).flat().items():
            # equal up to one float16 step (the batch changes the order of float sums)
            np.testing.assert_allclose(arr.astype(np.float32), b.read(key).flat()[name].astype(np.float32), rtol=2e-3,
                                       atol=2e-3)


def test_job_array_parts_equal_one_run(extracted, sample4, tiny_extract_config, tmp_path):
    result, _ = extracted
    parts = [run_extract(sample4, tiny_extract_config, tmp_path, num_parts=2, part=i, progress=False)
             for i in (1, 0)]
    assert [p.shards_done for p in parts] == [1, 1]
    assert parts[0].manifest["complete"] is False and parts[1].manifest["complete"] is True
    assert shard_hashes(parts[1].cache_dir) == shard_hashes(result.cache_dir)


def test_zero_byte_video_reported_and_skipped(sample_root, tiny_extract_config, tmp_path):
    root = tmp_path / "ds"
    (root / "videos").mkdir(parents=True)
    for name in ("sample_000.mp4", "sample_001.mp4"):
        shutil.copy(sample_root / "videos" / name, root / "videos" / name)
    (root / "videos" / "broken.mp4").write_bytes(b"")
    (root / "labels.csv").write_text("video,mos\nvideos/sample_000.mp4,4.1\nvideos/broken.mp4,2.0\n"
                                     "videos/sample_001.mp4,3.0\n")
    index = load_dataset("csv", root)
    result = run_extract(index, dataclasses.replace(tiny_extract_config, shard_size=8), tmp_path / "out",
                         progress=False)
    assert result.videos == 2 and [f["video"] for f in result.failed] == ["videos__broken"]
    assert "broken.mp4" in result.failed[0]["reason"]
    info = FeatureCache(result.cache_dir).info()
    assert info["videos"] == 2 and info["failed"][0]["video"] == "videos__broken"
    with h5py.File(result.cache_dir / "shards" / "shard-00000.h5") as f:
        assert [k.decode() for k in f["keys"][:]] == ["videos__sample_000", "videos__sample_001"]


def test_config_saved_beside_the_cache(extracted, tiny_extract_config):
    result, _ = extracted
    cfg = json.loads((result.cache_dir / "config.json").read_text())
    assert cfg["fingerprint"] == result.cache_dir.name == result.fingerprint
    assert cfg["extract"]["steps"] == 1 and cfg["model_id"].startswith("tiny-") and cfg["controller_id"] == "zero-init"
    assert cfg["mos_range"] == [1.0, 5.0]


def test_same_pixels_same_features_whatever_the_file_is_called(sample_root, tiny_extract_config, tmp_path):
    """One clip under two names in one extraction: identical arrays (crops and noise follow the pixels).
    One video per batch, so both are computed in batches of the same shape. Another clip of the same size
    gets its crops at other places (crop seeds include the decoded pixels, issue 24)."""
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    for name in ("a/first.mp4", "747.mp4"):
        shutil.copy(sample_root / "videos" / "sample_003.mp4", root / name)
    shutil.copy(sample_root / "videos" / "sample_004.mp4", root / "other.mp4")
    (root / "labels.csv").write_text("video,mos\na/first.mp4,3.0\n747.mp4,3.0\nother.mp4,3.0\n")
    cfg = dataclasses.replace(tiny_extract_config, batch_size=6, shard_size=2)  # 2 frames x (S + 2 crops)
    cache = FeatureCache(run_extract(load_dataset("csv", root), cfg, tmp_path / "out", progress=False).cache_dir)
    a, b = cache.read("a__first").flat(), cache.read("747").flat()
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    other = cache.read("other").flat()
    assert other["D/crop_origin"].shape == a["D/crop_origin"].shape
    assert not np.array_equal(other["D/crop_origin"], a["D/crop_origin"])


def test_predict_recomputes_a_cached_video_bit_for_bit(sample_cache, tiny_extract_config, tmp_path):
    """predict's path (decode_views + ViewEncoder on a file under another name) gives the cached arrays."""
    import torch

    from diffvqa_cache.datasets import VideoRecord
    from diffvqa_cache.extraction.per_video import ViewEncoder, decode_views

    result = sample_cache(limit=2, batch_size=6)
    cache = FeatureCache(result.cache_dir)
    key = cache.keys[1]
    renamed = tmp_path / "my upload.mp4"
    shutil.copy(cache.labels[key]["path"], renamed)
    ex = cache.config.extract
    decoded = decode_views(VideoRecord("my_upload", renamed, float("nan")), cache.config.view_size, ex.crops, ex.seed,
                           ex.frames, ex.fps, cache.decoders(), ex.noise, ex.crop_placement, ex.small_frames)
    again = ViewEncoder(cache.config, torch.device("cpu")).encode_stream([decoded])[0].flat()
    cached = cache.read(key).flat()
    assert again.keys() == cached.keys() and all(np.array_equal(again[n], cached[n]) for n in cached)


def test_a_controller_that_ignores_the_input_stops_the_run(sample_root, tiny_extract_config, tmp_path):
    """A zero Controller with a chain from pure noise passes the settings check but gives every video the
    same features: the first videos show it and the run stops, naming the views."""
    from diffusers import ControlNetModel

    from diffvqa_cache.errors import DiffVQAError
    from diffvqa_cache.extraction.backbone import load_backbone

    zero = tmp_path / "zero"
    ControlNetModel.from_unet(load_backbone("tiny").unet, conditioning_channels=4,
                              conditioning_embedding_out_channels=(16,)).save_pretrained(zero)
    cfg = dataclasses.replace(tiny_extract_config, controller=str(zero), strength=1.0, timestep_spacing="trailing")
    expected = r"do not depend on the input: videos__sample_000 \(frame 0, view S\) and videos__sample_001"
    with pytest.raises(DiffVQAError, match=expected):
        run_extract(load_dataset("sample", None, limit=3), cfg, tmp_path / "out", progress=False)


@pytest.mark.parametrize("limit, noise", [(3, "per-video"), (1, "shared")])
def test_the_guard_holds_when_no_two_views_share_a_seed(sample_root, tiny_extract_config, tmp_path, limit, noise):
    """--noise per-video gives every view its own seed (and one video has no pair either): the first two
    different views are run once more with one seed, and a Controller that ignores the input is stopped
    before a shard is written."""
    from diffusers import ControlNetModel

    from diffvqa_cache.errors import DiffVQAError
    from diffvqa_cache.extraction.backbone import load_backbone

    zero = tmp_path / "zero"
    ControlNetModel.from_unet(load_backbone("tiny").unet, conditioning_channels=4,
                              conditioning_embedding_out_channels=(16,)).save_pretrained(zero)
    cfg = dataclasses.replace(tiny_extract_config, controller=str(zero), strength=1.0, timestep_spacing="trailing",
                              noise=noise)
    with pytest.raises(DiffVQAError, match=r"do not depend on the input: videos__sample_000 \(frame 0, view S\) and "
                                           r"videos__sample_000 \(frame 0, view D0\), run with one start-noise seed"):
        run_extract(load_dataset("sample", None, limit=limit), cfg, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").rglob("*.h5"))
    # an input-dependent chain passes the probe and is extracted as before
    fine = run_extract(load_dataset("sample", None, limit=2), dataclasses.replace(tiny_extract_config, noise=noise),
                       tmp_path / "fine", progress=False)
    assert fine.manifest["videos"] == 2


def test_a_plain_extract_computes_the_papers_features(sample_root, tmp_path):
    """extract's defaults are the paper preset (one source): 50 DDIM steps ending with the UNet call at t=0,
    F_Latent = z0_hat, 20 crops per frame, 8 frames; dtype auto is fp32 on the CPU and bf16 on CUDA."""
    import typer

    from cli import app
    from diffvqa_cache.cache.settings import EXTRACTOR_VERSION, PAPER_PRESET, SD21_BASE, ExtractConfig
    from pipelines.extract import prepare_cache

    options = {p.name: p.default for p in typer.main.get_command(app).commands["extract"].params}
    assert PAPER_PRESET["model"] == SD21_BASE
    for name, value in PAPER_PRESET.items():
        assert getattr(ExtractConfig(), name) == (value if name != "model" else "tiny")
        assert options[name] == getattr(ExtractConfig(), name)
    assert (PAPER_PRESET["crops"], PAPER_PRESET["steps"], PAPER_PRESET["latent"]) == (20, 50, "pred_x0")
    _, config = prepare_cache(load_dataset("sample", None, limit=1), ExtractConfig(), tmp_path, gpu=False)
    assert len(config.timesteps) == 50 and config.timesteps[0] == 999 and config.timesteps[-1] == 0
    assert config.extract.dtype == "fp32" and config.extractor_version == EXTRACTOR_VERSION == "4"
    _, on_gpu = prepare_cache(load_dataset("sample", None, limit=1), ExtractConfig(), tmp_path, gpu=True)
    assert on_gpu.extract.dtype == "bf16" and on_gpu.fingerprint != config.fingerprint


def test_records_the_decoder_and_the_chain(extracted):
    result, _ = extracted
    cache = FeatureCache(result.cache_dir)
    assert set(cache.decoders()) == {"h264"} and cache.decoders()["h264"] in ("decord", "pyav")
    # tiny settings: 1 step at strength 0.5 = the last of 2 linspace slots (999, 0)
    assert cache.config.timesteps == (0,)


@pytest.mark.parametrize("w, h", [(96, 54), (54, 96)])  # 640x360 and portrait 404x720 at a 64 px view
def test_small_frames_are_upscaled_and_aligned_crops_share_a_place(clip_factory, tiny_extract_config, tmp_path, w, h):
    """A frame smaller than the view is upscaled (short side to the view, aspect kept) before cropping: no
    black bars in the cached crops; with crop_placement=aligned every frame's crop k is at one place."""
    root = tmp_path / "ds"
    root.mkdir()
    shutil.copy(clip_factory(f"small_{w}x{h}", w=w, h=h), root / "small.mp4")
    (root / "labels.csv").write_text("video,mos\nsmall.mp4,3.0\n")
    cfg = tiny_extract_config.replace(view_size=64, pixel_size=64, frames=3, crop_placement="aligned")
    cache = FeatureCache(run_extract(load_dataset("csv", root), cfg, tmp_path / "out", progress=False).cache_dir)
    assert cache.config.extract.small_frames == "upscale" and cache.config.extract.crop_placement == "aligned"
    video = cache.read("small")
    crops = video.branches["D"].pixels  # (T, K, 3, 64, 64) uint8: the D views as the model saw them
    assert crops.shape[:2] == (3, 2) and (crops[:, :, 2] >= 8).all()  # blue: 128 or the marker (>= 20), never a bar
    origins = video.crop_origin
    assert (origins == origins[:1]).all() and not np.array_equal(origins[0, 0], origins[0, 1])
    long_side = round(64 * max(w, h) / min(w, h))
    assert origins[..., int(w > h)].max() <= long_side - 64 and (origins[..., int(w < h)] == 0).all()
