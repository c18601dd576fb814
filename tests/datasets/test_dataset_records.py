"""safe_key and Dataset.summary."""

import re
from pathlib import Path

from diffvqa_cache.datasets import Dataset, VideoRecord, safe_key

SAFE = re.compile(r"^[\w.-]+$")  # letters and digits of any script, '_', '.', '-': no separators


def test_safe_key_examples():
    assert safe_key("yfcc-batch1/747") == "yfcc-batch1__747"
    assert safe_key("3339962845") == "3339962845"
    assert safe_key("A001.mp4") == "A001"
    assert safe_key("Video\\A001.mp4") == "Video__A001"
    assert safe_key("my clip (1).MP4") == "my_clip__1_"
    assert safe_key("vidéo_ü.mkv") == "vidéo_ü"  # Unicode letters stay (they all became '_')
    assert safe_key("ü.mp4") == "ü" and safe_key("é.mp4") == "é" and safe_key("日本語.mp4") == "日本語"
    assert safe_key("u\u0308.mp4") == "ü"  # as macOS stores the name: the same key
    smileys = safe_key("😀.mp4"), safe_key("😎.mp4")  # no letter at all: a short hash keeps them apart
    assert smileys[0] != smileys[1] and all(k.startswith("_-") and len(k) == 10 for k in smileys)


def test_safe_key_keeps_dots_that_are_not_video_extensions():
    # LSVQ names hold dots; the file is '<name>.mp4'
    assert safe_key("ia-batch3/20110405Ucinsc25HlHttpclip.hotscore.net") == "ia-batch3__20110405Ucinsc25HlHttpclip.hotscore.net"
    assert safe_key("Sports_2160P-4e9f_crf_10_ss_00_t_20.0") == "Sports_2160P-4e9f_crf_10_ss_00_t_20.0"


def test_safe_key_is_safe_deterministic_and_distinguishes_typical_ids():
    raws = ["a/b", "a__b ", "./x.mp4", "../../etc/passwd", "", ".hidden", "日本語.mp4", "a" * 400, "a" * 401,
            "yfcc-batch1/747", "yfcc-batch1/748", "ia-batch1/747"]
    keys = [safe_key(r) for r in raws]
    assert keys == [safe_key(r) for r in raws]
    for key in keys:
        assert SAFE.match(key), key
        assert not key.startswith(".") and len(key.encode("utf-8")) <= 180
    assert keys[0] == keys[1] == "a__b"  # collisions are possible; the adapters report them
    assert len(set(keys[7:])) == len(keys[7:])


def test_summary_one_line(tmp_path: Path):
    recs = [VideoRecord(f"v{i}", tmp_path / f"v{i}.mp4", 3.0) for i in range(4)]
    miss = [VideoRecord(f"m{i}", tmp_path / "sub" / f"m{i}.mp4", 3.0) for i in range(5)]
    index = Dataset("kvd", tmp_path, tmp_path / "l.csv", recs, miss, ["x"], (1.0, 5.0), listed=10, found=4)
    text = index.summary()
    assert "\n" not in text
    assert text.startswith("kvd: 10 videos listed, 4 found, 5 missing (first: sub/m0.mp4, sub/m1.mp4, sub/m2.mp4, ...)")
    assert text.endswith("1 problems")
