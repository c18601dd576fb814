"""Views: crops seeded by the decoded pixels at native resolution, small frames upscaled, resized view."""

import numpy as np
import pytest

from diffvqa_cache.extraction.views import crop_frame, crop_origin, make_views, upscale_to_view


def clip(seed: int, shape=(3, 90, 200, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_crops_follow_the_pixels_not_the_file_name():
    frames = clip(0)
    a = make_views(frames, 64, crops=3, seed=7, key="vid")
    b = make_views(frames.copy(), 64, crops=3, seed=7, key="renamed_copy")
    for name in ("crop_origin", "D", "S"):  # a renamed copy: bit-identical arrays
        np.testing.assert_array_equal(a[name], b[name])
    assert a["D"].shape == (3, 3, 64, 64, 3) and a["S"].shape == (3, 64, 64, 3)
    assert len({tuple(o) for o in a["crop_origin"].reshape(-1, 2)}) > 3  # crops differ across frames/crops
    assert not np.array_equal(make_views(frames, 64, crops=3, seed=8)["crop_origin"], a["crop_origin"])
    per_video = [make_views(frames, 64, 3, 7, "per-video", k)["crop_origin"] for k in ("vid", "other")]
    assert not np.array_equal(*per_video)  # --noise per-video keys crops by the video id too
    top, left = a["crop_origin"][1, 2]
    np.testing.assert_array_equal(a["D"][1, 2], frames[1, top:top + 64, left:left + 64])  # native resolution


@pytest.mark.parametrize("placement", ["independent", "aligned"])
def test_different_clips_of_one_size_get_different_crop_places(placement):
    """Positions shared by every video gave every version of a content the same region at each frame
    position (issue 24); the places now come from the pixels."""
    origins = [make_views(clip(s), 64, 2, 0, key="same_name", placement=placement)["crop_origin"] for s in range(4)]
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(origins[i], origins[j])
    # one changed pixel in one frame moves that frame's crops (independent) or the video's (aligned)
    frames = clip(0)
    touched = frames.copy()
    touched[2, 0, 0, 0] ^= 1
    a, b = (make_views(f, 64, 2, 0, placement=placement)["crop_origin"] for f in (frames, touched))
    if placement == "independent":
        np.testing.assert_array_equal(a[:2], b[:2])
    assert not np.array_equal(a[2], b[2])


def test_aligned_crops_share_one_place_per_video_and_independent_ones_do_not():
    frames = clip(1, (6, 90, 200, 3))
    aligned = make_views(frames, 32, crops=3, seed=0, placement="aligned")
    assert (aligned["crop_origin"] == aligned["crop_origin"][:1]).all()  # the same origin in every frame
    assert len({tuple(o) for o in aligned["crop_origin"][0]}) == 3  # crops k differ from each other
    t, (top, left) = 4, aligned["crop_origin"][4, 1]
    np.testing.assert_array_equal(aligned["D"][t, 1], frames[t, top:top + 32, left:left + 32])
    independent = make_views(frames, 32, crops=3, seed=0)["crop_origin"]
    assert len({tuple(o) for o in independent[:, 0]}) > 1  # crop 0 moves from frame to frame


@pytest.mark.parametrize("h, w, size", [(360, 640, 512), (720, 404, 512), (27, 48, 64), (64, 36, 64)])
def test_frames_smaller_than_the_view_are_upscaled_not_padded(h, w, size):
    """640x360 and portrait 404x720 at 512 px views (and the same ratios at test sizes): the short side is
    upscaled to the view size, aspect kept; no crop holds a black bar."""
    frames = np.full((2, h, w, 3), 200, dtype=np.uint8)
    up = upscale_to_view(frames, size)
    short, long_ = sorted(up.shape[1:3])
    assert short == size and abs(long_ / short - max(h, w) / min(h, w)) < 2 / size
    views = make_views(frames, size, crops=2, seed=0)
    assert views["D"].shape == (2, 2, size, size, 3) and (views["D"] == 200).all()
    H, W = up.shape[1:3]
    assert ((views["crop_origin"] >= 0) & (views["crop_origin"] <= [H - size, W - size])).all()
    padded = make_views(frames, size, crops=1, seed=0, small_frames="pad")["D"]
    assert (padded == 0).any()  # the old behaviour, kept as an option, had black bars


def test_frames_at_least_the_view_size_are_cropped_as_decoded():
    frames = clip(2, (1, 64, 100, 3))
    assert upscale_to_view(frames, 64) is frames


def test_pad_option_centres_the_frame():
    frame = np.full((40, 100, 3), 200, dtype=np.uint8)
    top, left = crop_origin(40, 100, 64, seed=0)
    assert top == 0 and 0 <= left <= 36
    patch = crop_frame(frame, top, left, 64)
    assert patch.shape == (64, 64, 3)
    assert (patch[12:52] == 200).all() and (patch[:12] == 0).all() and (patch[52:] == 0).all()
