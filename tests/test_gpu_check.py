"""The prepared GPU check (benchmarks/gpu_check.sh + gpu_check.py): its wheel list and requirement check,
and a dry run of the whole script at tiny sizes on the CPU so that it cannot rot before a GPU slot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_script_header_lists_the_carried_wheels():
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    download = text[text.index("pip download"):text.index("--check-wheels")]
    pins = set(re.findall(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", download))
    assert pins == set(gpu_check.CARRIED)


def test_missing_requirements_follows_markers_and_other_wheels():
    wheels = {"diffusers": ["importlib_metadata", "huggingface-hub<3.0,>=1.32.0", "Pillow",
                            "typing-extensions>=3.6.4; python_version < \"3.8\"", "pytest; extra == \"test\""],
              "mambapy": ["torch"]}
    assert gpu_check.missing_requirements(wheels) == ["diffusers needs importlib_metadata"]
    assert gpu_check.missing_requirements({**wheels, "importlib-metadata": ["zipp>=3.20"]}) == []


def test_every_pipeline_import_is_on_the_machine_or_carried():
    """The third-party modules the pipeline imports at module level are in the image or among the wheels."""
    carried = {gpu_check.norm(c.split("==")[0]) for c in gpu_check.CARRIED}
    have = gpu_check.DEVICE_PACKAGES | carried
    dist = {"av": "av", "torch": "torch", "numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "typer": "typer",
            "rich": "rich", "mambapy": "mambapy", "yaml": "pyyaml", "h5py": "h5py", "diffusers": "diffusers",
            "transformers": "transformers", "safetensors": "safetensors", "sklearn": "scikit-learn",
            "matplotlib": "matplotlib", "PIL": "pillow", "decord": "decord"}
    found = set()
    for path in list((ROOT / "diffvqa_cache").rglob("*.py")) + list((ROOT / "pipelines").glob("*.py")):
        for m in re.finditer(r"^\s*(?:from|import) ([A-Za-z_][A-Za-z0-9_]*)", path.read_text(), re.M):
            if m.group(1) in dist:
                found.add(dist[m.group(1)])
    assert found and not {d for d in found if gpu_check.norm(d) not in have}


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """The whole script, tiny sizes on the CPU: every step runs and lands in the JSON and the table."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--budget-s", "1500",
                        "--work", str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["dry_run"] and res["skipped"] == {}, res["skipped"]
    assert {(g["steps"], g["batch"]) for g in res["stage1"]["grid"]} == {(1, 1), (1, 2)}
    assert all(g["views_per_s"] > 0 and g["mfu"] > 0 for g in res["stage1"]["grid"])
    assert res["pipeline"]["predict_videos_per_s"] > 0 and res["pipeline"]["extract_videos_per_s"] > 0
    assert res["fit_epoch"]["scan"] == "pure PyTorch" and res["fit_epoch"]["tcab_on"]["epoch_s"]
    md = (out / "gpu_check.md").read_text()
    for row in ("| stage 1 (bf16) | 1 steps, batch 2 |", "| predict |", "| fit epoch (pure PyTorch scan) | tcab on"):
        assert row in md, md
    assert (out / "gpu_check.log").exists()
