"""`diffvqa-cache doctor` on this CPU machine, with faked missing packages and bad model folders; and the
conda environment file it points GPU users to."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from diffvqa_cache import doctor
from diffvqa_cache.extraction.backbone import SD_LAYOUT, model_layout_problems

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
STATUSES = {"ok", "missing", "slow", "info"}
ALWAYS = ["python", "torch", "gpu", "mamba", "pyav", "decord", "diffusers", "h5py", "transformers", "accelerate",
          "disk", "dask", "scheduler"]


def run_json(*args):
    result = runner.invoke(app, ["doctor", "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def by_name(data: dict) -> dict[str, dict]:
    return {c["name"]: c for c in data["checks"]}


@pytest.fixture
def no_gpu(monkeypatch):
    """Whatever the machine, torch sees no GPU (what this project's machines have)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_machine_passes_with_the_gpu_reported_not_failed(tmp_path, no_gpu):
    code, data = run_json("--cache", str(tmp_path / "new" / "cache"))
    checks = by_name(data)
    assert code == 0 and data["essentials_ok"] is True
    assert [c["name"] for c in data["checks"]] == ALWAYS  # no --model, no model line
    for c in data["checks"]:
        assert set(c) == {"name", "status", "detail", "fix", "essential"} and c["status"] in STATUSES
        assert c["detail"] and isinstance(c["essential"], bool)
        assert c["status"] == "ok" or c["fix"] or c["status"] == "info", c
    assert checks["gpu"]["status"] == "slow" and not checks["gpu"]["essential"] and "GPU node" in checks["gpu"]["fix"]
    mamba = checks["mamba"]
    assert mamba["status"] == "ok" and mamba["essential"] and mamba["detail"].startswith("fallback")
    assert "compiled CPU scan" in mamba["detail"]
    assert checks["pyav"]["status"] == "ok" and "decodes H.264" in checks["pyav"]["detail"]
    for name in ("torch", "diffusers", "h5py"):
        assert checks[name]["status"] == "ok" and checks[name]["essential"]
    disk = checks["disk"]  # measured at the nearest existing folder, nothing created
    assert disk["detail"].startswith(f"{tmp_path}:") and "MB/s" in disk["detail"] and not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []  # the write test cleaned up


def test_gpus_are_listed_with_memory_and_bf16(tmp_path, monkeypatch):
    """No GPU here: fake two cards, an A100 (bf16) and a V100 (compute capability 7.0, no bf16)."""
    from types import SimpleNamespace

    import torch

    cards = [SimpleNamespace(name="A100", total_memory=80 * 2**30, major=8),
             SimpleNamespace(name="V100", total_memory=32 * 2**30, major=7)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(cards))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: cards[i])
    ctx = doctor.Context(tmp_path, None, tmp_path)
    found = doctor.check_gpus(ctx)
    assert found[:2] == ("slow", "0: A100 80 GiB; 1: V100 32 GiB, no bf16 on GPU 1") and "fp16" in found.fix
    cards.pop()
    assert doctor.check_gpus(ctx)[:2] == ("ok", "0: A100 80 GiB, bf16 on all")


def test_text_report_is_one_line_per_check_and_a_verdict(tmp_path, no_gpu):
    result = runner.invoke(app, ["doctor", "--cache", str(tmp_path)])
    lines = result.stdout.strip().splitlines()
    assert result.exit_code == 0 and len(lines) == len(ALWAYS) + 1
    for line, name in zip(lines, ALWAYS):
        status, check = line.split()[:2]
        assert status in STATUSES and check == name
    assert lines[2].startswith("slow    gpu") and "->" in lines[2]
    assert lines[-1].startswith("essentials ok")


@pytest.mark.parametrize("module, check", [("decord", "decord"), ("transformers", "transformers")])
def test_a_missing_optional_package_says_how_to_get_it_and_still_passes(tmp_path, monkeypatch, module, check):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    code, data = run_json("--cache", str(tmp_path))
    found = by_name(data)[check]
    assert found["status"] == "missing" and f"pip install {module}" in found["fix"] and not found["essential"]
    assert code == 0 and data["essentials_ok"]


@pytest.mark.parametrize("module, check", [("h5py", "h5py"), ("av", "pyav"), ("mambapy.pscan", "mamba")])
def test_a_missing_essential_fails_with_exit_1(tmp_path, monkeypatch, module, check):
    monkeypatch.setitem(sys.modules, module, None)
    result = runner.invoke(app, ["doctor", "--cache", str(tmp_path)])
    assert result.exit_code == 1
    line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == [check])
    assert line.startswith("missing") and "-> pip install" in line
    assert result.stdout.strip().splitlines()[-1] == f"essentials missing: {check} (exit 1)"


def make_sd_folder(root: Path, skip: tuple[str, ...] = ()) -> Path:
    """A diffusers-like SD folder with empty configs and weights, less the `skip` entries."""
    for sub, configs in SD_LAYOUT.items():
        if sub in skip:
            continue
        (root / sub).mkdir(parents=True)
        if f"{sub}/config" not in skip:
            (root / sub / configs[0]).write_text("{}")
        if sub in ("unet", "vae", "text_encoder") and f"{sub}/weights" not in skip:
            (root / sub / "diffusion_pytorch_model.safetensors").write_bytes(b"0")
    return root


def test_model_layout_names_everything_missing(tmp_path):
    assert model_layout_problems(make_sd_folder(tmp_path / "good")) == []
    bad = make_sd_folder(tmp_path / "bad", skip=("scheduler", "tokenizer", "vae/config", "text_encoder/weights"))
    assert model_layout_problems(bad) == ["no vae/config.json", "no scheduler/", "no weights in text_encoder/",
                                          "no tokenizer/"]


def test_model_option_on_a_bad_folder_reports_what_is_missing_and_fails(tmp_path):
    bad = make_sd_folder(tmp_path / "sd", skip=("unet", "tokenizer"))
    code, data = run_json("--cache", str(tmp_path), "--model", str(bad))
    model = by_name(data)["model"]
    assert code == 1 and not data["essentials_ok"]
    assert model["status"] == "missing" and model["essential"]
    assert "no unet/" in model["detail"] and "no tokenizer/" in model["detail"] and "vae" not in model["detail"]
    assert "save_pretrained" in model["fix"]


@pytest.mark.parametrize("model, status", [("tiny", "ok"), ("no/such/folder", "missing"), ("nope.ckpt", "missing")])
def test_model_check_tiny_and_wrong_names(tmp_path, model, status):
    ctx = doctor.Context(tmp_path, model, tmp_path)
    assert doctor.check_model(ctx).status == status
    assert doctor.check_model(doctor.Context(tmp_path, None, tmp_path)) is None
    assert doctor.check_model(doctor.Context(tmp_path, str(make_sd_folder(tmp_path / "sd")), tmp_path)).status == "ok"


def test_a_crashing_check_is_reported_not_raised(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("kaput")

    monkeypatch.setattr(doctor, "CHECKS", [("torch", True, boom), ("dask", False, doctor.check_dask)])
    report = doctor.run_doctor(tmp_path)
    assert [c.status for c in report.checks] == ["missing", "ok"] and "kaput" in report.checks[0].detail
    assert report.exit_code == 1
    with pytest.raises(RuntimeError):
        doctor.run_doctor(tmp_path, debug=True)


def test_slow_disk_and_low_space_are_flagged(tmp_path, monkeypatch):
    ctx = doctor.Context(tmp_path, None, tmp_path)
    monkeypatch.setattr(doctor, "SLOW_WRITE_MB_S", 1e9)
    assert doctor.check_disk(ctx).status == "slow"
    monkeypatch.setattr(doctor, "LOW_SPACE_GB", 1e12)
    found = doctor.check_disk(ctx)
    assert found.status == "missing" and "bigger disk" in found.fix


# --- the conda environment ------------------------------------------------------------------------------

DEPRECATED_CHANNELS = {"pytorch", "nvidia", "defaults", "anaconda", "main", "r", "msys2"}
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}  # PyPI name -> conda-forge name


def dist_name(spec: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", spec.strip()).group(0).lower().replace("_", "-")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def env() -> tuple[dict, str]:
    text = (ROOT / "environment.yml").read_text()
    return yaml.safe_load(text), text


def test_environment_uses_conda_forge_only_and_a_cuda_pytorch(env):
    data, _ = env
    channels = set(data["channels"])
    assert "conda-forge" in channels and not channels & DEPRECATED_CHANNELS and channels <= {"conda-forge", "nodefaults"}
    conda = [d for d in data["dependencies"] if isinstance(d, str)]
    names = {dist_name(d) for d in conda}
    assert "pytorch-cuda" not in names and "cudatoolkit" not in names  # the old channels' CUDA selectors
    assert not any("::" in d for d in conda)  # no package pulled from another channel
    assert "pytorch=*=cuda*" in conda and any(re.fullmatch(r"cuda-version=\d+\.\d+", d) for d in conda)
    assert "cuda-nvcc" in names  # the kernels' setup.py needs nvcc even for prebuilt wheels


def test_every_runtime_dependency_is_in_the_environment(env, pyproject):
    data, text = env
    conda = {dist_name(d) for d in data["dependencies"] if isinstance(d, str)}
    pip = next(d["pip"] for d in data["dependencies"] if isinstance(d, dict))
    assert "-e ." in [p.split("#")[0].strip() for p in pip]
    # what the `-e .` line brings from PyPI, as its comment says
    via_pip = {dist_name(n) for n in re.search(r"-e \.\s+#.*?:\s*(.+)", text).group(1).split(",")}
    for spec in pyproject["dependencies"]:
        name = dist_name(spec)
        assert CONDA_NAMES.get(name, name) in conda or name in via_pip, f"{name} is not in environment.yml"
    assert via_pip.isdisjoint(conda)


def test_gpu_extra_is_installed_without_build_isolation(env, pyproject):
    _, text = env
    readme = (ROOT / "README.md").read_text()
    for doc in (text, readme):
        commands = [line for line in doc.splitlines() if "--no-build-isolation" in line]
        for spec in pyproject["optional-dependencies"]["gpu"]:
            assert any(dist_name(spec) in line for line in commands), f"{spec}: no --no-build-isolation install"
    pip = next(d["pip"] for d in env[0]["dependencies"] if isinstance(d, dict))
    assert not any("mamba" in p or "causal" in p for p in pip)  # conda's pip step cannot skip build isolation


def test_doctor_says_what_stage_two_costs_on_the_cpu_with_the_measured_figure(no_gpu):
    fix = by_name(run_json()[1])["gpu"]["fix"]
    assert "fine on CPU" not in fix
    assert "--set pixel_size=64" in fix and "--set regressor.use_tcab=false" in fix
    ratio, videos = re.search(r"([\d.]+)x for (\d+) videos", fix).groups()
    # a run of benchmarks/tcab_cpu.py at that many videos measured that epoch ratio (TCAB on / off)
    bench = (ROOT / "BENCHMARKS.md").read_text()
    sections = [part.split("\n## ")[0] for part in bench.split("\n## TCAB on the CPU: this checkout vs a baseline")[1:]]
    row = re.compile(rf"\| TCAB on, compiled kernels\s*\|[^|]*\|\s*{re.escape(ratio)}\s*\|")
    assert any(f"--videos {videos} " in section and row.search(section) for section in sections)
