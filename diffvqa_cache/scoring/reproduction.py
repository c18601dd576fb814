"""The paper's reproduction as data: its settings (`ReproduceConfig`, OUT/reproduce.json), the fits it runs
(`plan_fits`), DiffVQA's published values (`PAPER`) and the table of ours beside them (`table_rows`,
`write_table`: table.md, table.json, table.png, table.html). `pipelines/reproduce.py` runs the steps.

Each row says what was run (official split, fine-tuned from which run, from scratch, cross-dataset), and
a published value stands beside a row only when the row ran the paper's protocol for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffvqa_cache.cache.settings import ExtractConfig
from diffvqa_cache.config import Config
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.extraction.settings import AdaptConfig
from diffvqa_cache.files import write_json_atomic, write_text_atomic
from diffvqa_cache.run.folder import RunFolder
from diffvqa_cache.training.settings import FitConfig

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

    @classmethod
    def from_command(cls, roots: dict, extract: ExtractConfig, controller: str | None = None, splits: int = 10,
                     limit: int | None = None, fit: dict | None = None, adapt_steps: int = AdaptConfig.max_steps,
                     adapt_limit: int | None = None) -> "ReproduceConfig":
        """`reproduce`'s options as settings: the preset with `controller`, adaptation on the preset's device;
        a wrong fit setting fails now, not after hours of extraction."""
        FitConfig().with_overrides(fit or {})
        return cls(roots=roots, extract=extract.replace(controller=controller), splits=splits, limit=limit,
                   fit=fit or {}, adapt=AdaptConfig(max_steps=adapt_steps, limit=adapt_limit, device=extract.device))

    def check_roots(self) -> None:
        """At least one dataset root, each of a dataset the paper reports."""
        unknown = sorted(set(self.roots) - set(DATASET_NAMES))
        if not self.roots or unknown:
            raise UserInputError(f"give dataset roots among {sorted(DATASET_NAMES)} (e.g. --lsvq /data/LSVQ), got "
                                 f"{unknown or 'none'}")

    def adapt_on(self) -> tuple[str, AdaptConfig]:
        """Where the Controller adapts and how: LSVQ-train, else the first dataset's videos (adaptation is
        label-free), with the preset's model."""
        name = "lsvq" if "lsvq" in self.roots else next(iter(self.roots))
        return name, self.adapt.replace(model=self.extract.model, revision=self.extract.revision,
                                        split="train" if name == "lsvq" else "all")


@dataclass
class ReproduceResult:
    out: Path
    rows: list[dict]
    seconds: float


def record_settings(cfg: ReproduceConfig, out: Path) -> None:
    """Save the settings, or refuse to resume a folder started with other ones (placement may change)."""
    path = out / "reproduce.json"

    def numbers(c: ReproduceConfig) -> dict:  # the settings declared `numbers=False` and `extendable` may change
        return {**c.numbers(resumed=True), "fit": FitConfig.numbers_overrides(c.fit)}

    if path.is_file() and numbers(ReproduceConfig.load(path)) != numbers(cfg):
        raise UserInputError(f"{out} holds a reproduction with other settings (see {path}); use another --out, or "
                             "the settings recorded there to resume it")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(path)


@dataclass
class PlannedFit:
    """One fit of the reproduction: how it trains (lsvq, fine-tuned, scratch or cross), on which dataset,
    its cache, run folder, FitConfig overrides, further test caches and the run it starts from."""

    kind: str
    trained_on: str
    cache: Path
    run: Path
    overrides: dict
    test_caches: list[Path]
    init: Path | None = None


def plan_fits(cfg: ReproduceConfig, caches: dict[str, Path], out: Path) -> list[PlannedFit]:
    """The fits, in the order they must run: LSVQ's official protocol (tested on its own test sets and every
    other dataset), each other dataset on random splits (fine-tuned from the LSVQ run when there is one,
    else from scratch), then the paper's cross-dataset pairs (trained on the whole source)."""
    others = [n for n in caches if n != "lsvq"]
    lsvq_run = out / "runs" / "lsvq"
    fits = []
    if "lsvq" in caches:
        fits.append(PlannedFit("lsvq", "lsvq", caches["lsvq"], lsvq_run, cfg.fit, [caches[n] for n in others]))
    for name in others:
        init = lsvq_run if "lsvq" in caches else None
        fits.append(PlannedFit("fine-tuned" if init else "scratch", name, caches[name],
                               out / "runs" / (f"{name}-ft" if init else f"{name}-scratch"),
                               {**cfg.fit, "splits": cfg.splits}, [], init))
    for name in [n for n in CROSS_SOURCES if n in caches]:
        targets = [n for n in others if n != name]
        if targets:
            fits.append(PlannedFit("cross", name, caches[name], out / "runs" / f"{name}-cross",
                                   {**cfg.fit, "protocol": "cross", "cross_train": "all"},
                                   [caches[n] for n in targets]))
    return fits


def table_rows(runs: list[tuple[str, str, Path]], out: Path | None = None) -> list[dict]:
    """One row per (run, test set): our median SRCC, PLCC (after the logistic fit) and raw PLCC beside the
    paper's value for that protocol, and the gaps; `runs` holds (how it was trained: lsvq, fine-tuned,
    scratch or cross; trained on; run folder)."""
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
