"""Stage 1 at real size: FLOPs per view of the SD 2.1-base architecture (random weights, 512 px) and the
GPU floor they imply, plus the CPU time of one UNet+Controller step in fp32 and bf16.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions and attention,
SDPA forced to its math form so the attention products are counted on any device); a multiply-add is
2 FLOPs. The floor is FLOPs / 790 TFLOP/s (measured dense bf16 rate of the lent H100/H200).

    python benchmarks/stage1_flops.py              # counts (fast, on the meta device) + CPU timing
    python benchmarks/stage1_flops.py --no-cpu-time
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (PEAK_BF16_TFLOPS, append_section, build_sd21_base, fmt, loadavg, machine_info, n_params,  # noqa: E402
                     set_threads, table, update_current)

STEPS = (1, 4, 10, 50)


ATTENTION_OPS = ("bmm", "baddbmm")  # with SDPA in its math form, the attention products (QK^T, AV) are batched matmuls


def count(fn) -> tuple[int, int]:
    """(total FLOPs, of which attention products)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    per_op = fc.get_flop_counts().get("Global", {})
    attn = sum(int(v) for op, v in per_op.items() if str(op).split(".")[1 if str(op).startswith("aten.") else 0] in ATTENTION_OPS)
    return int(fc.get_total_flops()), attn


def step_fn(unet, controller, text, z, z0, t):
    def run():
        down, mid = controller(z, t, encoder_hidden_states=text, controlnet_cond=z0, return_dict=False)
        return unet(z, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0]
    return run


def flops_per_view(device: str, size: int = 512, models=None) -> dict:
    """FLOPs of one size x size view; `models` = (vae, unet, controller, null_text) or None for SD 2.1-base."""
    vae, unet, ctrl, text = models or build_sd21_base(device)
    x = torch.zeros(1, 3, size, size, device=device)
    z = torch.zeros(1, 4, size // 8, size // 8, device=device)
    t = torch.tensor(999, device=device)
    with torch.no_grad():
        enc = count(lambda: vae.encode(x).latent_dist.mean)
        dec = count(lambda: vae.decode(z).sample)
        u = count(lambda: unet(z, t, encoder_hidden_states=text, return_dict=False))
        c = count(lambda: ctrl(z, t, encoder_hidden_states=text, controlnet_cond=z, return_dict=False))
        uc = count(step_fn(unet, ctrl, text, z, z, t))
    attn = {"vae_encode": enc[1], "vae_decode": dec[1], "unet": u[1], "controller": c[1], "unet+controller": uc[1]}
    enc, dec, u, c, uc = enc[0], dec[0], u[0], c[0], uc[0]
    params = {"vae": n_params(vae), "unet": n_params(unet), "controller": n_params(ctrl)}
    return {"vae_encode": enc, "vae_decode": dec, "unet": u, "controller": c, "unet+controller": uc, "params": params,
            "attention": attn}


def cpu_step_time(threads: int, dtype: torch.dtype, repeats: int, size: int = 512) -> list[float]:
    vae, unet, ctrl, text = build_sd21_base("cpu")
    z = torch.randn(1, 4, size // 8, size // 8)  # the model takes any multiple of 64 px
    t = torch.tensor(999)
    run = step_fn(unet, ctrl, text, z, z.clone(), t)
    ctx = (torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False))
    times = []
    with torch.no_grad(), ctx:
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    del vae, unet, ctrl
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="meta", help="where to count FLOPs (meta: no compute, same counts)")
    ap.add_argument("--no-cpu-time", action="store_true")
    ap.add_argument("--threads", type=int, nargs="*", default=[2], help="CPU thread counts for the step timing")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cpu-runs", nargs="+", default=["fp32:512", "fp32:128", "bf16:128"],
                    help="dtype:size pairs timed on the CPU (bf16 autocast is emulated without AVX512-BF16/AMX: "
                         "very slow at 512 px, so it is timed at 128 px next to fp32 at 128 px)")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    info = machine_info()

    t0 = time.perf_counter()
    f = flops_per_view(args.device)
    count_s = time.perf_counter() - t0
    T = 1e12
    print(f"params: {f['params']}; counted in {count_s:.1f} s on {args.device}")
    a = f["attention"]
    rows = [[name, f[k] / T, a[k] / T, (f[k] - a[k]) / T] for name, k in (
        ("VAE encode", "vae_encode"), ("UNet step", "unet"), ("Controller step", "controller"),
        ("UNet + Controller step (with residuals)", "unet+controller"), ("VAE decode (pictures only)", "vae_decode"))]
    part1 = table(["per 512x512 view", "TFLOP", "of which attention QK^T, AV", "TFLOP without attention"], rows)
    step = f["unet+controller"]
    rows2 = []
    for n in STEPS:
        tot = f["vae_encode"] + n * step
        rows2.append([n, tot / T, PEAK_BF16_TFLOPS * T / tot, f"{f['vae_encode'] / tot:.0%}"])
    part2 = table(["steps", "TFLOP / view", f"floor views/s at {PEAK_BF16_TFLOPS:.0f} TFLOP/s", "VAE encode share"], rows2)
    print(part1, "\n", part2, sep="\n")

    part3 = ""
    if not args.no_cpu_time:
        rows3 = []
        flops_at = {512: step}
        for th in args.threads:
            set_threads(th)
            for run in args.cpu_runs:
                name, px = run.split(":")
                px = int(px)
                if px not in flops_at:
                    flops_at[px] = flops_per_view("meta", px)["unet+controller"]
                dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
                ts = cpu_step_time(th, dt, args.repeats, px)
                best = min(ts)
                rows3.append([name if name == "fp32" else "bf16 autocast", px, th, " / ".join(f"{x:.1f}" for x in ts),
                              flops_at[px] / 1e12, flops_at[px] / best / 1e9, loadavg()])
                print(rows3[-1], flush=True)
        part3 = ("\n\nCPU time of one UNet + Controller step, batch 1 (the first call is included: on the CPU it is "
                 "as slow as the rest). This CPU (AMD EPYC, AVX2, no AVX512-BF16/AMX) has no native bf16, so "
                 "bf16 autocast is far slower than fp32; the machine was shared (load in the last column):\n\n"
                 + table(["dtype", "px", "threads", "seconds per call", "TFLOP", "GFLOP/s (best)", "load avg"], rows3))
        print(part3)

    p = f["params"]
    body = (f"Random-weight SD 2.1-base (UNet {p['unet'] / 1e6:.0f} M, Controller {p['controller'] / 1e6:.0f} M, "
            f"VAE {p['vae'] / 1e6:.0f} M parameters), one 512x512 view, FlopCounterMode (SDPA in its math form so "
            f"attention is counted; multiply-add = 2 FLOPs), counted on `{args.device}`.\n\n"
            + part1 + "\n\n" + part2 + "\n\nA view costs VAE encode + steps x (UNet + Controller); floors assume "
            "the whole view runs at the dense bf16 matmul rate (MFU 100%)." + part3)
    if not args.no_append:
        append_section("Stage 1 FLOPs, SD 2.1-base at 512 px", body, info)
        update_current("SD 2.1-base, 512 px, FLOPs per view (attention counted)",
                       f"VAE encode {f['vae_encode'] / T:.2f} T; UNet {f['unet'] / T:.2f} T + Controller "
                       f"{f['controller'] / T:.2f} T per step", info=info)
        update_current("stage 1 floor at the peak bf16 rate (H100/H200), views/s",
                       f"{' / '.join(fmt(r[2]) for r in rows2)} views/s at {' / '.join(str(r[0]) for r in rows2)} "
                       f"steps ({PEAK_BF16_TFLOPS:.0f} TFLOP/s, MFU 100%)", info=info)


if __name__ == "__main__":
    main()
