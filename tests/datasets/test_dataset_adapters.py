"""Dataset adapters on excerpts of the real label files (videos are empty placeholder files)."""

import csv
import shutil
from pathlib import Path

import pytest

from diffvqa_cache.datasets import DATASETS, load_dataset
from diffvqa_cache.errors import DatasetError, UserInputError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "labels"


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def column(path: Path, name: str) -> list[str]:
    with open(path, newline="") as fh:
        return [row[name] for row in csv.DictReader(fh)]


def txt_paths(path: Path) -> list[str]:
    return [line.split(",")[0] for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- KoNViD-1k

@pytest.fixture
def kvd_root(tmp_path: Path) -> Path:
    ids = column(FIX / "kvd_BVQA_Benchmark_KONVID_1K_metadata.csv", "flickr_id")
    touch(tmp_path, *[f"KoNViD_1k_videos/{i}.mp4" for i in ids])
    return tmp_path


def test_kvd_finds_official_mos_csv_in_metadata_folder(kvd_root: Path):
    (kvd_root / "KoNViD_1k_metadata").mkdir()
    shutil.copy(FIX / "kvd_BVQA_Benchmark_KONVID_1K_metadata.csv", kvd_root / "KoNViD_1k_metadata/KoNViD_1k_mos.csv")
    index = load_dataset("kvd", kvd_root)
    assert index.name == "kvd" and index.labels_file.name == "KoNViD_1k_mos.csv"
    assert len(index.records) == 15 and not index.missing and not index.problems
    first = index.records[0]
    assert first.key == "3339962845" and first.mos == pytest.approx(4.64) and first.split == ""
    assert first.path == kvd_root / "KoNViD_1k_videos/3339962845.mp4" and first.path.is_absolute()
    assert index.mos_range == (1.0, 5.0)


def test_kvd_labels_txt_gives_the_same_keys(kvd_root: Path):
    touch(kvd_root, *txt_paths(FIX / "kvd_DOVER_labels.txt"))
    index = load_dataset("kvd", kvd_root, labels=FIX / "kvd_DOVER_labels.txt")
    assert len(index.records) == 12
    assert index.records[0].key == "4542323058" and index.records[0].mos == pytest.approx(3.22)


def test_kvd_videos_in_root_and_old_names(tmp_path: Path):
    touch(tmp_path, "3339962845.mp4", "8171831850_original_centercrop_960x540_8s.mp4")
    index = load_dataset("kvd", tmp_path, labels=FIX / "kvd_BVQA_Benchmark_KONVID_1K_metadata.csv")
    assert [r.path.name for r in index.records] == ["3339962845.mp4", "8171831850_original_centercrop_960x540_8s.mp4"]
    assert len(index.missing) == 13


def test_kvd_accepts_labels_txt_in_root(kvd_root: Path):
    touch(kvd_root, *txt_paths(FIX / "kvd_DOVER_labels.txt"))
    shutil.copy(FIX / "kvd_DOVER_labels.txt", kvd_root / "labels.txt")
    assert len(load_dataset("kvd", kvd_root).records) == 12


# ---------------------------------------------------------------- LIVE-VQC

@pytest.fixture
def lvqc_root(tmp_path: Path) -> Path:
    touch(tmp_path, *[f"Video/A{i:03d}.mp4" for i in range(1, 21)])
    return tmp_path


def test_lvqc_data_mat_in_root(lvqc_root: Path):
    shutil.copy(FIX / "lvqc_data.mat", lvqc_root / "data.mat")
    index = load_dataset("lvqc", lvqc_root)
    assert index.labels_file.name == "data.mat" and index.mos_range == (0.0, 100.0)
    assert len(index.records) == 20 and len(index.missing) == 565 and not index.problems
    assert index.records[0].key == "A001" and index.records[0].mos == pytest.approx(80.232)
    assert index.records[0].path == lvqc_root / "Video/A001.mp4"
    assert "585 videos listed, 20 found, 565 missing (first: Video/A021.mp4" in index.summary()


def test_lvqc_csv_and_labels_txt(lvqc_root: Path):
    index = load_dataset("lvqc", lvqc_root, labels=FIX / "lvqc_BVQA_Benchmark_LIVE_VQC_metadata.csv")
    keys = [r.key for r in index.records]
    assert len(keys) == 15 and "A012NEW" in keys  # this label version says A012NEW.mp4, the file is A012.mp4
    assert index.records[keys.index("A012NEW")].path == lvqc_root / "Video/A012.mp4"
    index = load_dataset("lvqc", lvqc_root, labels=FIX / "lvqc_DOVER_labels.txt")
    assert [r.key for r in index.records][:2] == ["A001", "A002"] and len(index.records) == 10


def test_lvqc_videos_directly_in_root(tmp_path: Path):
    touch(tmp_path, "A001.mp4", "A002.mp4")
    index = load_dataset("lvqc", tmp_path, labels=FIX / "lvqc_data.mat")
    assert [r.path for r in index.records] == [tmp_path / "A001.mp4", tmp_path / "A002.mp4"]


# ---------------------------------------------------------------- YouTube-UGC

def write_official_xlsx(path: Path) -> list[str]:
    """The official workbook layout (sheet MOS: vid, category, resolution, MOS full, ...) from the CSV excerpt."""
    import openpyxl

    with open(FIX / "ytugc_BVQA_Benchmark_YOUTUBE_UGC_metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    book = openpyxl.Workbook()
    book.active.title = "diff"
    sheet = book.create_sheet("MOS")
    sheet.append(["vid", "category", "resolution", "MOS full", "MOS chunk00"])
    for row in rows:
        sheet.append([row["vid"], row["category"], int(row["resolution"]), float(row["MOSFull"]),
                      float(row["MOSChunk00"])])
    book.save(path)
    return [row["vid"] for row in rows]


def test_ytugc_official_xlsx_and_file_variants(tmp_path: Path):
    vids = write_official_xlsx(tmp_path / "original_videos_MOS_for_YouTube_UGC_dataset.xlsx")
    touch(tmp_path, f"{vids[0]}.mkv", f"{vids[1]}_crf_10_ss_00_t_20.0.mp4", f"original_videos/{vids[2]}.mp4",
          f"original_videos/Animation/1080P/{vids[3]}.mkv")
    index = load_dataset("ytugc", tmp_path)
    assert [r.key for r in index.records] == vids[:4]
    assert index.records[0].mos == pytest.approx(3.649) and index.mos_range == (1.0, 5.0)
    assert len(index.missing) == 11 and index.missing[0].path == tmp_path / f"{vids[4]}.mkv"


def test_ytugc_csv_and_labels_txt_share_keys(tmp_path: Path):
    touch(tmp_path, *txt_paths(FIX / "ytugc_DOVER_labels.txt"))
    index = load_dataset("ytugc", tmp_path, labels=FIX / "ytugc_DOVER_labels.txt")
    assert index.records[0].key == "Sports_2160P-4e9f" and len(index.records) == 5
    touch(tmp_path, "Animation_1080P-01b3_crf_10_ss_00_t_20.0.mp4")
    index = load_dataset("ytugc", tmp_path, labels=FIX / "ytugc_BVQA_Benchmark_YOUTUBE_UGC_metadata.csv")
    assert [r.key for r in index.records] == ["Animation_1080P-01b3"]
    assert index.records[0].mos == pytest.approx(3.649)


# ---------------------------------------------------------------- LSVQ

@pytest.fixture
def lsvq_root(tmp_path: Path) -> Path:
    shutil.copy(FIX / "lsvq_labels_train_test.csv", tmp_path / "labels_train_test.csv")
    shutil.copy(FIX / "lsvq_labels_test_1080p.csv", tmp_path / "labels_test_1080p.csv")
    names = column(FIX / "lsvq_labels_train_test.csv", "name") + column(FIX / "lsvq_labels_test_1080p.csv", "name")
    touch(tmp_path, *[f"{n}.mp4" for n in names])
    return tmp_path


def test_lsvq_official_pair_gives_three_splits(lsvq_root: Path):
    index = load_dataset("lsvq", lsvq_root)
    splits = [r.split for r in index.records]
    assert splits == ["train"] * 5 + ["test"] * 7 + ["test1080p"] * 8
    assert not index.missing and not index.problems and index.mos_range == (0.0, 100.0)
    first = index.records[0]
    assert first.key == "yfcc-batch1__725" and first.path == lsvq_root / "yfcc-batch1/725.mp4"
    dotted = {r.key: r.path.name for r in index.records if r.key.startswith("ia-")}
    assert dotted == {"ia-batch2__Cold_Weather_Pet_Care": "Cold_Weather_Pet_Care.mov.mp4",
                      "ia-batch3__20110405Ucinsc25HlHttpclip.hotscore.net": "20110405Ucinsc25HlHttpclip.hotscore.net.mp4"}


def test_lsvq_labels_txt_split_from_file_name(lsvq_root: Path):
    expected = {"lsvq_DOVER_train_labels.txt": "train", "lsvq_DOVER_labels_test.txt": "test",
                "lsvq_DOVER_labels_1080p.txt": "test1080p"}
    for name, split in expected.items():
        index = load_dataset("lsvq", lsvq_root, labels=FIX / name)
        assert {r.split for r in index.records} == {split}, name
    index = load_dataset("lsvq", lsvq_root, labels=FIX / "lsvq_DOVER_labels_test.txt")
    assert "ia-batch3__20110405Ucinsc25HlHttpclip.hotscore.net" in [r.key for r in index.records]


def test_lsvq_split_column_override(lsvq_root: Path):
    index = load_dataset("lsvq", lsvq_root, labels=lsvq_root / "labels_train_test.csv", split_column="is_valid")
    assert {r.split for r in index.records} == {"True"}
    with pytest.raises(DatasetError, match="no split column 'fold'"):
        load_dataset("lsvq", lsvq_root, labels=lsvq_root / "labels_train_test.csv", split_column="fold")


# ---------------------------------------------------------------- csv / labels_txt

def test_csv_auto_detects_columns_case_insensitively(tmp_path: Path):
    (tmp_path / "scores.csv").write_text("Filename,Quality,extra\nclips/a.mp4,3.5,x\nclips/b.mp4,70,y\nc.mp4,1,z\n")
    touch(tmp_path, "clips/a.mp4", "clips/b.mp4")
    index = load_dataset("csv", tmp_path)  # the only CSV in root
    assert [(r.key, r.mos) for r in index.records] == [("clips__a", 3.5), ("clips__b", 70.0)]
    assert index.mos_range == (3.5, 70.0)
    assert [m.path for m in index.missing] == [tmp_path / "c.mp4"]


def test_csv_column_overrides_and_split(tmp_path: Path):
    labels = tmp_path / "my.csv"
    labels.write_text("clip;mos;score_b;fold\nx.mp4;1;4.5;train\ny.mp4;2;3.5;test\n")
    touch(tmp_path, "x.mp4", "y.mp4")
    index = load_dataset("csv", tmp_path, labels=labels, video_column="clip", mos_column="Score_B", split_column="fold")
    assert [(r.key, r.mos, r.split) for r in index.records] == [("x", 4.5, "train"), ("y", 3.5, "test")]
    with pytest.raises(DatasetError, match=r"expected columns video/path/.* found clip, mos, score_b, fold"):
        load_dataset("csv", tmp_path, labels=labels)


def test_labels_txt_generic_and_basename_fallback(tmp_path: Path):
    shutil.copy(FIX / "kvd_DOVER_labels.txt", tmp_path / "labels.txt")
    paths = txt_paths(FIX / "kvd_DOVER_labels.txt")
    touch(tmp_path, paths[0], Path(paths[1]).name)  # second one flat in root
    index = load_dataset("labels_txt", tmp_path)
    assert [r.key for r in index.records] == ["KoNViD_1k_videos__4542323058", "KoNViD_1k_videos__9753414792"]
    assert index.records[1].path == tmp_path / "9753414792.mp4"
    assert len(index.missing) == 10 and index.mos_range == (3.22, 3.84)


def test_sample_reads_the_embedded_dataset_as_csv(tmp_path: Path, monkeypatch):
    import sys
    import types

    folder = tmp_path / "sample"
    touch(folder, "videos/a.mp4", "videos/b.mp4")
    (folder / "labels.csv").write_text("video,mos\nvideos/a.mp4,2.5\nvideos/b.mp4,4\n")
    fake = types.ModuleType("diffvqa_cache.datasets.sample")
    fake.ensure_sample = lambda root=None: folder
    monkeypatch.setitem(sys.modules, "diffvqa_cache.datasets.sample", fake)
    index = load_dataset("sample", None, limit=1)
    assert index.name == "sample" and [r.key for r in index.records] == ["videos__a"]
    assert index.mos_range == (1.0, 5.0)
    assert "using the first 1 (--limit)" in index.summary()


# ---------------------------------------------------------------- problems and errors

def test_missing_duplicates_bad_mos_and_collisions(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("video,mos\na.mp4,1\nb.mp4,\nc.mp4,n/a\na.mp4,2\na b.mp4,3\na_b.mp4,4\ngone.mp4,5\n,3\n")
    touch(tmp_path, "a.mp4", "c.mp4", "a b.mp4", "a_b.mp4")
    index = load_dataset("csv", tmp_path)
    # 'a b' and 'a_b' give the same key: the second keeps its videos under the key and a short hash
    assert [(r.key[:4], r.mos) for r in index.records] == [("a", 1.0), ("a_b", 3.0), ("a_b-", 4.0)]
    assert len(index.records[2].key) == len("a_b-") + 8 and index.records[2].path.name == "a_b.mp4"
    assert [m.path.name for m in index.missing] == ["gone.mp4"]
    text = "\n".join(index.problems)
    assert len(index.problems) == 4
    assert "labels.csv row 3: MOS '' of b.mp4 is not a number" in text
    assert "labels.csv row 4: MOS 'n/a' of c.mp4 is not a number" in text
    assert "row 5: duplicated id 'a.mp4' (first at labels.csv row 2), kept the first" in text
    assert "row 9: no video name" in text
    assert all("\n" not in p for p in index.problems)
    assert index.summary() == "csv: 8 videos listed, 3 found, 1 missing (first: gone.mp4), 4 problems"


def test_non_ascii_names_keep_unique_readable_keys(tmp_path: Path):
    (tmp_path / "labels.csv").write_text("video,mos\nü.mp4,1\né.mp4,2\nvidéo 1.mp4,3\n", encoding="utf-8")
    touch(tmp_path, "ü.mp4", "é.mp4", "vidéo 1.mp4")
    index = load_dataset("csv", tmp_path)
    assert [r.key for r in index.records] == ["ü", "é", "vidéo_1"] and index.problems == []


def test_negative_mos_and_paths_outside_the_root_are_warned_about(tmp_path: Path):
    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    touch(root / "videos", "a.mp4", "b.mp4")
    touch(tmp_path, "elsewhere.mp4")
    (root / "labels.csv").write_text(f"video,mos\nvideos/a.mp4,-0.5\nvideos/b.mp4,3\n../elsewhere.mp4,2\n"
                                     f"{tmp_path / 'elsewhere.mp4'},4\n")
    index = load_dataset("csv", root)
    assert [r.key for r in index.records][:2] == ["videos__a", "videos__b"] and len(index.records) == 4
    text = "\n".join(index.warnings)
    assert len(index.warnings) == 3, text
    assert "labels.csv row 2: MOS -0.5 of videos/a.mp4 is negative" in text
    assert "row 4: ../elsewhere.mp4 is outside --root" in text and "row 5:" in text
    assert index.summary().endswith("0 problems, 3 warnings")


def test_missing_reported_by_name_and_count(kvd_root: Path):
    (kvd_root / "KoNViD_1k_videos" / "3339962845.mp4").unlink()
    (kvd_root / "KoNViD_1k_videos" / "6076608135.mp4").unlink()
    index = load_dataset("kvd", kvd_root, labels=FIX / "kvd_BVQA_Benchmark_KONVID_1K_metadata.csv")
    assert [m.key for m in index.missing] == ["3339962845", "6076608135"]
    assert index.missing[0].path == kvd_root / "KoNViD_1k_videos/3339962845.mp4"
    assert ("15 videos listed, 13 found, 2 missing (first: KoNViD_1k_videos/3339962845.mp4, "
            "KoNViD_1k_videos/6076608135.mp4)") in index.summary()


def test_limit_takes_the_first_valid_records(kvd_root: Path):
    index = load_dataset("kvd", kvd_root, labels=FIX / "kvd_BVQA_Benchmark_KONVID_1K_metadata.csv", limit=3)
    assert [r.key for r in index.records] == ["3339962845", "8171831850", "6076608135"]
    assert index.found == 15
    with pytest.raises(DatasetError, match="--limit"):
        load_dataset("kvd", kvd_root, labels=FIX / "kvd_BVQA_Benchmark_KONVID_1K_metadata.csv", limit=0)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and isinstance(exc.value, UserInputError)
    return text


def test_wrong_format_label_files(kvd_root: Path, lvqc_root: Path):
    with pytest.raises(DatasetError) as exc:
        load_dataset("kvd", kvd_root, labels=FIX / "lvqc_data.mat")
    assert "expected columns flickr_id and mos, found video_list, mos" in one_line(exc)
    with pytest.raises(DatasetError) as exc:
        load_dataset("lsvq", lvqc_root, labels=FIX / "kvd_BVQA_Benchmark_KONVID_1K_metadata.csv")
    assert "does not fit --dataset lsvq: expected columns name and mos, found flickr_id, mos, width" in one_line(exc)
    with pytest.raises(DatasetError) as exc:
        load_dataset("ytugc", lvqc_root, labels=FIX / "lvqc_BVQA_Benchmark_LIVE_VQC_metadata.csv")
    assert "--video-column" in one_line(exc)


def test_root_and_label_file_errors(tmp_path: Path):
    with pytest.raises(DatasetError) as exc:
        load_dataset("kvd", tmp_path / "nope")
    assert "nope does not exist" in one_line(exc) and "--root" in str(exc.value)
    with pytest.raises(DatasetError) as exc:
        load_dataset("lvqc", tmp_path)
    assert "tried data.mat" in one_line(exc) and "--labels FILE" in str(exc.value)
    with pytest.raises(DatasetError) as exc:
        load_dataset("kvd", tmp_path, labels=tmp_path / "none.csv")
    assert "none.csv not found" in one_line(exc)
    with pytest.raises(DatasetError) as exc:
        load_dataset("kvd", tmp_path, labels=FIX / "kvd_DOVER_labels.txt")  # no videos at all
    assert "none of the 12 videos" in one_line(exc) and "KoNViD_1k_videos/4542323058.mp4" in str(exc.value)
    (tmp_path / "labels.csv").write_text("video,mos\na.mp4,x\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("csv", tmp_path)
    assert "no usable rows" in one_line(exc) and "row 2" in str(exc.value)
    with pytest.raises(DatasetError, match="unknown dataset 'foo'"):
        load_dataset("foo", tmp_path)
    assert DATASETS == ("kvd", "lvqc", "ytugc", "lsvq", "csv", "labels_txt", "sample")
