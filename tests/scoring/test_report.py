"""The run report (one self-contained HTML page) and the plots read at a glance: timeline band and scale
limits, learning curves beyond the loss, the sweep chart's axis, spread and values."""

from __future__ import annotations

import base64
import csv
import html.parser
import json
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from diffvqa_cache.scoring import plots
from diffvqa_cache.scoring.report import worst_videos
from diffvqa_cache.scoring.scorer import FrameScore, Spread, VideoScore
from diffvqa_cache.training.settings import FitConfig
from pipelines.fit import run_fit

PNG = b"\x89PNG\r\n\x1a\n"


class Page(html.parser.HTMLParser):
    """Headings' ids, every <img> src, every table as rows of cell texts, and tags that would load
    something from outside the page."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.tables, self.external, self._cell = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h2",) and a.get("id"):
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
            if self._cell is not None:
                self._cell.append(f"[img:{a.get('alt')}]")
        if tag in ("script", "link", "iframe") or (tag != "img" and ("src" in a or "href" in a)):
            self.external.append(tag)
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def png_shape(uri: str) -> tuple:
    import io

    import matplotlib.image

    assert uri.startswith("data:image/png;base64,"), uri[:40]
    data = base64.b64decode(uri.split(",", 1)[1])
    assert data.startswith(PNG)
    return matplotlib.image.imread(io.BytesIO(data), format="png").shape


@pytest.fixture(scope="module")
def run_dir(sample_cache, fast_fit, tmp_path_factory):
    """A fast fit with a validation set carved (so the learning curves have a validation SRCC)."""
    out = tmp_path_factory.mktemp("run")
    cfg = FitConfig().with_overrides({**fast_fit, "train.val_fraction": 0.2})
    run_fit(sample_cache().cache_dir, out, cfg, progress=False)
    return out


def test_fit_writes_a_self_contained_report_with_every_section(run_dir, sample_cache):
    page = parse(run_dir / "report.html")
    assert page.ids == ["protocol", "metrics", "scatter", "learning", "worst"]
    assert page.external == [] and "http" not in (run_dir / "report.html").read_text().replace("http-equiv", "")
    assert all(png_shape(src) for src in page.images)  # every image inline and a decodable PNG
    # per-split metrics and their median/mean/std, as metrics.json has them
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = page.tables[1]
    assert table[0][:4] == ["split", "train videos", "kept epoch", "SRCC"]
    body = {r[0]: r for r in table[1:]}
    assert set(body) == {"split-00", "split-01", "median", "mean", "std"}
    for s in metrics["splits"]:
        assert float(body[s["split"]][3]) == pytest.approx(s["test"]["srcc"], abs=1e-4)
    assert float(body["median"][3]) == pytest.approx(metrics["summary"]["test"]["srcc"]["median"], abs=1e-4)
    assert float(body["std"][3]) == pytest.approx(metrics["summary"]["test"]["srcc"]["std"], abs=1e-4)
    # the settings say what was run
    settings = dict((r[0], r[1]) for r in page.tables[0][1:])
    assert settings["dataset"] == "sample" and "val_fraction=0.2" in settings["training"]
    # the worst videos: the largest |mean prediction - MOS| over splits, each with its cache thumbnail
    with open(run_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = worst_videos(rows, 8)
    errors = [abs(v["pred"] - v["mos"]) for v in worst_videos(rows, 10 ** 6)]
    assert [abs(v["error"]) for v in want] == sorted(errors, reverse=True)[:8]
    worst = page.tables[-1]
    assert worst[0][:5] == ["frame", "video", "test set", "MOS", "prediction"]
    assert [r[1] for r in worst[1:]] == [v["video"] for v in want]
    for r, v in zip(worst[1:], want):
        assert r[0] == f"[img:{v['video']}]"
        assert float(r[3]) == pytest.approx(v["mos"], abs=1e-3) and float(r[4]) == pytest.approx(v["pred"], abs=1e-3)
    pixel = sample_cache().cache_dir  # the thumbnails are the cache's 32 px pixel copy
    assert pixel.is_dir()
    thumbs = page.images[2:]
    assert len(thumbs) == 8 and all(png_shape(t)[:2] == (32, 32) for t in thumbs)


def test_report_command_rewrites_the_page_and_refuses_a_non_run(run_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(run_dir), "-o", str(tmp_path / "r.html"), "--worst", "3"])
    assert res.exit_code == 0, res.output
    assert "r.html" in res.output
    page = parse(tmp_path / "r.html")
    assert page.ids == ["protocol", "metrics", "scatter", "learning", "worst"] and len(page.tables[-1]) == 4
    # the page is not in the run's manifest: rewriting it leaves the run intact
    assert "report.html" not in json.loads((run_dir / "manifest.json").read_text())["files"]
    bad = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "no such folder" in bad.output


def test_report_renders_in_a_headless_browser(run_dir, tmp_path):
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser installed (chromium, chromium-browser or google-chrome)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", (run_dir / "report.html").as_uri()], check=True, timeout=120,
                   capture_output=True)
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 1000 and float(img[..., :3].std()) > 0.02  # a page was drawn, not a blank one


# ---------------------------------------------------------------- plots read at a glance
@pytest.fixture
def figures(monkeypatch):
    """The figures the plots save, kept open for the test to read."""
    saved = []
    original = plots._save

    def keep(fig, path):
        saved.append(fig)
        with open(path, "wb") as f:
            fig.savefig(f, format="png")

    monkeypatch.setattr(plots, "_save", keep)
    yield saved
    for fig in saved:
        plots._plt().close(fig)
    assert original


def test_timeline_shows_the_split_models_band_and_the_scale_limits(figures, tmp_path):
    frames = [FrameScore(i, i / 24, q, w) for i, (q, w) in enumerate([(3.1, 0.2), (4.2, 0.5), (2.5, 0.3)])]
    result = VideoScore("clip", "/x/clip.mp4", score=3.6, normalised=0.65, spread=Spread(0.3, 3.2, 4.1, 3),
                        frames=frames)
    view = np.zeros((8, 8, 3), np.uint8)
    plots.timeline(tmp_path / "t.png", result, "MOS 1-5 of sample", view, view, 1, 2, (48, 64), 99.0, limits=(1.0, 5.0))
    ax = figures[0].axes[0]
    band = [p for p in ax.patches + ax.collections if "split models" in str(p.get_label())]
    assert band, "no band for the split models' range"
    figures[0].canvas.draw()
    corners = ax.transData.inverted().transform(band[0].get_window_extent().get_points())
    assert corners[:, 1].min() == pytest.approx(3.2, abs=0.02) and corners[:, 1].max() == pytest.approx(4.1, abs=0.02)
    low, high = ax.get_ylim()
    assert 0.5 < low < 1.0 and 5.0 < high < 5.5  # the axis ends just past the scale, not far beyond it
    texts = [t.get_text() for t in ax.texts]
    assert "scale low 1" in texts and "scale high 5" in texts
    assert (tmp_path / "t.png").read_bytes().startswith(PNG)


def _history(n=4, val=True, shift=0.0):
    return [{"epoch": e, "loss": 1.0 / (e + 1) + shift, "lr": 1e-3 * (1 - e / n), "seconds": 0.1,
             **({"val_srcc": 0.2 + 0.1 * e + shift} if val else {})} for e in range(n)]


def test_learning_curves_show_more_than_the_training_loss(figures, tmp_path):
    plots.learning_curves(tmp_path / "a.png", {"split-00": _history(), "split-01": _history(shift=0.1)})
    fig = figures[-1]
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "training loss" in labels and "SRCC" in labels and any("learning rate" in x for x in labels)
    loss_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "training loss")
    median = next(line for line in loss_ax.lines if line.get_label() == "median over splits")
    assert list(median.get_ydata()) == pytest.approx([np.median([1 / (e + 1), 1 / (e + 1) + 0.1]) for e in range(4)])
    # no validation set carved: the second panel says how to get one instead of staying silent
    plots.learning_curves(tmp_path / "b.png", {"split-00": _history(val=False)})
    texts = [t.get_text() for ax in figures[-1].axes for t in ax.texts]
    assert any("no validation metric recorded" in t and "val_fraction" in t for t in texts)


def test_sweep_chart_labels_its_axis_shows_the_spread_and_prints_the_values(figures, tmp_path):
    summary = [{"config": "full", "srcc_median": 0.81, "plcc_median": 0.84},
               {"config": "no-tcab", "srcc_median": 0.7, "plcc_median": 0.72}]
    per_split = {"full": {"srcc": [0.78, 0.81, 0.86], "plcc": [0.8, 0.84, 0.9]},
                 "no-tcab": {"srcc": [0.6, 0.7, 0.75], "plcc": [0.65, 0.72, 0.8]}}
    plots.sweep_summary(tmp_path / "s.png", summary, "sample random", per_split)
    ax = figures[-1].axes[0]
    assert "median over splits" in ax.get_xlabel() and "each split" in ax.get_xlabel()
    texts = {t.get_text() for t in ax.texts}
    assert {"0.810", "0.840", "0.700", "0.720"} <= texts
    whiskers = [tuple(line.get_xdata()) for line in ax.lines if len(line.get_xdata()) == 2]
    assert (0.6, 0.75) in whiskers and (0.78, 0.86) in whiskers
    assert ax.get_xlim()[0] <= 0.6


def test_sweep_report_lists_each_configuration_with_its_splits_and_the_chart(tmp_path):
    from diffvqa_cache.scoring.report import write_report

    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "split", "status", "n_train", "seconds", "srcc", "krcc", "plcc", "plcc_raw", "rmse",
                    "overrides", "error"])
        for config, vals in (("full", (0.8, 0.9)), ("no_tdm", (0.5, 0.7))):
            for i, v in enumerate(vals):
                w.writerow([config, f"split-0{i}", "ok", 12, 1.0, v, v - 0.1, v + 0.02, v, 0.5, "{}", ""])
        w.writerow(["no_tdm", "split-02", "failed", "", "", "", "", "", "", "", "{}", "UserInputError: x"])
    with open(tmp_path / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "n_splits", "n_failed", "srcc_median", "plcc_median", "overrides", "error"])
        w.writerow(["full", 2, 0, 0.85, 0.87, "{}", ""])
        w.writerow(["no_tdm", 2, 1, 0.6, 0.62, '{"regressor.use_tdm": false}', "UserInputError: x"])
    page = parse(write_report(tmp_path))
    assert page.ids == ["table", "chart"] and page.external == []
    rows = {r[0]: r for r in page.tables[0][1:]}
    assert rows["full"][1:6] == ["0.8500", "0.8700", "0.8000 - 0.9000", "0.0500", "0.800 0.900"]
    assert rows["no_tdm"][6] == "1" and "use_tdm" in rows["no_tdm"][7]
    assert len(page.images) == 1 and png_shape(page.images[0])


def test_reproduce_table_has_a_self_contained_html_twin(tmp_path):
    from diffvqa_cache.scoring.reproduction import write_table

    rows = [{"trained_on": "lsvq", "tested_on": "kvd", "kind": "lsvq", "protocol": "cross-dataset from LSVQ-train",
             "srcc": 0.81, "plcc": 0.82, "plcc_raw": 0.8, "n_splits": 1, "init": None, "paper_srcc": 0.905,
             "paper_plcc": 0.906, "gap_srcc": 0.81 - 0.905, "gap_plcc": 0.82 - 0.906, "run": "runs/lsvq"},
            {"trained_on": "lsvq", "tested_on": "ytugc", "kind": "lsvq", "protocol": "cross-dataset from LSVQ-train",
             "srcc": 0.7, "plcc": 0.71, "plcc_raw": 0.69, "n_splits": 1, "init": None, "paper_srcc": None,
             "paper_plcc": None, "gap_srcc": None, "gap_plcc": None, "run": "runs/lsvq"}]
    write_table(tmp_path, rows)
    page = parse(tmp_path / "table.html")
    assert page.external == [] and len(page.images) == 1 and png_shape(page.images[0])
    header, *body = page.tables[0]
    assert header[:5] == ["trained on", "tested on", "protocol", "SRCC", "PLCC"]
    assert body[0][:2] == ["LSVQ", "KoNViD-1k"] and body[0][3] == "0.810" and body[0][6] == "0.905"
    assert body[0][8] == "-0.095" and body[1][6] == "n/a"
    assert "| LSVQ | KoNViD-1k | cross-dataset from LSVQ-train | 0.810 |" in (tmp_path / "table.md").read_text()
