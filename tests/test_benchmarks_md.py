"""BENCHMARKS.md: one table of current figures at the top, set by the benchmark scripts (`update_current`),
above the history they append (`append_section`, never rewritten); and no machine paths in the documents."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common  # noqa: E402

INFO = {"machine": "x86_64", "cpus": 2, "ram_gib": 23.5, "python": "3.11.7", "torch": "2.13.0+cpu",
        "torch_threads": 1, "load_avg_1_5_15": "1.00 1.00 1.00"}
HISTORY = "\n## Cache I/O (2026-11-26 07:54)\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n"


def test_a_row_is_set_in_place_and_the_history_is_left_alone(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(_common.HEADER + HISTORY)
    _common.update_current("cache read", "2.0 GB/s vs 4.3 GB/s", "python benchmarks/cache_io.py", INFO, path)
    _common.update_current("fit epoch / bare", "1.15", "python benchmarks/fit_speed.py", INFO, path)
    _common.update_current("cache read", "2.5 GB/s | 4.4 GB/s", "python benchmarks/cache_io.py", INFO, path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n" + _common.CURRENT_START) and text.endswith(HISTORY)
    rows = _common.read_current(text)
    assert list(rows) == ["cache read", "fit epoch / bare"]  # the first row kept its place
    assert rows["cache read"][1] == "2.5 GB/s \\| 4.4 GB/s"  # a pipe in a figure does not break the table
    assert rows["cache read"][2].startswith(time.strftime("%Y-%m-%d")) and "2 cores, no GPU" in rows["cache read"][2]
    assert rows["fit epoch / bare"][3] == "`python benchmarks/fit_speed.py`"
    assert text.count(_common.CURRENT_START) == 1 and text.count("| benchmark |") == 1


def test_sections_are_appended_below_the_table(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    _common.append_section("First", "body one", INFO, path)
    _common.update_current("first figure", "1.0", "cmd", INFO, path)
    _common.append_section("Second", "body two", INFO, path)
    text = path.read_text()
    assert text.index(_common.CURRENT_END) < text.index("## First") < text.index("## Second")
    assert text.rstrip().endswith("body two") and list(_common.read_current(text)) == ["first figure"]


def _bench_text() -> str:
    return (ROOT / "BENCHMARKS.md").read_text()


def test_benchmarks_md_has_one_table_of_current_figures_above_the_history():
    text = _bench_text()
    assert text.count(_common.CURRENT_START) == 1 and text.count(_common.CURRENT_END) == 1
    assert text.index(_common.CURRENT_END) < text.index("\n## ")  # the table comes before every dated section
    block = text[text.index(_common.CURRENT_START):text.index(_common.CURRENT_END)]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    assert lines[0] == "| " + " | ".join(_common.CURRENT_HEADER) + " |"
    rows = _common.read_current(text)
    assert len(rows) == len(lines) - 2 >= 15 and all(len(r) == 4 for r in rows.values())
    # the history is kept: the first sections ever appended are still there
    assert "## Scaling of the dask paths (2026-11-26 07:49)" in text and "## Cache I/O: shards vs plain" in text


def _calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "_common.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_that_appends_a_section_sets_its_current_figures(script):
    if not _calls(script, "append_section"):
        return
    calls = _calls(script, "update_current")
    assert calls, f"{script.name} appends to BENCHMARKS.md but sets no current figure: call update_current"
    rows = _common.read_current(_bench_text())
    keys = [c.args[0] for c in calls] + [c.args[3] for c in _calls(script, "report") if len(c.args) > 3]
    for key in keys:
        if isinstance(key, ast.Name):  # a parameter (fit_stream's report): its callers' keys are checked
            continue
        if isinstance(key, ast.Constant):  # a fixed name: the row is in the table (else it would be a new one)
            assert key.value in rows, f"{script.name}: row {key.value!r} is not in BENCHMARKS.md's table"
        else:  # an f-string: its fixed start names a row
            start = key.values[0].value
            assert any(k.startswith(start) for k in rows), f"{script.name}: no row starts with {start!r}"


def test_no_machine_paths_in_the_documents():
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "*.md"], capture_output=True, text=True).stdout.split()
    assert "README.md" in files
    found = [f"{name}:{n}" for name in files for n, line in enumerate((ROOT / name).read_text().splitlines(), 1)
             if "/work/" in line or "/root/" in line]
    assert not found, f"machine paths in the documents: {found}"
