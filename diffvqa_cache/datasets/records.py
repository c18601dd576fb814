"""Plain records for a dataset's label file: one VideoRecord per usable row, plus a Dataset."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

# Known video extensions only: LSVQ ids hold dots ('ia-batch3/...hotscore.net', '..._t_20.0').
VIDEO_EXT = re.compile(r"\.(mp4|mkv|mov|avi|webm|m4v|yuv|flv|wmv|mpg|mpeg|ts|3gp|mts)$", re.IGNORECASE)
_ODD = re.compile(r"[^\w.-]")  # \w: letters and digits of every script, and '_'
_MAX_KEY = 180  # bytes of UTF-8


def safe_key(raw: str) -> str:
    """A file-name-safe id: a video extension stripped, '/' and '\\' -> '__', other characters that are no
    letter, digit, '.', '-' or '_' -> '_' (Unicode letters stay: 'vidéo_ü.mkv' -> 'vidéo_ü').

    'yfcc-batch1/747' -> 'yfcc-batch1__747', 'Video/A001.mp4' -> 'Video__A001', 'my clip.mp4' -> 'my_clip'.
    A name with no letter or digit ('😀.mp4') gets a short hash of itself. Deterministic; different ids
    may still collide ('a b' and 'a_b'): `unique_key` tells those apart.
    """
    text = unicodedata.normalize("NFC", str(raw).strip())  # 'ü' typed or as macOS stores it: one key
    while text.startswith(("./", ".\\")):
        text = text[2:]
    text = text.lstrip("/\\")
    text = VIDEO_EXT.sub("", text)
    text = re.sub(r"[/\\]+", "__", text)
    key = _ODD.sub("_", text)
    if key.startswith("."):  # no hidden names, no '.' or '..'
        key = "_" + key[1:]
    if text and not any(c.isalnum() for c in key):
        key = with_hash(key, text)
    if not key:
        key = "_"
    if len(key.encode("utf-8")) > _MAX_KEY:  # keep it a valid file name, still unique
        head = key.encode("utf-8")[: _MAX_KEY - 13].decode("utf-8", "ignore")
        key = head + "-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
    return key


def with_hash(key: str, raw: str) -> str:
    """`key` with a short hash of `raw`: tells apart ids that give the same key."""
    return f"{key}-{hashlib.sha1(str(raw).encode('utf-8')).hexdigest()[:8]}"


def unique_key(raw: str, taken, base: str | None = None) -> str:
    """safe_key of `raw` (or `base`), with a short hash of `raw` when another id in `taken` already has it."""
    key = safe_key(raw if base is None else base)
    return with_hash(key, raw) if key in taken else key


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video: a safe unique key, where the file is expected, its MOS and split."""

    key: str
    path: Path
    mos: float
    split: str = ""


@dataclass
class Dataset:
    """What a label file lists, split into usable records, missing videos and problems."""

    name: str
    root: Path
    labels_file: Path
    records: list[VideoRecord]
    missing: list[VideoRecord]
    problems: list[str]
    mos_range: tuple[float, float]
    listed: int = 0  # label rows read (valid or not)
    found: int = 0  # records on disk before --limit
    warnings: list[str] = field(default_factory=list)  # rows kept but suspect (negative MOS, outside the root)
    columns: tuple[str, str] | None = None  # the (video, MOS) columns read from the label file

    def describe_labels(self) -> str:
        """Which label file and columns were read, and the MOS range found among the usable videos."""
        text = f"labels: {self.labels_file}"
        if self.columns:
            text += f" (video column {self.columns[0]!r}, MOS column {self.columns[1]!r})"
        scores = [r.mos for r in self.records]
        if scores:
            text += f"; MOS {min(scores):g}-{max(scores):g} over {len(scores)} videos"
        return text

    def summary(self) -> str:
        """One short line: counts of listed, found, missing (first names) and problems."""
        found = max(self.found, len(self.records))
        listed = max(self.listed, found + len(self.missing))
        text = f"{self.name}: {listed} videos listed, {found} found, {len(self.missing)} missing"
        if self.missing:
            names = [_short(m.path, self.root) for m in self.missing[:3]]
            more = ", ..." if len(self.missing) > 3 else ""
            text += f" (first: {', '.join(names)}{more})"
        text += f", {len(self.problems)} problems"
        if self.warnings:
            text += f", {len(self.warnings)} warnings"
        if len(self.records) < found:
            text += f", using the first {len(self.records)} (--limit)"
        return text


    def check(self, allow_problems: bool = False) -> None:
        """Refuse a label file with bad rows (duplicates, unreadable MOS) unless told to skip them."""
        if self.problems and not allow_problems:
            from diffvqa_cache.errors import DatasetError

            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise DatasetError(f"{self.labels_file}: {self.problems[0]}{more}; fix the label file, or pass "
                               "--allow-problems to skip those rows")


def _short(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
