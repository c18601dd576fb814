"""The README's examples say what the code gives: the doctor output, predict's table and footer (built by
`format_table` from the README's own numbers) and the demo's run it comes from, and the `VideoScore` fields and
`to_pandas` columns of the Python API."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest

from diffvqa_cache.scoring.scorer import FRAME_COLUMNS, VIDEO_COLUMNS, FrameScore, Spread, VideoScore

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> list[str]:
    """The lines of the code block that holds `marker`, from the marker's line to the block's end."""
    start = README.rindex("\n", 0, README.index(marker)) + 1
    return README[start:README.index("```", start)].rstrip("\n").splitlines()


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.replace("\n", " ").split(",")]


# ---------------------------------------------------------------- doctor
DOCTOR = "$ diffvqa-cache doctor --model tiny"
MACHINE = {"mamba", "disk", "scheduler", "decord"}  # depend on the machine: compiler, disk speed, SLURM, x86_64


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """`doctor --model tiny` here, with the GPU hidden (the README shows a machine without one)."""
    import torch

    from diffvqa_cache import doctor

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "is_available", lambda: False)
    try:
        return doctor.run_doctor(tmp_path_factory.mktemp("doctor") / "cache", "tiny")
    finally:
        mp.undo()


def _readme_doctor() -> list[tuple[str, str, str]]:
    lines = _block_after(DOCTOR)[1:]
    assert lines[-1].startswith("essentials ok"), lines[-1]
    return [(line[:8].strip(), line[8:21].strip(), line[21:]) for line in lines[:-1]]


def test_the_doctor_example_has_doctors_checks_in_order_with_their_status(report):
    from diffvqa_cache.doctor import format_report

    shown = _readme_doctor()
    want = format_report(report)
    assert [name for _, name, _ in shown] == [c.name for c in report.checks], want
    for (status, name, _), check in zip(shown, report.checks):
        if name not in MACHINE:
            assert status == check.status, f"README says {status} for {name}, doctor says {check.status}:\n{want}"


def test_the_doctor_examples_fixed_lines_are_doctors_own(report):
    """Lines that do not depend on versions or the machine: the GPU advice (with its measured figure) and the
    tiny model; and no machine's own path."""
    from diffvqa_cache.doctor import format_report

    lines = format_report(report).splitlines()
    readme = _block_after(DOCTOR)[1:]
    for name in ("gpu", "model"):
        assert next(x for x in readme if x[8:21].strip() == name) == next(x for x in lines if x[8:21].strip() == name)
    assert readme[-1] == lines[-1]
    for line in readme:
        assert not re.search(r"/(home|work|root|tmp|Users)/", line), line


# ---------------------------------------------------------------- predict
PREDICT = "better than  novelty"  # in the header line of predict's table


def _readme_predict() -> tuple[list[str], list[str]]:
    lines = _block_after(PREDICT)
    table = [line for line in lines if not line.startswith(("score:", "range ="))]
    return table, lines[len(table):]


def _scores_from_readme():
    """The README's predict example as `Scores` (its rounded numbers, as predict shows them)."""
    from diffvqa_cache.scoring.scorer import Reference, Scale, Scores

    table, footer = _readme_predict()
    scale = re.search(r"score: MOS ([\d.]+)-([\d.]+) of (\S+);", footer[0])
    reference = re.search(r"better than: the share of (.+) scored lower$", footer[0]).group(1)
    models = int(re.search(r"range = min-max of the (\d+) split models' scores", footer[1]).group(1))
    flagged = float(re.search(r"UNFAMILIAR above ([\d.]+)$", footer[1]).group(1))
    out = Scores()
    for line in table[1:]:
        video, score, low_high, norm, better, novelty, *flag = line.split()
        low, high = map(float, low_high.split("-"))
        out.append(VideoScore(video, f"/clips/{video}.mp4", float(score), float(norm), float(better.rstrip("%")),
                              Spread(0.0, low, high, models), float(novelty.rstrip("%")), flag == ["UNFAMILIAR"]))
    out.scale = Scale(scale.group(3), float(scale.group(1)), float(scale.group(2)))
    out.reference = Reference(reference, ())
    out.unfamiliar_percentile = flagged
    return out, models


def test_the_predict_example_is_what_predict_prints_for_those_numbers():
    from diffvqa_cache.scoring.results import format_table

    scores, _ = _scores_from_readme()
    table, footer = _readme_predict()
    assert format_table(scores).splitlines() == table + footer


def test_the_predict_example_is_the_demos_run():
    """The note under the example names the predict command: its run is the demo's (`demo-out/run`), so the
    footer has as many split models as the demo fits, the sample's scale, the run's name, and at most the
    sample's videos as training videos."""
    from diffvqa_cache.datasets.sample import plan
    from pipelines.demo import run_demo

    scores, models = _scores_from_readme()
    note = README[README.index(PREDICT):]
    note = note[note.index("```") + 3:note.index("\n\n", note.index("```"))]
    predict = re.search(r"`diffvqa-cache\s+predict\s[^`]*--run\s+(\S+)`", note)
    assert predict and predict.group(1) == "demo-out/run", note
    demo = inspect.signature(run_demo).parameters
    assert models == demo["splits"].default and demo["out"].default == Path("demo-out")
    assert (scores.scale.low, scores.scale.high, scores.scale.dataset) == (1.0, 5.0, "sample")
    trained, name = re.search(r"the (\d+) training videos of run (\S+) \(sample\)", scores.reference.name).groups()
    assert name == "run" and 0 < int(trained) <= len(plan())
    assert [s.video for s in scores][-2:] == ["sample_000", "sample_050"]


# ---------------------------------------------------------------- the Python API
def test_the_videoscore_fields_and_to_pandas_columns_are_the_codes():
    text = README[README.index("- `VideoScore` fields:"):]
    listed = re.search(r"`VideoScore` fields: `([^`]+)`", text).group(1)
    assert _words(listed) == [f.name for f in fields(VideoScore)]
    spread = re.search(r"`Spread\(([^)]+)\)`", text).group(1)
    assert _words(spread) == [f.name for f in fields(Spread)]
    frame = re.search(r"`FrameScore\(([^)]+)\)`", text).group(1)
    assert _words(frame) == [f.name for f in fields(FrameScore)]
    columns = re.search(r"`to_pandas\(\)` columns: `([^`]+)`", text).group(1)
    assert _words(columns) == VIDEO_COLUMNS
    per_frame = re.search(r"`per_frame=True` also\s+`([^`]+)`", text).group(1)
    assert _words(per_frame) == FRAME_COLUMNS
