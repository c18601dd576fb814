"""Tests for diffvqa_cache.training.metrics.

Golden values for the fixtures (first 60 rows of the published DOVER predictions, `pred_technical` vs `mos`)
were computed once with a separate script: scipy.stats spearmanr / kendalltau (tau-b) / pearsonr, and
scipy.optimize.curve_fit of the 4-parameter logistic with start [max(mos), min(mos), mean(pred), 0.5].
"""

from pathlib import Path

import numpy as np
import pytest

from diffvqa_cache.errors import UserInputError
from diffvqa_cache.training.metrics import (
    METRIC_KEYS,
    compute_metrics,
    compute_metrics_ids,
    fit_logistic,
    format_metrics,
    logistic_4,
    metrics_from_csv,
    summarize,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "predictions"
REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "predictions"

# file: (n, srcc, krcc, plcc after fit, plcc_raw, rmse after fit)
GOLDEN_EXCERPTS = {
    "dover_KoNViD-1k_first60.csv": (60, 0.8498499451176612, 0.6742236685352632, 0.8539099623709383,
                                    0.8471933608914158, 0.34244381376527533),
    "dover_LIVE-VQC_first60.csv": (60, 0.8164490136148932, 0.6112994350282486, 0.827622466796704,
                                   0.8087021551416697, 8.602336224803551),
}

# The README table of /work/shared/realdata/predictions (n, SRCC, KRCC, PLCC raw, PLCC 4-param, RMSE 4-param)
README_TABLE = {
    "dover_KoNViD-1k.csv": (1200, 0.8613, 0.6726, 0.8554, 0.8596, 0.3274),
    "dover_LIVE-VQC.csv": (585, 0.8243, 0.6330, 0.8420, 0.8435, 9.1617),
    "dover_YouTube-UGC.csv": (1147, 0.7264, 0.5297, 0.7400, 0.7404, 0.4387),
    "dover_LSVQ-test.csv": (7186, 0.8776, 0.6950, 0.8783, 0.8783, 5.0271),
    "dover_LSVQ-1080p.csv": (3573, 0.7780, 0.5866, 0.8120, 0.8148, 6.0245),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_EXCERPTS))
def test_golden_excerpts(name):
    n, srcc, krcc, plcc, plcc_raw, rmse = GOLDEN_EXCERPTS[name]
    m = metrics_from_csv(FIXTURES / name, pred_col="pred_technical", mos_col="mos")
    assert m["n"] == n
    assert m["srcc"] == pytest.approx(srcc, abs=1e-9)
    assert m["krcc"] == pytest.approx(krcc, abs=1e-9)
    assert m["plcc_raw"] == pytest.approx(plcc_raw, abs=1e-9)
    # fitted metrics: allow optimizer differences across scipy versions below the 4th decimal
    assert m["plcc"] == pytest.approx(plcc, abs=5e-5)
    assert m["rmse"] == pytest.approx(rmse, abs=5e-5 * max(1.0, rmse))


@pytest.mark.skipif(not REALDATA.is_dir(), reason="shared real data not available")
@pytest.mark.parametrize("name", sorted(README_TABLE))
def test_readme_table_full_files(name):
    n, srcc, krcc, plcc_raw, plcc, rmse = README_TABLE[name]
    m = metrics_from_csv(REALDATA / name, pred_col="pred_technical")
    assert m["n"] == n
    got = (m["srcc"], m["krcc"], m["plcc_raw"], m["plcc"], m["rmse"])
    assert [round(v, 4) for v in got] == [srcc, krcc, plcc_raw, plcc, rmse]


def _independent(pred, mos):
    """Straightforward numpy versions, written without scipy.stats."""
    def ranks(a):  # average ranks for ties
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(1, len(a) + 1)
        for v in np.unique(a):
            idx = a == v
            r[idx] = r[idx].mean()
        return r

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a @ b) / np.sqrt((a @ a) * (b @ b)))

    dx = np.sign(pred[:, None] - pred[None, :])
    dy = np.sign(mos[:, None] - mos[None, :])
    tau_b = (dx * dy).sum() / np.sqrt((dx != 0).sum() * (dy != 0).sum())  # Kendall tau-b over all pairs

    from scipy.optimize import curve_fit

    def f(x, b1, b2, b3, b4):
        return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))

    b, _ = curve_fit(f, pred, mos, p0=[mos.max(), mos.min(), pred.mean(), 0.5], maxfev=100000)
    fitted = f(pred, *b)
    return {
        "srcc": pearson(ranks(pred), ranks(mos)),
        "krcc": float(tau_b),
        "plcc": pearson(fitted, mos),
        "plcc_raw": pearson(pred, mos),
        "rmse": float(np.sqrt(np.mean((fitted - mos) ** 2))),
    }


def test_full_size_pattern_matches_independent_computation():
    # same shape as the real files: 1200 videos, MOS 1-5 rounded (many ties), small negative predictions
    rng = np.random.default_rng(0)
    mos = np.round(rng.uniform(1, 5, 1200), 2)
    pred = np.round(-0.2 + 0.03 * mos + rng.normal(0, 0.03, 1200), 4)
    m = compute_metrics(pred, mos)
    ref = _independent(pred, mos)
    assert m["n"] == 1200
    for key in METRIC_KEYS:
        assert m[key] == pytest.approx(ref[key], abs=1e-6), key
    assert all(type(m[k]) is float for k in METRIC_KEYS) and type(m["n"]) is int


def test_perfect_monotone_predictions():
    mos = np.linspace(1, 5, 50)
    m = compute_metrics(np.exp(mos), mos)  # monotone but not linear
    assert m["srcc"] == pytest.approx(1.0)
    assert m["krcc"] == pytest.approx(1.0)
    assert m["plcc_raw"] < 0.99  # raw Pearson sees the curvature
    assert m["plcc"] > m["plcc_raw"]


def test_logistic_4_uses_abs_b4():
    x = np.array([-1.0, 0.0, 1.0])
    assert np.allclose(logistic_4(x, 5, 1, 0, 0.5), logistic_4(x, 5, 1, 0, -0.5))
    assert logistic_4(0.0, 5, 1, 0, 0.5) == pytest.approx(3.0)
    assert logistic_4(1e6, 5, 1, 0, 0.5) == pytest.approx(5.0)  # no overflow error


def test_fit_logistic_falls_back_to_linear_with_warning(monkeypatch):
    import diffvqa_cache.training.metrics as metrics

    def broken(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(metrics, "curve_fit", broken)
    pred = np.array([0.0, 1.0, 2.0, 3.0])
    mos = np.array([1.0, 3.0, 5.0, 7.0])
    with pytest.warns(RuntimeWarning, match="linear fit"):
        fitted = fit_logistic(pred, mos)
    assert np.allclose(fitted, mos)


def test_input_errors():
    with pytest.raises(UserInputError, match="3 values but mos has 4"):
        compute_metrics([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(UserInputError, match="at least 3"):
        compute_metrics([1, 2], [1, 2])
    with pytest.raises(UserInputError, match=r"pred has 2 NaN/Inf value\(s\) at positions 1, 3"):
        compute_metrics([1, np.nan, 3, np.inf, 5], [1, 2, 3, 4, 5])
    with pytest.raises(UserInputError, match="identical"):
        compute_metrics([1, 1, 1, 1], [1, 2, 3, 4])


def test_nan_reported_with_ids():
    ids = ["A001.mp4", "A002.mp4", "A003.mp4", "A004.mp4"]
    with pytest.raises(UserInputError, match=r"pred has 1 NaN/Inf value\(s\) at videos A003.mp4"):
        compute_metrics_ids([0.1, 0.2, float("nan"), 0.4], [1, 2, 3, 4], ids)
    m = compute_metrics_ids([0.1, 0.2, 0.3, 0.5], [1, 2, 3, 4], ids)
    assert m["srcc"] == pytest.approx(1.0)


def _write(tmp_path, text, name="preds.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="nope.csv: file not found"):
        metrics_from_csv(tmp_path / "nope.csv")


def test_csv_missing_column_lists_columns(tmp_path):
    p = _write(tmp_path, "video,mos,score\na,1,0.1\nb,2,0.2\nc,3,0.3\n")
    with pytest.raises(UserInputError, match=r"preds.csv: no column 'pred' \(columns found: video, mos, score\)"):
        metrics_from_csv(p)
    with pytest.warns(RuntimeWarning, match="too few"):  # 3 rows: linear fallback
        assert metrics_from_csv(p, pred_col="score")["srcc"] == pytest.approx(1.0)


def test_csv_non_numeric_names_line_and_value(tmp_path):
    p = _write(tmp_path, "video,mos,pred\na,1,0.1\nb,2,oops\nc,3,0.3\nd,4,\n")
    with pytest.raises(UserInputError, match=r"preds.csv: column 'pred' has 2 .*line 3 \('oops'\), line 5 \(''\)"):
        metrics_from_csv(p)


def test_csv_inf_names_video(tmp_path):
    p = _write(tmp_path, "video,mos,pred\na,1,0.1\nb,2,inf\nc,3,0.3\n")
    with pytest.raises(UserInputError, match=r"preds.csv: column 'pred' has 1 NaN/Inf value\(s\): line 3 \(b\)"):
        metrics_from_csv(p)


def test_csv_too_few_rows(tmp_path):
    p = _write(tmp_path, "video,mos,pred\na,1,0.1\nb,2,0.2\n")
    with pytest.raises(UserInputError, match="preds.csv: 2 data row"):
        metrics_from_csv(p)


def test_csv_empty_file(tmp_path):
    p = _write(tmp_path, "")
    with pytest.raises(UserInputError, match="preds.csv: not a readable CSV"):
        metrics_from_csv(p)


def test_summarize_median_mean_std():
    splits = [{k: v for k in METRIC_KEYS} for v in (0.1, 0.2, 0.6)]
    s = summarize(splits)
    assert s["n_splits"] == 3
    for key in METRIC_KEYS:
        assert s[key]["median"] == pytest.approx(0.2)
        assert s[key]["mean"] == pytest.approx(0.3)
        assert s[key]["std"] == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=0))  # population std
    with pytest.raises(UserInputError):
        summarize([])
    with pytest.raises(UserInputError, match="lack the metric 'rmse'"):
        summarize([{"srcc": 1, "krcc": 1, "plcc": 1, "plcc_raw": 1}])


def test_format_metrics():
    line = format_metrics({"n": 60, "srcc": 0.84985, "krcc": 0.6742, "plcc": 0.8539, "plcc_raw": 0.8472,
                           "rmse": 0.34244})
    assert line == "n=60  SRCC=0.8498  KRCC=0.6742  PLCC=0.8539  PLCC_RAW=0.8472  RMSE=0.3424"
    table = format_metrics(summarize([{k: 0.5 for k in METRIC_KEYS}] * 2))
    assert "2 splits" in table and "SRCC" in table and "0.5000" in table
    assert len(table.splitlines()) == 1 + len(METRIC_KEYS)


def test_a_flat_logistic_fit_falls_back_to_the_linear_one_instead_of_a_nan_plcc():
    """Predictions that barely follow the MOS (a toy model's LSVQ -> LIVE-VQC cell) made the 4-parameter fit
    flat at the mean: PLCC was NaN. The linear fit's PLCC is |raw Pearson|."""
    pred = [83.2213, 72.7884, 81.6219, 82.1496, 75.5536, 72.2259, 84.8528, 73.8834, 82.558, 81.2339, 76.913,
            69.504, 84.1376, 68.0728, 84.7399, 82.9662]
    mos = [26.625, 26.8, 26.3, 28.0, 5.5, 5.15, 6.025, 6.475, 6.6, 5.275, 54.9, 55.475, 55.3, 55.1, 56.175, 54.575]
    with pytest.warns(RuntimeWarning, match="flat"):
        m = compute_metrics(pred, mos)
    assert m["plcc"] == pytest.approx(abs(m["plcc_raw"])) and np.isfinite(m["rmse"])
