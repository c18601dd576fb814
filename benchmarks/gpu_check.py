"""The first GPU slot, prepared: one driver that measures stage one, the fit and predict on a bare GPU machine
within a time budget and writes one JSON and a markdown table. Run it through `benchmarks/gpu_check.sh`
(which installs the carried wheels first); `--dry-run` runs every step at tiny sizes on the CPU (the test
suite does, so the script cannot rot).

Steps, each in its own process with a deadline taken from what is left of --budget-s (what does not fit
is recorded as skipped; results are written after every step, so a kill keeps what was measured):
 1. env: torch, CUDA, GPU, the versions and locations of the carried packages, whether mamba_ssm imports.
 2. stage1: `stage1_gpu.py` (SD 2.1-base size, random weights, 512 px, bf16): views/s and MFU at 1, 4 and
    50 steps x a batch-size sweep, bf16-vs-fp32 error, levers (no torch.compile: its compile time is unbounded).
 3. sd_folder: a random-weight SD 2.1-base-size diffusers folder (`synthetic.save_sd_folder`), as a user's
    real checkpoint would be laid out.
 4. pipeline: `extract` of sample clips with that folder on the GPU, a fit of the cache (TCAB on) and
    `predict` with the run: videos/s of extract and predict.
 5. fit_epoch: one split of a synthetic cache with SD's feature shapes (TCAB on and off) trained on the GPU:
    seconds per epoch, and which selective scan ran (mamba_ssm's kernel or the pure-PyTorch scan).

    python benchmarks/gpu_check.py --out OUT               # on the GPU machine (gpu_check.sh calls it)
    python benchmarks/gpu_check.py --dry-run --out /tmp/x  # tiny sizes on the CPU (~1-2 min)
    python benchmarks/gpu_check.py --check-wheels .whl     # are the carried wheels' requirements all met?
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

# Wheels carried to the GPU machine (see gpu_check.sh): the packages the pipeline imports that its image lacks.
CARRIED = ("diffusers==0.42.1", "av==18.1.0", "decord==0.6.0", "mambapy==1.2.0", "importlib-metadata==8.7.0")
# Python packages of the GPU machines' image (device KINDS.md, read 2026-11-17), normalised names.
DEVICE_PACKAGES = frozenset("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite
lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
yarl zipp""".split())
# modules the pipeline imports from the carried wheels (import name: distribution)
CARRIED_MODULES = {"diffusers": "diffusers", "av": "av", "decord": "decord", "mambapy": "mambapy",
                   "importlib_metadata": "importlib-metadata"}
STEP_SHARE = {"stage1": 0.40, "sd_folder": 0.15, "pipeline": 0.25, "fit_epoch": 0.20}  # of the budget left


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------- wheels
def wheel_requirements(whl: Path) -> tuple[str, list[str]]:
    """(distribution name, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Name:"))
    return name, [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def missing_requirements(wheels: dict[str, list[str]], present=DEVICE_PACKAGES,
                         env: dict | None = None) -> list[str]:
    """Requirements of the given wheels ({name: Requires-Dist lines}) that neither the machine (`present`)
    nor another wheel provides; markers are evaluated for CPython 3.12 on Linux x86_64, extras skipped."""
    from packaging.requirements import Requirement

    env = env or {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    have = {norm(n) for n in present} | {norm(n) for n in wheels}
    out = []
    for name, reqs in wheels.items():
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if norm(req.name) not in have:
                out.append(f"{name} needs {line}")
    return out


def check_wheels(folder: Path, import_test: bool = True) -> dict:
    """The carried wheels against CARRIED (one version each) and their requirements; with `import_test`,
    install them into a fresh --target folder and import each module from there."""
    wheels = sorted(folder.glob("*.whl"))
    reqs = dict(wheel_requirements(w) for w in wheels)
    names = [norm(n) for n in reqs]
    wanted = {norm(c.split("==")[0]) for c in CARRIED}
    report = {"wheels": [w.name for w in wheels], "missing_wheels": sorted(wanted - set(names)),
              "duplicates": sorted({n for n in names if names.count(n) > 1}),
              "unmet_requirements": missing_requirements(reqs), "imports": {}}
    if import_test and wheels:
        with tempfile.TemporaryDirectory() as target:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--target", target, *map(str, wheels)], check=True)
            for mod in CARRIED_MODULES:
                code = (f"import sys; sys.path.insert(0, {target!r}); import {mod} as m; "
                        f"print(m.__file__.startswith({target!r}))")
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                report["imports"][mod] = (r.stdout.strip() == "True") if r.returncode == 0 else \
                    (r.stderr.strip().splitlines() or ["?"])[-1]
    report["ok"] = not (report["missing_wheels"] or report["duplicates"] or report["unmet_requirements"]) and \
        all(v is True for v in report["imports"].values())
    return report


# ------------------------------------------------------------------------------------------- steps
def step_env(args) -> dict:
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cpus": os.cpu_count(), "packages": {}}
    if torch.cuda.is_available():
        out["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for mod in (*CARRIED_MODULES, "transformers", "huggingface_hub", "accelerate", "h5py", "safetensors"):
        try:
            m = importlib.import_module(mod)
            out["packages"][mod] = f"{getattr(m, '__version__', '?')} ({Path(m.__file__).parent})"
        except Exception as exc:
            out["packages"][mod] = f"MISSING: {type(exc).__name__}: {exc}"
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
        out["mamba_ssm"] = "imports"
    except Exception as exc:
        out["mamba_ssm"] = f"not available ({type(exc).__name__}); TCAB uses the pure-PyTorch scan"
    return out


def step_stage1(args, deadline_s: float) -> dict:
    """stage1_gpu.py in a child process (its own budget: stop starting measurements 20 s before ours)."""
    work = Path(args.work) / "stage1"
    cmd = [sys.executable, str(HERE / "stage1_gpu.py"), "--no-compile", "--out", str(work),
           "--budget-s", str(max(deadline_s - 20, 5))]
    cmd += (["--dry-run", "--steps", "1", "--batch-sizes", "1", "2", "--no-levers"] if args.dry_run else
            ["--steps", "1", "4", "50", "--batch-sizes", *map(str, args.batch_sizes), "--repeats", "2"])
    run_child(cmd, deadline_s, work / "child.log")
    res = json.loads((work / "stage1_gpu.json").read_text())
    res["section_md"] = (work / "stage1_gpu_section.md").read_text()
    return res


def sd_folder_path(args) -> Path:
    return Path(args.work) / "sd21-base-random"


def step_sd_folder(args) -> dict:
    import torch
    from _common import sd21_base_configs
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffvqa_cache.extraction.backbone import build_tiny
    from diffvqa_cache.synthetic import save_sd_folder

    folder = sd_folder_path(args)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if args.dry_run:
        vae, unet, _ = build_tiny()
        save_sd_folder(folder, vae, unet, dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                               num_attention_heads=4), max_length=8)
    else:  # SD 2.1-base's VAE and UNet, SD 2's text encoder size (as benchmarks/load_memory.py builds it)
        vae_cfg, unet_cfg = sd21_base_configs()
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is far faster there
            vae, unet = AutoencoderKL(**vae_cfg), UNet2DConditionModel(**unet_cfg)
        save_sd_folder(folder, vae.cpu(), unet.cpu(),
                       dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                            num_attention_heads=16, hidden_act="gelu", projection_dim=512), max_length=77)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"folder": str(folder), "gb": size / 1e9, "seconds": time.perf_counter() - t0}


def step_pipeline(args) -> dict:
    """extract (sample clips, the SD folder, the GPU), fit (TCAB on) and predict: videos/s."""
    import torch

    from diffvqa_cache.cache.settings import ExtractConfig
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.training.settings import FitConfig
    from pipelines.extract import run_extract
    from pipelines.fit import run_fit
    from pipelines.predict import run_predict

    device = "cpu" if args.dry_run else "cuda"
    n = 15 if args.dry_run else args.videos  # a random 20% test split needs 15 videos (3 for metrics)
    data = load_dataset("sample", None, limit=n)
    paths = [r.path for r in data.records]
    # strength 0.5: with a zero-init Controller (no `adapt` run here) strength 1 gives every video the same features
    cfg = ExtractConfig(model=str(sd_folder_path(args)), steps=1 if args.dry_run else args.pipeline_steps, strength=0.5,
                        frames=2 if args.dry_run else 8, dtype="fp32" if args.dry_run else "bf16",
                        pixel_size=32 if args.dry_run else 224, batch_size=2 if args.dry_run else args.pipeline_batch,
                        shard_size=8, device=device)
    work = Path(args.work) / "pipeline"
    out = {"videos": n, "steps": cfg.steps, "batch_size": cfg.batch_size, "dtype": cfg.dtype, "device": device}
    t0 = time.perf_counter()
    res = run_extract(data, cfg, work / "cache", progress=False)
    out["extract_s"] = time.perf_counter() - t0
    out["extract_videos_per_s"] = n / out["extract_s"]
    fit = FitConfig().with_overrides({"splits": 1, "train.epochs": 1 if args.dry_run else 2, "train.device": device,
                                      "train.batch_size": 2 if args.dry_run else 8,
                                      "regressor.use_tcab": not args.dry_run})  # dry: fit_epoch covers TCAB
    out["fit_tcab"] = fit.regressor.use_tcab
    t0 = time.perf_counter()
    run_fit(res.cache_dir, work / "run", fit, progress=False)
    out["fit_s"] = time.perf_counter() - t0
    for name in ("warm", "timed"):  # the first call pays for imports and lazy CUDA init
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        scores = run_predict(paths if name == "timed" else paths[:1], work / "run", device=device,
                             batch_size=cfg.batch_size, output=work / f"{name}.csv", progress=False)
        secs = time.perf_counter() - t0
    assert all(s.error is None for s in scores), [s.error for s in scores]
    out["predict_s"] = secs
    out["predict_videos_per_s"] = n / secs
    out["predict_over_extract"] = out["predict_videos_per_s"] / out["extract_videos_per_s"]
    if torch.cuda.is_available():
        out["predict_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def step_fit_epoch(args) -> dict:
    """Seconds per epoch of one split on the GPU, TCAB on and off, on a synthetic cache of SD's shapes."""
    import numpy as np
    import torch

    from diffvqa_cache.synthetic import write_synthetic_cache
    from diffvqa_cache.training.loop import train
    from diffvqa_cache.training.protocols import random_splits
    from diffvqa_cache.training.regressor import DiffVQARegressor, RegressorConfig, mamba
    from diffvqa_cache.training.settings import FitConfig, TrainConfig
    from diffvqa_cache.training.inputs import load_fit_inputs

    device = "cpu" if args.dry_run else "cuda"
    work = Path(args.work) / "fit"
    kw = (dict(frames=2, latent_hw=8, grid=2, pixel_size=32, ms_channels=(16, 16, 8, 8)) if args.dry_run
          else dict(frames=8))
    n = 15 if args.dry_run else args.fit_videos  # a random 20% test split needs 15 videos (3 for metrics)
    t0 = time.perf_counter()
    made = write_synthetic_cache(work, n, **kw)
    out = {"videos": n, "cache_gb": made.nbytes / 1e9, "write_s": time.perf_counter() - t0, "device": device,
           "scan": "mamba_ssm CUDA kernel" if device == "cuda" and getattr(mamba, "cuda_selective_scan", lambda: None)()
           is not None else "pure PyTorch"}
    cfg = FitConfig(regressor=RegressorConfig(use_tcab=True), splits=1, train=TrainConfig(device=device),
                    memory_gb=64)
    t0 = time.perf_counter()
    table = load_fit_inputs(made.cache_dir, cfg).table
    out["load_s"] = time.perf_counter() - t0
    split = random_splits(list(table.keys), 1, 0.2, 0)[0]
    row_of = {k: i for i, k in enumerate(table.keys)}
    train_t = table.subset(np.array([row_of[k] for k in split.train]))
    for tcab in (True, False):
        torch.manual_seed(0)
        model = DiffVQARegressor(RegressorConfig(use_tcab=tcab), table.feature_spec())
        tcfg = TrainConfig(epochs=1 if args.dry_run else 2, device=device, batch_size=4 if args.dry_run else 16)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        res = train(model, train_t, tcfg, seed=0)
        ep = [h["seconds"] for h in res.history]
        key = "tcab_on" if tcab else "tcab_off"
        out[key] = {"epoch_s": ep, "train_videos": len(train_t), "batch_size": tcfg.batch_size,
                    "videos_per_s": len(train_t) / min(ep)}
        if torch.cuda.is_available():
            out[key]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


STEPS = {"stage1": None, "sd_folder": step_sd_folder, "pipeline": step_pipeline, "fit_epoch": step_fit_epoch}


# ------------------------------------------------------------------------------------------- driver
def run_child(cmd: list[str], timeout: float, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        try:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"over its {timeout:.0f} s deadline") from None
    if r.returncode:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"exit {r.returncode}: {tail[0]} (log: {log.name})")


def child_main(args) -> None:
    """One step (sd_folder, pipeline, fit_epoch) in this process: its result as JSON on the last line."""
    result = STEPS[args.step](args)
    Path(args.result).write_text(json.dumps(result, default=str))


def fmt(x, digits=3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def markdown(results: dict) -> str:
    env = results.get("env", {})
    lines = [f"# GPU check ({'DRY RUN, tiny sizes on the CPU' if results['dry_run'] else env.get('gpu')})", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"Python {env.get('python')}; mamba_ssm: {env.get('mamba_ssm')}; wall {results.get('wall_s', 0):.0f} s "
             f"of a {results['budget_s']:.0f} s budget.", "",
             "| step | measure | value |", "| --- | --- | --- |"]
    st = results.get("stage1") or {}
    for r in st.get("grid", []):
        val = (f"{r['views_per_s']:.3g} views/s, MFU {r['mfu']:.1%}, peak {fmt(r['peak_gib'])} GiB"
               if "views_per_s" in r else r.get("error", "?"))
        lines.append(f"| stage 1 (bf16) | {r['steps']} steps, batch {r['batch']} | {val} |")
    for r in st.get("levers", []):
        val = f"{r['views_per_s']:.3g} views/s, MFU {r['mfu']:.1%}" if "views_per_s" in r else r.get("error", "?")
        lines.append(f"| stage 1 lever | {r['variant']} | {val} |")
    sd = results.get("sd_folder") or {}
    if sd:
        lines.append(f"| SD folder | random SD 2.1-base size, written | {sd['gb']:.3g} GB in {sd['seconds']:.0f} s |")
    p = results.get("pipeline") or {}
    if p:
        how = f"{p['videos']} sample clips, {p['steps']} steps, batch {p['batch_size']}, {p['dtype']}"
        lines.append(f"| extract | {how} | {p['extract_videos_per_s']:.3g} videos/s |")
        lines.append(f"| predict | same clips, the run's split model(s) | {p['predict_videos_per_s']:.3g} videos/s "
                     f"({p['predict_over_extract']:.2f} x extract) |")
        lines.append(f"| fit of that cache | 1 split, TCAB {'on' if p['fit_tcab'] else 'off'} | {p['fit_s']:.3g} s "
                     f"(load included) |")
    f = results.get("fit_epoch") or {}
    for key in ("tcab_on", "tcab_off"):
        if key in f:
            r = f[key]
            lines.append(f"| fit epoch ({f['scan']} scan) | {key.replace('_', ' ')}, {r['train_videos']} videos, "
                         f"batch {r['batch_size']} | {min(r['epoch_s']):.3g} s/epoch ({r['videos_per_s']:.3g} "
                         f"videos/s){', peak %.3g GiB' % r['peak_gib'] if 'peak_gib' in r else ''} |")
    for name, why in results.get("skipped", {}).items():
        lines.append(f"| {name} | skipped or failed | {why[:300]} |")
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(results))


def main() -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks every step's logic")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--budget-s", type=float, default=440.0, help="wall-clock budget of all the steps")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS), help="steps to run")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--videos", type=int, default=24, help="sample clips for extract and predict")
    ap.add_argument("--pipeline-steps", type=int, default=4, help="reverse-chain steps of extract and predict")
    ap.add_argument("--pipeline-batch", type=int, default=16, help="views per model pass in extract and predict")
    ap.add_argument("--fit-videos", type=int, default=160, help="videos of the synthetic cache for fit_epoch")
    ap.add_argument("--check-wheels", type=Path, default=None, help="check the wheels in this folder and exit")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check_wheels is not None:
        report = check_wheels(args.check_wheels)
        print(json.dumps(report, indent=1))
        raise SystemExit(0 if report["ok"] else 1)
    if args.step:
        return child_main(args)
    if args.out is None:
        raise SystemExit("give --out (or set $OUT)")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on the GPU machine, or use --dry-run here")
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="gpu_check_")
        args.work = tmp.name
    results = {"dry_run": args.dry_run, "budget_s": args.budget_s, "skipped": {}}
    left = lambda: args.budget_s - (time.perf_counter() - t_start)
    results["env"] = step_env(args)
    print("env:", json.dumps(results["env"]), flush=True)
    write(results, args.out)
    todo = [s for s in STEPS if s in args.steps]
    for i, name in enumerate(todo):
        # this step's deadline: its share of what is left, plus what later steps leave unused is not known,
        # so shares are renormalised over the steps still to run
        share = STEP_SHARE[name] / sum(STEP_SHARE[s] for s in todo[i:])
        deadline = left() * share
        if deadline < 10:
            results["skipped"][name] = f"budget: {deadline:.0f} s left for it"
            continue
        if name == "pipeline" and "sd_folder" not in results:
            results["skipped"][name] = "needs the SD folder (step sd_folder did not finish)"
            continue
        t0 = time.perf_counter()
        print(f"== {name}: deadline {deadline:.0f} s", flush=True)
        try:
            if name == "stage1":
                results[name] = step_stage1(args, deadline)
            else:
                res = Path(args.work) / f"{name}.json"
                cmd = [sys.executable, __file__, "--step", name, "--result", str(res), "--work", args.work,
                       "--videos", str(args.videos), "--pipeline-steps", str(args.pipeline_steps),
                       "--pipeline-batch", str(args.pipeline_batch), "--fit-videos", str(args.fit_videos)]
                run_child(cmd + (["--dry-run"] if args.dry_run else []), deadline,
                          Path(args.work) / f"{name}.log")
                results[name] = json.loads(res.read_text())
            results[name]["step_s"] = time.perf_counter() - t0
            print(f"   {name}: {json.dumps({k: v for k, v in results[name].items() if k != 'section_md'}, default=str)[:2000]}",
                  flush=True)
        except Exception as exc:
            results["skipped"][name] = f"{type(exc).__name__}: {exc}"
            print(f"   {name} FAILED: {results['skipped'][name][:2000]}", flush=True)
        results["wall_s"] = time.perf_counter() - t_start
        write(results, args.out)
    results["wall_s"] = time.perf_counter() - t_start
    write(results, args.out)
    print(markdown(results))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
