"""Views: seeded crops at native resolution, padding, resized view."""

import numpy as np

from diffvqa_cache.views import crop_frame, crop_origin, make_views


def test_crops_are_seeded_by_frame_position_and_crop_not_by_the_file_name():
    frames = np.random.default_rng(0).integers(0, 255, (3, 90, 200, 3), dtype=np.uint8)
    a = make_views(frames, 64, crops=3, seed=7, key="vid")
    b = make_views(frames, 64, crops=3, seed=7, key="renamed_copy")
    np.testing.assert_array_equal(a["crop_origin"], b["crop_origin"])
    np.testing.assert_array_equal(a["D"], b["D"])
    assert a["D"].shape == (3, 3, 64, 64, 3) and a["S"].shape == (3, 64, 64, 3)
    assert len({tuple(o) for o in a["crop_origin"].reshape(-1, 2)}) > 3  # crops differ across frames/crops
    assert not np.array_equal(make_views(frames, 64, crops=3, seed=8)["crop_origin"], a["crop_origin"])
    per_video = [make_views(frames, 64, 3, 7, "per-video", k)["crop_origin"] for k in ("vid", "other")]
    assert not np.array_equal(*per_video)  # --noise per-video keys crops by the video id too
    top, left = a["crop_origin"][1, 2]
    np.testing.assert_array_equal(a["D"][1, 2], frames[1, top:top + 64, left:left + 64])  # native resolution


def test_small_frames_are_padded_not_resized():
    frame = np.full((40, 100, 3), 200, dtype=np.uint8)
    top, left = crop_origin(40, 100, 64, seed=0)
    assert top == 0 and 0 <= left <= 36
    patch = crop_frame(frame, top, left, 64)
    assert patch.shape == (64, 64, 3)
    assert (patch[12:52] == 200).all() and (patch[:12] == 0).all() and (patch[52:] == 0).all()
