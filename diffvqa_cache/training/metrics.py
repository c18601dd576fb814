"""Quality-assessment metrics: SRCC, KRCC, PLCC (after the 4-parameter logistic fit), raw PLCC, RMSE.

Conventions (docs/evaluation.md, "Metrics"):
- SRCC (Spearman, average ranks for ties) and KRCC (Kendall tau-b, scipy's default) on the raw predictions.
- PLCC and RMSE on the predictions mapped through the 4-parameter logistic
  f(x) = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|)), fitted with start [max(mos), min(mos), mean(pred), 0.5].
  RMSE is in MOS units.
- plcc_raw: Pearson on the raw predictions (what DOVER, FAST-VQA and Q-Align report).
- summarize(): std is the population std (ddof=0) over the splits.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

from diffvqa_cache.errors import UserInputError

METRIC_KEYS = ("srcc", "krcc", "plcc", "plcc_raw", "rmse")
MIN_VIDEOS = 3  # the fewest videos the correlations are computed on (a test set, a validation set)
# What each key means (written into a run's metrics.json), and its short label in summaries and tables.
METRIC_LABELS = {
    "srcc": "Spearman rank correlation of the raw predictions",
    "krcc": "Kendall rank correlation (tau-b) of the raw predictions",
    "plcc": "Pearson correlation after the 4-parameter logistic fit (as in the DiffVQA paper's tables)",
    "plcc_raw": "Pearson correlation of the raw predictions (as DOVER, FAST-VQA and Q-Align report)",
    "rmse": "root mean square error after the 4-parameter logistic fit, in MOS units",
}
SHORT_LABELS = {"srcc": "SRCC", "krcc": "KRCC", "plcc": "PLCC(logistic)", "plcc_raw": "PLCC(raw)", "rmse": "RMSE"}

_MAX_LISTED = 10  # how many bad positions / ids an error message names


def logistic_4(x, b1, b2, b3, b4):
    """4-parameter logistic: b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))."""
    x = np.asarray(x, dtype=float)
    with np.errstate(over="ignore"):  # exp overflow -> inf -> the b2 asymptote, which is correct
        return b2 + (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4)))


def fit_logistic(pred, mos) -> np.ndarray:
    """Map `pred` onto the MOS scale; returns the fitted predictions (same length as `pred`).

    Fits logistic_4 with scipy's curve_fit (start [max(mos), min(mos), mean(pred), 0.5]). If the fit
    fails or gives non-finite values, warns and falls back to a least-squares linear fit.
    """
    pred = np.asarray(pred, dtype=float)
    mos = np.asarray(mos, dtype=float)
    p0 = [mos.max(), mos.min(), pred.mean(), 0.5]
    try:
        if len(pred) < 4:
            raise RuntimeError(f"{len(pred)} points are too few for 4 parameters")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # "covariance could not be estimated"
            params, _ = curve_fit(logistic_4, pred, mos, p0=p0, maxfev=100000)
        fitted = logistic_4(pred, *params)
        if not np.all(np.isfinite(fitted)):
            raise RuntimeError("the logistic fit gave non-finite values")
        if np.ptp(fitted) <= 1e-9 * max(1.0, float(np.abs(fitted).max())):  # flat at the mean: PLCC undefined
            raise RuntimeError("the logistic fit is flat (predictions and MOS barely correlate)")
        return fitted
    except (RuntimeError, ValueError, FloatingPointError) as exc:
        warnings.warn(
            f"4-parameter logistic fit failed ({exc}); using a linear fit for PLCC/RMSE instead",
            RuntimeWarning,
            stacklevel=2,
        )
        slope, intercept = np.polyfit(pred, mos, 1)
        return slope * pred + intercept


def _as_vector(values, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{name} must be numbers ({exc}); convert the values to floats first") from None
    if arr.ndim != 1:
        raise UserInputError(f"{name} must be a 1-D sequence, got shape {arr.shape}; flatten it first")
    return arr


def _list(items) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... ({len(items) - _MAX_LISTED} more)"
    return shown


def _check(pred, mos, ids=None) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_vector(pred, "pred")
    mos = _as_vector(mos, "mos")
    if len(pred) != len(mos):
        raise UserInputError(
            f"pred has {len(pred)} values but mos has {len(mos)}; pass one prediction per video"
        )
    if ids is not None and len(ids) != len(pred):
        raise UserInputError(f"ids has {len(ids)} entries but pred has {len(pred)}; pass one id per video")
    for name, arr in (("pred", pred), ("mos", mos)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            where = f"videos {_list(ids[i] for i in bad)}" if ids is not None else f"positions {_list(bad)}"
            raise UserInputError(
                f"{name} has {len(bad)} NaN/Inf value(s) at {where}; drop or fix those videos first"
            )
    if len(pred) < MIN_VIDEOS:
        raise UserInputError(f"need at least {MIN_VIDEOS} videos to compute metrics, got {len(pred)}")
    for name, arr in (("pred", pred), ("mos", mos)):
        if np.all(arr == arr[0]):
            raise UserInputError(
                f"all {len(arr)} {name} values are identical ({arr[0]}); correlations are undefined"
            )
    return pred, mos


def _metrics(pred: np.ndarray, mos: np.ndarray) -> dict:
    fitted = fit_logistic(pred, mos)
    return {
        "n": int(len(pred)),
        "srcc": float(stats.spearmanr(pred, mos)[0]),
        "krcc": float(stats.kendalltau(pred, mos)[0]),  # tau-b (scipy default), as in the golden table
        "plcc": float(stats.pearsonr(fitted, mos)[0]),
        "plcc_raw": float(stats.pearsonr(pred, mos)[0]),
        "rmse": float(np.sqrt(np.mean((fitted - mos) ** 2))),
    }


def compute_metrics(pred, mos) -> dict:
    """Metrics of `pred` against `mos`: keys n, srcc, krcc, plcc, plcc_raw, rmse (python int/floats)."""
    return _metrics(*_check(pred, mos))


def compute_metrics_ids(pred, mos, ids) -> dict:
    """Like compute_metrics, but NaN/Inf errors name the offending video ids."""
    ids = list(ids)
    return _metrics(*_check(pred, mos, ids))


def summarize(per_split: list[dict]) -> dict:
    """Median, mean and population std (ddof=0) of each metric over splits, plus n_splits."""
    if not per_split:
        raise UserInputError("no splits to summarize; pass a non-empty list of metric dicts")
    out = {}
    for key in METRIC_KEYS:
        missing = [i for i, m in enumerate(per_split) if key not in m]
        if missing:
            raise UserInputError(f"split(s) {_list(missing)} lack the metric '{key}'; pass compute_metrics() results")
        vals = np.array([m[key] for m in per_split], dtype=float)
        out[key] = {
            "median": float(np.median(vals)),
            "mean": float(np.mean(vals)),
            "std": float(np.std(vals, ddof=0)),
        }
    out["n_splits"] = len(per_split)
    return out


def read_predictions(path, columns, numeric) -> tuple[pd.DataFrame, dict]:
    """A predictions CSV (header row): the table as text, and the `numeric` columns as float arrays
    (errors name the line, and the video when there is a `video` column). All `columns` must exist."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found; pass the path of a predictions CSV")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{path}: not a readable CSV ({first}); check the file format") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in columns:
        if col not in df.columns:
            raise UserInputError(
                f"{path}: no column '{col}' (columns found: {', '.join(df.columns)}); pass the right column name"
            )
    if len(df) < 3:
        raise UserInputError(f"{path}: {len(df)} data row(s), need at least 3 to compute metrics")

    values = {}
    for col in numeric:
        raw = df[col].str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        bad = raw[num.isna()]
        if len(bad):
            # line numbers as in a text editor: the header is line 1
            where = _list(f"line {i + 2} ({v!r})" for i, v in bad.items())
            raise UserInputError(
                f"{path}: column '{col}' has {len(bad)} missing or non-numeric value(s): {where}; fix those rows"
            )
        arr = num.to_numpy(dtype=float)
        inf = np.flatnonzero(~np.isfinite(arr))
        if len(inf):
            names = df["video"].iloc[inf] if "video" in df.columns else None
            where = _list(
                f"line {i + 2}" + (f" ({names.iloc[k]})" if names is not None else "") for k, i in enumerate(inf)
            )
            raise UserInputError(f"{path}: column '{col}' has {len(inf)} NaN/Inf value(s): {where}; fix those rows")
        values[col] = arr
    return df, values


def metrics_from_csv(path, pred_col="pred", mos_col="mos") -> dict:
    """Read a predictions CSV (header row) and compute metrics of `pred_col` against `mos_col`.

    If the file has a `video` column, NaN/Inf errors name the videos as well as the line numbers.
    """
    _, values = read_predictions(path, (pred_col, mos_col), (pred_col, mos_col))
    try:
        return compute_metrics(values[pred_col], values[mos_col])
    except UserInputError as exc:
        raise UserInputError(f"{path}: {exc}") from None


def metrics_per_split(path, pred_col="pred", mos_col="mos", split_col="split", set_col="test_set") -> dict | None:
    """A run's predictions.csv (several splits, each video once per split it was tested in) as `fit`
    reports it: {test set: {"splits": {split: metrics}, "summary": summarize()}}; None when the file has
    no `split_col`, or one split and one test set (then the pooled metrics are the split's)."""
    df, values = read_predictions(path, (pred_col, mos_col), (pred_col, mos_col))
    sets = df[set_col] if set_col in df.columns else pd.Series([""] * len(df))
    if split_col not in df.columns or (df[split_col].nunique() < 2 and sets.nunique() < 2):
        return None
    out = {}
    for test_set in dict.fromkeys(sets):
        per = {}
        for split in dict.fromkeys(df[split_col][sets == test_set]):
            rows = ((sets == test_set) & (df[split_col] == split)).to_numpy()
            try:
                per[split] = compute_metrics(values[pred_col][rows], values[mos_col][rows])
            except UserInputError as exc:
                raise UserInputError(f"{path}: split {split}{f' of {test_set}' if test_set else ''}: {exc}") from None
        out[test_set] = {"splits": per, "summary": summarize(list(per.values()))}
    return out


def format_per_split(by_set: dict) -> str:
    """`metrics_per_split` as text: each split's metrics, then median/mean/std over the splits."""
    lines = []
    for test_set, r in by_set.items():
        lines.append(f"per split, as fit reports it (not pooled){f': test set {test_set}' if test_set else ''}")
        lines += [f"  {name:10s} {format_metrics(m)}" for name, m in r["splits"].items()]
        lines.append(format_metrics(r["summary"]))
    return "\n".join(lines)


def metrics_against_labels(names, preds, labels) -> tuple[dict, list[str]]:
    """Metrics of `preds` (one per video of `names`: file names or paths) against the MOS a
    `datasets.LabelTable` gives them; also the names the label file does not list (left out)."""
    names = [str(n) for n in names]
    mos = [labels.match(n) for n in names]
    keep = [i for i, (m, p) in enumerate(zip(mos, preds)) if m is not None and p is not None and math.isfinite(p)]
    unmatched = [n for n, m in zip(names, mos) if m is None]
    if len(keep) < MIN_VIDEOS:
        first = f" (not listed: {_list(unmatched)})" if unmatched else ""
        raise UserInputError(f"only {len(keep)} of the {len(names)} scored videos have a MOS in {labels.file}{first}; "
                             f"need {MIN_VIDEOS} to compute metrics: check the names in its {labels.columns[0]!r} column")
    return compute_metrics_ids([preds[i] for i in keep], [mos[i] for i in keep], [names[i] for i in keep]), unmatched


def format_label_check(m: dict, unmatched: list[str], labels) -> str:
    """What `predict --labels` and `metrics --labels` print."""
    line = f"checked against {labels.describe()}: {m['n']} videos matched"
    if unmatched:
        line += f", {len(unmatched)} not listed there (left out: {_list(unmatched)})"
    return f"{line}\n{format_metrics(m)}"


def format_metrics(m: dict) -> str:
    """Human-readable text, 4 decimals: one line for compute_metrics() output, a table for summarize()."""
    if "n_splits" in m:
        lines = [f"{'metric':<9}{'median':>9}{'mean':>9}{'std':>9}   ({m['n_splits']} splits, std ddof=0)"]
        for key in METRIC_KEYS:
            s = m[key]
            lines.append(f"{key.upper():<9}{s['median']:>9.4f}{s['mean']:>9.4f}{s['std']:>9.4f}")
        return "\n".join(lines)
    parts = [f"n={m['n']}"] if "n" in m else []
    for key in METRIC_KEYS:
        v = m.get(key)
        if v is not None:
            parts.append(f"{key.upper()}={v:.4f}" if math.isfinite(v) else f"{key.upper()}=nan")
    return "  ".join(parts)


def metrics_report(file, pred: str | None = None, mos: str = "mos", labels=None, video_column: str | None = None,
                   mos_column: str | None = None, pooled: bool = False, as_json: bool = False) -> str:
    """What `metrics` prints for a CSV of predictions (text or JSON): against a label file's MOS (`labels`),
    per split and their median as fit reports them (a run's predictions.csv, unless `pooled`), else one set.
    `pred`: the prediction column (default: pred, else score)."""
    import json

    if pred is None:
        try:
            header = [str(c).strip() for c in pd.read_csv(file, nrows=0).columns]
        except Exception:  # noqa: BLE001 - read_predictions below says what is wrong with the file
            header = []
        pred = "score" if "pred" not in header and "score" in header else "pred"
    if labels is not None:
        from diffvqa_cache.datasets import read_labels

        table = read_labels(labels, video_column, mos_column)
        df, values = read_predictions(file, (pred,), (pred,))
        name = "path" if "path" in df.columns else "video" if "video" in df.columns else None
        if name is None:
            raise UserInputError(f"{file} has no video or path column to match with {labels}; add one")
        m, unmatched = metrics_against_labels(df[name].tolist(), values[pred].tolist(), table)
        return json.dumps({**m, "labels": str(table.file), "not_listed": unmatched}) if as_json \
            else format_label_check(m, unmatched, table)
    by_split = None if pooled else metrics_per_split(file, pred_col=pred, mos_col=mos)
    if by_split is not None:
        return json.dumps(by_split) if as_json else format_per_split(by_split) \
            + "\n(--pooled: one set of metrics over all splits' rows)"
    m = metrics_from_csv(file, pred_col=pred, mos_col=mos)
    return json.dumps(m) if as_json else format_metrics(m)
