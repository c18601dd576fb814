"""Small datasets laid out exactly as the official releases, built from the embedded sample's clips.

Each takes (root, clips, mos): `clips` are sample clip paths, `mos` their labels on the sample's 1-5
scale (mapped to each dataset's own scale), and writes the dataset's own label file and video names.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

LSVQ_COLUMNS = ("name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,frame_number,fn_last_frame,left_p1,right_p1,"
                "top_p1,bottom_p1,start_p1,end_p1,left_p2,right_p2,top_p2,bottom_p2,start_p2,end_p2,left_p3,right_p3,"
                "top_p3,bottom_p3,start_p3,end_p3,top_vid,left_vid,bottom_vid,right_vid,start_vid,end_vid,is_test,"
                "is_valid").split(",")


def to_100(mos: float) -> float:
    return round((mos - 1.0) / 4.0 * 100.0, 3)


def lsvq(root: Path, clips: list[Path], mos: list[float], n_test: int, n_1080p: int) -> Path:
    """labels_train_test.csv (is_test) + labels_test_1080p.csv; videos <batch>/<id>.mp4; MOS 0-100."""
    names = [f"yfcc-batch{1 + i % 3}/{700 + i}" for i in range(len(clips))]
    for name, clip in zip(names, clips):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / f"{name}.mp4")
    n_train = len(clips) - n_test - n_1080p

    def write(path, rows, with_test: bool):
        columns = LSVQ_COLUMNS if with_test else [c for c in LSVQ_COLUMNS if c != "is_test"]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="0")
            w.writeheader()
            for name, m, is_test in rows:
                w.writerow({"name": name, "mos": to_100(m), "height": 480, "width": 640, "frame_number": 16,
                            **({"is_test": str(is_test)} if with_test else {}), "is_valid": "True"})

    rows = list(zip(names, mos, [False] * n_train + [True] * n_test + [True] * n_1080p))
    write(root / "labels_train_test.csv", rows[:n_train + n_test], True)
    write(root / "labels_test_1080p.csv", rows[n_train + n_test:], False)
    return root


def kvd(root: Path, clips: list[Path], mos: list[float]) -> Path:
    """KoNViD_1k_videos/<flickr_id>.mp4 + KoNViD_1k_mos.csv (flickr_id,mos); MOS 1-5."""
    (root / "KoNViD_1k_videos").mkdir(parents=True)
    ids = [str(3339962845 + 7919 * i) for i in range(len(clips))]
    for i, clip in zip(ids, clips):
        shutil.copy(clip, root / "KoNViD_1k_videos" / f"{i}.mp4")
    (root / "KoNViD_1k_mos.csv").write_text("flickr_id,mos\n" + "".join(f"{i},{m:.3f}\n" for i, m in zip(ids, mos)))
    return root


def lvqc(root: Path, clips: list[Path], mos: list[float]) -> Path:
    """Video/A001.mp4 ... + data.mat (video_list cell array, mos); MOS 0-100."""
    from scipy.io import savemat

    (root / "Video").mkdir(parents=True)
    names = [f"A{i + 1:03d}.mp4" for i in range(len(clips))]
    for name, clip in zip(names, clips):
        shutil.copy(clip, root / "Video" / name)
    video_list = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        video_list[i, 0] = name
    savemat(root / "data.mat", {"video_list": video_list, "mos": np.array([[to_100(m)] for m in mos])})
    return root


def ytugc(root: Path, clips: list[Path], mos: list[float]) -> Path:
    """<Category>_<Res>P-<hex4>.mkv (VP9) + original_videos_MOS_for_YouTube_UGC_dataset.xlsx (sheet MOS)."""
    import openpyxl

    from diffvqa_cache.clip_writer import write_clip
    from diffvqa_cache.extraction.video import probe, read_frames

    root.mkdir(parents=True, exist_ok=True)
    vids = [f"{('Gaming', 'Sports', 'Vlog')[i % 3]}_480P-{0x1a2b + 17 * i:04x}" for i in range(len(clips))]
    for vid, clip in zip(vids, clips):
        info = probe(clip)
        frames, _ = read_frames(clip, range(info.n_frames))
        write_clip(root / f"{vid}.mkv", frames, fps=round(info.fps), codec="libvpx-vp9", crf=30)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "MOS"
    sheet.append(["vid", "category", "resolution", "MOS full"])
    for vid, m in zip(vids, mos):
        sheet.append([vid, vid.split("_")[0], 480, round(m, 3)])
    book.save(root / "original_videos_MOS_for_YouTube_UGC_dataset.xlsx")
    return root
