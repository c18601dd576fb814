"""The frozen diffusion backbone: SD's VAE, UNet and noise schedule, the Controller, and their identities.

Heavy imports (diffusers, transformers) happen inside functions so the fit side never pays for them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from diffvqa_cache.cache.settings import ModelIdentity
from diffvqa_cache.errors import UserInputError
from diffvqa_cache.files import file_sha256

log = logging.getLogger(__name__)

TINY_SEED = 0
# Load real weights straight into place (diffusers' low_cpu_mem_usage, through `accelerate`), without the
# multi-line warning diffusers prints otherwise; peak memory is the weights themselves (BENCHMARKS.md,
# benchmarks/load_memory.py). False restores the plain loading.
LOW_CPU_MEM_USAGE = True
TINY_NATIVE_SIZE = 128  # pixels; latent 16x16, so the four up blocks give 4, 8, 16, 16 maps


@dataclass
class Backbone:
    """Everything stage one needs to turn a view into features."""

    vae: torch.nn.Module
    unet: torch.nn.Module
    controller: torch.nn.Module
    noise_schedule: dict  # the training noise schedule (diffusers scheduler config)
    null_text: torch.Tensor  # (1, L, cross_attention_dim): the empty-prompt embedding
    identity: ModelIdentity  # content hashes of the weights, and the native view size
    is_tiny: bool

    @property
    def native_size(self) -> int:
        return self.identity.native_size

    @property
    def model_id(self) -> str:
        return self.identity.model_id

    @property
    def controller_id(self) -> str:
        return self.identity.controller_id

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def to(self, device: torch.device) -> "Backbone":
        """Move to `device`, frozen, in eval mode (weights stay fp32; lower precision is autocast)."""
        for m in (self.vae, self.unet, self.controller):
            m.to(device=device).eval().requires_grad_(False)
        self.null_text = self.null_text.to(device=device)
        return self


def tiny_configs() -> tuple[dict, dict]:
    """SD's structure (4 VAE levels; 4 down and 4 up UNet blocks with cross-attention) at tiny widths."""
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32), sample_size=TINY_NATIVE_SIZE,
        scaling_factor=3.7,  # 1 / std of this random VAE's latents on natural-ish frames, as SD's 0.18215 is for its VAE
    )
    unet = dict(
        sample_size=TINY_NATIVE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32, 64), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    return vae, unet


def sd_noise_schedule() -> dict:
    """SD's training schedule (scaled-linear betas 0.00085-0.012 over 1000 steps, epsilon prediction)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_tiny() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """A seeded random tiny SD: for tests and the sample dataset, never for real scoring."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae_cfg, unet_cfg = tiny_configs()
    torch.manual_seed(TINY_SEED)
    vae = AutoencoderKL(**vae_cfg)
    unet = UNet2DConditionModel(**unet_cfg)
    gen = torch.Generator().manual_seed(TINY_SEED)
    null_text = torch.randn(1, 8, unet_cfg["cross_attention_dim"], generator=gen) * 0.5
    return vae, unet, null_text


def hash_files(paths: list[Path]) -> str:
    """Content hash of weight files (names and bytes), memoised in a sidecar keyed by size and mtime."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(_file_digest(p).encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    st = path.stat()
    memo_dir = Path(os.environ.get("DIFFVQA_CACHE_HOME", Path.home() / ".cache" / "diffvqa-cache")) / "hashes"
    memo = memo_dir / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24] + ".json")
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if {k: saved[k] for k in stamp} == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = file_sha256(path)
    try:
        memo_dir.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({**stamp, "sha256": digest}))
    except OSError:
        pass
    return digest


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]


# What extract reads in a diffusers SD folder: subfolder -> its config file (any one of each tuple).
SD_LAYOUT = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "scheduler": ("scheduler_config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "vocab.json"),
}


def model_layout_problems(folder: Path) -> list[str]:
    """What a diffusers SD folder lacks for extract: subfolders, their config files, UNet/VAE/CLIP weights."""
    problems = []
    for sub, configs in SD_LAYOUT.items():
        path = folder / sub
        if not path.is_dir():
            problems.append(f"no {sub}/")
        elif not any((path / c).is_file() for c in configs):
            problems.append(f"no {sub}/{configs[0]}")
        elif sub in ("unet", "vae", "text_encoder") and not _weight_files(path):
            problems.append(f"no weights in {sub}/")
    return problems


def looks_like_hub_id(model: str) -> bool:
    """'owner/name' without a file suffix (a name that is no local folder is taken as a hub id)."""
    return not Path(model).suffix and model.count("/") == 1


def resolve_model_folder(model: str, revision: str | None) -> Path:
    """A local diffusers folder as is; a hub id downloaded (or found in the local HF cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "unet").is_dir() or not (path / "vae").is_dir():
            raise UserInputError(f"{path} is not a diffusers Stable Diffusion folder (needs unet/ and vae/); "
                                 "pass a folder saved by StableDiffusionPipeline.save_pretrained or a hub id")
        return path
    if not looks_like_hub_id(model):
        raise UserInputError(f"--model {model!r}: no such folder, and not a hub id like "
                             "'stabilityai/stable-diffusion-2-1-base'; use 'tiny' for the test model")
    return _hub_snapshot(model, revision)


@functools.lru_cache(maxsize=None)
def _hub_snapshot(model: str, revision: str | None) -> Path:
    """The hub id's files, fetched or found in the local HF cache; once per process (identify, loading and
    the noise schedule all need the folder, and each snapshot_download asks the hub)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=[
            "unet/*", "vae/*", "scheduler/*", "text_encoder/*", "tokenizer/*", "model_index.json"],
            ignore_patterns=["*.bin", "*.ckpt", "*fp16*", "*.msgpack", "*.onnx*"]))
    except Exception as exc:  # network, auth, missing repo: one line with the fix
        raise UserInputError(f"--model {model!r}: could not fetch from the hub ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]}); download it and pass the local folder") from None


def _lean() -> dict:
    """from_pretrained keywords: low_cpu_mem_usage where `accelerate` is installed (a dependency), and
    plain loading without diffusers' multi-line warning where it is not."""
    import importlib.util

    return {"low_cpu_mem_usage": LOW_CPU_MEM_USAGE and importlib.util.find_spec("accelerate") is not None}


def _null_text_embedding(folder: Path) -> torch.Tensor:
    """The empty-prompt embedding (the paper's null text condition), from the model's own CLIP."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise UserInputError("real SD weights need `transformers` for the empty-prompt embedding: "
                             "pip install transformers") from None
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every run
    try:
        enc = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids)[0].float()


def load_controller(unet: torch.nn.Module, controller: str | None) -> torch.nn.Module:
    """The Controller: a ControlNet conditioned on the clean latent z0 (zero-initialised without a folder)."""
    from diffusers import ControlNetModel

    if controller is None:
        log.info("no --controller: a zero-initialised Controller, i.e. plain SD")
        return ControlNetModel.from_unet(unet, conditioning_channels=4, conditioning_embedding_out_channels=(16,))
    folder = _controller_folder(controller)
    net = ControlNetModel.from_pretrained(folder, use_safetensors=True, **_lean())
    if net.config.conditioning_channels != 4:
        raise UserInputError(f"--controller {folder}: conditioning_channels={net.config.conditioning_channels}, "
                             "but a DiffVQA Controller is conditioned on the 4-channel latent z0")
    return net


def _sd_files(folder: Path) -> list[Path]:
    files = _weight_files(folder / "vae") + _weight_files(folder / "unet")
    return files + (_weight_files(folder / "text_encoder") if (folder / "text_encoder").is_dir() else [])


def _tiny_id() -> str:
    vae_cfg, unet_cfg = tiny_configs()
    blob = json.dumps({"vae": vae_cfg, "unet": unet_cfg, "seed": TINY_SEED}, sort_keys=True, default=list)
    return "tiny-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def identify(model: str, controller: str | None, revision: str | None = None) -> ModelIdentity:
    """The weights' identity from their files alone, without building the networks (the one place it is
    computed: `load_backbone` calls it too)."""
    if model == "tiny":
        model_id, native = _tiny_id(), TINY_NATIVE_SIZE
    else:
        folder = resolve_model_folder(model, revision)
        model_id = "sd-" + hash_files(_sd_files(folder))
        native = int(json.loads((folder / "unet" / "config.json").read_text())["sample_size"]) * 8
    controller_id = "zero-init" if controller is None else \
        "ctrl-" + hash_files(_weight_files(_controller_folder(controller)))
    return ModelIdentity(model_id, controller_id, native)


def _controller_folder(controller: str) -> Path:
    folder = Path(controller).expanduser()
    if not (folder / "config.json").is_file():
        raise UserInputError(f"--controller {folder}: no config.json there; pass a folder written by "
                             "ControlNetModel.save_pretrained (e.g. by `diffvqa-cache adapt`)")
    weights = _weight_files(folder)
    if not any(p.suffix == ".safetensors" for p in weights):
        found = f"only {', '.join(sorted(p.name for p in weights))}: pickled weights, which can run code, are " \
            "never loaded" if weights else "no weights"
        raise UserInputError(f"--controller {folder}: {found}; save the Controller as safetensors "
                             "(ControlNetModel.save_pretrained(folder, safe_serialization=True), as `adapt` does)")
    return folder


def load_backbone(model: str = "tiny", controller: str | None = None, revision: str | None = None) -> Backbone:
    """Load (or build, for `tiny`) SD's VAE, UNet, scheduler config and the Controller, on the CPU in fp32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    identity = identify(model, controller, revision)
    if model == "tiny":
        vae, unet, null_text = build_tiny()
    else:
        folder = resolve_model_folder(model, revision)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **_lean())
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **_lean())
        null_text = _null_text_embedding(folder)
    return Backbone(vae=vae, unet=unet, controller=load_controller(unet, controller),
                    noise_schedule=read_noise_schedule(model, revision), null_text=null_text, identity=identity,
                    is_tiny=model == "tiny")


def read_noise_schedule(model: str, revision: str | None = None) -> dict:
    """The model's training noise schedule (its scheduler/scheduler_config.json; SD's for `tiny`)."""
    if model == "tiny":
        return sd_noise_schedule()
    sched_file = resolve_model_folder(model, revision) / "scheduler" / "scheduler_config.json"
    return json.loads(sched_file.read_text()) if sched_file.is_file() else sd_noise_schedule()
