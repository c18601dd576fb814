"""`diffvqa-cache doctor`: what this machine has for a run, and what to do about what it lacks.

Each check is a small function returning a `Finding`; the runner names it, turns a crash into a
"missing" line, and decides the exit code: 1 when an essential (torch, diffusers, h5py, a working
video decoder, the Mamba path) is missing. Heavy imports happen inside the checks.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple

Status = Literal["ok", "missing", "slow", "info"]

GPU_INSTALL = "README.md 'Installing on a GPU cluster'"
KERNEL_INSTALL = "pip install --no-build-isolation causal-conv1d mamba-ssm"
# cache size of one video at the default settings (the paper's: 8 frames x (1 + 20 crops) views of SD 2.1-base
# at 512 px, each 633,856 B: F_MS 3520 channels at 8x8 + F_Latent 4x64x64 in fp16, a 224 px uint8 copy)
MB_PER_VIDEO = 106
LOW_SPACE_GB = 20
WRITE_TEST_MB = 64
SLOW_WRITE_MB_S = 100  # a GPU at --steps 1 writes ~225 MB/s of features (BENCHMARKS.md)
TOLERANCE = 1e-3  # max |scan - reference| / max |reference| accepted from the Mamba path


class Finding(NamedTuple):
    """What one check found; the runner adds the check's name."""

    status: Status
    detail: str
    fix: str = ""
    essential: bool | None = None  # None: the check's default


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status  # ok | missing | slow (works, but a faster path is not there) | info
    detail: str  # what was found
    fix: str  # what to do about it ("" when nothing)
    essential: bool  # a "missing" essential makes doctor exit 1


@dataclass(frozen=True)
class Report:
    """Every check's line, in order; essentials decide the exit code."""

    checks: list[Check]

    @property
    def essentials_ok(self) -> bool:
        return not any(c.essential and c.status == "missing" for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.essentials_ok else 1

    def to_dict(self) -> dict:
        return {"essentials_ok": self.essentials_ok, "checks": [asdict(c) for c in self.checks]}


class Context:
    """What the checks share: the options given and a scratch folder for test clips."""

    def __init__(self, cache: Path, model: str | None, scratch: Path):
        self.cache = cache  # where extract will write (free space and write speed are measured there)
        self.model = model  # --model to check, or None
        self.scratch = scratch  # removed after the run

    @functools.cached_property
    def clips(self) -> dict[str, Path | str]:
        """A tiny test clip per codec, or why none could be written (no encoder in this PyAV)."""
        from diffvqa_cache.extraction.codecs import write_test_clips

        return write_test_clips(self.scratch)


CHECKS: list[tuple[str, bool, Callable[[Context], Finding | None]]] = []


def _check(name: str, essential: bool = False):
    def register(fn):
        CHECKS.append((name, essential, fn))
        return fn

    return register


def run_doctor(cache: Path = Path("cache"), model: str | None = None, debug: bool = False) -> Report:
    """Run every check once; checks that do not apply (no --model) are left out. `debug` lets a crash raise."""
    checks = []
    with tempfile.TemporaryDirectory(prefix="diffvqa-doctor-") as scratch:
        ctx = Context(Path(cache), model, Path(scratch))
        for name, essential, fn in CHECKS:
            try:
                found = fn(ctx)
            except Exception as exc:  # a crashing check says so instead of hiding the others
                if debug:
                    raise
                found = Finding("missing", f"the check failed: {type(exc).__name__}: {_one_line(exc)}",
                                "rerun as `diffvqa-cache --debug doctor` for the traceback")
            if found is not None:
                checks.append(Check(name, found.status, found.detail, found.fix,
                                    essential if found.essential is None else found.essential))
    return Report(checks)


def format_report(report: Report) -> str:
    """One line per check (status, name, what was found, -> what to do), then the verdict."""
    lines = [f"{c.status:<8}{c.name:<13}{c.detail}" + (f"  -> {c.fix}" if c.fix else "") for c in report.checks]
    missing = [c.name for c in report.checks if c.essential and c.status == "missing"]
    lines.append("essentials ok: torch, diffusers, h5py, a video decoder, the Mamba path" if not missing
                 else f"essentials missing: {', '.join(missing)} (exit 1)")
    return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _import(name: str):
    """(module, "") or (None, why it does not import)."""
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # ImportError, or a broken build raising anything
        return None, _one_line(exc)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _package(module: str, dist: str, fix: str, missing: Status = "missing") -> Finding:
    """ok with the version when `module` is installed, else `missing` (or another status) with `fix`.

    Looks the module up without importing it: diffusers alone takes seconds to import.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return Finding("ok", _version(dist)) if found else Finding(missing, "not installed", fix)


# --- checks, in report order -------------------------------------------------------------------------


@_check("python", essential=True)
def check_python(ctx: Context) -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return Finding("missing", f"{version} ({sys.prefix})", "use Python 3.10 or newer")
    return Finding("ok", f"{version} ({sys.prefix})")


def _nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


@_check("torch", essential=True)
def check_torch(ctx: Context) -> Finding:
    torch, why = _import("torch")
    if torch is None:
        return Finding("missing", f"not importable ({why})", f"install torch (CPU: README setup; GPU: {GPU_INSTALL})")
    if torch.version.cuda is None:
        if _nvidia_driver():
            return Finding("slow", f"{torch.__version__}, a CPU build on a machine with an NVIDIA driver",
                           f"install a CUDA build of torch ({GPU_INSTALL})")
        return Finding("ok", f"{torch.__version__}, CPU build")
    cudnn = torch.backends.cudnn.version()
    return Finding("ok", f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}, "
                         f"cxx11abi {torch._C._GLIBCXX_USE_CXX11_ABI}")


@_check("gpu")
def check_gpus(ctx: Context) -> Finding:
    import torch

    if not torch.cuda.is_available():
        where = "CPU build of torch" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build, no usable GPU"
        return Finding("slow", f"none ({where}): extract and adapt would run on the CPU",
                       "run extract on a GPU node; cache commands and fits with TCAB off or on 64 px views are fine on "
                       "the CPU, TCAB on 224 px views makes an epoch ~3x slower there (2.94x for 96 videos on 2 cores, "
                       "BENCHMARKS.md): fit --set pixel_size=64 or --set regressor.use_tcab=false for quick runs")
    gpus, no_bf16 = [], []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(f"{i}: {props.name} {props.total_memory / 2**30:.0f} GiB")
        if props.major < 8:  # bf16 arithmetic needs compute capability 8.0 (Ampere) or newer
            no_bf16.append(str(i))
    detail = "; ".join(gpus) + (", bf16 on all" if not no_bf16 else f", no bf16 on GPU {', '.join(no_bf16)}")
    if no_bf16:
        return Finding("slow", detail, "use --dtype fp16 (or fp32) on the GPUs without bf16")
    return Finding("ok", detail)


def _relative_error(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@_check("mamba", essential=True)
def check_mamba(ctx: Context) -> Finding:
    """Run one tiny Mamba layer where fit would; compare the kernel with the PyTorch scan, or the PyTorch
    scan with the sequential reference."""
    import copy

    import torch

    _, why = _import("mambapy.pscan")
    if why:
        return Finding("missing", f"mambapy not importable ({why}): no Mamba path at all", "pip install mambapy")
    from diffvqa_cache.devices import resolve_device
    from diffvqa_cache.training.regressor import mamba

    device = resolve_device("auto")
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = mamba.Mamba(d_model=16, d_state=4).to(device)
    x = torch.randn(2, 12, 16, generator=gen).to(device)
    with torch.no_grad():
        try:
            y = layer(x)
        except Exception as exc:  # e.g. a kernel built for another GPU architecture or torch
            return Finding("missing", f"one Mamba layer on {device} fails ({_one_line(exc)})", _kernel_fix(device))
        if not torch.isfinite(y).all():
            return Finding("missing", f"one Mamba layer on {device} returned NaN/Inf", _kernel_fix(device))
        kernel = device.type == "cuda" and mamba.cuda_selective_scan() is not None
        compiled = False
        if kernel:
            err = _relative_error(y.float().cpu(), copy.deepcopy(layer).cpu()(x.cpu()))
            what, against = "kernel (mamba_ssm CUDA scan)", "the PyTorch scan"
        else:
            try:
                scan = mamba.cpu_selective_scan(torch.float32, True)
            except (ValueError, RuntimeError) as exc:  # a bad $DIFFVQA_MAMBA_SCAN
                return Finding("missing", _one_line(exc), f"unset {mamba.SCAN_ENV}")
            compiled = scan is not mamba.selective_scan_parallel
            err = _scan_vs_reference(mamba, gen, scan)
            kind = "compiled CPU scan" if compiled else "pure-PyTorch scan"
            what, against = f"fallback ({kind}) on {device}", "the sequential reference"
    if err > TOLERANCE:
        return Finding("missing", f"{what} differs from {against} by {err:.1e}", _kernel_fix(device))
    detail = f"{what}, matches {against} to {err:.0e}"
    if device.type == "cuda" and not kernel:
        _, why = _import("mamba_ssm.ops.selective_scan_interface")
        return Finding("slow", f"{detail}; mamba_ssm: {why}", f"{KERNEL_INSTALL} ({GPU_INSTALL})")
    if device.type == "cpu" and not compiled and os.environ.get(mamba.SCAN_ENV, "auto") != "torch":
        return Finding("slow", f"{detail}; {mamba.scan_cpu._library()}",
                       "install a C compiler (e.g. apt-get install gcc) for the compiled CPU kernels (TCAB training many times faster)")
    return Finding("ok", detail)


def _scan_vs_reference(mamba, gen, scan) -> float:
    import torch

    b, d, n, length = 2, 8, 4, 12
    u, delta, z = (torch.randn(b, d, length, generator=gen) for _ in range(3))
    B, C = (torch.randn(b, n, length, generator=gen) for _ in range(2))
    A, D, bias = -torch.rand(d, n, generator=gen) - 0.5, torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    fast = scan(u, delta, A, B, C, D, z=z, delta_bias=bias)
    slow = mamba.selective_scan_reference(u, delta, A, B, C, D, z=z, delta_bias=bias)
    return _relative_error(fast, slow)


def _kernel_fix(device) -> str:
    if device.type == "cuda":
        return ("rebuild the kernels against this torch: MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE "
                f"{KERNEL_INSTALL} --force-reinstall --no-cache-dir")
    return "reinstall mambapy and torch (pip install --force-reinstall mambapy)"


def _codec_table(ctx: Context, backend: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(codecs that decode, {codec: why not}, {codec: why it could not be tested})."""
    from diffvqa_cache.extraction.codecs import decode_problem

    good, bad, untested = [], {}, {}
    for label, clip in ctx.clips.items():
        if isinstance(clip, str):
            untested[label] = clip
        elif why := decode_problem(clip, backend):
            bad[label] = why
        else:
            good.append(label)
    return good, bad, untested


@_check("pyav", essential=True)
def check_pyav(ctx: Context) -> Finding:
    av, why = _import("av")
    if av is None:
        return Finding("missing", f"not importable ({why})", "pip install av (PyAV probes every video)")
    from diffvqa_cache.extraction.codecs import CODEC_DECODERS, has_codec

    good, bad, untested = _codec_table(ctx, "pyav")
    detail = f"{av.__version__}: decodes {' '.join(good) or 'nothing'}"
    for label, why in untested.items():  # say at least whether a decoder is there
        has = any(has_codec(d, "r") for d in CODEC_DECODERS[label])
        detail += f"; {label} {'decoder present' if has else 'no decoder'}, cannot test: {why}"
    if bad:
        detail += "".join(f"; {label} fails ({why})" for label, why in bad.items())
        return Finding("missing", detail, "install a PyAV wheel with full FFmpeg (pip install --force-reinstall av)",
                       essential=not good)
    return Finding("ok", detail)


@_check("decord")
def check_decord(ctx: Context) -> Finding:
    decord, why = _import("decord")
    if decord is None:
        return Finding("missing", f"not importable ({why}); PyAV decodes everything meanwhile",
                       "pip install decord (x86_64 only) for faster H.264/HEVC seeking")
    good, bad, _ = _codec_table(ctx, "decord")
    detail = f"{decord.__version__}: decodes {' '.join(good) or 'nothing'}"
    if bad:
        detail += f"; not {' '.join(bad)} (PyAV takes those)"
    if "H.264" not in good:
        return Finding("slow", detail, "reinstall decord; PyAV decodes everything meanwhile")
    return Finding("ok", detail)


@_check("diffusers", essential=True)
def check_diffusers(ctx: Context) -> Finding:
    return _package("diffusers", "diffusers", "pip install diffusers")


@_check("h5py", essential=True)
def check_h5py(ctx: Context) -> Finding:
    return _package("h5py", "h5py", "pip install h5py")


@_check("transformers")
def check_transformers(ctx: Context) -> Finding:
    return _package("transformers", "transformers",
                    "pip install transformers (real SD folders need it for the empty-prompt embedding; --model tiny does not)")


@_check("accelerate")
def check_accelerate(ctx: Context) -> Finding:
    return _package("accelerate", "accelerate", "pip install accelerate (diffusers then loads real SD "
                    "weights faster and with less memory)", missing="slow")


@_check("model", essential=True)
def check_model(ctx: Context) -> Finding | None:
    if ctx.model is None:
        return None
    if ctx.model == "tiny":
        return Finding("ok", "tiny: the seeded test model (proves the plumbing, not quality)")
    from diffvqa_cache.extraction.backbone import SD_LAYOUT, looks_like_hub_id, model_layout_problems

    folder = Path(ctx.model).expanduser()
    if not folder.is_dir():
        if not looks_like_hub_id(ctx.model):
            return Finding("missing", f"{ctx.model}: no such folder, and not a hub id like "
                                      "stabilityai/stable-diffusion-2-1-base", "pass a diffusers SD folder")
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(ctx.model, local_files_only=True))
        except Exception:
            return Finding("info", f"{ctx.model}: hub id, not in the local Hugging Face cache; extract downloads it",
                           f"on offline compute nodes: hf download {ctx.model} on a login node, or pass a local folder")
    problems = model_layout_problems(folder)
    if problems:
        return Finding("missing", f"{folder}: {'; '.join(problems)}",
                       "pass a folder written by StableDiffusionPipeline.save_pretrained (or a full hub snapshot)")
    return Finding("ok", f"{folder}: {', '.join(SD_LAYOUT)} present")


@_check("disk")
def check_disk(ctx: Context) -> Finding:
    """Free space and fsync'd write speed where the cache will go (its nearest existing folder)."""
    import numpy as np

    base = ctx.cache.expanduser().absolute()
    while not base.exists():
        base = base.parent
    free_gb = shutil.disk_usage(base).free / 1e9
    block = np.random.default_rng(0).bytes(8 << 20)  # random: compressing filesystems cannot cheat
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".diffvqa-doctor-") as f:
            start = time.perf_counter()
            for _ in range(WRITE_TEST_MB // 8):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
            speed = WRITE_TEST_MB * 1.048576 / (time.perf_counter() - start)
    except OSError as exc:
        return Finding("missing", f"cannot write in {base} ({_one_line(exc)})", "choose a writable --out for extract")
    detail = (f"{base}: {free_gb:.0f} GB free (~{free_gb * 1000 / MB_PER_VIDEO:,.0f} videos at the default "
              f"settings), writes {speed:.0f} MB/s")
    if free_gb < LOW_SPACE_GB:
        return Finding("missing", detail, f"free space or point --out at a bigger disk (~{MB_PER_VIDEO} MB per video)")
    if speed < SLOW_WRITE_MB_S:
        return Finding("slow", detail, "put the cache on local or scratch SSD: a GPU at --steps 1 writes ~225 MB/s")
    return Finding("ok", detail)


@_check("dask")
def check_dask(ctx: Context) -> Finding:
    found = _package("dask", "dask", "pip install dask distributed dask-jobqueue (sweeps, distributed extract)")
    if found.status != "ok":
        return found
    others = {d: _version(d) for d in ("distributed", "dask-jobqueue")}
    absent = [d for d, v in others.items() if v == "?"]
    detail = f"dask {found.detail}, " + ", ".join(f"{d} {v}" for d, v in others.items())
    return Finding("missing", detail, f"pip install {' '.join(absent)}") if absent else Finding("ok", detail)


@_check("scheduler")
def check_schedulers(ctx: Context) -> Finding:
    found = {kind: [c for c in cmds if shutil.which(c)] for kind, cmds in
             (("SLURM", ("sbatch", "squeue")), ("PBS", ("qsub", "qstat")))}
    seen = [f"{kind}: {' '.join(cmds)}" for kind, cmds in found.items() if cmds]
    if not seen:
        return Finding("info", "no sbatch, squeue, qsub on PATH: local runs (`cluster` still writes job scripts)")
    return Finding("info", "; ".join(seen) + " on PATH (`diffvqa-cache cluster slurm|pbs` writes job scripts)")
