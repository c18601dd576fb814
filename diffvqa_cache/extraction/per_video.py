"""Stage one's per-video work, shared by extract, adapt and predict: decode a video and cut its views
(`decode_views`, `decode_ahead`), and run views of several videos through the adapted SD in shared
batches (`ViewEncoder`)."""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from diffvqa_cache.cache.branches import BranchFeatures
from diffvqa_cache.cache.folder import VideoFeatures
from diffvqa_cache.cache.settings import CacheConfig
from diffvqa_cache.errors import DiffVQAError
from diffvqa_cache.extraction.video import TooFewFrames, load_video_frames
from diffvqa_cache.extraction.views import make_views, resize_frames
from diffvqa_cache.progress import err
from diffvqa_cache.seeds import noise_seed


@dataclass
class DecodedVideo:
    """One video's sampled frames cut into views, or the reason it could not be."""

    key: str
    frame_index: np.ndarray | None  # (T,) indices into the decoded video
    views: dict | None  # "S" (T, size, size, 3), "D" (T, K, size, size, 3), "crop_origin" (T, K, 2)
    error: str | None = None
    decoder: str = ""  # "decord" or "pyav": which one produced the frames
    codec: str = ""  # the stream's codec ("h264", "vp9", ...)
    fps: float | None = None  # the video's frame rate (frame_index / fps = time in seconds)
    too_few_frames: int | None = None  # the video's frame count, when the sampling needs more
    frame_hw: tuple[int, int] | None = None  # decoded (upright) frame height and width


def decode_views(record, size: int, crops: int, seed: int, frames: int | None = 8, fps: float | None = None,
                 backend: str = "auto", noise: str = "shared", crop_placement: str = "independent",
                 small_frames: str = "upscale") -> DecodedVideo:
    """Decode one video's sampled frames and cut both views; a failure is returned, never raised.

    `backend` is "auto", "decord", "pyav", or a {codec: decoder} map (the decoders a cache used). Crop
    places are drawn from the decoded pixels (`views.crop_seeds`), so they follow the recorded decoder."""
    try:
        pixels, indices, info, used = load_video_frames(record.path, n_frames=frames, fps=fps, backend=backend)
        views = make_views(pixels, size, crops, seed, noise, record.key, crop_placement, small_frames)
        return DecodedVideo(record.key, indices, views, decoder=used, codec=info.codec, fps=info.fps,
                            frame_hw=pixels.shape[1:3])
    except TooFewFrames as exc:
        return DecodedVideo(record.key, None, None, str(exc), too_few_frames=exc.n_total)
    except DiffVQAError as exc:
        return DecodedVideo(record.key, None, None, str(exc))
    except Exception as exc:  # one bad video never stops the others
        return DecodedVideo(record.key, None, None, f"{record.path}: {type(exc).__name__}: {exc}")


def decode_ahead(pool: ThreadPoolExecutor, records: list, config: CacheConfig,
                 backend: str | dict | None = None) -> Iterator[DecodedVideo]:
    """Decoded videos in `records` order, keeping `decode_workers + 2` in flight ahead of the consumer
    (`backend`: instead of the config's, e.g. the {codec: decoder} map a run's cache used)."""
    cfg = config.extract
    backend = backend or cfg.backend

    def decode(record):
        return decode_views(record, config.view_size, cfg.crops, cfg.seed, cfg.frames, cfg.fps, backend, cfg.noise,
                            cfg.crop_placement, cfg.small_frames)

    ahead = deque(pool.submit(decode, r) for r in records[:cfg.decode_workers + 2])
    nxt = len(ahead)
    while ahead:
        item = ahead.popleft().result()
        if nxt < len(records):
            ahead.append(pool.submit(decode, records[nxt]))
            nxt += 1
        yield item


class ViewEncoder:
    """Model side of stage one: batches views across videos and returns each video's features."""

    def __init__(self, config: CacheConfig, device: torch.device):
        from diffvqa_cache.extraction.backbone import load_backbone
        from diffvqa_cache.extraction.features import FeatureExtractor

        cfg = config.extract
        bb = load_backbone(cfg.model, cfg.controller, cfg.revision)
        if (bb.model_id, bb.controller_id) != config.identity:
            raise DiffVQAError(f"the weights of --model {cfg.model} / --controller {cfg.controller} are not the ones "
                               f"the features were made with ({config.model_id}, {config.controller_id})")
        if bb.is_tiny:
            err.print("[yellow]--model tiny: a small random test model, for plumbing and tests only; "
                      "its features say nothing about quality[/]")
        self.fx = FeatureExtractor(bb, steps=cfg.steps, sampler=cfg.sampler, grid=cfg.grid, dtype=cfg.dtype,
                                   device=device, timestep_spacing=cfg.timestep_spacing, strength=cfg.strength,
                                   latent=cfg.latent, ms_pool=cfg.ms_pool)
        self.config, self.cfg = config, cfg
        self.guard = InputDependenceGuard(self.fx)

    def encode_stream(self, videos: Iterable[DecodedVideo], on_video=None) -> list[VideoFeatures]:
        """Consume decoded videos in order; views of consecutive videos share batches.

        Batches never cross the iterable's end (one shard), so a shard recomputed alone gives the same bytes.
        `on_video(n_frames)` is called as each video's features are complete.
        """
        cfg = self.cfg
        pending: list[tuple] = []  # (video position, branch, frame row, crop, image)
        meta: list[DecodedVideo] = []
        outs: dict[tuple, BranchFeatures] = {}
        last_job: list[int] = []  # running job count at which each video is complete
        done = n_jobs = 0
        for video in videos:
            # 1. queue every view of this video (S, then its K crops, frame by frame)
            v = len(meta)
            meta.append(video)
            for t in range(len(video.frame_index)):
                pending.append((v, "S", t, 0, video.views["S"][t]))
                pending += [(v, "D", t, k, video.views["D"][t, k]) for k in range(cfg.crops)]
            n_jobs += len(video.frame_index) * (1 + cfg.crops)
            last_job.append(n_jobs)
            # 2. run full batches as soon as there are enough views
            while len(pending) >= cfg.batch_size:
                self._run(pending[:cfg.batch_size], meta, outs)
                del pending[:cfg.batch_size]
                done = _report(done, last_job, n_jobs - len(pending), meta, on_video)
        if pending:
            self._run(pending, meta, outs)
            done = _report(done, last_job, n_jobs, meta, on_video)
        self.guard.probe()  # when no two views shared a seed so far (--noise per-video, a single video)
        # 3. assemble (T, K, ...) arrays per video
        result = []
        for v, video in enumerate(meta):
            branches = {}
            for b, n_views in (("S", 1), ("D", cfg.crops)):
                per_frame = [BranchFeatures.stack([outs[(v, b, t, k)] for k in range(n_views)], np.stack)
                             for t in range(len(video.frame_index))]
                branches[b] = BranchFeatures.stack(per_frame, np.stack)
            result.append(VideoFeatures(video.key, np.asarray(video.frame_index, dtype=np.int32), branches,
                                        video.views["crop_origin"], video.decoder, video.codec))
        return result

    def _run(self, batch: list[tuple], meta: list[DecodedVideo], outs: dict) -> None:
        """One model pass over a batch of views; each view's features go to `outs`."""
        cfg, size, pixel_size = self.cfg, self.config.view_size, self.config.pixel_size
        imgs = torch.from_numpy(np.stack([j[4] for j in batch]))
        seeds = [noise_seed(cfg.seed, cfg.noise, meta[v].key, t, b, k) for v, b, t, k, _ in batch]
        feats = self.fx(imgs, seeds)
        pix = resize_frames(imgs.numpy(), pixel_size) if pixel_size != size else imgs.numpy()
        for n, (v, b, t, k, image) in enumerate(batch):
            one = feats.map(lambda x: x[n].numpy())
            self.guard.check(seeds[n], image, one, f"{meta[v].key} (frame {t}, view {b}{k if b == 'D' else ''})")
            one.pixels = pix[n].transpose(2, 0, 1)
            outs[(v, b, t, k)] = one


class InputDependenceGuard:
    """Stops a run whose diffusion features do not follow the pixels (a zero-initialised, broken or
    mismatched Controller): two views with the same start-noise seed but different pixels must not get
    identical features. Watches the first views of a run; done after a few clean comparisons.

    With shared noise, views at the same (frame position, view, crop) of two videos share a seed; where no
    two views do (--noise per-video, or a single video), `probe` runs the run's first two views with
    different pixels once more, with one seed, before the stream's features are returned (a probe pair:
    2 extra views per process)."""

    def __init__(self, features=None, comparisons: int = 4, max_views: int = 512):
        self.features = features  # views, seeds -> BranchFeatures (the FeatureExtractor), for the probe
        self.seen: dict[int, tuple[bytes, bytes, str]] = {}
        self.left, self.max_views = comparisons, max_views
        self.compared = False  # a pair with one seed was compared (passively or by the probe)
        self.pair: list[tuple[bytes, np.ndarray, int, str]] = []  # the first two views with different pixels

    def check(self, seed: int, image: np.ndarray, features: BranchFeatures, name: str) -> None:
        if self.left <= 0 or self.max_views <= 0:
            return
        self.max_views -= 1
        pixels = _digest([image])
        if len(self.pair) < 2 and all(p[0] != pixels for p in self.pair):
            self.pair.append((pixels, np.array(image), seed, name))
        digest = _digest(features.parts())
        earlier = self.seen.setdefault(seed, (pixels, digest, name))
        if earlier[0] == pixels:
            return
        if earlier[1] == digest:
            raise _not_input_dependent(earlier[2], name)
        self.compared = True
        self.left -= 1

    def probe(self) -> None:
        """Run the first two different views with the first one's seed, once, if no pair was compared yet."""
        if self.compared or len(self.pair) < 2 or self.features is None:
            return
        (_, a, seed, name_a), (_, b, _, name_b) = self.pair
        both = self.features(torch.from_numpy(np.stack([a, b])), [seed, seed])
        one = [_digest(both.map(lambda x, n=n: x[n].numpy()).parts()) for n in (0, 1)]
        if one[0] == one[1]:
            raise _not_input_dependent(name_a, f"{name_b}, run with one start-noise seed,")
        self.compared = True


def _digest(parts) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.digest()


def _not_input_dependent(a: str, b: str) -> DiffVQAError:
    return DiffVQAError(f"the diffusion features do not depend on the input: {a} and {b} have different pixels "
                        "but identical features; the Controller is zero, broken or not made for this model: check "
                        "--controller (train one with `diffvqa-cache adapt`) or use --strength < 1")


def _report(done: int, last_job: list[int], finished_jobs: int, meta: list, on_video) -> int:
    while done < len(last_job) and last_job[done] <= finished_jobs:
        if on_video is not None:
            on_video(len(meta[done].frame_index))
        done += 1
    return done
