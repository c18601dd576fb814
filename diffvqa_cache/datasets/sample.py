"""The embedded sample dataset: procedural clips with graded distortions and MOS-like labels.

Generated deterministically (fixed seed, no download) on first use, written atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import DatasetError
from ..video import write_clip

VERSION = "sample-v2"
SEED = 20240601
N_FRAMES, FPS, WIDTH, HEIGHT = 16, 24, 160, 120
BASE_CRF = 18
CONTENTS = ("gradient", "checkerboard", "stripes", "shapes", "noise_texture", "plasma")
DISTORTIONS = ("blur", "noise", "compression", "dark_low_contrast")
STRENGTHS = (0.4, 0.7, 1.0)  # each distortion's strengths; every content also has one pristine clip
# how strongly each distortion lowers the MOS at full strength
SEVERITY = {"pristine": 0.0, "blur": 1.0, "noise": 0.9, "compression": 0.95, "dark_low_contrast": 0.8}
CONDITIONS = (("pristine", 0.0),) + tuple((d, s) for d in DISTORTIONS for s in STRENGTHS)
N_CLIPS = len(CONTENTS) * len(CONDITIONS)
STALE_SECONDS = 3600
X264_OPTIONS = {"preset": "veryfast", "threads": "1"}  # fast, and one thread keeps the bytes reproducible


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
    """``$DIFFVQA_CACHE_HOME/sample-v2`` (default ``~/.cache/diffvqa-cache/sample-v2``)."""
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
        crf = BASE_CRF + round(30 * strength) if distortion == "compression" else BASE_CRF
        specs.append(ClipSpec(
            index=i, video=f"videos/sample_{i:03d}.mp4", content=CONTENTS[c], distortion=distortion,
            strength=strength, crf=crf, mos=mos_for(distortion, strength, rng.uniform(-0.04, 0.04)),
        ))
    return specs


# --- content -----------------------------------------------------------------------------------


def _content(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Float frames (T, H, W, 3) in [0, 255] of a moving procedural pattern."""
    t = np.arange(N_FRAMES, dtype=np.float32)[:, None, None]
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    y, x = y[None], x[None]
    colour = rng.uniform(0.3, 1.0, 3)
    if kind == "gradient":
        vx, vy = rng.uniform(1.5, 4.0, 2)
        base = [np.sin((x + vx * t) / WIDTH * np.pi * 2 + p) for p in rng.uniform(0, 2 * np.pi, 3)]
        chans = [0.5 + 0.5 * b * np.cos((y + vy * t) / HEIGHT * np.pi) for b in base]
    elif kind == "checkerboard":
        size = int(rng.integers(8, 20))
        vx, vy = rng.uniform(-3, 3, 2)
        board = ((np.floor((x + vx * t) / size) + np.floor((y + vy * t) / size)) % 2).astype(np.float32)
        chans = [0.15 + 0.7 * board * c for c in colour]
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 24)
        wave = np.sin(((x * np.cos(angle) + y * np.sin(angle)) + 2.5 * t) / period * 2 * np.pi)
        chans = [0.5 + 0.4 * wave * c for c in colour]
    elif kind == "shapes":
        img = np.broadcast_to(0.25 + 0.3 * y / HEIGHT, (N_FRAMES, HEIGHT, WIDTH))
        chans = [img * c for c in colour]
        for _ in range(4):
            cx, cy = rng.uniform(20, WIDTH - 20), rng.uniform(20, HEIGHT - 20)
            vx, vy = rng.uniform(-4, 4, 2)
            r, col = rng.uniform(8, 22), rng.uniform(0, 1, 3)
            px, py = cx + vx * t, cy + vy * t
            mask = (np.abs(x - px) < r) & (np.abs(y - py) < r) if rng.random() < 0.5 \
                else (x - px) ** 2 + (y - py) ** 2 < r ** 2
            chans = [np.where(mask, col[k], chans[k]) for k in range(3)]
    elif kind == "noise_texture":
        field = gaussian_filter(rng.normal(size=(3, HEIGHT * 2, WIDTH * 2)), sigma=(0, 4, 4))
        field = 0.5 + field / (6 * field.std())
        vx, vy = rng.integers(1, 4, 2)
        chans = [np.stack([field[k, vy * i:vy * i + HEIGHT, vx * i:vx * i + WIDTH] for i in range(N_FRAMES)])
                 for k in range(3)]
    elif kind == "plasma":
        f1, f2, f3 = rng.uniform(0.03, 0.09, 3)
        v = (np.sin(x * f1 + 0.3 * t) + np.sin(y * f2 - 0.2 * t)
             + np.sin((x + y) * f3 + 0.25 * t) + np.sin(np.hypot(x - WIDTH / 2, y - HEIGHT / 2) * f1 - 0.4 * t))
        chans = [0.5 + 0.5 * np.sin(v * np.pi / 2 + p) for p in rng.uniform(0, 2 * np.pi, 3)]
    else:
        raise ValueError(f"unknown content {kind!r}")
    frames = np.stack([np.broadcast_to(c, (N_FRAMES, HEIGHT, WIDTH)) for c in chans], axis=-1)
    return (np.clip(frames, 0, 1) * 255.0).astype(np.float32)


# --- distortions -------------------------------------------------------------------------------


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(frames, sigma=(0, sigma, sigma, 0)) if sigma > 0 else frames


def _distort(frames: np.ndarray, distortion: str, s: float, rng: np.random.Generator) -> np.ndarray:
    """Apply a distortion at strength ``s`` (compression strength is the clip's crf)."""
    if distortion == "blur":
        frames = _blur(frames, 3.5 * s)
    elif distortion == "noise":
        frames = frames + rng.normal(0, 45 * s, frames.shape).astype(np.float32)
    elif distortion == "dark_low_contrast":
        mean = frames.mean()
        frames = (mean + (frames - mean) * (1 - 0.75 * s)) * (1 - 0.55 * s)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def clip_frames(spec: ClipSpec) -> np.ndarray:
    """Uint8 RGB frames (T, H, W, 3) of one clip before encoding (deterministic per clip).

    A content is the same scene in every clip that shows it; only the distortion differs."""
    frames = _content(spec.content, np.random.default_rng([SEED, CONTENTS.index(spec.content)]))
    return _distort(frames, spec.distortion, spec.strength, np.random.default_rng([SEED, 1000 + spec.index]))


# --- writing -----------------------------------------------------------------------------------


README = """\
diffvqa-cache sample dataset ({version})

{n} procedural clips ({frames} frames, {fps} fps, {w}x{h}, H.264 in MP4) generated by
diffvqa_cache.datasets.sample from seed {seed}; nothing was downloaded. Contents: {contents}.
Content-balanced: every content appears once pristine (crf {crf}) and once per distortion
({distortions}) at each strength {levels}; the same content is the same scene in all its clips.
labels.csv (video,mos) holds a synthetic MOS in [1, 5]:
  mos = 1 + 3.6 * (1 - min(1, severity * strength)) ** 1.2 + jitter,  jitter ~ U(-0.04, 0.04)
It exists to exercise the pipeline end to end; its scores say nothing about real video quality.
distortions.csv lists each clip's content, distortion, strength and crf.
"""


def _write(folder: Path, specs: list[ClipSpec]) -> None:
    (folder / "videos").mkdir()
    for spec in specs:
        write_clip(folder / spec.video, clip_frames(spec), fps=FPS, codec="libx264", crf=spec.crf,
                   codec_options=X264_OPTIONS)
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


def _remove_stale(root: Path) -> None:
    """Delete leftovers of killed generations (older than an hour, so a running one is spared)."""
    for old in root.parent.glob(f"{root.name}.*.incomplete"):
        try:
            if time.time() - old.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


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
    _remove_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.", suffix=".incomplete", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        _write(tmp, plan(n_clips))
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(root):  # another process finished first
            return root
        raise
    return root
