"""Score new videos end to end with a fitted run (no cache needed): `diffvqa_cache.scoring.scorer.Scorer`
does the work, `diffvqa_cache.scoring.results.ResultsFile` writes the results file as it goes and skips what
an earlier run of the same command already scored into it (its `format_table` is the table `predict`
prints). This module puts them together.
"""

from __future__ import annotations

from pathlib import Path

from diffvqa_cache.run.folder import RunConfig
from diffvqa_cache.scoring.results import ResultsFile
from diffvqa_cache.scoring.scorer import Reference, Scale, Scorer, Scores, expand_inputs


def run_predict(paths: list[Path], run: Path, model: str | None = None, controller: str | None = None,
                device: str = "auto", batch_size: int = 8, output: Path | None = None, per_frame: bool = False,
                plot_dir: Path | None = None, unfamiliar_percentile: float = 99.0, progress: bool = True,
                scorer: Scorer | None = None, labels=None, reference: Path | None = None) -> Scores:
    """Score every input video (files, folders) with the run; write `output` as it goes (with a `mos`
    column from `labels`, a datasets.LabelTable). Returns this invocation's results in input order (videos
    already scored in `output` are skipped, not returned); its `earlier` holds those, as read from the file.
    `reference`: rank the scores against this run or CSV of scores (default: the run's training MOS)."""
    run_cfg = RunConfig.read(run) if scorer is None else None  # a wrong --run or video path fails before the model loads
    files = expand_inputs(paths)
    sink, ranking = None, None
    if run_cfg is not None:  # the percentile's reference, checked before the model loads
        scale = Scale(run_cfg.cache.dataset, *run_cfg.score_scale)
        ranking = Reference.load(reference, scale) if reference is not None else \
            Reference.of_run(run) if run_cfg.train_mos else None
    if run_cfg is not None and output is not None and Path(output).is_file():  # a rerun: maybe nothing to do
        sink = ResultsFile(output, Path(run).expanduser().resolve(), scale, per_frame, float(unfamiliar_percentile),
                           labels, ranking)
    if sink is None or not sink.holds_all(files):  # the model is needed
        scorer = scorer or Scorer(run, device, model=model, controller=controller, batch_size=batch_size,
                                  unfamiliar_percentile=unfamiliar_percentile, progress=progress, reference=ranking)
        ranking = scorer.ranking
        sink = ResultsFile(output, scorer.run, scorer.scale, per_frame, scorer.unfamiliar_percentile, labels, ranking) \
            if output else None
    earlier = []
    if sink is not None and sink.scored:
        files, earlier = sink.skip_scored(files, ranking)
    try:
        if files:
            results = scorer.score(files, plot_dir=plot_dir, on_result=sink.add if sink else None)
        else:
            results = Scores()
            results.scale = sink.scale if sink else scorer.scale
            results.unfamiliar_percentile = sink.percentile if sink else scorer.unfamiliar_percentile
        results.reference = ranking
    finally:
        if sink is not None:
            sink.write()
    results.earlier = earlier
    return results
