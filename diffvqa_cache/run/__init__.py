"""A fitted run: the folder `fit` writes and predict, report, reproduce and `score_cached` read (`folder.py`:
its layout, its record `RunConfig`, its manifest, its metrics `FitResult`, the checks before use, and
`check_resumable` for `fit --resume`; `summary.py`: the plan fit prints before training, the summary after).

Sits above `training` (the record holds the fit's settings; the split models are training's checkpoints)
and below `scoring`; `training` never imports it."""
