"""What a sweep measured (`SweepResult`) and its tables: `results.csv` (one row per task), `summary.csv`
and `summary.md` (median SRCC and PLCC per configuration over the splits, best first), the per-split
values a summary chart shows (`split_metrics`), and the lines `sweep` prints (`format_summary`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from diffvqa_cache.cache.folder import FeatureCache
from diffvqa_cache.files import write_csv_atomic, write_text_atomic
from diffvqa_cache.training.metrics import METRIC_KEYS


@dataclass
class SweepResult:
    out: Path
    protocol: str
    executed: int  # tasks run now
    skipped: int  # results already there
    failed: list[dict] = field(default_factory=list)  # result dicts with an error (all tasks, this run or earlier)
    summary: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return float("nan")
    m = len(vals) // 2
    return vals[m] if len(vals) % 2 else (vals[m - 1] + vals[m]) / 2


def primary_test_set(results: list[dict]) -> str:
    """The test set the summary ranks by: the first one the task results name."""
    tests = list(dict.fromkeys(t for r in results for t in r.get("metrics", {})))
    return tests[0] if tests else "test"


def write_tables(out: Path, results: list[dict], order: list[str], protocol: str, cache: FeatureCache) -> list[dict]:
    """results.csv (one row per task), summary.csv / .md (median SRCC, PLCC per config); the summary rows."""
    tests = list(dict.fromkeys(t for r in results for t in r.get("metrics", {})))
    primary = primary_test_set(results)
    cols = ["config", "split", "status", "n_train", "seconds"] + list(METRIC_KEYS) \
        + [f"{t}_{m}" for t in tests[1:] for m in METRIC_KEYS] + ["overrides", "error"]
    rows = []
    for r in results:
        row = {"config": r["config"], "split": r["split"], "status": "failed" if r.get("error") else "ok",
               "n_train": r.get("n_train"), "seconds": r.get("seconds"), "overrides": json.dumps(r.get("overrides", {})),
               "error": r.get("error") or ""}
        for t, ms in r.get("metrics", {}).items():
            row.update({(m if t == primary else f"{t}_{m}"): ms.get(m) for m in METRIC_KEYS})
        rows.append(row)
    write_csv_atomic(out / "results.csv", cols, rows)
    summary = []
    for name in order:
        mine = [r for r in results if r["config"] == name]
        ok = [r for r in mine if not r.get("error") and primary in r.get("metrics", {})]
        summary.append({
            "config": name, "n_splits": len(ok), "n_failed": len(mine) - len(ok),
            "srcc_median": _median([r["metrics"][primary]["srcc"] for r in ok]),
            "plcc_median": _median([r["metrics"][primary]["plcc"] for r in ok]),
            "overrides": json.dumps(mine[0].get("overrides", {}) if mine else {}),
            "error": next((r["error"] for r in mine if r.get("error")), ""),
        })
    summary.sort(key=lambda s: -s["srcc_median"] if not math.isnan(s["srcc_median"]) else math.inf)
    write_csv_atomic(out / "summary.csv", list(summary[0]) if summary else ["config"], summary)
    lines = [f"# Sweep on {cache.config.dataset} ({cache.fingerprint})", "",
             f"Protocol {protocol}, test set `{primary}`; medians over splits; sorted by median SRCC.", "",
             "| config | median SRCC | median PLCC | splits | failed | overrides |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s['config']} | {s['srcc_median']:.4f} | {s['plcc_median']:.4f} | {s['n_splits']} | {s['n_failed']} | "
              f"`{s['overrides']}` |" for s in summary]
    failed = [s for s in summary if s["error"]]
    if failed:
        lines += ["", "Failures (first error per config):", ""] + [f"- {s['config']}: {s['error']}" for s in failed]
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
    return summary


def split_metrics(results: list[dict], summary: list[dict]) -> dict:
    """{config: {"srcc": [...], "plcc": [...]}}: each configuration's values on the primary test set, per split."""
    primary = primary_test_set(results)
    return {s["config"]: {m: [r["metrics"][primary][m] for r in results if r["config"] == s["config"]
                              and not r.get("error") and primary in r.get("metrics", {})] for m in ("srcc", "plcc")}
            for s in summary}


def format_summary(result: SweepResult) -> str:
    lines = [f"{len(result.summary)} configs, protocol {result.protocol}: {result.executed} tasks run, "
             f"{result.skipped} already done, {len(result.failed)} failed, {result.seconds:.1f} s; results: {result.out}"]
    for s in result.summary:
        lines.append(f"  {s['config'][:40]:40s} SRCC {s['srcc_median']:.4f}  PLCC {s['plcc_median']:.4f}  "
                     f"({s['n_splits']} splits{', ' + str(s['n_failed']) + ' failed' if s['n_failed'] else ''})")
    return "\n".join(lines)
