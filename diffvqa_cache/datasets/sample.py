"""The embedded sample dataset: procedural clips with graded distortions and MOS-like labels.

Generated deterministically (fixed seed, no download) on first use, written atomically.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from diffvqa_cache.clip_writer import write_clip
from diffvqa_cache.errors import DatasetError
from diffvqa_cache.files import atomic_path, remove_leftovers

VERSION = "sample-v3"
SEED = 20240601
N_FRAMES, FPS, WIDTH, HEIGHT = 16, 24, 160, 120
BASE_CRF = 18
# seeded instances of one rich scene type (multi-scale texture + moving sharp-edged shapes), varied by
# seed and colour palette, so contents share image statistics and distortions dominate the differences
N_CONTENTS = 6
CONTENTS = tuple(f"scene_{i}" for i in range(N_CONTENTS))
# every distortion removes detail and/or contrast, so all push the same feature directions as MOS falls
DISTORTIONS = ("blur", "noise", "compression", "downscale", "dark_low_contrast")
STRENGTHS = (0.35, 0.7, 1.0)  # each distortion's strengths; every content also has one pristine clip
# how strongly each distortion lowers the MOS at full strength
SEVERITY = {"pristine": 0.0, "blur": 1.0, "noise": 0.9, "compression": 0.95, "downscale": 0.95,
            "dark_low_contrast": 0.85}
CONDITIONS = (("pristine", 0.0),) + tuple((d, s) for d in DISTORTIONS for s in STRENGTHS)
N_CLIPS = len(CONTENTS) * len(CONDITIONS)
X264_OPTIONS = {"preset": "veryfast", "threads": "1"}  # fast, and one thread (reproducible bytes where x264 allows)


@dataclass(frozen=True)
class ClipSpec:
    """One sample clip: what it shows, how it is distorted, and its label."""

    index: int
    video: str  # relative path, e.g. videos/sample_000.mp4
    content: str
    distortion: str  # "pristine" or one of DISTORTIONS
    strength: float  # 0 (pristine) .. 1 (strongest)
    crf: int
    mos: float


def default_root() -> Path:
    """``$DIFFVQA_CACHE_HOME/sample-v3`` (default ``~/.cache/diffvqa-cache/sample-v3``)."""
    home = os.environ.get("DIFFVQA_CACHE_HOME") or Path.home() / ".cache" / "diffvqa-cache"
    return Path(home).expanduser() / VERSION


def mos_for(distortion: str, strength: float, jitter: float = 0.0) -> float:
    """MOS-like label in [1, 5] that falls with distortion strength."""
    damage = min(1.0, SEVERITY[distortion] * strength)
    return float(np.clip(round(1.0 + 3.6 * (1.0 - damage) ** 1.2 + jitter, 3), 1.0, 5.0))


def plan(n_clips: int = N_CLIPS) -> list[ClipSpec]:
    """The clip list, content-balanced: every content under every condition (pristine, each distortion at
    each strength). Clips cycle through the contents, so any run of len(CONTENTS) clips shows each once."""
    rng = np.random.default_rng(SEED)
    specs = []
    for i in range(n_clips):
        c, k = i % len(CONTENTS), (i // len(CONTENTS)) % len(CONDITIONS)
        distortion, strength = CONDITIONS[k]
        crf = BASE_CRF + round(CRF_RANGE * strength) if distortion == "compression" else BASE_CRF
        specs.append(ClipSpec(
            index=i, video=f"videos/sample_{i:03d}.mp4", content=CONTENTS[c], distortion=distortion,
            strength=strength, crf=crf, mos=mos_for(distortion, strength, rng.uniform(-0.04, 0.04)),
        ))
    return specs


CRF_RANGE = 33  # compression at full strength: crf 51


# --- content -----------------------------------------------------------------------------------


def _content(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Float frames (T, H, W, 3) in [0, 255]: a panning multi-scale texture mapped through a random colour
    palette, with moving sharp-edged shapes on top."""
    if kind not in CONTENTS:
        raise ValueError(f"unknown content {kind!r}")
    pad = 3 * N_FRAMES + 8
    h, w = HEIGHT + pad, WIDTH + pad
    field = np.zeros((h, w), np.float32)
    for sigma, amp in ((0.8, 0.6), (1.6, 0.8), (3.0, 1.0), (6.0, 1.0), (12.0, 1.0)):  # detail at all scales
        octave = gaussian_filter(rng.normal(size=(h, w)), sigma)
        field += amp * octave / octave.std()
    field = (field - field.mean()) / field.std()
    # palette: a smooth map from the texture value to colour, distinct per content
    stops = rng.uniform(0.05, 0.95, (4, 3))
    stops[0] *= 0.4
    stops[-1] = 0.6 + 0.4 * stops[-1]
    u = np.clip(0.5 + field / 5, 0, 1) * (len(stops) - 1)
    lo = np.floor(u).clip(0, len(stops) - 2).astype(int)
    frac = (u - lo)[..., None]
    tex = stops[lo] * (1 - frac) + stops[lo + 1] * frac  # (h, w, 3)
    vx, vy = rng.integers(1, 4, 2)
    frames = np.stack([tex[vy * i:vy * i + HEIGHT, vx * i:vx * i + WIDTH] for i in range(N_FRAMES)])
    t = np.arange(N_FRAMES, dtype=np.float32)[:, None, None]
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    for _ in range(5):
        cx, cy = rng.uniform(15, WIDTH - 15), rng.uniform(15, HEIGHT - 15)
        vx, vy = rng.uniform(-3, 3, 2)
        r, col = rng.uniform(6, 16), rng.uniform(0, 1, 3)
        px, py = cx + vx * t, cy + vy * t
        mask = (np.abs(x - px) < r) & (np.abs(y - py) < r) if rng.random() < 0.5 \
            else (x - px) ** 2 + (y - py) ** 2 < r ** 2
        frames = np.where(mask[..., None], col, frames)
    return (np.clip(frames, 0, 1) * 255.0).astype(np.float32)


# --- distortions -------------------------------------------------------------------------------


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(frames, sigma=(0, sigma, sigma, 0)) if sigma > 0 else frames


def _downscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Box-downscale by ``factor`` and upscale back (nearest): blocky, detail-poor."""
    if factor <= 1:
        return frames
    t, h, w, c = frames.shape
    hh, ww = h // factor * factor, w // factor * factor
    small = frames[:, :hh, :ww].reshape(t, hh // factor, factor, ww // factor, factor, c).mean(axis=(2, 4))
    big = np.repeat(np.repeat(small, factor, axis=1), factor, axis=2)
    out = frames.copy()
    out[:, :hh, :ww] = big
    return out


def _distort(frames: np.ndarray, distortion: str, s: float, rng: np.random.Generator) -> np.ndarray:
    """Apply a distortion at strength ``s`` (compression strength is the clip's crf)."""
    if distortion == "blur":
        frames = _blur(frames, 4.0 * s)
    elif distortion == "noise":  # grain on a softened frame: detail is lost as noise is added
        frames = _blur(frames, 2.5 * s)
        frames = frames + rng.normal(0, 20 * s, frames.shape).astype(np.float32)
    elif distortion == "downscale":
        frames = _downscale(frames, 1 + round(7 * s))
    elif distortion == "dark_low_contrast":
        mean = frames.mean()
        frames = (mean + (frames - mean) * (1 - 0.75 * s)) * (1 - 0.55 * s)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _scene(content: str) -> np.ndarray:
    frames = _content(content, np.random.default_rng([SEED, CONTENTS.index(content)]))
    frames.flags.writeable = False
    return frames


def clip_frames(spec: ClipSpec) -> np.ndarray:
    """Uint8 RGB frames (T, H, W, 3) of one clip before encoding (deterministic per clip).

    A content is the same scene in every clip that shows it; only the distortion differs."""
    frames = _scene(spec.content)
    return _distort(frames, spec.distortion, spec.strength, np.random.default_rng([SEED, 1000 + spec.index]))


# --- writing -----------------------------------------------------------------------------------


README = """\
diffvqa-cache sample dataset ({version})

{n} procedural clips ({frames} frames, {fps} fps, {w}x{h}, H.264 in MP4) generated by
diffvqa_cache.datasets.sample from seed {seed}; nothing was downloaded. The frames and labels are
the same on every machine; the encoded bytes are too wherever the H.264 encoder is reproducible
(libx264 as bundled with some PyAV releases can differ slightly between runs). Contents: {contents}.
Content-balanced: every content appears once pristine (crf {crf}) and once per distortion
({distortions}) at each strength {levels}; the same content is the same scene in all its clips.
labels.csv (video,mos) holds a synthetic MOS in [1, 5]:
  mos = 1 + 3.6 * (1 - min(1, severity * strength)) ** 1.2 + jitter,  jitter ~ U(-0.04, 0.04)
It exists to exercise the pipeline end to end; its scores say nothing about real video quality.
distortions.csv lists each clip's content, distortion, strength and crf.
"""


def _write(folder: Path, specs: list[ClipSpec]) -> None:
    (folder / "videos").mkdir()
    try:
        for spec in sorted(specs, key=lambda s: (CONTENTS.index(s.content), s.index)):  # each scene made once
            write_clip(folder / spec.video, clip_frames(spec), fps=FPS, codec="libx264", crf=spec.crf,
                       codec_options=X264_OPTIONS)
    finally:
        _scene.cache_clear()
    (folder / "distortions.csv").write_text(
        "video,content,distortion,strength,crf,mos\n"
        + "".join(f"{s.video},{s.content},{s.distortion},{s.strength:.2f},{s.crf},{s.mos:.3f}\n" for s in specs))
    (folder / "README.txt").write_text(README.format(
        version=VERSION, n=len(specs), frames=N_FRAMES, fps=FPS, w=WIDTH, h=HEIGHT, seed=SEED,
        contents=", ".join(CONTENTS), distortions=", ".join(DISTORTIONS),
        levels=", ".join(f"{v:.2f}" for v in STRENGTHS), crf=BASE_CRF))
    # labels.csv last: its presence marks a complete dataset
    (folder / "labels.csv").write_text("video,mos\n" + "".join(f"{s.video},{s.mos:.3f}\n" for s in specs))


def _is_complete(root: Path) -> bool:
    return (root / "labels.csv").is_file()


def ensure_sample(root: Path | None = None, n_clips: int = N_CLIPS) -> Path:
    """Return the sample dataset folder, generating it on first use (atomically, via a temp dir + rename)."""
    root = Path(root).expanduser() if root is not None else default_root()
    root = Path(os.path.abspath(root))
    if _is_complete(root):
        return root
    if root.exists():
        if not root.is_dir() or any(root.iterdir()):
            raise DatasetError(f"{root} exists but is not a complete sample dataset; delete it and run again")
        root.rmdir()
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root.parent, recursive=False)  # of killed generations
    try:
        with atomic_path(root) as tmp:
            tmp.mkdir()
            _write(tmp, plan(n_clips))
    except OSError:
        if _is_complete(root):  # another process finished first
            return root
        raise
    return root
