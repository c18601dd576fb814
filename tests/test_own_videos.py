"""A user's own folder of clips and a `filename,score` CSV: which label file and columns are read, scores
checked against labels (predict --labels, metrics --labels, metrics per split), a finished predict rerun,
and the README's "Using it on your own videos" commands run as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import DatasetError


def _folder(root: Path, names=("clip01.mp4", "clip02.mp4", "clip03.mp4"), csv_name="my scores.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).touch()
    (root / csv_name).write_text("filename,score\n" + "".join(f"{n},{1.5 + i}\n" for i, n in enumerate(names)))
    return root


def test_any_one_label_table_is_found_and_what_was_read_is_said(tmp_path, capsys):
    import cli

    root = _folder(tmp_path / "clips")
    cli._load_dataset("csv", root, None, None)
    said = capsys.readouterr().err
    assert f"labels: {root / 'my scores.csv'}" in said
    assert "video column 'filename', MOS column 'score'" in said and "MOS 1.5-3.5 over 3 videos" in said
    # --labels FILE alone: its folder is the root
    data = load_dataset("csv", None, labels=root / "my scores.csv")
    assert data.root == root and len(data.records) == 3


def test_no_or_several_label_files_say_what_is_accepted(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    (root / "a.mp4").touch()
    with pytest.raises(DatasetError) as exc:
        load_dataset("csv", root)
    text = str(exc.value)
    assert "tried labels.csv" not in text and "any one CSV/TSV/XLSX" in text and "--labels FILE" in text
    (root / "one.csv").write_text("video,mos\na.mp4,1\n")
    (root / "two.xlsx").write_bytes(b"")
    with pytest.raises(DatasetError) as exc:
        load_dataset("csv", root)
    assert "2 possible label files" in str(exc.value) and "one.csv, two.xlsx" in str(exc.value)
