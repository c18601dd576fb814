"""Peak resident memory of `backbone.load_backbone` on a diffusers folder of SD 2.1-base's exact size.

The folder (VAE and UNet from `sd21_base_configs`, a 23-layer 1024-wide CLIP text encoder, a toy tokenizer;
random weights, about 5 GB) is built once into --folder with `save_pretrained`; each measurement loads it
in a fresh process and reads that process's peak RSS (ru_maxrss). Rows: the loader as it is, and with
`low_cpu_mem_usage` forced off (the loading of earlier versions, and of diffusers without `accelerate`).

    python benchmarks/load_memory.py --folder /tmp/sd21-random           # build (once), measure, append
    python benchmarks/load_memory.py --folder /tmp/sd21-random --delete  # ... and remove the folder after
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, append_section, loadavg, machine_info, table, update_current  # noqa: E402

CHILD = """
import json, resource, sys, time, warnings
sys.path.insert(0, {root!r})
import diffvqa_cache.extraction.backbone as b
b.LOW_CPU_MEM_USAGE = {low}
t0 = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    bb = b.load_backbone({folder!r})
secs = time.perf_counter() - t0
peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import torch
with torch.no_grad():  # first use reads every weight (memory-mapped files are paged in then)
    for m in (bb.vae, bb.unet, bb.controller):
        for p in m.parameters():
            p.sum()
n = sum(p.numel() for m in (bb.vae, bb.unet, bb.controller) for p in m.parameters())
print(json.dumps({{"peak_mb": peak_load, "seconds": secs,
                  "peak_used_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "params": n, "warnings": [str(w.message).splitlines()[0] for w in caught]}}))
"""


def build_folder(folder: Path) -> None:
    """SD 2.1-base's VAE and UNet, SD 2's text encoder size (OpenCLIP ViT-H text tower: 23 of 24 layers,
    1024 wide), a toy tokenizer; random weights, saved as StableDiffusionPipeline.save_pretrained lays them out."""
    import torch
    from _common import sd21_base_configs
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from diffvqa_cache.synthetic import save_sd_folder

    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    vae_cfg, unet_cfg = sd21_base_configs()
    torch.manual_seed(0)
    save_sd_folder(tmp, AutoencoderKL(**vae_cfg), UNet2DConditionModel(**unet_cfg),
                   dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                        num_attention_heads=16, hidden_act="gelu", projection_dim=512), max_length=77)
    tmp.rename(folder)


def measure(folder: Path, low: bool) -> dict:
    code = CHILD.format(root=str(ROOT), low=low, folder=str(folder))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # what a user sees on the terminal (the zero-init Controller's notice is intended and left out)
    result["stderr_lines"] = [line for line in out.stderr.splitlines() if line.strip() and "--controller" not in line]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True, help="where the SD-size folder is (built when missing)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--delete", action="store_true", help="remove the folder afterwards")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    info = machine_info()
    if not (args.folder / "model_index.json").is_file():
        t0 = time.perf_counter()
        build_folder(args.folder)
        print(f"built {args.folder} in {time.perf_counter() - t0:.0f} s")
    size_gb = sum(p.stat().st_size for p in args.folder.rglob("*") if p.is_file()) / 1e9
    rows = []
    for low in (False, True):
        runs = [measure(args.folder, low) for _ in range(args.repeats)]
        med = lambda key: sorted(r[key] for r in runs)[len(runs) // 2]  # noqa: E731
        said = runs[0]["warnings"] + runs[0]["stderr_lines"]
        rows.append([f"low_cpu_mem_usage={low}", runs[0]["params"] / 1e6, med("peak_mb") / 1024,
                     med("peak_used_mb") / 1024, med("seconds"),
                     f"{len(said)} lines" + (f": {said[0][:90]}" if said else "")])
        print(rows[-1], "load", loadavg())
    text = table(["loading", "M params (VAE+UNet+Controller)", "peak RSS GiB, load", "peak RSS GiB, every weight read",
                  "load seconds", "printed on stderr"], rows)
    body = (f"`load_backbone` on a diffusers folder of SD 2.1-base's size with random weights ({size_gb:.2f} GB on disk: "
            f"VAE, UNet, 23-layer 1024-wide CLIP text encoder), each load in a fresh process, median of "
            f"{args.repeats}; peak RSS = ru_maxrss of that process (includes the Python, torch and diffusers "
            f"imports and the zero-init Controller).\n\n" + text)
    print(text)
    if not args.no_append:
        append_section("Model loading: peak memory (SD 2.1-base size, CPU)", body, info)
        update_current("SD 2.1-base-size model load: peak RSS, low_cpu_mem_usage off / on",
                       f"{rows[0][2]:.2f} / {rows[1][2]:.2f} GiB ({rows[0][4]:.0f} / {rows[1][4]:.0f} s)", info=info)
    if args.delete:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
