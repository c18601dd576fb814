"""The embedded sample dataset (diffvqa_cache.datasets.sample)."""

from __future__ import annotations

import csv
import os
import time

import numpy as np
import pytest

from diffvqa_cache.datasets import sample
from diffvqa_cache.datasets.sample import CONTENTS, DISTORTIONS, N_CLIPS, STRENGTHS, ensure_sample, plan
from diffvqa_cache.errors import DatasetError
from diffvqa_cache.extraction.video import load_video_frames, probe


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    """The sample generated twice, into two separate folders."""
    return [ensure_sample(tmp_path_factory.mktemp(f"gen{i}") / "sample-v3") for i in range(2)]


def read_labels(root):
    with open(root / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_layout_and_labels(two_roots):
    root = two_roots[0]
    rows = read_labels(root)
    assert len(rows) == N_CLIPS == 96 and list(rows[0]) == ["video", "mos"]
    assert rows[0]["video"] == "videos/sample_000.mp4"
    for row in rows:
        assert (root / row["video"]).is_file()
        assert 1.0 <= float(row["mos"]) <= 5.0
    assert "synthetic" in (root / "README.txt").read_text()
    info = probe(root / rows[0]["video"])
    assert (info.codec, info.n_frames, info.fps) == ("h264", 16, 24.0)
    assert not list(root.parent.glob("*.incomplete"))


def test_deterministic(two_roots):
    """Labels and the frames before encoding are identical; the encoded clips decode to nearly identical
    frames (libx264 as bundled with PyAV 18 is not bit-reproducible, even on one thread with no thread type
    and frames converted before encoding: 10-13 of 18 re-encodes of a clip differed, measured 2026-12-05;
    the decoded frames then differ by up to about 1.4 grey levels on average)."""
    a, b = two_roots
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    spec = plan()[16]
    first = sample.clip_frames(spec)
    sample._scene.cache_clear()
    assert np.array_equal(first, sample.clip_frames(spec))
    for name in ("videos/sample_000.mp4", "videos/sample_016.mp4", "videos/sample_095.mp4"):
        fa, ia, _, _ = load_video_frames(a / name, n_frames=4)
        fb, ib, _, _ = load_video_frames(b / name, n_frames=4)
        assert ia.tolist() == ib.tolist() and np.abs(fa.astype(int) - fb.astype(int)).mean() < 2.5


def test_content_varies_and_moves(two_roots):
    root = two_roots[0]
    firsts = []
    for spec in plan()[:len(CONTENTS)]:  # the pristine clip of each content
        assert spec.distortion == "pristine"
        frames, _, _, _ = load_video_frames(root / spec.video, n_frames=2)
        assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 1  # motion
        firsts.append(frames[0].astype(int))
    for i in range(len(firsts) - 1):
        assert np.abs(firsts[i] - firsts[i + 1]).mean() > 10


def test_content_balanced():
    specs = plan()
    conditions = {(s.distortion, s.strength) for s in specs}
    assert conditions == {("pristine", 0.0)} | {(d, v) for d in DISTORTIONS for v in STRENGTHS}
    for content in CONTENTS:  # every content under every condition, exactly once
        mine = [(s.distortion, s.strength) for s in specs if s.content == content]
        assert sorted(mine) == sorted(conditions)


def test_same_scene_across_conditions():
    """A distorted clip is its content's pristine scene plus the distortion, not a different scene."""
    specs = plan()
    pristine = {s.content: sample.clip_frames(s).astype(int) for s in specs if s.distortion == "pristine"}
    for s in specs:
        if s.distortion == "blur" and s.strength == STRENGTHS[0]:
            frames = sample.clip_frames(s).astype(int)
            own = np.abs(frames - pristine[s.content]).mean()
            others = [np.abs(frames - p).mean() for c, p in pristine.items() if c != s.content]
            assert own < 20 and 2 * own < min(others), (s.content, own, others)


def test_mos_falls_with_strength(two_roots):
    mos = {row["video"]: float(row["mos"]) for row in read_labels(two_roots[0])}
    specs = plan()
    assert {s.distortion for s in specs} == set(DISTORTIONS) | {"pristine"}
    for content in CONTENTS:
        clean = [mos[s.video] for s in specs if s.content == content and s.distortion == "pristine"]
        assert len(clean) == 1 and clean[0] > 4.4
        for distortion in DISTORTIONS:
            graded = sorted((s.strength, mos[s.video]) for s in specs
                            if s.content == content and s.distortion == distortion)
            assert [g for g, _ in graded] == list(STRENGTHS)
            values = clean + [m for _, m in graded]
            assert all(x > y for x, y in zip(values, values[1:])), (content, distortion, values)
            assert values[-1] < 2.0


def test_second_call_returns_immediately(two_roots):
    root = two_roots[0]
    before = (root / "labels.csv").stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_sample(root) == root
    assert time.perf_counter() - start < 0.5
    assert (root / "labels.csv").stat().st_mtime_ns == before


def test_killed_generation_not_taken_as_complete(tmp_path, monkeypatch):
    root = tmp_path / "sample-v3"
    calls = []

    def dying_write_clip(path, frames, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-generation
        path.write_bytes(b"partial")

    monkeypatch.setattr(sample, "write_clip", dying_write_clip)
    with pytest.raises(KeyboardInterrupt):
        ensure_sample(root, n_clips=6)
    assert not root.exists() and not list(tmp_path.glob("*.incomplete"))

    # a leftover from a hard kill (SIGKILL) sits beside the root but is never used as the dataset
    leftover = tmp_path / "sample-v3.abc123.incomplete"
    (leftover / "videos").mkdir(parents=True)
    (leftover / "videos" / "sample_000.mp4").write_bytes(b"partial")
    monkeypatch.undo()
    out = ensure_sample(root, n_clips=6)
    assert out == root and len(read_labels(root)) == 6
    assert (root / "videos" / "sample_005.mp4").stat().st_size > 1000


def test_leftovers_of_killed_generations_removed(tmp_path):
    import subprocess

    from diffvqa_cache.files import temp_name

    dead = subprocess.Popen(["true"])
    dead.wait()
    root = tmp_path / "sample-v3"
    leftover = temp_name(root).with_name(temp_name(root).name.replace(f"-{os.getpid()}.", f"-{dead.pid}."))
    leftover.mkdir()
    running = temp_name(tmp_path / "other")  # a live process's (this one's) temporary folder is spared
    running.mkdir()
    ensure_sample(root, n_clips=1)
    assert not leftover.exists() and running.exists()


def test_non_sample_folder_refused(tmp_path):
    root = tmp_path / "sample-v3"
    root.mkdir()
    (root / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="sample-v3"):
        ensure_sample(root)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFVQA_CACHE_HOME", str(tmp_path / "home"))
    assert sample.default_root() == tmp_path / "home" / "sample-v3"
    monkeypatch.delenv("DIFFVQA_CACHE_HOME")
    assert sample.default_root() == sample.Path.home() / ".cache" / "diffvqa-cache" / "sample-v3"


def test_distortions_all_remove_detail(two_roots):
    """Every distortion lowers detail (mean absolute horizontal gradient of the decoded clip) monotonically
    with strength, except noise (blur plus grain), so quality has one consistent direction in the
    features (sample-v3's design)."""
    root = two_roots[0]
    specs = plan()

    def detail(spec):
        frames, _, _, _ = load_video_frames(root / spec.video, n_frames=2)
        return np.abs(np.diff(frames.astype(float), axis=2)).mean()

    for content in CONTENTS[:2]:
        clean = [detail(s) for s in specs if s.content == content and s.distortion == "pristine"]
        for distortion in DISTORTIONS:
            graded = [detail(s) for s in sorted(specs, key=lambda s: s.strength)
                      if s.content == content and s.distortion == distortion]
            if distortion == "noise":  # grain adds gradient energy back: the one non-monotone distortion
                continue
            values = clean + graded
            assert all(x > y for x, y in zip(values, values[1:])), (content, distortion, values)
