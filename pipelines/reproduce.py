"""The paper's tables as one command: adapt on LSVQ-train, extract every dataset with one preset, the LSVQ
official protocol (its test sets and, from LSVQ-train, every other dataset), each other dataset on random
splits (fine-tuned from the LSVQ run when LSVQ is given, else from scratch), the paper's cross-dataset
pairs (trained on the whole source dataset), then `table.md` / `table.png` beside the published values.

Each row says what was run (official split, fine-tuned from which run, from scratch, cross-dataset), and
a published value stands beside a row only when the row ran the paper's protocol for it.

Each step is skipped when its result is already there (the Controller's adapt_config.json, a complete
cache, a run's metrics.json), so rerunning the same command resumes where it stopped; the settings are
recorded in OUT/reproduce.json and a rerun with other settings is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa_cache.cache.settings import ExtractConfig
from diffvqa_cache.config import Config
from diffvqa_cache.datasets import load_dataset
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.files import write_json_atomic, write_text_atomic
from diffvqa_cache.progress import err

DATASET_NAMES = {"lsvq": "LSVQ", "kvd": "KoNViD-1k", "lvqc": "LIVE-VQC", "ytugc": "YouTube-UGC"}
# DiffVQA's published SRCC / PLCC (ICML 2025; PLCC after the 4-parameter logistic fit), per protocol:
# (how it was trained, trained on, tested on) -> values.
PAPER = {
    # trained on LSVQ-train, no fine-tuning
    ("lsvq", "lsvq", "test"): (0.915, 0.907), ("lsvq", "lsvq", "test1080p"): (0.818, 0.860),
    ("lsvq", "lsvq", "kvd"): (0.905, 0.906), ("lsvq", "lsvq", "lvqc"): (0.861, 0.868),
    # intra-dataset (random splits), fine-tuned after LSVQ pre-training
    ("fine-tuned", "kvd", "kvd"): (0.936, 0.929), ("fine-tuned", "lvqc", "lvqc"): (0.910, 0.924),
    ("fine-tuned", "ytugc", "ytugc"): (0.923, 0.926),
    # cross-dataset: trained on the whole source dataset, tested on the whole target
    ("cross", "lvqc", "kvd"): (0.861, 0.858), ("cross", "lvqc", "ytugc"): (0.871, 0.844),
    ("cross", "ytugc", "lvqc"): (0.829, 0.846), ("cross", "ytugc", "kvd"): (0.883, 0.865),
}
CROSS_SOURCES = sorted({train for kind, train, _ in PAPER if kind == "cross"})  # the paper's cross-dataset sources


@dataclass
class ReproduceConfig(Config):
    """Everything the table depends on; saved as OUT/reproduce.json."""

    roots: dict = field(default_factory=dict)  # dataset short name -> root folder (any subset of DATASET_NAMES)
    extract: ExtractConfig = field(default_factory=ExtractConfig)  # the one preset (its controller: adapted here)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)  # used when no Controller is given
    fit: dict = field(default_factory=dict)  # FitConfig overrides for every fit (e.g. {"train.epochs": 30}); the
    # fine-tuning fits train with FitConfig.finetune's settings (e.g. {"finetune.lr": 1e-4})
    splits: int = 10  # random splits of each fine-tuning
    limit: int | None = None  # first N videos of each dataset (a quick trial)


@dataclass
class ReproduceResult:
    out: Path
    rows: list[dict]
    seconds: float


def run_reproduce(cfg: ReproduceConfig, out: Path, client=None, progress: bool = True) -> ReproduceResult:
    """Run (or resume) every step into OUT and write the table."""
    t0 = time.perf_counter()
    out = Path(out)
    unknown = sorted(set(cfg.roots) - set(DATASET_NAMES))
    if not cfg.roots or unknown:
        raise UserInputError(f"give dataset roots among {sorted(DATASET_NAMES)} (e.g. --lsvq /data/LSVQ), got "
                             f"{unknown or 'none'}")
    _record(cfg, out)
    datasets = {name: _dataset(name, root, cfg.limit) for name, root in cfg.roots.items()}
    # 1. the Controller: given, or adapted on LSVQ-train (else the first dataset: adaptation is label-free)
    controller = cfg.extract.controller or str(_adapt(cfg, datasets, out / "controller", progress))
    extract = cfg.extract.replace(controller=controller)
    # 2. features of every dataset with the one preset
    caches = {name: _extract(ds, extract, out / "cache", client, progress) for name, ds in datasets.items()}
    # 3. LSVQ's official protocol, tested on its own test sets and (trained on LSVQ-train) every other dataset
    runs = []  # (how it was trained, trained on, run folder)
    others = [n for n in caches if n != "lsvq"]
    lsvq_run = out / "runs" / "lsvq"
    if "lsvq" in caches:
        runs.append(("lsvq", "lsvq", _fit(caches["lsvq"], lsvq_run, cfg.fit, [caches[n] for n in others], None,
                                          progress)))
    # 4. each other dataset: random splits, fine-tuned from the LSVQ run when there is one, else from scratch
    for name in others:
        init = lsvq_run if "lsvq" in caches else None
        run = out / "runs" / (f"{name}-ft" if init else f"{name}-scratch")
        runs.append(("fine-tuned" if init else "scratch", name,
                     _fit(caches[name], run, {**cfg.fit, "splits": cfg.splits}, [], init, progress)))
    # 5. the paper's cross-dataset pairs: trained on the whole source, tested on each other dataset
    for name in [n for n in CROSS_SOURCES if n in caches]:
        targets = [n for n in others if n != name]
        if targets:
            run = _fit(caches[name], out / "runs" / f"{name}-cross", {**cfg.fit, "protocol": "cross",
                                                                    "cross_train": "all"},
                       [caches[n] for n in targets], None, progress)
            runs.append(("cross", name, run))
    rows = table_rows(runs, out)
    write_table(out, rows)
    return ReproduceResult(out, rows, time.perf_counter() - t0)


def _record(cfg: ReproduceConfig, out: Path) -> None:
    """Save the settings, or refuse to resume a folder started with other ones (placement may change)."""
    path = out / "reproduce.json"

    from diffvqa_cache.training.settings import FitConfig

    def numbers(c: ReproduceConfig) -> dict:  # the settings declared `numbers=False` and `extendable` may change
        return {**c.numbers(resumed=True), "fit": FitConfig.numbers_overrides(c.fit)}

    if path.is_file() and numbers(ReproduceConfig.load(path)) != numbers(cfg):
        raise UserInputError(f"{out} holds a reproduction with other settings (see {path}); use another --out, or "
                             "the settings recorded there to resume it")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(path)


def _dataset(name: str, root: str, limit: int | None):
    dataset = load_dataset(name, root, limit=limit)
    dataset.check()
    err.print(dataset.summary())
    return dataset


def _adapt(cfg: ReproduceConfig, datasets: dict, folder: Path, progress: bool) -> Path:
    from diffvqa_cache.extraction.adaptation import list_checkpoints
    from pipelines.adapt import run_adapt

    if (folder / "adapt_config.json").is_file():
        err.print(f"[bold]adapt[/]: {folder} is done, skipped")
        return folder
    name = "lsvq" if "lsvq" in datasets else next(iter(datasets))
    err.print(f"[bold]adapt[/]: the Controller on {DATASET_NAMES[name]}"
              f"{'-train' if name == 'lsvq' else ' (no LSVQ given; label-free, all videos)'}")
    adapt = cfg.adapt.replace(model=cfg.extract.model, revision=cfg.extract.revision,
                              split="train" if name == "lsvq" else "all")
    run_adapt(datasets[name], adapt, folder, resume=bool(list_checkpoints(folder)),
              progress=progress)
    return folder


def _extract(dataset, cfg: ExtractConfig, out: Path, client, progress: bool) -> Path:
    from pipelines.extract import run_extract

    err.print(f"[bold]extract[/]: {DATASET_NAMES[dataset.name]}")
    result = run_extract(dataset, cfg, out, client=client, progress=progress)
    if not result.manifest.get("complete"):
        raise UserInputError(f"{result.cache_dir}: not every video was extracted; rerun the same command")
    return result.cache_dir


def _fit(cache: Path, run: Path, overrides: dict, test_caches: list[Path], init: Path | None, progress: bool) -> Path:
    from diffvqa_cache.run.folder import RunFolder
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.fit import run_fit

    if RunFolder(run).finished():
        RunFolder(run).verify()  # its metrics go into the table: never those of a damaged run
        err.print(f"[bold]fit[/]: {run} is done, skipped")
        return run
    err.print(f"[bold]fit[/]: {run.name}")
    run_fit(cache, run, FitConfig().with_overrides(overrides), test_caches, init, progress, resume=True)
    return run


def table_rows(runs: list[tuple[str, str, Path]], out: Path | None = None) -> list[dict]:
    """One row per (run, test set): our median SRCC, PLCC (after the logistic fit) and raw PLCC beside the
    paper's value for that protocol, and the gaps; `runs` holds (how it was trained: lsvq, fine-tuned,
    scratch or cross; trained on; run folder)."""
    from diffvqa_cache.run.folder import RunFolder

    rows = []
    for kind, trained_on, run in runs:
        folder = RunFolder(run)
        init = folder.config().init
        for test_set, s in folder.metrics().summary.items():
            tested_on = trained_on if test_set == "test" and trained_on != "lsvq" else test_set
            paper = PAPER.get((kind, trained_on, tested_on))
            ours = (s["srcc"]["median"], s["plcc"]["median"])
            rows.append({"trained_on": trained_on, "tested_on": tested_on, "kind": kind,
                         "protocol": _protocol(kind, tested_on, init, out),
                         "srcc": ours[0], "plcc": ours[1], "plcc_raw": s["plcc_raw"]["median"],
                         "n_splits": s["n_splits"], "init": init,
                         "paper_srcc": paper[0] if paper else None, "paper_plcc": paper[1] if paper else None,
                         "gap_srcc": ours[0] - paper[0] if paper else None,
                         "gap_plcc": ours[1] - paper[1] if paper else None, "run": str(run)})
    return rows


def _protocol(kind: str, tested_on: str, init: str | None, out: Path | None) -> str:
    """What was run, in words: the protocol, and where training started (from scratch, or which run)."""
    if kind == "lsvq":
        return "official split" if tested_on in ("test", "test1080p") else "cross-dataset from LSVQ-train"
    if kind == "cross":
        return "cross-dataset, whole source, from scratch"
    if init is None:
        return "random splits, from scratch (no LSVQ pre-training)"
    where = Path(init)
    if out is not None and where.is_relative_to(out):
        where = where.relative_to(out)
    return f"random splits, fine-tuned from {where} (LSVQ pre-training)"


def _label(name: str) -> str:
    return {"test": "LSVQ-test", "test1080p": "LSVQ-1080p"}.get(name, DATASET_NAMES.get(name, name))


def write_table(out: Path, rows: list[dict]) -> None:
    """table.md (ours, the paper's, the gap per cell), table.json, table.png and table.html (the table and
    the chart on one self-contained page)."""
    def cell(x):
        return "n/a" if x is None else f"{x:.3f}"

    def gap(x):
        return "n/a" if x is None else f"{x:+.3f}"

    note = ("Median over splits. PLCC is Pearson after the 4-parameter logistic fit (as in the paper's tables); "
            "PLCC raw is plain Pearson on the predictions (as DOVER, FAST-VQA and Q-Align report). The paper's "
            "values (SRCC / PLCC) stand beside the rows that ran its protocol; n/a elsewhere.")
    header = ["trained on", "tested on", "protocol", "SRCC", "PLCC", "PLCC raw", "paper SRCC", "paper PLCC",
              "gap SRCC", "gap PLCC", "splits"]
    body = [[_label(r['trained_on']), _label(r['tested_on']), r['protocol'], cell(r['srcc']), cell(r['plcc']),
             cell(r['plcc_raw']), cell(r['paper_srcc']), cell(r['paper_plcc']), gap(r['gap_srcc']),
             gap(r['gap_plcc']), str(r['n_splits'])] for r in rows]
    lines = ["# DiffVQA reproduction", "", note, "", "| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * len(header)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")
    write_json_atomic(out / "table.json", rows)
    from diffvqa_cache.scoring.plots import paper_comparison
    from diffvqa_cache.scoring.report import write_table_page

    paper_comparison(out / "table.png", [f"{_label(r['trained_on'])} -> {_label(r['tested_on'])}" for r in rows],
                     [r["srcc"] for r in rows], [r["paper_srcc"] for r in rows])
    write_table_page(out / "table.html", "DiffVQA reproduction", note, header, body, [out / "table.png"])


def format_table(result: ReproduceResult) -> str:
    return (result.out / "table.md").read_text() + f"\n{len(result.rows)} rows in {result.seconds:.0f} s; {result.out}"
