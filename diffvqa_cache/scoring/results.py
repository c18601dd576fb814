"""A predict results file (`ResultsFile`: CSV, or JSON by suffix, written as scoring goes and read back
so that the same command run again scores only what it lacks) and the table `predict` prints.

The file is rewritten atomically with everything so far at most every `FLUSH_SECONDS` and at the end,
so it is always complete: a killed run loses at most that much work, and the same command run again
scores only the videos the file does not hold yet (failed ones are retried).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from diffvqa_cache.errors import UserInputError
from diffvqa_cache.files import write_csv_atomic, write_json_atomic
from diffvqa_cache.progress import err
from diffvqa_cache.scoring.scorer import FRAME_COLUMNS, VIDEO_COLUMNS, Reference, Scale, Scores, Spread, VideoScore

FLUSH_SECONDS = 10.0
SPREAD_NOTE = "range = min-max of the split models' scores (model disagreement, not a MOS confidence interval)"


def describe_output(run: Path | str, scale: Scale, per_frame: bool, percentile: float,
                    reference: Reference | None = None) -> dict:
    """What the numbers of a results file mean (the top of its JSON form)."""
    return {"run": str(run), "scale": scale.describe(), "mos_low": scale.low, "mos_high": scale.high,
            "normalised_score": f"(score - {scale.low:g}) / ({scale.high:g} - {scale.low:g}), clipped to 0-1",
            "percentile": reference and f"better than this share (%) of {reference.name}",
            "spread": SPREAD_NOTE, "per_frame": per_frame,
            "unfamiliar": f"novelty above the {percentile:g}th percentile of the training videos' own distances"}


def to_json(results: Scores, run: Path | str, per_frame: bool) -> dict:
    return {**describe_output(run, results.scale, per_frame, results.unfamiliar_percentile, results.reference),
            "videos": [r.to_dict(frames=per_frame) for r in results]}


class ResultsFile:
    """A predict results file: CSV (one row per video, or per frame with `per_frame`) or JSON (nested)."""

    def __init__(self, path: Path, run: Path, scale: Scale, per_frame: bool, percentile: float, labels=None,
                 reference: Reference | None = None):
        self.path, self.run, self.per_frame, self.labels = Path(path), str(run), per_frame, labels
        self.scale, self.percentile = scale, percentile
        self.is_json = self.path.suffix.lower() == ".json"
        self.header = describe_output(run, scale, per_frame, percentile, reference)
        plain = VIDEO_COLUMNS + ["scale", "run"] + (FRAME_COLUMNS if per_frame else [])
        self.columns = plain[:3] + ["mos"] + plain[3:]  # the labels' MOS (--labels) beside the score
        older = [c for c in plain if c != "percentile"]  # written before the percentile column
        # a file written without --labels (or before the percentile) is read and extended
        self._accepted = (plain, self.columns, older, older[:3] + ["mos"] + older[3:])
        self.entries: dict[str, list] = {}  # path -> its rows (CSV dicts) or its JSON object, in file order
        self.scored: set[str] = set()  # paths with a score (not an error) in the file
        self.last_write = time.monotonic()
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        redo = f"pass another --output, or delete {self.path} to start over"
        try:
            if self.is_json:
                data = json.loads(self.path.read_text())
                if {k: data.get(k) for k in ("run", "per_frame")} != {"run": self.run, "per_frame": self.per_frame}:
                    raise UserInputError(f"{self.path} holds scores of run {data.get('run')} (per_frame="
                                         f"{data.get('per_frame')}), not of {self.run} (per_frame={self.per_frame}); {redo}")
                entries = [(v["path"], v, v.get("error") is None) for v in data["videos"]]
            else:
                text = self.path.read_text()

                def truncated(line: int) -> str:
                    return f"{self.path} is truncated or damaged (line {line} is incomplete); {redo}"

                if not text.endswith("\n"):  # every line this tool writes ends so (an empty file: cut at once)
                    raise UserInputError(truncated(len(text.splitlines())))
                reader = csv.DictReader(io.StringIO(text, newline=""))
                if reader.fieldnames not in self._accepted:
                    raise UserInputError(f"{self.path} has other columns than this command writes "
                                         f"(--per-frame {'on' if self.per_frame else 'off'}); {redo}")
                rows = list(reader)
                cut = next((i for i, r in enumerate(rows, 2) if None in r or None in r.values()), None)
                if cut is not None:
                    raise UserInputError(truncated(cut))
                if any(r["run"] != self.run for r in rows):
                    raise UserInputError(f"{self.path} holds scores of another run than {self.run}; {redo}")
                entries = [(r["path"], r, not r["error"]) for r in rows]
        except UserInputError:
            raise
        except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
            raise UserInputError(f"{self.path}: not a predict results file, or a truncated or damaged one "
                                 f"({type(exc).__name__}: {exc}); {redo}") from None
        for path, entry, ok in entries:
            self.entries.setdefault(path, []).append(entry)
            if ok:
                self.scored.add(path)

    def add(self, result: VideoScore) -> None:
        if self.is_json:
            self.entries[result.path] = [result.to_dict(frames=self.per_frame)]
        else:
            rows = result.frame_rows() if self.per_frame else [result.row()]
            self.entries[result.path] = [{**r, "scale": self.header["scale"], "run": self.run} for r in rows]
        if time.monotonic() - self.last_write >= FLUSH_SECONDS:
            self.write()

    def holds_all(self, files: list[Path]) -> bool:
        """Whether every one of `files` has a score in the file (nothing left to score)."""
        return all(str(p) in self.scored for p in files)

    def skip_scored(self, files: list[Path], ranking: Reference | None) -> tuple[list[Path], list[VideoScore]]:
        """(the `files` still to score, the file's results for the others, their percentile against
        `ranking`), and a line on stderr saying how many were already scored."""
        todo = [p for p in files if str(p) not in self.scored]
        earlier = [self.video_score(str(p)) for p in files if str(p) in self.scored]
        for e in earlier:  # ranked against this command's reference, whatever the file's run used
            e.percentile = ranking.percentile(e.score) if ranking else None
        err.print(f"{len(files) - len(todo)} of {len(files)} videos already scored in {self.path}; "
                  + (f"scoring the other {len(todo)}" if todo else "nothing left to score (the table is read from it)"))
        return todo, earlier

    def video_score(self, path: str) -> VideoScore:
        """The file's result for one scored video (frames left out), as the table shows it."""
        e = self.entries[path][0]

        def num(key):
            return None if e.get(key) in (None, "") else float(e[key])

        if self.is_json:
            s = e.get("spread")
            spread = Spread(s["std"], s["min"], s["max"], s["models"]) if s else None
            unfamiliar = e.get("unfamiliar")
        else:
            spread = Spread(num("spread_std"), num("spread_min"), num("spread_max"), int(num("models"))) \
                if e.get("models") else None
            unfamiliar = {"True": True, "False": False}.get(e.get("unfamiliar"))
        return VideoScore(e["video"], path, num("score"), num("normalised_score"), num("percentile"), spread,
                          num("novelty_percentile"), unfamiliar, error=e.get("error") or None,
                          decoder=e.get("decoder") or None)

    def write(self) -> None:
        entries = [e for group in self.entries.values() for e in group]
        for e in entries:  # the MOS of the label file, when given; else what an earlier --labels run wrote
            if self.labels is not None:
                e["mos"] = self.labels.match(e["path"])
            e.setdefault("mos", None)
        if self.is_json:
            write_json_atomic(self.path, {**self.header, "videos": entries})
        else:
            write_csv_atomic(self.path, self.columns, entries)
        self.last_write = time.monotonic()


def check_against_labels(results: Scores, labels) -> str:
    """predict --labels: SRCC/PLCC/KRCC/RMSE of the scores (this run's and those read from the results
    file) against the label file's MOS."""
    from diffvqa_cache.training.metrics import format_label_check, metrics_against_labels

    scored = [r for r in shown(results) if r.error is None]
    m, unmatched = metrics_against_labels([r.path for r in scored], [r.score for r in scored], labels)
    return format_label_check(m, unmatched, labels)


def shown(results: Scores) -> Scores:
    """What the table shows: the videos read from the results file first, then this run's."""
    out = Scores(list(getattr(results, "earlier", [])) + list(results))
    out.scale, out.unfamiliar_percentile = results.scale, results.unfamiliar_percentile
    out.reference = results.reference
    return out


def format_table(results: Scores, labels=None) -> str:
    """The short table `predict` prints: video, score, range, normalised score, novelty and flag (with
    `labels`, a datasets.LabelTable: and the MOS); the videos read from the results file included."""
    results = shown(results)
    scale, percentile = results.scale, results.unfamiliar_percentile
    if not results:
        return "no videos scored in this run"
    rows = [("video", "score", "range", "0-1", "better than", "novelty") + (("MOS",) if labels else ()) + ("",)]
    for r in results:
        mos = () if labels is None else ("-" if (m := labels.match(r.path)) is None else f"{m:g}",)
        if r.error is not None:
            rows.append((r.video, "failed", "", "", "", "") + mos + (r.error,))
            continue
        s = r.spread
        rows.append((r.video, f"{r.score:.3f}", f"{s.min:.2f}-{s.max:.2f}" if s.models > 1 else "-",
                     "-" if r.normalised is None else f"{r.normalised:.3f}",
                     "-" if r.percentile is None else f"{r.percentile:.0f}%",
                     "-" if r.novelty is None else f"{r.novelty:.0f}%") + mos +
                    ("UNFAMILIAR" if r.unfamiliar else "",))
    n = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(n)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + "  " + row[n]
             for row in rows]
    models = next((r.spread.models for r in results if r.spread), 0)
    ref = results.reference
    lines.append(f"score: {scale.describe()}; 0-1: normalised on that range; better than: "
                 + (f"the share of {ref.name} scored lower" if ref else "- (the run records no training MOS: refit it, "
                    "or pass --reference RUN_OR_CSV)"))
    lines.append(f"{SPREAD_NOTE.replace('split models', f'{models} split models')};"
                 f" novelty: percentile among the training videos' own distances, UNFAMILIAR above {percentile:g}")
    return "\n".join(line.rstrip() for line in lines)


def predict_json(results: Scores, run: Path | str, per_frame: bool, labels=None) -> dict:
    """What `predict --json` prints: the videos read from the results file and this run's (with `labels`,
    a datasets.LabelTable: each video's MOS)."""
    data = to_json(shown(results), run, per_frame)
    if labels is not None:
        for v in data["videos"]:
            v["mos"] = labels.match(v["path"])
    return data


def scored_line(results: Scores, output: Path | str | None) -> str:
    """`predict`'s last line on stderr: how many videos were scored, failed and read from `output`."""
    failed = sum(r.error is not None for r in results)
    done = f"{len(results) - failed} videos scored in this run" + (f", {failed} failed (reasons above)" if failed else "") \
        + (f", {len(results.earlier)} read from {output}" if getattr(results, "earlier", None) else "")
    return done if output is None else f"wrote {output}: {done}"
