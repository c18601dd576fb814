"""Shared helpers of the benchmark scripts: timing, machine info, tables, and writing BENCHMARKS.md.

Every script prints its table, appends one dated section to BENCHMARKS.md (the history: append only, so
sections written by other scripts or people are never rewritten) and then sets its row(s) of the table of
current figures at the top of the file (`update_current`). Both hold an exclusive lock on the file's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nMeasured numbers, appended by the scripts under `benchmarks/` (one dated section per run; "
          "see `docs/performance.md` in the shared docs for what is measured and why). Machines are shared: "
          "each section records the load average; prefer ratios measured in the same run.\n")
# The table of current figures: one row per benchmark figure, between these lines, set by update_current()
CURRENT_START = "<!-- current figures: set by the benchmark scripts (benchmarks/_common.py, update_current) -->"
CURRENT_END = "<!-- end of the current figures; the history (one dated section per run) follows -->"
CURRENT_HEADER = ["benchmark", "current figure", "measured", "command"]


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine_info() -> dict:
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "ram_gib": round(mem, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_avg_1_5_15": loadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def set_threads(n: int | None) -> int:
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def median_time(fn, repeats: int = 3, warmup: int = 0) -> tuple[float, list[float]]:
    """Median wall seconds of `fn()` over `repeats` calls (after `warmup` untimed calls), and all samples."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def maxrss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt(x) -> str:
    if isinstance(x, float):
        if x != x:
            return "-"
        a = abs(x)
        return (f"{x:,.0f}" if a >= 1000 else f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10
                else f"{x:.2f}" if a >= 1 else f"{x:.3g}")
    return str(x)


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(headers), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in cells])


def command_line() -> str:
    """This script's command line, absolute paths shown as DIR / FILE (the documents hold no machine paths)."""
    def shown(arg: str) -> str:
        return ("DIR" if Path(arg).is_dir() else "FILE") if os.path.isabs(arg) else arg
    return " ".join(shlex.quote(shown(a)) for a in [Path(sys.executable).name, *sys.argv])


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on the folder of `path` (a file lock would not survive the file's atomic replacement)."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def append_section(title: str, body: str, info: dict | None = None, path: Path = BENCHMARKS_MD) -> None:
    """Append one dated section (title, machine info, exact command, body) to BENCHMARKS.md, append-only."""
    info = info or machine_info()
    git = _git_commit()
    head = (f"\n## {title} ({time.strftime('%Y-%m-%d %H:%M')})\n\n"
            f"- machine: {info['machine']}, {info['cpus']} cores, {info['ram_gib']} GiB RAM"
            + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU")
            + f"; python {info['python']}, torch {info['torch']}, default torch threads {info['torch_threads']} (the tables give the count used)\n"
            f"- load average (1/5/15 min) at the end: {loadavg()} (at the start: {info['load_avg_1_5_15']})\n"
            f"- command: `{command_line()}`" + (f" (git {git}, uncommitted benchmark scripts)" if git else "") + "\n\n")
    with _locked(path), open(path, "a") as f:
        if f.tell() == 0:
            f.write(HEADER)
        f.write(head + body.rstrip() + "\n")
    print(f"appended '{title}' to {path}")


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _split_row(line: str) -> list[str]:
    cells, cell, escaped = [], "", False
    for ch in line.strip()[1:]:
        if ch == "|" and not escaped:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
        escaped = ch == "\\" and not escaped
    return cells


def read_current(text: str) -> dict[str, list[str]]:
    """{benchmark: its row's cells} of the current-figures table in BENCHMARKS.md's `text` (in order)."""
    if CURRENT_START not in text or CURRENT_END not in text:
        return {}
    block = text[text.index(CURRENT_START) + len(CURRENT_START):text.index(CURRENT_END)]
    rows = [_split_row(line) for line in block.splitlines() if line.startswith("|")][2:]  # header, rule
    return {r[0].replace("\\|", "|"): r for r in rows}


def set_current(text: str, benchmark: str, figure: str, measured: str, command: str) -> str:
    """`text` (BENCHMARKS.md) with the row `benchmark` of the current-figures table set (added at the end
    when new; the table and its markers made, after the title, when missing); the rest of `text` unchanged."""
    if CURRENT_START not in text:
        title, _, rest = text.partition("\n\n")
        text = f"{title}\n\n{CURRENT_START}\n{CURRENT_END}\n\n{rest}" if rest else f"{text.rstrip()}\n\n{CURRENT_START}\n{CURRENT_END}\n"
    rows = read_current(text)
    rows[benchmark] = [_cell(benchmark), _cell(figure), _cell(measured), _cell(command)]
    lines = ["| " + " | ".join(CURRENT_HEADER) + " |", "| " + " | ".join("---" for _ in CURRENT_HEADER) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows.values()]
    start, end = text.index(CURRENT_START) + len(CURRENT_START), text.index(CURRENT_END)
    return text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:]


def update_current(benchmark: str, figure: str, command: str | None = None, info: dict | None = None,
                   path: Path = BENCHMARKS_MD) -> None:
    """Set row `benchmark` (a fixed name per figure a script measures) of the current-figures table at the
    top of BENCHMARKS.md: `figure` (one line: the number and what it is compared with), when and where it was
    measured, and `command` (default: this script's command line). The history below is not touched."""
    from diffvqa_cache.files import write_text_atomic

    info = info or machine_info()
    git = _git_commit()
    where = f"{info['cpus']} cores" + (f", {info['gpu']}" if info.get("gpu") else ", no GPU")
    measured = f"{time.strftime('%Y-%m-%d %H:%M')}, {where}, load {loadavg().split()[0]}" + (f", git {git}" if git else "")
    with _locked(path):
        text = path.read_text() if path.exists() else HEADER
        write_text_atomic(path, set_current(text, benchmark, figure, measured, f"`{command or command_line()}`"))
    print(f"set '{benchmark}' in the current figures of {path}")


# ---------------------------------------------------------------- the real-size (SD 2.1-base) architecture
PEAK_BF16_TFLOPS = 790.0  # measured dense bf16 matmul rate of the lent H100/H200 (docs/performance.md)


def sd21_base_configs() -> tuple[dict, dict]:
    """(VAE, UNet) constructor kwargs of Stable Diffusion 2.1-base (512 px, latent 4x64x64)."""
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               block_out_channels=(128, 256, 512, 512), sample_size=512, act_fn="silu", scaling_factor=0.18215)
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                flip_sin_to_cos=True, freq_shift=0, act_fn="silu", center_input_sample=False)
    return vae, unet


def build_sd21_base(device="cpu", seed: int = 0):
    """Random-weight SD 2.1-base VAE, UNet and zero-init Controller (the repo's ControlNet recipe), fp32, eval.

    Returns (vae, unet, controller, null_text (1, 77, 1024)). Random weights cost exactly what real ones do.
    """
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    vae_cfg, unet_cfg = sd21_base_configs()
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**vae_cfg)
        unet = UNet2DConditionModel(**unet_cfg)
        controller = ControlNetModel.from_unet(unet, conditioning_channels=4, conditioning_embedding_out_channels=(16,))
    for m in (vae, unet, controller):
        m.to(device).eval().requires_grad_(False)
    null_text = torch.randn(1, 77, unet_cfg["cross_attention_dim"], device=device) * 0.5
    return vae, unet, controller, null_text


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())
