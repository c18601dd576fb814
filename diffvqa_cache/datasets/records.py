"""Plain records for a dataset's label file: one VideoRecord per usable row, plus a Dataset."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# Known video extensions only: LSVQ ids hold dots ('ia-batch3/...hotscore.net', '..._t_20.0').
VIDEO_EXT = re.compile(r"\.(mp4|mkv|mov|avi|webm|m4v|yuv|flv|wmv|mpg|mpeg|ts|3gp|mts)$", re.IGNORECASE)
_ODD = re.compile(r"[^A-Za-z0-9._-]")
_MAX_KEY = 180


def safe_key(raw: str) -> str:
    """A file-name-safe id: a video extension stripped, '/' and '\\' -> '__', other odd chars -> '_'.

    'yfcc-batch1/747' -> 'yfcc-batch1__747', 'Video/A001.mp4' -> 'Video__A001', 'my clip.mp4' -> 'my_clip'.
    Deterministic; different ids may still collide ('a b' and 'a_b'), the adapters report that.
    """
    text = str(raw).strip()
    while text.startswith(("./", ".\\")):
        text = text[2:]
    text = text.lstrip("/\\")
    text = VIDEO_EXT.sub("", text)
    text = re.sub(r"[/\\]+", "__", text)
    key = _ODD.sub("_", text)
    if key.startswith("."):  # no hidden names, no '.' or '..'
        key = "_" + key[1:]
    if not key:
        key = "_"
    if len(key) > _MAX_KEY:  # keep it a valid file name, still unique
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
        key = key[: _MAX_KEY - 13] + "-" + digest
    return key


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
        if len(self.records) < found:
            text += f", using the first {len(self.records)} (--limit)"
        return text


    def check(self, allow_problems: bool = False) -> None:
        """Refuse a label file with bad rows (duplicates, unreadable MOS) unless told to skip them."""
        if self.problems and not allow_problems:
            from ..errors import DatasetError

            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise DatasetError(f"{self.labels_file}: {self.problems[0]}{more}; fix the label file, or pass "
                               "--allow-problems to skip those rows")


def _short(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
