"""Readers for the label files of KoNViD-1k, LIVE-VQC, YouTube-UGC, LSVQ and plain CSV / labels.txt.

Each dataset finds its label file in the root as its owners ship it (or takes --labels FILE), reads it
(CSV with a header, the peers' headerless labels.txt, MATLAB .mat, .xlsx) and checks that the videos
exist. Nothing here decodes video.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from diffvqa_cache.datasets.records import VIDEO_EXT, Dataset, VideoRecord, safe_key, unique_key
from diffvqa_cache.errors import DatasetError

DATASETS: tuple[str, ...] = ("kvd", "lvqc", "ytugc", "lsvq", "csv", "labels_txt", "sample")

GENERIC_VIDEO_COLUMNS = ("video", "path", "file", "filename", "name", "video_name", "vid", "video_list")
GENERIC_MOS_COLUMNS = ("mos", "score", "label", "quality", "dmos", "mos_full", "MOS full")

_YT_SUFFIX = "_crf_10_ss_00_t_20.0"
_KVD_OLD_SUFFIX = "_original_centercrop_960x540_8s"

# A row of a label file: (file name, row number as the user sees it, video field, raw MOS text, split).
Row = tuple[str, int, str, str, str]


@dataclass(frozen=True)
class _Spec:
    """How one dataset names its label files, columns and videos (paths as str: LSVQ has 39k rows)."""

    label_names: tuple[str, ...]  # tried in root, in order (first found wins)
    video_columns: tuple[str, ...]
    mos_columns: tuple[str, ...]
    mos_range: tuple[float, float] | None  # None: the observed min/max
    video_id: Callable[[str], str]  # label field -> dataset id (the key before safe_key)
    candidates: Callable[[str, str], list[str]]  # (root, id) -> where the video may be, most likely first


def _stem(field: str) -> str:
    """Basename without a video extension."""
    return VIDEO_EXT.sub("", re.split(r"[/\\]", field.strip())[-1])


def _kvd_id(field: str) -> str:
    stem = _stem(field)
    return stem[: -len(_KVD_OLD_SUFFIX)] if stem.endswith(_KVD_OLD_SUFFIX) else stem


def _kvd_paths(root: str, vid: str) -> list[str]:
    folders = (os.path.join(root, "KoNViD_1k_videos"), root)
    names = (f"{vid}.mp4", f"{vid}{_KVD_OLD_SUFFIX}.mp4")  # the old release's file names
    return [os.path.join(d, n) for n in names for d in folders]


def _lvqc_paths(root: str, vid: str) -> list[str]:
    other = vid[:-3] if vid.endswith("NEW") else vid + "NEW"  # label versions differ: 'A012' vs 'A012NEW'
    return [os.path.join(d, f"{v}.mp4") for v in (vid, other) for d in (os.path.join(root, "Video"), root)]


def _yt_id(field: str) -> str:
    stem = _stem(field)
    return stem[: -len(_YT_SUFFIX)] if stem.endswith(_YT_SUFFIX) else stem


def _yt_paths(root: str, vid: str) -> list[str]:
    folders = [root, os.path.join(root, "original_videos")]
    parts = re.match(r"([A-Za-z]+)_(\d+P)-", vid)  # 'Animation_1080P-01b3' -> Animation/1080P/
    if parts:
        cat, res = parts.groups()
        folders += [os.path.join(root, "original_videos", cat, res), os.path.join(root, cat, res),
                    os.path.join(root, cat)]
    names = (f"{vid}.mkv", f"{vid}.mp4", f"{vid}{_YT_SUFFIX}.mp4")
    return [os.path.join(d, n) for d in folders for n in names]


def _lsvq_id(field: str) -> str:
    """'yfcc-batch1/747' (CSV) or 'yfcc-batch1/747.mp4' (labels.txt); names may hold dots ('x.mov.mp4')."""
    name = field.strip().replace("\\", "/").lstrip("/")
    return name[:-4] if name.lower().endswith(".mp4") else name


def _lsvq_paths(root: str, name: str) -> list[str]:
    return [f"{root}{os.sep}{name}.mp4"]


def _generic_id(field: str) -> str:
    return field.strip()


def _generic_paths(root: str, field: str) -> list[str]:
    field = field.replace("\\", "/")
    if os.path.isabs(field):
        return [field]
    return [os.path.join(root, field), os.path.join(root, os.path.basename(field)),
            os.path.join(root, "videos", field)]


_SPECS: dict[str, _Spec] = {
    "kvd": _Spec(
        ("KoNViD_1k_mos.csv", "KoNViD_1k_metadata/KoNViD_1k_mos.csv", "KoNViD_1k_attributes.csv",
         "KoNViD_1k_metadata/KoNViD_1k_attributes.csv", "KONVID_1K_metadata.csv", "labels.txt"),
        ("flickr_id",), ("mos",), (1.0, 5.0), _kvd_id, _kvd_paths),
    "lvqc": _Spec(
        ("data.mat", "LIVE_VQC_metadata.csv", "labels.txt"),
        ("File", "video_list", "video", "filename"), ("mos",), (0.0, 100.0), _stem, _lvqc_paths),
    "ytugc": _Spec(
        ("original_videos_MOS_for_YouTube_UGC_dataset.xlsx", "original_videos/original_videos_MOS_for_YouTube_UGC_dataset.xlsx",
         "YOUTUBE_UGC_metadata.csv", "labels.txt"),
        ("vid",), ("MOS full", "mos"), (1.0, 5.0), _yt_id, _yt_paths),
    "lsvq": _Spec(
        ("labels_train_test.csv", "labels_test_1080p.csv", "labels.txt"),
        ("name",), ("mos",), (0.0, 100.0), _lsvq_id, _lsvq_paths),
    "csv": _Spec(
        ("labels.csv", "mos.csv", "labels.txt"),
        GENERIC_VIDEO_COLUMNS, GENERIC_MOS_COLUMNS, None, _generic_id, _generic_paths),
    "labels_txt": _Spec(
        ("labels.txt",), GENERIC_VIDEO_COLUMNS, GENERIC_MOS_COLUMNS, None, _generic_id, _generic_paths),
}


def load_dataset(name: str, root: Path | str | None, labels: Path | str | None = None, limit: int | None = None,
                 video_column: str | None = None, mos_column: str | None = None,
                 split_column: str | None = None) -> Dataset:
    """Read a dataset's labels and check which of its videos are on disk (no decoding).

    name: one of DATASETS; root: the dataset folder; labels: a label file to use instead of the one
    found in root; limit: keep the first N usable records; *_column: override the column names.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be at least 1 (got {limit})")
    if name == "sample":
        if labels is not None:
            raise DatasetError(f"--dataset sample uses its own labels, not {labels}; for your own videos pass "
                               f"--dataset csv --labels {labels}")
        from diffvqa_cache.datasets.sample import ensure_sample  # lazy: only the sample command needs it

        folder = ensure_sample(Path(root) if root is not None else None)
        dataset = load_dataset("csv", folder, folder / "labels.csv", limit, video_column, mos_column, split_column)
        dataset.name = "sample"
        dataset.mos_range = (1.0, 5.0)  # the sample's synthetic MOS scale
        return dataset

    spec = _SPECS[name]
    if root is None and labels is not None:  # --labels FILE alone: the videos are beside it
        root = Path(labels).expanduser().parent
    if root is None:
        raise DatasetError(f"dataset {name!r} needs its folder: pass --root DIR (or --labels FILE: its folder)")
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; check --root")

    files = [_given_labels(labels, root)] if labels is not None else _find_labels(name, spec, root)
    rows: list[Row] = []
    columns: tuple[str, str] | None = None
    for path in files:
        more, used = _read_rows(name, spec, path, video_column, mos_column, split_column)
        rows.extend(more)
        columns = columns or used
    dataset = _build(name, spec, root, files[0], rows, limit)
    dataset.columns = columns
    return dataset


def _given_labels(labels: Path | str, root: Path) -> Path:
    path = Path(labels).expanduser()
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        path = root / path
    if not path.is_file():
        raise DatasetError(f"label file {labels} not found; check --labels (a relative path is read from "
                           f"the current folder or from {root})")
    return Path(os.path.abspath(path))


LABEL_SUFFIXES = ("CSV", "TSV", "XLSX")


def label_candidates(root: Path) -> list[Path]:
    """The files in root that --dataset csv reads as its label file: any .csv, .tsv or .xlsx."""
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in (".csv", ".tsv", ".xlsx"))


def _find_labels(name: str, spec: _Spec, root: Path) -> list[Path]:
    found = [root / n for n in spec.label_names if (root / n).is_file()]
    if name == "lsvq":  # the official pair: train/test split plus the 1080p test set
        pair = [p for p in found if p.name in ("labels_train_test.csv", "labels_test_1080p.csv")]
        if pair:
            return pair
    if name == "csv" and not found:
        tables = label_candidates(root)
        if len(tables) == 1:
            return tables
        if len(tables) > 1:
            raise DatasetError(f"{len(tables)} possible label files in {root}: {', '.join(p.name for p in tables)}; "
                               f"pick one with --labels FILE")
        raise DatasetError(f"no label file in {root}: --dataset csv takes any one {'/'.join(LABEL_SUFFIXES)} file "
                           f"there with a video and a MOS column (or labels.txt: path,mos per line); pass --labels FILE")
    if not found:
        raise DatasetError(f"no label file for {name} in {root} (tried {', '.join(spec.label_names)}); "
                           f"pass --labels FILE")
    return found[:1]


# ---------------------------------------------------------------- reading label files

def _read_rows(name: str, spec: _Spec, path: Path, video_column: str | None, mos_column: str | None,
               split_column: str | None) -> tuple[list[Row], tuple[str, str]]:
    """All rows of one label file as (file name, row number, video field, raw MOS, split), and the
    (video, MOS) columns read."""
    kind = _detect_format(path)
    if kind in ("labels_txt", "path_mos"):
        if split_column:
            raise DatasetError(f"{path} is a headerless labels.txt file: it has no column {split_column!r}; "
                               f"drop --split-column")
        split = _split_from_filename(path) if name == "lsvq" else ""
        return list(_read_labels_txt(path, split)), ("first field", "last field")

    columns, table = _read_table(path, kind)
    vcol = _pick_column(columns, video_column, spec.video_columns)
    mcol = _pick_column(columns, mos_column, spec.mos_columns)
    if vcol is None or mcol is None:
        want = [video_column or "/".join(spec.video_columns), mos_column or "/".join(spec.mos_columns)]
        shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
        hint = "; use --video-column/--mos-column or --dataset csv" if name != "csv" else \
            "; name them with --video-column/--mos-column"
        raise DatasetError(f"label file {path} does not fit --dataset {name}: expected columns "
                           f"{' and '.join(want)}, found {shown or 'none'}{hint}")
    scol = None
    if split_column:
        scol = _pick_column(columns, split_column, ())
        if scol is None:
            raise DatasetError(f"label file {path} has no split column {split_column!r} (found {', '.join(columns)}); "
                               f"check --split-column")
    is_test = _pick_column(columns, None, ("is_test",)) if name == "lsvq" and scol is None else None
    default_split = _split_from_filename(path) if name == "lsvq" else ""

    vi, mi = columns.index(vcol), columns.index(mcol)
    si = columns.index(scol) if scol else None
    ti = columns.index(is_test) if is_test else None
    rows: list[Row] = []
    width = max(vi, mi, si or 0, ti or 0) + 1
    for number, values in table:
        if len(values) < width:
            values = list(values) + [""] * (width - len(values))
        if si is not None:
            split = values[si].strip()
        elif ti is not None:
            split = "test" if values[ti].strip().lower() in ("1", "1.0", "true", "yes") else "train"
        else:
            split = default_split
        rows.append((path.name, number, values[vi].strip(), values[mi], split))
    return rows, (vcol, mcol)


def _detect_format(path: Path) -> str:
    """'mat', 'xlsx', 'labels_txt' (path, duration, fps, mos), 'path_mos' (headerless), or 'csv'."""
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "mat"
    if suffix in (".xlsx", ".xlsm"):
        return "xlsx"
    if suffix == ".xls":
        raise DatasetError(f"{path} is an old .xls workbook; save it as .xlsx or .csv and pass that with --labels")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"MATLAB"):
        return "mat"
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"
    first = next((ln for ln in head.decode("utf-8-sig", "replace").splitlines() if ln.strip()), "")
    fields = [f.strip() for f in first.split(",")]
    if len(fields) == 4 and all(_is_number(f) for f in fields[1:]):
        return "labels_txt"
    if len(fields) == 2 and _is_number(fields[1]) and not _is_number(fields[0]):
        return "path_mos"
    return "csv"


def _read_labels_txt(path: Path, split: str) -> Iterator[Row]:
    """The peers' headerless format: `path, duration, fps, mos` (or `path, mos`) per line."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = [f.strip() for f in line.rstrip("\r\n").split(",")]
            yield path.name, number, fields[0], fields[-1] if len(fields) > 1 else "", split


def _read_table(path: Path, kind: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """(column names, rows as (row number, cell texts)) of a CSV, .xlsx or .mat label file."""
    if kind == "mat":
        return _read_mat(path)
    if kind == "xlsx":
        return _read_xlsx(path)
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        text = fh.read()
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    return header, ((n, r) for n, r in enumerate(reader, start=2) if "".join(r).strip())


def _read_xlsx(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad label file
        raise DatasetError(f"cannot read workbook {path} ({type(exc).__name__}: {exc}); pass a valid .xlsx or a .csv")
    sheet = book["MOS"] if "MOS" in book.sheetnames else book.worksheets[0]
    cells = [["" if v is None else _cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    book.close()
    header = [h.strip() for h in cells[0]] if cells else []
    return header, ((n, r) for n, r in enumerate(cells[1:], start=2) if "".join(r).strip())


def _cell_text(value: object) -> str:
    """Excel numbers as text; whole numbers without '.0' (ids)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _read_mat(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """A MATLAB v5 file as a table of its 1-D variables (LIVE-VQC data.mat: video_list, mos)."""
    import numpy as np
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise DatasetError(f"{path} is a MATLAB v7.3 file; re-save it with save('-v7') or export a CSV and "
                           f"pass it with --labels") from None
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); pass a valid .mat or a .csv")
    columns: dict[str, list[str]] = {}
    for key, value in data.items():
        if key.startswith("__") or not isinstance(value, np.ndarray) or value.ndim > 2 or 1 not in value.shape[:2]:
            continue
        columns[key] = [_mat_text(v) for v in value.reshape(-1)]
    names = list(columns)
    length = max((len(v) for v in columns.values()), default=0)
    rows = ([columns[c][i] if i < len(columns[c]) else "" for c in names] for i in range(length))
    return names, ((n, r) for n, r in enumerate(rows, start=1))


def _mat_text(value: object) -> str:
    import numpy as np

    while isinstance(value, np.ndarray):  # cells hold 1x1 arrays of strings
        if value.size == 0:
            return ""
        value = value.reshape(-1)[0]
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _pick_column(columns: list[str], override: str | None, candidates: tuple[str, ...]) -> str | None:
    """The column matching override (exact, then loosely) or the first of candidates, case-insensitively."""
    loose = {_norm(c): c for c in reversed(columns)}
    if override:
        return override if override in columns else loose.get(_norm(override))
    for cand in candidates:
        if _norm(cand) in loose:
            return loose[_norm(cand)]
    return None


def _norm(name: str) -> str:
    """'MOS full', 'MOSFull' and 'mos_full' all become 'mosfull'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _split_from_filename(path: Path) -> str:
    stem = path.name.lower()
    if "1080p" in stem:
        return "test1080p"
    if "test" in stem:
        return "test"
    if "train" in stem:
        return "train"
    return ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- building the Dataset

def _build(name: str, spec: _Spec, root: Path, labels_file: Path, rows: list[Row],
           limit: int | None) -> Dataset:
    """Sort rows into records (on disk), missing videos and problems (bad MOS, duplicated keys)."""
    records: list[VideoRecord] = []
    problems: list[str] = []
    missing: list[VideoRecord] = []
    warnings: list[str] = []
    seen: dict[str, tuple[str, str]] = {}  # key -> (raw id, 'file row N')
    exists = _FileCheck()
    for where, number, video, raw_mos, split in rows:
        if not video:
            problems.append(f"{where} row {number}: no video name, row skipped")
            continue
        mos = _parse_mos(raw_mos)
        if mos is None:
            problems.append(f"{where} row {number}: MOS {raw_mos.strip()!r} of {video} is not a number, row skipped")
            continue
        raw_id = spec.video_id(video)
        key = safe_key(raw_id)
        if key in seen and seen[key][0] != raw_id:  # 'a b' and 'a_b': the second gets a short hash
            key = unique_key(raw_id, seen)
        if key in seen:
            first_id, first_at = seen[key]
            what = f"duplicated id {raw_id!r}" if first_id == raw_id else \
                f"id {raw_id!r} gives the same key {key!r} as {first_id!r}"
            problems.append(f"{where} row {number}: {what} (first at {first_at}), kept the first; "
                            f"remove or rename one")
            continue
        seen[key] = (raw_id, f"{where} row {number}")
        paths = _candidates(name, spec, str(root), video, raw_id)
        found = next((p for p in paths if exists(p)), None)
        path = found or paths[0]
        if "/." in path or "//" in path:  # './videos/a.mp4' as written in the labels
            path = os.path.normpath(path)
        record = VideoRecord(key=key, path=Path(path), mos=mos, split=split)
        (records if found else missing).append(record)
        if mos < 0:
            warnings.append(f"{where} row {number}: MOS {raw_mos.strip()} of {video} is negative (kept; MOS scales "
                            "are usually positive: check the column)")
        if os.path.commonpath([os.path.abspath(path), str(root)]) != str(root):
            warnings.append(f"{where} row {number}: {video} is outside --root {root} ({os.path.abspath(path)}; kept)")

    if not records:
        if missing:
            raise DatasetError(f"none of the {len(missing)} videos listed in {labels_file} is in {root} "
                               f"(first expected: {missing[0].path}); check --root")
        raise DatasetError(f"no usable rows in {labels_file} ({len(problems)} problems; first: "
                           f"{problems[0] if problems else 'the file is empty'}); fix the label file")
    if spec.mos_range is not None:
        mos_range = spec.mos_range
    else:
        scores = [r.mos for r in records]
        mos_range = (min(scores), max(scores))
    found_count = len(records)
    if limit is not None:
        records = records[:limit]
    return Dataset(name=name, root=root, labels_file=labels_file, records=records, missing=missing,
                        problems=problems, mos_range=mos_range, listed=len(rows), found=found_count,
                   warnings=warnings)


class _FileCheck:
    """Is this a file? Lists each folder once instead of one stat per video (LSVQ has 39k rows)."""

    def __init__(self) -> None:
        self._folders: dict[str, set[str]] = {}

    def __call__(self, path: str) -> bool:
        folder, _, name = path.rpartition(os.sep)
        names = self._folders.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as entries:
                    names = {e.name for e in entries if e.is_file()}
            except OSError:
                names = set()
            self._folders[folder] = names
        return name in names


def _candidates(name: str, spec: _Spec, root: str, video: str, raw_id: str) -> list[str]:
    """Where a video may be: the dataset's own layout, and the file name as written (labels.txt style)."""
    if name in ("csv", "labels_txt"):
        return spec.candidates(root, video)
    paths = spec.candidates(root, raw_id)
    if VIDEO_EXT.search(video):  # a file name as written: first when it has a folder, else a fallback
        written = video.replace("\\", "/")
        mine = [written] if os.path.isabs(written) else [os.path.join(root, written),
                                                          os.path.join(root, os.path.basename(written))]
        paths = mine + paths if "/" in written else paths + mine
    return list(dict.fromkeys(paths))


def _parse_mos(raw: str) -> float | None:
    try:
        value = float(str(raw).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- checking scores against a label file

def _name_parts(text: str) -> list[str]:
    """'./videos\\clip01.mp4' -> ['videos', 'clip01']: path components, the video extension dropped."""
    parts = [p for p in text.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    if parts:
        parts[-1] = VIDEO_EXT.sub("", parts[-1])
    return parts


@dataclass
class LabelTable:
    """A label file's MOS by video name, for checking scores (`predict --labels`, `metrics --labels`)."""

    file: Path
    columns: tuple[str, str]  # the (video, MOS) columns read
    rows: int  # usable rows
    _by_stem: dict[str, list[tuple[list[str], float]]]

    def match(self, name: str) -> float | None:
        """The MOS of a video given by file name or path, with or without extension and folders
        ('clip01', '/data/clips/clip01.mp4' and 'clips/clip01.mp4' all find 'clip01.mp4'); None when the
        label file does not list it, or lists that name twice with different MOS."""
        query = _name_parts(name)
        found = self._by_stem.get(query[-1] if query else "", [])
        if not found:
            return None

        def common(parts: list[str]) -> int:
            n = 0
            while n < min(len(parts), len(query)) and parts[-1 - n] == query[-1 - n]:
                n += 1
            return n

        best = max(common(p) for p, _ in found)
        values = {m for p, m in found if common(p) == best}
        return values.pop() if len(values) == 1 else None

    def describe(self) -> str:
        return f"{self.file} (video column {self.columns[0]!r}, MOS column {self.columns[1]!r}; {self.rows} videos)"


def read_labels(labels: Path | str, video_column: str | None = None, mos_column: str | None = None) -> LabelTable:
    """Read any label file load_dataset reads (CSV/TSV/XLSX/.mat with a video and a MOS column, or
    labels.txt) into a LabelTable; rows without a name or a numeric MOS are left out."""
    path = _given_labels(labels, Path.cwd())
    try:
        rows, columns = _read_rows("csv", _SPECS["csv"], path, video_column, mos_column, None)
    except DatasetError as exc:  # no --dataset here: say what is missing
        raise DatasetError(str(exc).replace("does not fit --dataset csv:", "has no video and MOS columns:")) from None
    by_stem: dict[str, list[tuple[list[str], float]]] = {}
    usable = 0
    for _, _, video, raw, _ in rows:
        mos, parts = _parse_mos(raw), _name_parts(video)
        if mos is None or not parts:
            continue
        by_stem.setdefault(parts[-1], []).append((parts, mos))
        usable += 1
    if not usable:
        raise DatasetError(f"no usable rows in {path} (a video name and a numeric MOS per row); check --labels")
    return LabelTable(path, columns, usable, by_stem)
