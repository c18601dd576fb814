"""Stage 1 on a lent GPU: real-size (SD 2.1-base, random weights, 512 px) throughput, MFU, memory, bf16
correctness and the known levers, through the repo's own `FeatureExtractor` (VAE encode + reverse chain
with the Controller + F_MS hooks + host copy), so the numbers are the pipeline's model side.

    python benchmarks/stage1_gpu.py                    # on the GPU machine; full log + JSON under $OUT
    python benchmarks/stage1_gpu.py --dry-run          # tiny model on the CPU: checks the script's logic

Prints a short table last. Sections:
 1. bf16 vs fp32: relative error ||bf16 - fp32|| / ||fp32|| of z0_hat (F_Latent) and each F_MS level.
 2. views/s for steps 1, 4, 10, 50 x batch 1, 4, 8, 16, 32 in bf16 autocast; MFU against 790 TFLOP/s
    (FLOPs per view counted with FlopCounterMode, attention included); peak GPU memory.
 3. levers at one setting (default 4 steps, batch 16): SDPA vs classic attention, channels_last,
    weights cast to bf16, torch.compile of UNet + Controller (compile time reported separately).
Every measurement is guarded by --budget-s (seconds): what does not fit is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import PEAK_BF16_TFLOPS, build_sd21_base, machine_info, table  # noqa: E402

T0 = time.perf_counter()
LOG = []


def log(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    LOG.append(line)
    print(line, flush=True)


def build(dry: bool, device: str):
    """(Backbone, view size): SD 2.1-base with random weights, or the repo's tiny model in --dry-run."""
    from diffvqa_cache.cache.settings import ModelIdentity
    from diffvqa_cache.extraction.backbone import Backbone, build_tiny, sd_noise_schedule

    if dry:
        from diffusers import ControlNetModel

        vae, unet, null_text = build_tiny()
        ctrl = ControlNetModel.from_unet(unet, conditioning_channels=4, conditioning_embedding_out_channels=(16,))
        size = 128
    else:
        vae, unet, ctrl, null_text = build_sd21_base("cpu")
        size = 512
    bb = Backbone(vae=vae, unet=unet, controller=ctrl, noise_schedule=sd_noise_schedule(), null_text=null_text,
                  identity=ModelIdentity("random", "zero-init", size), is_tiny=dry)
    return bb, size


def flops_per_view(dry: bool) -> dict:
    from stage1_flops import flops_per_view as count_sd

    if not dry:
        return count_sd("meta")
    bb, size = build(True, "cpu")  # tiny: counted on the CPU (cheap), same counting code
    return count_sd("cpu", size, (bb.vae, bb.unet, bb.controller, bb.null_text))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def views(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def time_call(fx, batch: torch.Tensor, device, repeats: int) -> tuple[float, float]:
    """(seconds per call, median of repeats after one warm-up, peak memory GiB)."""
    seeds = list(range(len(batch)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fx(batch, seeds)  # warm-up (allocator, cuDNN autotune, lazy init)
    sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fx(batch, seeds)
        sync(device)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return ts[len(ts) // 2], peak


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny model, CPU, small grid: checks the logic")
    ap.add_argument("--steps", type=int, nargs="+", default=None)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--lever-steps", type=int, default=4)
    ap.add_argument("--lever-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop starting new measurements after this")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-levers", action="store_true", help="skip section 3")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    args = ap.parse_args()
    dry = args.dry_run
    device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
    if not dry and device.type != "cuda":
        raise SystemExit("no CUDA device: run on the GPU machine, or use --dry-run here")
    steps = args.steps or ([1, 2] if dry else [1, 4, 10, 50])
    batches = args.batch_sizes or ([1, 2] if dry else [1, 4, 8, 16, 32])
    lever_steps, lever_batch = (1, 2) if dry else (args.lever_steps, args.lever_batch)
    repeats = 1 if dry else args.repeats
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    info = machine_info()
    log("machine:", json.dumps(info), "device:", device, "dry-run:" if dry else "", dry)

    from diffvqa_cache.extraction.features import FeatureExtractor

    results = {"info": info, "dry_run": dry, "correctness": {}, "grid": [], "levers": [], "skipped": []}
    fl = flops_per_view(dry)
    step_flops, enc_flops = fl["unet+controller"], fl["vae_encode"]
    log(f"FLOPs per view: VAE encode {enc_flops / 1e12:.3f} T, UNet+Controller step {step_flops / 1e12:.3f} T")
    bb, size = build(dry, str(device))
    within = lambda: time.perf_counter() - T0 < args.budget_s

    # 1. bf16 vs fp32 on a few inputs
    v = views(4, size, seed=1)
    for n_steps in sorted({1, lever_steps}):
        ref = FeatureExtractor(bb, steps=n_steps, dtype="fp32", device=device, timestep_spacing="trailing")(v, [11, 12, 13, 14])
        low = FeatureExtractor(bb, steps=n_steps, dtype="bf16", device=device, timestep_spacing="trailing")(v, [11, 12, 13, 14])
        errs = {"latent": rel_err(low.latent, ref.latent),
                **{f"ms{i}": rel_err(a, b) for i, (a, b) in enumerate(zip(low.ms, ref.ms))}}
        results["correctness"][n_steps] = errs
        log(f"bf16 vs fp32, {n_steps} steps, 4 views: relative error", json.dumps({k: round(e, 5) for k, e in errs.items()}))

    # 2. throughput grid, bf16 autocast (FeatureExtractor's own path)
    for n_steps in steps:
        fx = FeatureExtractor(bb, steps=n_steps, dtype="bf16", device=device, timestep_spacing="trailing")
        per_view = enc_flops + n_steps * step_flops
        for b in batches:
            if not within():
                results["skipped"].append(f"grid steps {n_steps} batch {b}")
                continue
            try:
                s, peak = time_call(fx, views(b, size), device, repeats)
                vps = b / s
                row = {"steps": n_steps, "batch": b, "s_per_call": s, "views_per_s": vps,
                       "mfu": vps * per_view / (PEAK_BF16_TFLOPS * 1e12), "floor_views_per_s": PEAK_BF16_TFLOPS * 1e12 / per_view,
                       "peak_gib": peak}
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row = {"steps": n_steps, "batch": b, "error": "OOM"}
            results["grid"].append(row)
            log("grid", json.dumps(row))

    # 3. levers at one setting
    base_v = views(lever_batch, size)

    def lever(name: str, fx, note: str = "") -> None:
        if args.no_levers:
            return
        if not within():
            results["skipped"].append(f"lever {name}")
            return
        try:
            s, peak = time_call(fx, base_v, device, repeats)
            row = {"variant": name, "views_per_s": lever_batch / s, "peak_gib": peak, "note": note,
                   "mfu": lever_batch / s * (enc_flops + lever_steps * step_flops) / (PEAK_BF16_TFLOPS * 1e12)}
        except Exception as exc:  # one failing lever never stops the others
            row = {"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(traceback.format_exc())
        results["levers"].append(row)
        log("lever", json.dumps(row))

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    def set_attn(proc):
        for m in (bb.vae, bb.unet, bb.controller):
            m.set_attn_processor(proc())

    mk = lambda: FeatureExtractor(bb, steps=lever_steps, dtype="bf16", device=device, timestep_spacing="trailing")
    lever("bf16 autocast, SDPA (baseline)", mk())
    set_attn(AttnProcessor)
    lever("classic attention (no SDPA)", mk())
    set_attn(AttnProcessor2_0)
    for m in (bb.vae, bb.unet, bb.controller):
        m.to(memory_format=torch.channels_last)
    lever("channels_last", mk())
    for m in (bb.vae, bb.unet, bb.controller):
        m.to(dtype=torch.bfloat16)
    lever("channels_last + weights in bf16", mk(), "autocast no longer re-casts weights each call")
    if not args.no_compile and not args.no_levers:
        orig = (bb.unet, bb.controller, bb.vae.encoder)
        backend = "eager" if dry else "inductor"
        try:
            bb.unet, bb.controller = torch.compile(bb.unet, backend=backend), torch.compile(bb.controller, backend=backend)
            bb.vae.encoder = torch.compile(bb.vae.encoder, backend=backend)
            fx = mk()
            t0 = time.perf_counter()
            fx(base_v, list(range(lever_batch)))
            sync(device)
            comp = time.perf_counter() - t0
            lever(f"+ torch.compile ({backend}) UNet, Controller, VAE encoder", fx, f"first call (compile) {comp:.0f} s")
        except Exception as exc:
            results["levers"].append({"variant": "torch.compile", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            log(traceback.format_exc())
        finally:
            bb.unet, bb.controller, bb.vae.encoder = orig

    # report
    corr = table(["steps", "latent", "ms0", "ms1", "ms2", "ms3"],
                 [[s, *(e[k] for k in ("latent", "ms0", "ms1", "ms2", "ms3"))] for s, e in results["correctness"].items()])
    grid = table(["steps", "batch", "views/s", "floor views/s", "MFU", "s/call", "peak GiB"],
                 [[r["steps"], r["batch"], r.get("views_per_s", r.get("error")), r.get("floor_views_per_s", ""),
                   f"{r['mfu']:.1%}" if "mfu" in r else "", r.get("s_per_call", ""), r.get("peak_gib", "")]
                  for r in results["grid"]])
    lev = table(["variant", "views/s", "MFU", "peak GiB", "note"],
                [[r["variant"], r.get("views_per_s", r.get("error", "")), f"{r['mfu']:.1%}" if "mfu" in r else "",
                  r.get("peak_gib", ""), r.get("note", "")] for r in results["levers"]])
    card = info.get("gpu", "CPU (dry run)")
    section = (f"Card: {card}. {'tiny test model (dry run)' if dry else 'SD 2.1-base random weights'}, {size} px, through `FeatureExtractor` (bf16 autocast "
               f"unless stated). FLOPs/view = {enc_flops / 1e12:.3g} T + steps x {step_flops / 1e12:.3g} T; MFU vs "
               f"{PEAK_BF16_TFLOPS:.0f} TFLOP/s.\n\nbf16 vs fp32 relative error (4 views):\n\n{corr}\n\n"
               f"Throughput:\n\n{grid}\n\nLevers ({lever_steps} steps, batch {lever_batch}):\n\n{lev}\n"
               + (f"\nSkipped (budget {args.budget_s:.0f} s): {results['skipped']}\n" if results["skipped"] else ""))
    results["wall_s"] = time.perf_counter() - T0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stage1_gpu.json").write_text(json.dumps(results, indent=1, default=str))
        (args.out / "stage1_gpu.log").write_text("\n".join(LOG) + "\n")
        (args.out / "stage1_gpu_section.md").write_text(section)
    if not dry:
        from _common import append_section, update_current
        append_section(f"Stage 1 on GPU ({card})", section, info)
        best = max((r for r in results["grid"] if "mfu" in r), key=lambda r: r["mfu"], default=None)
        if best is not None:
            update_current("GPU views/s, MFU, memory",
                           f"{card}: best {best['views_per_s']:.3g} views/s at {best['steps']} steps, batch "
                           f"{best['batch']} (MFU {best['mfu']:.1%}, {best.get('peak_gib', '?')} GiB peak)", info=info)
    print("\n" + section)


if __name__ == "__main__":
    main()
