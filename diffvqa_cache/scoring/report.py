"""A fitted run's report: one self-contained HTML page (RUN/report.html, images inline as base64 PNG, no
script, no external asset) with the protocol and settings, per-split metrics and their median/spread, the
scatter, the learning curves, and the test videos the model gets most wrong with a thumbnail from the
cache's pixel copy. Written by `fit` at its end and by `diffvqa-cache report RUN`."""

from __future__ import annotations

import base64
import csv
import html
import io
import tempfile
from pathlib import Path

import numpy as np

from diffvqa_cache.cache.branches import BRANCHES
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.files import write_text_atomic
from diffvqa_cache.run.folder import RUN_FIX, FitResult, RunConfig, RunFolder
from diffvqa_cache.training.checkpoint import read_meta
from diffvqa_cache.training.metrics import METRIC_KEYS, SHORT_LABELS

REPORT_FILE = RunFolder.REPORT  # a run's page; a sweep's is named alike
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}tr.sum td{font-weight:bold;background:#fafafa}img{max-width:100%}
img.thumb{width:96px;image-rendering:pixelated}.note{color:#666;font-size:13px}code{font-size:12px}"""


def write_run_report(run: Path | str, out: Path | str | None = None, worst: int = 8) -> Path:
    """Write the report of run directory `run` to `out` (default RUN/report.html); return its path."""
    folder = RunFolder.open(run)
    cfg = folder.config()
    if not folder.has_results():
        raise UserInputError(f"{folder.path}: no {RunFolder.METRICS} / {RunFolder.PREDICTIONS} (the fit did not "
                             f"finish); rerun the fit with --resume, or {RUN_FIX}")
    out = Path(out) if out is not None else folder.file(RunFolder.REPORT)
    write_text_atomic(out, render(folder.path, cfg, folder.metrics(), folder.predictions(), worst))
    return out


def render(run: Path, cfg: RunConfig, metrics: FitResult, rows: list[dict], worst: int = 8) -> str:
    """The report page as a string."""
    e = html.escape
    c = cfg.cache
    title = f"DiffVQA run: {c.dataset}, protocol {cfg.protocol}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style>"
             f"</head><body><h1>{e(title)}</h1>",
             f"<p class='note'>run <code>{e(str(run.resolve()))}</code>, fingerprint <code>{e(cfg.fingerprint)}</code>, "
             f"package {e(cfg.package_version)}, {len(metrics.splits)} split(s), "
             f"{metrics.seconds if metrics.seconds is not None else float('nan'):.1f} s</p>"]
    parts += _protocol_section(cfg)
    parts += _metrics_section(metrics)
    parts += _plots_section(run, metrics, rows)
    parts += _worst_section(cfg, rows, worst)
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(header: list[str], body: list[list], classes: list[str] | None = None) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    lines = [f"<tr{f' class={chr(39)}{k}{chr(39)}' if k else ''}>" + "".join(f"<td>{x}</td>" for x in r) + "</tr>"
             for r, k in zip(body, classes or [""] * len(body))]
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _protocol_section(cfg: RunConfig) -> list[str]:
    e = html.escape
    c, fit = cfg.cache, cfg.fit
    train = cfg.training or fit.train
    protocol = {"random": f"{fit.splits} random splits by video, {fit.test_fraction:.0%} held out for testing each; "
                          "one model per split, metrics on each split's test part, median over splits",
                "lsvq": "the official LSVQ split: train -> test and test1080p",
                "cross": "train on the training cache, test on each --test-cache"}.get(cfg.protocol, cfg.protocol)
    stage1 = [("dataset", c.dataset), ("cache", cfg.cache_path), ("diffusion model", c.model_id),
              ("Controller", c.controller_id), ("MOS range", " - ".join(f"{v:g}" for v in c.mos_range)),
              ("view size", c.view_size), ("pixel copy", c.pixel_size),
              ("extraction", ", ".join(f"{k}={getattr(c.extract, k)}" for k in
                                       ("steps", "strength", "frames", "crops", "grid") if hasattr(c.extract, k)))]
    stage2 = [("regressor", ", ".join(f"{k}={v}" for k, v in fit.regressor.to_dict().items())),
              ("training", ", ".join(f"{k}={v}" for k, v in train.to_dict().items())),
              ("seed", fit.seed), ("data", ", ".join(f"{k}={v}" for k, v in cfg.data.items())),
              ("test caches", ", ".join(cfg.test_cache_paths) or "none"), ("fine-tuned from", cfg.init or "no")]
    rows = [[e(k), e(str(v))] for k, v in stage1 + stage2 if v not in ("", None)]
    return ["<h2 id='protocol'>Protocol and settings</h2>", f"<p>{e(cfg.protocol)}: {e(protocol)}.</p>",
            _table(["setting", "value"], rows)]


def _metrics_section(metrics: FitResult) -> list[str]:
    e = html.escape
    out = ["<h2 id='metrics'>Metrics per split</h2>",
           "<p class='note'>SRCC/KRCC: rank correlations of the predictions with MOS; PLCC(logistic): Pearson after "
           "the 4-parameter logistic fit (the paper's); RMSE on the MOS scale. Summary rows: over the splits "
           "(std: population, ddof 0).</p>"]
    for test, summary in metrics.summary.items():
        body = [[e(str(s["split"])), str(s.get("n_train", "")), str(s.get("best_epoch", ""))]
                + [f"{s[test][k]:.4f}" for k in METRIC_KEYS] for s in metrics.splits if test in s]
        kinds = [""] * len(body)
        for stat in ("median", "mean", "std"):
            body.append([stat, "", ""] + [f"{summary[k][stat]:.4f}" for k in METRIC_KEYS])
            kinds.append("sum")
        out += [f"<h3>test set: {e(test)}</h3>",
                _table(["split", "train videos", "kept epoch"] + [SHORT_LABELS[k] for k in METRIC_KEYS], body, kinds)]
    return out


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _plots_section(run: Path, metrics: FitResult, rows: list[dict]) -> list[str]:
    from diffvqa_cache.scoring.plots import learning_curves, scatter

    tests = list(metrics.summary)
    histories = {}
    for s in metrics.splits:
        model = RunFolder(run).model_file(s["split"])
        if model.is_file():
            histories[s["split"]] = read_meta(model).history
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = metrics.summary[tests[0]]["srcc"]["median"]
        scatter(tmp / "scatter.png", np.array([float(r["pred"]) for r in rows]), np.array([float(r["mos"]) for r in rows]),
                [r["split"] if len(tests) == 1 else r["test_set"] for r in rows],
                f"test predictions, median SRCC {first:.3f} ({tests[0]})")
        out = ["<h2 id='scatter'>Predictions against MOS</h2>",
               "<p class='note'>Every test prediction of every split (colour: split, or test set); dashed: "
               "prediction = MOS.</p>", f"<img alt='scatter' src='{_png(tmp / 'scatter.png')}'>"]
        out.append("<h2 id='learning'>Learning curves</h2>")
        if histories:
            learning_curves(tmp / "learning.png", histories)
            out.append(f"<img alt='learning curves' src='{_png(tmp / 'learning.png')}'>")
        else:
            out.append("<p class='note'>no split model found in models/: no training history to show.</p>")
    return out


def _thumbnail(caches: list, key: str) -> str | None:
    """A data URI of the middle sampled frame's view (first crop) from the first cache that holds `key`."""
    for cache in caches:
        try:
            feats = cache.read(key, tuple(f"{b}/pixels" for b in BRANCHES))  # the pixel copy only
        except KeyError:
            continue
        pixels = next((b.pixels for b in feats.branches.values() if getattr(b, "pixels", None) is not None), None)
        if pixels is None:
            return None
        view = np.asarray(pixels[len(pixels) // 2, 0])  # (3, P, P) uint8
        buf = io.BytesIO()
        from diffvqa_cache.scoring.plots import _plt

        _plt().imsave(buf, np.ascontiguousarray(view.transpose(1, 2, 0)), format="png")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return None


def worst_videos(rows: list[dict], n: int) -> list[dict]:
    """The `n` test videos farthest from their MOS: per (test set, video), the mean prediction over the
    splits that tested it, sorted by the absolute error."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["test_set"], r["video"]), []).append(r)
    videos = [{"video": v, "test_set": t, "mos": float(rs[0]["mos"]),
               "pred": float(np.mean([float(r["pred"]) for r in rs])), "splits": len(rs)} for (t, v), rs in by.items()]
    for v in videos:
        v["error"] = v["pred"] - v["mos"]
    return sorted(videos, key=lambda v: -abs(v["error"]))[:n]


def _worst_section(cfg: RunConfig, rows: list[dict], n: int) -> list[str]:
    from diffvqa_cache.cache.folder import FeatureCache

    e = html.escape
    caches, problems = [], []
    for path in [cfg.cache_path, *cfg.test_cache_paths]:
        try:
            caches.append(FeatureCache(path))
        except Exception as exc:  # a moved or deleted cache: the table without thumbnails
            problems.append(f"{path}: {str(exc).splitlines()[0]}")
    body = []
    for v in worst_videos(rows, n):
        uri = _thumbnail(caches, v["video"])
        thumb = f"<img class='thumb' alt='{e(v['video'])}' src='{uri}'>" if uri else "no thumbnail"
        body.append([thumb, e(v["video"]), e(v["test_set"]), f"{v['mos']:.3f}", f"{v['pred']:.3f}",
                     f"{v['error']:+.3f}", str(v["splits"])])
    out = [f"<h2 id='worst'>The {len(body)} test videos the model gets most wrong</h2>",
           "<p class='note'>Prediction: the mean over the splits that tested the video; thumbnail: the middle "
           "sampled frame of the cache's pixel copy.</p>",
           _table(["frame", "video", "test set", "MOS", "prediction", "error", "splits"], body)]
    if problems:
        out.append("<p class='note'>thumbnails unavailable: " + e("; ".join(problems)) + "</p>")
    return out


# ---------------------------------------------------------------- a sweep's report
def write_sweep_report(sweep: Path | str, out: Path | str | None = None) -> Path:
    """Write the report of sweep folder `sweep` (its results.csv and summary.csv) to `out` (default
    SWEEP/report.html): the configurations' medians with each split's values and range, and the chart."""
    sweep = Path(sweep)
    if not (sweep / "results.csv").is_file() or not (sweep / "summary.csv").is_file():
        raise UserInputError(f"{sweep}: no results.csv / summary.csv; pass a run directory written by `fit` or a "
                             "sweep folder written by `sweep`")
    with open(sweep / "results.csv", newline="") as f:
        results = list(csv.DictReader(f))
    with open(sweep / "summary.csv", newline="") as f:
        summary = [{**s, "srcc_median": _num(s.get("srcc_median")), "plcc_median": _num(s.get("plcc_median"))}
                   for s in csv.DictReader(f)]
    ok = [r for r in results if r.get("status") == "ok"]
    per_split = {s["config"]: {m: [_num(r[m]) for r in ok if r["config"] == s["config"]] for m in ("srcc", "plcc")}
                 for s in summary}
    e = html.escape
    title = f"DiffVQA sweep: {sweep.name}"
    body = []
    for s in summary:
        vals = [v for v in per_split[s["config"]]["srcc"] if np.isfinite(v)]
        spread = f"{min(vals):.4f} - {max(vals):.4f}" if vals else ""
        body.append([e(s["config"]), f"{s['srcc_median']:.4f}", f"{s['plcc_median']:.4f}", spread,
                     f"{np.std(vals):.4f}" if vals else "", " ".join(f"{v:.3f}" for v in vals),
                     e(str(s.get("n_failed", ""))), f"<code>{e(s.get('overrides', ''))}</code>"])
    from diffvqa_cache.scoring.plots import sweep_summary

    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "sweep.png"
        sweep_summary(chart, summary, f"{sweep.name}: test set of each split", per_split)
        img = _png(chart)
    page = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style>"
            f"</head><body><h1>{e(title)}</h1>",
            f"<p class='note'>folder <code>{e(str(sweep.resolve()))}</code>; {len(summary)} configurations, "
            f"{len(results)} tasks ({len(results) - len(ok)} failed); sorted by median SRCC over splits.</p>",
            "<h2 id='table'>Configurations</h2>",
            _table(["config", "median SRCC", "median PLCC", "SRCC range", "SRCC std", "SRCC per split", "failed",
                    "overrides"], body),
            "<h2 id='chart'>Medians and the spread over splits</h2>", f"<img alt='sweep chart' src='{img}'>",
            "</body></html>"]
    out = Path(out) if out is not None else sweep / REPORT_FILE
    write_text_atomic(out, "\n".join(page))
    return out


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def write_report(folder: Path | str, out: Path | str | None = None, worst: int = 8) -> Path:
    """The report of a run directory (`fit`) or of a sweep folder (`sweep`), whichever `folder` is."""
    folder = Path(folder)
    if folder.is_dir() and not RunFolder(folder).has_config() and (folder / "results.csv").is_file():
        return write_sweep_report(folder, out)
    return write_run_report(folder, out, worst)


def write_table_page(path: Path | str, title: str, note: str, header: list[str], body: list[list[str]],
                     images: list[Path] = ()) -> Path:
    """A self-contained HTML page of one table (cells are text, escaped here) and PNGs inline: the HTML
    twin of a markdown table (reproduce's table.md -> table.html)."""
    e = html.escape
    page = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style>"
            f"</head><body><h1>{e(title)}</h1>", f"<p class='note'>{e(note)}</p>",
            _table(header, [[e(str(c)) for c in row] for row in body])]
    page += [f"<img alt='{e(Path(p).stem)}' src='{_png(Path(p))}'>" for p in images]
    page.append("</body></html>")
    write_text_atomic(path, "\n".join(page))
    return Path(path)
